"""PFENet: shapes, parameter tree, Weighted_GAP, K-shot means, FEM input, dropout, loss."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmnet_jax.models import losses, pfenet_spec, registry
from mmnet_jax.models.decoder import FEMDecoder
from mmnet_jax.models.pfenet import PFENet, weighted_gap
from mmnet_jax.models.pooling import adaptive_avg_pool, pooling_matrix
from mmnet_jax.models.resize import interpolation_matrix

C = 16
TINY = dict(backbone='tiny', reduce_dim=C, ppm_scales=(5, 3, 2, 1.0))


def _inputs(b, k, h, w, seed=0):
  r = np.random.default_rng(seed)
  q = jnp.asarray(r.normal(size=(b, h, w, 3)), jnp.float32)
  s = jnp.asarray(r.normal(size=(b, k, h, w, 3)), jnp.float32)
  m = np.zeros((b, k, h, w), np.float32)
  for i in range(k):  # a different mask per shot
    m[:, i, 2 + 3 * i: h // 2 + 3 * i, 3: w - 2 - 4 * i] = 1.0
  return q, s, jnp.asarray(m)


@pytest.mark.parametrize('b,k,h,w', [(2, 1, 33, 33), (1, 2, 65, 65), (1, 1, 97, 129)])
def test_output_shapes(b, k, h, w):
  model = PFENet(**TINY)
  q, s, m = _inputs(b, k, h, w)
  variables = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, q, s, m))
  out = jax.eval_shape(lambda v: model.apply(v, q, s, m, train=True,
                                             rngs={'dropout': jax.random.key(1)},
                                             mutable=['batch_stats'])[0], variables)
  fh, fw = (h - 1) // 8 + 1, (w - 1) // 8 + 1
  assert sorted(out) == ['aux_logits', 'logits']
  assert out['logits'].shape == (b, h, w, 2)
  assert [a.shape for a in out['aux_logits']] == [(b, 5, 5, 2), (b, 3, 3, 2), (b, 2, 2, 2),
                                                  (b, fh, fw, 2)]


def test_parameter_tree_names():
  model = PFENet(**TINY)
  variables = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)},
                                                *_inputs(1, 1, 33, 33)))
  p = variables['params']
  assert set(p) == {'backbone', 'down_query', 'down_supp', 'decoder'}
  assert p['down_query']['conv']['kernel'].shape == (1, 1, 256 + 128, C)  # layer3 + layer2
  dec = p['decoder']
  assert set(dec) == ({f'init_merge_{b}' for b in range(4)} | {f'alpha_conv_{b}' for b in range(3)}
                      | {f'beta_conv_{b}' for b in range(4)} | {f'inner_cls_{b}' for b in range(4)}
                      | {'res1', 'res2', 'cls'})
  # init_merge takes [query, prototype, prior]: reduce_dim * 2 + 1 channels.
  assert dec['init_merge_0']['conv']['kernel'].shape == (1, 1, 2 * C + 1, C)
  assert dec['alpha_conv_0']['conv']['kernel'].shape == (1, 1, 2 * C, C)
  assert dec['res1']['conv']['kernel'].shape == (1, 1, 4 * C, C)
  assert set(dec['cls']['cls']) == {'kernel', 'bias'} and set(dec['cls']['conv']) == {'kernel'}


def test_weighted_gap_hand_case():
  feat = jnp.asarray([[[[1., 10.], [2., 20.]], [[3., 30.], [4., 40.]]]])  # (1, 2, 2, 2)
  mask = jnp.asarray([[[1., 0.5], [0., 0.]]])
  # sum(f * m) = (1 + 1, 10 + 10) = (2, 20); sum(m) = 1.5.
  np.testing.assert_allclose(weighted_gap(feat, mask), [[2 / 1.5005, 20 / 1.5005]], rtol=1e-6)
  np.testing.assert_array_equal(weighted_gap(feat, jnp.zeros((1, 2, 2))), [[0., 0.]])


def test_adaptive_avg_pool_windows_are_torch():
  # torch: cell i averages floor(i * in / out) .. ceil((i + 1) * in / out) - 1.
  np.testing.assert_allclose(pooling_matrix(5, 3), [[.5, .5, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0],
                                                    [0, 0, 0, .5, .5]])
  np.testing.assert_allclose(pooling_matrix(2, 3), [[1, 0], [.5, .5], [0, 1]])  # upsampling
  x = jnp.arange(20.).reshape(1, 4, 5, 1)
  out = adaptive_avg_pool(x, (2, 3))[0, ..., 0]
  np.testing.assert_allclose(out[0], [(0 + 1 + 5 + 6) / 4, (1 + 2 + 3 + 6 + 7 + 8) / 6,
                                      (3 + 4 + 8 + 9) / 4])
  assert adaptive_avg_pool(x, (4, 5)) is x


def test_fem_first_scale_input_is_pooled_query_prototype_prior():
  """PFENet's init_merge_0 sees cat[AdaptiveAvgPool(query), prototype, bilinear(prior)]."""
  r = np.random.default_rng(1)
  query, prior = r.normal(size=(2, 7, 6, 4)), r.uniform(size=(2, 7, 6, 1))
  proto = r.normal(size=(2, 4))
  dec = FEMDecoder((3,), reduce_dim=4, query_resize='adaptive_avg')
  args = (jnp.asarray(query, jnp.float32), jnp.asarray(prior, jnp.float32), False)
  kw = {'prototype': jnp.asarray(proto, jnp.float32)}
  variables = jax.jit(lambda: dec.init(jax.random.key(0), *args, **kw))()
  _, state = jax.jit(lambda v: dec.apply(v, *args, **kw, capture_intermediates=True,
                                         mutable=['intermediates']))(variables)
  got = state['intermediates']['init_merge_0']['__call__'][0]  # (2, 3, 3, 4)
  ph, pw = pooling_matrix(7, 3), pooling_matrix(6, 3)
  rh, rw = interpolation_matrix(7, 3), interpolation_matrix(6, 3)
  x = np.concatenate([np.einsum('oh,pw,bhwc->bopc', ph, pw, query),
                      np.broadcast_to(proto[:, None, None], (2, 3, 3, 4)),
                      np.einsum('oh,pw,bhwc->bopc', rh, rw, prior)], axis=-1)
  kernel = np.asarray(variables['params']['init_merge_0']['conv']['kernel'])[0, 0]  # (9, 4)
  np.testing.assert_allclose(got, np.maximum(x @ kernel, 0), atol=1e-5)
  with pytest.raises(ValueError, match='query_resize'):
    FEMDecoder((3,), reduce_dim=4, query_resize='max').init(jax.random.key(0), *args)


def _np_prior(q4, s4, mask):
  """PFENet.py's prior of one shot in float64: max cosine over masked support, min-max."""
  b, h, w, c = q4.shape
  qf, sf = q4.reshape(b, -1, c), (s4 * mask[..., None]).reshape(b, -1, c)
  cos = np.einsum('bsc,bqc->bsq', sf, qf) / (
      np.linalg.norm(sf, axis=-1)[:, :, None] * np.linalg.norm(qf, axis=-1)[:, None] + 1e-7)
  best = cos.max(1)
  best = (best - best.min(1, keepdims=True)) / (
      best.max(1, keepdims=True) - best.min(1, keepdims=True) + 1e-7)
  return best.reshape(b, h, w)


def _random_variables(shapes, seed=0):
  """Concrete variables for the abstract ones without compiling init (fast on CPU)."""
  r = np.random.default_rng(seed)

  def leaf(path, x):
    name = path[-1].key
    if name in ('var', 'scale'):
      return jnp.ones(x.shape, x.dtype)
    if name in ('mean', 'bias'):
      return jnp.asarray(r.normal(size=x.shape) * 0.1, x.dtype)
    return jnp.asarray(r.normal(size=x.shape) / np.sqrt(np.prod(x.shape[:-1])), x.dtype)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope='module')
def two_shot():
  """A 2-shot tiny PFENet with running BN statistics (so only dropout is random) and its run."""
  model = PFENet(**{**TINY, 'ppm_scales': (3, 1.0)}, bn_mode='frozen')
  q, s, m = _inputs(2, 2, 33, 33)
  variables = _random_variables(jax.eval_shape(
      lambda: model.init({'params': jax.random.key(0)}, q, s, m)))
  run = jax.jit(lambda v, key, train: model.apply(
      v, q, s, m, train=train, rngs={'dropout': key}, capture_intermediates=True,
      mutable=['intermediates']), static_argnums=2)
  return m, variables, run


# The float32 prior against float64: a cosine over C channels, max over the support, then
# min-max normalised, which magnifies the float32 error by 1 / (max - min). Measured: < 1e-5 on a
# Zen 5 CPU, 1.3e-5 on a Zen 3 one (no AVX-512: XLA sums in another order).
PRIOR_ATOL = 5e-5


def test_kshot_prototype_and_prior_are_means_of_the_shots(two_shot):
  masks, variables, run = two_shot
  inter = jax.device_get(run(variables, jax.random.key(0), False)[1]['intermediates'])
  mh = interpolation_matrix(33, 5)
  masks_feat = np.einsum('oh,pw,bkhw->bkop', mh, mh, np.asarray(masks, np.float64))  # (B, K, 5, 5)
  supp_feats = inter['down_supp']['__call__']   # one (B, 5, 5, C) per shot, in shot order
  backbone_out = inter['backbone']['__call__']  # query, then each shot: (layer2, layer3, layer4)
  q4 = np.asarray(backbone_out[0][2], np.float64)
  protos, priors = [], []
  for k in range(2):
    f, mk = np.asarray(supp_feats[k], np.float64), masks_feat[:, k]
    protos.append((f * mk[..., None]).sum((1, 2)) / (mk.sum((1, 2))[:, None] + 0.0005))
    priors.append(_np_prior(q4, np.asarray(backbone_out[1 + k][2], np.float64), mk))
  np.testing.assert_allclose(inter['prototypes'][0], np.stack(protos, 1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(inter['priors'][0], np.stack(priors, 1), atol=PRIOR_ATOL)
  # K shots: the mean of the prototypes and the mean of the (each normalised) priors.
  np.testing.assert_allclose(inter['prototype'][0], (protos[0] + protos[1]) / 2, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(inter['prior'][0], (priors[0] + priors[1]) / 2, atol=PRIOR_ATOL)
  assert not np.allclose(priors[0], priors[1])  # the shots differ, so the means say something
  assert np.abs(protos[0] - protos[1]).max() > 1e-3
  # The decoder's first scale (3 x 3 of the 5 x 5 features) reads the pooled query features,
  # the mean prototype and the mean prior.
  query_feat = np.asarray(inter['down_query']['__call__'][0], np.float64)
  ph, rh = pooling_matrix(5, 3), interpolation_matrix(5, 3)
  x = np.concatenate([np.einsum('oh,pw,bhwc->bopc', ph, ph, query_feat),
                      np.broadcast_to(inter['prototype'][0][:, None, None], (2, 3, 3, C)),
                      np.einsum('oh,pw,bhw->bop', rh, rh, inter['prior'][0])[..., None]], -1)
  kernel = np.asarray(variables['params']['decoder']['init_merge_0']['conv']['kernel'])[0, 0]
  np.testing.assert_allclose(inter['decoder']['init_merge_0']['__call__'][0],
                             np.maximum(x @ kernel, 0), atol=1e-5)


def test_dropout_only_in_training(two_shot):
  _, variables, run = two_shot
  k1, k2 = jax.random.key(1), jax.random.key(2)
  logits = lambda key, train: np.asarray(run(variables, key, train)[0]['logits'])
  np.testing.assert_array_equal(logits(k1, False), logits(k2, False))
  assert not np.allclose(logits(k1, True), logits(k2, True))


def test_pfenet_loss_hand_case():
  labels = jnp.asarray([[[1, 0, 255], [0, 1, 1], [255, 0, 0]]])  # (1, 3, 3)
  logits = jnp.zeros((1, 3, 3, 2))  # main CE = log 2 on every valid pixel
  # Constant aux logits stay constant under align-corners upsampling to 3x3.
  aux_a = jnp.broadcast_to(jnp.asarray([np.log(3.), 0.]), (1, 2, 2, 2))
  aux_b = jnp.zeros((1, 1, 1, 2))
  aux_c = jnp.broadcast_to(jnp.asarray([0., np.log(3.)]), (1, 3, 3, 2))
  out = {'logits': logits, 'aux_logits': (aux_a, aux_b, aux_c)}
  total, parts = losses.pfenet_loss(out, labels, aux_weight=0.5)
  n0, n1 = 4, 3  # valid pixels labelled 0 and 1
  ce_a = (n0 * np.log(4 / 3) + n1 * np.log(4)) / (n0 + n1)
  ce_c = (n0 * np.log(4) + n1 * np.log(4 / 3)) / (n0 + n1)
  aux = (ce_a + np.log(2) + ce_c) / 3  # PFENet.py: the sum over scales / their number
  assert sorted(parts) == ['aux', 'main']
  np.testing.assert_allclose(float(parts['main']), np.log(2), rtol=1e-6)
  np.testing.assert_allclose(float(parts['aux']), aux, rtol=1e-6)
  np.testing.assert_allclose(float(total), np.log(2) + 0.5 * aux, rtol=1e-6)


def test_spec_builds_from_config_defaults_and_loss_reads_aux_weight():
  spec = registry.get('pfenet')
  m = spec.config_defaults()
  assert m.name == 'pfenet' and 'memory_slots' not in m
  pfenet_spec.runlocal(m)
  model = registry.build(ml_collections.ConfigDict({'model': m}))
  assert isinstance(model, PFENet) and model.backbone == 'tiny' and model.reduce_dim == 32
  out = {'logits': jnp.zeros((1, 3, 3, 2)), 'aux_logits': (jnp.ones((1, 2, 2, 2)),)}
  labels = jnp.zeros((1, 3, 3), jnp.int32)
  total, parts = spec.loss(out, labels, ml_collections.ConfigDict(spec.train_defaults))
  np.testing.assert_allclose(float(total), float(parts['main'] + parts['aux']), rtol=1e-6)
  with pytest.raises(ValueError, match='config.model.bn_mode'):
    PFENet.from_config({**TINY, 'bn_mode': 'eval'})


@pytest.mark.parametrize('name', ['pascal_1shot', 'pascal_5shot', 'coco_1shot', 'coco_5shot',
                                  'synth_1shot'])
def test_shipped_pfenet_configs_pass_the_checks(name):
  import importlib  # pylint: disable=g-import-not-at-top
  from mmnet_jax import config_checks  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f'configs.pfenet.{name}')
  for arg in (None, 'runlocal', 'fold=2,shots=3') + (('smoke',) if name == 'synth_1shot' else ()):
    c = module.get_config(arg)
    assert c.model.name == 'pfenet' and 'recon_weight' not in c.train, arg
    assert config_checks.problems(c) == [], (name, arg)
  c = module.get_config('fold=2,shots=3')
  assert (c.dataset.fold, c.shots) == (2, 3)
  assert module.get_config().shots == (5 if '5shot' in name else 1)


def test_pfenet_configs_are_the_original_yaml():
  from configs.pfenet import coco_1shot, pascal_1shot  # pylint: disable=g-import-not-at-top
  # config/pascal/pascal_split0_resnet50.yaml; the x10 is poly_learning_rate's scale_lr.
  p = pascal_1shot.get_config()
  assert (p.model.backbone, tuple(p.model.ppm_scales), p.train.crop_size, p.train.batch_size,
          p.train.base_lr, p.train.lr_multiplier, p.train.epochs, p.train.aux_weight) == (
              'resnet50', (60, 30, 15, 8), 473, 4, 0.0025, 10.0, 200, 1.0)
  assert (p.train.scale_min, p.train.scale_max, p.train.momentum, p.train.weight_decay,
          p.train.poly_power, p.eval.size, p.seed) == (0.9, 1.1, 0.9, 1e-4, 0.9, 473, 321)
  # config/coco/coco_split0_resnet101.yaml.
  c = coco_1shot.get_config()
  assert (c.dataset.name, c.model.backbone, tuple(c.model.ppm_scales), c.train.crop_size,
          c.train.batch_size, c.train.base_lr, c.train.epochs, c.train.scale_min,
          c.train.scale_max, c.eval.size) == (
              'coco', 'resnet101', (1.0, 0.5, 0.25, 0.125), 641, 32, 0.02, 50, 0.8, 1.25, 641)
