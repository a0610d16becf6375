"""Losses of the FEM models: main CE and auxiliary CE over the FEM scales (PFENet), plus
MM-Net's weighted reconstruction CE."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from mmnet_jax import conventions
from mmnet_jax.models.conv import wide_dtype
from mmnet_jax.models.resize import resize_bilinear_align_corners


def cross_entropy_ignore(logits: jax.Array, labels: jax.Array,
                         ignore_index: int = conventions.IGNORE_LABEL) -> jax.Array:
  """torch CrossEntropyLoss(ignore_index=255): mean NLL over non-ignored pixels.

  Args:
    logits: (B, H, W, classes).
    labels: (B, H, W) integer labels.
  Returns:
    scalar; 0 (not NaN, unlike torch) when every pixel is ignored.
  """
  if logits.shape[:-1] != labels.shape:
    raise ValueError(f'logits {logits.shape} and labels {labels.shape} disagree in (B, H, W)')
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0).astype(jnp.int32)
  log_probs = jax.nn.log_softmax(logits.astype(wide_dtype(logits.dtype)), axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  n_valid = jnp.sum(valid)
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(n_valid, 1)


def _at_label_size(logits: jax.Array, label_hw: tuple[int, int]) -> jax.Array:
  return resize_bilinear_align_corners(logits, label_hw)


def mmnet_loss(outputs: Mapping[str, Any], query_label: jax.Array, aux_weight: float = 1.0,
               recon_weight: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total training loss = main + aux_weight * aux + recon_weight * recon.

  Args:
    outputs: the MMNet output dict (logits, aux_logits, recon_loss).
    query_label: (B, H, W) int labels, 255 ignored.
  Returns:
    (total, {'main', 'aux', 'recon'}) with the unweighted terms in the dict. Logits (main and
    the auxiliary heads) are upsampled to the label size with align-corners bilinear.
  """
  main, aux = main_and_aux(outputs, query_label)
  recon = jnp.asarray(outputs['recon_loss'])
  recon = recon.astype(wide_dtype(recon.dtype))
  total = main + aux_weight * aux + recon_weight * recon
  return total, {'main': main, 'aux': aux, 'recon': recon}


def main_and_aux(outputs: Mapping[str, Any], query_label: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """(main CE, mean of the per-scale aux CEs), every logit map upsampled to the label size.

  The mean is PFENet.py's: the aux CEs summed over the scales, then divided by their number.
  """
  label_hw = tuple(query_label.shape[1:3])
  main = cross_entropy_ignore(_at_label_size(outputs['logits'], label_hw), query_label)
  aux_terms = [cross_entropy_ignore(_at_label_size(a, label_hw), query_label)
               for a in outputs['aux_logits']]
  aux = jnp.mean(jnp.stack(aux_terms)) if aux_terms else jnp.zeros((), jnp.float32)
  return main, aux


def pfenet_loss(outputs: Mapping[str, Any], query_label: jax.Array, aux_weight: float = 1.0
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PFENet's training loss, main + aux_weight * aux (train.py, PFENet.py forward).

  Args:
    outputs: the PFENet output dict (logits, aux_logits).
    query_label: (B, H, W) int labels, 255 ignored.
  Returns:
    (total, {'main', 'aux'}) with the unweighted terms in the dict.
  """
  main, aux = main_and_aux(outputs, query_label)
  return main + aux_weight * aux, {'main': main, 'aux': aux}
