"""config.init_from: backbone-only and whole-model imports, and evaluation of converted weights."""

import json
import os

import jax
import numpy as np
import pytest

from configs import synth_1shot
from mmnet_jax import convert
from mmnet_jax import evaluate
from mmnet_jax import train_state
from mmnet_jax.models import mmnet


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  c = synth_1shot.get_config('runlocal')
  c.dataset.data_dir = str(tmp_path_factory.mktemp('tfds'))
  c.train.batch_size = 8     # the test session has 8 CPU devices (conftest)
  c.eval.batch_size = 8
  c.eval.num_episodes = 16
  c.eval.pictures = 2
  model = mmnet.build_model(c.model)
  fresh = jax.device_get(train_state.init_variables(model, c))
  c_other = c.copy_and_resolve_references()
  c_other.seed = c.seed + 1
  other = jax.device_get(train_state.init_variables(model, c_other))
  full_dir = str(tmp_path_factory.mktemp('weights') / 'full')
  convert.save_converted(other, full_dir)
  backbone_dir = str(tmp_path_factory.mktemp('weights') / 'backbone')
  convert.save_converted({k: {'backbone': v['backbone']} for k, v in other.items()}, backbone_dir)
  return c, model, fresh, other, full_dir, backbone_dir


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_full_import_replaces_every_parameter(setup):
  c, _, fresh, other, full_dir, _ = setup
  c = c.copy_and_resolve_references()
  c.init_from, c.init_from_format = full_dir, 'full'
  loaded = train_state.load_init_from(c, fresh)
  assert _leaves_equal(loaded['params'], other['params'])
  assert _leaves_equal(loaded['batch_stats'], other['batch_stats'])


def test_backbone_import_keeps_the_fresh_head(setup):
  c, _, fresh, other, full_dir, _ = setup
  c = c.copy_and_resolve_references()
  c.init_from, c.init_from_format = full_dir, 'backbone'
  loaded = train_state.load_init_from(c, fresh)
  assert _leaves_equal(loaded['params']['backbone'], other['params']['backbone'])
  assert _leaves_equal(loaded['params']['decoder'], fresh['params']['decoder'])
  assert not _leaves_equal(loaded['params']['decoder'], other['params']['decoder'])


def test_full_import_of_a_backbone_file_names_the_missing_modules(setup):
  c, _, fresh, _, _, backbone_dir = setup
  c = c.copy_and_resolve_references()
  c.init_from, c.init_from_format = backbone_dir, 'full'
  with pytest.raises(ValueError, match="lacks the modules .*'decoder'"):
    train_state.load_init_from(c, fresh)


def test_eval_of_converted_weights_without_a_checkpoint(setup, tmp_path):
  c, _, _, _, full_dir, _ = setup
  c = c.copy_and_resolve_references()
  c.init_from, c.init_from_format = full_dir, 'full'
  workdir = str(tmp_path / 'eval_only')
  results = evaluate.evaluate_workdir(c, workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  assert saved['checkpoint'] == f'init_from {full_dir}' and saved['step'] == 0
  assert saved['miou'] == results['miou'] and saved['episodes'] == 16
