"""A torch-semantics 2-D convolution whose 1x1 case is a matrix product.

Same parameters as ``nn.Conv`` (``kernel`` HWIO, optional ``bias``), so checkpoints and the
converter are unchanged. A 1x1 convolution is ``(N*H*W, Cin) @ (Cin, Cout)``: written as a
dot, XLA:CPU runs it with its matmul kernels at 350-420 GFLOP/s on a 2-core AVX-512 CPU,
against 100-250 GFLOP/s for the same op as a convolution (docs/benchmarks.md); on GPU/TPU
both lower to the same matrix-unit code. A 1x1 stride s is the subsample ``x[:, ::s, ::s]``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# config.model.dtype -> the computation dtype of the convolutions (parameters stay float32).
# float64 (needs jax_enable_x64 and float64 variables) is for exactness checks against torch
# in double precision (tools/parity_official.py --dtype float64).
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64}


def wide_dtype(dtype) -> jnp.dtype:
  """The dtype of statistics, cosines, softmaxes and losses for inputs of ``dtype``: float32
  (bfloat16 sums of many pixels lose the mean), float64 for float64 inputs."""
  return jnp.promote_types(dtype, jnp.float32)

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


# Maps of at most this many pixels are convolved as one matrix product of their patches:
# XLA:CPU runs a batch of thousands of 2x2 .. 4x4 maps (HSNet's squeezed support dims) at a few
# GFLOP/s as convolutions; the patches are at most k * k times the (tiny) maps.
SMALL_MAP = 16


def _patch_matmul(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  """conv2d as (N, ho, wo, kh * kw * Cin) patches @ the (kh * kw * Cin, Cout) kernel."""
  kh, kw, cin, cout = kernel.shape
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  ho = (x.shape[1] - kh) // stride + 1
  wo = (x.shape[2] - kw) // stride + 1
  taps = [x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
          for i in range(kh) for j in range(kw)]
  patches = jnp.stack(taps, axis=3)   # (N, ho, wo, kh * kw, Cin), taps in HWIO order
  return jnp.einsum('nhwtc,tcd->nhwd', patches, kernel.reshape(kh * kw, cin, cout))


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0,
           dilation: int = 1, small_maps: bool = False) -> jax.Array:
  """torch Conv2d on NHWC ``x`` with an HWIO ``kernel``, symmetric zero ``padding``.

  ``small_maps``: maps of at most SMALL_MAP pixels as matrix products (HSNet opts in; the
  other models keep the convolution, whose rounding their recorded results came from).
  """
  if kernel.shape[:2] == (1, 1):
    if padding:
      x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    if stride > 1:
      x = x[:, ::stride, ::stride]
    return jnp.einsum('nhwc,cd->nhwd', x, kernel[0, 0])
  kh, kw = kernel.shape[:2]
  if small_maps and x.shape[1:3] == (1, 1) and kh == kw and kh % 2 and padding == kh // 2:
    # A 1x1 map padded by k // 2: every tap but the center reads padding zeros, so the conv
    # is the center tap's matrix product (HSNet's 4-D convs on squeezed 1x1 support dims).
    return jnp.einsum('nhwc,cd->nhwd', x, kernel[kh // 2, kw // 2])
  if small_maps and x.shape[1] * x.shape[2] <= SMALL_MAP and dilation == 1:
    return _patch_matmul(x, kernel, stride, padding)
  pad = ((padding, padding), (padding, padding))
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad,
                                      rhs_dilation=(dilation, dilation),
                                      dimension_numbers=_DIMENSIONS)


class Conv2d(nn.Module):
  """``nn.Conv`` with torch's symmetric padding; ``dtype`` is the computation dtype."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  use_bias: bool = False
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros
  dtype: Any = None
  small_maps: bool = False   # conv2d's matrix-product path for maps of <= SMALL_MAP pixels

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32) \
        if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, self.stride, self.padding, self.dilation, self.small_maps)
    return y if bias is None else y + bias
