"""Bilinear resize with ``align_corners=True`` semantics (torch ``F.interpolate``).

``jax.image.resize`` uses half-pixel centres; the original MM-Net resizes every tensor with
align-corners, so the port uses this function everywhere. The resize is two small
interpolation-matrix contractions (rows then columns): exact, fast and differentiable.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=256)
def interpolation_matrix(in_size: int, out_size: int, coords: str = 'float32') -> np.ndarray:
  """Returns the (out_size, in_size) align-corners linear interpolation matrix (float64).

  Output sample i reads source coordinate i * (in - 1) / (out - 1); with one output sample
  (or one input sample) every output reads source index 0, as torch does. ``coords``: the
  precision of that coordinate, torch's for the data's dtype (float for float32 and
  bfloat16, double for float64; the fraction differs by up to 3e-5 between the two).
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f'resize sizes must be >= 1, got in_size={in_size}, out_size={out_size}')
  ct = {'float32': np.float32, 'float64': np.float64}[coords]
  if out_size == 1 or in_size == 1:
    src = np.zeros(out_size, ct)
  else:
    # In torch's precision (scale and coordinate in float), so weights match bit-close.
    scale = ct(in_size - 1) / ct(out_size - 1)
    src = (scale * np.arange(out_size, dtype=ct)).astype(ct)
  lo = np.clip(np.floor(src).astype(np.int64), 0, in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo.astype(ct)).astype(np.float64)
  mat = np.zeros((out_size, in_size))
  rows = np.arange(out_size)
  np.add.at(mat, (rows, lo), 1.0 - frac)
  np.add.at(mat, (rows, hi), frac)
  return mat


def resize_bilinear_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Resizes an NHWC array to ``size = (out_h, out_w)`` like torch bilinear align_corners=True.

  Args:
    x: (B, H, W, C) array.
    size: (out_h, out_w) static output size.
  Returns:
    (B, out_h, out_w, C) array of x's dtype. Same-size axes are returned untouched.
  """
  if x.ndim != 4:
    raise ValueError(f'resize_bilinear_align_corners expects NHWC (4-D), got shape {x.shape}')
  out_h, out_w = int(size[0]), int(size[1])
  _, in_h, in_w, _ = x.shape
  # HIGHEST: TPU/GPU default f32 matmuls round to bf16/tf32; interpolation weights should not.
  hi = jax.lax.Precision.HIGHEST
  coords = 'float64' if x.dtype == jnp.float64 else 'float32'
  if out_h != in_h:
    mh = jnp.asarray(interpolation_matrix(in_h, out_h, coords), x.dtype)
    x = jnp.einsum('oh,bhwc->bowc', mh, x, precision=hi)
  if out_w != in_w:
    mw = jnp.asarray(interpolation_matrix(in_w, out_w, coords), x.dtype)
    x = jnp.einsum('ow,bhwc->bhoc', mw, x, precision=hi)
  return x
