"""Input-pipeline throughput next to what the train step consumes: `python -m mmnet_jax.benchmark_input`.

Builds a synthetic split with real-size images (375-500 px sides, PNG-encoded in TFDS
array_record, as the benchmark builder writes them) in a temporary data dir, then times the real
tf.data pipelines of `data/streams.py` (config.dataset.pipeline `numpy`, `graph`, or both):
* train, full PFENet augmentation (RandScale, RandRotate, blur, flip, crop to --size), 1-shot and
  5-shot, batches of --batch-size;
* eval, PFENet pad-resize to --size, 1-shot.
Each pipeline is measured in child processes pinned to 1 and to 2 cores before TensorFlow is
imported (its thread pools size themselves to the affinity): episodes/s, process CPU ms per
episode, and, in the 1-core child, GIL-held ms per episode from py-spy's GIL samples over the
timed window. From these, one input process's episodes/s on a 96-core host (per-core rate x 96 x
the 2-core efficiency, capped at 1000 / GIL ms), printed beside what one accelerator consumes.
With --model, also the jitted train step (forward, backward, SGD update) of --model at --size,
batch --batch-size, 1-shot, on random batches, in this process.

The first batch of each stream (tf.data start-up, thread pools) and the first --warmup train
steps (compilation) are not timed. Prints a table and, with --output, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from mmnet_jax import workdir_io


STREAMS = ('train_1shot', 'train_5shot', 'eval_1shot')
# config.dataset.pipeline: tf.numpy_function / TF decode+augment / the same on tf.data service
# workers (local worker processes; their CPU is added to the stream's CPU column).
PIPELINES = ('numpy', 'graph', 'service')
CHOICES = {'both': ('numpy', 'graph'), 'all': PIPELINES}
CORE_COUNTS = (1, 2)
PROJECTED_CORES = 96
PROTOCOL = 'BENCH_INPUT '   # prefix of the child's messages on its stdout (TF may print too)

# What one accelerator's train step consumes, at 40% of its dense bf16 peak on the 1-shot train
# step at 473 (563 GFLOP per episode, XLA's count): episodes/s = chips * 0.4 * peak / 563 GFLOP.
# Peaks (TFLOP/s per chip): H100/H200 989, TPU v5e 197, v6e 918. The issue's rounded figures are
# kept beside the derived ones (its v6e figure, ~330, is half of what its own derivation gives).
STEP_GFLOP = 563
ACCELERATOR_SHARE = 0.4
CONSUMERS = (  # (name, chips, bf16 peak TFLOP/s per chip, the issue's figure in episodes/s)
    ('H100/H200', 1, 989, 700),
    ('TPU v5e chip', 1, 197, 140),
    ('TPU v5e-8 host', 8, 197, 1100),
    ('TPU v6e chip', 1, 918, 330),
)


def pipeline_list(text: str) -> tuple:
  """--pipeline's value as the tuple of pipelines it names."""
  if text in CHOICES:
    return CHOICES[text]
  names = tuple(t.strip() for t in text.split(','))
  unknown = [n for n in names if n not in PIPELINES]
  if unknown:
    raise argparse.ArgumentTypeError(
        f'unknown pipeline(s) {unknown}; expected names of {list(PIPELINES)}, comma-separated, '
        f'or one of {list(CHOICES)}')
  return names


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--size', type=int, default=473, help='train crop and eval canvas side')
  p.add_argument('--batch-size', type=int, default=4, help='episodes per batch (MM-Net: 4)')
  p.add_argument('--batches', type=int, default=6, help='timed batches per input stream')
  p.add_argument('--pipeline', default='both', type=pipeline_list,
                 help="config.dataset.pipeline(s) to measure in this run: one of "
                      f"{list(PIPELINES)}, a comma-separated list of them, 'both' (numpy and "
                      "graph) or 'all'")
  p.add_argument('--service-workers', type=int, default=2,
                 help='local tf.data service worker processes (--pipeline service)')
  p.add_argument('--profiler', default='py-spy', choices=['py-spy', 'none'],
                 help="GIL sampler ('none': no GIL column)")
  p.add_argument('--rate', type=int, default=200, help='py-spy samples per second')
  p.add_argument('--drain', type=int, default=2,
                 help='untimed batches after the pause, before the timed window (they empty '
                      'the prefetch buffer filled while the child waited)')
  p.add_argument('--settle', type=float, default=1.0,
                 help='seconds between a stream\'s first batch and its timed window, in every '
                      'run alike (the sampler attaches meanwhile; equal prefetch head start)')
  p.add_argument('--model', default='resnet50', choices=['resnet50', 'tiny', 'none'],
                 help="train-step backbone ('none': skip the train step)")
  p.add_argument('--train-steps', type=int, default=2, help='timed train steps')
  p.add_argument('--warmup', type=int, default=1, help='untimed train steps (compilation)')
  p.add_argument('--min-image', type=int, default=375, help='smallest synthetic image side')
  p.add_argument('--max-image', type=int, default=500, help='largest synthetic image side')
  p.add_argument('--num-images', type=int, default=120, help='synthetic images per split')
  p.add_argument('--min-class-pixels', type=int, default=2048, help='pool size rule')
  p.add_argument('--data-dir', default='', help="TFDS data dir ('' -> a temporary one)")
  p.add_argument('--output', default='', help='write the results as JSON here')
  p.add_argument('--child-cpus', default='', help=argparse.SUPPRESS)   # a measurement process
  return p.parse_args(argv)


def consumption() -> list:
  """Episodes/s one accelerator's 1-shot train step consumes (CONSUMERS' derivation)."""
  return [{'name': name, 'episodes_per_s': chips * ACCELERATOR_SHARE * peak * 1e3 / STEP_GFLOP,
           'issue_episodes_per_s': issue} for name, chips, peak, issue in CONSUMERS]


def make_config(args, data_dir: str):
  """The default (MM-Net) config on a synthetic split of real-size images."""
  from mmnet_jax import default_config as default
  c = default.get_config()
  c.dataset.name = 'synthetic'
  c.dataset.data_dir = data_dir
  c.dataset.synthetic.num_train = args.num_images
  c.dataset.synthetic.num_val = args.num_images
  c.dataset.synthetic.min_size = args.min_image
  c.dataset.synthetic.max_size = args.max_image
  c.dataset.min_class_pixels = args.min_class_pixels
  c.train.crop_size = args.size
  c.train.batch_size = args.batch_size
  c.eval.size = args.size
  c.eval.batch_size = args.batch_size
  c.eval.max_label_size = max(args.max_image, 8)
  if args.model == 'tiny':
    c.model.backbone = 'tiny'
    c.model.freeze_backbone = False
  return c


def process_cpu_seconds(pid: int) -> float:
  """user + sys CPU seconds of process `pid` so far (/proc/PID/stat fields 14 and 15)."""
  with open(f'/proc/{pid}/stat') as f:
    fields = f.read().rsplit(')', 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def service_worker_pids() -> list:
  """The pids of this process's local tf.data service workers (none when not started)."""
  from mmnet_jax.data import service
  local = service._LOCAL  # pylint: disable=protected-access
  return [w.pid for w in local.workers] if local is not None else []


def time_window(stream, batches: int, batch_size: int, worker_pids=()) -> dict:
  """Wall and CPU time (user + sys, every thread) of the next `batches` batches: this
  process's, plus that of the service worker processes `worker_pids`."""
  workers = sum(process_cpu_seconds(p) for p in worker_pids)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(stream)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  workers = sum(process_cpu_seconds(p) for p in worker_pids) - workers
  episodes = batches * batch_size
  out = {'episodes': episodes, 'seconds': wall, 'cpu_seconds': cpu + workers,
         'episodes_per_s': episodes / wall,
         'cpu_ms_per_episode': 1000 * (cpu + workers) / episodes}
  if worker_pids:
    out.update(client_cpu_ms_per_episode=1000 * cpu / episodes,
               service_workers=len(worker_pids))
  return out


def set_pipeline(config, pipeline: str) -> str:
  """Sets config.dataset.pipeline; where the config has no such field yet, says so (the flag
  then has no effect) instead of adding one that nothing reads."""
  if 'pipeline' not in config.dataset:
    return 'pipeline field absent'
  config.dataset.pipeline = pipeline
  return 'set'


def usable_pool(split, classes, config, shots):
  """The pool over the classes of `classes` with >= shots + 1 images (a small synthetic split
  lacks some; the cost of an episode does not depend on its class)."""
  from mmnet_jax.data import pipeline
  pool = pipeline.train_pool(split, classes, config)
  usable = [c for c in classes if len(pool.support_lists[c]) >= shots + 1]
  if not usable:
    raise ValueError(f'no class of {split.name}/{split.split} has {shots + 1} images: raise '
                     f'--num-images')
  return pipeline.train_pool(split, usable, config)


def stream_makers(config, args) -> dict:
  """Stream name -> a function opening it (opened one at a time: each has its own workers)."""
  from mmnet_jax.data import dataset_registry
  from mmnet_jax.data import datasets
  from mmnet_jax.data import episodes as episodes_lib
  from mmnet_jax.data import streams
  train_classes, test_classes = datasets.fold_classes('synthetic', config.dataset.fold)

  def train(shots):
    c = config.copy_and_resolve_references()
    c.shots = shots
    split = dataset_registry.open_split(c.dataset, 'train')
    pool = usable_pool(split, train_classes, c, shots)
    return streams.train_dataset(pool, c, host_batch_size=args.batch_size)

  def evaluate():
    val = dataset_registry.open_split(config.dataset, 'val')
    pool = usable_pool(val, test_classes, config, 1)
    num = (1 + args.drain + args.batches) * args.batch_size   # first, drained, timed
    episode_list = episodes_lib.eval_episodes(pool, 1, num, 0)
    return streams.eval_dataset(val, episode_list, config, host_batch_size=args.batch_size)

  return {'train_1shot': lambda: train(1), 'train_5shot': lambda: train(5),
          'eval_1shot': evaluate}


def send(kind: str, value=None) -> None:
  print(PROTOCOL + json.dumps({'kind': kind, 'value': value}), flush=True)


def child_main(args) -> None:
  """A measurement process: pinned to --child-cpus before TensorFlow is imported (its thread
  pools size themselves to the affinity), then per stream: an untimed first batch (start-up),
  'ready', wait for 'go' on stdin (the parent's sampler is attached by then), --drain untimed
  batches (the prefetch head start of the wait), the timed window, 'done'."""
  os.sched_setaffinity(0, {int(c) for c in args.child_cpus.split(',')})
  config = make_config(args, args.data_dir)
  (pipeline,) = args.pipeline   # a child measures one
  field = set_pipeline(config, pipeline)
  if pipeline == 'service':
    config.dataset.service.local_workers = args.service_workers
  makers = stream_makers(config, args)
  send('hello', {'pid': os.getpid(), 'pipeline_field': field})
  for name, make in makers.items():
    stream = make()
    next(stream)
    send('ready', name)
    sys.stdin.readline()
    for _ in range(args.drain):
      next(stream)
    result = time_window(stream, args.batches, args.batch_size, service_worker_pids())
    result['drained_episodes'] = args.drain * args.batch_size
    result['affinity'] = sorted(os.sched_getaffinity(0))   # with TF's threads running
    stream.close()
    send('done', result)


def read_message(proc, kind: str):
  """The value of the child's next protocol message, which must be `kind`."""
  for line in proc.stdout:
    if line.startswith(PROTOCOL):
      message = json.loads(line[len(PROTOCOL):])
      if message['kind'] != kind:
        raise RuntimeError(f'expected {kind!r} from the measurement process, got {message}')
      return message['value']
  raise RuntimeError(f'the measurement process exited (rc {proc.wait()}) before {kind!r}')


def child_argv(args, cpus, pipeline: str, data_dir: str) -> list:
  flags = {'--child-cpus': ','.join(map(str, cpus)), '--pipeline': pipeline,
           '--data-dir': data_dir, '--size': args.size, '--batch-size': args.batch_size,
           '--batches': args.batches, '--drain': args.drain, '--min-image': args.min_image,
           '--max-image': args.max_image, '--num-images': args.num_images,
           '--min-class-pixels': args.min_class_pixels, '--model': args.model,
           '--service-workers': args.service_workers}
  return [sys.executable, '-m', 'mmnet_jax.benchmark_input'] + [
      str(x) for flag, value in flags.items() for x in (flag, value)]


def child_env() -> dict:
  """This environment with this package importable by `python -m` from anywhere."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (root, env.get('PYTHONPATH', '')) if p)
  return env


def py_spy_path():
  """py-spy on PATH or beside this interpreter (a virtualenv's bin is often not on PATH)."""
  found = shutil.which('py-spy') or os.path.join(os.path.dirname(sys.executable), 'py-spy')
  return found if os.access(found, os.X_OK) else None


def count_raw_samples(text: str) -> int:
  """Samples in py-spy's raw output: one line per distinct stack, 'frame;frame;... COUNT'
  (frames contain spaces, the count is the last field)."""
  return sum(int(line.rsplit(' ', 1)[1]) for line in text.splitlines() if line.strip())


def start_sampler(exe: str, pid: int, rate: int, raw_path: str, cpus):
  """py-spy recording the GIL-holding thread of `pid`; returns once it samples. --gil keeps
  only samples where some thread holds the GIL; --nonblocking does not pause the child."""
  cmd = [exe, 'record', '--pid', str(pid), '--gil', '--nonblocking', '--format', 'raw',
         '--rate', str(rate), '-o', raw_path]
  if cpus and shutil.which('taskset'):   # off the child's cores
    cmd = ['taskset', '-c', ','.join(map(str, cpus))] + cmd
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:
    if 'Sampling process' in line:
      return proc
    lines.append(line.strip())
  raise RuntimeError(f'py-spy did not attach (rc {proc.wait()}): {" ".join(lines)[-300:]}')


def stop_sampler(proc, raw_path: str) -> int:
  """Stops py-spy (it writes its file on Ctrl-C) and counts the GIL-held samples."""
  proc.send_signal(signal.SIGINT)
  proc.communicate(timeout=120)
  with open(raw_path) as f:
    return count_raw_samples(f.read())


def gil_figures(samples: int, rate: int, episodes: int) -> dict:
  seconds = samples / rate
  return {'gil_samples': samples, 'gil_rate': rate, 'gil_seconds': seconds,
          'gil_ms_per_episode': 1000 * seconds / episodes}


def measure_child(args, cpus, pipeline: str, data_dir: str, sampler, tmp: str) -> dict:
  """One child pinned to `cpus` times the three streams; `sampler` (py-spy's path and the
  cpus to pin it to, or None) records the GIL over each timed window."""
  proc = subprocess.Popen(child_argv(args, cpus, pipeline, data_dir), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env=child_env())
  try:
    hello = read_message(proc, 'hello')
    streams = {}
    for _ in STREAMS:
      name = read_message(proc, 'ready')
      raw_path = os.path.join(tmp, f'{pipeline}_{len(cpus)}_{name}.raw')
      spy, gil, ready = None, {}, time.perf_counter()
      if sampler:
        try:
          spy = start_sampler(sampler[0], hello['pid'], args.rate, raw_path, sampler[1])
        except RuntimeError as e:
          gil = {'gil_note': str(e)}
      time.sleep(max(0.0, ready + args.settle - time.perf_counter()))
      proc.stdin.write('go\n')
      proc.stdin.flush()
      result = read_message(proc, 'done')
      if result['affinity'] != sorted(cpus):
        raise RuntimeError(f'the child ran on cpus {result["affinity"]}, not {sorted(cpus)}')
      if spy:
        # The sampler saw the drained batches' work too: per episode over both.
        episodes = result['episodes'] + result['drained_episodes']
        gil = gil_figures(stop_sampler(spy, raw_path), args.rate, episodes)
      streams[name] = {**result, **gil}
    proc.wait(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  return {'cpus': list(cpus), 'pipeline_field': hello['pipeline_field'], 'streams': streams}


def projection(per_core: float, two_core: float, gil_ms, cores: int = PROJECTED_CORES) -> dict:
  """Episodes/s of one input process on a `cores`-core host: the 1-core throughput x cores,
  scaled by the measured 2-core efficiency, capped by the GIL (a process whose episode holds
  the GIL gil_ms cannot exceed 1000 / gil_ms episodes/s, whatever its cores). An efficiency
  above 1 (a 1-core run slowed by its own thread pools) is not extrapolated: capped at 1."""
  efficiency = two_core / (2 * per_core)
  scaled = per_core * cores * min(efficiency, 1.0)
  ceiling = 1000 / gil_ms if gil_ms else None
  projected = scaled if ceiling is None else min(scaled, ceiling)
  bound = 'cores' if ceiling is None or scaled <= ceiling else 'gil'
  return {'cores': cores, 'efficiency_2core': efficiency, 'cores_scaled': scaled,
          'gil_ceiling': ceiling, 'episodes_per_s': projected, 'bound': bound}


def stream_summary(runs: dict, name: str) -> dict:
  """One stream's columns over the 1- and 2-core runs (GIL from the 1-core run, where py-spy
  sat on the other core)."""
  one = runs[1]['streams'][name]
  out = {'episodes_per_s_1core': one['episodes_per_s'],
         'cpu_ms_per_episode_1core': one['cpu_ms_per_episode'],
         'gil_ms_per_episode': one.get('gil_ms_per_episode'), 'gil_note': one.get('gil_note'),
         'client_cpu_ms_per_episode_1core': one.get('client_cpu_ms_per_episode')}
  if 2 in runs:
    two = runs[2]['streams'][name]
    out.update({'episodes_per_s_2core': two['episodes_per_s'],
                'cpu_ms_per_episode_2core': two['cpu_ms_per_episode'],
                'ratio_2core_1core': two['episodes_per_s'] / one['episodes_per_s'],
                'projection': projection(one['episodes_per_s'], two['episodes_per_s'],
                                         out['gil_ms_per_episode'])})
  return out


def measure_pipeline(args, pipeline: str, data_dir: str, tmp: str, gil_state: str) -> dict:
  """The 1- and 2-core runs of one pipeline and its per-stream columns."""
  available = sorted(os.sched_getaffinity(0))
  exe = py_spy_path() if gil_state == 'py-spy' else None
  runs = {}
  for n in CORE_COUNTS:
    if n <= len(available):
      sampler = (exe, available[n:]) if exe and n == 1 else None
      runs[n] = measure_child(args, available[:n], pipeline, data_dir, sampler, tmp)
  streams = {name: stream_summary(runs, name) for name in STREAMS}
  for s in streams.values():
    s['gil_note'] = s['gil_note'] or (None if exe else gil_state)
  return {'pipeline_field': runs[1]['pipeline_field'], 'streams': streams,
          'runs': {str(n): r for n, r in runs.items()}}


def train_step_rate(config, args) -> dict:
  """Episodes/s of the jitted train step (1-shot) on a random batch of the train shapes."""
  import jax
  import jax.numpy as jnp
  from mmnet_jax import train
  from mmnet_jax import train_state
  from mmnet_jax.models import registry
  model = registry.build(config)
  rng = np.random.default_rng(0)
  b, s, k = args.batch_size, args.size, 1
  label = rng.integers(0, 2, (b, s, s)).astype(np.int32)
  batch = {
      'query_img': jnp.asarray(rng.standard_normal((b, s, s, 3)), jnp.float32),
      'query_label': jnp.asarray(label),
      'support_imgs': jnp.asarray(rng.standard_normal((b, k, s, s, 3)), jnp.float32),
      'support_labels': jnp.asarray(label[:, None]),
  }
  start = time.perf_counter()
  state, tx = train_state.create_state(model, config, total_steps=100)
  step = jax.jit(train.make_train_step(model, tx, config))
  for _ in range(args.warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.train_steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  return {'model': args.model, 'device': str(jax.devices()[0].device_kind),
          'episodes_per_s': args.train_steps * b / seconds,
          'seconds_per_step': seconds / args.train_steps,
          'init_and_compile_seconds': compile_seconds, 'steps': args.train_steps}


def gil_state(args) -> str:
  """'py-spy' when the GIL is sampled, else why the column is empty."""
  if args.profiler == 'none':
    return 'not measured (--profiler none)'
  return 'py-spy' if py_spy_path() else 'py-spy not installed'


def run(args) -> dict:
  """Builds the data, measures, returns the results dict."""
  with tempfile.TemporaryDirectory(prefix='mmnet_bench_') as tmp:
    data_dir = args.data_dir or tmp
    config = make_config(args, data_dir)
    from mmnet_jax.data import dataset_registry
    start = time.perf_counter()
    dataset_registry.open_split(config.dataset, 'train')
    dataset_registry.open_split(config.dataset, 'val')
    build_seconds = time.perf_counter() - start
    gil = gil_state(args)
    pipelines = args.pipeline
    results = {
        'size': args.size, 'batch_size': args.batch_size, 'batches': args.batches,
        'images': f'synthetic {args.min_image}-{args.max_image} px, png',
        'cpu_count': os.cpu_count(), 'cpus_available': len(os.sched_getaffinity(0)),
        'machine': platform.processor() or platform.machine(),
        'data_build_seconds': build_seconds, 'gil_profiler': gil,
        'gil_rate': args.rate if gil == 'py-spy' else None,
        'pipelines': {p: measure_pipeline(args, p, data_dir, tmp, gil) for p in pipelines},
        'consumption': consumption(),
    }
    if args.model != 'none':
      results['train_step'] = train_step_rate(config, args)
  return results


def _num(value, fmt: str, width: int) -> str:
  return f'{value:{width}{fmt}}' if value is not None else f'{"-":>{width}}'


def format_results(results: dict) -> str:
  """Per pipeline a table of the streams' columns, then what one accelerator consumes."""
  lines = [f'input pipelines at {results["size"]}x{results["size"]}, batch '
           f'{results["batch_size"]}, {results["cpus_available"]} CPU cores available, '
           f'{results["images"]} images; GIL: {results["gil_profiler"]}']
  for pipeline, r in results['pipelines'].items():
    note = '' if r['pipeline_field'] == 'set' else f' ({r["pipeline_field"]}: no effect)'
    lines.append(f'pipeline {pipeline}{note}')
    lines.append(f'  {"stream":<12} {"ep/s 1c":>8} {"ep/s 2c":>8} {"2c/1c":>6} '
                 f'{"CPU ms/ep 1c":>12} {"CPU ms/ep 2c":>12} {"GIL ms/ep":>9} '
                 f'{"96-core ep/s (bound)":>20}')
    for name, s in r['streams'].items():
      proj = s.get('projection')
      proj_text = f'{proj["episodes_per_s"]:.0f} ({proj["bound"]})' if proj else '-'
      lines.append(
          f'  {name:<12} {_num(s["episodes_per_s_1core"], ".2f", 8)} '
          f'{_num(s.get("episodes_per_s_2core"), ".2f", 8)} '
          f'{_num(s.get("ratio_2core_1core"), ".2f", 6)} '
          f'{_num(s["cpu_ms_per_episode_1core"], ".1f", 12)} '
          f'{_num(s.get("cpu_ms_per_episode_2core"), ".1f", 12)} '
          f'{_num(s["gil_ms_per_episode"], ".1f", 9)} {proj_text:>20}'
          + (f'  [{s["gil_note"]}]' if s['gil_note'] else '')
          + (f'  [training process {s["client_cpu_ms_per_episode_1core"]:.1f} CPU ms/ep '
             'of the 1c column]' if s.get('client_cpu_ms_per_episode_1core') else ''))
  lines.append(f'one accelerator consumes ({ACCELERATOR_SHARE:.0%} of bf16 peak, '
               f'{STEP_GFLOP} GFLOP per 1-shot train episode at 473):')
  for c in results['consumption']:
    lines.append(f'  {c["name"]:<16} {c["episodes_per_s"]:7.0f} episodes/s '
                 f'(the issue: ~{c["issue_episodes_per_s"]:,})')
  step = results.get('train_step')
  if step:
    lines.append(f'train step ({step["model"]}, 1-shot, {step["device"]}): '
                 f'{step["episodes_per_s"]:8.2f} episodes/s '
                 f'({step["seconds_per_step"]:.2f} s/step; init+compile '
                 f'{step["init_and_compile_seconds"]:.0f} s)')
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  if args.child_cpus:
    return child_main(args)
  results = run(args)
  print(format_results(results), flush=True)
  if args.output:
    workdir_io.write_json_atomic(args.output, results)
  return results


if __name__ == '__main__':
  main()
