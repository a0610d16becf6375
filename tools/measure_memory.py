"""Memory of MM-Net per episode: XLA's compiled memory analysis, and peak host RSS on CPU.

Usage:
  python tools/measure_memory.py [--backbone resnet50] [--size 641] [--shots 5]
      peak RSS of ONE eval forward (two child processes: a baseline that imports jax and
      initialises random variables, and one that also runs the jitted forward), plus XLA's
      memory analysis of that forward.
  python tools/measure_memory.py --table [--sizes 473,641] [--shots-list 1,5] [--chunk 1024]
      XLA memory analysis (compile only, abstract inputs, nothing allocated) of the jitted eval
      forward and of the full train step (model, losses, gradients, SGD update; the default
      config: frozen backbone, batch-statistics BN) at per-device batch 1, with and without
      config.model.attention_chunk; prints a markdown table (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = r'''
import json, resource, sys, time
import jax, jax.numpy as jnp, numpy as np
from mmnet_jax.models.mmnet import MMNet
backbone, size, shots, run = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == '1'
model = MMNet(backbone=backbone)
sds = jax.ShapeDtypeStruct
q, s, m = sds((1, size, size, 3), jnp.float32), sds((1, shots, size, size, 3), jnp.float32), \
    sds((1, shots, size, size), jnp.float32)
shapes = jax.eval_shape(lambda q, s, m: model.init(jax.random.key(0), q, s, m), q, s, m)
rng = np.random.default_rng(0)
def fill(path, x):  # random weights, identity BN: finite activations without a costly init
  name = jax.tree_util.keystr(path)
  if "'scale'" in name or "'var'" in name:
    return jnp.ones(x.shape, x.dtype)
  if "'bias'" in name or "'mean'" in name:
    return jnp.zeros(x.shape, x.dtype)
  return jnp.asarray(rng.normal(0, (2.0 / max(1, np.prod(x.shape[:-1]))) ** 0.5, x.shape), x.dtype)
variables = jax.tree_util.tree_map_with_path(fill, shapes)
jax.block_until_ready(variables)
forward = jax.jit(lambda v, q, s, m: model.apply(v, q, s, m, train=False)['logits'])
compiled = forward.lower(variables, q, s, m).compile()
info = {}
try:
  ma = compiled.memory_analysis()
  info = {k: int(getattr(ma, k)) for k in ('temp_size_in_bytes', 'argument_size_in_bytes',
          'output_size_in_bytes', 'generated_code_size_in_bytes') if hasattr(ma, k)}
except Exception as e:  # memory_analysis is not available on every backend/version
  info = {'error': repr(e)}
seconds = None
if run:
  qa = jnp.ones(q.shape); sa = jnp.ones(s.shape); ma_ = jnp.ones(m.shape)
  jax.block_until_ready((qa, sa, ma_))
  t = time.time(); jax.block_until_ready(compiled(variables, qa, sa, ma_)); seconds = time.time() - t
info['maxrss_kib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
info['forward_seconds'] = seconds
print('RESULT ' + json.dumps(info))
'''


def _child(backbone: str, size: int, shots: int, run: bool) -> dict:
  proc = subprocess.run([sys.executable, '-c', _CHILD, backbone, str(size), str(shots),
                         '1' if run else '0'], capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f'measurement child failed:\n{proc.stderr[-3000:]}')
  line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1]
  return json.loads(line[len('RESULT '):])


def xla_memory(kind: str, size: int, shots: int, chunk: int, backbone: str = 'resnet50',
               dtype: str = 'float32') -> dict:
  """XLA memory analysis (bytes) of the jitted eval forward or train step at batch 1."""
  import jax
  import jax.numpy as jnp
  from configs import default
  from mmnet_jax import benchmark
  from mmnet_jax import optimizer
  from mmnet_jax import train
  from mmnet_jax import train_state
  from mmnet_jax.models import mmnet
  config = default.get_config(f'shots={shots}')
  config.model.backbone = backbone
  config.model.attention_chunk = chunk
  config.model.dtype = dtype
  config.train.crop_size = size
  config.train.batch_size = 1
  model = mmnet.build_model(config.model)
  state = train_state.abstract_state(model, config)
  sds = jax.ShapeDtypeStruct
  batch = {'query_img': sds((1, size, size, 3), jnp.float32),
           'support_imgs': sds((1, shots, size, size, 3), jnp.float32),
           'query_label': sds((1, size, size), jnp.int32),
           'support_labels': sds((1, shots, size, size), jnp.int32)}
  if kind == 'train':
    tx = optimizer.make_optimizer(config, 1000, state['params'])
    fn = jax.jit(train.make_train_step(model, tx, config), donate_argnums=(0,))
    args = (state, batch)
  else:
    def fn(variables, batch):
      masks = (batch['support_labels'] == 1).astype(jnp.float32)
      return model.apply(variables, batch['query_img'], batch['support_imgs'], masks)['logits']
    fn = jax.jit(fn)
    args = ({'params': state['params'], 'batch_stats': state['batch_stats']}, batch)
  return benchmark.xla_memory(fn.lower(*args).compile())


def table(sizes, shots_list, chunk: int, backbone: str) -> None:
  """Prints the markdown table of peak bytes per episode, without and with chunking."""
  gib = lambda b: b / 2**30
  print(f'| {backbone} | K | eval forward | eval, chunk {chunk} | train step | '
        f'train, chunk {chunk} |')
  print('|---|---|---|---|---|---|')
  for size in sizes:
    for shots in shots_list:
      cells = []
      for kind in ('eval', 'train'):
        for c in (0, chunk):
          r = xla_memory(kind, size, shots, c, backbone)
          print('RESULT ' + json.dumps(dict(r, kind=kind, size=size, shots=shots, chunk=c)),
                file=sys.stderr, flush=True)
          cells.append(f'{gib(r["peak_bytes"]):.2f} GiB (temp {gib(r["temp_size_in_bytes"]):.2f})')
      print(f'| {size} | {shots} | ' + ' | '.join(cells) + ' |', flush=True)


def main() -> None:
  """Prints the baseline, the forward's peak RSS and XLA's memory analysis (MiB)."""
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--backbone', default='resnet50')
  parser.add_argument('--size', type=int, default=641)
  parser.add_argument('--shots', type=int, default=5)
  parser.add_argument('--table', action='store_true', help='XLA memory table (see above)')
  parser.add_argument('--sizes', default='473,641')
  parser.add_argument('--shots-list', default='1,5')
  parser.add_argument('--chunk', type=int, default=1024)
  args = parser.parse_args()
  if args.table:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    table([int(x) for x in args.sizes.split(',')], [int(x) for x in args.shots_list.split(',')],
          args.chunk, args.backbone)
    return
  base = _child(args.backbone, args.size, args.shots, run=False)
  full = _child(args.backbone, args.size, args.shots, run=True)
  mib = lambda b: b / 2**20
  print(f'{args.backbone} {args.size}x{args.size} K={args.shots} batch 1, CPU eval forward')
  print(f'  baseline maxrss (jax + variables + compile): {base["maxrss_kib"] / 1024:.0f} MiB')
  print(f'  forward maxrss: {full["maxrss_kib"] / 1024:.0f} MiB; '
        f'difference {(full["maxrss_kib"] - base["maxrss_kib"]) / 1024:.0f} MiB; '
        f'forward took {full["forward_seconds"]:.1f} s')
  for key, value in full.items():
    if key.endswith('_bytes'):
      print(f'  XLA {key}: {mib(value):.0f} MiB')
    elif key == 'error':
      print(f'  XLA memory_analysis unavailable: {value}')


if __name__ == '__main__':
  main()
