"""Mixed precision (config.model.dtype) and row-chunked attention (config.model.attention_chunk)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmnet_jax.models import chunked, memory, propagation
from mmnet_jax.models.mmnet import MMNet
from mmnet_jax.models.prior import confidence_map

TINY = dict(backbone='tiny', reduce_dim=32, memory_slots=8, ppm_scales=(5, 3, 2, 1.0))
RNG = np.random.default_rng(3)


def _inputs(b, k, size, seed=0):
  r = np.random.default_rng(seed)
  q = jnp.asarray(r.normal(size=(b, size, size, 3)), jnp.float32)
  s = jnp.asarray(r.normal(size=(b, k, size, size, 3)), jnp.float32)
  m = np.zeros((b, k, size, size), np.float32)
  for i in range(k):
    m[:, i, 3 + i: size // 2 + 2 * i, 2: size - 3 - i] = 1.0
  return q, s, jnp.asarray(m)


@pytest.fixture(scope='module')
def variables():
  return jax.jit(lambda q, s, m: MMNet(**TINY).init(jax.random.key(0), q, s, m))(
      *_inputs(1, 1, 41))


def _rel(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def test_map_rows_pads_a_ragged_last_chunk_and_keeps_row_order():
  x = jnp.arange(2 * 11 * 3, dtype=jnp.float32).reshape(2, 11, 3)
  y = jnp.ones((2, 11))
  fn = lambda t: (t[0] * 2.0, t[0].sum(-1) + t[1])
  for chunk in (0, 1, 4, 11, 50):
    a, b = chunked.map_rows(fn, (x, y), chunk)
    np.testing.assert_array_equal(a, x * 2.0)
    np.testing.assert_array_equal(b, x.sum(-1) + 1.0)


def test_map_rows_blocks_are_balanced():
  # 3600 rows (473 input) at chunk 1024: 4 blocks of 900 rows, not 4 of 1024 (496 padded).
  seen = []
  fn = lambda t: seen.append(t.shape[1]) or t + 1.0
  x = jnp.zeros((1, 3600, 2))
  np.testing.assert_array_equal(chunked.map_rows(fn, x, 1024), x + 1.0)
  assert seen == [900]
  seen.clear()
  chunked.map_rows(fn, jnp.zeros((1, 6561, 2)), 1024)   # 641 input: 7 blocks of 938 (5 pad)
  assert seen == [938]


def test_chunked_components_equal_unchunked():
  qa = jnp.asarray(RNG.normal(size=(2, 23, 6)), jnp.float32)   # 23 query pixels: ragged chunks
  sa = jnp.asarray(RNG.normal(size=(2, 17, 6)), jnp.float32)
  mask = jnp.asarray((RNG.uniform(size=(2, 17)) > 0.4) * 0.8, jnp.float32)
  full_p, full_q = propagation.propagate(qa, sa, mask)
  for chunk in (1, 5, 8):
    p, q = propagation.propagate(qa, sa, mask, chunk)
    np.testing.assert_allclose(p, full_p, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(q, full_q, atol=1e-6, rtol=1e-6)
  qf = jnp.asarray(RNG.normal(size=(2, 5, 5, 8)), jnp.float32)
  sf = jnp.asarray(RNG.normal(size=(2, 4, 4, 8)), jnp.float32)
  sm = jnp.asarray(RNG.uniform(size=(2, 4, 4)) > 0.5, jnp.float32)
  np.testing.assert_allclose(confidence_map(qf, sf, sm, 7), confidence_map(qf, sf, sm),
                             atol=1e-6)
  feat = jnp.asarray(RNG.normal(size=(2, 19, 8)), jnp.float32)
  slots = jnp.asarray(RNG.normal(size=(8, 5)), jnp.float32)
  full = memory.reconstruction_loss(feat, slots)
  assert abs(float(memory.reconstruction_loss(feat, slots, 4)) - float(full)) <= 1e-6 * abs(
      float(full))


def test_chunked_model_matches_unchunked_forward_and_gradients(variables):
  q, s, m = _inputs(2, 2, 41)   # features 6x6: 36 query pixels, chunks of 10 (ragged)
  labels = jnp.asarray(m[:, 0] > 0, jnp.int32)

  def run(model):
    def loss(params):
      out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, q, s, m,
                           train=True, rngs={'dropout': jax.random.key(5)},
                           mutable=['batch_stats'])
      lp = jax.nn.log_softmax(out['logits'], -1)
      return -jnp.mean(jnp.take_along_axis(lp, labels[..., None], -1)) + out['recon_loss'], out
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])

  (l0, out0), g0 = run(MMNet(**TINY, freeze_backbone=False))
  (l1, out1), g1 = run(MMNet(**TINY, freeze_backbone=False, attention_chunk=10))
  assert _rel(out1['logits'], out0['logits']) < 1e-6
  assert abs(float(l1 - l0)) < 1e-6 * abs(float(l0))
  # Gradients sum the support-side contributions chunk by chunk: float reassociation only.
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
    np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.max(jnp.abs(b))) + 1e-12)


def test_bfloat16_keeps_float32_parameters_and_outputs_and_tracks_float32(variables):
  q, s, m = _inputs(2, 2, 41)
  bf16 = MMNet(**TINY, dtype='bfloat16')
  shapes = jax.eval_shape(lambda: bf16.init(jax.random.key(0), q, s, m))
  assert {x.dtype for x in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}
  ref = jax.jit(MMNet(**TINY).apply)(variables, q, s, m)
  out = jax.jit(bf16.apply)(variables, q, s, m)
  assert out['logits'].dtype == jnp.float32 and out['recon_loss'].dtype == jnp.float32
  assert all(a.dtype == jnp.float32 for a in out['aux_logits'])
  err = _rel(out['logits'], ref['logits'])
  assert 1e-5 < err < 5e-2, err   # really computed in bf16, and close to float32

  def loss(params):
    o, _ = bf16.apply({'params': params, 'batch_stats': variables['batch_stats']}, q, s, m,
                      train=True, rngs={'dropout': jax.random.key(1)}, mutable=['batch_stats'])
    return jnp.mean(o['logits'] ** 2) + o['recon_loss']
  grads = jax.jit(jax.grad(loss))(variables['params'])
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))) for g in leaves)


def test_bad_dtype_and_chunk_name_the_field():
  with pytest.raises(ValueError, match='config.model.dtype'):
    MMNet.from_config(dict(TINY, dtype='float16'))
  with pytest.raises(ValueError, match='config.model.attention_chunk'):
    MMNet.from_config(dict(TINY, attention_chunk=-1))


def _x64():
  """jax_enable_x64 for a block: jax.enable_x64 (jax >= 0.8) or jax.experimental's."""
  if hasattr(jax, 'enable_x64'):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


@pytest.mark.parametrize('name', ['mmnet', 'pfenet'])
def test_float64_computes_every_layer_and_gradient_in_float64(name, variables):
  # The parity tool's exactness check (--dtype float64) needs ours in float64 end to end: a
  # layer that casts to float32 (BN, losses, memory, prior, propagation, logits used to)
  # would cap the agreement with torch's .double() at float32 rounding.
  from mmnet_jax.models.pfenet import PFENet  # pylint: disable=g-import-not-at-top
  cls = MMNet if name == 'mmnet' else PFENet
  tiny = TINY if name == 'mmnet' else {k: v for k, v in TINY.items() if k != 'memory_slots'}
  q, s, m = _inputs(1, 2, 33)
  v32 = variables if name == 'mmnet' else jax.jit(
      lambda q, s, m: cls(**tiny).init(jax.random.key(0), q, s, m))(q, s, m)
  with _x64():
    v64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), v32)
    q64, s64, m64 = (jnp.asarray(x, jnp.float64) for x in (q, s, m))
    net = cls(**tiny, dtype='float64')

    def loss(params):
      o = net.apply({'params': params, 'batch_stats': v64['batch_stats']}, q64, s64, m64)
      total = jnp.mean(o['logits'] ** 2) + sum(jnp.mean(a ** 2) for a in o['aux_logits'])
      return total + o.get('recon_loss', 0.0), o
    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(v64['params'])
    arrays = [out['logits'], *out['aux_logits']] + ([out['recon_loss']] if name == 'mmnet' else [])
    assert all(a.dtype == jnp.float64 for a in arrays), [a.dtype for a in arrays]
    assert all(g.dtype == jnp.float64 for g in jax.tree_util.tree_leaves(grads))
    logits64 = np.asarray(out['logits'])
  ref = jax.jit(lambda v: cls(**tiny).apply(v, q, s, m)['logits'])(v32)
  err = _rel(jnp.asarray(logits64, jnp.float32), ref)
  assert err < 1e-4, err   # the same model; float32 rounding only
  assert np.max(np.abs(logits64 - np.asarray(ref, np.float64))) > 0  # not float32


def test_float64_without_x64_names_the_setting():
  q, s, m = _inputs(1, 1, 41)
  with pytest.raises(ValueError, match="config.model.dtype 'float64' needs .*jax_enable_x64"):
    MMNet(**TINY, dtype='float64').init(jax.random.key(0), q, s, m)
