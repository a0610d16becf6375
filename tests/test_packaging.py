"""`pip install .`: a wheel of the whole package that works without the repo's configs/."""

import ast
import glob
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'mmnet_jax')


def _modules():
  return sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(PACKAGE, '**', '*.py'),
                                                            recursive=True))


def test_no_module_of_the_package_imports_the_configs_folder():
  for rel in _modules():
    with open(os.path.join(REPO, rel)) as f:
      tree = ast.parse(f.read(), rel)
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
      assert not any(n == 'configs' or n.startswith('configs.') for n in names), rel


def _name(requirement: str) -> str:
  return re.split(r'[<>=!;\s\[]', requirement.strip(), maxsplit=1)[0].lower().replace('_', '-')


def test_dependencies_are_requirements_without_the_test_and_notebook_tools():
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    project = tomllib.load(f)['project']
  with open(os.path.join(REPO, 'requirements.txt')) as f:
    required = {_name(line) for line in f if line.strip() and not line.startswith('#')}
  runtime = {_name(r) for r in project['dependencies']}
  extras = {_name(r) for group in project['optional-dependencies'].values() for r in group}
  assert runtime | extras == required
  assert not runtime & extras
  assert {'pytest', 'nbclient'} <= extras


def test_the_wheel_holds_every_module_and_works_outside_the_repo(tmp_path):
  wheels, target, src = tmp_path / 'wheels', tmp_path / 'site', tmp_path / 'src'
  # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
  shutil.copytree(PACKAGE, src / 'mmnet_jax', ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy2(os.path.join(REPO, name), src / name)
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
                  '-w', str(wheels), str(src)], check=True, capture_output=True, timeout=300,
                 cwd=tmp_path)
  (wheel,) = glob.glob(str(wheels / '*.whl'))
  names = zipfile.ZipFile(wheel).namelist()
  assert sorted(n for n in names if n.endswith('.py')) == _modules()
  assert not [n for n in names if n.startswith(('configs/', 'tests/'))]
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target',
                  str(target), wheel], check=True, capture_output=True, timeout=300)
  code = ('import mmnet_jax.config_checks as c, mmnet_jax.workdir_config, mmnet_jax.cli; '
          'print(c.default_reference().model.backbone, mmnet_jax.__file__)')
  env = dict(os.environ, PYTHONPATH=str(target))
  proc = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split()[0] == 'resnet50'
  assert proc.stdout.split()[-1].startswith(str(target))   # the installed copy, not the repo
