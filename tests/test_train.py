"""Training and evaluation end to end on a tiny synthetic configuration."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synth_1shot
from mmnet_jax import cli
from mmnet_jax import evaluate
from mmnet_jax import train
from mmnet_jax import train_state
from mmnet_jax.data import dataset_registry
from mmnet_jax.data import datasets
from mmnet_jax.data import episodes
from mmnet_jax.data import pipeline
from mmnet_jax.data import streams
from mmnet_jax.models import mmnet
from tests.test_determinism import compile_cache, load_state, shared_config  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  c = synth_1shot.get_config('runlocal')
  c.dataset.data_dir = str(tmp_path_factory.mktemp('tfds'))
  c.train.num_steps = 12
  c.train.batch_size = 8   # the test session has 8 CPU devices (conftest)
  c.eval.batch_size = 8
  c.train.eval_every = 6
  c.train.log_every = 3
  c.eval.num_episodes = 40
  c.eval.during_training_episodes = 16
  return c


def test_loss_falls_on_a_fixed_batch(config):
  model = mmnet.build_model(config.model)
  train_classes, _ = datasets.fold_classes('synthetic', config.dataset.fold)
  pool = pipeline.train_pool(dataset_registry.open_split(config.dataset, 'train'), train_classes, config)
  batch = next(streams.train_dataset(pool, config, host_batch_size=config.train.batch_size))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  state, tx = train_state.create_state(model, config, total_steps=100)
  step = jax.jit(train.make_train_step(model, tx, config))
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch)
    assert bool(metrics['finite'])
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.9 * losses[0], losses
  assert int(state['step']) == 8


@pytest.mark.slow   # ~45 s; CI runs it (.ci/run)
def test_train_then_eval_from_checkpoint_gives_the_same_numbers(config, tmp_path):
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  assert saved['miou'] == pytest.approx(results['miou'])
  assert set(saved['class_iou']) == {str(c) for c in range(1, 11)}   # fold 0 test classes
  assert set(saved['baselines']) == {'all_foreground', 'histogram_matching'}
  assert saved['episodes'] == config.eval.num_episodes
  assert saved['checkpoint'] == 'best'
  # The saved episode list is the one evaluated.
  split = dataset_registry.open_split(config.dataset, 'val')
  eps, meta = episodes.load_episodes(os.path.join(workdir, 'eval_episodes.json'), split)
  assert len(eps) == config.eval.num_episodes and meta['seed'] == config.eval.seed

  again = evaluate.evaluate_workdir(config, workdir)
  assert again['miou'] == saved['miou']
  assert again['class_iou'] == saved['class_iou']
  assert again['fb_iou'] == saved['fb_iou']

  # A finished run resumes at its last step and does not train again.
  resumed = train.train_and_evaluate(config, workdir)
  assert resumed['step'] == saved['step'] and resumed['miou'] == saved['miou']


def test_eval_without_checkpoint_names_the_workdir(config, tmp_path):
  with pytest.raises(FileNotFoundError, match='train first'):
    evaluate.evaluate_workdir(config, str(tmp_path / 'empty'))


@pytest.mark.slow  # ~110 s on a Zen 3 VM (two models); run by .ci/run's slow line
def test_checkpoint_from_another_model_is_refused(config, tmp_path):
  workdir = str(tmp_path / 'run')
  c = config.copy_and_resolve_references()
  c.train.num_steps = 2
  c.train.eval_every = 2
  c.eval.num_episodes = 8
  train.train_and_evaluate(c, workdir)
  c.model.reduce_dim = 48
  with pytest.raises(ValueError, match='another model or config'):
    evaluate.evaluate_workdir(c, workdir)


def test_summary_mode_prints_the_parameter_table(config):
  text = cli.run('summary', config, None)
  assert 'memory' in text and 'backbone' in text


def test_mistyped_config_override_fails():
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/synth_1shot.py:runlocal',
       '--config.train.num_stepz=3', '--mode=summary'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert 'num_stepz' in proc.stderr


def test_a_short_run_ends_with_finite_parameters(tmp_path, compile_cache):
  """3 steps, one of the lengths whose last learning rate was NaN: the final update wrote NaN
  into every trained parameter and the checkpoint kept it."""
  config = shared_config()
  config.train.num_steps = 3
  workdir = str(tmp_path / 'run')
  assert train.train(config, workdir)['step'] == 3
  state, meta = load_state(config, workdir)
  assert int(state['step']) == 3 and meta['run_id']
  bad = [jax.tree_util.keystr(k) for k, x in jax.tree_util.tree_leaves_with_path(state)
         if not np.all(np.isfinite(x))]
  assert not bad, bad[:5]


def test_a_non_finite_update_is_refused_before_any_save(tmp_path, compile_cache):
  """A learning rate of inf with finite loss and gradients: the guard sees the new parameters
  (it used to check only loss and gradients, so step 1's inf parameters went unnoticed)."""
  config = shared_config()
  config.train.base_lr = 1e38   # x lr_multiplier 10: inf in float32
  workdir = str(tmp_path / 'run')
  with pytest.raises(FloatingPointError, match=r'non-finite update \(.*\) at step 1 .*'
                     r'no checkpoint had been saved yet'):
    train.train(config, workdir)
  assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit()]
