"""Numerical parity of mmnet_jax against the original PyTorch MM-Net (wu-zhonghua/MM-Net).

    /work/venv/bin/python tools/parity_official.py --official-repo /tmp/mmnet_official \
        [--depth 50] [--size 473] [--shots 1,5] [--out docs/parity.md]

Needs torch and a checkout of the original repository (model/PartNet.py). Nothing from it
is copied: it is imported from --official-repo. Procedure:
  1. Patch for a CPU-only run: a stub `cv2` module (PartNet.py imports it, never uses it) and
     `torch.Tensor.cuda` = identity (PartNet.py calls .cuda() in a default argument at import
     time and in forward).
  2. Build the original `PFENet` (random init, torch.manual_seed(seed), pretrained=False).
     Backbone BN running stats are calibrated on one random batch (momentum 1) so eval-mode
     activations have realistic scales instead of compounding through 50 layers.
  3. Save its state_dict the way train.py does ({'epoch', 'state_dict' with 'module.' keys,
     'optimizer'}), read it back with mmnet_jax.torch_pickle (no torch) and convert it with
     mmnet_jax.convert ('mmnet-official'), fill our MMNet's variables with merge_into.
  4. Same random inputs to both: query, K supports, support masks from random ellipses
     (different per shot), query label with a 255 band.
  5. Eval mode: logits. Train mode with every Dropout2d at p = 0 (ours: rates 0), BN in train
     mode: main / aux / reconstruction losses and the updated backbone BN running stats.

The original's 1-shot training branch crashes (it returns the undefined `sim_loss_level_2`);
the faithful 1-shot model is its K-shot branch at K = 1. The tool reaches it by passing
`shot=_KShotInt(1)`, an int subclass whose `> 1` comparison is True while `range(shot)` and
`view(.., shot, ..)` still see 1. The original hard-codes 60x60 feature maps, so only
--size 473 runs. K > 1 compares our bug-compatible mode (kshot_mask_compat=True: every shot's
APM uses the last shot's mask) and also shows that the per-shot mode differs.
The original's reconstruction loss is reported x0.1 (it is pre-weighted); ours is unweighted,
so the tool divides the original's by 0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types

import numpy as np

TOLERANCE = 1e-4

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))


class _KShotInt(int):
  """1 that answers `> 1` with True, steering PartNet.py into its (working) K-shot branch."""

  def __gt__(self, other):
    return True if other == 1 else int(self) > other


def _import_original(repo: str):
  import torch  # pylint: disable=g-import-not-at-top
  if 'cv2' not in sys.modules:
    sys.modules['cv2'] = types.ModuleType('cv2')  # imported by PartNet.py, never used
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  if not os.path.isfile(os.path.join(repo, 'model', 'PartNet.py')):
    raise FileNotFoundError(f'--official-repo {repo}: no model/PartNet.py (need a checkout of '
                            'wu-zhonghua/MM-Net)')
  sys.path.insert(0, os.path.abspath(repo))
  from model import PartNet  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  return PartNet


def _blob_masks(rng, n, size):
  """n binary masks (size, size), each the union of 1-3 random ellipses."""
  yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
  masks = np.zeros((n, size, size), np.float32)
  for i in range(n):
    for _ in range(rng.integers(1, 4)):
      cy, cx = rng.uniform(0.2, 0.8, 2)
      ry, rx = rng.uniform(0.08, 0.3, 2)
      masks[i] = np.maximum(masks[i], (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1))
  return masks


def make_inputs(seed: int, batch: int, shots: int, size: int):
  """Random normalised images, per-shot blob masks and a query label (NCHW for torch)."""
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
  supports = rng.standard_normal((batch, shots, 3, size, size)).astype(np.float32)
  # Support labels 0/1 with a 255 border (the model's mask is label == 1).
  s_y = _blob_masks(rng, batch * shots, size).reshape(batch, shots, size, size)
  s_y[..., :4, :] = 255
  label = _blob_masks(rng, batch, size).astype(np.int64)
  label[:, -6:, :] = 255
  return query, supports, s_y, label


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  denom = max(np.max(np.abs(b)), 1e-30)
  return float(np.max(np.abs(a - b)) / denom), float(np.mean(np.abs(a - b)) / denom)


def _build_torch(partnet, depth, shots, seed):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  model = partnet.PFENet(layers=depth, classes=2, zoom_factor=8,
                         criterion=nn.CrossEntropyLoss(ignore_index=255),
                         BatchNorm=nn.BatchNorm2d, pretrained=False, sync_bn=False,
                         shot=_KShotInt(shots) if shots == 1 else shots,
                         ppm_scales=[60, 30, 15, 8], vgg=False)
  return model


def _calibrate_bn(model, images):
  """Sets backbone BN running stats to the statistics of `images` (momentum 1)."""
  import torch  # pylint: disable=g-import-not-at-top
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for m in bns:
    m.momentum = 1.0
  model.train()
  with torch.no_grad():
    x = images
    for layer in (model.layer0, model.layer1, model.layer2, model.layer3, model.layer4):
      x = layer(x)
  for m in bns:
    m.momentum = 0.1
    m.num_batches_tracked.zero_()


def _our_variables(state_dict_path, config_model, shots):
  from mmnet_jax import convert, torch_pickle  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  sd = convert.extract_state_dict(torch_pickle.load(state_dict_path), 'mmnet-official')
  tree = convert.convert_state_dict(sd, 'mmnet-official')
  config = ml_collections.ConfigDict({'shots': shots, 'model': config_model})
  return convert.merge_into(convert.abstract_variables(config), tree)


def _flat_bn_stats(model):
  """{('backbone', ..., 'mean'|'var'): array} from the torch model's running stats."""
  from mmnet_jax import convert  # pylint: disable=g-import-not-at-top
  sd = {f'module.{k}': v.detach().numpy() for k, v in model.state_dict().items()}
  tree = convert.convert_state_dict(sd, 'mmnet-official')['batch_stats']
  return convert._flatten(tree)  # pylint: disable=protected-access


def run_case(partnet, depth, size, shots, batch, seed, chunk=0):
  """Returns a list of result rows for one K."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from mmnet_jax import convert  # pylint: disable=g-import-not-at-top
  from mmnet_jax.models import losses, mmnet  # pylint: disable=g-import-not-at-top

  query, supports, s_y, label = make_inputs(seed + shots, batch, shots, size)
  model = _build_torch(partnet, depth, shots, seed)
  _calibrate_bn(model, torch.from_numpy(np.concatenate([query, supports[:, 0]])))
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'official.pth')
    torch.save({'epoch': 1, 'state_dict': {f'module.{k}': v for k, v in
                                           model.state_dict().items()}, 'optimizer': {}}, path)
    base = {'backbone': f'resnet{depth}', 'bn_mode': 'train', 'feature_dropout': 0.0,
            'head_dropout': 0.0}
    variables = {compat: _our_variables(path, dict(base, kshot_mask_compat=compat), shots)
                 for compat in ((True, False) if shots > 1 else (True,))}

  q_j = jnp.asarray(query.transpose(0, 2, 3, 1))
  s_j = jnp.asarray(supports.transpose(0, 1, 3, 4, 2))
  m_j = jnp.asarray((s_y == 1).astype(np.float32))
  x_t, sx_t, sy_t = (torch.from_numpy(a) for a in (query, supports, s_y))
  rows = []

  # Eval mode: logits.
  model.eval()
  with torch.no_grad():
    t0 = time.time()
    ref = model(x_t, sx_t, sy_t).numpy().transpose(0, 2, 3, 1)  # (B, H, W, 2)
    t_torch = time.time() - t0
  for compat, var in variables.items():
    net = mmnet.MMNet(backbone=f'resnet{depth}', kshot_mask_compat=compat, bn_mode='train',
                      feature_dropout=0.0, head_dropout=0.0, attention_chunk=chunk)
    t0 = time.time()
    out = jax.jit(lambda v, q, s, m: net.apply(v, q, s, m, train=False)['logits'])(
        var, q_j, s_j, m_j)
    out = np.asarray(out)
    mode = 'compat' if compat else 'per-shot'
    rows.append((shots, mode, 'eval logits', *_rel(out, ref)))
    print(f'K={shots} {mode} eval: torch {t_torch:.1f}s, ours {time.time() - t0:.1f}s', flush=True)

  # Train mode, dropout off: losses and updated BN running stats.
  model.train()
  for m in model.modules():
    if isinstance(m, torch.nn.Dropout2d):
      m.p = 0.0
  with torch.no_grad():
    _, main_t, aux_t, recon_t = model(x_t, sx_t, sy_t, torch.from_numpy(label))
  bn_ref = _flat_bn_stats(model)
  for compat, var in variables.items():
    if not compat:
      continue  # the released code has no per-shot mode to compare training against
    net = mmnet.MMNet(backbone=f'resnet{depth}', kshot_mask_compat=True, bn_mode='train',
                      feature_dropout=0.0, head_dropout=0.0, attention_chunk=chunk)

    def train_step(v, q, s, m, y):
      out, new_state = net.apply(v, q, s, m, train=True, rngs={'dropout': jax.random.key(0)},
                                 mutable=['batch_stats'])
      _, parts = losses.mmnet_loss(out, y)
      return parts, new_state['batch_stats']

    parts, new_bs = jax.jit(train_step)(var, q_j, s_j, m_j, jnp.asarray(label, jnp.int32))
    for name, ref_val in (('main', main_t.item()), ('aux', aux_t.item()),
                          ('recon', recon_t.item() / 0.1)):
      ours = float(parts[name])
      rows.append((shots, 'compat', f'train loss {name} ({ours:.6f} vs {ref_val:.6f})',
                   *_rel(ours, ref_val)))
    ours_bn = convert._flatten({'backbone': jax.device_get(new_bs)['backbone']})  # pylint: disable=protected-access
    worst, worst_path, means = 0.0, '', []
    for path, ref_val in bn_ref.items():
      mx, mean = _rel(ours_bn[path], ref_val)
      means.append(mean)
      if mx > worst:
        worst, worst_path = mx, '/'.join(path)
    rows.append((shots, 'compat', f'train BN running stats ({len(bn_ref)} arrays; worst '
                 f'{worst_path})', worst, float(np.mean(means))))
  return rows


def format_table(rows, command, device, setup):
  lines = [f'Command: `{command}`', '', f'Device: {device}; float32; {setup}.', '',
           f'Tolerance {TOLERANCE:g} on the relative error max |ours - torch| / max |torch| '
           '(mean: mean |ours - torch| / max |torch|).', '',
           '| K | our mode | quantity | max rel err | mean rel err | within tol |',
           '|---|---|---|---|---|---|']
  for shots, mode, what, mx, mean in rows:
    expect_diff = mode == 'per-shot'
    ok = ('n/a (expected to differ)' if expect_diff else ('yes' if mx <= TOLERANCE else 'NO'))
    lines.append(f'| {shots} | {mode} | {what} | {mx:.2e} | {mean:.2e} | {ok} |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--official-repo', required=True)
  parser.add_argument('--depth', type=int, default=50, choices=(50, 101))
  parser.add_argument('--size', type=int, default=473)
  parser.add_argument('--shots', default='1,5')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--attention-chunk', type=int, default=None,
                      help="our model's attention_chunk (default: configs/default.py's)")
  parser.add_argument('--out', default=None, help='write the markdown table here')
  args = parser.parse_args(argv)
  if args.attention_chunk is None:
    from configs import default  # pylint: disable=g-import-not-at-top
    args.attention_chunk = default.get_config().model.attention_chunk
  if args.size != 473:
    parser.error('--size: the original hard-codes 60x60 feature maps, only 473 runs')
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  partnet = _import_original(args.official_repo)
  rows = []
  start = time.time()
  for shots in (int(k) for k in args.shots.split(',')):
    rows += run_case(partnet, args.depth, args.size, shots, args.batch, args.seed,
                     args.attention_chunk)
  command = 'python tools/parity_official.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
  setup = (f'ResNet-{args.depth}, {args.size}x{args.size}, batch {args.batch}, seed {args.seed}, '
           f'our attention_chunk {args.attention_chunk}, '
           f'random init, {time.time() - start:.0f} s wall time for everything')
  table = format_table(rows, command, f'CPU (torch {torch.__version__}, jax {jax.__version__})',
                       setup)
  print(table)
  if args.out:
    with open(args.out, 'w') as f:
      f.write('# Parity with the original PyTorch MM-Net\n\n' + __doc__.split('\n\n', 2)[2] +
              '\nA checkout of the original (the git mirror has no work tree; only model/ is '
              'needed):\n\n    mkdir -p /tmp/mmnet_official && git -C '
              '/work/.mirror/wu-zhonghua+MM-Net/repo archive HEAD model util | '
              'tar -x -C /tmp/mmnet_official\n\n' + table)
  bad = [r for r in rows if r[1] == 'compat' and r[3] > TOLERANCE]
  return 1 if bad else 0


if __name__ == '__main__':
  sys.exit(main())
