"""Training: `train_and_evaluate(config, workdir)` runs the original MM-Net recipe.

SGD with momentum 0.9 and coupled weight decay (as torch.optim.SGD), the per-iteration poly
learning rate of PFENet/MM-Net (lr_t = lr_multiplier * base_lr * (1 - t/T)^power, t counted
from 1), a jit-compiled step over a data-parallel mesh, orbax checkpoints (latest + best by
mIoU, resumed from the workdir), TensorBoard scalars and a progress bar.

Never losing a run (docs/robustness.md): SIGTERM / SIGINT / SIGHUP save a checkpoint at the next step
boundary and return; a SIGKILLed run resumes from its last complete checkpoint; a resumed run
ends bitwise equal to an uninterrupted one on the same devices; a non-finite loss, gradient or
updated state stops the run naming the step without saving the bad state; one run per workdir
(a lock).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from mmnet_jax import checkpoint
from mmnet_jax import config_checks
from mmnet_jax import evaluate
from mmnet_jax import sharding
from mmnet_jax import workdir_io
from mmnet_jax.data import dataset_registry
from mmnet_jax.data import datasets
from mmnet_jax.data import episodes
from mmnet_jax.data import pipeline
from mmnet_jax.models import losses
from mmnet_jax.models import mmnet

TrainState = dict   # {'step', 'params', 'batch_stats', 'opt_state'}


def poly_lr(config: ml_collections.ConfigDict, total_steps: int):
  """The learning rate of 0-based step s: the original's poly rule with t = s + 1."""
  peak = config.train.lr_multiplier * config.train.base_lr
  power = config.train.poly_power

  def schedule(step):
    # 1 - t/T is computed from the integer count of steps left, so it is exactly 0 at the last
    # step: in floats, XLA's t * (1/T) leaves -1.5e-8 there for T = 3, 5, 10, ... and its
    # 0.9th power is NaN. Works for an array of T too (one schedule per entry).
    remaining = jnp.maximum(total_steps - (jnp.asarray(step) + 1), 0)
    fraction = remaining.astype(jnp.float32) / jnp.asarray(total_steps, jnp.float32)
    return peak * fraction ** power
  return schedule


def trainable_labels(params: Any, freeze_backbone: bool) -> Any:
  """'frozen' for backbone parameters when the backbone is frozen, else 'trainable'."""
  def label(path, _):
    top = getattr(path[0], 'key', None)
    return 'frozen' if freeze_backbone and top == 'backbone' else 'trainable'
  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   params: Any) -> optax.GradientTransformation:
  """torch-style SGD (decay added to the gradient before momentum) on trainable parameters."""
  sgd = optax.chain(
      optax.add_decayed_weights(config.train.weight_decay),
      optax.sgd(poly_lr(config, total_steps), momentum=config.train.momentum))
  return optax.multi_transform(
      {'trainable': sgd, 'frozen': optax.set_to_zero()},
      trainable_labels(params, config.model.freeze_backbone))


def init_variables(model, config: ml_collections.ConfigDict) -> dict:
  """Initial model variables (params, batch_stats) from config.seed, on the host."""
  size = config.train.crop_size
  k = config.shots
  query = jnp.zeros((1, size, size, 3), jnp.float32)
  supports = jnp.zeros((1, k, size, size, 3), jnp.float32)
  masks = jnp.zeros((1, k, size, size), jnp.float32)
  rng = jax.random.key(config.seed)
  variables = jax.jit(lambda r: model.init(r, query, supports, masks, train=False))(rng)
  return dict(variables)


def load_init_from(config: ml_collections.ConfigDict, variables: dict) -> dict:
  """Overwrites `variables` with the converted weights named by config.init_from.

  init_from_format 'backbone' takes only the backbone of the file (ImageNet weights; the head
  keeps its fresh initialisation); 'full' requires the file to cover every model parameter
  (a released MM-Net checkpoint) and raises naming the first modules it lacks.
  """
  if not config.init_from:
    return variables
  from mmnet_jax import convert   # imported lazily: only runs that import weights need it
  converted = convert.load_converted(config.init_from)
  if config.init_from_format == 'backbone':
    converted = {c: {'backbone': t['backbone']} for c, t in converted.items() if 'backbone' in t}
    if not converted:
      raise ValueError(f'config.init_from={config.init_from!r} holds no backbone weights '
                       "(config.init_from_format='backbone')")
  else:
    missing = sorted(set(variables['params']) - set(converted.get('params', {})))
    if missing:
      raise ValueError(f'config.init_from={config.init_from!r} lacks the modules {missing}; '
                       "init_from_format='full' needs a whole-model conversion (mmnet-official)")
  return convert.merge_into(variables, converted)


def create_state(model, config: ml_collections.ConfigDict, total_steps: int) -> tuple[TrainState, Any]:
  """Fresh train state (initialised, init_from applied) and the optimiser."""
  variables = load_init_from(config, init_variables(model, config))
  tx = make_optimizer(config, total_steps, variables['params'])
  state = {
      'step': jnp.zeros((), jnp.int32),
      'params': variables['params'],
      'batch_stats': variables.get('batch_stats', {}),
      'opt_state': tx.init(variables['params']),
  }
  return state, tx


def abstract_state(model, config: ml_collections.ConfigDict) -> TrainState:
  """Shapes and dtypes of a train state (no computation, no init_from): a restore target."""
  def build():
    variables = init_variables(model, config)
    tx = make_optimizer(config, 1, variables['params'])
    return {'step': jnp.zeros((), jnp.int32), 'params': variables['params'],
            'batch_stats': variables.get('batch_stats', {}),
            'opt_state': tx.init(variables['params'])}
  return jax.eval_shape(build)


def support_masks(batch: dict) -> jax.Array:
  """The model's support masks: label == 1 (255 borders and padding count as background)."""
  return (batch['support_labels'] == 1).astype(jnp.float32)


def all_finite(*trees) -> jax.Array:
  """True (a traced bool) when every entry of every leaf of `trees` is finite."""
  leaves = jax.tree_util.tree_leaves(trees)
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


def make_train_step(model, tx, config: ml_collections.ConfigDict):
  """Returns train_step(state, batch) -> (state, metrics), to be jit-compiled.

  metrics['finite_grads']: the loss and the gradients are finite; metrics['finite']: so is
  the new state (parameters and batch statistics)."""
  aux_weight = config.train.aux_weight
  recon_weight = config.train.recon_weight
  base_key = jax.random.key(config.seed)

  def train_step(state, batch):
    dropout_key = jax.random.fold_in(base_key, state['step'])

    def loss_fn(params):
      variables = {'params': params, 'batch_stats': state['batch_stats']}
      outputs, mutated = model.apply(
          variables, batch['query_img'], batch['support_imgs'], support_masks(batch),
          train=True, rngs={'dropout': dropout_key}, mutable=['batch_stats'])
      total, parts = losses.mmnet_loss(outputs, batch['query_label'],
                                       aux_weight=aux_weight, recon_weight=recon_weight)
      return total, (parts, mutated.get('batch_stats', state['batch_stats']))

    (loss, (parts, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    finite_grads = all_finite(loss, grads)
    # The update is checked too: a finite gradient times a bad learning rate (or a momentum
    # overflow) must not be committed either.
    metrics = dict(parts, loss=loss, finite_grads=finite_grads,
                   finite=finite_grads & all_finite(params, new_stats))
    new_state = {'step': state['step'] + 1, 'params': params, 'batch_stats': new_stats,
                 'opt_state': opt_state}
    return new_state, metrics

  return train_step


def total_train_steps(config: ml_collections.ConfigDict, pool_size: int) -> int:
  """config.train.num_steps, or epochs x (pool images // batch) as the original's loader."""
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  per_epoch = pool_size // config.train.batch_size
  if per_epoch == 0:
    raise ValueError(f'the training pool has {pool_size} images, fewer than one batch of '
                     f'{config.train.batch_size} (config train.batch_size)')
  return int(config.train.epochs * per_epoch)


def eval_interval(config: ml_collections.ConfigDict, pool_size: int) -> int:
  """Steps between evaluations: config.train.eval_every, else the original's (every epoch
  up to 50 epochs, else every second epoch)."""
  if config.train.eval_every > 0:
    return int(config.train.eval_every)
  per_epoch = max(1, pool_size // config.train.batch_size)
  return per_epoch * (1 if config.train.epochs <= 50 else 2)


def config_fingerprint(config: ml_collections.ConfigDict) -> dict:
  """The parts of a config that must match for a checkpoint to be resumed or evaluated.
  The compute dtype and the attention chunking change no parameter, so they may differ; so
  may the shots: MM-Net's parameters do not depend on K, so a 1-shot checkpoint is evaluated
  at 5 shots as HSNet's `test.py --nshot 5` does (a resume at another K warns, as a recipe
  change). Checkpoints that recorded 'shots' still match: only these keys are compared."""
  model = {k: v for k, v in config.model.to_dict().items() if k not in ('dtype', 'attention_chunk')}
  return {'model': model, 'dataset': config.dataset.name, 'fold': config.dataset.fold}


RECIPE_FIELDS = ('batch_size', 'crop_size', 'scale_min', 'scale_max', 'rotate_deg', 'epochs',
                 'num_steps', 'base_lr', 'lr_multiplier', 'momentum', 'weight_decay',
                 'poly_power', 'aux_weight', 'recon_weight')


def training_recipe(config: ml_collections.ConfigDict) -> dict:
  """The fields that shape the training trajectory; a resume that changes them warns."""
  return {'seed': config.seed, 'shots': config.shots,
          **{k: config.train[k] for k in RECIPE_FIELDS if k in config.train}}


class StopSignals:
  """SIGTERM / SIGINT / SIGHUP -> `requested` (the signal's name), checked between steps.

  SIGHUP (the terminal or ssh session of a foreground run closed) saves like SIGTERM instead
  of killing the run mid-step.

  The previous handlers come back on exit. A second signal of the same kind gets the previous
  behaviour at once (Ctrl-C twice still interrupts; SIGTERM twice terminates). Outside the main
  thread nothing is installed (Python only delivers signals there).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
  # Left alone when ignored: `nohup` asked the run to outlive its terminal.
  KEEP_IGNORED = (signal.SIGHUP,)

  def __init__(self):
    self.requested: str | None = None
    self._previous: dict = {}

  def _handle(self, signum, frame):
    if self.requested is None:
      self.requested = signal.Signals(signum).name
      return
    previous = self._previous.get(signum, signal.SIG_DFL)
    signal.signal(signum, previous)
    if callable(previous):
      previous(signum, frame)
    elif previous != signal.SIG_IGN:
      os.kill(os.getpid(), signum)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        if signum in self.KEEP_IGNORED and signal.getsignal(signum) == signal.SIG_IGN:
          continue
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


def make_guarded_step(model, tx, config: ml_collections.ConfigDict):
  """train_step plus a device-side record of the first non-finite step, to be jit-compiled.

  guarded(state, batch, first_bad) -> (state, metrics, first_bad), first_bad = {'step': int32
  (-1 while every step was finite, else the 1-based count of the first bad step), 'loss',
  'update_only' (True when the loss and gradients were finite but the new state was not)}.
  Checked on the host only at log, eval, save and stop points, so there is no per-step sync,
  and no state after a non-finite step is ever saved.
  """
  train_step = make_train_step(model, tx, config)

  def guarded(state, batch, first_bad):
    state, metrics = train_step(state, batch)
    new_bad = (~metrics['finite']) & (first_bad['step'] < 0)
    first_bad = {'step': jnp.where(new_bad, state['step'], first_bad['step']),
                 'loss': jnp.where(new_bad, metrics['loss'], first_bad['loss']),
                 'update_only': jnp.where(new_bad, metrics['finite_grads'],
                                          first_bad['update_only'])}
    return state, metrics, first_bad
  return guarded


def no_bad_step() -> dict:
  """The initial `first_bad` record of `make_guarded_step`."""
  return {'step': jnp.full((), -1, jnp.int32), 'loss': jnp.zeros((), jnp.float32),
          'update_only': jnp.zeros((), jnp.bool_)}


def _raise_if_non_finite(first_bad: dict, done: int, ckpts: checkpoint.RunCheckpoints) -> None:
  bad = jax.device_get(first_bad)
  if int(bad['step']) < 0:
    return
  ckpts.wait()
  last = ckpts.latest.latest_step()
  kept = (f'the last good checkpoint (step {last}) in {ckpts.latest.directory} is kept'
          if last is not None else 'no checkpoint had been saved yet')
  what = ('update (the new parameters or batch statistics; the loss and gradients were '
          'finite: check the learning rate)' if bool(bad['update_only'])
          else 'loss or gradient')
  raise FloatingPointError(
      f'non-finite {what} at step {int(bad["step"])} (loss {float(bad["loss"])}, '
      f'seen at step {done}); training stopped, nothing after step {last} was saved; {kept}')


def _restore(ckpts, state, mesh, config):
  """(state, meta) from the workdir's latest checkpoint, or (state, None) for a fresh run."""
  meta = checkpoint.restore_meta(ckpts.latest)
  if meta is None:
    return state, None
  where = str(ckpts.latest.directory)
  workdir_io.check_fingerprint(meta, config_fingerprint(config), where)
  state, meta = checkpoint.restore(ckpts.latest, checkpoint.abstract_like(
      state, sharding.replicated(mesh)))
  saved = meta.get('recipe')
  if saved is not None:
    now = json.loads(json.dumps(training_recipe(config)))
    changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if changed:
      logging.warning('resuming %s with a changed training recipe (checkpoint -> config): %s; '
                      'the run will differ from an uninterrupted one', where, changed)
  return state, meta


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains as configured, resuming from the workdir's latest checkpoint; no final evaluation.

  Returns {'step', 'preempted' (the signal's name or None), 'skipped_samples'}. SIGTERM or
  SIGINT stops at the next step boundary with a checkpoint of that step (preempted set); a
  resumed run continues bitwise as an uninterrupted one would (data keyed by (seed, step),
  dropout by step, an evaluation cut off by the signal re-run on resume). Raises
  FloatingPointError naming the first non-finite step (the last good checkpoint is kept),
  WorkdirInUseError if another run holds the workdir, ConfigError for a bad config.
  """
  mesh = sharding.make_mesh()
  config_checks.check_config(config, num_devices=mesh.devices.size)
  os.makedirs(workdir, exist_ok=True)
  lock = workdir_io.WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    with StopSignals() as stop:
      return _train_locked(config, workdir, mesh, stop)
  finally:
    lock.release()


def _train_locked(config, workdir, mesh, stop: StopSignals) -> dict:
  model = mmnet.build_model(config.model)
  train_classes, test_classes = datasets.fold_classes(
      config.dataset.name, config.dataset.fold, config.dataset.num_folds,
      coco_convention=config.dataset.coco_convention)
  train_split = dataset_registry.open_split(config.dataset, 'train')
  pool = episodes.build_pool(train_split, train_classes,
                             min_class_pixels=config.dataset.min_class_pixels,
                             filter_intersection=config.dataset.filter_intersection)
  total_steps = total_train_steps(config, len(pool))
  every_eval = eval_interval(config, len(pool))
  eval_episodes = int(config.eval.during_training_episodes)
  print(f'training pool: {len(pool)} images of classes {list(train_classes)}; '
        f'{total_steps} steps, evaluation '
        f'{f"every {every_eval}" if eval_episodes else "off"}', flush=True)

  state, tx = create_state(model, config, total_steps)
  ckpts = checkpoint.RunCheckpoints(workdir)
  state, meta = _restore(ckpts, state, mesh, config)
  workdir_io.write_config(config, workdir)   # after the fingerprint check: a refused run
                                            # leaves the workdir's record alone
  best_miou = -1.0
  if meta is not None:
    best_miou = float(meta.get('best_miou', -1.0))
    print(f'resumed from {ckpts.latest.directory} at step {int(state["step"])}', flush=True)
  state = sharding.replicate(state, mesh)

  step_fn = jax.jit(make_guarded_step(model, tx, config), donate_argnums=(0, 2))
  first_bad = sharding.replicate(no_bad_step(), mesh)
  evaluator = evaluate.Evaluator(config, model, mesh, test_classes) if eval_episodes else None
  writer = workdir_io.SummaryWriter(os.path.join(workdir, 'tensorboard'))
  schedule = poly_lr(config, total_steps)
  host_batch = sharding.host_batch_size(config.train.batch_size, mesh)
  start = int(state['step'])
  data = pipeline.train_dataset(pool, config, start_step=start, host_batch_size=host_batch,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
  fingerprint = config_fingerprint(config)
  recipe = training_recipe(config)
  multi_process = jax.process_count() > 1

  def save(step, metrics=None, best=False, eval_pending=False):
    meta = {'step': step, 'best_miou': best_miou, 'fingerprint': fingerprint,
            'recipe': recipe, 'metrics': metrics or {}, 'eval_pending': eval_pending,
            'run_id': ckpts.run_id}   # a best/ of another run is never taken for this one's
    host_state = jax.device_get(state)
    if best:   # committed before the latest that records its mIoU (checkpoint.py)
      ckpts.save_best(step, host_state, meta)
    ckpts.save_latest(step, host_state, meta)

  def run_eval(done):
    nonlocal best_miou
    summary = evaluator.evaluate(
        {'params': state['params'], 'batch_stats': state['batch_stats']},
        num_episodes=eval_episodes, with_baselines=False)
    writer.scalars(done, {'eval/miou': summary['miou'], 'eval/fb_iou': summary['fb_iou']})
    improved = summary['miou'] > best_miou
    best_miou = max(best_miou, summary['miou'])
    bar.write(f'step {done}: mIoU {summary["miou"]:.2f}  FB-IoU {summary["fb_iou"]:.2f}'
              f'{"  (best)" if improved else ""}')
    save(done, {'miou': summary['miou'], 'fb_iou': summary['fb_iou']}, best=improved)

  # The bar advances when steps are known finished (at log points, after the device sync), not
  # as they are dispatched; its postfix shows the window's mean loss and episodes/s.
  bar = tqdm.tqdm(total=total_steps, initial=start, desc='train', unit='step',
                  dynamic_ncols=True, disable=jax.process_index() != 0)
  add_window = jax.jit(lambda window, m: jax.tree_util.tree_map(jnp.add, window, m))
  window = None   # on-device sums of the training scalars since the last log point
  preempted, final_step = None, start
  try:
    if meta is not None and meta.get('eval_pending') and evaluator is not None:
      run_eval(start)   # the evaluation a signal cut off, so the run matches an uninterrupted one
    t_last, steps_since = time.perf_counter(), 0
    for step in range(start, total_steps):
      batch = sharding.to_global(next(data), mesh)
      state, metrics, first_bad = step_fn(state, batch, first_bad)
      scalar_metrics = {k: v for k, v in metrics.items() if not k.startswith('finite')}
      window = scalar_metrics if window is None else add_window(window, scalar_metrics)
      steps_since += 1
      done = step + 1
      log_now = done % config.train.log_every == 0 or done == total_steps
      eval_now = evaluator is not None and (done % every_eval == 0 or done == total_steps)
      save_now = done % config.train.checkpoint_every == 0
      if multi_process:   # every process must stop at the same step: agree at log points
        stop_now = log_now and _any_process(stop.requested is not None)
      else:
        stop_now = stop.requested is not None
      if log_now or eval_now or save_now or stop_now:
        _raise_if_non_finite(first_bad, done, ckpts)
      if log_now:
        # Means over the steps since the last log point (clu's metric_writers average the
        # same way), not the last step's values.
        sums = jax.device_get(window)
        now = time.perf_counter()
        eps = steps_since * config.train.batch_size / (now - t_last)
        lr = float(schedule(step))
        scalars = {k: float(v) / steps_since for k, v in sums.items()}
        scalars.update(lr=lr, episodes_per_s=eps, skipped_samples=data.skips.count)
        writer.scalars(done, {f'train/{k}': v for k, v in scalars.items()})
        bar.update(steps_since)
        bar.set_postfix({'loss': f'{scalars["loss"]:.3f}', 'lr': f'{lr:.2e}',
                         'episodes/s': f'{eps:.1f}'})
        t_last, steps_since, window = now, 0, None
      if stop_now:
        bar.update(steps_since)
        steps_since, window = 0, None
        preempted = stop.requested or 'another process'
        save(done, eval_pending=eval_now)
        final_step = done
        bar.write(f'{preempted}: saved step {done} in {ckpts.latest.directory}; '
                  'run again with the same workdir to resume')
        break
      if eval_now:
        run_eval(done)
      elif save_now:
        save(done)
    else:
      _raise_if_non_finite(first_bad, total_steps, ckpts)
      save(total_steps)
      final_step = total_steps
  finally:
    bar.close()
    data.close()
    ckpts.close()   # waits for the saves in flight
    writer.close()
  if data.skips.count:
    logging.warning('%d training episodes were redrawn because of bad samples (last: %s)',
                    data.skips.count, data.skips.last)
  return {'step': final_step, 'preempted': preempted,
          'skipped_samples': data.skips.count}


def _any_process(flag: bool) -> bool:
  """True if `flag` is True on any process (a collective: every process must call it)."""
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray([flag], np.int32))
  return bool(np.asarray(flags).any())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains MM-Net as configured, then evaluates the selected checkpoint; returns results.

  A run stopped by SIGTERM / SIGINT / SIGHUP returns `train`'s outcome (preempted set) unevaluated.
  """
  outcome = train(config, workdir)
  if outcome['preempted']:
    return outcome
  return evaluate.evaluate_workdir(config, workdir)
