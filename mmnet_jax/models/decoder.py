"""FEM decoder (PFENet's feature enrichment module) with auxiliary heads.

Input: the query map Q (N channels), optionally a support prototype (C channels, one vector
per episode: PFENet) and the prior (1 channel) at feature resolution. For each scale b: bring
Q to the scale (MM-Net: bilinear align-corners; PFENet: adaptive average pooling), the
prototype broadcast, the prior bilinear align-corners; concatenated [Q, prototype, prior] ->
init_merge (1x1 -> reduce_dim, ReLU); from the second scale on, merge with the previous
scale's output: merge = alpha_conv(cat[merge, prev]) + merge; then beta_conv (two 3x3+ReLU)
added residually; inner_cls gives the auxiliary logits; the merged map is resized back to the
feature size. The scales are concatenated -> res1 (1x1) -> res2 (two 3x3, residual) -> cls.
No BatchNorm; convs have no bias except the final 1x1 classifiers; torch default init.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmnet_jax.models.conv import wide_dtype
from mmnet_jax.models.initializers import torch_conv
from mmnet_jax.models.pooling import adaptive_avg_pool
from mmnet_jax.models.resize import resize_bilinear_align_corners

QUERY_RESIZE = {'bilinear': resize_bilinear_align_corners, 'adaptive_avg': adaptive_avg_pool}


def channel_dropout(rate: float) -> nn.Dropout:
  """torch Dropout2d for NHWC: drops whole channels per sample (mask broadcast over H, W)."""
  return nn.Dropout(rate, broadcast_dims=(1, 2))


class Conv1x1ReLU(nn.Module):
  """``conv`` 1x1 without bias, then ReLU."""
  features: int
  dtype: Any = jnp.float32   # computation dtype

  @nn.compact
  def __call__(self, x):
    return nn.relu(torch_conv(self.features, 1, x.shape[-1], name='conv', dtype=self.dtype)(x))


class DoubleConv3x3(nn.Module):
  """``conv1``, ``conv2``: two 3x3 convs (no bias) each followed by ReLU."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dt = self.dtype
    x = nn.relu(torch_conv(self.features, 3, x.shape[-1], padding=1, name='conv1', dtype=dt)(x))
    return nn.relu(torch_conv(self.features, 3, self.features, padding=1, name='conv2',
                              dtype=dt)(x))


class SegHead(nn.Module):
  """``conv`` 3x3 + ReLU + Dropout2d + ``cls`` 1x1 (with bias) -> class logits."""
  features: int
  num_classes: int = 2
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dt = self.dtype
    x = nn.relu(torch_conv(self.features, 3, x.shape[-1], padding=1, name='conv', dtype=dt)(x))
    x = channel_dropout(self.dropout)(x, deterministic=not train)
    return torch_conv(self.num_classes, 1, self.features, use_bias=True, name='cls', dtype=dt)(x)


def scale_size(scale: float, feat_hw: tuple[int, int]) -> tuple[int, int]:
  """Spatial size of a pyramid scale: an absolute side (s, s) if s > 1, else a fraction.

  The original computes a fraction from the feature height only (square features); here a
  fraction applies to each side, which is the same for square inputs.
  """
  if scale > 1:
    size = (int(scale), int(scale))
  else:
    size = (int(feat_hw[0] * scale), int(feat_hw[1] * scale))
  if min(size) < 1:
    raise ValueError(f'config.model.ppm_scales entry {scale} gives an empty scale {size} '
                     f'for features of size {feat_hw}')
  return size


class FEMDecoder(nn.Module):
  """Returns (logits at feature size (B, h, w, classes), tuple of aux logits per scale).

  Computes in ``dtype``; the logits are returned in float32 (losses and scoring need it), or
  float64 when ``dtype`` is.
  """
  ppm_scales: Sequence[float] = (60, 30, 15, 8)
  reduce_dim: int = 256
  num_classes: int = 2
  head_dropout: float = 0.1
  dtype: Any = jnp.float32
  # How Q reaches each scale: 'bilinear' (MM-Net) or 'adaptive_avg' (PFENet's AdaptiveAvgPool2d).
  query_resize: str = 'bilinear'

  @nn.compact
  def __call__(self, query_map: jax.Array, prior: jax.Array, train: bool,
               prototype: jax.Array | None = None):
    # query_map: (B, h, w, N); prior: (B, h, w, 1); prototype: (B, C) or None. Channel order
    # as the originals: [Q, prior] (MM-Net), [Q, prototype, prior] (PFENet).
    if self.query_resize not in QUERY_RESIZE:
      raise ValueError(f'FEMDecoder.query_resize must be one of {sorted(QUERY_RESIZE)}, '
                       f'got {self.query_resize!r}')
    feat_hw = query_map.shape[1:3]
    d, dt = self.reduce_dim, self.dtype
    wide = wide_dtype(dt)
    query_map, prior = query_map.astype(dt), prior.astype(dt)
    resize_query = QUERY_RESIZE[self.query_resize]
    pyramid, aux = [], []
    for b, scale in enumerate(self.ppm_scales):
      size = scale_size(scale, feat_hw)
      parts = [resize_query(query_map, size)]
      if prototype is not None:
        parts.append(jnp.broadcast_to(prototype.astype(dt)[:, None, None, :],
                                      (prototype.shape[0],) + size + (prototype.shape[-1],)))
      parts.append(resize_bilinear_align_corners(prior, size))
      x = jnp.concatenate(parts, axis=-1)
      merge = Conv1x1ReLU(d, dtype=dt, name=f'init_merge_{b}')(x)
      if b >= 1:
        prev = resize_bilinear_align_corners(pyramid[-1], size)
        merge = Conv1x1ReLU(d, dtype=dt, name=f'alpha_conv_{b - 1}')(
            jnp.concatenate([merge, prev], axis=-1)) + merge
      merge = DoubleConv3x3(d, dtype=dt, name=f'beta_conv_{b}')(merge) + merge
      aux.append(SegHead(d, self.num_classes, self.head_dropout, dtype=dt,
                         name=f'inner_cls_{b}')(merge, train).astype(wide))
      pyramid.append(resize_bilinear_align_corners(merge, feat_hw))
    x = Conv1x1ReLU(d, dtype=dt, name='res1')(jnp.concatenate(pyramid, axis=-1))
    x = DoubleConv3x3(d, dtype=dt, name='res2')(x) + x
    logits = SegHead(d, self.num_classes, self.head_dropout, dtype=dt, name='cls')(x, train)
    return logits.astype(wide), tuple(aux)
