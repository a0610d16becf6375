"""Evaluation under the protocol of config.eval.protocol, and `--mode=eval` from a workdir.

The protocol (mmnet_jax/protocols.py, docs/protocols.md) fixes the episode rule, the number of
episodes, the seeds and the scoring. 'original' scoring (PFENet, MM-Net, BAM): images are
pad-resized to config.eval.size (one compilation) and the logits are scored at the ORIGINAL
label size, padded to a square with 255. 'stretch' scoring (HSNet): images and labels are
stretched to the protocol's square and scored there, or (hsnet_original_size) at the original
(h, w). 255 is always ignored (metrics.py). The two shortcut baselines are scored on the same
episodes. Every evaluation of `evaluate_workdir` saves its episode lists (one file per seed), and
config.eval.episodes_file evaluates a saved list again, exactly.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmnet_jax import baselines
from mmnet_jax import checkpoint
from mmnet_jax import metrics
from mmnet_jax import protocols
from mmnet_jax import sharding
from mmnet_jax import storage
from mmnet_jax import train_state
from mmnet_jax import workdir_io
from mmnet_jax.data import dataset_registry
from mmnet_jax.data import datasets
from mmnet_jax.data import episodes as episodes_lib
from mmnet_jax.data import pipeline
from mmnet_jax.data import streams
from mmnet_jax.data import stretch_batches
from mmnet_jax.models import registry

BASELINES = {
    'all_foreground': baselines.all_foreground,
    'histogram_matching': baselines.histogram_matching,
}
EPISODES_FILE = 'eval_episodes.json'
RESULTS_FILE = 'results.json'      # the training run's final evaluation
LATEST_EVAL_FILE = 'eval_results.json'   # the latest --mode=eval (each also in EVALS_DIR)
EVALS_DIR = 'evals'


def make_eval_step(model):
  """Returns eval_step(variables, batch) -> (B, H, W) logit[1] - logit[0] at input size."""
  def eval_step(variables, batch):
    masks = (batch['support_labels'] == 1).astype(jnp.float32)
    outputs = model.apply(variables, batch['query_img'], batch['support_imgs'], masks,
                          train=False)
    logits = outputs['logits'].astype(jnp.float32)
    return logits[..., 1] - logits[..., 0]
  return eval_step


def predict_at_hw(logit_diff: np.ndarray, h: int, w: int) -> np.ndarray:
  """Foreground prediction at (h, w) from a (H, W) logit difference (align-corners upsampling,
  ties to background); `metrics.predict_at_size` for a non-square target."""
  logit_diff = np.asarray(logit_diff, np.float64)
  rows = metrics.align_corners_matrix(logit_diff.shape[0], h)   # (h, H)
  cols = metrics.align_corners_matrix(logit_diff.shape[1], w)   # (w, W)
  return (rows @ logit_diff @ cols.T > 0).astype(np.uint8)


def canvas_prediction(logit_diff: np.ndarray, side: int, crop: bool) -> np.ndarray:
  """Foreground prediction on the side x side scoring square of 'original' scoring from a
  (size, size) canvas logit difference.

  PFENet's rule (`crop` False): the whole canvas is resized (align corners) to the square,
  right for an image whose longer side was scaled to the canvas (Resize). `crop` True: the
  image sits unscaled on the canvas (test_Resize of a small image), so the square is the
  canvas's top-left corner, not a shrunken canvas.
  """
  if crop:
    return (np.asarray(logit_diff)[:side, :side] > 0).astype(np.uint8)
  return metrics.predict_at_size(logit_diff, side)


def score_batch(totals: metrics.SegmentationTotals, batch: dict,
                logit_diff: np.ndarray) -> metrics.SegmentationTotals:
  """Adds every valid episode of a host batch, scored at its label size.

  The label is `eval_label[i, :S, :S]` (S = eval_label_size, PFENet's padded square; the
  prediction from `canvas_prediction` with `eval_label_crop`) or, when the batch has
  `eval_label_hw` (stretch scoring), `eval_label[i, :h, :w]`.
  """
  for i in range(logit_diff.shape[0]):
    if not batch['valid'][i]:
      continue
    if 'eval_label_hw' in batch:
      h, w = (int(v) for v in batch['eval_label_hw'][i])
      label = batch['eval_label'][i, :h, :w]
      pred = predict_at_hw(logit_diff[i], h, w)
    else:
      size = int(batch['eval_label_size'][i])
      label = batch['eval_label'][i, :size, :size]
      pred = canvas_prediction(logit_diff[i], size, bool(batch['eval_label_crop'][i]))
    totals = totals.add(int(batch['class_id'][i]), *metrics.intersection_union(pred, label))
  return totals


def baseline_logit_diff(fn, batch: dict) -> np.ndarray:
  """A baseline's binary prediction as a +-1 map, scored exactly like model logits."""
  preds = [fn(batch['query_img'][i], batch['support_imgs'][i], batch['support_labels'][i])
           for i in range(batch['query_img'].shape[0])]
  return np.stack(preds).astype(np.float32) * 2.0 - 1.0


def merge_processes(totals: metrics.SegmentationTotals, classes) -> metrics.SegmentationTotals:
  """The sum of every process's totals (the same value on each process)."""
  vector = sharding.sum_across_processes(metrics.totals_to_vector(totals, classes))
  return metrics.totals_from_vector(vector, classes)


def episodes_filename(seed: int, num_seeds: int) -> str:
  """The episode file of one run in a workdir: `eval_episodes.json` for a one-seed protocol,
  `eval_episodes_seed{seed}.json` for each seed of a several-seed one."""
  return EPISODES_FILE if num_seeds == 1 else f'eval_episodes_seed{seed}.json'


def aggregate_runs(runs: list[dict]) -> dict:
  """One result from the per-seed summaries `runs` (each with 'seed').

  One run: that run's summary. Several: mIoU, FB-IoU, per-class IoU and mean episode IoU are
  the means over the runs, `miou_std` / `fb_iou_std` their sample standard deviations
  (ddof=1), and `per_seed` keeps every run (baselines likewise, under `baselines`).
  """
  if not runs:
    raise ValueError('aggregate_runs: no runs')
  if len(runs) == 1:
    return dict(runs[0], seeds=[runs[0]['seed']])

  def combine(items):
    miou = np.array([r['miou'] for r in items])
    fb = np.array([r['fb_iou'] for r in items])
    classes = sorted({c for r in items for c in r['class_iou']}, key=int)
    return {
        'miou': float(miou.mean()), 'miou_std': float(miou.std(ddof=1)),
        'fb_iou': float(fb.mean()), 'fb_iou_std': float(fb.std(ddof=1)),
        'class_iou': {c: float(np.mean([r['class_iou'][c] for r in items
                                        if c in r['class_iou']])) for c in classes},
        'mean_episode_iou': float(np.mean([r['mean_episode_iou'] for r in items])),
        'classes_without_episodes': sorted(
            set.intersection(*(set(r['classes_without_episodes']) for r in items))),
    }

  out = combine(runs)
  out.update(episodes=runs[0]['episodes'], total_episodes=sum(r['episodes'] for r in runs),
             seconds=sum(r.get('seconds', 0.0) for r in runs),
             seeds=[r['seed'] for r in runs], per_seed=runs)
  if 'baselines' in runs[0]:
    out['baselines'] = {name: combine([r['baselines'][name] for r in runs])
                        for name in runs[0]['baselines']}
  return out


class Evaluator:
  """Evaluates model variables on the fold's test classes of the val split under the
  protocol of config.eval (`protocols.resolve`)."""

  def __init__(self, config: ml_collections.ConfigDict, model, mesh, test_classes):
    self.config = config
    self.mesh = mesh
    self.test_classes = list(test_classes)
    self.protocol = protocols.resolve(config)
    self.split = dataset_registry.open_split(config.dataset, 'val')
    self.pool = episodes_lib.build_pool(self.split, self.test_classes,
                                        min_class_pixels=config.dataset.min_class_pixels)
    self._step = jax.jit(make_eval_step(model))
    self._host_batch = sharding.host_batch_size(config.eval.batch_size, mesh)
    self._file = None   # (episodes, meta) of eval.episodes_file, read on first use

  def file_episodes(self):
    """(episodes, meta) of config.eval.episodes_file, checked against split, shots, classes."""
    if self._file is None:
      self._file = episodes_lib.load_episodes(self.protocol.episodes_file, self.split,
                                              shots=int(self.config.shots),
                                              classes=self.test_classes)
    return self._file

  def episodes(self, num_episodes: int | None = None, seed: int | None = None):
    """The protocol's episode list for `seed` (default: the protocol's first seed), or the
    first `num_episodes` of config.eval.episodes_file when one is set."""
    if self.protocol.episodes_file:
      episode_list = self.file_episodes()[0]
      return episode_list[:num_episodes] if num_episodes else episode_list
    return episodes_lib.sample_eval_episodes(
        self.pool, self.protocol.sampling, int(self.config.shots),
        num_episodes or self.protocol.num_episodes,
        self.protocol.seeds[0] if seed is None else seed)

  def _stream(self, episode_list):
    if self.protocol.scoring == 'original':
      return streams.eval_dataset(self.split, episode_list, self.config,
                                   host_batch_size=self._host_batch,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
    return stretch_batches.stretch_eval_dataset(
        self.split, episode_list, self.config, self.protocol, self._host_batch,
        jax.process_index(), jax.process_count())

  def evaluate(self, variables, num_episodes: int | None = None, with_baselines: bool = False,
               episode_list=None, on_batch=None) -> dict:
    """Scores `variables` (and optionally the baselines) on one episode list (default: the
    protocol's first seed, `num_episodes` or the protocol's count).

    `on_batch(host_batch, logit_diff)`, if given, sees every host batch with the model's
    (B, H, W) logit differences (e.g. to draw episode pictures).
    """
    if episode_list is None:
      episode_list = self.episodes(num_episodes)
    variables = sharding.replicate(variables, self.mesh)
    totals = metrics.SegmentationTotals()
    base_totals = {name: metrics.SegmentationTotals() for name in BASELINES}
    start = time.perf_counter()
    stream = self._stream(episode_list)
    for batch in stream:
      model_batch = {k: batch[k] for k in ('query_img', 'support_imgs', 'support_labels')}
      diff = self._step(variables, sharding.to_global(model_batch, self.mesh))
      diff = np.asarray(jax.device_get(sharding.local_rows(diff)))
      totals = score_batch(totals, batch, diff)
      if on_batch is not None:
        on_batch(batch, diff)
      if with_baselines:
        for name, fn in BASELINES.items():
          base_totals[name] = score_batch(base_totals[name], batch, baseline_logit_diff(fn, batch))
    stream.close()
    # Each process scored its own rows: sum the counts so every episode counts exactly once.
    totals = merge_processes(totals, self.test_classes)
    base_totals = {n: merge_processes(t, self.test_classes) for n, t in base_totals.items()}
    seconds = time.perf_counter() - start
    summary = metrics.summarize(totals, self.test_classes, self.protocol.empty_classes)
    summary['seconds'] = seconds
    if with_baselines:
      summary['baselines'] = {name: metrics.summarize(t, self.test_classes,
                                                      self.protocol.empty_classes)
                              for name, t in base_totals.items()}
    return summary

  def evaluate_protocol(self, variables, with_baselines: bool = False, on_batch=None,
                        episodes_dir: str | None = None) -> dict:
    """Every run of the protocol (one per seed, or the one of eval.episodes_file), each episode
    list saved under `episodes_dir` (process 0), aggregated by `aggregate_runs`; the result
    names the protocol and every parameter (`protocol_params`)."""
    p = self.protocol
    meta = {'protocol': p.protocol, 'sampling': p.sampling, 'fold': self.config.dataset.fold,
            'shots': int(self.config.shots), 'classes': self.test_classes,
            'min_class_pixels': p.min_class_pixels}
    runs = []
    if p.episodes_file:
      episode_list, file_meta = self.file_episodes()
      plan = [(file_meta.get('seed'), episode_list, p.episodes_file)]
    else:
      plan = [(seed, self.episodes(seed=seed), episodes_filename(seed, len(p.seeds)))
              for seed in p.seeds]
    for seed, episode_list, name in plan:
      if episodes_dir is not None and not p.episodes_file and jax.process_index() == 0:
        episodes_lib.save_episodes(episode_list, os.path.join(episodes_dir, name), self.split,
                                   meta=dict(meta, seed=seed))
      summary = self.evaluate(variables, with_baselines=with_baselines,
                              episode_list=episode_list, on_batch=on_batch)
      runs.append(dict(summary, seed=seed, episodes_file=name))
    results = aggregate_runs(runs)
    results['protocol_params'] = p.as_dict() | {'episodes_files': [r['episodes_file']
                                                                   for r in runs]}
    return results


def restore_for_eval(config: ml_collections.ConfigDict, workdir: str, model):
  """Variables to evaluate: the workdir checkpoint the config selects (best when
  select_on='test_fold', else latest); without any checkpoint there, the converted weights of
  config.init_from (e.g. a released MM-Net checkpoint). Returns (variables, step, source).

  Opens the checkpoints read-only: nothing in the workdir is created, cleaned up or deleted,
  so it may run beside the training writing them (a step replaced meanwhile is read again from
  the newer one). A best/ of another run than the latest checkpoint's is ignored (a warning).
  """
  for attempt in range(_READ_ATTEMPTS):
    ckpts = checkpoint.RunCheckpoints(workdir, read_only=True)
    try:
      return _restore_selected(config, workdir, model, ckpts)
    except checkpoint.CheckpointVanishedError:
      if attempt == _READ_ATTEMPTS - 1:
        raise
    finally:
      ckpts.close()


_READ_ATTEMPTS = 5   # a live writer replaces its one step at most every step


def _restore_selected(config, workdir, model, ckpts: checkpoint.RunCheckpoints):
  manager, step = ckpts.latest, checkpoint.latest_complete_step(ckpts.latest)
  meta = None if step is None else checkpoint.restore_meta(manager, step)
  best_step = checkpoint.latest_complete_step(ckpts.best)
  if best_step is not None and config.eval.select_on == 'test_fold':
    best_meta = checkpoint.restore_meta(ckpts.best, best_step)
    reason = None if meta is None else checkpoint.foreign_best_reason(meta, best_meta)
    if reason is None:
      manager, step, meta = ckpts.best, best_step, best_meta
    else:
      logging.warning('ignoring the best checkpoint %s/%d: %s; evaluating the latest',
                      ckpts.best.directory, best_step, reason)
  if step is None:
    if config.init_from:
      variables = train_state.load_init_from(config, train_state.init_variables(model, config))
      return variables, 0, f'init_from {config.init_from}'
    raise FileNotFoundError(f'no checkpoint in {workdir}/{checkpoint.LATEST_DIR} or '
                            f'{workdir}/{checkpoint.BEST_DIR} and no config.init_from: train '
                            'first (--mode=train) or convert weights (python -m mmnet_jax.convert)')
  # Refuse another model's checkpoint by its metadata before shapes fail to restore.
  workdir_io.check_fingerprint(meta, train_state.config_fingerprint(config),
                               checkpoint.step_path(manager, step))
  abstract = checkpoint.abstract_like(train_state.abstract_state(model, config),
                                      sharding.replicated(sharding.make_mesh()))
  state, meta = checkpoint.restore(manager, abstract, step)
  which = 'best' if manager is ckpts.best else 'latest'
  return {'params': state['params'], 'batch_stats': state['batch_stats']}, int(meta['step']), which


def eval_results_path(workdir: str, config: ml_collections.ConfigDict) -> str:
  """A new file for one `--mode=eval`: `evals/<UTC time>_<protocol>_<K>shot.json` (a counter
  is added if that name exists), so no evaluation overwrites another's or the training's."""
  import time
  when = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
  stem = f'{when}_{config.eval.protocol}_{config.shots}shot'
  path = os.path.join(workdir, EVALS_DIR, stem + '.json')
  n = 1
  while storage.exists(path):
    n += 1
    path = os.path.join(workdir, EVALS_DIR, f'{stem}_{n}.json')
  return path


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str,
                     results_file: str | None = RESULTS_FILE) -> dict:
  """Restores the selected checkpoint of `workdir`, evaluates it under the config's protocol
  (with the baselines on the same episodes), saves the episode lists (one file per seed) and
  writes the results: to `results_file` in the workdir (the training run's final evaluation:
  results.json), or with None (`--mode=eval`) to a file of its own (`eval_results_path`) and
  to `LATEST_EVAL_FILE`, the stable name of the latest one."""
  from mmnet_jax import config_checks
  from mmnet_jax import visualize
  mesh = sharding.make_mesh()
  config_checks.check_config(config, num_devices=mesh.devices.size)
  model = registry.build(config)
  _, test_classes = datasets.fold_classes(
      config.dataset.name, config.dataset.fold, config.dataset.num_folds,
      coco_convention=config.dataset.coco_convention)
  variables, step, which = restore_for_eval(config, workdir, model)
  evaluator = Evaluator(config, model, mesh, test_classes)
  grids = visualize.EpisodeGrids(workdir, max_episodes=config.eval.pictures, step=step)
  summary = evaluator.evaluate_protocol(variables, with_baselines=config.eval.baselines,
                                        episodes_dir=workdir, on_batch=grids)
  grids.close()
  files = summary['protocol_params']['episodes_files']
  results = dict(summary, step=step, checkpoint=which, selection=config.eval.select_on,
                 protocol=config.eval.protocol, dataset=config.dataset.name,
                 fold=config.dataset.fold, shots=config.shots,
                 episodes_file=files[0] if len(files) == 1 else files)
  if jax.process_index() == 0:
    if results_file is None:   # its own file, and the same under the stable latest name
      own = eval_results_path(workdir, config)
      results['results_file'] = os.path.relpath(own, workdir)
      paths = [own, os.path.join(workdir, LATEST_EVAL_FILE)]
    else:
      paths = [os.path.join(workdir, results_file)]
    for path in paths:
      workdir_io.write_json_atomic(path, results)
    visualize.plot_run(workdir)
    print(format_results(results), flush=True)
    print(f'wrote {" and ".join(paths)}', flush=True)
  return results


def format_results(results: dict) -> str:
  """A per-class table with the model and the baselines side by side (means over seeds, with
  the standard deviation and the per-seed values when several seeds ran)."""
  names = ['model'] + list(results.get('baselines', {}))
  rows = [f'{"class":>8}' + ''.join(f'{n:>20}' for n in names)]
  for c, iou in results['class_iou'].items():
    row = [iou] + [results['baselines'][n]['class_iou'].get(c, float('nan')) for n in names[1:]]
    rows.append(f'{c:>8}' + ''.join(f'{v:>20.2f}' for v in row))
  for key, label in (('miou', 'mIoU'), ('fb_iou', 'FB-IoU')):
    cells = []
    for source in [results] + [results['baselines'][n] for n in names[1:]]:
      std = source.get(f'{key}_std')
      cells.append(f'{source[key]:.2f}' + (f' +- {std:.2f}' if std is not None else ''))
    rows.append(f'{label:>8}' + ''.join(f'{v:>20}' for v in cells))
  for run in results.get('per_seed', []):
    rows.append(f'seed {run["seed"]}: mIoU {run["miou"]:.2f}, FB-IoU {run["fb_iou"]:.2f}')
  seeds = results.get('seeds', [])
  header = (f'{results["dataset"]} fold {results["fold"]}, {results["shots"]}-shot, '
            f'{results["episodes"]} episodes x {len(seeds)} seed(s) {seeds} '
            f'({results["protocol"]} protocol), '
            f'{results["checkpoint"]} checkpoint at step {results["step"]}')
  return header + '\n' + '\n'.join(rows)
