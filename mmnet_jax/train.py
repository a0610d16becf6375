"""Training: `train_and_evaluate(config, workdir)` trains the model of config.model.name.

The original recipe of MM-Net and PFENet: torch-style SGD with the per-iteration poly learning
rate (optimizer.py), the model's own loss (its registry spec), a jit-compiled step over a
data-parallel mesh, orbax checkpoints (latest + best by mIoU, resumed from the workdir),
TensorBoard scalars and a progress bar.

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
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from mmnet_jax import checkpoint
from mmnet_jax import config_checks
from mmnet_jax import evaluate
from mmnet_jax import optimizer
from mmnet_jax import sharding
from mmnet_jax import storage
from mmnet_jax import train_state
from mmnet_jax import workdir_io
from mmnet_jax.data import dataset_registry
from mmnet_jax.data import datasets
from mmnet_jax.data import pipeline
from mmnet_jax.data import streams
from mmnet_jax.models import registry


def all_finite(*trees) -> jax.Array:
  """True (a traced bool) when every entry of every leaf of `trees` is finite."""
  leaves = jax.tree_util.tree_leaves(trees)
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves] or [True]))


def make_train_step(model, tx, config: ml_collections.ConfigDict):
  """Returns train_step(state, batch) -> (state, metrics), to be jit-compiled.

  metrics['finite_grads']: the loss and the gradients are finite; metrics['finite']: so is
  the new state (parameters and batch statistics); the other entries are the loss and the
  model's loss terms (its registry spec's `loss`)."""
  model_loss = registry.of(config).loss
  base_key = jax.random.key(config.seed)

  def train_step(state, batch):
    dropout_key = jax.random.fold_in(base_key, state['step'])

    def loss_fn(params):
      variables = {'params': params, 'batch_stats': state['batch_stats']}
      outputs, mutated = model.apply(
          variables, batch['query_img'], batch['support_imgs'], train_state.support_masks(batch),
          train=True, rngs={'dropout': dropout_key}, mutable=['batch_stats'])
      total, parts = model_loss(outputs, batch['query_label'], config.train)
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


RECIPE_FIELDS = ('batch_size', 'crop_size', 'scale_min', 'scale_max', 'rotate_deg', 'epochs',
                 'num_steps', 'base_lr', 'lr_multiplier', 'momentum', 'weight_decay',
                 'poly_power', 'aux_weight', 'recon_weight', 'optimizer', 'lr_schedule',
                 'augment')


def training_recipe(config: ml_collections.ConfigDict) -> dict:
  """The fields that shape the training trajectory (the model's loss weights included); a
  resume that changes them warns."""
  fields = RECIPE_FIELDS + tuple(registry.of(config).train_defaults)
  return {'seed': config.seed, 'shots': config.shots,
          'pipeline': streams.training_draws(config),
          **{k: config.train[k] for k in dict.fromkeys(fields) if k in config.train}}


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
  workdir_io.check_fingerprint(meta, train_state.config_fingerprint(config), where)
  state, meta = checkpoint.restore(ckpts.latest, checkpoint.abstract_like(
      state, sharding.replicated(mesh)))
  saved = meta.get('recipe')
  if saved is not None:
    now = json.loads(json.dumps(training_recipe(config)))
    saved = {'pipeline': 'numpy', **saved}   # recorded before there was a graph pipeline
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
  storage.makedirs(workdir)
  lock = workdir_io.WorkdirLock(workdir)
  if jax.process_index() == 0:
    lock.acquire()
  try:
    with StopSignals() as stop:
      return _train_locked(config, workdir, mesh, stop)
  finally:
    lock.release()


def _train_locked(config, workdir, mesh, stop: StopSignals) -> dict:
  model = registry.build(config)
  train_classes, test_classes = datasets.fold_classes(
      config.dataset.name, config.dataset.fold, config.dataset.num_folds,
      coco_convention=config.dataset.coco_convention)
  pool = pipeline.train_pool(dataset_registry.open_split(config.dataset, 'train'), train_classes,
                             config)
  total_steps = total_train_steps(config, len(pool))
  every_eval = eval_interval(config, len(pool))
  eval_episodes = int(config.eval.during_training_episodes)
  print(f'training pool: {len(pool)} images of classes {list(train_classes)}; '
        f'{total_steps} steps, evaluation '
        f'{f"every {every_eval}" if eval_episodes else "off"}', flush=True)

  state, tx = train_state.create_state(model, config, total_steps)
  ckpts = checkpoint.RunCheckpoints(workdir)
  state, meta = _restore(ckpts, state, mesh, config)
  workdir_io.write_config(config, workdir)   # after the fingerprint check: a refused run
                                            # leaves the workdir's record alone
  run = _Run(config, workdir, ckpts, total_steps, best_miou=float((meta or {}).get('best_miou', -1.0)))
  if meta is not None:
    print(f'resumed from {ckpts.latest.directory} at step {int(state["step"])}', flush=True)
  state = sharding.replicate(state, mesh)
  step_fn = jax.jit(make_guarded_step(model, tx, config), donate_argnums=(0, 2))
  first_bad = sharding.replicate(no_bad_step(), mesh)
  evaluator = evaluate.Evaluator(config, model, mesh, test_classes) if eval_episodes else None
  start = int(state['step'])
  data = streams.train_dataset(pool, config, start_step=start,
                                host_batch_size=sharding.host_batch_size(
                                    config.train.batch_size, mesh),
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
  run.open(start, data.skips)
  preempted, final_step = None, start
  try:
    if meta is not None and meta.get('eval_pending') and evaluator is not None:
      run.evaluate(evaluator, state, start)   # the evaluation a signal cut off, as uninterrupted
    for step in range(start, total_steps):
      state, metrics, first_bad = step_fn(state, sharding.to_global(next(data), mesh), first_bad)
      run.add(metrics)
      done = step + 1
      log_now = done % config.train.log_every == 0 or done == total_steps
      eval_now = evaluator is not None and (done % every_eval == 0 or done == total_steps)
      save_now = done % config.train.checkpoint_every == 0
      stop_now = _stop_requested(stop, log_now)
      if log_now or eval_now or save_now or stop_now:
        _raise_if_non_finite(first_bad, done, ckpts)
      if log_now:
        run.log(done)
      if stop_now:
        preempted = stop.requested or 'another process'
        run.stop(state, done, preempted, eval_pending=eval_now)
        final_step = done
        break
      if eval_now:
        run.evaluate(evaluator, state, done)
      elif save_now:
        run.save(state, done)
    else:
      _raise_if_non_finite(first_bad, total_steps, ckpts)
      run.save(state, total_steps)
      final_step = total_steps
  finally:
    run.close()
    data.close()
    ckpts.close()   # waits for the saves in flight
  if data.skips.count:
    logging.warning('%d training episodes were redrawn because of bad samples (last: %s)',
                    data.skips.count, data.skips.last)
  return {'step': final_step, 'preempted': preempted,
          'skipped_samples': data.skips.count}


def _stop_requested(stop: StopSignals, log_now: bool) -> bool:
  """Whether to stop after this step: a signal here; with several processes, a signal on any
  process, agreed at log points (every process must stop at the same step)."""
  if jax.process_count() > 1:
    return log_now and _any_process(stop.requested is not None)
  return stop.requested is not None


class _Run:
  """What a training run records as it goes: its best mIoU, checkpoints with their metadata,
  the training scalars of each log window, TensorBoard and the progress bar."""

  def __init__(self, config, workdir: str, ckpts: checkpoint.RunCheckpoints, total_steps: int,
               best_miou: float):
    self.config, self.ckpts, self.total_steps = config, ckpts, total_steps
    self.best_miou = best_miou
    self.fingerprint = train_state.config_fingerprint(config)
    self.recipe = training_recipe(config)
    self.schedule = optimizer.learning_rate(config, total_steps)
    self.writer = workdir_io.SummaryWriter(os.path.join(workdir, 'tensorboard'))
    self._add = jax.jit(lambda window, m: jax.tree_util.tree_map(jnp.add, window, m))
    self.window = None   # on-device sums of the training scalars since the last log point
    self.steps_in_window = 0

  def open(self, start: int, skips: pipeline.SkipCounter) -> None:
    """Starts the bar at `start`. It advances when steps are known finished (at log points,
    after the device sync), not as they are dispatched."""
    self.skips = skips
    self.bar = tqdm.tqdm(total=self.total_steps, initial=start, desc='train', unit='step',
                         dynamic_ncols=True, disable=jax.process_index() != 0)
    self.t_window = time.perf_counter()

  def add(self, metrics: dict) -> None:
    """Adds one step's scalars to the window (on device: no sync)."""
    scalars = {k: v for k, v in metrics.items() if not k.startswith('finite')}
    self.window = scalars if self.window is None else self._add(self.window, scalars)
    self.steps_in_window += 1

  def log(self, done: int) -> None:
    """Writes the means over the window's steps (as clu's metric_writers average), not the
    last step's values; the bar shows the mean loss, the learning rate and episodes/s."""
    sums = jax.device_get(self.window)
    now = time.perf_counter()
    n = self.steps_in_window
    eps = n * self.config.train.batch_size / (now - self.t_window)
    lr = float(self.schedule(done - 1))
    scalars = {k: float(v) / n for k, v in sums.items()}
    scalars.update(lr=lr, episodes_per_s=eps, skipped_samples=self.skips.count)
    self.writer.scalars(done, {f'train/{k}': v for k, v in scalars.items()})
    self.bar.update(n)
    self.bar.set_postfix({'loss': f'{scalars["loss"]:.3f}', 'lr': f'{lr:.2e}',
                          'episodes/s': f'{eps:.1f}'})
    self.t_window, self.steps_in_window, self.window = now, 0, None

  def save(self, state, step: int, metrics=None, best=False, eval_pending=False) -> None:
    meta = {'step': step, 'best_miou': self.best_miou, 'fingerprint': self.fingerprint,
            'recipe': self.recipe, 'metrics': metrics or {}, 'eval_pending': eval_pending,
            'run_id': self.ckpts.run_id}   # a best/ of another run is never taken for this one's
    host_state = jax.device_get(state)
    if best:   # committed before the latest that records its mIoU (checkpoint.py)
      self.ckpts.save_best(step, host_state, meta)
    self.ckpts.save_latest(step, host_state, meta)

  def evaluate(self, evaluator, state, done: int) -> None:
    """Evaluates on the test fold, logs it and saves (best/ too when the mIoU improved)."""
    summary = evaluator.evaluate(
        {'params': state['params'], 'batch_stats': state['batch_stats']},
        num_episodes=int(self.config.eval.during_training_episodes), with_baselines=False)
    self.writer.scalars(done, {'eval/miou': summary['miou'], 'eval/fb_iou': summary['fb_iou']})
    improved = summary['miou'] > self.best_miou
    self.best_miou = max(self.best_miou, summary['miou'])
    self.bar.write(f'step {done}: mIoU {summary["miou"]:.2f}  FB-IoU {summary["fb_iou"]:.2f}'
                   f'{"  (best)" if improved else ""}')
    self.save(state, done, {'miou': summary['miou'], 'fb_iou': summary['fb_iou']},
              best=improved)

  def stop(self, state, done: int, signal_name: str, eval_pending: bool) -> None:
    """Saves step `done` for a resume (with the evaluation it cut off pending)."""
    self.bar.update(self.steps_in_window)
    self.steps_in_window, self.window = 0, None
    self.save(state, done, eval_pending=eval_pending)
    self.bar.write(f'{signal_name}: saved step {done} in {self.ckpts.latest.directory}; '
                   'run again with the same workdir to resume')

  def close(self) -> None:
    if hasattr(self, 'bar'):
      self.bar.close()
    self.writer.close()


def _any_process(flag: bool) -> bool:
  """True if `flag` is True on any process (a collective: every process must call it)."""
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.asarray([flag], np.int32))
  return bool(np.asarray(flags).any())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the configured model, then evaluates the selected checkpoint; returns results.

  A run stopped by SIGTERM / SIGINT / SIGHUP returns `train`'s outcome (preempted set) unevaluated.
  """
  outcome = train(config, workdir)
  if outcome['preempted']:
    return outcome
  return evaluate.evaluate_workdir(config, workdir)
