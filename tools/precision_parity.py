"""bfloat16 vs float32 parity of MM-Net's forward (config.model.dtype).

Usage: python tools/precision_parity.py [--backbone resnet50] [--size 473] [--shots 1]

Random initialisation (config.seed) and random normalised images with blob masks; the forward
runs in training mode with BN batch statistics (so random-init activations stay normalised, as
in the original's training) and no dropout, once per dtype with the same float32 variables.
Prints the relative error max|bf16 - f32| / max|f32| of the logits, the mean absolute error,
the fraction of pixels whose argmax differs, and both losses.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  """Runs both dtypes and prints the parity numbers."""
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--backbone', default='resnet50')
  parser.add_argument('--size', type=int, default=473)
  parser.add_argument('--shots', type=int, default=1)
  parser.add_argument('--batch', type=int, default=1)
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import default
  from mmnet_jax import train_state
  from mmnet_jax.models import losses, mmnet

  config = default.get_config(f'shots={args.shots}')
  config.model.backbone = args.backbone
  config.model.feature_dropout = config.model.head_dropout = 0.0
  config.train.crop_size = args.size
  r = np.random.default_rng(0)
  b, k, s = args.batch, args.shots, args.size
  q = jnp.asarray(r.normal(size=(b, s, s, 3)), jnp.float32)
  sup = jnp.asarray(r.normal(size=(b, k, s, s, 3)), jnp.float32)
  labels = np.zeros((b, k + 1, s, s), np.int32)
  for i in range(b):
    for j in range(k + 1):
      y, x = r.integers(s // 8, s // 2, size=2)
      labels[i, j, y:y + s // 3, x:x + s // 3] = 1
  masks = jnp.asarray(labels[:, 1:] == 1, jnp.float32)
  variables = train_state.init_variables(mmnet.build_model(config.model), config)

  outs = {}
  for dtype in ('float32', 'bfloat16'):
    config.model.dtype = dtype
    model = mmnet.build_model(config.model)

    def forward(v):
      out, _ = model.apply(v, q, sup, masks, train=True, rngs={'dropout': jax.random.key(0)},
                           mutable=['batch_stats'])
      total, _ = losses.mmnet_loss(out, jnp.asarray(labels[:, 0]))
      return out['logits'], total
    outs[dtype] = jax.device_get(jax.jit(forward)(variables))

  (l32, t32), (l16, t16) = outs['float32'], outs['bfloat16']
  rel = float(np.max(np.abs(l16 - l32)) / np.max(np.abs(l32)))
  flips = float(np.mean(np.argmax(l16, -1) != np.argmax(l32, -1)))
  print(f'{args.backbone} {s}x{s} K={k} batch {b}, train-mode forward (BN batch statistics), '
        f'random init')
  print(f'  logits: max rel error {rel:.2e}, mean abs error {np.mean(np.abs(l16 - l32)):.2e} '
        f'(max |f32| {np.max(np.abs(l32)):.3f}); argmax differs on {100 * flips:.3f}% of pixels')
  print(f'  loss: float32 {float(t32):.6f}, bfloat16 {float(t16):.6f}')


if __name__ == '__main__':
  main()
