"""Numerical parity of mmnet_jax's HSNet against the original (juhongm999/hsnet model/).

    python tools/parity_official.py --model hsnet --official-repo PATH [--depth 50] \
        [--size 400] [--shots 1,5] [--steps 3] [--dtype float32|float64] [--out docs/parity.md]

Needs torch and torchvision (its ResNet is the original's backbone) and a checkout of the
original; its model/ package is imported from --official-repo, nothing is copied. Per K:
  1. Build the original (torch.manual_seed(seed); `resnet.resnet{50,101}(pretrained=True)` is
     redirected to random init, there is no download here). Backbone BN running statistics are
     set from one random batch (momentum 1), so eval-mode activations keep realistic scales.
  2. Save its state dict as train.py does (best_model.pt: torch.save of the DataParallel
     state dict, 'module.' keys), read it back with mmnet_jax.torch_pickle (no torch), convert
     it with `mmnet_jax.convert --format hsnet-official`, fill our variables with merge_into.
  3. Same inputs to both: query, K supports, per-shot blob masks, a query label with a 255 band.
  4. Eval: shot 0's logits (K = 1) and `predict_mask_nshot`'s vote against ours (K > 1).
  5. Train mode (`train_mode()`: the backbone stays in eval mode, no_grad): the loss of
     compute_objective on the label with 255 as background (HSNet's reader), the gradient of
     every hpn_learner tensor (converted to our layout by the converter).
  6. --steps Adam steps on fixed 1-shot batches: torch.optim.Adam(model.parameters(), lr=1e-3)
     as train.py; ours mmnet_jax.optimizer.make_optimizer with train.make_train_step. The
     loss of each step, then every parameter and its total update.
float32 rows are judged three ways: ours and the original in float32 against the original in
float64; a row passes when ours is within TOLERANCE of it or within twice the original's own
float32 error. --dtype float64 runs both sides in float64 (torch .double(), its one float32
cast of the support mask made double; ours jax_enable_x64, model.dtype 'float64'), tolerance
EXACT_TOLERANCE.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import types

import numpy as np

TOLERANCE = 1e-4
EXACT_TOLERANCE = 1e-8

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))


def import_original(repo: str):
  """model.hsnet of the checkout, with torchvision's ResNets built without a download."""
  # torchvision's C++ ops are absent beside the CPU torch wheel; its ResNet needs none of them.
  sys.modules.setdefault('torchvision._meta_registrations', types.ModuleType('stub'))
  from torchvision.models import resnet  # pylint: disable=g-import-not-at-top
  for name in ('resnet50', 'resnet101'):
    builder = getattr(resnet, f'_orig_{name}', getattr(resnet, name))
    setattr(resnet, f'_orig_{name}', builder)
    setattr(resnet, name, lambda pretrained=False, _b=builder, **kw: _b(weights=None, **kw))
  sys.path.insert(0, os.path.abspath(repo))
  import model.hsnet as original  # pylint: disable=g-import-not-at-top
  return original


def _mask_feature_in_dtype(features, support_mask):
  """hsnet.mask_feature with the mask in the features' dtype: the original's `.float()` would
  resize the mask in float32 inside a float64 run."""
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  for idx, feature in enumerate(features):
    mask = F.interpolate(support_mask.unsqueeze(1).to(feature.dtype), feature.size()[2:],
                         mode='bilinear', align_corners=True)
    features[idx] = feature * mask
  return features


def build_torch(original, depth: int, seed: int, calib):
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  net = original.HypercorrSqueezeNetwork(f'resnet{depth}', False)
  bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for m in bns:
    m.momentum = 1.0
  net.backbone.train()
  with torch.no_grad():
    net.backbone(torch.as_tensor(calib))
  for m in bns:
    m.momentum = 0.1
    m.num_batches_tracked.zero_()
  net.eval()
  return net


def count_params(original) -> dict:
  out = {}
  for depth in (50, 101):
    net = original.HypercorrSqueezeNetwork(f'resnet{depth}', False)
    out[depth] = (sum(p.numel() for p in net.parameters()),
                  sum(p.numel() for p in net.hpn_learner.parameters()),
                  sum(p.numel() for p in net.backbone.fc.parameters()))
  return out


def _blob_masks(rng, n, size):
  yy, xx = np.mgrid[:size, :size].astype(np.float64) / size
  masks = np.zeros((n, size, size), np.float32)
  for i in range(n):
    for _ in range(rng.integers(1, 4)):
      cy, cx = rng.uniform(0.2, 0.8, 2)
      ry, rx = rng.uniform(0.1, 0.3, 2)
      masks[i] = np.maximum(masks[i], (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1))
  return masks


def make_inputs(seed: int, batch: int, shots: int, size: int):
  """NCHW query, (B, K, 3, S, S) supports, (B, K, S, S) {0, 1} masks, (B, S, S) label with 255."""
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
  supports = rng.standard_normal((batch, shots, 3, size, size)).astype(np.float32)
  masks = _blob_masks(rng, batch * shots, size).reshape(batch, shots, size, size)
  label = _blob_masks(rng, batch, size).astype(np.int64)
  label[:, -6:, :] = 255
  return query, supports, masks, label


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _state_dict(net):
  return {f'module.{k}': v.detach().cpu().numpy() for k, v in net.state_dict().items()}


def saved_and_read_back(net) -> dict:
  """The state dict as train.py's Logger.save_model_miou writes best_model.pt (torch.save of
  the DataParallel model's state_dict: 'module.' keys), read back without torch."""
  import collections  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from mmnet_jax import convert, torch_pickle  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'best_model.pt')
    torch.save(collections.OrderedDict((f'module.{k}', v) for k, v in net.state_dict().items()),
               path)
    sd = convert.extract_state_dict(torch_pickle.load(path), 'hsnet-official', path)
    return {k: np.asarray(v) for k, v in sd.items()}


def our_setup(depth: int, size: int, shots: int, sd: dict, dtype: str):
  """(config, model, variables) of our HSNet holding the original's weights `sd`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs.hsnet import pascal_1shot  # pylint: disable=g-import-not-at-top
  from mmnet_jax import convert  # pylint: disable=g-import-not-at-top
  from mmnet_jax.models import registry  # pylint: disable=g-import-not-at-top
  config = pascal_1shot.get_config(f'shots={shots}')
  config.model.backbone = f'resnet{depth}_tv'
  config.model.dtype = dtype
  config.train.crop_size = size
  net = registry.build(config)
  z = jnp.zeros((1, size, size, 3))
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), z, z[:, None], z[:, None, ..., 0]))
  tree = convert.convert_state_dict(sd, 'hsnet-official')
  variables = convert.merge_into({c: dict(v) for c, v in shapes.items()}, tree)
  wide = jnp.float64 if dtype == 'float64' else jnp.float32
  variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, wide), variables)
  return config, net, variables


def _nhwc(x):
  return np.moveaxis(np.asarray(x), -3, -1)


def torch_logits(net, q, s, m, shot, dt):
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    out = net(torch.as_tensor(q, dtype=dt), torch.as_tensor(s[:, shot], dtype=dt),
              torch.as_tensor(m[:, shot], dtype=dt))
  return out.numpy()


def torch_vote(net, q, s, m, dt):
  import torch  # pylint: disable=g-import-not-at-top
  batch = {'query_img': torch.as_tensor(q, dtype=dt), 'support_imgs': torch.as_tensor(s, dtype=dt),
           'support_masks': torch.as_tensor(m, dtype=dt)}
  with torch.no_grad():
    return net.predict_mask_nshot(batch, s.shape[1]).numpy()


def torch_loss_and_grads(net, q, s, m, label, dt):
  """train_mode() forward of shot 0, compute_objective on the 255-as-background label."""
  import torch  # pylint: disable=g-import-not-at-top
  net.train_mode()
  net.zero_grad()
  logits = net(torch.as_tensor(q, dtype=dt), torch.as_tensor(s[:, 0], dtype=dt),
               torch.as_tensor(m[:, 0], dtype=dt))
  gt = torch.as_tensor(np.where(label == 255, 0, label))
  loss = net.compute_objective(logits, gt)
  loss.backward()
  grads = {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in
           net.named_parameters()}
  net.eval()
  return float(loss.detach()), grads


def _learner_of(sd):
  """hpn_learner's parameters of a state dict in our layout, at the state dict's precision:
  the converter writes float32, so a float64 array goes through as hi + lo (its float32
  rounding and the float32 rest; the layout change is linear), summed back in float64."""
  from mmnet_jax import convert  # pylint: disable=g-import-not-at-top
  conv = lambda d: _flat(convert.convert_state_dict(d, 'hsnet-official')['params']  # noqa: E731
                         ['hpn_learner'])
  if not any(v.dtype == np.float64 for v in sd.values()):
    return conv(sd)
  hi = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in sd.items()}
  lo = {k: (v - hi[k].astype(np.float64)).astype(np.float32) if v.dtype == np.float64 else v
        for k, v in sd.items()}
  a, b = conv(hi), conv(lo)
  return {p: a[p].astype(np.float64) + b[p].astype(np.float64) for p in a}


def grads_in_our_layout(net, grads):
  """The learner's gradients (or any per-parameter tensors) as our flat parameter dict."""
  sd = _state_dict(net)
  for k, g in grads.items():
    sd[f'module.{k}'] = g.detach().cpu().numpy()
  return _learner_of(sd)


def _flat(tree, prefix=()):
  if hasattr(tree, 'items'):
    return {p: v for k, sub in tree.items() for p, v in _flat(sub, prefix + (k,)).items()}
  return {prefix: np.asarray(tree)}


def our_batch(q, s, m, label):
  return {'query_img': _nhwc(q), 'support_imgs': _nhwc(s),
          'support_labels': m.astype(np.int32), 'query_label': label.astype(np.int32)}


def our_eval(net, variables, q, s, m, wide):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  out = net.apply(variables, jnp.asarray(_nhwc(q), wide), jnp.asarray(_nhwc(s), wide),
                  jnp.asarray(m, wide), train=False)
  return {k: np.asarray(v) for k, v in out.items()}


def our_loss_and_grads(config, net, variables, q, s, m, label, wide):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mmnet_jax.models import registry  # pylint: disable=g-import-not-at-top
  loss_of = registry.of(config).loss

  def loss(params):
    out = net.apply({**variables, 'params': params}, jnp.asarray(_nhwc(q), wide),
                    jnp.asarray(_nhwc(s[:, :1]), wide), jnp.asarray(m[:, :1], wide), train=True)
    return loss_of(out, jnp.asarray(label), config.train)[0]
  value, grads = jax.jit(jax.value_and_grad(loss))(variables['params'])
  return float(value), grads['hpn_learner']


def torch_adam_steps(net, batches, steps, dt):
  """train.py's optimiser: Adam over model.parameters() (the backbone gets no gradient)."""
  import torch  # pylint: disable=g-import-not-at-top
  opt = torch.optim.Adam([{'params': net.parameters(), 'lr': 1e-3}])
  losses = []
  for i in range(steps):
    q, s, m, label = batches[i % len(batches)]
    net.train_mode()
    opt.zero_grad()
    logits = net(torch.as_tensor(q, dtype=dt), torch.as_tensor(s[:, 0], dtype=dt),
                 torch.as_tensor(m[:, 0], dtype=dt))
    loss = net.compute_objective(logits, torch.as_tensor(np.where(label == 255, 0, label)))
    loss.backward()
    opt.step()
    losses.append(float(loss.detach()))
  net.eval()
  return losses


def our_adam_steps(config, net, variables, batches, steps):
  import jax  # pylint: disable=g-import-not-at-top
  from mmnet_jax import optimizer, train  # pylint: disable=g-import-not-at-top
  tx = optimizer.make_optimizer(config, steps, variables['params'])
  state = {'step': 0, 'params': variables['params'], 'batch_stats': variables['batch_stats'],
           'opt_state': tx.init(variables['params'])}
  step = jax.jit(train.make_train_step(net, tx, config))
  losses = []
  for i in range(steps):
    q, s, m, label = batches[i % len(batches)]
    b = our_batch(q, s[:, :1], m[:, :1], label)
    if variables['params']['hpn_learner']['decoder2_2']['bias'].dtype == np.float64:
      b = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in b.items()}
    state, metrics = step(state, b)
    losses.append(float(metrics['loss']))
  return losses, state['params']


class Case:
  """One K: the original in float32 and float64, ours in the run's dtype, on shared inputs."""

  def __init__(self, original, args, shots):
    import torch  # pylint: disable=g-import-not-at-top
    self.args, self.shots = args, shots
    size, exact = args.size, args.dtype == 'float64'
    calib = np.random.default_rng(args.seed + 7).standard_normal(
        (2, 3, size, size)).astype(np.float32)
    self.ref = build_torch(original, args.depth, args.seed, calib)
    self.ref.mask_feature = _mask_feature_in_dtype
    self.ref64 = copy.deepcopy(self.ref).double()
    self.sd = saved_and_read_back(self.ref)
    self.dtype = 'float64' if exact else 'float32'
    self.config, self.net, self.variables = our_setup(args.depth, size, shots, self.sd,
                                                      self.dtype)
    self.wide = np.float64 if exact else np.float32
    self.torch_dt = torch.float64 if exact else torch.float32
    self.inputs = make_inputs(args.seed, args.batch, shots, size)


def _verdict(ours_vs_ref, own, exact):
  tol = EXACT_TOLERANCE if exact else TOLERANCE
  if exact:
    return tol, 'yes' if ours_vs_ref <= tol else 'NO'
  return tol, 'yes' if ours_vs_ref <= max(tol, 2 * own) else 'NO'


def run_case(original, args, shots):
  """Table rows (K, quantity, ours vs the reference, the original's own float32 error, tol,
  verdict) and the per-tensor gradient errors."""
  import torch  # pylint: disable=g-import-not-at-top
  c = Case(original, args, shots)
  exact = args.dtype == 'float64'
  q, s, m, label = c.inputs
  rows, detail = [], {}
  ref = c.ref64 if exact else c.ref

  def add(what, ours, theirs32, theirs64):
    vs = _rel(ours, theirs64)
    own = 0.0 if exact else _rel(theirs32, theirs64)
    tol, verdict = _verdict(vs, own, exact)
    direct = '' if exact else f' (ours vs the original in float32: {_rel(ours, theirs32):.1e})'
    rows.append((shots, what + direct, vs, own, tol, verdict))

  mine = our_eval(c.net, c.variables, q, s, m, c.wide)
  t32 = torch_logits(c.ref, q, s, m, 0, torch.float32)
  t64 = torch_logits(c.ref64, q, s, m, 0, torch.float64)
  add('eval logits, shot 0 (B, 2, H, W)', np.moveaxis(mine['shot_logits'][:, 0], -1, 1), t32,
      t64)
  if shots > 1:
    v_ref = torch_vote(ref, q, s, m, c.torch_dt)
    v_ours = np.argmax(mine['logits'], -1)
    differ = int(np.sum(v_ref != v_ours))
    fg = int(np.sum(v_ref))
    rows.append((shots, f'K-shot vote: pixels that differ (of {v_ref.size}; original '
                 f'foreground {fg})', float(differ), 0.0, 0, 'yes' if differ == 0 else 'NO'))
  if shots == 1:
    l_ours, g_ours = our_loss_and_grads(c.config, c.net, c.variables, q, s, m, label, c.wide)
    l32, g32 = torch_loss_and_grads(c.ref, q, s, m, label, torch.float32)
    l64, g64 = torch_loss_and_grads(c.ref64, q, s, m, label, torch.float64)
    add('train loss (compute_objective, 255 as background)', l_ours, l32, l64)
    ours_f, r32_f, r64_f = (_flat(g_ours), grads_in_our_layout(c.ref, g32),
                            grads_in_our_layout(c.ref64, g64))
    per = {'/'.join(p): (_rel(ours_f[p], r64_f[p]), _rel(r32_f[p], r64_f[p])) for p in r64_f}
    worst = max(per, key=lambda n: per[n][0])
    vs, own = per[worst]
    tol, verdict = _verdict(vs, own, exact)
    fails = sum(1 for a, b in per.values() if _verdict(a, b, exact)[1] == 'NO')
    direct = '' if exact else (
        f'; ours vs the original in float32: worst {max(_rel(ours_f[p], r32_f[p]) for p in r64_f):.1e}')
    rows.append((shots, f'gradients of all {len(per)} hpn_learner tensors (worst {worst}; '
                 f'{fails} over tol{direct})', vs, own, tol, 'yes' if fails == 0 else 'NO'))
    detail = per
    if args.steps:
      rows += steps_rows(original, c, args, exact)
  return rows, detail


def steps_rows(original, c, args, exact):
  """--steps Adam steps on fixed batches (batch --step-batch), from the same weights."""
  import torch  # pylint: disable=g-import-not-at-top
  batches = [make_inputs(args.seed + 100 + i, args.step_batch, 1, args.size)
             for i in range(args.steps)]
  init = {k: v.clone() for k, v in c.ref.state_dict().items()}
  l32 = torch_adam_steps(c.ref, batches, args.steps, torch.float32)
  p32 = _learner_of(_state_dict(c.ref))
  c.ref.load_state_dict(init)
  l64 = torch_adam_steps(c.ref64, batches, args.steps, torch.float64)
  p64 = _learner_of(_state_dict(c.ref64))
  p0 = _learner_of(c.sd)
  config = c.config.copy_and_resolve_references()
  config.train.num_steps = args.steps
  losses, params = our_adam_steps(config, c.net, c.variables, batches, args.steps)
  ours = _flat(params['hpn_learner'])
  rows = []
  for i, (a, b32, b64) in enumerate(zip(losses, l32, l64)):
    vs, own = _rel(a, b64), 0.0 if exact else _rel(b32, b64)
    tol, verdict = _verdict(vs, own, exact)
    rows.append((1, f'Adam step {i + 1}: loss', vs, own, tol, verdict))
  for what, f in (('parameters', lambda t, p: t[p]), ('updates', lambda t, p: t[p] - p0[p])):
    per = {p: (_rel(f(ours, p), f(p64, p)), 0.0 if exact else _rel(f(p32, p), f(p64, p)))
           for p in p64}
    worst = max(per, key=lambda p: per[p][0])
    vs, own = per[worst]
    fails = sum(1 for x, y in per.values() if _verdict(x, y, exact)[1] == 'NO')
    direct = '' if exact else (
        f'; ours vs the original in float32: worst {max(_rel(f(ours, p), f(p32, p)) for p in p64):.1e}')
    rows.append((1, f'after {args.steps} Adam steps: {what} of {len(per)} hpn_learner tensors '
                 f'(worst {"/".join(worst)}; {fails} over tol{direct})', vs, own,
                 EXACT_TOLERANCE if exact else TOLERANCE, 'yes' if fails == 0 else 'NO'))
  return rows


def _median_s(fn, repeats: int) -> float:
  fn()   # warm-up (and compilation for ours)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def bench(original, args) -> str:
  """Seconds per call of the eval forward (K = args.shots' first) and of a 1-shot Adam training
  step (forward, backward, update), the original against ours, on the same weights, inputs and
  batch (--batch), float32, this CPU. Ours is jitted (compile time excluded: one warm-up)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from mmnet_jax import evaluate, optimizer, train  # pylint: disable=g-import-not-at-top
  shots = int(args.shots.split(',')[0])
  size, batch = args.size, args.batch
  calib = np.random.default_rng(args.seed + 7).standard_normal((2, 3, size, size)).astype(
      np.float32)
  ref = build_torch(original, args.depth, args.seed, calib)
  config, net, variables = our_setup(args.depth, size, shots, _state_dict(ref), 'float32')
  q, s, m, label = make_inputs(args.seed, batch, shots, size)
  tq, ts, tm = (torch.as_tensor(x) for x in (q, s, m))
  b = our_batch(q, s, m, label)
  eval_step = jax.jit(evaluate.make_eval_step(net))
  eval_in = {k: jnp.asarray(b[k]) for k in ('query_img', 'support_imgs', 'support_labels')}

  def torch_eval():
    with torch.no_grad():
      if shots == 1:
        return ref(tq, ts[:, 0], tm[:, 0])
      return ref.predict_mask_nshot({'query_img': tq, 'support_imgs': ts,
                                     'support_masks': tm}, shots)
  rows = [('eval forward', _median_s(torch_eval, args.repeats),
           _median_s(lambda: jax.block_until_ready(eval_step(variables, eval_in)),
                     args.repeats))]
  # The learner alone (the 4-D convolutions) on the same 1-shot correlations.
  from mmnet_jax.models import hsnet  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    qf = ref.extract_feats(tq, ref.backbone, ref.feat_ids, ref.bottleneck_ids, ref.lids)
    sf = ref.extract_feats(ts[:, 0], ref.backbone, ref.feat_ids, ref.bottleneck_ids, ref.lids)
    sf = ref.mask_feature(sf, tm[:, 0].clone())
    corr = original.Correlation.multilayer_correlation(qf, sf, ref.stack_ids)
  ours_corr = [jnp.asarray(np.moveaxis(c.numpy(), 1, -1)) for c in corr]   # channels last
  learner = hsnet.HPNLearner(name='hpn_learner')
  lv = {'params': variables['params']['hpn_learner']}
  learn = jax.jit(lambda v, a, b_, c: learner.apply(v, a, b_, c))
  compiled = learn.lower(lv, *ours_corr).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0)) if cost else 0.0

  def torch_learner():
    with torch.no_grad():
      return ref.hpn_learner(corr)
  t_l = _median_s(torch_learner, args.repeats)
  o_l = _median_s(lambda: jax.block_until_ready(compiled(lv, *ours_corr)), args.repeats)
  rows.append(('hpn_learner alone (4-D convs, decoder)', t_l, o_l))
  opt = torch.optim.Adam([{'params': ref.parameters(), 'lr': 1e-3}])
  gt = torch.as_tensor(np.where(label == 255, 0, label))

  def torch_train():
    ref.train_mode()
    opt.zero_grad()
    loss = ref.compute_objective(ref(tq, ts[:, 0], tm[:, 0]), gt)
    loss.backward()
    opt.step()
    return loss
  tx = optimizer.make_optimizer(config, 1000, variables['params'])
  state = {'step': 0, 'params': variables['params'], 'batch_stats': variables['batch_stats'],
           'opt_state': tx.init(variables['params'])}
  step = jax.jit(train.make_train_step(net, tx, config))
  one = {k: jnp.asarray(v[:, :1] if k.startswith('support') else v) for k, v in b.items()}
  rows.append(('train step (1-shot, Adam)', _median_s(torch_train, args.repeats),
               _median_s(lambda: jax.block_until_ready(step(state, one)), args.repeats)))
  lines = [f'HSNet ResNet-{args.depth}, {size}x{size}, batch {batch}, eval K = {shots}, '
           f'median of {args.repeats} after a warm-up, {os.cpu_count()} CPU threads '
           f'(torch {torch.__version__}, jax {jax.__version__}):', '',
           '| step | original (torch) s | ours (jax) s | ours / original |', '|---|---|---|---|']
  for what, t, o in rows:
    lines.append(f'| {what} | {t:.3f} | {o:.3f} | {o / t:.2f} |')
  lines += ['', f'hpn_learner: {flops / 1e9:.1f} GFLOP per call (XLA\'s count), ours '
            f'{flops / 1e9 / o_l:.1f} GFLOP/s, the original {flops / 1e9 / t_l:.1f} GFLOP/s; '
            f'correlation shapes (B, C, ha, wa, hb, wb): {[tuple(c.shape) for c in corr]}.']
  return '\n'.join(lines) + '\n'


def format_table(rows, command, device, setup, exact):
  own = 'the original\'s own float32 error' if not exact else '-'
  lines = [f'Command: `{command}`', '', f'Device: {device}; {setup}.', '',
           f'| K | quantity | ours vs the original (float64) | {own} | tol | within tol |',
           '|---|---|---|---|---|---|']
  for shots, what, vs, own_err, tol, verdict in rows:
    own_cell = '-' if exact else f'{own_err:.2e}'
    vs_cell = f'{int(vs)}' if what.startswith('K-shot vote') else f'{vs:.2e}'
    lines.append(f'| {shots} | {what} | {vs_cell} | {own_cell} | {tol} | {verdict} |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='hsnet', choices=('hsnet',))
  parser.add_argument('--official-repo', required=True, help='checkout of juhongm999/hsnet')
  parser.add_argument('--depth', type=int, default=50, choices=(50, 101))
  parser.add_argument('--size', type=int, default=400)
  parser.add_argument('--shots', default='1,5')
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--step-batch', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'float64'))
  parser.add_argument('--count-params', action='store_true')
  parser.add_argument('--bench', action='store_true',
                      help='time the original and ours (eval forward, train step) instead')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  exact = args.dtype == 'float64'
  if exact:
    jax.config.update('jax_enable_x64', True)
  torch.set_num_threads(os.cpu_count() or 1)
  original = import_original(args.official_repo)
  if args.count_params:
    for depth, (total, learner, fc) in count_params(original).items():
      print(f'hsnet resnet{depth}: {total:,} parameters (hpn_learner {learner:,}, the unused '
            f'ImageNet fc {fc:,})')
    return 0
  if args.bench:
    print(bench(original, args))
    return 0
  start = time.time()
  rows, details = [], {}
  for shots in (int(k) for k in args.shots.split(',')):
    case_rows, details[shots] = run_case(original, args, shots)
    rows += case_rows
  command = 'python tools/parity_official.py ' + ' '.join(
      argv if argv is not None else sys.argv[1:])
  setup = (f'{args.dtype}; ResNet-{args.depth} (torchvision), {args.size}x{args.size}, batch '
           f'{args.batch} (Adam steps: batch {args.step_batch}), seed {args.seed}, random init, '
           f'{time.time() - start:.0f} s wall time for everything')
  table = format_table(rows, command, f'CPU (torch {torch.__version__}, jax {jax.__version__})',
                       setup, exact)
  print(table)
  for shots, per in details.items():
    if per:
      print(f'K={shots} per-tensor gradient errors (ours vs float64 original, original float32 '
            'vs float64):')
      for name, (a, b) in sorted(per.items()):
        print(f'  {name}: {a:.1e} {b:.1e}')
  if args.out:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import parity_official  # pylint: disable=g-import-not-at-top
    parity_official.write_section(args.out, 'hsnet-float64' if exact else 'hsnet', table)
  return 1 if any(r[5] == 'NO' for r in rows) else 0


if __name__ == '__main__':
  sys.exit(main())
