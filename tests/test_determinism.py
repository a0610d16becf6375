"""Determinism: two runs of one config give bitwise-identical parameters on CPU.

Also the shared tiny training setup of tests/test_preemption.py and tests/test_bad_input.py:
`tiny_config`, `reference_params` (one uninterrupted run per test session) and `load_state`.
"""

import contextlib
import functools
import os

import jax
import numpy as np
import pytest

from configs import synth_1shot
from mmnet_jax import checkpoint
from mmnet_jax import train
from mmnet_jax import train_state
from mmnet_jax.models import mmnet

NUM_STEPS = 8


def tiny_config(data_dir: str):
  """A 2-layer-per-stage tiny MM-Net on 33 px crops, 8 steps of batch 8 (the 8 test devices),
  a checkpoint every 2 steps, no evaluation during training."""
  c = synth_1shot.get_config('runlocal')
  c.dataset.data_dir = data_dir
  c.dataset.synthetic.num_train = 200
  c.dataset.synthetic.num_val = 24
  c.model.ppm_scales = (1.0, 0.5, 0.25)   # 33 px crops give 5x5 features
  c.train.crop_size = 33
  c.train.batch_size = 8
  c.train.num_steps = NUM_STEPS
  c.train.log_every = 4
  c.train.checkpoint_every = 2
  c.train.eval_every = 0
  c.eval.size = 33
  c.eval.batch_size = 8
  c.eval.num_episodes = 8
  c.eval.during_training_episodes = 0
  c.eval.baselines = False
  return c


def cache_env() -> dict:
  """Environment for subprocesses: the same persistent compilation cache as `compile_cache`."""
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(_shared_data_dir(), 'xla'),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


@contextlib.contextmanager
def _persistent_cache():
  """JAX's persistent compilation cache on for the block: every train() builds new jit
  wrappers, so without it each run recompiles (~10 s of CPU each). A cached executable is the
  same program, so results are unchanged. Uses jax's private reset (skipped if absent)."""
  try:
    from jax._src import compilation_cache as cc
    reset = cc.reset_cache
  except (ImportError, AttributeError):
    yield
    return
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  old = {n: getattr(jax.config, n) for n in names}
  env = cache_env()
  jax.config.update('jax_compilation_cache_dir', env['JAX_COMPILATION_CACHE_DIR'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  reset()
  try:
    yield
  finally:
    for n, v in old.items():
      jax.config.update(n, v)
    reset()


@pytest.fixture
def compile_cache():
  """Fixture form of `_persistent_cache` for the training tests."""
  with _persistent_cache():
    yield


@functools.lru_cache(maxsize=None)
def _shared_data_dir() -> str:
  import tempfile
  return tempfile.mkdtemp(prefix='mmnet_tiny_tfds_')


def shared_config():
  """`tiny_config` over one synthetic dataset built once per test session."""
  return tiny_config(_shared_data_dir())


def load_state(config, workdir: str, best: bool = False):
  """(host numpy state, meta) of the workdir's latest (or best) checkpoint."""
  model = mmnet.build_model(config.model)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = checkpoint.abstract_like(train_state.abstract_state(model, config), device)
  ckpts = checkpoint.RunCheckpoints(workdir)
  try:
    state, meta = checkpoint.restore(ckpts.best if best else ckpts.latest, abstract)
  finally:
    ckpts.close()
  return jax.device_get(state), meta


@functools.lru_cache(maxsize=None)
def _reference(workdir: str):
  config = shared_config()
  outcome = train.train(config, workdir)
  assert outcome == {'step': NUM_STEPS, 'preempted': None, 'skipped_samples': 0}
  return load_state(config, workdir)[0]


def reference_workdir() -> str:
  """The workdir of the session's uninterrupted `shared_config` run (`reference_params`)."""
  return os.path.join(_shared_data_dir(), 'reference_run')


def reference_params():
  """The state after an uninterrupted `shared_config` run (computed once per session)."""
  return _reference(reference_workdir())


def assert_bitwise_equal(a, b):
  """Every leaf of two pytrees has the same dtype, shape and bytes."""
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    if x.tobytes() != y.tobytes():
      raise AssertionError(f'leaves differ: max |diff| {np.max(np.abs(x - y))}')


def test_two_runs_give_bitwise_identical_parameters(tmp_path, compile_cache):
  reference = reference_params()
  config = shared_config()
  outcome = train.train(config, str(tmp_path / 'again'))
  assert outcome['step'] == NUM_STEPS
  again, meta = load_state(config, str(tmp_path / 'again'))
  assert meta['step'] == NUM_STEPS and int(again['step']) == NUM_STEPS
  assert_bitwise_equal(again, reference)
  # Training did change the parameters (the equality above is not between two initial states).
  fresh, _ = train_state.create_state(mmnet.build_model(config.model), config, NUM_STEPS)
  moved = [not np.array_equal(np.asarray(x), y) for x, y in zip(
      jax.tree_util.tree_leaves(fresh['params']), jax.tree_util.tree_leaves(again['params']))]
  assert sum(moved) > len(moved) // 2


def test_training_recipe_names_the_trajectory_fields():
  config = shared_config()
  recipe = train.training_recipe(config)
  assert recipe['seed'] == config.seed and recipe['batch_size'] == 8
  assert set(train.RECIPE_FIELDS) <= set(recipe)


def test_training_recipe_changes_with_the_draws_not_with_where_they_run():
  config = shared_config()
  recipes = {}
  for kind in ('graph', 'service', 'numpy'):
    config.dataset.pipeline = kind
    recipes[kind] = train.training_recipe(config)
  assert recipes['graph'] == recipes['service']   # the same batches, bit for bit
  assert recipes['graph'] != recipes['numpy']
