"""torch ``nn.AdaptiveAvgPool2d`` for NHWC arrays (PFENet's FEM pools the query to each scale).

Output cell i of a side averages the input cells floor(i * in / out) .. ceil((i + 1) * in / out)
- 1, as torch does; an output larger than the input repeats (and averages neighbouring) cells.
Computed as two small matrix contractions (rows then columns), like models/resize.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=256)
def pooling_matrix(in_size: int, out_size: int) -> np.ndarray:
  """The (out_size, in_size) matrix of torch's adaptive average pooling along one axis."""
  if in_size < 1 or out_size < 1:
    raise ValueError(f'pooling sizes must be >= 1, got in_size={in_size}, out_size={out_size}')
  mat = np.zeros((out_size, in_size))
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil
    mat[i, start:end] = 1.0 / (end - start)
  return mat


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Pools (B, H, W, C) to (B, out_h, out_w, C) like torch ``F.adaptive_avg_pool2d``."""
  if x.ndim != 4:
    raise ValueError(f'adaptive_avg_pool expects NHWC (4-D), got shape {x.shape}')
  out_h, out_w = int(size[0]), int(size[1])
  _, in_h, in_w, _ = x.shape
  hi = jax.lax.Precision.HIGHEST  # the weights are exact fractions; keep f32 matmuls exact
  if out_h != in_h:
    x = jnp.einsum('oh,bhwc->bowc', jnp.asarray(pooling_matrix(in_h, out_h), x.dtype), x,
                   precision=hi)
  if out_w != in_w:
    x = jnp.einsum('ow,bhwc->bhoc', jnp.asarray(pooling_matrix(in_w, out_w), x.dtype), x,
                   precision=hi)
  return x
