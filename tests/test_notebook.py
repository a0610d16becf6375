"""The Colab notebook executes (smoke mode, on CPU) and the README's commands run as written."""

import json
import os
import re
import shlex
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'notebooks', 'colab_tpu.ipynb')


def _outputs_text(nb) -> str:
  texts = []
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      if out.get('output_type') == 'stream':
        texts.append(out['text'])
      elif 'data' in out and 'text/plain' in out['data']:
        texts.append(out['data']['text/plain'])
  return '\n'.join(texts)


def test_colab_notebook_executes_in_smoke_mode(tmp_path, monkeypatch):
  import nbclient
  import nbformat
  # The Drive option, with a local folder standing in for Drive: the workdir goes under it.
  drive = tmp_path / 'drive'
  workdir = drive / 'workdirs' / 'synthetic_1shot_fold0'
  monkeypatch.setenv('MMNET_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('MMNET_NOTEBOOK_DRIVE', str(drive))
  monkeypatch.delenv('MMNET_NOTEBOOK_WORKDIR', raising=False)
  monkeypatch.setenv('MMNET_NOTEBOOK_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setenv('MMNET_REPO', REPO)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')   # faster on CPU
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  text = _outputs_text(nb)
  assert 'missing: []' in text            # CI has every requirement: nothing to install
  assert f'workdir {workdir} (on Drive)' in text
  assert 'RESTORE_MATCHES True' in text   # restored checkpoint: the same mIoU as results.json
  results = json.loads((workdir / 'results.json').read_text())
  assert results['dataset'] == 'synthetic' and results['episodes'] == 8
  assert results['step'] == 4
  pictures = sorted(os.listdir(workdir / 'pictures'))
  assert 'training_curves.png' in pictures and 'class_iou.png' in pictures
  # the final evaluation draws min(eval.pictures, episodes) grids; the notebook's own 4 reuse names
  assert sum(p.startswith('episode_') for p in pictures) == 8
  assert (workdir / 'prediction.png').is_file() and (workdir / 'prediction_overlay.png').is_file()
  images = [o for c in nb.cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
  assert len(images) >= 5                 # 2 plots, 2 grids, 1 overlay displayed


def readme_commands():
  """Every `python main.py ...` line of README.md's bash blocks, comments removed."""
  with open(os.path.join(REPO, 'README.md')) as f:
    text = f.read()
  commands = []
  for block in re.findall(r'```bash\n(.*?)```', text, re.S):
    for line in block.splitlines():
      for part in line.split('&&'):
        part = part.split('#', 1)[0].strip()
        if part.startswith('python main.py'):
          commands.append(part)
  return commands


def _run(command: str, tmp_path, extra=()):
  args = shlex.split(command)
  args = [sys.executable] + args[1:] + list(extra)
  args = [a.replace('DIR', str(tmp_path / 'run')) if a.startswith('--workdir=') else a
          for a in args]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')  # as a user's CPU
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def test_readme_lists_the_modes():
  commands = readme_commands()
  assert any('--mode=summary' in c for c in commands)
  assert any(':smoke' in c and '--mode' not in c for c in commands)
  assert any('--mode=predict' in c for c in commands)


def test_readme_summary_command_runs(tmp_path):
  command = next(c for c in readme_commands() if '--mode=summary' in c)
  proc = _run(command, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'memory' in proc.stdout and 'backbone' in proc.stdout


# The README's smoke run, eval, predict and summary in order: tests/test_readme_commands.py.


def _leaf_keys(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _leaf_keys(value, f'{prefix}{key}.')
    else:
      yield prefix + key


def test_config_reference_names_every_field():
  from configs import default
  with open(os.path.join(REPO, 'docs', 'config.md')) as f:
    text = f.read()
  documented = set(re.findall(r'`([a-z_][a-z_.0-9]*)`', text))
  missing = sorted(k for k in _leaf_keys(default.get_config()) if k not in documented)
  assert not missing, f'docs/config.md does not describe: {missing}'
