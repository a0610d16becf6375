"""The speed benchmark: helpers on hand-computed cases, a tiny smoke run (fast), real sizes (slow)."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from mmnet_jax import benchmark

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools')


def test_parse_config_name():
  assert benchmark.parse_config_name('r101-641-k5') == {
      'name': 'r101-641-k5', 'backbone': 'resnet101', 'size': 641, 'shots': 5, 'model': 'mmnet'}
  # HSNet takes any side (its own 400) on torchvision's ResNets.
  assert benchmark.parse_config_name('r50-400-k5', 'hsnet') == {
      'name': 'r50-400-k5', 'backbone': 'resnet50_tv', 'size': 400, 'shots': 5, 'model': 'hsnet'}
  with pytest.raises(ValueError, match='8n \\+ 1'):
    benchmark.parse_config_name('r50-400-k1')
  assert benchmark.parse_config_name('tiny-33-k1')['backbone'] == 'tiny'
  for bad in ('r34-473-k1', 'r50-470-k1', 'r50-473-k0', 'r50-473'):
    with pytest.raises(ValueError, match='--configs'):
      benchmark.parse_config_name(bad)


def test_cost_flops_counts_a_matmul():
  # XLA counts 2 m n k FLOPs for an (m, k) @ (k, n) product.
  f = jax.jit(lambda a, b: a @ b)
  compiled = f.lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
  assert benchmark.cost_flops(compiled) == pytest.approx(2 * 64 * 32 * 16, rel=0.01)


def test_xla_memory_peak_formula_and_donation():
  n = 256 * 1024   # 1 MiB of float32
  f = jax.jit(lambda x: x * 2.0 + 1.0, donate_argnums=(0,))
  mem = benchmark.xla_memory(f.lower(jnp.ones((n,))).compile())
  if not mem:
    pytest.skip('memory_analysis unavailable on this backend')
  assert mem['argument_size_in_bytes'] == 4 * n
  assert mem['output_size_in_bytes'] == 4 * n
  assert mem['peak_bytes'] == (mem['temp_size_in_bytes'] + mem['argument_size_in_bytes'] +
                               mem['output_size_in_bytes'] - mem['alias_size_in_bytes'])
  assert mem['alias_size_in_bytes'] == 4 * n   # the donated input holds the output


def test_rates_arithmetic():
  r = benchmark.rates({'median_s': 2.0, 'flops': 100e9}, episodes=4, peak=100e9)
  assert r['s_per_episode'] == 0.5
  assert r['episodes_per_s'] == 2.0
  assert r['flops_per_s'] == 50e9
  assert r['pct_of_peak'] == 50.0
  assert 'flops_per_s' not in benchmark.rates({'median_s': 1.0, 'flops': None}, 1, 1.0)


def test_median_seconds_waits_and_counts():
  calls = []
  out = benchmark.median_seconds(lambda: calls.append(1) or jnp.ones(3), repeats=3, warmup=2)
  assert len(calls) == 5 and len(out['times_s']) == 3
  assert out['min_s'] <= out['median_s']


def test_peak_rss_is_reported():
  benchmark.reset_peak_rss()
  before = benchmark.peak_rss_bytes()
  assert before is not None and before > 0
  block = bytearray(64 * 2**20)   # touch 64 MiB: the peak must grow by about that
  block[::4096] = b'\x01' * len(block[::4096])
  assert benchmark.peak_rss_bytes() >= before + 48 * 2**20
  del block


@pytest.mark.slow   # ~60 s of compiles; CI runs it beside the multi-process tests (.ci/run)
def test_smoke_tiny_writes_json_and_table(tmp_path):
  out = tmp_path / 'bench.json'
  results = benchmark.main(['--configs', 'tiny-65-k1', '--train-batch', '2', '--repeats', '1',
                            '--warmup', '0', '--peak-sizes', '128,256', '--output', str(out)])
  saved = json.loads(out.read_text())
  assert saved['configs'][0]['config']['name'] == 'tiny-65-k1'
  r = results['configs'][0]
  assert set(r) >= {'train', 'eval', 'backbone', 'backbone_convs'}
  for part, episodes in (('train', 2), ('eval', 1), ('backbone', 1)):
    p = r[part]
    assert p['episodes'] == episodes
    assert p['episodes_per_s'] == pytest.approx(episodes / p['median_s'])
    assert p['flops'] > 0 and p['compile_s'] > 0
  # The convolutions alone: the tiny backbone's 19 per call (stem 3 + 4 blocks x 3 + 4
  # projections), 2 calls (query, 1 shot); they are most but not all of the backbone's FLOPs.
  convs = r['backbone_convs']
  assert convs['op_count'] == 2 * 19 and convs['images'] == 2
  assert sum(o['count'] for o in convs['ops']) == 2 * 19
  assert 0.5 * r['backbone']['flops'] < convs['flops'] < r['backbone']['flops']
  assert convs['median_s'] == pytest.approx(
      sum(o['count'] * o['median_s'] for o in convs['ops']))
  # The step does more than its backbone; training (forward + backward) more than eval.
  assert r['eval']['flops'] > r['backbone']['flops']
  assert r['train']['flops'] > 2 * r['eval']['flops']
  assert r['train']['xla_memory']['peak_bytes'] > 0
  peak = results['peak']
  assert set(peak['per_size_flops_per_s']) == {'128', '256'}
  assert peak['flops_per_s'] == max(peak['per_size_flops_per_s'].values()) > 0
  assert peak['flops'] == 2 * peak['matmul_size'] ** 3
  table = benchmark.format_results(results)
  assert 'tiny-65-k1' in table and 'backbone' in table


def test_official_markdown_table_from_results():
  sys.path.insert(0, TOOLS)
  try:
    import benchmark_official   # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(TOOLS)
  part = lambda s, **kw: dict(benchmark.rates({'median_s': s, 'flops': 400e9, **kw}, 1, 200e9))
  results = {
      'peak': {'jax': {'matmul_size': 4096, 'flops_per_s': 200e9},
               'torch': {'matmul_size': 4096, 'flops_per_s': 190e9}, 'reference': 200e9},
      'configs': [{'config': {'name': 'r50-473-k1'},
                   'original': {'eval': part(4.0, torch_flops=380e9)},
                   'ours': {'eval': part(2.0, compile_s=3.0)}}]}
  table = benchmark_official.format_markdown(results)
  rows = [l for l in table.splitlines() if l.startswith('| r50')]
  assert len(rows) == 2
  assert '| original | 4.00 | 0.250 |' in rows[0] and '| 380.0 |' in rows[0]
  assert '| ours | 2.00 | 0.500 | 2.00x | 3 |' in rows[1] and '| 100% |' in rows[1]


@pytest.mark.slow
def test_resnet50_eval_real_size(tmp_path):
  results = benchmark.main(['--configs', 'r50-473-k1', '--skip', 'train', '--repeats', '1',
                            '--output', str(tmp_path / 'b.json')])
  r = results['configs'][0]
  # XLA's count of the ResNet-50 eval forward at 473, 1-shot: ~450 GFLOP, ~80% in the backbone.
  assert 350e9 < r['eval']['flops'] < 600e9
  assert 0.6 < r['backbone']['flops'] / r['eval']['flops'] < 0.95


@pytest.mark.parametrize('freeze', [True, False])
def test_frozen_backbone_has_no_backward_convs(freeze):
  config = benchmark.make_config(benchmark.parse_config_name('tiny-65-k1'), 2)
  config.model.freeze_backbone = freeze
  from mmnet_jax.models import mmnet   # pylint: disable=import-outside-toplevel
  from mmnet_jax import optimizer
  from mmnet_jax import train_state
  model = mmnet.build_model(config.model)
  state = train_state.abstract_state(model, config)   # tracing only: shapes are enough
  tx = optimizer.make_optimizer(config, 10, state['params'])
  counts = benchmark.frozen_backbone_convs(model, config, state, tx,
                                           benchmark.random_batch(2, 1, 65))
  # tiny backbone: stem 3 + 4 blocks x 3 + 4 projection shortcuts = 19 convs per image.
  assert counts['backbone_convs'] == 2 * 19
  assert counts['eval_convs'] > counts['backbone_convs']
  if freeze:
    assert counts['backbone_backward_convs'] == 0
  else:   # every backbone conv needs at least its kernel gradient
    assert counts['train_convs'] - counts['no_backbone_backward_bound'] >= 0
    assert counts['backbone_backward_convs'] >= counts['backbone_convs'] - 2 * 3


OFFICIAL_REPO = os.environ.get('MMNET_OFFICIAL_REPO', '/tmp/mmnet_official')


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.skipif(not os.path.isfile(os.path.join(OFFICIAL_REPO, 'model', 'PartNet.py')),
                    reason='needs a checkout of the original (docs/benchmarks.md)')
def test_official_eval_same_flops(tmp_path):
  pytest.importorskip('torch')
  sys.path.insert(0, TOOLS)
  try:
    import benchmark_official   # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(TOOLS)
  results = benchmark_official.main(
      ['--official-repo', OFFICIAL_REPO, '--configs', 'r50-473-k1', '--skip', 'train',
       '--repeats', '1', '--warmup', '0', '--peak-sizes', '512',
       '--output', str(tmp_path / 'o.json')])
  r = results['configs'][0]
  # Same computation: torch's FLOP count (convs and matmuls) within 10% of XLA's (all ops).
  for part in ('eval', 'backbone'):
    assert r['original'][part]['torch_flops'] == pytest.approx(r['ours'][part]['flops'], rel=0.1)
    assert r['original'][part]['episodes_per_s'] > 0
