"""The training recipe's optimiser: torch-style SGD with the per-iteration poly learning rate
(PFENet, MM-Net), or torch-style Adam at a constant rate (HSNet).

`config.train.optimizer`: 'sgd' is torch.optim.SGD with momentum and coupled weight decay;
'adam' is torch.optim.Adam (betas 0.9 / 0.999, eps 1e-8 outside the square root, weight decay
added to the gradient). `config.train.lr_schedule`: 'poly' is lr_t = lr_multiplier * base_lr *
(1 - t/T)^power with t counted from 1 (PFENet's and MM-Net's util.poly_learning_rate with
index_split=-1: every parameter group at 10x); 'constant' is lr_multiplier * base_lr (HSNet's
Adam at 1e-3). Frozen parameters are never updated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmnet_jax.models import registry


OPTIMIZERS = ('sgd', 'adam')
LR_SCHEDULES = ('poly', 'constant')
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8   # torch.optim.Adam's defaults (HSNet keeps them)


def learning_rate(config: ml_collections.ConfigDict, total_steps: int, dtype=jnp.float32):
  """The schedule of `config.train.lr_schedule`: step (0-based) -> learning rate."""
  kind = config.train.get('lr_schedule', 'poly')
  if kind == 'poly':
    return poly_lr(config, total_steps, dtype)
  if kind != 'constant':
    raise ValueError(f'config.train.lr_schedule={kind!r}; expected one of {list(LR_SCHEDULES)}')
  peak = config.train.lr_multiplier * config.train.base_lr
  return lambda step: jnp.full(jnp.shape(step), peak, dtype)


def poly_lr(config: ml_collections.ConfigDict, total_steps: int, dtype=jnp.float32):
  """The learning rate of 0-based step s: the original's poly rule with t = s + 1, in
  ``dtype`` (the parameters'; float64 only for float64 parameters)."""
  peak = config.train.lr_multiplier * config.train.base_lr
  power = config.train.poly_power

  def schedule(step):
    # 1 - t/T is computed from the integer count of steps left, so it is exactly 0 at the last
    # step: in floats, XLA's t * (1/T) leaves -1.5e-8 there for T = 3, 5, 10, ... and its
    # 0.9th power is NaN. Works for an array of T too (one schedule per entry).
    remaining = jnp.maximum(total_steps - (jnp.asarray(step) + 1), 0)
    fraction = remaining.astype(dtype) / jnp.asarray(total_steps, dtype)
    return peak * fraction ** power
  return schedule


def trainable_labels(params: Any, freeze_backbone: bool,
                     frozen: tuple[str, ...] = ('backbone',)) -> Any:
  """'frozen' for the parameters under the top-level keys `frozen` (the model spec's: its
  backbone) when the backbone is frozen, else 'trainable'."""
  def label(path, _):
    top = getattr(path[0], 'key', None)
    return 'frozen' if freeze_backbone and top in frozen else 'trainable'
  return jax.tree_util.tree_map_with_path(label, params)


def _float_dtype(params: Any):
  """float32, or float64 when the parameters are (a float64 lr keeps their precision)."""
  leaves = [x for x in jax.tree_util.tree_leaves(params) if hasattr(x, 'dtype')]
  return jnp.float64 if any(x.dtype == jnp.float64 for x in leaves) else jnp.float32


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   params: Any) -> optax.GradientTransformation:
  """torch-style SGD or Adam (decay added to the gradient first) on trainable parameters."""
  schedule = learning_rate(config, total_steps, _float_dtype(params))
  kind = config.train.get('optimizer', 'sgd')
  if kind == 'sgd':
    update = optax.sgd(schedule, momentum=config.train.momentum)
  elif kind == 'adam':
    update = optax.adam(schedule, b1=ADAM_BETAS[0], b2=ADAM_BETAS[1], eps=ADAM_EPS)
  else:
    raise ValueError(f'config.train.optimizer={kind!r}; expected one of {list(OPTIMIZERS)}')
  tx = optax.chain(optax.add_decayed_weights(config.train.weight_decay), update)
  return optax.multi_transform(
      {'trainable': tx, 'frozen': optax.set_to_zero()},
      trainable_labels(params, bool(config.model.get('freeze_backbone', False)),
                       registry.of(config).frozen))
