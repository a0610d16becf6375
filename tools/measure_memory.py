"""Peak host memory of ONE eval forward of MM-Net on CPU.

Usage: python tools/measure_memory.py [--backbone resnet50] [--size 641] [--shots 5]

Runs two child processes: a baseline that imports jax and initialises the (random) variables,
and one that additionally runs one jitted eval forward (logits only, as an evaluator would);
reports both ru_maxrss values and their difference, plus XLA's compiled memory analysis.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
  """Prints the baseline, the forward's peak RSS and XLA's memory analysis (MiB)."""
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--backbone', default='resnet50')
  parser.add_argument('--size', type=int, default=641)
  parser.add_argument('--shots', type=int, default=5)
  args = parser.parse_args()
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
