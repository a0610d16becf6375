"""The README's commands, run in order as a newcomer would: smoke training, eval, predict and
summary, in a fresh copy of the repository with an empty TFDS data dir (marked slow: ~3 min)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands() -> dict:
  """{'smoke' | 'eval' | 'predict' | 'summary': argv} of the README's `python main.py` lines
  (the first of each kind, comments stripped)."""
  with open(os.path.join(REPO, 'README.md')) as f:
    lines = [line.split('  #')[0].strip() for line in f if line.startswith('python main.py')]
  kinds = {
      'smoke': lambda a: ':smoke' in a,
      'eval': lambda a: '--mode=eval' in a and '--config.' not in a,
      'predict': lambda a: '--mode=predict' in a,
      'summary': lambda a: '--mode=summary' in a,
  }
  found = {}
  for kind, wanted in kinds.items():
    matches = [line.split() for line in lines if wanted(line)]
    assert matches, f'README.md has no {kind} command'
    found[kind] = matches[0]
  return found


def _fresh_copy(dest: str) -> None:
  """The files git would check out (tracked, plus new ones not ignored), nothing built."""
  names = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
                         cwd=REPO, capture_output=True, check=True).stdout.decode().split('\0')
  for name in filter(None, names):
    src = os.path.join(REPO, name)
    if os.path.isfile(src):
      os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
      shutil.copy2(src, os.path.join(dest, name))


def _predict_inputs(cwd: str) -> None:
  """support.jpg, support_mask.png and query.jpg as the README's predict command names them."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 60, (120, 150, 3), dtype=np.uint8)
  image[30:90, 40:110] = (200, 40, 40)
  Image.fromarray(image).save(os.path.join(cwd, 'support.jpg'))
  Image.fromarray(image).save(os.path.join(cwd, 'query.jpg'))
  mask = np.zeros((120, 150), np.uint8)
  mask[30:90, 40:110] = 255
  Image.fromarray(mask).save(os.path.join(cwd, 'support_mask.png'))


@pytest.mark.slow
def test_readme_commands_run_in_order_on_a_fresh_copy(tmp_path):
  cwd, workdir = str(tmp_path / 'clone'), str(tmp_path / 'run')
  _fresh_copy(cwd)
  _predict_inputs(cwd)
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['TFDS_DATA_DIR'] = str(tmp_path / 'tfds')   # as on a fresh machine: nothing built yet
  commands = readme_commands()
  outputs = {}
  for kind in ('smoke', 'eval', 'predict', 'summary'):
    argv = [sys.executable if a == 'python' else a.replace('DIR', workdir)
            for a in commands[kind]]
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f'{kind}: {" ".join(argv)}\n{proc.stderr[-4000:]}'
    outputs[kind] = proc.stdout
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  baselines = [b['miou'] for b in results['baselines'].values()]
  assert results['miou'] > 1.5 * max(baselines), (results['miou'], baselines)   # it learned
  assert os.path.isfile(os.path.join(cwd, 'prediction.png'))
  assert 'wrote' in outputs['predict']
  assert 'backbone' in outputs['summary']
