"""Regenerate tests/fixtures/ for tests/test_torch_pickle.py and tests/test_convert.py.

Needs PyTorch. Every fixture is written by real `torch.save` (zip and legacy formats) from
tiny modules that have the REAL key structure of the original checkpoints:

  pfenet_resnet_legacy.pth   semseg deep-stem ResNet (conv1..bn3, layer*, fc), legacy format
  torchvision_resnet.pth     torchvision-stem ResNet (conv1, bn1, layer*, fc), zip format
  mmnet_official.pth         {'epoch', 'state_dict': {'module.…'}, 'optimizer'} of a tiny
                             MM-Net (layer0 Sequential, head, part_emb_2_level, alpha/beta)
  tensors_zip.pth, tensors_legacy.pth   dtypes, non-contiguous, storage offsets, shared storage
  malicious_zip.pth, malicious_legacy.pth   a __reduce__ that would run os.system(touch ...)
  expected.npz               every tensor above as numpy, keyed '<fixture>/<key>'

    /work/venv/bin/python tools/make_convert_fixtures.py [--out tests/fixtures]
"""

import argparse
import collections
import os

import numpy as np
import torch
from torch import nn

# Tiny widths (each file stays a few tens of KB); the structure is the real one.
STEM = (4, 4, 8)
WIDTHS = (2, 4, 8, 16)        # bottleneck planes; outputs = 4x
BLOCKS = (1, 2, 1, 1)         # layer2 has a block 1 (no downsample)
REDUCE_DIM = 8
MEMORY_SLOTS = 5
SCALES = 4

MARKER = 'mmnet_pwned_marker'


class Bottleneck(nn.Module):
  """torchvision/semseg bottleneck: the names are what matters here."""

  def __init__(self, cin, planes, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    if downsample:
      self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, bias=False),
                                      nn.BatchNorm2d(planes * 4))


class TinyResNet(nn.Module):
  """Deep (semseg) or torchvision stem, layer1..4, fc."""

  def __init__(self, deep_stem):
    super().__init__()
    if deep_stem:
      self.conv1 = nn.Conv2d(3, STEM[0], 3, stride=2, padding=1, bias=False)
      self.bn1 = nn.BatchNorm2d(STEM[0])
      self.conv2 = nn.Conv2d(STEM[0], STEM[1], 3, padding=1, bias=False)
      self.bn2 = nn.BatchNorm2d(STEM[1])
      self.conv3 = nn.Conv2d(STEM[1], STEM[2], 3, padding=1, bias=False)
      self.bn3 = nn.BatchNorm2d(STEM[2])
      cin = STEM[2]
    else:
      self.conv1 = nn.Conv2d(3, STEM[0], 7, stride=2, padding=3, bias=False)
      self.bn1 = nn.BatchNorm2d(STEM[0])
      cin = STEM[0]
    for l, (n, planes) in enumerate(zip(BLOCKS, WIDTHS), start=1):
      blocks = []
      for i in range(n):
        blocks.append(Bottleneck(cin, planes, downsample=(i == 0)))
        cin = planes * 4
      setattr(self, f'layer{l}', nn.Sequential(*blocks))
    self.fc = nn.Linear(cin, 10)


class TinyMMNet(nn.Module):
  """The original PartNet.py attribute layout with tiny channels."""

  def __init__(self):
    super().__init__()
    r = TinyResNet(deep_stem=True)
    self.layer0 = nn.Sequential(r.conv1, r.bn1, nn.ReLU(), r.conv2, r.bn2, nn.ReLU(), r.conv3,
                                r.bn3, nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
    d = REDUCE_DIM
    fea_dim = WIDTHS[2] * 4 + WIDTHS[1] * 4
    self.cls = nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), nn.ReLU(),
                             nn.Dropout2d(0.1), nn.Conv2d(d, 2, 1))
    self.down_query_level_2 = nn.Sequential(nn.Conv2d(fea_dim, d, 1, bias=False), nn.ReLU(),
                                            nn.Dropout2d(0.5))
    self.down_supp_level_2 = nn.Sequential(nn.Conv2d(fea_dim, d, 1, bias=False), nn.ReLU(),
                                           nn.Dropout2d(0.5))
    self.init_merge = nn.ModuleList(
        [nn.Sequential(nn.Conv2d(MEMORY_SLOTS + 1, d, 1, bias=False), nn.ReLU())
         for _ in range(SCALES)])
    self.beta_conv = nn.ModuleList(
        [nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), nn.ReLU(),
                       nn.Conv2d(d, d, 3, padding=1, bias=False), nn.ReLU())
         for _ in range(SCALES)])
    self.inner_cls = nn.ModuleList(
        [nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), nn.ReLU(), nn.Dropout2d(0.1),
                       nn.Conv2d(d, 2, 1)) for _ in range(SCALES)])
    self.res1 = nn.Sequential(nn.Conv2d(d * SCALES, d, 1, bias=False), nn.ReLU())
    self.res2 = nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), nn.ReLU(),
                              nn.Conv2d(d, d, 3, padding=1, bias=False), nn.ReLU())
    self.alpha_conv = nn.ModuleList(
        [nn.Sequential(nn.Conv2d(2 * d, d, 1, bias=False), nn.ReLU()) for _ in range(SCALES - 1)])
    self.alpha = nn.Linear(d, d)
    self.beta = nn.Linear(d, d)
    self.part_emb_2_level = nn.Parameter(torch.randn(1, d, MEMORY_SLOTS))


def randomise_bn(module, gen):
  """Distinct random BN weights and running stats, so a swapped mapping shows up."""
  for m in module.modules():
    if isinstance(m, nn.BatchNorm2d):
      with torch.no_grad():
        m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        m.num_batches_tracked.fill_(int(torch.randint(1, 100, (1,), generator=gen)))


class Evil:
  """Pickles as os.system('touch <MARKER>'): a safe loader must refuse it."""

  def __reduce__(self):
    return (os.system, (f'touch {MARKER}',))


def tensor_cases():
  """Tensors that exercise dtypes, strides and storage offsets."""
  base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
  shared = torch.arange(20, dtype=torch.float32)
  return collections.OrderedDict([
      ('f32', torch.linspace(-1, 1, 12).reshape(3, 4)),
      ('f16', torch.tensor([0.5, -2.25, 65504.0, 1e-3], dtype=torch.float16)),
      ('f64', torch.tensor([[1.0 / 3.0, 2.0], [3.0, -4.5]], dtype=torch.float64)),
      ('i64', torch.tensor([0, -1, 2**40, 7], dtype=torch.int64)),
      ('bool', torch.tensor([True, False, True])),
      ('u8', torch.tensor([0, 255, 17], dtype=torch.uint8)),
      ('transposed', base.t()),                 # non-contiguous, stride (1, 10)
      ('offset_slice', base[2:4, 3:7]),          # storage offset 23, stride (10, 1)
      ('strided', base[::2, ::3]),              # stride (20, 3)
      ('shared_a', shared[:5]),                 # two views of one storage
      ('shared_b', shared[10:20].view(2, 5)),   # offset 10
      ('scalar', torch.tensor(3.5)),
      ('empty', torch.zeros(0, 3)),
      ('param', nn.Parameter(torch.ones(2, 2) * 0.25)),
  ])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'tests',
                                                    'fixtures'))
  out = parser.parse_args().out
  os.makedirs(out, exist_ok=True)
  gen = torch.Generator().manual_seed(0)
  torch.manual_seed(0)
  expected = {}

  def record(name, tensors):
    for k, v in tensors.items():
      if isinstance(v, torch.Tensor):
        expected[f'{name}/{k}'] = v.detach().numpy().copy()

  pfenet = TinyResNet(deep_stem=True)
  randomise_bn(pfenet, gen)
  sd = pfenet.state_dict()
  torch.save(sd, os.path.join(out, 'pfenet_resnet_legacy.pth'),
             _use_new_zipfile_serialization=False)
  record('pfenet_resnet_legacy', sd)

  tv = TinyResNet(deep_stem=False)
  randomise_bn(tv, gen)
  sd = tv.state_dict()
  torch.save(sd, os.path.join(out, 'torchvision_resnet.pth'))
  record('torchvision_resnet', sd)

  mm = TinyMMNet()
  randomise_bn(mm, gen)
  opt = torch.optim.SGD(mm.parameters(), lr=0.1, momentum=0.9)
  loss = sum((p ** 2).sum() for p in mm.parameters())
  loss.backward()
  opt.step()  # momentum buffers: the optimizer entry holds tensors too
  sd = collections.OrderedDict((f'module.{k}', v) for k, v in mm.state_dict().items())
  torch.save({'epoch': 7, 'state_dict': sd, 'optimizer': opt.state_dict()},
             os.path.join(out, 'mmnet_official.pth'))
  record('mmnet_official', sd)

  cases = tensor_cases()
  for fmt, new in (('zip', True), ('legacy', False)):
    torch.save({'tensors': cases, 'meta': {'list': [1, 2.5, 'x'], 'tuple': (None, True)}},
               os.path.join(out, f'tensors_{fmt}.pth'), _use_new_zipfile_serialization=new)
    torch.save({'state_dict': {'w': torch.ones(2)}, 'payload': Evil()},
               os.path.join(out, f'malicious_{fmt}.pth'), _use_new_zipfile_serialization=new)
  record('tensors', cases)

  np.savez_compressed(os.path.join(out, 'expected.npz'), **expected)
  for f in sorted(os.listdir(out)):
    print(f'{f}: {os.path.getsize(os.path.join(out, f)):,} bytes')


if __name__ == '__main__':
  main()
