"""Orbax checkpoints of a training run: the latest state and the best state by mIoU.

`<workdir>/checkpoints/<step>` holds the latest train state (resumed from automatically);
`<workdir>/best/<step>` the state with the best evaluation mIoU so far. Each item is an orbax
Composite of `state` (params, batch_stats, opt_state, step) and `meta` (JSON: step, metrics,
config fingerprint, run id).

Crash safety (a run may be SIGKILLed at any moment):
* Orbax writes each step into `<step>.orbax-checkpoint-tmp-<n>` and renames it to `<step>` only
  when every file is written; `latest_step()` never lists the temporary name, and the writer's
  managers delete such leftovers (`cleanup_tmp_directories`).
* With max_to_keep=1 the previous step is deleted only after the new one is committed, so a
  complete checkpoint exists at every moment after the first save.
* `save_best` blocks until the best checkpoint is committed; train saves it before the latest,
  so a latest checkpoint whose meta records a best mIoU always has that best state on disk.

Readers and stale state:
* `RunCheckpoints(workdir, read_only=True)` (evaluation, prediction) never creates, cleans up
  or deletes anything, so it can run beside a live training: the in-flight temporary directory
  is the writer's. A step the writer deletes while a reader restores it raises
  `CheckpointVanishedError`: the reader opens again and takes the newer step.
* Only complete steps count (orbax's commit marker and both items present): a stray or partial
  `<step>` directory is skipped with a warning; the writer moves it to `<workdir>/set_aside/`.
* Every checkpoint's meta records the run id; a fresh run (no complete latest checkpoint)
  moves a `best/` left by an earlier run to `<workdir>/set_aside/`, and readers ignore a best
  whose run id differs from the latest's. Nothing is deleted.
* A checkpoint whose files cannot be read although its stored shapes match raises
  `CorruptedCheckpointError` ("corrupted: <path>"), not a config mismatch.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mmnet_jax import storage

LATEST_DIR = 'checkpoints'
BEST_DIR = 'best'
SET_ASIDE_DIR = 'set_aside'
ITEMS = ('state', 'meta')
COMMIT_FILE = 'commit_success.txt'   # orbax writes it last, before the rename to <step>


class CorruptedCheckpointError(ValueError):
  """A checkpoint's files are damaged (its stored shapes match the model, its data not)."""


class CheckpointVanishedError(FileNotFoundError):
  """The step being read was deleted meanwhile (a live writer keeps one step)."""


def _manager(path: str, max_to_keep: int | None, read_only: bool) -> ocp.CheckpointManager:
  if read_only:   # the same options on orbax 0.12.4 (Colab) and 0.12.8
    options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           cleanup_tmp_directories=False,
                                           save_interval_steps=0)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           cleanup_tmp_directories=True)
  if not storage.is_remote(path):
    path = os.path.abspath(path)
  return ocp.CheckpointManager(path, options=options)


def step_path(manager: ocp.CheckpointManager, step: int) -> str:
  """The directory of `step` (orbax's default names: the step number)."""
  return storage.join(str(manager.directory), str(step))


def is_complete(path: str) -> bool:
  """True if the step directory `path` was committed by orbax and holds both items."""
  return (storage.isfile(storage.join(path, COMMIT_FILE))
          and all(storage.isdir(storage.join(path, item)) for item in ITEMS))


def _step_dirs(directory: str) -> list[int]:
  """The step numbers named by directories in `directory` (temporary names excluded)."""
  if not storage.isdir(directory):
    return []
  return sorted(int(n) for n in storage.listdir(directory)
                if n.isdigit() and storage.isdir(storage.join(directory, n)))


def latest_complete_step(manager: ocp.CheckpointManager) -> int | None:
  """The newest complete step of `manager`, warning about newer incomplete ones skipped."""
  for step in sorted(manager.all_steps(), reverse=True):
    path = step_path(manager, step)
    if is_complete(path):
      return step
    if storage.isdir(path):   # else deleted meanwhile by a writer: nothing to report
      logging.warning('skipping the incomplete checkpoint %s (no %s or items %s); using the '
                      'last complete step below it', path, COMMIT_FILE, list(ITEMS))
  return None


def set_aside(path: str, workdir: str, reason: str) -> str:
  """Moves `path` to `<workdir>/set_aside/<name>_<time>` (never deletes); returns the target."""
  parent = storage.join(workdir, SET_ASIDE_DIR)
  storage.makedirs(parent)
  # relpath of two abspaths: also right for gs:// ones, which abspath prefixes alike.
  name = os.path.relpath(os.path.abspath(path), os.path.abspath(workdir)).replace(os.sep, '_')
  target = storage.join(parent, f'{name}_{time.strftime("%Y%m%dT%H%M%S")}')
  n = 1
  while storage.exists(target):
    target = storage.join(parent, f'{name}_{time.strftime("%Y%m%dT%H%M%S")}_{n}')
    n += 1
  storage.rename(path, target)
  logging.warning('moved %s to %s: %s', path, target, reason)
  return target


def foreign_best_reason(latest_meta: dict | None, best_meta: dict | None) -> str | None:
  """Why a best checkpoint (meta `best_meta`) is not the latest's run, or None if it may be.

  No latest checkpoint: the best was left by an earlier run. Both run ids recorded and
  different: another run. Checkpoints written before run ids existed are not judged."""
  if best_meta is None:
    return None
  if latest_meta is None:
    return 'there is no latest checkpoint, so it was left by an earlier run'
  ids = latest_meta.get('run_id'), best_meta.get('run_id')
  if None not in ids and ids[0] != ids[1]:
    return f'its run id {ids[1]} is not the latest checkpoint\'s ({ids[0]})'
  return None


def _process0_string(text: str) -> str:
  """Process 0's `text` on every process (a collective, so also a barrier); 16 ASCII chars."""
  if jax.process_count() == 1:
    return text
  from jax.experimental import multihost_utils
  raw = np.frombuffer(text.encode('ascii').ljust(16)[:16], np.uint8)
  return np.asarray(multihost_utils.broadcast_one_to_all(raw), np.uint8).tobytes().decode(
      'ascii').strip()


def _newest_complete(directory: str) -> int | None:
  complete = [s for s in _step_dirs(directory) if is_complete(os.path.join(directory, str(s)))]
  return max(complete, default=None)


def _meta_file(directory: str, step: int) -> dict | None:
  """The JSON meta item of a step as orbax's JsonSave writes it; None if unreadable."""
  try:
    meta = json.loads(storage.read_text(storage.join(directory, str(step), 'meta', 'metadata')))
  except (OSError, ValueError):
    return None
  return meta if isinstance(meta, dict) else None


def _recover(workdir: str) -> str | None:
  """The writer's start: moves incomplete steps and another run's best to set_aside/.
  Returns the latest complete checkpoint's run id (None: fresh run, or none recorded)."""
  latest_dir = os.path.join(workdir, LATEST_DIR)
  for step in _step_dirs(latest_dir):
    path = os.path.join(latest_dir, str(step))
    if not is_complete(path):   # orbax would list it as a step and refuse older saves
      set_aside(path, workdir, f'incomplete checkpoint (no {COMMIT_FILE} or items {list(ITEMS)})')
  best_dir = os.path.join(workdir, BEST_DIR)
  for step in _step_dirs(best_dir):
    path = os.path.join(best_dir, str(step))
    if not is_complete(path):
      set_aside(path, workdir, 'incomplete best checkpoint')
  # Plain file reads, no orbax manager: only process 0 runs this, and orbax's managers
  # synchronise all processes (the others wait in the broadcast below: a deadlock).
  latest_step = _newest_complete(latest_dir)
  best_step = _newest_complete(best_dir)
  latest_meta = None if latest_step is None else _meta_file(latest_dir, latest_step)
  best_meta = None if best_step is None else _meta_file(best_dir, best_step)
  if latest_step is not None and latest_meta is None:
    return None   # unreadable: the restore reports it; judge nothing here
  reason = foreign_best_reason(latest_meta, best_meta)
  if reason is not None:
    set_aside(best_dir, workdir, f'the best checkpoint {best_dir}/{best_step} is not this '
              f'run\'s: {reason}')
  return None if latest_meta is None else latest_meta.get('run_id')


class RunCheckpoints:
  """The latest and best checkpoints of one workdir.

  The writer (`read_only=False`, the training run holding the workdir lock) first moves
  incomplete steps and another run's best aside (module docstring) and knows its `run_id`
  (resumed, else new). Readers (`read_only=True`) change nothing on disk.
  """

  def __init__(self, workdir: str, read_only: bool = False):
    self.read_only = read_only
    self.run_id = None
    if not read_only:
      resumed = _recover(workdir) if jax.process_index() == 0 else None
      # Broadcast after the moves: the other processes open the managers once they are done.
      self.run_id = _process0_string(resumed or uuid.uuid4().hex[:16])
    keep = None if read_only else 1
    self.latest = _manager(os.path.join(workdir, LATEST_DIR), keep, read_only)
    self.best = _manager(os.path.join(workdir, BEST_DIR), keep, read_only)

  def save_latest(self, step: int, state: Any, meta: dict) -> None:
    """Saves `state` at `step` as the latest checkpoint (replacing the previous one)."""
    if self.latest.latest_step() == step:
      return
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def save_best(self, step: int, state: Any, meta: dict) -> None:
    """Saves `state` as the best checkpoint (the caller decides what is best) and waits until
    it is committed (see the module docstring for why)."""
    if self.best.latest_step() == step:
      return
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self.best.wait_until_finished()

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()


def abstract_like(tree: Any, sharding=None) -> Any:
  """ShapeDtypeStructs describing `tree`, the target of a restore, placed with `sharding`
  (default: each leaf's own sharding)."""
  def leaf(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=sharding or getattr(x, 'sharding', None))
  return jax.tree_util.tree_map(leaf, tree)


def _vanished_or(manager, step: int, error: Exception) -> Exception:
  """CheckpointVanishedError if `step` is gone or superseded (a writer deletes the old step
  after committing a newer one, so a failed read of it may be that deletion), else `error`."""
  directory = str(manager.directory)
  newer = [s for s in _step_dirs(directory)
           if s > step and is_complete(os.path.join(directory, str(s)))]
  if newer or not storage.isdir(step_path(manager, step)):
    return CheckpointVanishedError(f'checkpoint {step_path(manager, step)} was replaced while '
                                   f'being read: {error}')
  return error


def restore_meta(manager: ocp.CheckpointManager, step: int | None = None) -> dict | None:
  """The JSON meta of the checkpoint at `step` (default: the latest complete one) without
  reading the arrays; None if there is no checkpoint. Lets a caller refuse another config's
  checkpoint by its fingerprint before a restore fails on mismatched shapes."""
  step = latest_complete_step(manager) if step is None else step
  if step is None:
    return None
  try:
    restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  except Exception as e:   # orbax and tensorstore raise many types for damaged files
    error = _vanished_or(manager, step, e)
    if isinstance(error, CheckpointVanishedError):
      raise error from e
    raise CorruptedCheckpointError(f'corrupted: {step_path(manager, step)}/meta cannot be '
                                   f'read ({type(e).__name__}: {e})') from e
  meta = restored['meta']
  if not isinstance(meta, dict):
    raise CorruptedCheckpointError(f'corrupted: {step_path(manager, step)}/meta is not a JSON '
                                   f'object ({type(meta).__name__})')
  return meta


def _leaf_signature(tree: Any) -> list[tuple]:
  """Sorted (shape, dtype) of every array leaf: what a model fixes, whatever the tree types."""
  leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: hasattr(x, 'shape'))
  return sorted((tuple(int(d) for d in x.shape), np.dtype(x.dtype).name) for x in leaves)


def stored_matches(path: str, abstract_state: Any) -> bool | None:
  """Whether the arrays recorded in the state item at `path` have the shapes and dtypes of
  `abstract_state`; None if that record itself cannot be read."""
  try:
    from etils import epath   # an orbax dependency
    stored = ocp.StandardCheckpointHandler().metadata(epath.Path(path) / 'state')
  except Exception:   # a damaged or missing record: nothing to compare
    return None
  stored = getattr(stored, 'tree', stored)
  if stored is None:
    return None
  return _leaf_signature(stored) == _leaf_signature(abstract_state)


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            step: int | None = None) -> tuple[Any, dict] | None:
  """Restores (state, meta) from `manager` at `step` (default: the latest complete one); None
  if there is none.

  Raises CorruptedCheckpointError ("corrupted: <path>") when the stored shapes match but the
  files cannot be read, ValueError ("another model or config?") when they differ, and
  CheckpointVanishedError when a writer deleted the step meanwhile.
  """
  step = latest_complete_step(manager) if step is None else step
  if step is None:
    return None
  path = step_path(manager, step)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  except Exception as e:   # orbax and tensorstore raise many types for damaged files
    error = _vanished_or(manager, step, e)
    if isinstance(error, CheckpointVanishedError):
      raise error from e
    if stored_matches(path, abstract_state) is False:
      raise ValueError(
          f'checkpoint {path} does not match this config\'s model and optimiser (another '
          f'model or config?): {e}') from e
    raise CorruptedCheckpointError(
        f'corrupted: {path} (its files cannot be read: {type(e).__name__}: {e}); move it away '
        'to start again from scratch') from e
  return restored['state'], restored['meta']
