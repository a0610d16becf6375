"""Meta-class memory (MMM): learnable slots, their activations and the reconstruction loss.

The memory M is (C, N) = (reduce_dim, memory_slots), shared by query and support, initialised
N(0, 1) and trained like any weight (no write rule). Activations are raw dot products.
Layout note: the original keeps support activations as (B, N, HW); here every activation map
is (B, HW, N).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmnet_jax.models import chunked
from mmnet_jax.models.conv import wide_dtype
from mmnet_jax.models.initializers import memory_slot_init


class MetaClassMemory(nn.Module):
  """Holds the ``slots`` parameter (C, N); calling it returns the slots."""
  channels: int = 256
  num_slots: int = 50

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param('slots', memory_slot_init, (self.channels, self.num_slots), jnp.float32)


def activations(feat: jax.Array, slots: jax.Array) -> jax.Array:
  """Memory activations A = F^T M.

  Args:
    feat: (B, HW, C) features.
    slots: (C, N) memory.
  Returns:
    (B, HW, N) raw dot products.
  """
  return jnp.einsum('bpc,cn->bpn', feat, slots)


def reconstruction_loss(feat: jax.Array, slots: jax.Array, chunk: int = 0) -> jax.Array:
  """Cross-entropy of reconstructing each pixel from the memory (PartNet.py:297-306).

  R = M softmax_N(A) is the reconstruction of every pixel; logits L[i, j] = R_i . F_j score
  reconstruction i against original pixel j. The class axis is the reconstruction index i and
  the target for original pixel j is i = j; the loss is the mean over pixels j and the batch.

  Args:
    feat: (B, HW, C) support features (shot 0 in the model).
    slots: (C, N) memory.
    chunk: > 0 computes the (HW, HW) logits for that many original pixels j at a time.
  Returns:
    float32 scalar (float64 for float64 features), unweighted.
  """
  feat = feat.astype(wide_dtype(feat.dtype))
  attn = jax.nn.softmax(activations(feat, slots), axis=-1)  # (B, HW, N)
  recon = jnp.einsum('bpn,cn->bpc', attn, slots)  # (B, HW_recon, C)

  def rows(pair):  # original pixels j: feat (B, R, C), their own reconstructions (B, R, C)
    f_rows, r_rows = pair
    logits = jnp.einsum('bic,bjc->bji', recon, f_rows)  # (B, R orig j, HW_recon i)
    target_logit = jnp.sum(r_rows * f_rows, axis=-1)  # L[j, j]: (B, R)
    return jax.nn.logsumexp(logits, axis=-1) - target_logit

  return jnp.mean(chunked.map_rows(rows, (feat, recon), chunk))
