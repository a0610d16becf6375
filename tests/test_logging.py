"""Logs as a flax/big_vision user expects: window means, our INFO lines, no library chatter."""

import logging
import os
import subprocess
import sys

import pytest

from mmnet_jax import log_setup
from mmnet_jax import train
from mmnet_jax import visualize
from tests import test_determinism
from tests.test_determinism import compile_cache, reference_params, shared_config  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(path, level, msg='m'):
  return logging.LogRecord('absl', level, path, 1, msg, None, None)


def test_only_our_info_lines_and_no_custom_config_warning():
  ours = os.path.join(REPO, 'mmnet_jax', 'train.py')
  orbax = '/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py'
  assert log_setup.keep(_record(ours, logging.INFO))
  assert log_setup.keep(_record(os.path.join(REPO, 'main.py'), logging.INFO))
  assert not log_setup.keep(_record(orbax, logging.INFO))
  assert log_setup.keep(_record(orbax, logging.WARNING))
  assert not log_setup.keep(_record('/x/tensorflow_datasets/core/dataset_builder.py',
                                    logging.WARNING, 'Using custom data configuration: X'))


def test_no_tensorflow_banner_after_importing_the_cli():
  code = 'import mmnet_jax.cli; import tensorflow as tf; tf.constant(1) + 1'
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'oneDNN' not in proc.stderr and 'InitializeLog' not in proc.stderr, proc.stderr


@pytest.mark.usefixtures('compile_cache')
def test_logged_training_scalars_are_means_over_the_log_window(tmp_path):
  """The session's reference run (log_every=4) against the same deterministic run logged every
  step: the value at step 4k is the mean of steps 4k-3..4k (it used to be step 4k's alone)."""
  config = shared_config()   # 8 steps, log_every=4
  reference_params()         # runs it once per session (other tests share it)
  every = config.copy_and_resolve_references()
  every.train.log_every = 1
  train.train(every, str(tmp_path / 'w1'))
  per4 = visualize.read_scalars(os.path.join(test_determinism.reference_workdir(),
                                             visualize.TENSORBOARD_DIR))
  per1 = visualize.read_scalars(str(tmp_path / 'w1' / visualize.TENSORBOARD_DIR))
  assert 'train/loss' in per1 and 'train/loss' in per4
  for tag in [t for t in per1 if t.endswith('loss')]:
    single = dict(per1[tag])
    assert [s for s, _ in per4[tag]] == [4, 8]
    for step, value in per4[tag]:
      window = [single[s] for s in range(step - 3, step + 1)]
      assert value == pytest.approx(sum(window) / 4, rel=1e-5), (tag, step)
      assert value != pytest.approx(single[step], rel=1e-4)   # not the last step's value
