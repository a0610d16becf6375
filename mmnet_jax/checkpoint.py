"""Orbax checkpoints of a training run: the latest state and the best state by mIoU.

`<workdir>/checkpoints/<step>` holds the latest train state (resumed from automatically);
`<workdir>/best/<step>` the state with the best evaluation mIoU so far. Each item is an orbax
Composite of `state` (params, batch_stats, opt_state, step) and `meta` (JSON: step, metrics,
config fingerprint).

Crash safety (a run may be SIGKILLed at any moment):
* Orbax writes each step into `<step>.orbax-checkpoint-tmp-<n>` and renames it to `<step>` only
  when every file is written; `latest_step()` never lists the temporary name, and opening the
  managers deletes such leftovers (`cleanup_tmp_directories`).
* With max_to_keep=1 the previous step is deleted only after the new one is committed, so a
  complete checkpoint exists at every moment after the first save.
* `save_best` blocks until the best checkpoint is committed; train saves it before the latest,
  so a latest checkpoint whose meta records a best mIoU always has that best state on disk.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

LATEST_DIR = 'checkpoints'
BEST_DIR = 'best'


def _manager(path: str, max_to_keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(path), options=options)


class RunCheckpoints:
  """The latest and best checkpoints of one workdir."""

  def __init__(self, workdir: str):
    self.latest = _manager(os.path.join(workdir, LATEST_DIR), max_to_keep=1)
    self.best = _manager(os.path.join(workdir, BEST_DIR), max_to_keep=1)

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


def restore_meta(manager: ocp.CheckpointManager, step: int | None = None) -> dict | None:
  """The JSON meta of the checkpoint at `step` (default latest) without reading the arrays;
  None if there is no checkpoint. Lets a caller refuse another config's checkpoint by its
  fingerprint before a restore fails on mismatched shapes."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  return restored['meta']


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            step: int | None = None) -> tuple[Any, dict] | None:
  """Restores (state, meta) from `manager` at `step` (default latest); None if there is none."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(
        f'checkpoint {manager.directory}/{step} does not match this config\'s model and '
        f'optimiser (another model or config?): {e}') from e
  return restored['state'], restored['meta']
