"""The model interface: a model registered from its own file runs through main.py; the library
imports no specific model and its import graph has no cycle."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from mmnet_jax import config_checks
from mmnet_jax import default_config
from mmnet_jax import train_state
from mmnet_jax import workdir_io
from mmnet_jax.models import registry

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'mmnet_jax'
# The modules that serve every model: none may import a specific one.
MODEL_AGNOSTIC = ('train', 'train_state', 'optimizer', 'evaluate', 'predict', 'convert',
                  'benchmark', 'benchmark_input', 'cli', 'models/summary', 'config_checks',
                  'default_config', 'workdir_config')
SPECIFIC_MODELS = ('mmnet_jax.models.mmnet', 'mmnet_jax.models.mmnet_spec',
                   'mmnet_jax.models.pfenet', 'mmnet_jax.models.pfenet_spec',
                   'mmnet_jax.models.hsnet', 'mmnet_jax.models.hsnet_spec')


def _main(*args, cwd=REPO):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}   # one CPU device, as a user
  env['PYTHONPATH'] = str(REPO)
  return subprocess.run([sys.executable, str(REPO / 'main.py'), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def _module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(REPO).with_suffix('')
  parts = rel.parts[:-1] if rel.name == '__init__' else rel.parts
  return '.'.join(parts)


def import_graph() -> dict[str, set[str]]:
  """mmnet_jax module -> the mmnet_jax modules it imports (top-level and lazy imports)."""
  graph = {}
  modules = {_module_name(p): p for p in PACKAGE.rglob('*.py')}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [f'{node.module}.{a.name}' for a in node.names] + [node.module]
      else:
        continue
      edges.update(t for t in targets if t in modules and t != name)
    graph[name] = edges
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph` (as a path that returns to its start), or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_import_graph_has_no_cycle():
  graph = import_graph()
  assert len(graph) > 40 and 'mmnet_jax.data.dataset_registry' in graph
  assert find_cycle(graph) is None, f'import cycle: {" -> ".join(find_cycle(graph))}'


def test_find_cycle_finds_one():
  """The checker itself: evaluate <-> train was such a cycle before the registry."""
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_shared_modules_import_no_specific_model():
  graph = import_graph()
  for module in MODEL_AGNOSTIC:
    name = 'mmnet_jax.' + module.replace('/', '.')
    assert not graph[name] & set(SPECIFIC_MODELS), (name, graph[name] & set(SPECIFIC_MODELS))


def model_families(graph) -> dict[str, set[str]]:
  """Built-in model name -> its own modules (models/<name>, models/<name>_*)."""
  prefix = 'mmnet_jax.models.'
  return {name: {m for m in graph if m.startswith(prefix) and
                 (m[len(prefix):] == name or m[len(prefix):].startswith(name + '_'))}
          for name in registry.BUILTIN}


def test_a_model_never_imports_another_model():
  """STYLE.md: shared pieces live in shared modules (pfenet_spec once imported mmnet_spec for
  the family's config checks; they live in models/mid_level now)."""
  graph = import_graph()
  families = model_families(graph)
  assert {'mmnet_jax.models.mmnet_spec', 'mmnet_jax.models.mmnet_keys'} <= families['mmnet']
  assert 'mmnet_jax.models.pfenet_spec' in families['pfenet']
  for name, own in families.items():
    others = set().union(*(m for n, m in families.items() if n != name))
    for module in own:
      assert not graph[module] & others, (module, graph[module] & others)


def test_unknown_model_names_the_choices():
  with pytest.raises(registry.UnknownModelError, match=r"'mmnet', 'pfenet'"):
    registry.get('nope')
  with pytest.raises(registry.UnknownModelError, match='cannot import'):
    registry.get('no_such_package.model')
  config = default_config.get_config()
  config.model.name = 'nope'
  problems = config_checks.problems(config)
  assert len(problems) == 1 and problems[0].startswith("model.name='nope': unknown model")


def test_each_model_checks_against_its_own_reference_config():
  """MM-Net's memory fields are unknown keys for a model that has none."""
  import tests.toy_model as toy
  config = default_config.get_config('runlocal')
  with config.unlocked():
    config.model.name = toy.NAME
  problems = config_checks.problems(config)
  assert 'model.memory_slots: unknown key (not in the reference config; mistyped?)' in problems
  assert config_checks.problems(toy.get_config()) == []
  bad = toy.get_config()
  bad.model.l2_scale = -1.0
  assert config_checks.problems(bad) == ['model.l2_scale: got -1.0, expected a number in '
                                         '[0, inf)']


def test_fingerprint_names_the_model_and_old_checkpoints_are_mmnet():
  config = default_config.get_config()
  fingerprint = train_state.config_fingerprint(config)
  assert fingerprint['model_name'] == 'mmnet' and 'name' not in fingerprint['model']
  assert 'dtype' not in fingerprint['model'] and 'attention_chunk' not in fingerprint['model']
  legacy = {k: v for k, v in json.loads(json.dumps(fingerprint)).items() if k != 'model_name'}
  workdir_io.check_fingerprint({'fingerprint': legacy}, fingerprint, 'old')   # no error
  import tests.toy_model as toy
  other = train_state.config_fingerprint(toy.get_config())
  with pytest.raises(ValueError, match="model_name: checkpoint 'mmnet' vs config 'tests.toy"):
    workdir_io.check_fingerprint({'fingerprint': legacy}, other, 'old')


def _support_files(tmp_path) -> str:
  """A 48x40 image with a red box and its mask in tmp_path: the --support flag for them."""
  image = np.zeros((40, 48, 3), np.uint8)
  image[10:30, 12:36] = (200, 30, 30)
  mask = np.zeros((40, 48), np.uint8)
  mask[10:30, 12:36] = 1
  Image.fromarray(image).save(tmp_path / 'img.png')
  Image.fromarray(mask).save(tmp_path / 'mask.png')
  return f'--support={tmp_path / "img.png"}:{tmp_path / "mask.png"}'


@pytest.mark.slow  # ~45 s on a Zen 3 VM; run by .ci/run's slow line
def test_a_model_from_its_own_file_trains_evaluates_and_predicts_through_main(tmp_path):
  workdir, data_dir = tmp_path / 'run', tmp_path / 'tfds'
  data = f'--config.dataset.data_dir={data_dir}'
  out = _main('--config=tests/toy_model.py', f'--workdir={workdir}', data)
  assert out.returncode == 0, out.stderr[-3000:]
  recorded = json.loads((workdir / 'config.json').read_text())
  assert recorded['model'] == {'name': 'tests.toy_model', 'l2_scale': 1.0,
                               'freeze_backbone': False}
  results = json.loads((workdir / 'results.json').read_text())
  assert 0.0 <= results['miou'] <= 100.0 and results['step'] == 6

  # eval and predict in fresh processes, from the workdir alone: the registry imports the
  # model by its recorded dotted name.
  out = _main('--mode=eval', f'--workdir={workdir}', data)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((workdir / 'eval_results.json').read_text())['miou'] == pytest.approx(
      results['miou'])

  support = _support_files(tmp_path)
  out = _main('--mode=predict', f'--workdir={workdir}', data,
              support, f'--query={tmp_path / "img.png"}', f'--output={tmp_path / "pred.png"}')
  assert out.returncode == 0, out.stderr[-3000:]
  assert Image.open(tmp_path / 'pred.png').size == (48, 40)


@pytest.mark.slow   # HSNet through main.py, ~60 s; CI runs it (.ci/run)
def test_hsnet_trains_evaluates_and_predicts_through_main(tmp_path):
  """HSNet like the other models: main.py train (Adam, its loss), eval from the workdir alone
  and a 2-shot predict (the vote) in fresh processes."""
  workdir, data_dir = tmp_path / 'run', tmp_path / 'tfds'
  data = f'--config.dataset.data_dir={data_dir}'
  out = _main('--config=configs/hsnet/synth_1shot.py:runlocal', f'--workdir={workdir}', data,
              '--config.train.num_steps=4', '--config.train.eval_every=4',
              '--config.train.checkpoint_every=4', '--config.eval.num_episodes=8',
              '--config.eval.during_training_episodes=8')
  assert out.returncode == 0, out.stderr[-3000:]
  recorded = json.loads((workdir / 'config.json').read_text())
  assert recorded['model']['name'] == 'hsnet' and recorded['train']['optimizer'] == 'adam'
  results = json.loads((workdir / 'results.json').read_text())
  assert 0.0 <= results['miou'] <= 100.0 and results['step'] == 4
  out = _main('--mode=eval', f'--workdir={workdir}', data)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((workdir / 'eval_results.json').read_text())['miou'] == pytest.approx(
      results['miou'])
  support = _support_files(tmp_path)
  out = _main('--mode=predict', f'--workdir={workdir}', data, support, support,
              f'--query={tmp_path / "img.png"}', f'--output={tmp_path / "pred.png"}')
  assert out.returncode == 0, out.stderr[-3000:]
  assert '2-shot' in out.stdout and Image.open(tmp_path / 'pred.png').size == (48, 40)


@pytest.mark.parametrize('config_file, original, diff', [
    ('configs/pascal_1shot.py', '34,120,138', 'ours -131,584'),
    ('configs/pfenet/pascal_1shot.py', '34,448,842', 'the same count'),
    ('configs/hsnet/pascal_1shot.py', '28,130,826', 'ours -2,049,000'),
    ('configs/hsnet/coco_1shot.py', '47,136,554', 'ours -2,049,000')])
def test_summary_states_the_originals_parameter_count(config_file, original, diff):
  import importlib.util
  from mmnet_jax import cli
  spec = importlib.util.spec_from_file_location('_summary_config', REPO / config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  text = cli.run('summary', module.get_config(), None)
  line = next(row for row in text.splitlines() if row.startswith('original'))
  assert original in line and diff in line
