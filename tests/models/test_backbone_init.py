"""Initialisers, backbone geometry, and torch parity of the dilated bottleneck and the stem."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmnet_jax.models import initializers
from mmnet_jax.models.backbone import Bottleneck, ResNetBackbone, Stem, feature_size


def test_torch_default_conv_init_bounds():
  conv = initializers.torch_conv(64, 3, 32, use_bias=True)
  p = conv.init(jax.random.key(0), jnp.zeros((1, 5, 5, 32)))['params']
  bound = 1 / math.sqrt(32 * 9)
  for x in (p['kernel'], p['bias']):
    assert float(jnp.max(jnp.abs(x))) <= bound
  # U(-b, b) has std b / sqrt(3); 18k samples pin it to about 1%.
  np.testing.assert_allclose(float(jnp.std(p['kernel'])), bound / math.sqrt(3), rtol=0.03)
  assert float(jnp.max(jnp.abs(p['bias']))) > 0.5 * bound
  slots = initializers.memory_slot_init(jax.random.key(1), (256, 50))
  np.testing.assert_allclose(float(jnp.std(slots)), 1.0, rtol=0.03)


def test_feature_sizes_output_stride_8():
  assert feature_size(473, 473) == (60, 60)
  assert feature_size(641, 641) == (81, 81)
  assert feature_size(41, 57) == (6, 8)
  x = jnp.zeros((1, 41, 57, 3))
  shapes = jax.eval_shape(lambda: ResNetBackbone('tiny').init_with_output(
      jax.random.key(0), x, True)[0])
  assert [s.shape for s in shapes] == [(1, 6, 8, 128), (1, 6, 8, 256), (1, 6, 8, 512)]
  tv = jax.eval_shape(lambda: ResNetBackbone('resnet50_tv').init(jax.random.key(0), x, True))
  assert set(tv['params']['stem']) == {'conv1', 'bn1'}
  assert tv['params']['stem']['conv1']['kernel'].shape == (7, 7, 3, 64)


def _torch_bn(torch, x, p):
  return torch.nn.functional.batch_norm(x, None, None, torch.from_numpy(np.array(p['scale'])),
                                        torch.from_numpy(np.array(p['bias'])), training=True,
                                        eps=1e-5)


def _oihw(torch, kernel):
  return torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy())


@pytest.mark.torch
@pytest.mark.parametrize('stride,dilation', [(2, 1), (1, 2), (1, 4)])
def test_bottleneck_matches_torch(stride, dilation):
  torch = pytest.importorskip('torch')
  F = torch.nn.functional
  x = np.random.default_rng(0).normal(size=(2, 9, 11, 24)).astype(np.float32)
  block = Bottleneck(8, stride=stride, dilation=dilation, downsample=True)
  variables = block.init(jax.random.key(0), jnp.asarray(x), False)
  p = jax.tree_util.tree_map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape),
                             variables['params'])  # non-trivial BN scale/bias
  out, _ = block.apply({'params': p, 'batch_stats': variables['batch_stats']}, jnp.asarray(x),
                       False, mutable=['batch_stats'])
  t = torch.from_numpy(x.transpose(0, 3, 1, 2))
  y = F.relu(_torch_bn(torch, F.conv2d(t, _oihw(torch, p['conv1']['kernel'])), p['bn1']))
  y = F.conv2d(y, _oihw(torch, p['conv2']['kernel']), stride=stride, padding=dilation,
               dilation=dilation)
  y = F.relu(_torch_bn(torch, y, p['bn2']))
  y = _torch_bn(torch, F.conv2d(y, _oihw(torch, p['conv3']['kernel'])), p['bn3'])
  r = _torch_bn(torch, F.conv2d(t, _oihw(torch, p['downsample_conv']['kernel']), stride=stride),
                p['downsample_bn'])
  ref = F.relu(y + r).numpy().transpose(0, 2, 3, 1)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.torch
def test_deep_stem_matches_torch():
  torch = pytest.importorskip('torch')
  F = torch.nn.functional
  x = np.random.default_rng(1).normal(size=(2, 17, 25, 3)).astype(np.float32)
  stem = Stem(True, (8, 8, 16))
  variables = stem.init(jax.random.key(0), jnp.asarray(x), False)
  p = variables['params']
  out = stem.apply(variables, jnp.asarray(x), False)
  y = torch.from_numpy(x.transpose(0, 3, 1, 2))
  for i, stride in ((1, 2), (2, 1), (3, 1)):
    y = F.conv2d(y, _oihw(torch, p[f'conv{i}']['kernel']), stride=stride, padding=1)
    y = F.relu(_torch_bn(torch, y, p[f'bn{i}']))
  ref = F.max_pool2d(y, 3, stride=2, padding=1).numpy().transpose(0, 2, 3, 1)
  assert out.shape == ref.shape == (2, 5, 7, 16)
  np.testing.assert_allclose(out, ref, atol=1e-4)
