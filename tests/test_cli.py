"""main.py as a user runs it: the workdir's recorded config, other shot counts, one-line errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from configs import synth_1shot
from mmnet_jax import checkpoint
from mmnet_jax import evaluate
from mmnet_jax import train_state
from mmnet_jax import workdir_config
from mmnet_jax import workdir_io
from mmnet_jax.models import mmnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=300):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}   # one CPU device, as a user
  return subprocess.run([sys.executable, 'main.py', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env=env)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A training run's workdir as train.py leaves it: config.json and an (untrained) latest
  checkpoint with its fingerprint. The config's data_dir is its own (built on first eval)."""
  root = tmp_path_factory.mktemp('cli')
  config = synth_1shot.get_config('runlocal')
  config.dataset.data_dir = str(root / 'tfds')
  config.eval.baselines = False
  config.eval.pictures = 0
  workdir = str(root / 'run')
  os.makedirs(workdir)
  model = mmnet.build_model(config.model)
  state, _ = train_state.create_state(model, config, 10)
  ckpts = checkpoint.RunCheckpoints(workdir)
  ckpts.save_latest(10, jax.device_get(state), {
      'step': 10, 'best_miou': -1.0, 'metrics': {},
      'fingerprint': train_state.config_fingerprint(config)})
  ckpts.close()
  workdir_io.write_config(config, workdir)
  return workdir


def test_recorded_config_round_trips(workdir):
  recorded = workdir_config.load(workdir)
  with open(os.path.join(workdir, workdir_config.CONFIG_FILE)) as f:
    assert json.loads(json.dumps(recorded.to_dict())) == json.load(f)
  assert isinstance(recorded.model.ppm_scales, tuple)   # JSON lists back to tuples
  assert recorded.eval.pictures == 0 and recorded.dataset.data_dir.endswith('tfds')


def test_an_older_workdirs_config_gains_the_new_fields_defaults(tmp_path):
  config = synth_1shot.get_config('runlocal').to_dict()
  del config['eval']['void_label']
  (tmp_path / 'config.json').write_text(json.dumps(config))
  loaded = workdir_config.load(str(tmp_path))
  assert loaded.eval.void_label == ''
  assert loaded.model.backbone == 'tiny'   # recorded values win over the defaults


def _latest_eval(workdir):
  with open(os.path.join(workdir, evaluate.LATEST_EVAL_FILE)) as f:
    return json.load(f)


def test_eval_uses_the_workdirs_config_and_its_overrides(workdir):
  training_results = os.path.join(workdir, evaluate.RESULTS_FILE)
  sentinel = '{"class_iou": {"1": 12.5}, "miou": 12.5}'
  with open(training_results, 'w') as f:   # the training run's own results stay untouched
    f.write(sentinel)
  proc = _main('--mode=eval', f'--workdir={workdir}', '--config.eval.num_episodes=3')
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = _latest_eval(workdir)
  assert results['episodes'] == 3 and results['shots'] == 1 and results['step'] == 10
  with open(os.path.join(workdir, results['results_file'])) as f:   # evals/<time>_..._1shot
    assert json.load(f) == results
  assert results['results_file'].startswith(evaluate.EVALS_DIR + '/')
  with open(training_results) as f:
    assert f.read() == sentinel
  umask = os.umask(0)
  os.umask(umask)
  for name in (evaluate.LATEST_EVAL_FILE, workdir_config.CONFIG_FILE):   # as open() makes them
    assert os.stat(os.path.join(workdir, name)).st_mode & 0o777 == 0o666 & ~umask   # 0644


def test_a_one_shot_checkpoint_is_evaluated_at_two_shots(workdir):
  proc = _main('--mode=eval', f'--workdir={workdir}', '--config.eval.num_episodes=2',
               '--config.shots=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = _latest_eval(workdir)
  assert results['shots'] == 2 and results['results_file'].endswith('_2shot.json')
  assert len(os.listdir(os.path.join(workdir, evaluate.EVALS_DIR))) >= 2   # one file per eval


def _one_line_error(proc, *fragments):
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  lines = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


def test_a_conflicting_model_is_refused_naming_the_field(workdir):
  proc = _main('--mode=eval', f'--workdir={workdir}', '--config.model.memory_slots=8')
  _one_line_error(proc, 'another model or config', "'memory_slots': 16", "'memory_slots': 8")


def test_user_errors_are_one_line_with_exit_code_2(workdir, tmp_path):
  cfg = '--config=configs/synth_1shot.py:runlocal'
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  folder = tmp_path / 'folder'
  folder.mkdir()
  missing = str(tmp_path / 'nowhere')
  cases = [
      (['--mode=train', cfg], ['--workdir is required']),
      (['--mode=train', cfg, f'--workdir={missing}', '--config.train.num_step=3'],
       ['--config.train.num_step', "did you mean"]),
      (['--mode=train', '--config=configs/no_such.py', f'--workdir={missing}'],
       ['configs/no_such.py', 'no such config file']),
      (['--mode=train', cfg, f'--workdir={a_file}'], [str(a_file), 'is a file']),
      (['--mode=eval', f'--workdir={missing}'], [missing, 'config.json']),
      (['--mode=eval', cfg, f'--workdir={missing}'], [missing]),
      (['--mode=predict', f'--workdir={workdir}', '--support=a.png:b.png', '--query=q.png',
        f'--output={tmp_path}/out.txt'], ['--output', '.txt']),
      (['--mode=predict', f'--workdir={workdir}', f'--support={a_file}:{a_file}',
        f'--query={folder}', f'--output={tmp_path}/o.png'], [str(folder), 'directory']),
      (['--mode=train', cfg, '--no_such_flag=1'], ['no_such_flag']),
  ]
  for args, fragments in cases:
    _one_line_error(_main(*args), *fragments)
  assert not os.path.exists(missing)   # read-only modes created nothing
  proc = _main('--mode=eval', f'--workdir={missing}', '--debug')
  assert proc.returncode != 0 and 'Traceback' in proc.stderr


def test_a_mask_path_with_a_colon_is_found(workdir, tmp_path):
  """--support IMAGE:MASK splits at the ':' that leaves two existing files."""
  d = tmp_path / 'odd:name'
  d.mkdir()
  image = d / 'img.png'
  Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(image)
  mask = np.zeros((40, 50), np.uint8)
  mask[10:30, 10:40] = 1
  Image.fromarray(mask).save(d / 'mask:1.png')
  out = tmp_path / 'pred.png'
  proc = _main('--mode=predict', f'--workdir={workdir}', f'--support={image}:{d}/mask:1.png',
               f'--query={image}', f'--output={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert out.is_file()
