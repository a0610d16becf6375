"""What the PFENet family (PFENet, MM-Net) shares before its model-specific head: the episode
input checks and the mid-level reduction of concat(layer3, layer2) (down_query / down_supp).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmnet_jax.models.backbone import feature_size, get_spec
from mmnet_jax.models.conv import DTYPES
from mmnet_jax.models.decoder import channel_dropout
from mmnet_jax.models.initializers import torch_conv


BN_MODES = ('train', 'frozen')


def module_kwargs(model_config: Any, fields) -> dict:
  """The module attributes `fields` found in ``config.model`` (a ConfigDict, mapping or object);
  absent ones keep the module's defaults."""
  get = (model_config.get if hasattr(model_config, 'get')
         else lambda k, d: getattr(model_config, k, d))
  kwargs = {}
  for field in fields:
    value = get(field, None)
    if value is not None:
      kwargs[field] = tuple(value) if field == 'ppm_scales' else value
  return kwargs


def check_family_fields(module) -> None:
  """Raises ValueError naming the bad config.model field among those the family shares."""
  get_spec(module.backbone)
  if module.bn_mode not in BN_MODES:
    raise ValueError(f'config.model.bn_mode must be one of {BN_MODES}, got {module.bn_mode!r}')
  if module.dtype not in DTYPES:
    raise ValueError(f'config.model.dtype must be one of {sorted(DTYPES)}, got {module.dtype!r}')
  if module.dtype == 'float64' and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
    raise ValueError("config.model.dtype 'float64' needs jax.config.update('jax_enable_x64', "
                     'True) (and float64 variables)')
  if int(module.attention_chunk) < 0:
    raise ValueError(f'config.model.attention_chunk must be >= 0 (0 = off), '
                     f'got {module.attention_chunk}')
  if not module.ppm_scales:
    raise ValueError('config.model.ppm_scales must not be empty')
  if int(module.reduce_dim) < 1:
    raise ValueError(f'config.model.reduce_dim must be >= 1, got {module.reduce_dim}')


def check_config_fields(c, config) -> None:
  """config_checks.Checker rules for the config.model fields the family shares (MM-Net, PFENet)."""
  from mmnet_jax.models import backbone  # pylint: disable=g-import-not-at-top
  del config
  c.one_of('model.backbone', tuple(backbone.BACKBONES))
  c.int_at_least('model.reduce_dim', 1)
  c.one_of('model.bn_mode', BN_MODES)
  c.num_in('model.feature_dropout', 0, 1, high_open=True)
  c.num_in('model.head_dropout', 0, 1, high_open=True)
  c.check('model.ppm_scales', lambda v: len(v) >= 1 and all(
      isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in v),
          'a non-empty list of positive scales')
  # float64 needs jax_enable_x64, which main.py never sets: it is the parity tool's, not a run's.
  c.one_of('model.dtype', tuple(d for d in DTYPES if d != 'float64'))
  c.num_in('train.aux_weight', 0, float('inf'), high_open=True)


class MidLevelReduce(nn.Module):
  """``conv`` 1x1 (no bias) + ReLU + Dropout2d: down_query / down_supp of the originals."""
  features: int
  dropout: float
  dtype: Any = jnp.float32   # computation dtype

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(torch_conv(self.features, 1, x.shape[-1], name='conv', dtype=self.dtype)(x))
    return channel_dropout(self.dropout)(x, deterministic=not train)


def check_episode_inputs(query_img: jax.Array, support_imgs: jax.Array,
                         support_masks: jax.Array) -> int:
  """Returns K after checking the shapes of one batch of episodes; raises ValueError naming them.

  query_img (B, H, W, 3), support_imgs (B, K, H', W', 3), support_masks (B, K, H', W'), with
  every side (s - 1) % 8 == 0 (backbone.feature_size).
  """
  b, h_in, w_in, _ = query_img.shape
  if support_imgs.ndim != 5 or support_imgs.shape[0] != b:
    raise ValueError(f'support_imgs must be (B={b}, K, H, W, 3), got {support_imgs.shape}')
  k_shots = support_imgs.shape[1]
  if k_shots < 1:
    raise ValueError('support_imgs must hold at least one shot (K >= 1)')
  if support_masks.shape != support_imgs.shape[:4]:
    raise ValueError(f'support_masks must be {support_imgs.shape[:4]} (B, K, H, W), '
                     f'got {support_masks.shape}')
  feature_size(h_in, w_in)
  feature_size(*support_imgs.shape[2:4])
  return k_shots
