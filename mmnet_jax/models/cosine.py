"""Cosine similarity pieces shared by the prior and the activation propagation."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_norm(x: jax.Array, axis: int = -1) -> jax.Array:
  """Euclidean norm along `axis` whose gradient at a zero vector is 0, as torch.norm's.

  jnp.linalg.norm's gradient there is NaN; zero vectors are common here (ReLU features,
  masked support pixels), so training through them would poison every parameter.
  """
  sq = jnp.sum(x * x, axis=axis)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
