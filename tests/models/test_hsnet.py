"""HSNet: the center-pivot 4-D conv against a dense 4-D conv, correlations, GroupNorm, the
K-shot vote, the loss, the size rule, the converter's key map, frozen-backbone gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmnet_jax import convert
from mmnet_jax.models import hsnet, hsnet_spec, registry
from mmnet_jax.models.hsnet import (CenterPivotConv4d, GroupNorm, HSNet, cosine_correlation,
                                    hsnet_loss, squeezed_sides, vote)


def _x64():
  """jax_enable_x64 for a block: jax.enable_x64 (jax >= 0.8) or jax.experimental's."""
  if hasattr(jax, 'enable_x64'):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def _dense_center_pivot(x, k1, b1, k2, b2, stride):
  """float64 numpy: a dense 4-D conv (stride (1, 1, s, s), zero padding k // 2) whose kernel is
  zero except its two center-pivot slices: K[a, b, c, d] = k1[a, b] if (c, d) is the center,
  plus k2[c, d] if (a, b) is; bias b1 + b2. x (B, ha, wa, hb, wb, C), kernels (k, k, C, O)."""
  k = k1.shape[0]
  p = k // 2
  kern = np.zeros((k, k, k, k) + k1.shape[2:])
  kern[:, :, p, p] += k1
  kern[p, p, :, :] += k2
  b, ha, wa, hb, wb, _ = x.shape
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (p, p), (p, p), (0, 0)))
  ohb, owb = -(-hb // stride), -(-wb // stride)
  out = np.zeros((b, ha, wa, ohb, owb, k1.shape[3]))
  for i in range(ha):
    for j in range(wa):
      for u in range(ohb):
        for v in range(owb):
          patch = xp[:, i:i + k, j:j + k, u * stride:u * stride + k, v * stride:v * stride + k]
          out[:, i, j, u, v] = np.einsum('nabcdi,abcdio->no', patch, kern)
  return out + b1 + b2


@pytest.mark.parametrize('k,stride,shape', [(3, 1, (1, 4, 5, 3, 4, 2)), (3, 2, (2, 3, 3, 5, 4, 3)),
                                            (5, 4, (1, 3, 4, 7, 6, 2))])
def test_center_pivot_conv4d_is_a_dense_4d_conv_with_a_center_pivot_kernel(k, stride, shape):
  with _x64():
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    conv = CenterPivotConv4d(3, k, stride, dtype=jnp.float64)
    variables = conv.init(jax.random.key(0), jnp.asarray(x))
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape)),
                                       variables)
    got = np.asarray(conv.apply(variables, jnp.asarray(x)))
    p = variables['params']
    want = _dense_center_pivot(x, np.asarray(p['conv1']['kernel']), np.asarray(p['conv1']['bias']),
                               np.asarray(p['conv2']['kernel']), np.asarray(p['conv2']['bias']),
                               stride)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_cosine_correlation_by_hand_with_zero_support_pixels():
  rng = np.random.default_rng(1)
  q = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  s = rng.normal(size=(2, 2, 3, 5)).astype(np.float32)
  s[:, 0, 0] = 0   # a masked-out support pixel
  qn = q / (np.linalg.norm(q, axis=-1, keepdims=True) + 1e-5)
  sn = s / (np.linalg.norm(s, axis=-1, keepdims=True) + 1e-5)
  want = np.maximum(np.einsum('bhwc,bijc->bhwij', qn, sn), 0)
  got = np.asarray(cosine_correlation(jnp.asarray(q), jnp.asarray(s)))
  np.testing.assert_allclose(got, want, atol=1e-6)
  # torch: ||0|| has a zero gradient and clamp(min=0) passes it at exactly 0; no NaN here.
  grad = jax.grad(lambda s_: jnp.sum(cosine_correlation(jnp.asarray(q), s_) ** 2 +
                                     cosine_correlation(jnp.asarray(q), s_)))(jnp.asarray(s))
  assert np.all(np.isfinite(np.asarray(grad)))
  # At a zero support pixel the output is exactly 0 and its gradient wrt the correlation is 1
  # (clamp's), so d/ds there is sum_q q_hat / eps: the where, not jnp.maximum's 1/2.
  g0 = jax.grad(lambda s_: jnp.sum(cosine_correlation(jnp.asarray(q), s_)))(jnp.asarray(s))
  qhat_sum = qn.sum(axis=(1, 2))   # (B, C)
  np.testing.assert_allclose(np.asarray(g0)[:, 0, 0], qhat_sum / 1e-5, rtol=1e-4)


def test_group_norm_matches_torch_semantics_by_hand():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 3, 2, 4, 8)).astype(np.float32) * 3 + 1
  gn = GroupNorm()
  v = gn.init(jax.random.key(0), jnp.asarray(x))
  scale = rng.normal(size=8).astype(np.float32)
  bias = rng.normal(size=8).astype(np.float32)
  got = np.asarray(gn.apply({'params': {'scale': scale, 'bias': bias}}, jnp.asarray(x)))
  g = x.astype(np.float64).reshape(2, -1, 4, 2)
  mean = g.mean(axis=(1, 3), keepdims=True)
  var = g.var(axis=(1, 3), keepdims=True)
  want = ((g - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * scale + bias
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert sorted(v['params']) == ['bias', 'scale']


def test_vote_is_predict_mask_nshot():
  # 3 shots on 2 images of 2x2 pixels: votes per pixel, then / max(1, max vote) >= 0.5.
  fg = np.array([[[[1, 1], [0, 0]], [[1, 0], [0, 0]], [[1, 0], [1, 0]]],      # votes 3,1,1,0
                 [[[0, 0], [0, 0]], [[0, 0], [0, 1]], [[0, 0], [0, 0]]]])     # votes 0,0,0,1
  logits = np.stack([1 - fg, fg], axis=-1).astype(np.float32)   # (B, K, H, W, 2)
  got = np.asarray(vote(jnp.asarray(logits)))
  # image 0: 3/3, 1/3, 1/3, 0 -> [1, 0, 0, 0]; image 1: max vote 1 -> [0, 0, 0, 1].
  np.testing.assert_array_equal(got, [[[1, 0], [0, 0]], [[0, 0], [0, 1]]])
  # No foreground anywhere: max(1, 0) keeps it 0 (no division by zero).
  assert not np.asarray(vote(jnp.asarray(np.stack([np.ones_like(fg), 0 * fg], -1)))).any()
  # Half the shots: 2 of 4 votes at the top pixel -> 1, a pixel with 1 of max 2 -> 1 (0.5).
  fg4 = np.zeros((1, 4, 1, 3), int)
  fg4[0, :2, 0, 0] = 1
  fg4[0, 0, 0, 1] = 1
  got4 = np.asarray(vote(jnp.asarray(np.stack([1 - fg4, fg4], -1).astype(np.float32))))
  np.testing.assert_array_equal(got4, [[[1, 1, 0]]])


def test_loss_counts_255_as_background_by_hand():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 1, 4, 5, 2)).astype(np.float32)
  label = rng.integers(0, 2, size=(2, 4, 5))
  label[:, 0] = 255
  got, terms = hsnet_loss({'shot_logits': jnp.asarray(logits)}, jnp.asarray(label))
  target = np.where(label == 255, 0, label)
  lp = logits[:, 0] - np.log(np.exp(logits[:, 0]).sum(-1, keepdims=True))
  want = -np.take_along_axis(lp, target[..., None], -1).mean()
  np.testing.assert_allclose(float(got), want, rtol=1e-6)
  assert float(terms['main']) == float(got)


def test_every_side_squeezes_evenly():
  assert squeezed_sides(400) == (2, 2, 2)
  assert hsnet.backbone_sides(400) == (50, 25, 13)
  assert all(len(set(squeezed_sides(s))) == 1 for s in range(1, 2049))
  spec = registry.get('hsnet')
  assert spec.input_size_ok(400) and spec.input_size_ok(37) and not spec.input_size_ok(0)
  assert spec.stretch_size == 400 and not registry.get('mmnet').input_size_ok(400)


@pytest.mark.slow  # ~80 s on a Zen 3 VM; run by .ci/run's slow line
def test_forward_shapes_and_kshot_vote():
  k, h, w = 3, 41, 56
  model = HSNet(backbone='tiny')
  rng = np.random.default_rng(4)
  q = jnp.asarray(rng.normal(size=(2, h, w, 3)), jnp.float32)
  s = jnp.asarray(rng.normal(size=(2, k, h, w, 3)), jnp.float32)
  m = jnp.asarray(rng.random((2, k, h, w)) > 0.6, jnp.float32)
  variables = model.init(jax.random.key(0), q, s, m)
  out = model.apply(variables, q, s, m, train=False)
  assert out['logits'].shape == (2, h, w, 2) and out['shot_logits'].shape == (2, k, h, w, 2)
  decided = np.argmax(np.asarray(out['logits']), -1)
  np.testing.assert_array_equal(decided, np.asarray(vote(out['shot_logits'])))
  # Shot j's logits are the 1-shot forward with support j alone, whose 'logits' they are.
  one = model.apply(variables, q, s[:, -1:], m[:, -1:], train=False)
  np.testing.assert_array_equal(np.asarray(one['logits']), np.asarray(one['shot_logits'][:, 0]))
  np.testing.assert_allclose(np.asarray(one['logits']), np.asarray(out['shot_logits'][:, -1]),
                             atol=1e-5)


@pytest.mark.slow  # ~60 s on a Zen 3 VM; run by .ci/run's slow line
def test_frozen_backbone_gets_no_gradient_and_the_learner_does():
  model = HSNet(backbone='tiny', freeze_backbone=True)
  rng = np.random.default_rng(5)
  q = jnp.asarray(rng.normal(size=(1, 33, 33, 3)), jnp.float32)
  s = jnp.asarray(rng.normal(size=(1, 1, 33, 33, 3)), jnp.float32)
  # Support position (0, 0), the only one the stride-2/4 first convs read of a 2x2 / 3x3
  # support map, must be foreground: a masked one gives conv1 a zero input (as in torch).
  m = np.asarray(rng.random((1, 1, 33, 33)) > 0.5, np.float32)
  m[..., :17, :17] = 1
  m = jnp.asarray(m)
  label = jnp.asarray(rng.integers(0, 2, (1, 33, 33)))
  variables = model.init(jax.random.key(0), q, s, m)

  def loss(params):
    out = model.apply({**variables, 'params': params}, q, s, m, train=True)
    return hsnet_loss(out, label)[0]
  grads = jax.jit(jax.grad(loss))(variables["params"])
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads['backbone']))
  learner = jax.tree_util.tree_leaves(grads['hpn_learner'])
  assert all(np.isfinite(np.asarray(g)).all() for g in learner)
  assert sum(float(jnp.abs(g).max()) > 0 for g in learner) == len(learner)


def _torch_names_of(params, batch_stats):
  """HSNet's torch state dict (zeros of the right shapes) for our variable tree: the inverse
  of the converter's key map, written from the original's module names."""
  sd = {}
  km = hsnet_spec.CONVERT_FORMATS['hsnet-official']
  for name, target in km.modules.items():
    node = params
    for part in target.path:
      node = node[part]
    if target.kind == 'conv':
      kh, kw, cin, cout = node['kernel'].shape
      sd[f'module.{name}.weight'] = np.full((cout, cin, kh, kw), 0.5, np.float32)
      sd[f'module.{name}.bias'] = np.full((cout,), 0.25, np.float32)
    else:
      sd[f'module.{name}.weight'] = np.full(node['scale'].shape, 2.0, np.float32)
      sd[f'module.{name}.bias'] = np.full(node['bias'].shape, -1.0, np.float32)
  bb = params['backbone']
  for block, mods in bb.items():
    torch_block = 'backbone.' + ('' if block == 'stem' else
                                 block.replace('_', '.', 1) + '.')
    for mod, leaves in mods.items():
      tname = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(mod, mod)
      key = f'module.{torch_block}{tname}'
      if 'kernel' in leaves:
        kh, kw, cin, cout = leaves['kernel'].shape
        sd[f'{key}.weight'] = np.zeros((cout, cin, kh, kw), np.float32)
      else:
        c = leaves['scale'].shape[0]
        for p in ('weight', 'bias', 'running_mean', 'running_var'):
          sd[f'{key}.{p}'] = np.ones((c,), np.float32)
        sd[f'{key}.num_batches_tracked'] = np.zeros((), np.int64)
  sd['module.backbone.fc.weight'] = np.zeros((1000, 2048), np.float32)
  sd['module.backbone.fc.bias'] = np.zeros((1000,), np.float32)
  return sd


def test_hsnet_official_converter_maps_every_key_of_a_resnet50_checkpoint():
  model = HSNet(backbone='resnet50_tv')
  z = jnp.zeros((1, 65, 65, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), z, z[:, None], z[:, None, ..., 0]))
  sd = _torch_names_of(shapes['params'], shapes['batch_stats'])
  tree, info = convert.convert_state_dict_with_info(sd, 'hsnet-official')
  merged = convert.merge_into({c: dict(v) for c, v in shapes.items()}, tree)   # shapes checked
  n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(merged['params']))
  assert n == 26_081_826 == registry.get('hsnet').reference_params['resnet50_tv'] - 2_049_000
  assert 'module.backbone.fc.weight' in info['skipped']
  learner = merged['params']['hpn_learner']
  k = np.asarray(learner['encoder_layer3']['conv0']['conv2']['kernel'])
  assert k.shape == (5, 5, 6, 16) and np.all(k == 0.5)   # OIHW (16, 6, 5, 5) -> HWIO
  assert np.all(np.asarray(learner['encoder_layer2']['norm2']['scale']) == 2.0)
  assert np.all(np.asarray(learner['decoder2_2']['bias']) == 0.25)
  # A missing GroupNorm bias is named with the original's key.
  del sd['module.hpn_learner.encoder_layer4to3.4.bias']
  with pytest.raises(convert.ConversionError, match=r'hpn_learner\.encoder_layer4to3\.4\.bias'):
    convert.convert_state_dict(sd, 'hsnet-official')
