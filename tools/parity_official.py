"""Numerical parity of mmnet_jax against the original PyTorch MM-Net or PFENet (HSNet:
`--model hsnet` runs tools/parity_hsnet.py, whose docstring says what it compares).

    python tools/parity_official.py --model mmnet|pfenet --official-repo PATH \
        [--depth 50] [--size 473] [--shots 1,5] [--steps 3] [--dtype float32|float64]
        [--out docs/parity.md]

Needs torch and a checkout of the original repository (MM-Net: model/PartNet.py, PFENet:
model/PFENet.py, both with util/util.py). Nothing from it is copied: it is imported from
--official-repo (tools/parity_models.py says how). Procedure, per K:
  1. Patch for a CPU-only run: a stub `cv2` module (the model files import it, never use it)
     and `torch.Tensor.cuda` = identity (they call .cuda() in a default argument at import
     time and in forward).
  2. Build the original (random init, torch.manual_seed(seed), pretrained=False). Backbone BN
     running stats are calibrated on one random batch (momentum 1) so eval-mode activations
     have realistic scales instead of compounding through 50 layers.
  3. Save its state_dict the way train.py does ({'epoch', 'state_dict' with 'module.' keys,
     'optimizer'}), read it back with mmnet_jax.torch_pickle (no torch) and convert it with
     mmnet_jax.convert ('mmnet-official' / 'pfenet-official'), fill our model's variables with
     merge_into.
  4. Same random inputs to both: query, K supports, support masks from random ellipses
     (different per shot), query label with a 255 band.
  5. Eval mode: logits.
  6. Train mode with every Dropout2d at p = 0 (ours: rates 0), BN in train mode, the backbone
     frozen as train.py freezes it (requires_grad False; ours: freeze_backbone): the loss
     terms, the updated backbone BN running stats and the gradient of every trainable tensor
     of the loss train.py back-propagates (torch's converted to our layout by the converter,
     conv OIHW -> HWIO).
  7. --steps SGD steps from the same weights on the same fixed batches (--step-batch): torch
     runs the original train.py's optimizer (torch.optim.SGD over its parameter groups, lr
     set by the original util.poly_learning_rate with index_split=-1, i.e. base_lr x 10 for
     every group); ours runs mmnet_jax.optimizer.make_optimizer and train.make_train_step. The loss of
     each step, then every parameter, its total update and the BN running stats after the
     last step.
--dtype float64 (the exactness check; its own section, <!-- parity:MODEL-float64 -->): steps
5-7 with both sides in float64 (torch .double(), its support mask's .float() made double;
ours jax_enable_x64 and config.model.dtype 'float64'), each on its own backbone, tolerance
EXACT_TOLERANCE. Then ours in float32 against ours in float64, as is and with every ReLU's
derivative pinned to the float64 run's: how much of the float32 gap is ReLU inputs within
rounding of 0 taking the other branch (a discrete change of the gradient), and that what is
left is within TOLERANCE.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import re
import sys
import tempfile
import time

import numpy as np

TOLERANCE = 1e-4
# --dtype float64: both sides in float64. An exact port agrees to the float64 rounding
# amplified by the same ops that amplify float32's (~1e-12 .. 1e-11 measured); a different
# computation (a wrong term, weight, order of operations in torch's precision) shows far above.
EXACT_TOLERANCE = 1e-8
# Gradients and updates are differences of float32 sums over 3600+ pixels per tensor: their
# relative error is larger than the logits'; 1e-3 still tells a wrong term (>= 1e-2) apart.
GRAD_TOLERANCE = 1e-3

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import parity_models  # noqa: E402  (tools/ helper: the two originals)

_KShotInt = parity_models.KShotInt


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


def _flat(tree, prefix=()):
  """{path tuple: leaf} of a nested dict."""
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    return {p: v for k, sub in tree.items() for p, v in _flat(sub, prefix + (k,)).items()}
  return {prefix: np.asarray(tree)}


def _worst(ours: dict, ref: dict):
  """(worst max rel err, its path, mean over arrays of the mean rel err, per-path max)."""
  per = {path: _rel(ours[path], value) for path, value in ref.items()}
  worst = max(per, key=lambda p: per[p][0])
  def name(p):
    return p if isinstance(p, str) else '/'.join(p)
  return (per[worst][0], name(worst), float(np.mean([m for _, m in per.values()])),
          {name(p): mx for p, (mx, _) in per.items()})


def _import_original(repo: str, model: str = 'mmnet'):
  """The original's model module (model/PartNet.py or model/PFENet.py), patched for the CPU."""
  return parity_models.import_original(parity_models.ORIGINALS[model], repo)[0]


def _build_torch(module, depth, shots, seed, model: str = 'mmnet'):
  return parity_models.build(parity_models.ORIGINALS[model], module, depth, shots, seed)


def _calibrate_bn(model, images):
  """Sets backbone BN running stats to the statistics of `images` (momentum 1)."""
  import torch  # pylint: disable=g-import-not-at-top
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for m in bns:
    m.momentum = 1.0
  model.train()
  with torch.no_grad():
    x = images
    for layer in parity_models.BACKBONE_LAYERS:
      x = getattr(model, layer)(x)
  for m in bns:
    m.momentum = 0.1
    m.num_batches_tracked.zero_()


def _converted(state_dict, fmt):
  """Our {'params', 'batch_stats'} of a torch state dict (as saved by train.py: 'module.')."""
  from mmnet_jax import convert  # pylint: disable=g-import-not-at-top
  sd = {f'module.{k}': np.asarray(v.detach().numpy() if hasattr(v, 'detach') else v)
        for k, v in state_dict.items()}
  return convert.convert_state_dict(sd, fmt)


def _our_variables(state_dict_path, config_model, shots, fmt='mmnet-official'):
  """Our model's variables from a saved original checkpoint, read without torch."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from mmnet_jax import convert, torch_pickle  # pylint: disable=g-import-not-at-top
  from mmnet_jax.models import registry  # pylint: disable=g-import-not-at-top
  sd = convert.extract_state_dict(torch_pickle.load(state_dict_path), fmt)
  tree = convert.convert_state_dict(sd, fmt)
  model_config = ml_collections.ConfigDict(dict(config_model))
  net = registry.get(registry.model_name(model_config)).build(model_config)
  size = 65  # any (H - 1) % 8 == 0: variable shapes do not depend on it
  shapes = jax.eval_shape(lambda: net.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1, shots, size, size, 3)),
      jnp.zeros((1, shots, size, size)), train=False))
  shapes = {c: dict(v) for c, v in shapes.items() if c in ('params', 'batch_stats')}
  return convert.merge_into(shapes, tree)


def our_config(original, depth, shots, compat, chunk):
  """The library's config for our side: the default recipe, dropout 0, the original's model."""
  from mmnet_jax import default_config  # pylint: disable=g-import-not-at-top
  from mmnet_jax.models import registry  # pylint: disable=g-import-not-at-top
  spec = registry.get(original.name)
  config = default_config.get_config()
  config.shots = shots
  model = spec.config_defaults()
  model.backbone = f'resnet{depth}'
  model.bn_mode = 'train'
  model.freeze_backbone = True
  model.feature_dropout = 0.0
  model.head_dropout = 0.0
  if compat is not None:
    model.kshot_mask_compat = compat
  if 'attention_chunk' in model and chunk is not None:
    model.attention_chunk = chunk
  config.model = model
  for key, value in spec.train_defaults.items():
    config.train[key] = value
  return config


def _torch_train_pass(original, model, x, sx, sy, y, aux_weight):
  """One train-mode forward + backward: ({term: float}, total float, {name: grad})."""
  outputs = model(x, sx, sy, y)
  terms = original.losses(outputs)
  total = original.total(terms, aux_weight)
  model.zero_grad()
  total.backward()
  grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
           if p.requires_grad and p.grad is not None}
  return {k: v.item() for k, v in terms.items()}, total.item(), grads


def _as_float64(model, state_dict):
  """A float64 copy of the original (same weights): the reference for float32 rounding."""
  import copy  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  model64 = copy.deepcopy(model)
  model64.load_state_dict(state_dict)
  return model64.to(torch.float64)


def _doubles(arrays):
  import torch  # pylint: disable=g-import-not-at-top
  return [torch.from_numpy(a).double() if a.dtype == np.float32 else torch.from_numpy(a)
          for a in arrays]


def _grads_in_our_layout(model, grads, fmt, frozen):
  """torch grads -> our trainable params' paths, via the converter (OIHW -> HWIO, memory)."""
  # The converter wants a whole state dict: the grads stand in for their parameters.
  sd = dict(model.state_dict())
  sd.update(grads)
  flat = _flat(_converted(sd, fmt)['params'])
  return {p: v for p, v in flat.items() if p[0] not in frozen}


def _our_batch(query, supports, s_y, label):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return {'query_img': jnp.asarray(query.transpose(0, 2, 3, 1)),
          'support_imgs': jnp.asarray(supports.transpose(0, 1, 3, 4, 2)),
          'support_labels': jnp.asarray(s_y, jnp.int32),
          'support_masks': jnp.asarray((s_y == 1).astype(np.float32)),  # the model's rule
          'query_label': jnp.asarray(label, jnp.int32)}


def _our_backbone_calls(net, variables, batch):
  """Our backbone's outputs, per call in call order (query, then shot by shot): (f2, f3, f4)
  NCHW float32 numpy, from a train-mode pass (batch statistics, as the steps use them)."""
  import jax  # pylint: disable=g-import-not-at-top

  def run(v, b):
    _, state = net.apply(v, b['query_img'], b['support_imgs'], b['support_masks'], train=True,
                         rngs={'dropout': jax.random.key(0)},
                         mutable=['batch_stats', 'intermediates'],
                         capture_intermediates=lambda m, method: (m.name == 'backbone' and
                                                                  method == '__call__'))
    return state['intermediates']['backbone']['__call__']

  calls = jax.device_get(jax.jit(run)(variables, batch))
  return [tuple(np.ascontiguousarray(np.asarray(f).transpose(0, 3, 1, 2)) for f in call)
          for call in calls]


def _replay_backbone(model, calls, dtype):
  """Makes the original's layer0..layer4 return our backbone's outputs instead of computing.

  Both models call the backbone in the same order (query, then each shot; layer4 on the masked
  layer3 map), so layer2/3/4 hand out f2/f3/f4 of `calls` in turn; layer0/1 pass through.
  """
  import torch  # pylint: disable=g-import-not-at-top
  served = {'layer2': 0, 'layer3': 0, 'layer4': 0}

  def forward(name):
    def fwd(x):
      if name not in served:
        return x
      i = served[name]
      served[name] += 1
      return torch.from_numpy(calls[i][int(name[-1]) - 2]).to(dtype)
    return fwd

  for name in parity_models.BACKBONE_LAYERS:
    getattr(model, name).forward = forward(name)
  return model


def _make_optimizer():
  """mmnet_jax.train.make_optimizer (mmnet_jax.optimizer's while train.py is refactored)."""
  from mmnet_jax import train  # pylint: disable=g-import-not-at-top
  if hasattr(train, 'make_optimizer'):
    return train.make_optimizer
  from mmnet_jax import optimizer  # pylint: disable=g-import-not-at-top
  return optimizer.make_optimizer


def _set_dropout_zero(model):
  import torch  # pylint: disable=g-import-not-at-top
  for m in model.modules():
    if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)):
      m.p = 0.0


def _row(shots, mode, what, mx, mean, tol=TOLERANCE, f64='', verdict=None):
  """One table row; verdict None: within tol when mx <= tol."""
  if verdict is None:
    verdict = 'yes' if mx <= tol else 'NO'
  return (shots, mode, what, mx, mean, f64, f'{tol:g}' if isinstance(tol, float) else tol,
          verdict)


def _three_way(ours, ref32, ref64):
  """Errors of ours against the original in float32, and of both against its float64 run.

  Per array: e32 = ours vs original float32, e64 = ours vs original float64 and own = original
  float32 vs float64 (all max |a - b| / max |b|). Within tolerance when every array has
  e64 <= max(TOLERANCE, 2 own): ours is no further from the float64 result than twice the
  original's own float32 rounding. Returns (row fields, {path: (e32, e64, own)}).
  """
  detail = {'/'.join(p): (_rel(ours[p], ref32[p])[0], _rel(ours[p], ref64[p])[0],
                          _rel(ref32[p], ref64[p])[0]) for p in ref32}
  mx, where, mean, _ = _worst(ours, ref32)
  margin = {n: e64 / max(TOLERANCE, 2 * own) for n, (_, e64, own) in detail.items()}
  tight = max(margin, key=margin.get)
  worst64 = max(detail, key=lambda n: detail[n][1])
  f64 = (f'ours {detail[worst64][1]:.2e}, original f32 {detail[worst64][2]:.2e} '
         f'({worst64}); tightest {tight}: {detail[tight][1]:.2e} vs {detail[tight][2]:.2e}')
  verdict = 'yes' if margin[tight] <= 1 else 'NO'
  return (mx, mean, '1e-4 or 2x orig f32', f64, verdict, where), detail


def run_case(original, module, util, args, shots):
  """Result rows (see format_table) and per-tensor gradient errors for one K."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from mmnet_jax.models import registry  # pylint: disable=g-import-not-at-top

  spec = registry.get(original.name)
  frozen = tuple(spec.frozen)
  query, supports, s_y, label = make_inputs(args.seed + shots, args.batch, shots, args.size)
  model = parity_models.build(original, module, args.depth, shots, args.seed)
  parity_models.freeze_backbone(model)
  _calibrate_bn(model, torch.from_numpy(np.concatenate([query, supports[:, 0]])))
  init_sd = {k: v.clone() for k, v in model.state_dict().items()}
  modes = original.compat_modes if shots > 1 else original.compat_modes[:1]
  configs = {c: our_config(original, args.depth, shots, c, args.attention_chunk) for c in modes}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'official.pth')
    torch.save({'epoch': 1, 'state_dict': {f'module.{k}': v for k, v in init_sd.items()},
                'optimizer': {}}, path)
    variables = {c: _our_variables(path, configs[c].model, shots, original.fmt) for c in modes}
  faithful = modes[0]   # the mode whose training the original has (MM-Net: compat)
  name = {None: '-', True: 'compat', False: 'per-shot'}
  batch = _our_batch(query, supports, s_y, label)
  torch_in = [torch.from_numpy(a) for a in (query, supports, s_y, label)]
  rows = []

  # Eval mode: logits.
  model.eval()
  with torch.no_grad():
    t0 = time.time()
    ref = model(*torch_in[:3]).numpy().transpose(0, 2, 3, 1)  # (B, H, W, 2)
    t_torch = time.time() - t0
  for compat in modes:
    net = spec.build(configs[compat].model)
    t0 = time.time()
    out = jax.jit(lambda v, q, s, m, net=net: net.apply(v, q, s, m, train=False)['logits'])(
        variables[compat], batch['query_img'], batch['support_imgs'], batch['support_masks'])
    expect = None if compat == faithful else 'n/a (expected to differ)'
    rows.append(_row(shots, name[compat], 'eval logits', *_rel(np.asarray(out), ref),
                     verdict=expect))
    print(f'K={shots} {name[compat]} eval: torch {t_torch:.1f}s, ours {time.time() - t0:.1f}s',
          flush=True)

  # Train mode, dropout off: loss terms, updated BN running stats, gradients (the original
  # also in float64: the reference that shows each tensor's float32 rounding).
  config = configs[faithful]
  net = spec.build(config.model)
  model64 = _as_float64(model, init_sd)
  for m in (model, model64):
    m.train()
    _set_dropout_zero(m)
  aux_weight = config.train.aux_weight
  t0 = time.time()
  terms_t, total_t, grads_t = _torch_train_pass(original, model, *torch_in, aux_weight)
  t_torch = time.time() - t0
  grads64 = _torch_train_pass(original, model64, *_doubles((query, supports, s_y, label)),
                              aux_weight)[2]
  bn_ref = _flat(_converted(model.state_dict(), original.fmt)['batch_stats'])
  grads_ref = _grads_in_our_layout(model, grads_t, original.fmt, frozen)
  grads_ref64 = _grads_in_our_layout(model, grads64, original.fmt, frozen)

  def loss_fn(params, batch_stats, b):
    out, new_state = net.apply({'params': params, 'batch_stats': batch_stats}, b['query_img'],
                               b['support_imgs'], b['support_masks'], train=True,
                               rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])
    total, parts = spec.loss(out, b['query_label'], config.train)
    return total, (parts, new_state['batch_stats'])

  var = variables[faithful]
  t0 = time.time()
  (total, (parts, new_bs)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      var['params'], var['batch_stats'], batch)
  grads = {p: v for p, v in _flat(jax.device_get(grads)).items() if p[0] not in frozen}
  print(f'K={shots} train pass: torch {t_torch:.1f}s, ours {time.time() - t0:.1f}s', flush=True)
  mode = name[faithful]
  for term, ref_val in list(terms_t.items()) + [('total', total_t)]:
    ours = float(total if term == 'total' else parts[term])
    rows.append(_row(shots, mode, f'train loss {term} ({ours:.6f} vs {ref_val:.6f})',
                     *_rel(ours, ref_val)))
  ours_bn = {p: v for p, v in _flat(jax.device_get(new_bs)).items() if p in bn_ref}
  worst, where, mean, _ = _worst(ours_bn, bn_ref)
  rows.append(_row(shots, mode, f'train BN running stats ({len(bn_ref)} arrays; worst {where})',
                   worst, mean))
  if set(grads) != set(grads_ref):
    raise RuntimeError(f'trainable tensors differ: ours only {sorted(set(grads) - set(grads_ref))}'
                       f', torch only {sorted(set(grads_ref) - set(grads))}')
  # Each side on its own backbone: the head's gradients amplify the float32 rounding of the
  # backbone features (the original's own f32 and f64 runs differ by up to ~1e-2 here), so
  # this row is information and the next one is the test.
  (mx, mean, _, f64, _, where), own_detail = _three_way(grads, grads_ref, grads_ref64)
  rows.append(_row(shots, mode, f'gradients, each its own backbone ({len(grads_ref)} trainable '
                   f'tensors; worst {where})', mx, mean, '-', f64, 'info (next row)'))
  # The original's head on our backbone features (replayed), in float32 and float64.
  calls = _our_backbone_calls(net, var, batch)
  replays = [_replay_backbone(m, calls, dt) for m, dt in
             ((copy.deepcopy(model), torch.float32), (_as_float64(model, init_sd), torch.float64))]
  rep = [_grads_in_our_layout(model, _torch_train_pass(original, m, *ins, aux_weight)[2],
                              original.fmt, frozen)
         for m, ins in zip(replays, (torch_in, _doubles((query, supports, s_y, label))))]
  (mx, mean, tol, f64, verdict, where), rep_detail = _three_way(grads, *rep)
  rows.append(_row(shots, mode, f"gradients, the original's head on our backbone features "
                   f'(worst {where})', mx, mean, tol, f64, verdict))
  grad_detail = {n: (own_detail[n][0], rep_detail[n][1], rep_detail[n][2]) for n in own_detail}

  if args.steps > 0:
    rows += _steps_case(original, util, model, replays, init_sd, net, config, var, args,
                        shots, frozen, mode)
  return rows, grad_detail


def _torch_steps(original, util, model, init_sd, batches, tc, total_steps, dtype_fn):
  """The original train.py's loop body over `batches`: (losses, state dict before, after)."""
  model.load_state_dict(init_sd)
  model.train()
  _set_dropout_zero(model)
  opt = parity_models.make_sgd(original, model, tc.base_lr, tc.momentum, tc.weight_decay)
  before = {k: v.clone() for k, v in model.state_dict().items()}
  losses = []
  for i, b in enumerate(batches):
    util.poly_learning_rate(opt, tc.base_lr, i + 1, total_steps, power=tc.poly_power,
                            index_split=-1, warmup=False)
    x, sx, sy, y = dtype_fn(b)
    total = original.total(original.losses(model(s_x=sx, s_y=sy, x=x, y=y)), tc.aux_weight)
    opt.zero_grad()
    total.backward()
    opt.step()
    losses.append(total.item())
  return losses, before, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _converted64(state_dict, fmt):
  """_converted at float64 precision: the converter writes float32, so a float64 tensor goes
  through it as hi + lo (hi its float32 rounding, lo the float32 rest; the layout change is
  linear), summed back in float64: 48 significant bits, relative error < 1e-14."""
  import torch  # pylint: disable=g-import-not-at-top
  f32 = torch.float32  # .to, not .float(): _float_means_double patches the latter
  hi = {k: v.to(f32) if v.is_floating_point() else v for k, v in state_dict.items()}
  lo = {k: (v - hi[k].double()).to(f32) if v.is_floating_point() else v
        for k, v in state_dict.items()}
  parts = [_converted(d, fmt) for d in (hi, lo)]
  return {c: {'/'.join(p): v.astype(np.float64) + _flat(parts[1][c])[p].astype(np.float64)
              for p, v in _flat(parts[0][c]).items()} for c in parts[0]}


def _unflat(flat):
  """{'a/b': leaf} -> nested dict."""
  tree = {}
  for path, v in flat.items():
    *head, last = path.split('/')
    node = tree
    for k in head:
      node = node.setdefault(k, {})
    node[last] = v
  return tree


@contextlib.contextmanager
def _float_means_double():
  """torch.Tensor.float() -> float64 while the original runs in float64: its one float32 cast,
  the support mask's `(s_y == 1).float()` (PFENet.py:202, PartNet.py:217), would otherwise
  resize the mask in float32 and put float32 rounding (~6e-8) into every later tensor."""
  import torch  # pylint: disable=g-import-not-at-top
  original_float = torch.Tensor.float
  torch.Tensor.float = lambda self, *args, **kwargs: self.to(torch.float64)
  try:
    yield
  finally:
    torch.Tensor.float = original_float


@contextlib.contextmanager
def _relu_as(fn):
  """flax.linen.relu -> fn while a function is traced (every ReLU of both models is nn.relu)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  saved = nn.relu
  nn.relu = fn
  try:
    yield
  finally:
    nn.relu = saved


def _relu_masks(net, variables, batch):
  """x > 0 of every ReLU of a train-mode forward, in call order (a jitted forward)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def forward(v, b):
    masks = []

    def relu(x):
      masks.append(x > 0)
      return jnp.maximum(x, 0)
    with _relu_as(relu):
      net.apply(v, b['query_img'], b['support_imgs'], b['support_masks'], train=True,
                rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])
    return masks
  return jax.jit(forward)(variables, batch)


def _pinned(fn):
  """fn(*args, masks) with every ReLU's derivative (and which inputs pass) taken from `masks`
  (_relu_masks of another run) instead of from its own input's sign."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def pinned(*args):
    *args, masks = args
    it = iter(masks)

    def relu(x):
      m = next(it)
      if m.shape != x.shape:
        raise RuntimeError(f'ReLU call order differs: mask {m.shape}, input {x.shape}')
      return jnp.where(m, x, jnp.zeros_like(x))
    with _relu_as(relu):
      return fn(*args)
  return pinned


def _flips(masks_a, masks_b):
  """(ReLU inputs whose sign differs, all ReLU inputs) between two runs' masks."""
  return (sum(int(np.sum(np.asarray(a) != np.asarray(b))) for a, b in zip(masks_a, masks_b)),
          sum(int(np.asarray(a).size) for a in masks_a))


def run_case_float64(original, module, util, args, shots):
  """Both sides in float64 on the same weights and inputs: the exactness check (an exact port
  agrees to ~1e-12 here; a different computation shows at its own size, far above).

  The original: .double() on the model and the inputs. Ours: jax_enable_x64, config.model.dtype
  'float64', the converted variables cast to float64 (exact: the original's weights are float32
  values). Same quantities as run_case: eval logits, train-mode losses, BN statistics and
  every trainable tensor's gradient, then --steps SGD steps (each on its own backbone: in
  float64 the backbone's rounding no longer needs replaying).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from mmnet_jax import train  # pylint: disable=g-import-not-at-top
  from mmnet_jax.models import registry  # pylint: disable=g-import-not-at-top

  spec = registry.get(original.name)
  frozen = tuple(spec.frozen)
  query, supports, s_y, label = make_inputs(args.seed + shots, args.batch, shots, args.size)
  model = parity_models.build(original, module, args.depth, shots, args.seed)
  parity_models.freeze_backbone(model)
  _calibrate_bn(model, torch.from_numpy(np.concatenate([query, supports[:, 0]])))
  init_sd = {k: v.clone() for k, v in model.state_dict().items()}
  compat = original.compat_modes[0]   # the mode whose training the original has
  config = our_config(original, args.depth, shots, compat, args.attention_chunk)
  config.model.dtype = 'float64'
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'official.pth')
    torch.save({'epoch': 1, 'state_dict': {f'module.{k}': v for k, v in init_sd.items()},
                'optimizer': {}}, path)
    var = _our_variables(path, config.model, shots, original.fmt)
  var = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), var)
  model64 = _as_float64(model, init_sd)
  del model

  def batch64(*arrays):
    b = _our_batch(*arrays)
    return {k: v.astype(jnp.float64) if v.dtype == jnp.float32 else v for k, v in b.items()}

  batch = batch64(query, supports, s_y, label)
  torch_in = _doubles((query, supports, s_y, label))
  mode = {None: '-', True: 'compat', False: 'per-shot'}[compat]
  tol = EXACT_TOLERANCE
  rows = []
  net = spec.build(config.model)

  model64.eval()
  with torch.no_grad():
    ref = model64(*torch_in[:3]).numpy().transpose(0, 2, 3, 1)
  out = jax.jit(lambda v, b: net.apply(v, b['query_img'], b['support_imgs'],
                                       b['support_masks'], train=False)['logits'])(var, batch)
  if out.dtype != jnp.float64:
    raise RuntimeError(f'our logits came out {out.dtype}, not float64: a layer forces its dtype')
  rows.append(_row(shots, mode, 'eval logits', *_rel(np.asarray(out), ref), tol))

  model64.train()
  _set_dropout_zero(model64)
  terms_t, total_t, grads_t = _torch_train_pass(original, model64, *torch_in,
                                                config.train.aux_weight)
  sd = dict(model64.state_dict())
  bn_ref = _converted64(sd, original.fmt)['batch_stats']
  sd.update(grads_t)
  grads_ref = {p: v for p, v in _converted64(sd, original.fmt)['params'].items()
               if p.split('/')[0] not in frozen}

  def loss_fn(params, batch_stats, b):
    o, new_state = net.apply({'params': params, 'batch_stats': batch_stats}, b['query_img'],
                             b['support_imgs'], b['support_masks'], train=True,
                             rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])
    total, parts = spec.loss(o, b['query_label'], config.train)
    return total, (parts, new_state['batch_stats'])

  (total, (parts, new_bs)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      var['params'], var['batch_stats'], batch)
  for term, ref_val in list(terms_t.items()) + [('total', total_t)]:
    ours = float(total if term == 'total' else parts[term])
    rows.append(_row(shots, mode, f'train loss {term} ({ours:.12f} vs {ref_val:.12f})',
                     *_rel(ours, ref_val), tol))
  ours_bn = {'/'.join(p): v for p, v in _flat(jax.device_get(new_bs)).items()}
  ours_bn = {p: ours_bn[p] for p in bn_ref}
  worst, where, mean, _ = _worst(ours_bn, bn_ref)
  rows.append(_row(shots, mode, f'train BN running stats ({len(bn_ref)} arrays; worst {where})',
                   worst, mean, tol))
  grads = {'/'.join(p): v for p, v in _flat(jax.device_get(grads)).items()}
  grads = {p: grads[p] for p in grads_ref}
  worst, where, mean, detail = _worst(grads, grads_ref)
  rows.append(_row(shots, mode, f'gradients ({len(grads_ref)} trainable tensors; worst '
                   f'{where})', worst, mean, tol))

  # Where float32 loses it: ours in float32 against ours in float64 (= the original's float64,
  # rows above), first as is, then with every ReLU's derivative pinned to the float64 run's.
  # A ReLU input within rounding of 0 takes the other branch in float32 and switches its
  # pixel's whole gradient path on or off: if pinning closes the gap, those flips are what
  # amplifies float32 rounding, not a difference of computation.
  config32 = our_config(original, args.depth, shots, compat, args.attention_chunk)
  net32 = spec.build(config32.model)
  var32 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), var)
  batch32 = _our_batch(query, supports, s_y, label)
  masks64 = _relu_masks(net, var, batch)
  flipped, relu_inputs = _flips(_relu_masks(net32, var32, batch32), masks64)

  def loss32(params, b):
    o, _ = net32.apply({'params': params, 'batch_stats': var32['batch_stats']}, b['query_img'],
                       b['support_imgs'], b['support_masks'], train=True,
                       rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])
    return spec.loss(o, b['query_label'], config32.train)[0]

  g32 = jax.jit(jax.grad(loss32))(var32['params'], batch32)
  g32_pinned = jax.jit(jax.grad(_pinned(loss32)))(var32['params'], batch32, masks64)
  ours64 = {p: np.asarray(v) for p, v in grads.items()}
  extra = []
  for label_, g, pinned in (
      (f'gradients, ours float32 vs ours float64 ({flipped} of {relu_inputs} ReLU inputs '
       f'change sign)', g32, False),
      ("gradients, ours float32 with the float64 run's ReLU derivatives vs ours float64",
       g32_pinned, True)):
    flat = {'/'.join(p): v for p, v in _flat(jax.device_get(g)).items()}
    worst, where, mean, per = _worst({p: flat[p] for p in ours64}, ours64)
    # Pinned, what is left is float32's continuous rounding: held to the float32 tolerance.
    rows.append(_row(shots, mode, f'{label_} (worst {where})', worst, mean,
                     *((TOLERANCE,) if pinned else ('-', '', 'info (next row)'))))
    extra.append(per)
  print(f'K={shots} float64 single pass done', flush=True)
  # per tensor: (ours f64 vs original f64, ours f32 vs ours f64, the same ReLU-pinned)
  detail = {n: (detail[n], *(e[n] for e in extra)) for n in detail}
  if args.steps <= 0:
    return rows, detail

  batches = [make_inputs(args.seed + 1000 * shots + i, args.step_batch, shots, args.size)
             for i in range(args.steps)]
  tc = config.train
  losses_t, before, after = _torch_steps(original, util, model64, init_sd, batches, tc,
                                         args.total_steps, _doubles)
  after_ref = _converted64(after, original.fmt)
  upd = dict(before)
  upd.update({n: after[n] - before[n] for n, _ in model64.named_parameters()})
  upd_ref = {p: v for p, v in _converted64(upd, original.fmt)['params'].items()
             if p.split('/')[0] not in frozen}
  tx = _make_optimizer()(config, args.total_steps, var['params'])
  state = {'step': jnp.zeros((), jnp.int32), 'params': var['params'],
           'batch_stats': var['batch_stats'], 'opt_state': tx.init(var['params'])}
  step = jax.jit(train.make_train_step(net, tx, config))
  losses_j = []
  for b in batches:
    state, metrics = step(state, batch64(*b))
    losses_j.append(float(metrics['loss']))
  state = jax.device_get(state)
  desc = f'{args.steps} SGD steps (batch {args.step_batch}, T = {args.total_steps})'
  errs = [_rel(a, b) for a, b in zip(losses_j, losses_t)]
  rows.append(_row(shots, mode, f'{desc}: loss per step', max(e[0] for e in errs),
                   float(np.mean([e[1] for e in errs])), tol))
  ours_p = {'/'.join(p): v for p, v in _flat(state['params']).items()}
  init_p = {'/'.join(p): np.asarray(v) for p, v in _flat(var['params']).items()}
  if any(v.dtype != np.float64 for v in ours_p.values()):
    raise RuntimeError('our parameters left float64 during the steps')
  worst, where, mean, _ = _worst(ours_p, after_ref['params'])
  rows.append(_row(shots, mode, f'{desc}: parameters after ({len(ours_p)} arrays; worst '
                   f'{where})', worst, mean, tol))
  worst, where, mean, _ = _worst({p: ours_p[p] - init_p[p] for p in upd_ref}, upd_ref)
  rows.append(_row(shots, mode, f'{desc}: updates ({len(upd_ref)} trainable arrays; worst '
                   f'{where})', worst, mean, tol))
  ours_bn = {'/'.join(p): v for p, v in _flat(state['batch_stats']).items()}
  worst, where, mean, _ = _worst({p: ours_bn[p] for p in after_ref['batch_stats']},
                                 after_ref['batch_stats'])
  rows.append(_row(shots, mode, f'{desc}: BN running stats after ({len(after_ref["batch_stats"])}'
                   f' arrays; worst {where})', worst, mean, tol))

  # The same steps in float32 (ours), as is and with each step's ReLU derivatives pinned to
  # the float64 run's at that step (masks from a float64 forward at each step's parameters).
  tx32 = _make_optimizer()(config32, args.total_steps, var32['params'])
  step32 = train.make_train_step(net32, tx32, config32)
  runs = {}
  for pinned in (False, True):
    st = {'step': jnp.zeros((), jnp.int32), 'params': var32['params'],
          'batch_stats': var32['batch_stats'], 'opt_state': tx32.init(var32['params'])}
    st64 = {'step': jnp.zeros((), jnp.int32), 'params': var['params'],
            'batch_stats': var['batch_stats'], 'opt_state': tx.init(var['params'])}
    fn = jax.jit(_pinned(step32)) if pinned else jax.jit(step32)
    for b in batches:
      if pinned:
        masks = _relu_masks(net, {'params': st64['params'], 'batch_stats': st64['batch_stats']},
                            batch64(*b))
        st = fn(st, _our_batch(*b), masks)[0]
        st64 = step(st64, batch64(*b))[0]
      else:
        st = fn(st, _our_batch(*b))[0]
    runs[pinned] = {'/'.join(p): np.asarray(v) for p, v in _flat(jax.device_get(st['params'])
                                                                 ).items()}
  upd64 = {p: ours_p[p] - init_p[p] for p in upd_ref}
  for pinned, label_ in ((False, 'ours float32 vs ours float64'),
                         (True, "ours float32 with the float64 run's ReLU derivatives vs ours "
                                'float64')):
    p32 = runs[pinned]
    worst_p, where_p, _, _ = _worst({p: p32[p] for p in ours_p}, ours_p)
    worst, where, mean, _ = _worst({p: p32[p] - init_p[p] for p in upd_ref}, upd64)
    rows.append(_row(shots, mode, f'{desc}: updates, {label_} (worst {where}; parameters: '
                     f'{worst_p:.2e}, {where_p})', worst, mean,
                     *((TOLERANCE,) if pinned else ('-', '', 'info (next row)'))))
  return rows, detail


def _steps_case(original, util, model, replays, init_sd, net, config, var, args, shots, frozen,
                mode):
  """--steps SGD steps of both recipes from the same weights on the same batches."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  batches = [make_inputs(args.seed + 1000 * shots + i, args.step_batch, shots, args.size)
             for i in range(args.steps)]
  tc = config.train
  t0 = time.time()
  losses_t, before, after = _torch_steps(original, util, model, init_sd, batches, tc,
                                         args.total_steps,
                                         lambda b: [torch.from_numpy(a) for a in b])
  t_torch = time.time() - t0
  names = [n for n, _ in model.named_parameters()]

  def in_our_layout(before, after):
    # The update in torch's own precision, then converted (a float32 difference of converted
    # parameters would round the small update to the parameter's ulp).
    upd = _grads_in_our_layout(model, {n: after[n] - before[n] for n in names}, original.fmt,
                               frozen)
    return _flat(_converted(after, original.fmt)['params']), upd

  after_t, upd_t = in_our_layout(before, after)
  bn_ref = _flat(_converted(after, original.fmt)['batch_stats'])
  # The original's head on our backbone features, float32 and float64 (see run_case).
  calls = [c for b in batches for c in _our_backbone_calls(net, var, _our_batch(*b))]
  rep = []
  for m, dt, cast in ((replays[0], torch.float32, lambda b: [torch.from_numpy(a) for a in b]),
                      (replays[1], torch.float64, _doubles)):
    _replay_backbone(m, calls, dt)
    _, rb, ra = _torch_steps(original, util, m, init_sd, batches, tc, args.total_steps, cast)
    rep.append(in_our_layout(rb, ra))
  # Ours: the library's optimizer and train step.
  from mmnet_jax import train  # pylint: disable=g-import-not-at-top
  tx = _make_optimizer()(config, args.total_steps, var['params'])
  state = {'step': jnp.zeros((), jnp.int32), 'params': var['params'],
           'batch_stats': var['batch_stats'], 'opt_state': tx.init(var['params'])}
  step = jax.jit(train.make_train_step(net, tx, config))
  losses_j = []
  t0 = time.time()
  for b in batches:
    state, metrics = step(state, _our_batch(*b))
    losses_j.append(float(metrics['loss']))
  state = jax.device_get(state)
  print(f'K={shots} {args.steps} steps: torch {t_torch:.1f}s, ours {time.time() - t0:.1f}s',
        flush=True)

  desc = f'{args.steps} SGD steps (batch {args.step_batch}, T = {args.total_steps})'
  errs = [_rel(a, b) for a, b in zip(losses_j, losses_t)]
  pairs = ', '.join(f'{a:.5f}/{b:.5f}' for a, b in zip(losses_j, losses_t))
  rows = [_row(shots, mode, f'{desc}: loss per step (ours/torch {pairs})',
               max(e[0] for e in errs), float(np.mean([e[1] for e in errs])))]
  ours_p = _flat(state['params'])
  init_p = _flat(var['params'])
  upd_ours = {p: ours_p[p] - init_p[p] for p in upd_t}
  frozen_moved = max(float(np.max(np.abs(ours_p[p] - init_p[p]))) for p in ours_p
                     if p[0] in frozen)
  worst, where, mean, _ = _worst(upd_ours, upd_t)
  rows.append(_row(shots, mode, f'{desc}: updates (after - initial), each its own backbone '
                   f'(worst {where})', worst, mean, '-', '', 'info (next rows)'))
  (mx, mean, tol, f64, verdict, where), _ = _three_way(ours_p, rep[0][0], rep[1][0])
  rows.append(_row(shots, mode, f"{desc}: parameters after, vs the original's head on our "
                   f'backbone features ({len(ours_p)} arrays; worst {where})',
                   mx, mean, tol, f64, verdict))
  (mx, mean, tol, f64, verdict, where), _ = _three_way(upd_ours, rep[0][1], rep[1][1])
  rows.append(_row(shots, mode, f'{desc}: updates, same ({len(upd_t)} trainable arrays; worst '
                   f'{where}; frozen moved {frozen_moved:.0e})', mx, mean, tol, f64, verdict))
  ours_bn = {p: v for p, v in _flat(state['batch_stats']).items() if p in bn_ref}
  worst, where, mean, _ = _worst(ours_bn, bn_ref)
  rows.append(_row(shots, mode, f'{desc}: BN running stats after ({len(bn_ref)} arrays; worst '
                   f'{where})', worst, mean))
  return rows


def format_table(rows, command, device, setup, dtype='float32'):
  lines = [f'Command: `{command}`', '', f'Device: {device}; {dtype}; {setup}.', '',
           '| K | our mode | quantity | max rel err | mean rel err | vs the float64 original '
           '| tol | within tol |', '|---|---|---|---|---|---|---|---|']
  for shots, mode, what, mx, mean, f64, tol, verdict in rows:
    lines.append(f'| {shots} | {mode} | {what} | {mx:.2e} | {mean:.2e} | {f64 or "-"} | {tol} '
                 f'| {verdict} |')
  return '\n'.join(lines) + '\n'


GRAD_COLUMNS = ('own', 'head f64', 'orig f32')          # float32 run: see _three_way
EXACT_COLUMNS = ('f64', 'f32', 'f32 pinned')           # float64 run: see the exactness check


def format_grad_detail(details, columns=GRAD_COLUMNS):
  """Per-tensor gradient errors, one row per tensor and, per K, one cell per column (the three
  errors each detail entry holds, in `columns`' order)."""
  ks = sorted(details)
  names = sorted({n for d in details.values() for n in d})
  head = ' | '.join(f'K={k} {c}' for k in ks for c in columns)
  lines = [f'| trainable tensor | {head} |', '|---|' + '---|' * (len(columns) * len(ks))]
  nan = (float('nan'),) * len(columns)
  for n in names:
    cells = ' | '.join(f'{e:.1e}' for k in ks for e in details[k].get(n, nan))
    lines.append(f'| {n} | {cells} |')
  return '\n'.join(lines) + '\n'


def write_section(path, model_name, text):
  """Replaces the text between this model's markers in `path` (appends them if absent)."""
  begin, end = f'<!-- parity:{model_name} -->', f'<!-- /parity:{model_name} -->'
  old = open(path).read() if os.path.exists(path) else ''
  block = f'{begin}\n{text}{end}'
  pattern = re.compile(re.escape(begin) + '.*?' + re.escape(end), re.S)
  new = pattern.sub(lambda _: block, old) if pattern.search(old) else old + '\n' + block + '\n'
  with open(path, 'w') as f:
    f.write(new)


def main(argv=None):
  argv_list = list(sys.argv[1:] if argv is None else argv)
  if any(a in ('--model=hsnet',) for a in argv_list) or any(
      a == '--model' and b == 'hsnet' for a, b in zip(argv_list, argv_list[1:])):
    import parity_hsnet  # pylint: disable=g-import-not-at-top  (HSNet: tools/parity_hsnet.py)
    return parity_hsnet.main(argv_list)
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='mmnet', choices=sorted(parity_models.ORIGINALS) +
                      ['hsnet'])
  parser.add_argument('--official-repo', required=True,
                      help="a checkout of the original's model/ and util/")
  parser.add_argument('--depth', type=int, default=50, choices=(50, 101))
  parser.add_argument('--size', type=int, default=473)
  parser.add_argument('--shots', default='1,5')
  parser.add_argument('--batch', type=int, default=1, help='batch of the single-pass checks')
  parser.add_argument('--steps', type=int, default=3, help='SGD steps compared (0: none)')
  parser.add_argument('--step-batch', type=int, default=2)
  parser.add_argument('--total-steps', type=int, default=100,
                      help="the poly schedule's T (max_iter) for the steps")
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--attention-chunk', type=int, default=None,
                      help="MM-Net's attention_chunk (default: the model's config default)")
  parser.add_argument('--dtype', default='float32', choices=('float32', 'float64'),
                      help='float64: both sides in float64, the exactness check (its own '
                      'section, <!-- parity:MODEL-float64 -->)')
  parser.add_argument('--count-params', action='store_true',
                      help="print the original's parameter counts (R50, R101) and exit")
  parser.add_argument('--out', default=None,
                      help="markdown file: the model's section between its markers is replaced")
  args = parser.parse_args(argv)
  original = parity_models.ORIGINALS[args.model]
  if (args.size - 1) % 8:
    parser.error('--size: the originals need (size - 1) % 8 == 0')
  if args.model == 'mmnet' and args.size != 473:
    parser.error('--size: the original MM-Net hard-codes 60x60 feature maps, only 473 runs')
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  exact = args.dtype == 'float64'
  if exact:
    jax.config.update('jax_enable_x64', True)
  torch.set_num_threads(os.cpu_count() or 1)
  module, util = parity_models.import_original(original, args.official_repo)
  if args.count_params:
    for depth in (50, 101):
      print(f'{args.model} resnet{depth}:', parity_models.count_params(original, module, depth))
    return 0
  rows, details = [], {}
  start = time.time()
  for shots in (int(k) for k in args.shots.split(',')):
    case = run_case_float64 if exact else run_case
    with _float_means_double() if exact else contextlib.nullcontext():
      case_rows, details[shots] = case(original, module, util, args, shots)
    rows += case_rows
  command = 'python tools/parity_official.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
  setup = (f'ResNet-{args.depth}, {args.size}x{args.size}, batch {args.batch} (steps: '
           f'{args.step_batch}), seed {args.seed}, random init, '
           f'{time.time() - start:.0f} s wall time for everything')
  if args.model == 'mmnet':
    chunk = our_config(original, args.depth, 1, True, args.attention_chunk).model.attention_chunk
    setup = f'{setup}, our attention_chunk {chunk}'
  table = format_table(rows, command, f'CPU (torch {torch.__version__}, jax {jax.__version__})',
                       setup, args.dtype)
  detail = ('\nPer-tensor gradient errors, max |a - b| / max |b| of each tensor: ours vs the '
            'original, both in float64 ("f64"); ours in float32 vs ours in float64 ("f32"); '
            "the same with every ReLU's derivative pinned to the float64 run's (\"f32 "
            'pinned"):\n\n' + format_grad_detail(details, EXACT_COLUMNS)) if exact else ('\nPer-tensor gradient errors, max |a - b| / max |b| of each tensor: ours vs the '
            'original in float32, each on its own backbone ("own"); ours vs the original\'s '
            'head on our backbone features in float64 ("head f64"), and that head\'s own '
            'float32 vs float64 ("orig f32"):\n\n'
            + format_grad_detail(details))
  print(table + detail)
  if args.out:
    write_section(args.out, f'{args.model}-float64' if exact else args.model, table + detail)
  bad = [r for r in rows if r[7] == 'NO']
  return 1 if bad else 0


if __name__ == '__main__':
  sys.exit(main())
