"""Checkpoints never give stale or wrong state: readers change nothing on disk, incomplete
steps are skipped, another run's best is set aside, damage is called corruption, and a
truncated TensorBoard file does not fail an evaluation."""

import functools
import glob
import logging
import os
import time

import jax
import numpy as np
import pytest

from mmnet_jax import checkpoint
from mmnet_jax import evaluate
from mmnet_jax import train_state
from mmnet_jax import visualize
from mmnet_jax import workdir_io
from mmnet_jax.models import mmnet
from tests.test_determinism import tiny_config

TMP_NAME = '4.orbax-checkpoint-tmp-1700000000'


@functools.lru_cache(maxsize=None)
def _model_and_state():
  config = tiny_config('/nonexistent')   # no data is read: shapes only
  model = mmnet.build_model(config.model)
  rng = np.random.default_rng(0)   # incompressible values: each array has its own data on disk
  state = jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape).astype(x.dtype),
                                 train_state.abstract_state(model, config))
  return config, model, state


def _save(workdir, step, run_id='run-a', best=False, keep_latest=True):
  """A workdir with a (random) train state of the tiny config at `step`."""
  config, _, state = _model_and_state()
  meta = {'step': step, 'fingerprint': train_state.config_fingerprint(config), 'run_id': run_id}
  ckpts = checkpoint.RunCheckpoints(workdir)
  try:
    if best:
      ckpts.save_best(step, state, meta)
    if keep_latest:
      ckpts.save_latest(step, state, meta)
  finally:
    ckpts.close()


def _restore_for_eval(workdir):
  config, model, _ = _model_and_state()
  _, step, which = evaluate.restore_for_eval(config, workdir, model)
  return step, which


def test_a_reader_never_deletes_a_writers_tmp_checkpoint_nor_creates_directories(tmp_path):
  workdir = str(tmp_path)
  _save(workdir, 2)
  # What a live writer has in flight: orbax's temporary name, partial contents.
  tmp = os.path.join(workdir, checkpoint.LATEST_DIR, TMP_NAME)
  os.makedirs(os.path.join(tmp, 'state'))
  os.rmdir(os.path.join(workdir, checkpoint.BEST_DIR))   # a run that never evaluated
  before = sorted(os.listdir(workdir))
  assert _restore_for_eval(workdir) == (2, 'latest')
  time.sleep(0.5)   # orbax cleans up in the background of a manager's init
  assert os.path.isdir(os.path.join(tmp, 'state'))
  assert sorted(os.listdir(workdir)) == before   # no best/ (nor anything else) created


def test_a_stray_step_directory_falls_back_to_the_last_complete_step(tmp_path, caplog):
  workdir = str(tmp_path)
  _save(workdir, 2)
  stray = os.path.join(workdir, checkpoint.LATEST_DIR, '99')
  os.makedirs(stray)   # no items: a copy cut short, a mkdir by hand
  with caplog.at_level(logging.WARNING):
    assert _restore_for_eval(workdir) == (2, 'latest')   # was KeyError: 'Item "meta" ...'
  assert f'skipping the incomplete checkpoint {stray}' in caplog.text
  assert os.path.isdir(stray)   # a reader leaves it
  # The writer (a resuming run) moves it aside, so its next saves are not refused as older.
  ckpts = checkpoint.RunCheckpoints(workdir)
  try:
    assert ckpts.latest.latest_step() == 2 and ckpts.run_id == 'run-a'
  finally:
    ckpts.close()
  assert not os.path.exists(stray)
  moved = glob.glob(os.path.join(workdir, checkpoint.SET_ASIDE_DIR, 'checkpoints_99_*'))
  assert len(moved) == 1 and os.path.isdir(moved[0])


def test_a_best_of_an_earlier_run_is_set_aside_by_a_fresh_run(tmp_path):
  workdir = str(tmp_path)
  _save(workdir, 6, run_id='old', best=True)
  os.rename(os.path.join(workdir, checkpoint.LATEST_DIR), str(tmp_path / 'removed'))
  ckpts = checkpoint.RunCheckpoints(workdir)   # a new run in this workdir
  try:
    assert ckpts.best.latest_step() is None   # it used to report the old best as its own
    assert ckpts.run_id != 'old'
  finally:
    ckpts.close()
  moved = glob.glob(os.path.join(workdir, checkpoint.SET_ASIDE_DIR, 'best_*', '6'))
  assert len(moved) == 1 and checkpoint.is_complete(moved[0])   # kept, not deleted


def test_a_reader_ignores_a_best_of_another_run(tmp_path, caplog):
  workdir = str(tmp_path)
  _save(workdir, 6, run_id='old', best=True, keep_latest=False)
  assert _restore_for_eval(workdir) == (6, 'best')   # only a best: it is the result
  _save(str(tmp_path / 'other'), 2, run_id='new')   # a writer would set the old best aside
  os.rename(str(tmp_path / 'other' / checkpoint.LATEST_DIR),
            os.path.join(workdir, checkpoint.LATEST_DIR))
  with caplog.at_level(logging.WARNING):
    assert _restore_for_eval(workdir) == (2, 'latest')
  assert "run id old is not the latest checkpoint's (new)" in caplog.text
  _save(str(tmp_path / 'same'), 4, run_id='one', best=True)
  assert _restore_for_eval(str(tmp_path / 'same')) == (4, 'best')


@pytest.mark.parametrize('damage', ['manifest', 'data', 'meta'])
def test_a_corrupted_checkpoint_is_called_corrupted(tmp_path, damage):
  workdir = str(tmp_path)
  _save(workdir, 2)
  step_dir = os.path.join(workdir, checkpoint.LATEST_DIR, '2')
  if damage == 'manifest':   # was reported as "another model or config"
    os.remove(os.path.join(step_dir, 'state', 'manifest.ocdbt'))
  elif damage == 'data':
    for path in glob.glob(os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd', '*')):
      with open(path, 'r+b') as f:
        f.truncate(10)
  else:
    with open(os.path.join(step_dir, 'meta', 'metadata'), 'w') as f:
      f.write('{"step": 2, ')
  with pytest.raises(ValueError, match=f'corrupted: {step_dir}') as e:
    _restore_for_eval(workdir)
  assert isinstance(e.value, checkpoint.CorruptedCheckpointError)
  assert 'another model' not in str(e.value)


def test_a_checkpoint_of_other_shapes_is_still_another_model(tmp_path):
  workdir = str(tmp_path)
  ckpts = checkpoint.RunCheckpoints(workdir)
  ckpts.save_latest(1, {'w': np.zeros(6, np.float32)}, {'step': 1})
  ckpts.close()
  reader = checkpoint.RunCheckpoints(workdir, read_only=True)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  try:
    with pytest.raises(ValueError, match='another model or config') as e:
      checkpoint.restore(reader.latest, checkpoint.abstract_like(
          {'w': np.zeros(7, np.float32)}, device))
    assert not isinstance(e.value, checkpoint.CorruptedCheckpointError)
  finally:
    reader.close()


def test_a_truncated_tensorboard_file_keeps_the_records_before_it(tmp_path, caplog):
  logdir = str(tmp_path / visualize.TENSORBOARD_DIR)
  writer = workdir_io.SummaryWriter(logdir)
  for step in range(1, 4):
    writer.scalars(step, {'train/loss': float(step)})
  writer.close()
  (path,) = glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))
  with open(path, 'r+b') as f:   # a run killed in the middle of its last record
    f.truncate(os.path.getsize(path) - 5)
  with caplog.at_level(logging.WARNING):
    scalars = visualize.read_scalars(logdir)   # was DataLossError: every later eval exited 1
  assert scalars['train/loss'] == [(1, 1.0), (2, 2.0)]
  assert f'TensorBoard file {path}: stopped at a truncated' in caplog.text
  assert visualize.plot_run(str(tmp_path)) == [
      os.path.join(str(tmp_path), visualize.PICTURES_DIR, visualize.CURVES_FILE)]
