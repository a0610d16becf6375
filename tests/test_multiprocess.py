"""Multi-host: 2 processes on this machine (CPU devices, gloo collectives) train and evaluate.

Each child joins a jax.distributed run through a localhost coordinator, builds its own rows of
every global batch, trains, checkpoints (orbax, multi-host) and evaluates. The test checks that
both processes hold identical parameters, that the checkpoint restores them, and that the
evaluation counted every episode exactly once (against a single-process evaluation).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.test_determinism import compile_cache  # noqa: F401 (a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2


def _config(data_dir):
  from configs import synth_1shot
  c = synth_1shot.get_config('runlocal')
  c.dataset.data_dir = data_dir
  c.train.num_steps = 2
  c.train.batch_size = 8   # divisible by the children's 4 devices and the parent's 8
  c.train.eval_every = 2
  c.train.log_every = 1
  c.eval.batch_size = 8
  c.eval.num_episodes = 20   # 3 batches of 8 with 4 padding episodes: exercises `valid`
  c.eval.during_training_episodes = 8
  c.eval.baselines = False
  return c


def child(rank: int, port: int, data_dir: str, workdir: str, out_dir: str) -> None:
  """One process of the run (called in a fresh interpreter by the test)."""
  os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}'
  os.environ['JAX_PLATFORMS'] = 'cpu'
  import jax
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  from mmnet_jax import evaluate, sharding, train
  assert sharding.initialize_distributed(f'127.0.0.1:{port}', NUM_PROCESSES, rank)
  assert jax.process_count() == NUM_PROCESSES
  assert jax.device_count() == NUM_PROCESSES * DEVICES_PER_PROCESS

  # Record what every evaluation sees (this process's copy of the replicated variables).
  seen = []
  original = evaluate.Evaluator.evaluate

  def recording(self, variables, *args, **kwargs):
    local = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0))
                                   if isinstance(x, jax.Array) else np.asarray(x), variables)
    seen.append(local)
    return original(self, variables, *args, **kwargs)
  evaluate.Evaluator.evaluate = recording

  results = train.train_and_evaluate(_config(data_dir), workdir)
  trained, restored = seen[-2], seen[-1]   # the last in-training eval; the final eval
  flat = {}
  for tag, tree in (('trained', trained), ('restored', restored)):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      flat[tag + jax.tree_util.keystr(path)] = leaf
  np.savez(os.path.join(out_dir, f'variables_{rank}.npz'), **flat)
  with open(os.path.join(out_dir, f'results_{rank}.json'), 'w') as f:
    json.dump({k: results[k] for k in ('miou', 'fb_iou', 'class_iou', 'episodes', 'step')}, f)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_identically_and_count_each_episode_once(tmp_path):
  check_two_processes(tmp_path, str(tmp_path / 'run'))


def check_two_processes(tmp_path, workdir: str) -> None:
  """Trains with 2 processes into `workdir` (local or gs://: the children inherit this
  process's environment) and checks what the module docstring says."""
  from mmnet_jax import evaluate
  from mmnet_jax.data import dataset_registry
  data_dir, out = str(tmp_path / 'tfds'), str(tmp_path / 'out')
  os.makedirs(out)
  config = _config(data_dir)
  for split in ('train', 'val'):   # build once here: two children must not race to build it
    dataset_registry.open_split(config.dataset, split)

  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  code = ('import sys; sys.path.insert(0, sys.argv[1]); from tests import test_multiprocess as t; '
          't.child(int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:])')
  procs = [subprocess.Popen([sys.executable, '-c', code, REPO, str(rank), str(port), data_dir,
                             workdir, out], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for rank in range(NUM_PROCESSES)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=540)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for rank, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == 0, f'process {rank} failed:\n{log[-4000:]}'

  v0 = np.load(os.path.join(out, 'variables_0.npz'))
  v1 = np.load(os.path.join(out, 'variables_1.npz'))
  assert set(v0.files) == set(v1.files) and any(k.startswith('trained') for k in v0.files)
  for key in v0.files:
    np.testing.assert_array_equal(v0[key], v1[key], err_msg=key)
    if key.startswith('trained'):   # the multi-host checkpoint restores what was trained
      np.testing.assert_array_equal(v0[key], v0['restored' + key[len('trained'):]],
                                    err_msg=key)

  r0, r1 = (json.load(open(os.path.join(out, f'results_{r}.json'))) for r in range(2))
  assert r0 == r1
  assert r0['episodes'] == config.eval.num_episodes and r0['step'] == config.train.num_steps
  single = evaluate.evaluate_workdir(config, workdir)   # this process alone, 8 devices
  assert single['episodes'] == r0['episodes']
  assert single['miou'] == pytest.approx(r0['miou'], abs=1e-3)
  assert single['fb_iou'] == pytest.approx(r0['fb_iou'], abs=1e-3)
  assert {str(k): v for k, v in single['class_iou'].items()} == pytest.approx(
      {str(k): v for k, v in r0['class_iou'].items()}, abs=1e-3)


SLOW_WRITER = '''
import sys, time
from mmnet_jax import checkpoint, train
from tests.test_determinism import tiny_config
config = tiny_config(sys.argv[1])
config.train.checkpoint_every = 1   # a save in flight most of the time
save = checkpoint.RunCheckpoints.save_latest
def slowed(self, *args, **kwargs):   # time for the readers while the async save is written
  save(self, *args, **kwargs)
  time.sleep(2.0)
checkpoint.RunCheckpoints.save_latest = slowed
print(train.train(config, sys.argv[2]), flush=True)
'''


@pytest.mark.slow
def test_eval_and_predict_beside_a_training_run_leave_it_bitwise_equal(tmp_path, compile_cache):
  """Readers (`--mode=eval`'s and `--mode=predict`'s functions, in a loop in this process)
  beside a training run in another process that saves every step: the run finishes and its
  final state is bitwise that of an undisturbed run; nothing the readers did is left in its
  checkpoint directories."""
  import time
  from PIL import Image
  from mmnet_jax import checkpoint
  from mmnet_jax import evaluate
  from mmnet_jax import predict
  from tests.test_determinism import (NUM_STEPS, assert_bitwise_equal, cache_env, load_state,
                                      reference_params, shared_config)
  config = shared_config()
  reference = reference_params()   # also builds the dataset the writer reads
  reader = config.copy_and_resolve_references()
  reader.eval.select_on = 'last'   # the latest checkpoint: the one being replaced every step
  reader.eval.pictures = 0
  reader.dataset.synthetic.num_val = 120   # the writer's 24 val images are too few to evaluate
  from mmnet_jax.data import dataset_registry
  dataset_registry.open_split(reader.dataset, 'val')   # built before the race starts
  image, mask = tmp_path / 'img.png', tmp_path / 'mask.png'
  Image.fromarray(np.full((40, 48, 3), 120, np.uint8)).save(image)
  m = np.zeros((40, 48), np.uint8)
  m[8:30, 10:40] = 255
  Image.fromarray(m).save(mask)

  # Compile the readers first, on a copy of the undisturbed run, so that they read many times.
  import shutil
  from tests import test_determinism
  warm = str(tmp_path / 'warm')
  shutil.copytree(test_determinism.reference_workdir(), warm)
  evaluate.evaluate_workdir(reader, warm)
  predict.predict_files(reader, warm, [(str(image), str(mask))], str(image),
                        str(tmp_path / 'pred.png'))

  workdir = str(tmp_path / 'run')
  proc = subprocess.Popen([sys.executable, '-c', SLOW_WRITER, config.dataset.data_dir, workdir],
                          cwd=REPO, env=cache_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  reads = {'eval': 0, 'predict': 0}
  try:
    end = time.time() + 400
    while proc.poll() is None and time.time() < end:
      try:
        evaluate.evaluate_workdir(reader, workdir)
        reads['eval'] += 1
        predict.predict_files(reader, workdir, [(str(image), str(mask))], str(image),
                              str(tmp_path / 'pred.png'))
        reads['predict'] += 1
      except FileNotFoundError:   # no checkpoint committed yet
        time.sleep(0.2)
    log, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, log[-4000:]
  assert f"'step': {NUM_STEPS}" in log, log[-4000:]
  assert reads['eval'] >= 3 and reads['predict'] >= 3, reads   # they did overlap the run
  assert_bitwise_equal(load_state(config, workdir)[0], reference)
  for sub in (checkpoint.LATEST_DIR, checkpoint.BEST_DIR):
    path = os.path.join(workdir, sub)
    if os.path.isdir(path):
      assert not [n for n in os.listdir(path) if not n.isdigit()], os.listdir(path)
