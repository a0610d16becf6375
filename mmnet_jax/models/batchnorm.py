"""BatchNorm with torch.nn.BatchNorm2d semantics.

Differences from flax.linen.BatchNorm that matter for parity: the running variance is updated
with the UNBIASED batch variance (n / (n - 1)) while the output is normalised with the biased
one, and momentum means torch's ``new = (1 - m) * old + m * batch`` with m = 0.1.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from mmnet_jax.models.conv import wide_dtype


class BatchNorm(nn.Module):
  """torch-semantics BatchNorm over the last (channel) axis.

  Params: ``scale`` (1s), ``bias`` (0s). batch_stats: ``mean`` (0s), ``var`` (1s).
  With ``use_running_average=False`` the batch statistics normalise the input and, when the
  'batch_stats' collection is mutable (and not during init), the running stats are updated.
  Statistics and the normalisation are float32 for bfloat16 or float32 input (bf16 sums of
  many pixels lose the mean), float64 for float64; the output has the input's dtype.
  """
  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    c = x.shape[-1]
    out_dtype = x.dtype
    x = x.astype(wide_dtype(x.dtype))
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((c,), jnp.float32))
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      n = math.prod(x.shape[:-1])
      if n < 2:
        raise ValueError(f'BatchNorm {self.name}: batch statistics need more than 1 value per '
                         f'channel, got input shape {x.shape}')
      mean = jnp.mean(x, axis=axes)
      var = jnp.mean(jnp.square(x - mean), axis=axes)  # biased, used to normalise
      if self.is_mutable_collection('batch_stats') and not self.is_initializing():
        m = self.momentum
        ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
        ra_var.value = (1.0 - m) * ra_var.value + m * var * (n / (n - 1))
    inv = scale * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
    return ((x - mean) * inv + bias).astype(out_dtype)
