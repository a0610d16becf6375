"""The original's optimiser: torch SGD (coupled decay, momentum) with the per-iteration poly LR."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from mmnet_jax import optimizer
from mmnet_jax import train


def _config(total=10):
  c = default.get_config()
  c.train.base_lr = 0.0025
  c.train.lr_multiplier = 10.0
  c.train.weight_decay = 1e-4
  c.train.momentum = 0.9
  c.train.poly_power = 0.9
  c.train.num_steps = total
  return c


def test_poly_lr_counts_from_one_and_reaches_zero():
  c = _config()
  schedule = optimizer.poly_lr(c, 10)
  # step 0 is the original's iteration 1
  assert float(schedule(0)) == pytest.approx(0.025 * (1 - 1 / 10) ** 0.9, rel=1e-6)
  assert float(schedule(4)) == pytest.approx(0.025 * (1 - 5 / 10) ** 0.9, rel=1e-6)
  assert float(schedule(9)) == 0.0


def test_sgd_matches_hand_computed_torch_semantics():
  c = _config(total=10)
  params = {'backbone': {'w': jnp.array([1.0, -2.0])}, 'head': {'w': jnp.array([0.5, 3.0])}}
  c.model.freeze_backbone = True
  tx = optimizer.make_optimizer(c, 10, params)
  state = tx.init(params)
  grads_seq = [np.array([0.1, -0.3]), np.array([0.2, 0.05])]
  p = np.array([0.5, 3.0])
  buf = np.zeros(2)
  for t, g in enumerate(grads_seq):
    lr = 0.025 * (1 - (t + 1) / 10) ** 0.9
    buf = 0.9 * buf + (g + 1e-4 * p)          # torch: d_p = g + wd * p; buf = m * buf + d_p
    p = p - lr * buf
    grads = {'backbone': {'w': jnp.array([5.0, 5.0])}, 'head': {'w': jnp.asarray(g)}}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params['head']['w'], p, rtol=1e-6)
  # frozen backbone: neither the gradient nor the weight decay moves it
  np.testing.assert_array_equal(params['backbone']['w'], [1.0, -2.0])


def test_unfrozen_backbone_is_trained():
  c = _config()
  c.model.freeze_backbone = False
  params = {'backbone': {'w': jnp.array([1.0])}}
  tx = optimizer.make_optimizer(c, 10, params)
  updates, _ = tx.update({'backbone': {'w': jnp.array([1.0])}}, tx.init(params), params)
  assert float(updates['backbone']['w'][0]) < 0


def test_total_steps_follow_the_original_loader():
  c = _config(total=0)
  c.train.epochs = 3
  c.train.batch_size = 4
  assert train.total_train_steps(c, 10) == 3 * 2    # drop_last: 10 // 4 batches per epoch
  with pytest.raises(ValueError, match='train.batch_size'):
    train.total_train_steps(c, 3)
  c.train.epochs = 200
  c.train.eval_every = 0
  assert train.eval_interval(c, 10) == 4          # every 2nd epoch beyond 50 epochs


def test_poly_lr_is_finite_and_ends_at_exactly_zero_for_every_length():
  """Every T in 1..5000 under jit, in one program: T enters as a compile-time constant as in
  training (an array of them), where XLA's t * (1/T) used to leave 1 - t/T at -1.5e-8 at the
  last step and the 0.9th power NaN (2,560 of these T: 3, 5, 10, 20, 250, 500, 1000, ...)."""
  c = _config()
  total = np.arange(1, 5001)
  schedule = jax.jit(optimizer.poly_lr(c, total))
  last = np.asarray(schedule(total - 1))
  assert np.all(last == 0.0), total[last != 0.0][:10]
  for step in (np.zeros_like(total), total // 2, np.maximum(total - 2, 0), total, total + 7):
    lr = np.asarray(schedule(step))
    assert np.all(np.isfinite(lr)) and np.all(lr >= 0.0)
    t = np.minimum(step + 1, total)
    np.testing.assert_allclose(lr, 0.025 * (1 - t / total) ** 0.9, rtol=1e-5, atol=1e-12)
  # One scalar T per program (as train.py compiles it) agrees with the array form.
  for t in (3, 5, 10, 20, 250, 500, 1000, 2000):
    per_t = jax.jit(optimizer.poly_lr(c, t))
    assert float(per_t(t - 1)) == 0.0 and float(per_t(t - 2)) > 0.0
    assert float(per_t(t // 2)) == pytest.approx(float(schedule(total // 2)[t - 1]), rel=1e-6)


def test_float64_parameters_get_a_float64_learning_rate():
  # The parity tool's float64 check compares updates to ~1e-13: a float32 lr (6e-8 off
  # torch's Python-float poly rule) would cap it there.
  c = _config(total=7)
  if hasattr(jax, 'enable_x64'):
    x64 = jax.enable_x64(True)
  else:
    from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
    x64 = enable_x64()
  with x64:
    params = {'head': {'w': jnp.array([1.0, -2.0], jnp.float64)}}
    tx = optimizer.make_optimizer(c, 7, params)
    grads = {'head': {'w': jnp.array([0.1, 0.3], jnp.float64)}}
    updates, _ = tx.update(grads, tx.init(params), params)
    lr = 0.025 * (1 - 1 / 7) ** 0.9   # torch's util.poly_learning_rate at iteration 1
    expected = -lr * (np.array([0.1, 0.3]) + 1e-4 * np.array([1.0, -2.0]))
    assert updates['head']['w'].dtype == jnp.float64
    np.testing.assert_allclose(updates['head']['w'], expected, rtol=1e-14)
  assert optimizer.poly_lr(c, 7)(0).dtype == jnp.float32   # float32 parameters: unchanged


def test_adam_constant_matches_hand_computed_torch_adam():
  """torch.optim.Adam (HSNet's): m, v with bias corrections, eps outside the square root,
  weight decay added to the gradient; 'constant' keeps lr_multiplier * base_lr every step."""
  c = _config(total=10)
  c.train.optimizer, c.train.lr_schedule = 'adam', 'constant'
  c.train.base_lr, c.train.lr_multiplier, c.train.weight_decay = 1e-3, 1.0, 0.01
  params = {'backbone': {'w': jnp.array([1.0, -2.0])}, 'head': {'w': jnp.array([0.5, 3.0])}}
  c.model.freeze_backbone = True
  tx = optimizer.make_optimizer(c, 10, params)
  state = tx.init(params)
  assert float(optimizer.learning_rate(c, 10)(9)) == pytest.approx(1e-3)
  p, m, v = np.array([0.5, 3.0]), np.zeros(2), np.zeros(2)
  for t, g in enumerate([np.array([0.1, -0.3]), np.array([0.2, 0.05]), np.array([-1.0, 2.0])],
                        start=1):
    d = g + 0.01 * p
    m = 0.9 * m + 0.1 * d
    v = 0.999 * v + 0.001 * d * d
    p = p - 1e-3 / (1 - 0.9 ** t) * m / (np.sqrt(v) / np.sqrt(1 - 0.999 ** t) + 1e-8)
    grads = {'backbone': {'w': jnp.array([5.0, 5.0])}, 'head': {'w': jnp.asarray(g)}}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params['head']['w'], p, rtol=1e-6)
  np.testing.assert_array_equal(params['backbone']['w'], [1.0, -2.0])   # frozen


def test_unknown_optimizer_and_schedule_name_the_field():
  c = _config()
  c.train.optimizer = 'rmsprop'
  with pytest.raises(ValueError, match='config.train.optimizer'):
    optimizer.make_optimizer(c, 10, {'head': jnp.zeros(2)})
  c.train.optimizer, c.train.lr_schedule = 'sgd', 'cosine'
  with pytest.raises(ValueError, match='config.train.lr_schedule'):
    optimizer.learning_rate(c, 10)
