"""Foreground confidence map (the PFENet prior, MM-Net PartNet.py:216-265).

For each query layer4 pixel: the maximum cosine similarity to any (masked) support layer4
pixel, then min-max normalised over the query image. K shots are averaged by the caller.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmnet_jax.models import chunked
from mmnet_jax.models.conv import wide_dtype
from mmnet_jax.models.cosine import l2_norm

COSINE_EPS = 1e-7


def confidence_map(query_feat: jax.Array, support_feat: jax.Array, support_mask: jax.Array,
                   chunk: int = 0) -> jax.Array:
  """One shot's prior, computed in float32 (float64 for float64 features).

  Args:
    query_feat: (B, h, w, C) query layer4 features.
    support_feat: (B, hs, ws, C) support layer4 features (of layer3 * mask).
    support_mask: (B, hs, ws) soft support mask at feature resolution.
    chunk: > 0 computes the (HW_s, HW_q) cosines for that many query pixels at a time.
  Returns:
    (B, h, w) confidence in [0, 1).
  """
  f32 = wide_dtype(query_feat.dtype)
  b, h, w, c = query_feat.shape
  q = query_feat.astype(f32).reshape(b, h * w, c)  # (B, HW_q, C)
  s = (support_feat.astype(f32) * support_mask.astype(f32)[..., None]).reshape(b, -1, c)
  s_norm = l2_norm(s, axis=-1)  # (B, HW_s)

  def rows(q_rows):  # (B, R, C) -> (B, R): best cosine over support pixels
    q_norm = l2_norm(q_rows, axis=-1)  # (B, R)
    dots = jnp.einsum('bsc,bqc->bsq', s, q_rows)  # (B, HW_s, R)
    sim = dots / (s_norm[:, :, None] * q_norm[:, None, :] + COSINE_EPS)
    return jnp.max(sim, axis=1)

  sim = chunked.map_rows(rows, q, chunk)  # (B, HW_q)
  lo = jnp.min(sim, axis=1, keepdims=True)
  hi = jnp.max(sim, axis=1, keepdims=True)
  sim = (sim - lo) / (hi - lo + COSINE_EPS)
  return sim.reshape(b, h, w)
