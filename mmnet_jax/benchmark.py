"""Speed of the train and eval steps: `python -m mmnet_jax.benchmark`.

For each configuration (`{backbone}-{size}-k{shots}`: r50-473-k1, r50-473-k5, r101-641-k1,
r101-641-k5, or tiny-65-k1 for tests) it measures on the default device, with random weights
and random batches of the real shapes:
* compile time (lower + compile of the jitted step);
* train step (forward, backward, SGD update; donated state, as `train.py` runs it) and eval
  step (`evaluate.make_eval_step`): median seconds over --repeats calls after --warmup
  untimed ones, each call waited for with block_until_ready; seconds per episode = / batch;
* peak memory: XLA's memory analysis of the compiled step (arguments + outputs - donated
  aliases + temporaries) and the process's peak RSS while the step runs (VmHWM, reset before);
* achieved FLOP/s: XLA's cost analysis of the compiled step / median seconds, against the
  device's measured peak (a large float32 matmul, `measure_peak`);
* the frozen backbone alone (eval mode, called as the step calls it: the query batch, then each
  shot's), and its convolutions alone, each distinct one timed by itself: their FLOP/s as a
  share of the peak, i.e. how well the convolutions use the device;
and, with --input, the tf.data pipelines' episodes/s (`benchmark_input.input_rates`).
Prints a table and, with --output, writes JSON. docs/benchmarks.md has the results.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import statistics
import time
from typing import Any, Callable

import numpy as np

from mmnet_jax import host_allocator
from mmnet_jax import workdir_io

BACKBONE_NAMES = {'r50': 'resnet50', 'r101': 'resnet101', 'tiny': 'tiny'}
# HSNet's backbones are torchvision's (models/hsnet_spec.py).
HSNET_BACKBONE_NAMES = {'r50': 'resnet50_tv', 'r101': 'resnet101_tv', 'tiny': 'tiny'}
DEFAULT_CONFIGS = ('r50-473-k1', 'r50-473-k5', 'r101-641-k1', 'r101-641-k5')
# HSNet's own input side is 400 (--model hsnet).
HSNET_CONFIGS = ('r50-400-k1', 'r50-400-k5', 'r101-400-k1', 'r101-400-k5')
QUICK_CONFIGS = ('r50-473-k1',)


def parse_config_name(name: str, model: str = 'mmnet') -> dict:
  """'r50-473-k5' -> {'name', 'backbone': 'resnet50', 'size': 473, 'shots': 5, 'model'}; the
  size must be one the model takes (its spec's input_size_ok: 8k + 1 for MM-Net / PFENet)."""
  from mmnet_jax.models import registry
  match = re.fullmatch(r'(r50|r101|tiny)-(\d+)-k(\d+)', name)
  if not match:
    raise ValueError(f'--configs: {name!r} is not {{r50|r101|tiny}}-{{size}}-k{{shots}} '
                     f'(e.g. r50-473-k1)')
  backbone, size, shots = match.group(1), int(match.group(2)), int(match.group(3))
  spec = registry.get(model)
  if not spec.input_size_ok(size) or shots < 1:
    rule = 'size = 8n + 1 >= 9' if spec.input_size_rule == registry.SIZE_RULE else (
        f'size {spec.input_size_rule}')
    raise ValueError(f'--configs: {name!r} needs {rule} and shots >= 1')
  names = HSNET_BACKBONE_NAMES if model == 'hsnet' else BACKBONE_NAMES
  return {'name': name, 'backbone': names[backbone], 'size': size, 'shots': shots,
          'model': model}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--configs', default='',
                 help='comma-separated {r50|r101|tiny}-{size}-k{shots} (default: '
                 f'{",".join(DEFAULT_CONFIGS)}; HSNet: {",".join(HSNET_CONFIGS)})')
  p.add_argument('--model', default='mmnet',
                 help='config.model.name: mmnet, pfenet, hsnet or a registered model')
  p.add_argument('--quick', action='store_true',
                 help=f'only {",".join(QUICK_CONFIGS)} (a 2-core CPU takes minutes per config)')
  p.add_argument('--train-batch', type=int, default=4, help='train episodes per step (MM-Net: 4)')
  p.add_argument('--eval-batch', type=int, default=1, help='eval episodes per step (MM-Net: 1)')
  p.add_argument('--repeats', type=int, default=3, help='timed calls per step (median)')
  p.add_argument('--warmup', type=int, default=1, help='untimed calls after compilation')
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--attention-chunk', type=int, default=None,
                 help='config.model.attention_chunk (default: the config\'s, 1024)')
  p.add_argument('--skip', default='',
                 help='comma-separated parts to skip: train, eval, backbone, convs (the backbone '
                 'convolutions timed one by one)')
  p.add_argument('--peak-sizes', default='1024,2048,4096',
                 help='sides of the float32 matmuls whose best FLOP/s is the peak')
  p.add_argument('--input', action='store_true',
                 help='also time the tf.data pipelines (benchmark_input, real-size images)')
  p.add_argument('--input-size', type=int, default=473, help='train crop / eval canvas of --input')
  p.add_argument('--input-batches', type=int, default=4, help='timed batches per input stream')
  p.add_argument('--output', default='', help='write the results as JSON here')
  return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Measurement helpers (pure apart from the clock and /proc).

def median_seconds(call: Callable[[], Any], repeats: int, warmup: int) -> dict:
  """Runs call() warmup + repeats times, waiting for each result; median of the timed ones."""
  import jax
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return {'median_s': statistics.median(times), 'min_s': min(times), 'times_s': times}


def reset_peak_rss() -> bool:
  """Resets the process's peak RSS (Linux: '5' to /proc/self/clear_refs); False if unsupported."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def peak_rss_bytes() -> int | None:
  """Peak resident set size since the last reset (VmHWM), or since start; None if unknown."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  except (ImportError, OSError):
    return None


def cost_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled program from XLA's cost analysis (None if unavailable)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    return None
  if isinstance(cost, (list, tuple)):   # older jax: one dict per program
    cost = cost[0] if cost else {}
  flops = (cost or {}).get('flops')
  return float(flops) if flops is not None and flops > 0 else None


def xla_memory(compiled) -> dict:
  """XLA's memory analysis in bytes, with peak = arguments + outputs - aliases + temporaries."""
  try:
    ma = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}
  if ma is None:
    return {}
  keys = ('temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes',
          'alias_size_in_bytes')
  out = {k: int(getattr(ma, k, 0) or 0) for k in keys}
  out['peak_bytes'] = (out['temp_size_in_bytes'] + out['argument_size_in_bytes'] +
                       out['output_size_in_bytes'] - out['alias_size_in_bytes'])
  return out


def compile_jitted(jitted, *args) -> tuple[Any, float]:
  """(compiled, seconds) of lower + compile for these arguments."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def measure_peak(sizes=(1024, 2048, 4096), repeats: int = 5) -> dict:
  """The device's float32 matmul FLOP/s: the best call of jitted (n x n) @ (n x n) over `sizes`.

  The best, not the median: a shared machine only ever slows calls down, and the peak is what
  the device can do. Several sizes because on a CPU the fastest is not always the largest.
  """
  import jax
  import jax.numpy as jnp
  matmul = jax.jit(lambda x, y: x @ y)
  per_size = {}
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    timing = median_seconds(lambda: matmul(a, b), repeats, warmup=1)
    per_size[str(n)] = 2.0 * n ** 3 / timing['min_s']
  best = max(per_size, key=per_size.get)
  return {'matmul_size': int(best), 'flops': 2.0 * int(best) ** 3,
          'flops_per_s': per_size[best], 'per_size_flops_per_s': per_size}


# ---------------------------------------------------------------------------------------------
# The steps.

def make_config(spec: dict, train_batch: int, dtype: str = 'float32', chunk: int | None = None):
  """The default config of the spec's model (MM-Net unless it names one) at its backbone, size
  and shots."""
  from mmnet_jax import default_config as default
  config = default.get_config(f'shots={spec["shots"]}', model=spec.get('model', 'mmnet'))
  config.model.backbone = spec['backbone']
  config.model.dtype = dtype
  if chunk is not None and 'attention_chunk' in config.model:
    config.model.attention_chunk = chunk
  config.train.crop_size = spec['size']
  config.train.batch_size = train_batch
  config.eval.size = spec['size']
  if spec['backbone'] == 'tiny':   # the runlocal model: small widths, trainable backbone
    default.runlocal_model(config)
  return config


def random_batch(batch: int, shots: int, size: int, seed: int = 0) -> dict:
  """Random normalised images and labels (0/1 blobs of random pixels, a 255 band), as arrays."""
  import jax.numpy as jnp
  rng = np.random.default_rng(seed)
  labels = (rng.random((batch, 1 + shots, size, size)) < 0.3).astype(np.int32)
  labels[..., -4:, :] = 255
  return {
      'query_img': jnp.asarray(rng.standard_normal((batch, size, size, 3)), jnp.float32),
      'query_label': jnp.asarray(labels[:, 0]),
      'support_imgs': jnp.asarray(rng.standard_normal((batch, shots, size, size, 3)),
                                  jnp.float32),
      'support_labels': jnp.asarray(labels[:, 1:]),
  }


def init_state(model, config):
  """A fresh train state (random init) and its optimiser, as `train_state.create_state`."""
  from mmnet_jax import train_state
  return train_state.create_state(model, config, total_steps=1000)


def unchunked(model):
  """The model with attention_chunk 0: XLA's cost analysis counts a lax.map body once, not
  once per chunk, so FLOPs are counted on the unchunked program (the same arithmetic)."""
  return model.clone(attention_chunk=0) if getattr(model, 'attention_chunk', 0) else model


def step_flops(make_step, model, compiled, *args) -> float | None:
  """XLA's FLOPs of make_step(model)(*args): of `compiled` itself unless the model is chunked."""
  import jax
  plain = unchunked(model)
  if plain is model:
    return cost_flops(compiled)
  return cost_flops(jax.jit(make_step(plain)).lower(*args).compile())


def bench_train(model, config, state, tx, batch: dict, repeats: int, warmup: int) -> dict:
  """Compile and time the jitted train step (state donated) on `batch`."""
  import jax
  from mmnet_jax import train
  step = jax.jit(train.make_train_step(model, tx, config), donate_argnums=(0,))
  state = jax.tree_util.tree_map(lambda x: x.copy(), state)   # donated below: keep the caller's
  compiled, compile_s = compile_jitted(step, state, batch)
  flops = step_flops(lambda m: train.make_train_step(m, tx, config), model, compiled, state,
                     batch)
  holder = {'state': state}

  def call():
    holder['state'], metrics = compiled(holder['state'], batch)
    return metrics
  reset_peak_rss()
  timing = median_seconds(call, repeats, warmup)
  return dict(timing, compile_s=compile_s, flops=flops,
              xla_memory=xla_memory(compiled), peak_rss_bytes=peak_rss_bytes())


def bench_eval(model, variables: dict, batch: dict, repeats: int, warmup: int) -> dict:
  """Compile and time `evaluate.make_eval_step` (as the Evaluator jits it) on `batch`."""
  import jax
  from mmnet_jax import evaluate
  step = jax.jit(evaluate.make_eval_step(model))
  eval_batch = {k: batch[k] for k in ('query_img', 'support_imgs', 'support_labels')}
  compiled, compile_s = compile_jitted(step, variables, eval_batch)
  flops = step_flops(evaluate.make_eval_step, model, compiled, variables, eval_batch)
  reset_peak_rss()
  timing = median_seconds(lambda: compiled(variables, eval_batch), repeats, warmup)
  return dict(timing, compile_s=compile_s, flops=flops,
              xla_memory=xla_memory(compiled), peak_rss_bytes=peak_rss_bytes())


def episode_images(batch: dict):
  """(K+1, B, H, W, 3): the query batch, then each shot's, as the model calls its backbone."""
  import jax.numpy as jnp
  shots = batch['support_imgs'].shape[1]
  return jnp.stack([batch['query_img']] + [batch['support_imgs'][:, k] for k in range(shots)])


def backbone_forward(backbone_name: str, dtype: str = 'float32'):
  """f(backbone_variables, images) -> per call (layer2, layer3, layer4): the backbone alone,
  eval mode. images (G, B, H, W, 3) makes G calls of B images (as a step: the query, then each
  shot); (N, H, W, 3) one call."""
  from mmnet_jax.models import backbone as backbone_lib
  from mmnet_jax.models import conv
  net = backbone_lib.ResNetBackbone(backbone_name, dtype=conv.DTYPES[dtype])

  def forward(v, images):
    groups = images if images.ndim == 5 else images[None]
    return tuple(net.apply(v, g, True) for g in groups)
  return forward


def bench_backbone(backbone_name: str, variables: dict, images, repeats: int, warmup: int,
                   dtype: str = 'float32') -> dict:
  """Compile and time the backbone forward on `images` (backbone_forward's layouts)."""
  import jax
  sub = {'params': variables['params']['backbone'],
         'batch_stats': variables['batch_stats']['backbone']}
  fn = jax.jit(backbone_forward(backbone_name, dtype))
  compiled, compile_s = compile_jitted(fn, sub, images)
  timing = median_seconds(lambda: compiled(sub, images), repeats, warmup)
  return dict(timing, compile_s=compile_s, flops=cost_flops(compiled),
              images=math.prod(images.shape[:-3]))


# The ops that do the backbone's arithmetic: 3x3 (and 7x7) convolutions, and 1x1 convolutions,
# which models/conv.py writes as matrix products.
CONV_PRIMITIVES = ('conv_general_dilated', 'dot_general')


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for sub in (value if isinstance(value, (list, tuple)) else (value,)):
      if hasattr(sub, 'eqns') or hasattr(getattr(sub, 'jaxpr', None), 'eqns'):
        yield sub


def primitive_eqns(jaxpr, names) -> list:
  """The equations of primitives `names` in a (closed) jaxpr, sub-jaxprs included (each once)."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in names:
      found.append(eqn)
    for sub in _sub_jaxprs(eqn):
      found.extend(primitive_eqns(sub, names))
  return found


def count_primitive(jaxpr, names) -> int:
  """Occurrences of the primitive(s) `names` in a (closed) jaxpr, sub-jaxprs included."""
  return len(primitive_eqns(jaxpr, (names,) if isinstance(names, str) else tuple(names)))


def frozen_backbone_convs(model, config, state, tx, batch: dict) -> dict:
  """Convolution counts showing whether the train step differentiates through the backbone.

  Counts convolutions and matrix products (CONV_PRIMITIVES: 1x1 convolutions are matrix
  products) in the jaxprs of: the eval forward, the backbone forward (x the K+1 backbone calls
  of an episode), and the train step. Every non-backbone one adds at most 2 to the backward
  pass (input and kernel gradients), so a train step without backbone backward has at most
  eval + 2 x (eval - backbone); `backbone_backward_convs` is what it has beyond that bound
  (0 when the backbone is frozen).
  """
  import jax
  from mmnet_jax import evaluate
  from mmnet_jax import train
  model = unchunked(model)   # a chunk's rematerialised forward would add to the backward count
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  eval_batch = {k: batch[k] for k in ('query_img', 'support_imgs', 'support_labels')}
  n_eval = count_primitive(jax.make_jaxpr(evaluate.make_eval_step(model))(variables, eval_batch),
                           CONV_PRIMITIVES)
  sub = {'params': state['params']['backbone'], 'batch_stats': state['batch_stats']['backbone']}
  n_backbone = count_primitive(jax.make_jaxpr(backbone_forward(config.model.backbone))(
      sub, episode_images(batch)), CONV_PRIMITIVES)
  n_train = count_primitive(jax.make_jaxpr(train.make_train_step(model, tx, config))(
      state, batch), CONV_PRIMITIVES)
  bound = n_eval + 2 * (n_eval - n_backbone)
  return {'eval_convs': n_eval, 'backbone_convs': n_backbone, 'train_convs': n_train,
          'no_backbone_backward_bound': bound,
          'backbone_backward_convs': max(0, n_train - bound),
          'freeze_backbone': bool(config.model.freeze_backbone)}


def _op_signature(eqn) -> str:
  shapes = ','.join(f'{v.aval.dtype}{list(v.aval.shape)}' for v in eqn.invars)
  params = ','.join(f'{k}={v}' for k, v in sorted(eqn.params.items()))
  return f'{eqn.primitive.name}({shapes}; {params})'


def op_repeats(repeats: int, warmup: int) -> tuple[int, int]:
  """(repeats, warmup) for single ops: milliseconds each, so at least 10 and 3 (fewer calls
  of such short ops measured first-call effects, not the op)."""
  return max(repeats, 10), max(warmup, 3)


def bench_backbone_convs(backbone_name: str, variables: dict, images, repeats: int,
                         warmup: int, dtype: str = 'float32') -> dict:
  """The backbone's convolutions alone: each distinct one jitted and timed by itself.

  The backbone forward's conv_general_dilated and dot_general equations (every convolution,
  1x1 ones being matrix products) are grouped by shapes and parameters; each group's op runs on
  random inputs of its shapes, timed like the steps (op_repeats). seconds = sum of count x
  median, FLOPs = sum of count x XLA's count of the op: the FLOP/s of the convolutions without
  the BatchNorm, ReLU, residual and pooling passes between them (those are in `backbone`).
  """
  import jax
  sub = {'params': variables['params']['backbone'],
         'batch_stats': variables['batch_stats']['backbone']}
  jaxpr = jax.make_jaxpr(backbone_forward(backbone_name, dtype))(sub, images)
  groups: dict[str, list] = {}
  for eqn in primitive_eqns(jaxpr, CONV_PRIMITIVES):
    groups.setdefault(_op_signature(eqn), []).append(eqn)
  ops, total_s, total_flops, compile_s = [], 0.0, 0.0, 0.0
  for i, eqns in enumerate(groups.values()):
    eqn = eqns[0]
    keys = jax.random.split(jax.random.key(i), len(eqn.invars))
    args = [jax.random.normal(k, v.aval.shape, v.aval.dtype) for k, v in zip(keys, eqn.invars)]
    op = jax.jit(lambda *a, eqn=eqn: eqn.primitive.bind(*a, **eqn.params))
    compiled, seconds = compile_jitted(op, *args)
    compile_s += seconds
    timing = median_seconds(lambda: compiled(*args), *op_repeats(repeats, warmup))
    flops = cost_flops(compiled) or 0.0
    total_s += len(eqns) * timing['median_s']
    total_flops += len(eqns) * flops
    ops.append({'primitive': eqn.primitive.name,
                'shapes': [list(v.aval.shape) for v in eqn.invars], 'count': len(eqns),
                'median_s': timing['median_s'], 'flops': flops,
                'flops_per_s': flops / timing['median_s']})
  return {'median_s': total_s, 'flops': total_flops, 'compile_s': compile_s,
          'images': math.prod(images.shape[:-3]), 'op_count': sum(o['count'] for o in ops),
          'ops': ops}


def rates(part: dict, episodes: int, peak: float | None) -> dict:
  """Adds episodes/s, seconds per episode and FLOP/s (and % of peak) to a timing dict."""
  out = dict(part)
  out['episodes'] = episodes
  out['s_per_episode'] = part['median_s'] / episodes
  out['episodes_per_s'] = episodes / part['median_s']
  if part.get('flops'):
    out['flops_per_s'] = part['flops'] / part['median_s']
    if peak:
      out['pct_of_peak'] = 100.0 * out['flops_per_s'] / peak
  return out


def bench_config(spec: dict, args, peak: float | None) -> dict:
  """Every measurement of one configuration."""
  from mmnet_jax.models import registry
  skip = set(filter(None, args.skip.split(',')))
  config = make_config(spec, args.train_batch, args.dtype, args.attention_chunk)
  model = registry.build(config)
  start = time.perf_counter()
  state, tx = init_state(model, config)
  # The backbone parts time the dilated ResNet of the FEM models; HSNet's is another network.
  if registry.model_name(config.model) == 'hsnet':
    skip |= {'backbone', 'convs'}
  result = {'config': spec, 'train_batch': args.train_batch, 'eval_batch': args.eval_batch,
            'dtype': args.dtype, 'attention_chunk': config.model.get('attention_chunk'),
            'init_s': time.perf_counter() - start}
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  size, shots = spec['size'], spec['shots']
  if 'eval' not in skip:
    batch = random_batch(args.eval_batch, shots, size, seed=1)
    result['eval'] = rates(bench_eval(model, variables, batch, args.repeats, args.warmup),
                           args.eval_batch, peak)
    print(f'  {spec["name"]} eval: {result["eval"]["s_per_episode"]:.2f} s/episode', flush=True)
  if not {'backbone', 'convs'} <= skip:
    images = episode_images(random_batch(args.eval_batch, shots, size, seed=2))
  if 'backbone' not in skip:
    result['backbone'] = rates(bench_backbone(spec['backbone'], variables, images, args.repeats,
                                              args.warmup, args.dtype), args.eval_batch, peak)
    print(f'  {spec["name"]} backbone: {result["backbone"].get("pct_of_peak", 0):.0f}% of peak',
          flush=True)
  if 'convs' not in skip:
    result['backbone_convs'] = rates(bench_backbone_convs(
        spec['backbone'], variables, images, args.repeats, args.warmup, args.dtype),
        args.eval_batch, peak)
    print(f'  {spec["name"]} backbone convolutions alone: '
          f'{result["backbone_convs"].get("pct_of_peak", 0):.0f}% of peak', flush=True)
  if 'train' not in skip:
    batch = random_batch(args.train_batch, shots, size, seed=3)
    if 'backbone' not in skip:
      result['convs'] = frozen_backbone_convs(model, config, state, tx, batch)
    result['train'] = rates(bench_train(model, config, state, tx, batch, args.repeats,
                                        args.warmup), args.train_batch, peak)
    print(f'  {spec["name"]} train: {result["train"]["s_per_episode"]:.2f} s/episode',
          flush=True)
  return result


def input_pipeline(size: int, batch: int, batches: int) -> dict:
  """Episodes/s of the tf.data pipelines at `size` (benchmark_input, real-size images)."""
  from mmnet_jax import benchmark_input
  results = benchmark_input.run(benchmark_input.parse_args(
      ['--size', str(size), '--batch-size', str(batch), '--batches', str(batches),
       '--model', 'none', '--pipeline', 'numpy', '--profiler', 'none']))
  streams = results['pipelines']['numpy']['streams']
  return {k: v.get('episodes_per_s_2core', v['episodes_per_s_1core']) for k, v in streams.items()}


def device_info() -> dict:
  """The device, the machine and the library versions."""
  import jax
  dev = jax.devices()[0]
  return {'platform': dev.platform, 'device_kind': str(dev.device_kind),
          'device_count': jax.device_count(), 'cpu_count': os.cpu_count(),
          'processor': _cpu_model(), 'jax': jax.__version__}


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def run(args) -> dict:
  """All measurements as one results dict."""
  model = getattr(args, 'model', 'mmnet')
  default_names = HSNET_CONFIGS if model == 'hsnet' else DEFAULT_CONFIGS
  names = QUICK_CONFIGS if args.quick else tuple(
      filter(None, (args.configs or ','.join(default_names)).split(',')))
  specs = [parse_config_name(n, model) for n in names]
  results = {'device': device_info(), 'args': vars(args),
             'keep_freed_memory': getattr(args, 'keep_freed_memory', None)}
  results['peak'] = measure_peak(tuple(int(n) for n in args.peak_sizes.split(',')))
  peak = results['peak']['flops_per_s']
  print(f'peak: {peak / 1e9:.1f} GFLOP/s (float32 matmul {results["peak"]["matmul_size"]})',
        flush=True)
  results['configs'] = [bench_config(spec, args, peak) for spec in specs]
  if args.input:
    print(f'input pipeline at {args.input_size}...', flush=True)
    results['input'] = input_pipeline(args.input_size, args.train_batch, args.input_batches)
  return results


PART_LABELS = {'backbone_convs': 'convs'}   # table column width


def _gib(b):
  return f'{b / 2**30:.2f}' if b else '-'


def format_results(results: dict) -> str:
  """The table: one row per configuration and step."""
  d = results['device']
  lines = [f'{d["device_kind"]} ({d["processor"]}, {d["cpu_count"]} cores), jax {d["jax"]}; '
           f'peak {results["peak"]["flops_per_s"] / 1e9:.1f} GFLOP/s (float32 matmul)',
           f'{"config":<13} {"step":<9} {"batch":>5} {"s/episode":>9} {"episodes/s":>10} '
           f'{"compile s":>9} {"XLA peak GiB":>12} {"RSS GiB":>7} {"GFLOP/step":>10} '
           f'{"GFLOP/s":>8} {"% peak":>6}']
  for r in results['configs']:
    for part in ('train', 'eval', 'backbone', 'backbone_convs'):
      if part not in r:
        continue
      p = r[part]
      flops = p.get('flops')
      lines.append(
          f'{r["config"]["name"]:<13} {PART_LABELS.get(part, part):<9} {p["episodes"]:>5} '
          f'{p["s_per_episode"]:>9.3f} '
          f'{p["episodes_per_s"]:>10.3f} {p["compile_s"]:>9.1f} '
          f'{_gib(p.get("xla_memory", {}).get("peak_bytes")):>12} '
          f'{_gib(p.get("peak_rss_bytes")):>7} '
          f'{flops / 1e9 if flops else float("nan"):>10.1f} '
          f'{p.get("flops_per_s", float("nan")) / 1e9:>8.1f} '
          f'{p.get("pct_of_peak", float("nan")):>6.1f}')
  for r in results['configs']:
    if 'backbone_convs' in r:
      lines.append(f'{r["config"]["name"]} backbone convolutions, by total time '
                   '(count x op: inputs -> ms per call, GFLOP/s):')
      for op in sorted(r['backbone_convs']['ops'], key=lambda o: -o['count'] * o['median_s']):
        shapes = ' '.join('x'.join(map(str, s)) for s in op['shapes'])
        lines.append(f'  {op["count"]:>3} x {op["primitive"]:<20} {shapes:<32} '
                     f'{1e3 * op["median_s"]:8.1f} ms {op["flops_per_s"] / 1e9:7.1f}')
  if 'input' in results:
    lines.append('input pipeline episodes/s: ' + ', '.join(
        f'{k} {v:.2f}' for k, v in results['input'].items()))
  return '\n'.join(lines)


def report(results: dict, table: str, output: str) -> dict:
  """Prints a benchmark's table and, if `output`, writes its results as JSON (atomically)."""
  print(table, flush=True)
  if output:
    workdir_io.write_json_atomic(output, results)
  return results


def main(argv=None):
  args = parse_args(argv)
  args.keep_freed_memory = host_allocator.keep_freed_memory()   # as main.py: before JAX threads
  results = run(args)
  return report(results, format_results(results), args.output)


if __name__ == '__main__':
  main()
