"""Preemption: SIGTERM/SIGINT save and return, SIGKILL at a random moment resumes from the last
complete checkpoint, and the resumed run ends bitwise equal to an uninterrupted one."""

import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from mmnet_jax import checkpoint
from mmnet_jax import train
from mmnet_jax import workdir_io
from tests.test_determinism import (NUM_STEPS, assert_bitwise_equal, cache_env, compile_cache,  # noqa: F401
                                    load_state, reference_params, shared_config)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def committed_steps(workdir):
  path = os.path.join(workdir, checkpoint.LATEST_DIR)
  return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if os.path.isdir(path) else []


def signal_when(workdir, step, signum, timeout=300):
  """A thread that sends `signum` to this process once checkpoint `step` is committed."""
  def run():
    end = time.time() + timeout
    while time.time() < end and not any(s >= step for s in committed_steps(workdir)):
      time.sleep(0.01)
    os.kill(os.getpid(), signum)
  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  return thread


def test_stop_signals_set_a_flag_and_restore_the_handlers():
  before = {s: signal.getsignal(s) for s in train.StopSignals.SIGNALS}
  with train.StopSignals() as stop:
    os.kill(os.getpid(), signal.SIGINT)   # no KeyboardInterrupt: only the flag
    time.sleep(0.01)
    assert stop.requested == 'SIGINT'
    with pytest.raises(KeyboardInterrupt):   # a second Ctrl-C interrupts at once
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.01)
  assert {s: signal.getsignal(s) for s in train.StopSignals.SIGNALS} == before


def test_sigterm_saves_and_returns_then_resume_is_bitwise_equal(tmp_path, compile_cache):
  reference = reference_params()
  config = shared_config()
  workdir = str(tmp_path / 'run')
  before = signal.getsignal(signal.SIGTERM)
  signal_when(workdir, 2, signal.SIGTERM)
  outcome = train.train(config, workdir)
  assert outcome['preempted'] == 'SIGTERM'
  stopped = outcome['step']
  assert 2 <= stopped < NUM_STEPS   # stopped at a step boundary after the signal
  assert committed_steps(workdir) == [stopped]   # ... with a checkpoint of exactly that step
  assert signal.getsignal(signal.SIGTERM) is before   # handlers restored
  assert not os.path.exists(os.path.join(workdir, workdir_io.LOCK_FILE))   # lock released
  resumed = train.train(config, workdir)
  assert resumed == {'step': NUM_STEPS, 'preempted': None, 'skipped_samples': 0}
  assert_bitwise_equal(load_state(config, workdir)[0], reference)


KILLED_RUN = '''
import sys
from mmnet_jax import train
from tests.test_determinism import tiny_config
config = tiny_config(sys.argv[1])
config.train.checkpoint_every = 1   # saves in flight most of the time
print(train.train(config, sys.argv[2]), flush=True)
'''


@pytest.mark.parametrize('seed', [0])
def test_sigkill_at_a_random_moment_then_resume_is_bitwise_equal(tmp_path, compile_cache, seed):
  """SIGKILL once checkpoint k (seeded in [1, NUM_STEPS - 2]) is committed, plus a seeded
  sub-step delay, so the kill lands anywhere in a step or a save; the resume must end bitwise
  equal to the uninterrupted run."""
  reference = reference_params()
  config = shared_config()
  workdir = str(tmp_path / 'run')
  rng = np.random.default_rng(seed)
  kill_after, delay = int(rng.integers(1, NUM_STEPS - 1)), float(rng.uniform(0, 0.3))
  proc = subprocess.Popen([sys.executable, '-c', KILLED_RUN, config.dataset.data_dir, workdir],
                          cwd=REPO, env=cache_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    end = time.time() + 300
    while time.time() < end and proc.poll() is None and not any(
        s >= kill_after for s in committed_steps(workdir)):
      time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL, err[-3000:]
  steps = committed_steps(workdir)
  assert steps and kill_after <= steps[-1] < NUM_STEPS, steps
  # The lock of the dead process is stale: the resume takes it over.
  resumed = train.train(config, workdir)
  assert resumed['step'] == NUM_STEPS and resumed['preempted'] is None
  assert not [n for n in os.listdir(os.path.join(workdir, checkpoint.LATEST_DIR))
              if 'tmp' in n]
  assert_bitwise_equal(load_state(config, workdir)[0], reference)


def test_unfinished_tmp_checkpoint_is_ignored_and_removed(tmp_path):
  workdir = str(tmp_path)
  state = {'w': np.arange(6, dtype=np.float32)}
  ckpts = checkpoint.RunCheckpoints(workdir)
  ckpts.save_latest(4, state, {'step': 4})
  ckpts.close()
  # What a save killed mid-write leaves: orbax's temporary name, partial contents.
  tmp = os.path.join(workdir, checkpoint.LATEST_DIR, '6.orbax-checkpoint-tmp-1700000000')
  os.makedirs(os.path.join(tmp, 'state'))
  with open(os.path.join(tmp, 'state', 'garbage'), 'wb') as f:
    f.write(b'\0' * 10)
  ckpts = checkpoint.RunCheckpoints(workdir)
  try:
    assert ckpts.latest.latest_step() == 4
    restored, meta = checkpoint.restore(ckpts.latest, checkpoint.abstract_like(
        {'w': np.zeros(6, np.float32)}, jax.sharding.SingleDeviceSharding(jax.devices()[0])))
    np.testing.assert_array_equal(np.asarray(restored['w']), state['w'])
    assert meta['step'] == 4
    ckpts.wait()
  finally:
    ckpts.close()
  deadline = time.time() + 10   # the cleanup runs in the background of the manager's init
  while os.path.exists(tmp) and time.time() < deadline:
    time.sleep(0.05)
  assert not os.path.exists(tmp)


def test_best_checkpoint_is_committed_before_save_best_returns(tmp_path):
  ckpts = checkpoint.RunCheckpoints(str(tmp_path))
  try:
    ckpts.save_best(3, {'w': np.ones(3, np.float32)}, {'step': 3})
    assert os.path.isdir(os.path.join(str(tmp_path), checkpoint.BEST_DIR, '3'))
  finally:
    ckpts.close()


def test_sighup_sets_the_flag_and_a_second_gets_the_previous_handler():
  calls = []
  original = signal.signal(signal.SIGHUP, lambda signum, frame: calls.append(signum))
  try:
    previous = signal.getsignal(signal.SIGHUP)
    with train.StopSignals() as stop:
      os.kill(os.getpid(), signal.SIGHUP)   # a closed terminal: only the flag
      time.sleep(0.01)
      assert stop.requested == 'SIGHUP' and calls == []
      os.kill(os.getpid(), signal.SIGHUP)   # a second one: the previous behaviour
      time.sleep(0.01)
      assert calls == [signal.SIGHUP]
    assert signal.getsignal(signal.SIGHUP) is previous
    # Under nohup (SIGHUP ignored) the run keeps ignoring it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with train.StopSignals() as stop:
      os.kill(os.getpid(), signal.SIGHUP)
      time.sleep(0.01)
      assert stop.requested is None
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
  finally:
    signal.signal(signal.SIGHUP, original)


@pytest.mark.slow   # ~25 s; the SIGTERM test covers the same loop path by default
def test_sighup_saves_and_returns_like_sigterm(tmp_path, compile_cache):
  config = shared_config()
  workdir = str(tmp_path / 'run')
  before = signal.getsignal(signal.SIGHUP)
  signal_when(workdir, 1, signal.SIGHUP)
  outcome = train.train(config, workdir)
  assert outcome['preempted'] == 'SIGHUP'
  assert 1 <= outcome['step'] < NUM_STEPS
  assert committed_steps(workdir) == [outcome['step']]
  assert signal.getsignal(signal.SIGHUP) is before


def test_every_stop_signal_has_its_shell_exit_code():
  """main.py exits 128 + signal number after a saved stop (SIGHUP gave 1 before)."""
  from mmnet_jax import cli, train
  for sig in train.StopSignals.SIGNALS:
    assert cli.PREEMPTED_EXIT_CODES[sig.name] == 128 + int(sig)
