"""The input benchmark: its figures on hand-made cases, a tiny run (fast), real size (slow)."""

import json
import os
import time

import ml_collections
import pytest

from mmnet_jax import benchmark_input

SMALL = ['--size', '65', '--min-image', '64', '--max-image', '96', '--num-images', '150',
         '--batches', '1', '--min-class-pixels', '64', '--model', 'none', '--settle', '0.2']


def test_count_raw_samples_sums_the_last_field_of_each_stack_line():
  raw = ('<module> (bench.py:3);run (a b.py:10) 7\n'
         'build (pipeline.py:340);numpy_function (x.py:1) 12\n'
         '\n'
         '_bootstrap (threading.py:1002) 1\n')
  assert benchmark_input.count_raw_samples(raw) == 20
  assert benchmark_input.count_raw_samples('') == 0


def test_gil_figures():
  g = benchmark_input.gil_figures(samples=50, rate=100, episodes=20)
  assert g['gil_seconds'] == pytest.approx(0.5)
  assert g['gil_ms_per_episode'] == pytest.approx(25.0)


def test_projection_scales_by_2core_efficiency_and_caps_by_gil():
  p = benchmark_input.projection(per_core=10.0, two_core=15.0, gil_ms=None)
  assert p['efficiency_2core'] == pytest.approx(0.75)
  assert p['episodes_per_s'] == pytest.approx(10 * 96 * 0.75)
  assert p['bound'] == 'cores' and p['gil_ceiling'] is None
  p = benchmark_input.projection(per_core=10.0, two_core=15.0, gil_ms=4.0)
  assert p['gil_ceiling'] == pytest.approx(250.0)
  assert p['episodes_per_s'] == pytest.approx(250.0) and p['bound'] == 'gil'
  p = benchmark_input.projection(per_core=10.0, two_core=24.0, gil_ms=None)  # superlinear
  assert p['efficiency_2core'] == pytest.approx(1.2)
  assert p['episodes_per_s'] == pytest.approx(10 * 96)


def test_consumption_follows_its_derivation():
  by_name = {c['name']: c['episodes_per_s'] for c in benchmark_input.consumption()}
  assert by_name['H100/H200'] == pytest.approx(0.4 * 989e12 / 563e9)
  assert by_name['TPU v5e-8 host'] == pytest.approx(8 * by_name['TPU v5e chip'])


def test_set_pipeline_with_and_without_the_field():
  c = ml_collections.ConfigDict({'dataset': {'name': 'x'}})
  assert benchmark_input.set_pipeline(c, 'graph') == 'pipeline field absent'
  assert 'pipeline' not in c.dataset
  c = ml_collections.ConfigDict({'dataset': {'name': 'x', 'pipeline': 'numpy'}})
  assert benchmark_input.set_pipeline(c, 'graph') == 'set'
  assert c.dataset.pipeline == 'graph'


def test_pipeline_flag_names_one_or_several():
  assert benchmark_input.parse_args([]).pipeline == ('numpy', 'graph')
  assert benchmark_input.parse_args(['--pipeline', 'graph,service']).pipeline == (
      'graph', 'service')
  assert benchmark_input.parse_args(['--pipeline', 'all']).pipeline == (
      'numpy', 'graph', 'service')


def test_pipeline_flag_rejects_unknown_names(capsys):
  with pytest.raises(SystemExit):
    benchmark_input.parse_args(['--pipeline', 'graph,tpu'])
  assert "unknown pipeline(s) ['tpu']" in capsys.readouterr().err


def check(results, size, pipelines):
  assert results['size'] == size
  assert set(results['pipelines']) == set(pipelines)
  two_cores = results['cpus_available'] >= 2
  sampled = results['gil_profiler'] == 'py-spy'
  assert sampled == (benchmark_input.py_spy_path() is not None) or (
      results['gil_profiler'] == 'not measured (--profiler none)')
  if benchmark_input.py_spy_path() is None:
    assert results['gil_profiler'] == 'py-spy not installed'
  for r in results['pipelines'].values():
    assert r['pipeline_field'] in ('set', 'pipeline field absent')
    for n, run in r['runs'].items():
      for s in run['streams'].values():   # the child's own affinity, with TF running
        assert len(s['affinity']) == int(n)
        assert s['episodes_per_s'] == pytest.approx(s['episodes'] / s['seconds'])
    assert set(r['streams']) == {'train_1shot', 'train_5shot', 'eval_1shot'}
    for s in r['streams'].values():
      assert s['episodes_per_s_1core'] > 0
      assert s['cpu_ms_per_episode_1core'] >= 0
      if sampled:
        assert s['gil_ms_per_episode'] >= 0 and s['gil_note'] is None
        assert isinstance(r['runs']['1']['streams']['train_1shot']['gil_samples'], int)
      else:
        assert s['gil_ms_per_episode'] is None and s['gil_note']
      if two_cores:
        assert s['episodes_per_s_2core'] > 0 and s['cpu_ms_per_episode_2core'] >= 0
        assert s['ratio_2core_1core'] == pytest.approx(
            s['episodes_per_s_2core'] / s['episodes_per_s_1core'])
        p = s['projection']
        assert p['episodes_per_s'] > 0
        if p['gil_ceiling'] is not None:
          assert p['episodes_per_s'] <= p['gil_ceiling']
  assert [c['name'] for c in results['consumption']][0] == 'H100/H200'
  # No speed comparison between streams or core counts: under a loaded host they cross.


def test_smoke_tiny_sizes_writes_json(tmp_path):
  out = tmp_path / 'bench.json'
  results = benchmark_input.main(SMALL + ['--pipeline', 'numpy', '--output', str(out)])
  check(results, 65, ['numpy'])
  written = json.loads(out.read_text())
  assert written['pipelines']['numpy']['runs']['1']['streams']['train_1shot']['episodes'] == 4
  assert len(os.sched_getaffinity(0)) < 2 or set(written['pipelines']['numpy']['runs']) == {
      '1', '2'}
  assert 'train_step' not in results
  text = benchmark_input.format_results(results)
  assert 'train_1shot' in text and 'GIL ms/ep' in text and 'H100/H200' in text


@pytest.mark.slow  # ~90 s: two runs each start a dispatcher and two worker processes
def test_smoke_service_counts_the_workers_cpu(tmp_path):
  results = benchmark_input.main(SMALL + ['--pipeline', 'service', '--service-workers', '2'])
  check(results, 65, ['service'])
  for n, run in results['pipelines']['service']['runs'].items():
    s = run['streams']['train_1shot']
    assert s['service_workers'] == 2
    # the CPU column holds the training process's and the two workers' CPU
    assert s['cpu_ms_per_episode'] >= s['client_cpu_ms_per_episode'] > 0
  assert 'training process' in benchmark_input.format_results(results)


def test_process_cpu_seconds_reads_proc():
  spent = benchmark_input.process_cpu_seconds(os.getpid())
  assert 0 < spent <= time.process_time() + 0.05


@pytest.mark.slow
def test_real_size_both_pipelines_with_train_step(tmp_path):
  results = benchmark_input.main(['--model', 'tiny', '--batches', '3', '--train-steps', '1',
                                  '--output', str(tmp_path / 'b.json')])
  check(results, 473, ['numpy', 'graph'])
  assert results['train_step']['episodes_per_s'] > 0


def test_gil_column_says_why_it_is_empty(monkeypatch):
  assert benchmark_input.gil_state(benchmark_input.parse_args(['--profiler', 'none'])) == (
      'not measured (--profiler none)')
  monkeypatch.setattr(benchmark_input, 'py_spy_path', lambda: None)
  assert benchmark_input.gil_state(benchmark_input.parse_args([])) == 'py-spy not installed'
