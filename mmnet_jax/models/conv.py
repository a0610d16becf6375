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


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0,
           dilation: int = 1) -> jax.Array:
  """torch Conv2d on NHWC ``x`` with an HWIO ``kernel``, symmetric zero ``padding``."""
  if kernel.shape[:2] == (1, 1):
    if padding:
      x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    if stride > 1:
      x = x[:, ::stride, ::stride]
    return jnp.einsum('nhwc,cd->nhwd', x, kernel[0, 0])
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

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32) \
        if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, self.stride, self.padding, self.dilation)
    return y if bias is None else y + bias
