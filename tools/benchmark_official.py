"""Speed of the original PyTorch MM-Net next to mmnet_jax, measured the same way in one run.

    /work/venv/bin/python tools/benchmark_official.py --official-repo /tmp/mmnet_official \
        [--configs r50-473-k1,r50-473-k5] [--train-batch 4] [--eval-batch 1] [--repeats 3] \
        [--no-ours] [--output results.json]

Needs torch and a checkout of the original (wu-zhonghua/MM-Net: model/PartNet.py), imported
from --official-repo with the patches of tools/parity_official.py (cv2 stub, .cuda() = identity,
the K-shot branch at K = 1). The original hard-codes 60x60 feature maps: only size 473 runs.

Per configuration, on the same random inputs (parity_official.make_inputs), with the same
weights (the original's random init, backbone BN calibrated on the batch, converted for ours):
* eval: the original's forward in eval mode under torch.no_grad; ours: evaluate.make_eval_step;
* train: the original's training iteration (train mode, dropout on, backbone frozen as its
  train.py does: requires_grad False and its no_grad forward; loss main + aux + sim, backward,
  SGD momentum 0.9, weight decay 1e-4 on the non-backbone parameters); ours: train.make_train_step
  with the state donated;
* backbone: layer0..layer4 (eval mode, no_grad) called as the step calls them (the query batch,
  then each shot's); ours: the jitted ResNetBackbone, called the same way;
* convs: the backbone's convolutions alone, each distinct one timed by itself (ours:
  benchmark.bench_backbone_convs; the original: torch_backbone_convs);
each timed as the median of --repeats calls after --warmup untimed ones; the process's peak RSS
(VmHWM, reset before each timing); FLOP/s from one FLOP count for both sides (XLA's cost
analysis of our compiled program; torch's FlopCounterMode count of its eval forward and backbone
is printed next to it as a cross-check), against the peak FLOP/s of a large float32 matmul
measured by each framework. torch runs with torch.set_num_threads(os.cpu_count()).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import parity_official  # noqa: E402  (tools/ helper: import, patches, inputs, conversion)
from mmnet_jax import benchmark  # noqa: E402
from mmnet_jax import host_allocator  # noqa: E402

SEED = 0


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--official-repo', required=True, help='checkout of wu-zhonghua/MM-Net')
  p.add_argument('--configs', default='r50-473-k1,r50-473-k5',
                 help='comma-separated r50|r101-473-k{shots} (the original runs only 473)')
  p.add_argument('--train-batch', type=int, default=4)
  p.add_argument('--eval-batch', type=int, default=1)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--skip', default='', help='comma-separated parts to skip: train, eval, backbone')
  p.add_argument('--no-ours', action='store_true', help='measure the original only')
  p.add_argument('--peak-sizes', default='1024,2048,4096', help='matmul sides for the peak')
  p.add_argument('--output', default='', help='write the results as JSON here')
  args = p.parse_args(argv)
  specs = [benchmark.parse_config_name(n) for n in filter(None, args.configs.split(','))]
  for spec in specs:
    if spec['size'] != 473 or spec['backbone'] not in ('resnet50', 'resnet101'):
      p.error(f'--configs {spec["name"]}: the original runs only ResNet-50/101 at 473')
  args.specs = specs
  return args


# ---------------------------------------------------------------------------------------------
# The original.

def torch_timing(call, repeats: int, warmup: int) -> dict:
  """median_seconds for a torch call (synchronous on CPU), with the peak RSS of the calls."""
  benchmark.reset_peak_rss()
  timing = benchmark.median_seconds(call, repeats, warmup)
  return dict(timing, peak_rss_bytes=benchmark.peak_rss_bytes())


def torch_peak(sizes, repeats: int = 5) -> dict:
  """torch's float32 matmul FLOP/s: the best call over `sizes`, as benchmark.measure_peak."""
  import torch
  g = torch.Generator().manual_seed(0)
  per_size = {}
  for n in sizes:
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    timing = benchmark.median_seconds(lambda: torch.mm(a, b), repeats, warmup=1)
    per_size[str(n)] = 2.0 * n ** 3 / timing['min_s']
  best = max(per_size, key=per_size.get)
  return {'matmul_size': int(best), 'flops_per_s': per_size[best],
          'per_size_flops_per_s': per_size}


def torch_flops(fn) -> float | None:
  """FLOPs counted by torch.utils.flop_counter of one call of fn (convs and matmuls)."""
  try:
    from torch.utils.flop_counter import FlopCounterMode
  except ImportError:
    return None
  counter = FlopCounterMode(display=False)
  with counter:
    fn()
  return float(counter.get_total_flops())


def torch_episode_images(query, supports):
  """[query (B, 3, H, W), shot 1, ..., shot K]: the original's backbone calls in one episode."""
  return [query] + [supports[:, k] for k in range(supports.shape[1])]


def torch_backbone(model, groups):
  """The original's layer0..layer4 on each image group in turn (eval mode, no_grad)."""
  import torch
  outs = []
  with torch.no_grad():
    for x in groups:
      for layer in (model.layer0, model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
      outs.append(x)
  return outs


def torch_backbone_convs(model, images, repeats: int, warmup: int) -> dict:
  """The original backbone's Conv2d calls alone, timed one by one (benchmark.bench_backbone_convs).

  Forward hooks record each Conv2d's input in one backbone pass; the calls are grouped by input
  shape and conv parameters and each group's F.conv2d is timed on its recorded input; seconds
  = sum of count x median; FLOPs = 2 x output elements x in-channels x kernel area.
  """
  import torch
  import torch.nn.functional as F
  backbone = (model.layer0, model.layer1, model.layer2, model.layer3, model.layer4)
  calls = []
  hooks = [m.register_forward_hook(lambda m, inp, out: calls.append((m, inp[0], out.shape)))
           for layer in backbone for m in layer.modules() if isinstance(m, torch.nn.Conv2d)]
  try:
    torch_backbone(model, images)
  finally:
    for h in hooks:
      h.remove()
  groups = {}
  for m, x, out_shape in calls:
    key = (tuple(x.shape), tuple(m.weight.shape), m.stride, m.padding, m.dilation)
    groups.setdefault(key, []).append((m, x, out_shape))
  ops, total_s, total_flops = [], 0.0, 0.0
  with torch.no_grad():
    for key, members in groups.items():
      m, x, out_shape = members[0]
      timing = benchmark.median_seconds(
          lambda m=m, x=x: F.conv2d(x, m.weight, m.bias, m.stride, m.padding, m.dilation),
          *benchmark.op_repeats(repeats, warmup))
      flops = 2.0 * float(np.prod(out_shape)) * m.weight.shape[1] * m.weight[0, 0].numel()
      total_s += len(members) * timing['median_s']
      total_flops += len(members) * flops
      ops.append({'primitive': 'conv2d', 'shapes': [list(key[0]), list(key[1])],
                  'count': len(members), 'median_s': timing['median_s'], 'flops': flops,
                  'flops_per_s': flops / timing['median_s']})
  return {'median_s': total_s, 'torch_flops': total_flops, 'op_count': len(calls), 'ops': ops}


def torch_optimizer(model, config):
  """The original train.py's optimiser: SGD on everything but layer0..4 (frozen)."""
  import torch
  backbone = [model.layer0, model.layer1, model.layer2, model.layer3, model.layer4]
  frozen = {id(p) for layer in backbone for p in layer.parameters()}
  for layer in backbone:
    for p in layer.parameters():
      p.requires_grad = False
  params = [p for p in model.parameters() if id(p) not in frozen]
  return torch.optim.SGD(params, lr=config.train.base_lr * config.train.lr_multiplier,
                         momentum=config.train.momentum, weight_decay=config.train.weight_decay)


def bench_original(model, config, data: dict, args, ours_flops: dict) -> dict:
  """Eval, backbone and train timings of the original (torch) model."""
  import torch
  skip = set(filter(None, args.skip.split(',')))
  out = {}
  if 'eval' not in skip:
    x, sx, sy = data['eval']
    model.eval()

    def eval_call():
      with torch.no_grad():
        return model(x, sx, sy)
    out['eval'] = torch_timing(eval_call, args.repeats, args.warmup)
    out['eval']['torch_flops'] = torch_flops(eval_call)
  images = torch_episode_images(*data['eval'][:2])
  model.eval()
  if 'backbone' not in skip:
    out['backbone'] = torch_timing(lambda: torch_backbone(model, images), args.repeats,
                                   args.warmup)
    out['backbone']['torch_flops'] = torch_flops(lambda: torch_backbone(model, images))
  if 'convs' not in skip:
    out['convs'] = torch_backbone_convs(model, images, args.repeats, args.warmup)
  if 'train' not in skip:
    x, sx, sy, y = data['train']
    opt = torch_optimizer(model, config)
    model.train()

    def train_call():
      _, main, aux, sim = model(s_x=sx, s_y=sy, x=x, y=y)
      loss = main + config.train.aux_weight * aux + sim   # sim is pre-weighted (x0.1)
      opt.zero_grad()
      loss.backward()
      opt.step()
      return loss.detach()
    out['train'] = torch_timing(train_call, args.repeats, args.warmup)
  episodes = {'eval': args.eval_batch, 'backbone': args.eval_batch, 'convs': args.eval_batch,
              'train': args.train_batch}
  for part, timing in out.items():
    timing['flops'] = ours_flops.get(part)
    out[part] = benchmark.rates(timing, episodes[part], None)
  return out


# ---------------------------------------------------------------------------------------------
# Ours, on the same weights and inputs.

def to_jax_batch(query, supports, s_y, label) -> dict:
  """parity_official.make_inputs arrays (NCHW) -> our episode batch (NHWC)."""
  import jax.numpy as jnp
  return {'query_img': jnp.asarray(query.transpose(0, 2, 3, 1)),
          'support_imgs': jnp.asarray(supports.transpose(0, 1, 3, 4, 2)),
          'support_labels': jnp.asarray(s_y.astype(np.int32)),
          'query_label': jnp.asarray(label.astype(np.int32))}


def our_state(torch_model, config, shots: int):
  """Our model, train state and optimiser with the torch model's (converted) weights."""
  import jax.numpy as jnp
  import torch
  from mmnet_jax import optimizer
  from mmnet_jax.models import mmnet
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'official.pth')
    torch.save({'epoch': 1, 'state_dict': {f'module.{k}': v for k, v in
                                           torch_model.state_dict().items()},
                'optimizer': {}}, path)
    variables = parity_official._our_variables(  # pylint: disable=protected-access
        path, config.model.to_dict(), shots)
  model = mmnet.build_model(config.model)
  tx = optimizer.make_optimizer(config, 1000, variables['params'])
  state = {'step': jnp.zeros((), jnp.int32), 'params': variables['params'],
           'batch_stats': variables['batch_stats'], 'opt_state': tx.init(variables['params'])}
  return model, state, tx


def bench_ours(model, config, state, tx, batches: dict, args, peak: float) -> dict:
  """Eval, backbone and train timings of ours (benchmark.py's functions)."""
  skip = set(filter(None, args.skip.split(',')))
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  out = {}
  if 'eval' not in skip:
    out['eval'] = benchmark.rates(benchmark.bench_eval(
        model, variables, batches['eval'], args.repeats, args.warmup), args.eval_batch, peak)
  images = benchmark.episode_images(batches['eval'])
  if 'backbone' not in skip:
    out['backbone'] = benchmark.rates(benchmark.bench_backbone(
        config.model.backbone, variables, images, args.repeats, args.warmup),
        args.eval_batch, peak)
  if 'convs' not in skip:
    out['convs'] = benchmark.rates(benchmark.bench_backbone_convs(
        config.model.backbone, variables, images, args.repeats, args.warmup),
        args.eval_batch, peak)
  if 'train' not in skip:
    out['train'] = benchmark.rates(benchmark.bench_train(
        model, config, state, tx, batches['train'], args.repeats, args.warmup),
        args.train_batch, peak)
  return out


def run_config(partnet, spec: dict, args, peak: float) -> dict:
  """Both implementations on one configuration."""
  import torch
  depth = int(spec['backbone'][len('resnet'):])
  shots, size = spec['shots'], spec['size']
  config = benchmark.make_config(spec, args.train_batch)
  config.model.kshot_mask_compat = True   # the released code's K-shot masks (docs/parity.md)
  model_t = parity_official._build_torch(partnet, depth, shots, SEED)  # pylint: disable=protected-access
  ev = parity_official.make_inputs(SEED + 1, args.eval_batch, shots, size)
  tr = parity_official.make_inputs(SEED + 2, args.train_batch, shots, size)
  parity_official._calibrate_bn(  # pylint: disable=protected-access
      model_t, torch.from_numpy(np.concatenate([ev[0], ev[1][:, 0]])))
  data_t = {'eval': tuple(torch.from_numpy(a) for a in ev[:3]),
            'train': tuple(torch.from_numpy(a) for a in tr)}
  result = {'config': spec, 'train_batch': args.train_batch, 'eval_batch': args.eval_batch}
  if not args.no_ours:
    model, state, tx = our_state(model_t, config, shots)
    batches = {'eval': to_jax_batch(*ev), 'train': to_jax_batch(*tr)}
    result['ours'] = bench_ours(model, config, state, tx, batches, args, peak)
    print(f'  {spec["name"]} ours: ' + ', '.join(
        f'{k} {v["s_per_episode"]:.2f} s/ep' for k, v in result['ours'].items()), flush=True)
  time.sleep(1.0)   # let the other framework's worker threads go idle
  flops = {k: v.get('flops') for k, v in result.get('ours', {}).items()}
  result['original'] = bench_original(model_t, config, data_t, args, flops)
  for part, r in result['original'].items():
    if r.get('flops'):
      r['pct_of_peak'] = 100.0 * r['flops_per_s'] / peak
  print(f'  {spec["name"]} original: ' + ', '.join(
      f'{k} {v["s_per_episode"]:.2f} s/ep' for k, v in result['original'].items()), flush=True)
  return result


def format_markdown(results: dict) -> str:
  """The comparison as a markdown table (docs/benchmarks.md)."""
  gib = lambda b: f'{b / 2**30:.2f}' if b else '-'
  g = lambda x: f'{x / 1e9:.1f}' if x else '-'
  peak = results['peak']
  lines = [f'Peak (best float32 matmul): jax {g(peak["jax"]["flops_per_s"])} GFLOP/s '
           f'(n = {peak["jax"]["matmul_size"]}), torch {g(peak["torch"]["flops_per_s"])} GFLOP/s '
           f'(n = {peak["torch"]["matmul_size"]}); "% of peak" is of '
           f'{g(peak["reference"])} GFLOP/s (the larger).', '',
           '| config | step | batch | impl | s/episode | episodes/s | ours vs original | '
           'compile s | XLA peak GiB | peak RSS GiB | GFLOP/step (XLA) | GFLOP/step (torch count) '
           '| GFLOP/s | % of peak |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in results['configs']:
    for part in ('train', 'eval', 'backbone', 'convs'):
      orig = r['original'].get(part)
      ours = r.get('ours', {}).get(part)
      for impl, p in (('original', orig), ('ours', ours)):
        if p is None:
          continue
        speed = f'{orig["median_s"] / ours["median_s"]:.2f}x' if impl == 'ours' and orig else ''
        compile_s = f'{p["compile_s"]:.0f}' if 'compile_s' in p else '-'
        pct = f'{p["pct_of_peak"]:.0f}%' if p.get('pct_of_peak') else '-'
        cells = [r['config']['name'], part, str(p['episodes']), impl,
                 f'{p["s_per_episode"]:.2f}', f'{p["episodes_per_s"]:.3f}', speed, compile_s,
                 gib(p.get('xla_memory', {}).get('peak_bytes')), gib(p.get('peak_rss_bytes')),
                 g(p.get('flops')), g(p.get('torch_flops')), g(p.get('flops_per_s')), pct]
        lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  keeps_memory = host_allocator.keep_freed_memory()   # for both frameworks: one process
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  partnet = parity_official._import_original(args.official_repo)  # pylint: disable=protected-access
  start = time.time()
  sizes = tuple(int(n) for n in args.peak_sizes.split(','))
  peak = {'jax': benchmark.measure_peak(sizes), 'torch': torch_peak(sizes)}
  peak['reference'] = max(peak['jax']['flops_per_s'], peak['torch']['flops_per_s'])
  results = {'device': benchmark.device_info(), 'torch': torch.__version__,
             'torch_threads': torch.get_num_threads(), 'peak': peak,
             'keep_freed_memory': keeps_memory,
             'args': {k: v for k, v in vars(args).items() if k != 'specs'}}
  results['configs'] = [run_config(partnet, spec, args, peak['reference'])
                        for spec in args.specs]
  results['wall_s'] = time.time() - start
  return benchmark.report(results, format_markdown(results), args.output)


if __name__ == '__main__':
  main()
