"""Foreground confidence map (the PFENet prior, MM-Net PartNet.py:216-265).

For each query layer4 pixel: the maximum cosine similarity to any (masked) support layer4
pixel, then min-max normalised over the query image. K shots are averaged by the caller.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmnet_jax.models.cosine import l2_norm

COSINE_EPS = 1e-7


def confidence_map(query_feat: jax.Array, support_feat: jax.Array,
                   support_mask: jax.Array) -> jax.Array:
  """One shot's prior.

  Args:
    query_feat: (B, h, w, C) query layer4 features.
    support_feat: (B, hs, ws, C) support layer4 features (of layer3 * mask).
    support_mask: (B, hs, ws) soft support mask at feature resolution.
  Returns:
    (B, h, w) confidence in [0, 1).
  """
  b, h, w, c = query_feat.shape
  q = query_feat.reshape(b, h * w, c)  # (B, HW_q, C)
  s = (support_feat * support_mask[..., None]).reshape(b, -1, c)  # (B, HW_s, C)
  q_norm = l2_norm(q, axis=-1)  # (B, HW_q)
  s_norm = l2_norm(s, axis=-1)  # (B, HW_s)
  dots = jnp.einsum('bsc,bqc->bsq', s, q)  # (B, HW_s, HW_q)
  sim = dots / (s_norm[:, :, None] * q_norm[:, None, :] + COSINE_EPS)
  sim = jnp.max(sim, axis=1)  # (B, HW_q)
  lo = jnp.min(sim, axis=1, keepdims=True)
  hi = jnp.max(sim, axis=1, keepdims=True)
  sim = (sim - lo) / (hi - lo + COSINE_EPS)
  return sim.reshape(b, h, w)
