"""Align-corners bilinear resize: hand-computed cases (default) and torch parity (torch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmnet_jax.models.resize import interpolation_matrix, resize_bilinear_align_corners


def _nhwc(a):
  return jnp.asarray(np.asarray(a, np.float32)[None, :, :, None])


def test_upsample_2x2_to_3x3_by_hand():
  # Corners are kept; centre is the mean of the four; edge midpoints average two corners.
  out = resize_bilinear_align_corners(_nhwc([[0., 2.], [4., 6.]]), (3, 3))[0, :, :, 0]
  expected = [[0., 1., 2.], [2., 3., 4.], [4., 5., 6.]]
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_downsample_5_to_3_samples_every_other_column():
  x = np.arange(5, dtype=np.float32)[None, :] * np.ones((2, 1), np.float32)
  out = resize_bilinear_align_corners(_nhwc(x), (2, 3))[0, :, :, 0]
  np.testing.assert_allclose(out, [[0., 2., 4.], [0., 2., 4.]], atol=1e-6)


def test_non_integer_ratio_fixture():
  # 4 -> 3: source coordinates 0, 1.5, 3 -> [x0, (x1 + x2) / 2, x3].
  x = np.array([[1., 3., 7., 15.]], np.float32)
  out = resize_bilinear_align_corners(_nhwc(x), (1, 3))[0, :, :, 0]
  np.testing.assert_allclose(out, [[1., 5., 15.]], atol=1e-6)


def test_to_one_and_from_one():
  x = np.array([[5., 1.], [3., 9.]], np.float32)
  # n -> 1 reads index 0 (torch align_corners with a single output sample).
  np.testing.assert_allclose(resize_bilinear_align_corners(_nhwc(x), (1, 1))[0, :, :, 0], [[5.]])
  # 1 -> n replicates.
  one = resize_bilinear_align_corners(_nhwc([[7.]]), (3, 2))[0, :, :, 0]
  np.testing.assert_allclose(one, np.full((3, 2), 7.))


def test_matrix_rows_sum_to_one():
  for n_in, n_out in [(5, 9), (9, 5), (60, 8), (81, 60), (1, 4), (4, 1)]:
    np.testing.assert_allclose(interpolation_matrix(n_in, n_out).sum(1), 1.0, atol=1e-12)


def test_same_size_is_identity_and_gradient_flows():
  x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
  assert resize_bilinear_align_corners(x, (5, 7)) is x
  g = jax.grad(lambda v: resize_bilinear_align_corners(v, (9, 13)).sum())(x)
  # Each input's weights into the output sum to out/in ratio per axis: total mass preserved.
  np.testing.assert_allclose(g.sum(), 9 * 13 * 2 * 3, rtol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize('src,dst', [((7, 9), (13, 17)), ((60, 60), (8, 8)), ((81, 61), (60, 15)),
                                     ((5, 5), (1, 1)), ((1, 1), (4, 6)), ((9, 1), (3, 5))])
def test_matches_torch(src, dst):
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(0).normal(size=(2, 3) + src).astype(np.float32)  # NCHW
  ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode='bilinear',
                                        align_corners=True).numpy()
  out = resize_bilinear_align_corners(jnp.asarray(x.transpose(0, 2, 3, 1)), dst)
  np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), ref, atol=1e-5)


def test_float64_data_get_float64_coordinates_as_torch_double():
  # torch computes the source coordinate i * (in - 1) / (out - 1) in the data's precision:
  # float for float32 (kept bit-close by default), double for float64 (the parity tool's
  # exactness check). 8 -> 60 (a FEM bin back to the feature size): 7 / 59 is inexact, so
  # float32 coordinates put float32 rounding into the weights.
  exact = np.arange(60) * (7 / 59)
  lo = np.floor(exact).astype(int)
  m64 = interpolation_matrix(8, 60, 'float64')
  np.testing.assert_allclose(m64[np.arange(59), lo[:-1] + 1], (exact - lo)[:-1], atol=1e-15)
  m32 = interpolation_matrix(8, 60)
  assert 1e-8 < np.max(np.abs(m32 - m64)) < 1e-5
  with _x64():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 8, 8, 1)))
    out = resize_bilinear_align_corners(x, (60, 60))
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out[0, :, :, 0], m64 @ np.asarray(x[0, :, :, 0]) @ m64.T,
                               rtol=0, atol=1e-13)


def _x64():
  if hasattr(jax, 'enable_x64'):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()
