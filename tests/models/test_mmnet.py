"""The assembled MMNet: shapes, parameter tree, BN order, K-shot mask switch, compilation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmnet_jax.models.mmnet import MMNet, build_model
from mmnet_jax.models import mmnet_spec
from mmnet_jax.models.summary import count_parameters, module_counts

TINY = dict(backbone='tiny', reduce_dim=32, memory_slots=8, ppm_scales=(5, 3, 2, 1.0))


def _inputs(b, k, h, w, seed=0):
  r = np.random.default_rng(seed)
  q = jnp.asarray(r.normal(size=(b, h, w, 3)), jnp.float32)
  s = jnp.asarray(r.normal(size=(b, k, h, w, 3)), jnp.float32)
  m = np.zeros((b, k, h, w), np.float32)
  for i in range(k):
    m[:, i, 2 + i: h // 2 + i, 3: w - 2 - i] = 1.0
  return q, s, jnp.asarray(m)


def _init(model, q, s, m):
  return jax.jit(lambda q, s, m: model.init({'params': jax.random.key(0)}, q, s, m))(q, s, m)


@pytest.fixture(scope='module')
def tiny_variables():
  """One initialisation shared by the tiny tests (parameter shapes do not depend on H, W, K)."""
  return _init(MMNet(**TINY), *_inputs(1, 1, 33, 33))


@pytest.mark.parametrize('b,k,h,w', [(2, 1, 33, 33), (1, 3, 41, 57), (2, 2, 49, 33)])
def test_output_shapes(b, k, h, w):
  model = MMNet(**TINY)
  q, s, m = _inputs(b, k, h, w)
  variables = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, q, s, m))
  out = jax.eval_shape(lambda v: model.apply(v, q, s, m, train=True,
                                             rngs={'dropout': jax.random.key(1)},
                                             mutable=['batch_stats'])[0], variables)
  fh, fw = (h - 1) // 8 + 1, (w - 1) // 8 + 1
  assert out['logits'].shape == (b, h, w, 2)
  assert [a.shape for a in out['aux_logits']] == [(b, 5, 5, 2), (b, 3, 3, 2), (b, 2, 2, 2),
                                                  (b, fh, fw, 2)]
  assert out['recon_loss'].shape == ()


def test_bad_input_size_raises_naming_it():
  model = MMNet(**TINY)
  q, s, m = _inputs(1, 1, 32, 33)
  with pytest.raises(ValueError, match='32x33'):
    jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, q, s, m))
  q, s, m = _inputs(1, 1, 33, 33)
  with pytest.raises(ValueError, match='support_masks'):
    jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, q, s, m[:, :, :-1]))


def test_parameter_tree_names():
  model = MMNet(**TINY)
  q, s, m = _inputs(1, 1, 33, 33)
  variables = jax.eval_shape(lambda: model.init({'params': jax.random.key(0)}, q, s, m))
  p = variables['params']
  assert set(p) == {'backbone', 'down_query', 'down_supp', 'memory', 'decoder'}
  assert set(p['backbone']) == {'stem', 'layer1_0', 'layer2_0', 'layer3_0', 'layer4_0'}
  assert set(p['backbone']['stem']) == {'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3'}
  assert p['backbone']['stem']['conv1']['kernel'].shape == (3, 3, 3, 16)
  assert set(p['backbone']['layer3_0']) == {'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3',
                                            'downsample_conv', 'downsample_bn'}
  assert set(p['backbone']['layer1_0']['bn1']) == {'scale', 'bias'}
  assert set(variables['batch_stats']['backbone']['layer1_0']['bn1']) == {'mean', 'var'}
  assert p['down_query']['conv']['kernel'].shape == (1, 1, 256 + 128, 32)
  assert p['memory']['slots'].shape == (32, 8)
  dec = p['decoder']
  assert set(dec) == ({f'init_merge_{b}' for b in range(4)} | {f'alpha_conv_{b}' for b in range(3)}
                      | {f'beta_conv_{b}' for b in range(4)} | {f'inner_cls_{b}' for b in range(4)}
                      | {'res1', 'res2', 'cls'})
  assert dec['init_merge_0']['conv']['kernel'].shape == (1, 1, 9, 32)
  assert set(dec['inner_cls_2']['conv']) == {'kernel'}
  assert set(dec['cls']['cls']) == {'kernel', 'bias'}
  assert set(dec['beta_conv_1']) == {'conv1', 'conv2'}


def test_resnet50_parameter_counts_match_the_original():
  model = MMNet(backbone='resnet50')
  q, s, m = (jax.ShapeDtypeStruct(x, jnp.float32) for x in
             [(1, 473, 473, 3), (1, 1, 473, 473, 3), (1, 1, 473, 473)])
  params = jax.eval_shape(lambda q, s, m: model.init({'params': jax.random.key(0)}, q, s, m),
                          q, s, m)['params']
  rows = module_counts(params, mmnet_spec.SUMMARY_GROUPS)
  assert count_parameters(params) == 33_988_554
  assert rows['backbone'] == (1, 23_631_808)
  assert rows['down_query'] == rows['down_supp'] == (1, 393_216)
  assert rows['memory'] == (1, 12_800)
  assert rows['decoder/init_merge'] == (4, 4 * 13_056)
  assert rows['decoder/alpha_conv'] == (3, 3 * 131_072)
  assert rows['decoder/beta_conv'] == (4, 4 * 1_179_648)
  assert rows['decoder/inner_cls'] == (4, 4 * 590_338)
  assert rows['decoder/res1'] == (1, 262_144)
  assert rows['decoder/res2'] == (1, 1_179_648)
  assert rows['decoder/cls'] == (1, 590_338)


def test_batchnorm_running_stats_follow_query_then_each_shot(tiny_variables):
  model = MMNet(**TINY)
  q, s, m = _inputs(2, 3, 33, 41)
  variables = tiny_variables
  _, state = jax.jit(lambda v: model.apply(v, q, s, m, train=True,
                                           rngs={'dropout': jax.random.key(1)},
                                           mutable=['batch_stats']))(variables)
  kernel = variables['params']['backbone']['stem']['conv1']['kernel']

  def conv1_mean(x):
    y = jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return np.asarray(y.mean(axis=(0, 1, 2)), np.float64)

  expected = np.zeros(kernel.shape[-1])
  for x in [q] + [s[:, i] for i in range(3)]:  # one update per backbone call, in this order
    expected = 0.9 * expected + 0.1 * conv1_mean(x)
  got = state['batch_stats']['backbone']['stem']['bn1']['mean']
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # Frozen mode and eval never touch the running statistics.
  frozen = MMNet(**TINY, bn_mode='frozen')
  q1, s1, m1 = _inputs(1, 1, 33, 33)
  _, state_f = jax.jit(lambda v: frozen.apply(
      v, q1, s1, m1, train=True, rngs={'dropout': jax.random.key(1)}, mutable=['batch_stats']))(
          variables)
  jax.tree_util.tree_map(np.testing.assert_array_equal, state_f['batch_stats'],
                         variables['batch_stats'])


def test_kshot_mask_compat_changes_output_only_when_masks_differ(tiny_variables):
  q, s, m = _inputs(1, 2, 33, 33)
  fixed = jax.jit(MMNet(**TINY).apply)
  compat = jax.jit(MMNet(**TINY, kshot_mask_compat=True).apply)
  run = lambda apply, masks: apply(tiny_variables, q, s, masks)['logits']
  assert float(jnp.max(jnp.abs(run(fixed, m) - run(compat, m)))) > 1e-6
  same = jnp.broadcast_to(m[:, :1], m.shape)
  np.testing.assert_array_equal(run(fixed, same), run(compat, same))


def test_one_compilation_per_size_and_shot_count(tiny_variables):
  model = MMNet(**TINY)
  traces = []

  @jax.jit
  def forward(v, q, s, m):
    traces.append(q.shape)  # runs only while tracing
    return model.apply(v, q, s, m)['logits']

  q, s, m = _inputs(1, 1, 33, 33, seed=0)
  variables = tiny_variables
  first = forward(variables, q, s, m)
  q2, s2, m2 = _inputs(1, 1, 33, 33, seed=1)
  second = forward(variables, q2, s2, m2)
  assert len(traces) == 1
  assert np.all(np.isfinite(first)) and float(jnp.max(jnp.abs(first - second))) > 0
  forward(variables, *_inputs(1, 2, 33, 33))
  assert len(traces) == 2


@pytest.mark.parametrize('freeze', [True, False])
def test_freeze_backbone_stops_backbone_gradients(freeze, tiny_variables):
  model = MMNet(**TINY, freeze_backbone=freeze, bn_mode='frozen')
  q, s, m = _inputs(1, 1, 33, 33)
  variables = tiny_variables

  def loss(params):
    out = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, q, s, m)
    return jnp.sum(out['logits'] ** 2) + out['recon_loss']

  grads = jax.jit(jax.grad(loss))(variables['params'])
  backbone_norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree_util.tree_leaves(grads['backbone']))
  head_norm = float(jnp.sum(grads['decoder']['cls']['cls']['kernel'] ** 2))
  assert head_norm > 0
  assert (backbone_norm == 0.0) == freeze


def test_build_model_from_config_and_errors():
  cfg = ml_collections.ConfigDict(dict(TINY, bn_mode='frozen', kshot_mask_compat=True,
                                       pretrained='ignored/by/the/model.pth'))
  model = build_model(cfg)
  assert model.bn_mode == 'frozen' and model.kshot_mask_compat and model.ppm_scales == (5, 3, 2, 1.0)
  with pytest.raises(ValueError, match='bn_mode'):
    MMNet.from_config(ml_collections.ConfigDict(dict(TINY, bn_mode='eval')))
  with pytest.raises(ValueError, match='backbone'):
    MMNet.from_config({'backbone': 'resnet18'})


@pytest.mark.slow
def test_resnet50_forward_473_one_shot():
  model = MMNet(backbone='resnet50')
  q, s, m = _inputs(1, 1, 473, 473)
  variables = _init(model, q, s, m)
  out = jax.jit(lambda v: model.apply(v, q, s, m))(variables)
  assert out['logits'].shape == (1, 473, 473, 2)
  assert [a.shape[1] for a in out['aux_logits']] == [60, 30, 15, 8]
  assert np.all(np.isfinite(out['logits'])) and np.isfinite(float(out['recon_loss']))
