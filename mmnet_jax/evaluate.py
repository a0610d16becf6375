"""Evaluation under the PFENet / MM-Net protocol and `--mode=eval` from a workdir.

Episodes come from a fixed seed (config.eval.seed); images are pad-resized to config.eval.size
(one compilation); logits are scored at the ORIGINAL label size, padded to a square with 255,
with 255 ignored (metrics.py). The two shortcut baselines are scored on the same episodes.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmnet_jax import baselines
from mmnet_jax import checkpoint
from mmnet_jax import metrics
from mmnet_jax import sharding
from mmnet_jax import workdir_io
from mmnet_jax.data import datasets
from mmnet_jax.data import episodes as episodes_lib
from mmnet_jax.data import pipeline

BASELINES = {
    'all_foreground': baselines.all_foreground,
    'histogram_matching': baselines.histogram_matching,
}
EPISODES_FILE = 'eval_episodes.json'
RESULTS_FILE = 'results.json'


def make_eval_step(model):
  """Returns eval_step(variables, batch) -> (B, H, W) logit[1] - logit[0] at input size."""
  def eval_step(variables, batch):
    masks = (batch['support_labels'] == 1).astype(jnp.float32)
    outputs = model.apply(variables, batch['query_img'], batch['support_imgs'], masks,
                          train=False)
    logits = outputs['logits'].astype(jnp.float32)
    return logits[..., 1] - logits[..., 0]
  return eval_step


def score_batch(totals: metrics.SegmentationTotals, batch: dict,
                logit_diff: np.ndarray) -> metrics.SegmentationTotals:
  """Adds every valid episode of a host batch, scored at its original label size."""
  for i in range(logit_diff.shape[0]):
    if not batch['valid'][i]:
      continue
    size = int(batch['eval_label_size'][i])
    label = batch['eval_label'][i, :size, :size]
    pred = metrics.predict_at_size(logit_diff[i], size)
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


class Evaluator:
  """Evaluates model variables on the fold's test classes of the val split."""

  def __init__(self, config: ml_collections.ConfigDict, model, mesh, test_classes):
    self.config = config
    self.mesh = mesh
    self.test_classes = list(test_classes)
    self.split = datasets.open_split(config.dataset, 'val')
    self.pool = episodes_lib.build_pool(self.split, self.test_classes,
                                        min_class_pixels=config.dataset.min_class_pixels)
    self._step = jax.jit(make_eval_step(model))
    self._host_batch = sharding.host_batch_size(config.eval.batch_size, mesh)

  def episodes(self, num_episodes: int):
    """The protocol's episode list: fixed by config.eval.seed."""
    return episodes_lib.eval_episodes(self.pool, self.config.shots, num_episodes,
                                      self.config.eval.seed)

  def evaluate(self, variables, num_episodes: int | None = None, with_baselines: bool = False,
               episode_list=None, on_batch=None) -> dict:
    """Scores `variables` (and optionally the baselines) on the protocol's episodes.

    `on_batch(host_batch, logit_diff)`, if given, sees every host batch with the model's
    (B, H, W) logit differences (e.g. to draw episode pictures).
    """
    if episode_list is None:
      episode_list = self.episodes(num_episodes or self.config.eval.num_episodes)
    variables = sharding.replicate(variables, self.mesh)
    totals = metrics.SegmentationTotals()
    base_totals = {name: metrics.SegmentationTotals() for name in BASELINES}
    start = time.perf_counter()
    stream = pipeline.eval_dataset(self.split, episode_list, self.config,
                                   host_batch_size=self._host_batch,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
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
    summary = metrics.summarize(totals, self.test_classes)
    summary['seconds'] = seconds
    if with_baselines:
      summary['baselines'] = {name: metrics.summarize(t, self.test_classes)
                              for name, t in base_totals.items()}
    return summary


def restore_for_eval(config: ml_collections.ConfigDict, workdir: str, model):
  """Variables of the checkpoint the config selects: best (select_on='test_fold') or latest."""
  from mmnet_jax import train   # train imports this module; import lazily
  ckpts = checkpoint.RunCheckpoints(workdir)
  manager = ckpts.best if config.eval.select_on == 'test_fold' else ckpts.latest
  if manager.latest_step() is None:
    manager = ckpts.latest
  if manager.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}/{checkpoint.LATEST_DIR} or '
                            f'{workdir}/{checkpoint.BEST_DIR}: train first (--mode=train)')
  abstract = checkpoint.abstract_like(train.abstract_state(model, config),
                                      sharding.replicated(sharding.make_mesh()))
  state, meta = checkpoint.restore(manager, abstract)
  workdir_io.check_fingerprint(meta, train.config_fingerprint(config), str(manager.directory))
  ckpts.close()
  which = 'best' if manager is ckpts.best else 'latest'
  return {'params': state['params'], 'batch_stats': state['batch_stats']}, int(meta['step']), which


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Restores the selected checkpoint of `workdir`, evaluates it (with the baselines on the
  same episodes), saves the episode list and writes `results.json`."""
  from mmnet_jax.models import mmnet
  model = mmnet.build_model(config.model)
  mesh = sharding.make_mesh()
  _, test_classes = datasets.fold_classes(
      config.dataset.name, config.dataset.fold, config.dataset.num_folds,
      coco_convention=config.dataset.coco_convention)
  variables, step, which = restore_for_eval(config, workdir, model)
  evaluator = Evaluator(config, model, mesh, test_classes)
  episode_path = os.path.join(workdir, EPISODES_FILE)
  episode_list = evaluator.episodes(config.eval.num_episodes)
  if jax.process_index() == 0:
    episodes_lib.save_episodes(episode_list, episode_path, evaluator.split,
                               meta={'protocol': config.eval.protocol, 'seed': config.eval.seed,
                                     'fold': config.dataset.fold, 'shots': config.shots})
  summary = evaluator.evaluate(variables, with_baselines=config.eval.baselines,
                               episode_list=episode_list)
  results = dict(summary, step=step, checkpoint=which, selection=config.eval.select_on,
                 protocol=config.eval.protocol, dataset=config.dataset.name,
                 fold=config.dataset.fold, shots=config.shots, episodes_file=EPISODES_FILE)
  if jax.process_index() == 0:
    workdir_io.write_json_atomic(os.path.join(workdir, RESULTS_FILE), results)
    print(format_results(results), flush=True)
  return results


def format_results(results: dict) -> str:
  """A per-class table with the model and the baselines side by side."""
  names = ['model'] + list(results.get('baselines', {}))
  rows = [f'{"class":>8}' + ''.join(f'{n:>20}' for n in names)]
  for c, iou in results['class_iou'].items():
    row = [iou] + [results['baselines'][n]['class_iou'].get(c, float('nan')) for n in names[1:]]
    rows.append(f'{c:>8}' + ''.join(f'{v:>20.2f}' for v in row))
  for key, label in (('miou', 'mIoU'), ('fb_iou', 'FB-IoU')):
    row = [results[key]] + [results['baselines'][n][key] for n in names[1:]]
    rows.append(f'{label:>8}' + ''.join(f'{v:>20.2f}' for v in row))
  header = (f'{results["dataset"]} fold {results["fold"]}, {results["shots"]}-shot, '
            f'{results["episodes"]} episodes ({results["protocol"]} protocol), '
            f'{results["checkpoint"]} checkpoint at step {results["step"]}')
  return header + '\n' + '\n'.join(rows)
