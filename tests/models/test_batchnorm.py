"""torch-semantics BatchNorm: hand-computed numpy case and torch.nn.BatchNorm2d parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmnet_jax.models.batchnorm import BatchNorm


def _apply(variables, x, use_running_average, mutable=True):
  return BatchNorm().apply(variables, x, use_running_average,
                           mutable=['batch_stats'] if mutable else False)


def test_hand_computed_update_and_output():
  # One channel, 4 values: mean 2.5, biased var 1.25, unbiased var 5/3.
  x = jnp.asarray([1., 2., 3., 4.]).reshape(1, 2, 2, 1)
  variables = BatchNorm().init(jax.random.key(0), x, False)
  np.testing.assert_array_equal(variables['batch_stats']['mean'], [0.])
  y, state = _apply(variables, x, False)
  np.testing.assert_allclose(y.ravel(), (np.array([1, 2, 3, 4]) - 2.5) / np.sqrt(1.25 + 1e-5),
                             rtol=1e-6)
  np.testing.assert_allclose(state['batch_stats']['mean'], [0.9 * 0 + 0.1 * 2.5], rtol=1e-6)
  np.testing.assert_allclose(state['batch_stats']['var'], [0.9 * 1 + 0.1 * 5 / 3], rtol=1e-6)
  # Running-average mode normalises with the stored statistics and changes nothing.
  new_vars = {'params': variables['params'], 'batch_stats': state['batch_stats']}
  y2, state2 = _apply(new_vars, x, True)
  np.testing.assert_allclose(y2.ravel(), (np.array([1, 2, 3, 4]) - 0.25)
                             / np.sqrt(0.9 + 0.5 / 3 + 1e-5), rtol=1e-6)
  np.testing.assert_array_equal(state2['batch_stats']['mean'], state['batch_stats']['mean'])


def test_immutable_batch_stats_are_not_updated():
  x = jnp.arange(8.).reshape(2, 2, 2, 1)
  variables = BatchNorm().init(jax.random.key(0), x, False)
  y = _apply(variables, x, False, mutable=False)
  assert y.shape == x.shape


@pytest.mark.torch
def test_matches_torch_batchnorm2d_over_two_steps():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  xs = [rng.normal(2.0, 3.0, size=(3, 5, 6, 4)).astype(np.float32) for _ in range(2)]
  bn = torch.nn.BatchNorm2d(4)
  with torch.no_grad():
    bn.weight.copy_(torch.linspace(0.5, 2.0, 4))
    bn.bias.copy_(torch.linspace(-1.0, 1.0, 4))
  bn.train()
  variables = BatchNorm().init(jax.random.key(0), jnp.asarray(xs[0]), False)
  variables = {'params': {'scale': jnp.linspace(0.5, 2.0, 4), 'bias': jnp.linspace(-1., 1., 4)},
               'batch_stats': variables['batch_stats']}
  for x in xs:  # two sequential updates, as the query then one support shot
    ref = bn(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    y, state = _apply(variables, jnp.asarray(x), False)
    variables = {'params': variables['params'], 'batch_stats': state['batch_stats']}
    np.testing.assert_allclose(y, ref, atol=1e-5)
  np.testing.assert_allclose(variables['batch_stats']['mean'], bn.running_mean.numpy(), rtol=1e-5)
  np.testing.assert_allclose(variables['batch_stats']['var'], bn.running_var.numpy(), rtol=1e-5)
  bn.eval()
  ref = bn(torch.from_numpy(xs[0].transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
  y, _ = _apply(variables, jnp.asarray(xs[0]), True)
  np.testing.assert_allclose(y, ref, atol=1e-5)
