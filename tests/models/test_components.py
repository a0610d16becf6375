"""Prior, memory, propagation and losses against float64 numpy references / hand cases."""

import jax
import jax.numpy as jnp
import numpy as np

from mmnet_jax.models import losses, memory, propagation
from mmnet_jax.models.prior import confidence_map

RNG = np.random.default_rng(0)


def _softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def test_confidence_map_matches_float64_numpy():
  q = RNG.normal(size=(2, 3, 4, 6))
  s = RNG.normal(size=(2, 3, 4, 6))
  m = (RNG.uniform(size=(2, 3, 4)) > 0.4).astype(np.float64) * 0.75
  out = confidence_map(jnp.asarray(q, jnp.float32), jnp.asarray(s, jnp.float32),
                       jnp.asarray(m, jnp.float32))
  qf, sf = q.reshape(2, 12, 6), (s * m[..., None]).reshape(2, 12, 6)
  cos = np.einsum('bsc,bqc->bsq', sf, qf) / (
      np.linalg.norm(sf, axis=-1)[:, :, None] * np.linalg.norm(qf, axis=-1)[:, None] + 1e-7)
  best = cos.max(1)
  ref = (best - best.min(1, keepdims=True)) / (
      best.max(1, keepdims=True) - best.min(1, keepdims=True) + 1e-7)
  np.testing.assert_allclose(out.reshape(2, 12), ref, atol=1e-5)
  assert float(out.min()) == 0.0


def test_reconstruction_loss_matches_float64_numpy():
  feat = RNG.normal(size=(2, 15, 8)) * 0.5  # (B, HW, C)
  slots = RNG.normal(size=(8, 5))  # (C, N)
  out = memory.reconstruction_loss(jnp.asarray(feat, jnp.float32), jnp.asarray(slots, jnp.float32))
  attn = _softmax(np.einsum('bpc,cn->bpn', feat, slots), axis=-1)
  recon = np.einsum('bpn,cn->bpc', attn, slots)
  logits = np.einsum('bic,bjc->bij', recon, feat)  # torch layout: (B, class i, position j)
  log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
      1, keepdims=True)) - logits.max(1, keepdims=True)
  ref = -np.mean([log_p[b, j, j] for b in range(2) for j in range(15)])
  np.testing.assert_allclose(float(out), ref, rtol=1e-5)


def test_propagation_matches_numpy_and_ignores_masked_pixels():
  a_q = RNG.normal(size=(2, 6, 4))
  a_s = RNG.normal(size=(2, 5, 4))
  mask = np.array([[1., 0., 0.5, 1., 0.], [0., 0., 1., 0., 0.]])
  prop, qual = propagation.propagate(jnp.asarray(a_q, jnp.float32), jnp.asarray(a_s, jnp.float32),
                                     jnp.asarray(mask, jnp.float32))
  cos = np.einsum('bin,bjn->bij', a_q, a_s) / (
      np.linalg.norm(a_q, axis=-1)[:, :, None] * np.linalg.norm(a_s, axis=-1)[:, None] + 1e-7)
  sim = cos * mask[:, None, :]
  sim = np.where(sim == 0, -1e9, sim)
  attn = _softmax(sim, -1)
  np.testing.assert_allclose(prop, attn @ _sigmoid(a_s), atol=1e-5)
  np.testing.assert_allclose(qual, _sigmoid(sim).sum(-1), atol=1e-5)
  # Masked support pixels contribute nothing: changing their activations changes nothing.
  a_s2 = a_s.copy()
  a_s2[mask == 0] = 100.0
  prop2, qual2 = propagation.propagate(jnp.asarray(a_q, jnp.float32),
                                       jnp.asarray(a_s2, jnp.float32), jnp.asarray(mask, jnp.float32))
  np.testing.assert_allclose(prop2, prop, atol=1e-6)
  np.testing.assert_allclose(qual2, qual, atol=1e-6)
  # Batch 1 has one support pixel: every query pixel copies it.
  np.testing.assert_allclose(prop[1], np.broadcast_to(_sigmoid(a_s[1, 2]), (6, 4)),
                             atol=1e-6)


def test_quality_weights_sum_to_one_and_combine():
  a_q = jnp.asarray(RNG.normal(size=(2, 6, 4)), jnp.float32)
  props = jnp.asarray(RNG.uniform(size=(2, 3, 6, 4)), jnp.float32)
  quals = jnp.asarray(RNG.uniform(0, 5, size=(2, 3, 6)), jnp.float32)
  q_map, w = propagation.combine_shots(a_q, props, quals)
  np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
  ref = jax.nn.sigmoid(a_q) * (props * _softmax(np.asarray(quals), 1)[..., None]).sum(1)
  np.testing.assert_allclose(q_map, ref, atol=1e-6)
  # One shot: weight 1, Q = sigmoid(A_q) * P_1.
  q1, w1 = propagation.combine_shots(a_q, props[:, :1], quals[:, :1])
  np.testing.assert_allclose(w1, 1.0)
  np.testing.assert_allclose(q1, jax.nn.sigmoid(a_q) * props[:, 0], atol=1e-6)


def test_cross_entropy_ignore_hand_case():
  # Pixel 0: logits (0, 0) label 1 -> log 2. Pixel 1: logits (log 3, 0) label 0 -> log(4/3).
  # Pixel 2 ignored (255).
  logits = jnp.asarray([[[[0., 0.], [np.log(3.), 0.], [50., -50.]]]], jnp.float32)
  labels = jnp.asarray([[[1, 0, 255]]])
  out = losses.cross_entropy_ignore(logits, labels)
  np.testing.assert_allclose(float(out), (np.log(2) + np.log(4 / 3)) / 2, rtol=1e-6)
  all_ignored = losses.cross_entropy_ignore(logits, jnp.full((1, 1, 3), 255))
  assert float(all_ignored) == 0.0
  g = jax.grad(lambda l: losses.cross_entropy_ignore(l, jnp.full((1, 1, 3), 255)))(logits)
  assert np.all(np.isfinite(g))


def test_mmnet_loss_combines_terms_and_upsamples_aux():
  labels = jnp.asarray([[[1, 0, 255], [0, 1, 1], [255, 0, 0]]])  # (1, 3, 3)
  logits = jnp.zeros((1, 3, 3, 2))  # main CE = log 2 on every valid pixel
  # Aux at 2x2 with constant logits: align-corners upsampling keeps them constant.
  aux_a = jnp.broadcast_to(jnp.asarray([np.log(3.), 0.]), (1, 2, 2, 2))
  aux_b = jnp.zeros((1, 1, 1, 2))
  out = {'logits': logits, 'aux_logits': (aux_a, aux_b), 'recon_loss': jnp.asarray(2.0)}
  total, parts = losses.mmnet_loss(out, labels, aux_weight=1.0, recon_weight=0.1)
  n0, n1 = 4, 3  # valid pixels labelled 0 and 1
  ce_a = (n0 * np.log(4 / 3) + n1 * np.log(4)) / (n0 + n1)
  np.testing.assert_allclose(float(parts['main']), np.log(2), rtol=1e-6)
  np.testing.assert_allclose(float(parts['aux']), (ce_a + np.log(2)) / 2, rtol=1e-6)
  np.testing.assert_allclose(float(parts['recon']), 2.0)
  np.testing.assert_allclose(float(total), np.log(2) + (ce_a + np.log(2)) / 2 + 0.2, rtol=1e-6)
