"""models/conv: the 1x1 matrix-product path equals the convolution it replaces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmnet_jax.models import conv

RNG = np.random.default_rng(0)


def _lax_conv(x, kernel, stride, padding, dilation):
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
      rhs_dilation=(dilation, dilation), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('k,stride,padding,dilation', [
    (1, 1, 0, 1), (1, 2, 0, 1), (1, 2, 1, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2)])
def test_conv2d_equals_lax_convolution(k, stride, padding, dilation):
  x = jnp.asarray(RNG.normal(size=(2, 9, 11, 5)), jnp.float32)   # odd, non-square
  kernel = jnp.asarray(RNG.normal(size=(k, k, 5, 7)), jnp.float32)
  got = conv.conv2d(x, kernel, stride, padding, dilation)
  want = _lax_conv(x, kernel, stride, padding, dilation)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv2d_module_params_bias_and_dtype():
  m = conv.Conv2d(4, 1, stride=2, use_bias=True, dtype=jnp.bfloat16)
  x = jnp.asarray(RNG.normal(size=(1, 5, 5, 3)), jnp.float32)
  v = m.init(jax.random.key(0), x)
  assert jax.tree_util.tree_map(jnp.shape, v['params']) == {'kernel': (1, 1, 3, 4), 'bias': (4,)}
  assert v['params']['kernel'].dtype == jnp.float32   # parameters stay float32
  y = m.apply(v, x)
  assert y.dtype == jnp.bfloat16 and y.shape == (1, 3, 3, 4)
  want = _lax_conv(x, v['params']['kernel'], 2, 0, 1) + v['params']['bias']
  np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('shape,k,stride,padding', [
    ((7, 1, 1, 4), 3, 1, 1), ((7, 1, 1, 4), 5, 1, 2),          # 1x1 maps: the center tap
    ((6, 2, 2, 3), 3, 2, 1), ((6, 4, 4, 3), 5, 4, 2),          # small maps: patch matmul
    ((5, 3, 4, 2), 3, 1, 1), ((5, 4, 4, 2), 3, 2, 0), ((5, 2, 3, 2), 5, 2, 2)])
def test_small_map_paths_equal_the_convolution_in_float64(shape, k, stride, padding):
  """HSNet's squeezed support dims are 1x1 .. 4x4 maps in batches of thousands: conv2d runs
  them as matrix products; the result is the convolution's (float64, 1e-12)."""
  from tests.models.test_hsnet import _x64  # pylint: disable=g-import-not-at-top
  assert shape[1] * shape[2] <= conv.SMALL_MAP
  with _x64():
    x = jnp.asarray(RNG.normal(size=shape), jnp.float64)
    kernel = jnp.asarray(RNG.normal(size=(k, k, shape[3], 6)), jnp.float64)
    got = np.asarray(conv.conv2d(x, kernel, stride, padding, small_maps=True))
    want = np.asarray(_lax_conv(x, kernel, stride, padding, 1))
  assert got.shape == want.shape and got.dtype == np.float64
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
