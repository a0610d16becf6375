"""Data parallelism: a train step on 8 devices equals the same step on 1 device."""

import jax
import numpy as np
import pytest

from configs import synth_1shot
from mmnet_jax import sharding
from mmnet_jax import train
from mmnet_jax import train_state
from mmnet_jax.models import mmnet

GLOBAL_BATCH = 8


def _config():
  c = synth_1shot.get_config('runlocal')
  c.train.crop_size = 41   # 6x6 features
  c.model.ppm_scales = (1.0, 0.5, 0.34, 0.17)
  c.train.batch_size = GLOBAL_BATCH
  c.model.reduce_dim = 16
  c.model.memory_slots = 8
  return c


def _batch(config, seed=0):
  """A host batch in the pipeline's layout: random images, blob labels with ignore borders."""
  r = np.random.default_rng(seed)
  b, k, s = GLOBAL_BATCH, config.shots, config.train.crop_size
  labels = np.zeros((b, k + 1, s, s), np.int32)
  for i in range(b):
    for j in range(k + 1):
      y, x = r.integers(2, s // 2, size=2)
      labels[i, j, y:y + s // 3, x:x + s // 3] = 1
  labels[:, :, :, -2:] = 255
  return {
      'query_img': r.normal(size=(b, s, s, 3)).astype(np.float32),
      'query_label': labels[:, 0],
      'support_imgs': r.normal(size=(b, k, s, s, 3)).astype(np.float32),
      'support_labels': labels[:, 1:],
  }


def _step_on(devices, config, model, state, tx, host_batch):
  mesh = sharding.make_mesh(devices)
  batch = sharding.to_global(host_batch, mesh)
  assert len(batch['query_img'].sharding.device_set) == len(devices)
  step = jax.jit(train.make_train_step(model, tx, config))
  new_state, metrics = step(sharding.replicate(state, mesh), batch)
  return jax.device_get(new_state), jax.device_get(metrics)


def _max_rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def test_train_step_on_8_devices_equals_1_device():
  assert jax.device_count() >= 8, 'conftest forces 8 CPU devices'
  config = _config()
  model = mmnet.build_model(config.model)
  state, tx = train_state.create_state(model, config, total_steps=10)
  host_batch = _batch(config)
  one, m1 = _step_on(jax.devices()[:1], config, model, state, tx, host_batch)
  eight, m8 = _step_on(jax.devices()[:8], config, model, state, tx, host_batch)
  # Parameters, BN running statistics (global-batch statistics) and losses agree: within 1e-5
  # of the tree's largest value, and 1e-4 per leaf (a zero-initialised bias is its update
  # alone, where the cross-device reduction order shows at ~1e-5 on jax 0.7.2).
  for tree in ('params', 'batch_stats'):
    flat1 = jax.tree_util.tree_leaves_with_path(one[tree])
    flat8 = jax.tree_util.tree_leaves(eight[tree])
    scale = max(float(np.max(np.abs(a))) for _, a in flat1)
    for (path, a), b in zip(flat1, flat8):
      diff = float(np.max(np.abs(np.asarray(b, np.float64) - a)))
      assert diff <= 1e-5 * scale, (jax.tree_util.keystr(path), diff / scale)
      assert _max_rel(b, a) <= 1e-4, (jax.tree_util.keystr(path), _max_rel(b, a))
  for key in ('loss', 'main', 'aux', 'recon'):
    assert abs(float(m8[key]) - float(m1[key])) <= 1e-5 * abs(float(m1[key])), key
  # The step really changed the parameters (the comparison is not of two copies of the input).
  moved = _max_rel(one['params']['decoder']['cls']['cls']['kernel'],
                   state['params']['decoder']['cls']['cls']['kernel'])
  assert moved > 1e-4
  # BN statistics are those of the global batch: a per-shard BN would differ by far more.
  before = state['batch_stats']['backbone']['stem']['bn1']['mean']
  assert _max_rel(eight['batch_stats']['backbone']['stem']['bn1']['mean'], before) > 1e-3


def test_host_batch_size_names_the_config_field():
  mesh = sharding.make_mesh(jax.devices()[:8])
  assert sharding.host_batch_size(16, mesh) == 16
  with pytest.raises(ValueError, match='train.batch_size'):
    sharding.host_batch_size(12, mesh)


def test_local_rows_and_sum_on_one_process():
  mesh = sharding.make_mesh(jax.devices()[:8])
  x = sharding.to_global({'x': np.arange(16, dtype=np.float32).reshape(8, 2)}, mesh)['x']
  np.testing.assert_array_equal(sharding.local_rows(x), np.arange(16).reshape(8, 2))
  np.testing.assert_array_equal(sharding.sum_across_processes(np.ones(3)), np.ones(3))

