"""Activation propagation (APM) and K-shot quality weighting (PartNet.py:291-360)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmnet_jax.models import chunked
from mmnet_jax.models.conv import wide_dtype
from mmnet_jax.models.cosine import l2_norm

COSINE_EPS = 1e-7
MASKED_LOGIT = -1e9


def propagate(query_act: jax.Array, support_act: jax.Array, support_mask: jax.Array,
              chunk: int = 0) -> tuple[jax.Array, jax.Array]:
  """Propagates one shot's support activations to the query pixels.

  S(i, j) = cosine(A_q[i], A_s[j]) (eps 1e-7), multiplied by the soft support mask m[j];
  entries that are then exactly zero are set to -1e9 (as the original's masked_fill), so
  masked support pixels get zero attention. W = softmax_j S; P = W sigmoid(A_s).
  The quality score q(i) = sum_j sigmoid(S(i, j)) (masked entries contribute 0).
  Computed in float32 for bfloat16 or float32 input (cosines, -1e9 and the softmax need it),
  float64 for float64.

  Args:
    query_act: (B, HW_q, N) query activations.
    support_act: (B, HW_s, N) support activations.
    support_mask: (B, HW_s) soft support mask at feature resolution.
    chunk: > 0 computes the attention for that many query pixels at a time (memory
      (B, chunk, HW_s) instead of (B, HW_q, HW_s)); same result.
  Returns:
    P: (B, HW_q, N) propagated activations; q: (B, HW_q) quality scores.
  """
  f32 = wide_dtype(jnp.result_type(query_act, support_act))
  support_act = support_act.astype(f32)
  support_mask = support_mask.astype(f32)
  s_norm = l2_norm(support_act, axis=-1)  # (B, HW_s)
  s_sig = jax.nn.sigmoid(support_act)  # (B, HW_s, N)

  def rows(q_act):  # (B, R, N) -> (B, R, N), (B, R)
    q_norm = l2_norm(q_act, axis=-1)  # (B, R)
    dots = jnp.einsum('bin,bjn->bij', q_act, support_act)  # (B, R, HW_s)
    sim = dots / (q_norm[:, :, None] * s_norm[:, None, :] + COSINE_EPS)
    sim = sim * support_mask[:, None, :]
    sim = jnp.where(sim == 0, MASKED_LOGIT, sim)
    attn = jax.nn.softmax(sim, axis=-1)  # (B, R, HW_s)
    quality = jnp.sum(jax.nn.sigmoid(sim), axis=-1)  # (B, R)
    return jnp.einsum('bij,bjn->bin', attn, s_sig), quality

  return chunked.map_rows(rows, query_act.astype(f32), chunk)


def quality_weights(quality: jax.Array) -> jax.Array:
  """Per query pixel softmax over shots: (B, K, HW_q) -> (B, K, HW_q)."""
  return jax.nn.softmax(quality, axis=1)


def combine_shots(query_act: jax.Array, propagated: jax.Array,
                  quality: jax.Array) -> tuple[jax.Array, jax.Array]:
  """K-shot quality weighting and the final query map.

  Args:
    query_act: (B, HW_q, N) query activations A_q.
    propagated: (B, K, HW_q, N) per-shot P_k.
    quality: (B, K, HW_q) per-shot quality scores q_k.
  Returns:
    Q = sigmoid(A_q) * sum_k w_k P_k: (B, HW_q, N); and the weights w: (B, K, HW_q).
  """
  w = quality_weights(quality)
  mixed = jnp.sum(propagated * w[..., None], axis=1)  # (B, HW_q, N)
  return jax.nn.sigmoid(query_act) * mixed, w
