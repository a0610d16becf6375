"""PyTorch-default initialisers and a torch-like Conv2d builder.

torch ``nn.Conv2d`` initialises its weight with kaiming_uniform(a=sqrt(5)), which is
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and its bias with the same bound. Flax bias initialisers
only see the bias shape, so the bias bound is bound to fan_in by a closure.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mmnet_jax.models.conv import Conv2d


def _uniform(key, shape, dtype, bound):
  return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)


def torch_conv_kernel_init(key, shape, dtype=jnp.float32):
  """torch Conv2d default weight init for an HWIO kernel: U(+-1/sqrt(kh*kw*in))."""
  fan_in = math.prod(shape[:-1])
  return _uniform(key, shape, dtype, 1.0 / math.sqrt(fan_in))


def torch_bias_init(fan_in: int):
  """torch Conv2d default bias init U(+-1/sqrt(fan_in)) for a layer with that fan_in."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return _uniform(key, shape, dtype, bound)

  return init


# The ResNet's own init (kaiming normal, fan_out, relu); only matters when training from scratch.
resnet_kernel_init = jax.nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# part_emb_2_level in the original: normal_(0, 1).
memory_slot_init = jax.nn.initializers.normal(stddev=1.0)


def torch_conv(features: int, kernel_size: int, in_features: int, *, use_bias: bool = False,
               padding: int = 0, stride: int = 1, dilation: int = 1, name: str | None = None,
               kernel_init=torch_conv_kernel_init, dtype=None, small_maps: bool = False
               ) -> Conv2d:
  """A ``Conv2d`` with torch Conv2d semantics: explicit symmetric padding and torch init.

  ``dtype`` is the computation dtype (None: from the inputs); parameters stay float32.
  """
  fan_in = in_features * kernel_size * kernel_size
  return Conv2d(features, kernel_size, stride=stride, padding=padding, dilation=dilation,
                use_bias=use_bias, kernel_init=kernel_init, bias_init=torch_bias_init(fan_in),
                name=name, dtype=dtype, small_maps=small_maps)
