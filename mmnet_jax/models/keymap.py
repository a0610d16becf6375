"""Key maps of released PyTorch checkpoints: torch module names of a model's head -> flax paths.

A model's spec lists its checkpoint formats (`ModelSpec.convert_formats`: format name ->
`HeadKeyMap`); `mmnet_jax.convert` maps the backbone (the same ResNet in every model) and asks
the format's key map for the rest. The FEM decoder's names are the same in PFENet and MM-Net
(init_merge, alpha_conv, beta_conv, inner_cls, res1, res2, cls) and live here once.
Pure Python (no jax): the specs that import it stay cheap.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Mapping

PathT = tuple[str, ...]


class Target(collections.namedtuple('Target', 'path kind has_bias')):
  """Flax target of one torch module: its path, 'conv' | 'bn' | 'norm' | 'parameter', conv
  bias flag. 'norm' is an affine norm without running statistics (GroupNorm: weight, bias).

  'parameter' is a bare nn.Parameter saved under its own name with a leading axis of 1
  (MM-Net's part_emb_2_level (1, C, N) -> (C, N)).
  """


# The FEM decoder's fixed modules: torch nn.Sequential index -> flax path, bias.
FEM_FIXED = {
    'res1.0': Target(('decoder', 'res1', 'conv'), 'conv', False),
    'res2.0': Target(('decoder', 'res2', 'conv1'), 'conv', False),
    'res2.2': Target(('decoder', 'res2', 'conv2'), 'conv', False),
    'cls.0': Target(('decoder', 'cls', 'conv'), 'conv', False),
    'cls.3': Target(('decoder', 'cls', 'cls'), 'conv', True),
}
# Per-scale modules: (group, torch Sequential index) -> (flax submodule, bias).
_FEM_SCALE = {('init_merge', '0'): ('conv', False), ('alpha_conv', '0'): ('conv', False),
              ('beta_conv', '0'): ('conv1', False), ('beta_conv', '2'): ('conv2', False),
              ('inner_cls', '0'): ('conv', False), ('inner_cls', '3'): ('cls', True)}
_FEM_SCALE_RE = re.compile(r'(init_merge|alpha_conv|beta_conv|inner_cls)\.(\d+)\.(\d+)')


def fem_target(name: str) -> Target | None:
  """The FEM decoder target of a torch module name, None if it is not one."""
  if name in FEM_FIXED:
    return FEM_FIXED[name]
  m = _FEM_SCALE_RE.fullmatch(name)
  if m:
    group, b, idx = m.groups()
    sub = _FEM_SCALE.get((group, idx))
    if sub:
      return Target(('decoder', f'{group}_{b}', sub[0]), 'conv', sub[1])
  return None


def fem_torch_name(path: PathT) -> str:
  """Inverse of `fem_target` for a decoder path."""
  for name, target in FEM_FIXED.items():
    if target.path == path:
      return name
  group, b = path[1].rsplit('_', 1)
  idx = next(i for (g, i), (sub, _) in _FEM_SCALE.items() if g == group and sub == path[2])
  return f'{group}.{b}.{idx}'


def fem_required(found: set[PathT], default_scales: int = 4) -> list[PathT]:
  """Decoder paths a checkpoint must hold, for as many scales as it shows (else the default)."""
  bins = {int(p[1].rsplit('_', 1)[1]) for p in found
          if p[0] == 'decoder' and p[1].startswith(('init_merge_', 'beta_conv_', 'inner_cls_'))}
  n = max(bins, default=default_scales - 1) + 1
  required = [t.path for t in FEM_FIXED.values()]
  for b in range(n):
    required += [('decoder', f'init_merge_{b}', 'conv'), ('decoder', f'beta_conv_{b}', 'conv1'),
                 ('decoder', f'beta_conv_{b}', 'conv2'), ('decoder', f'inner_cls_{b}', 'conv'),
                 ('decoder', f'inner_cls_{b}', 'cls')]
    if b >= 1:
      required.append(('decoder', f'alpha_conv_{b - 1}', 'conv'))
  return required


@dataclasses.dataclass(frozen=True)
class HeadKeyMap:
  """The non-backbone keys of one model's released checkpoint.

  modules: the model's own torch module names -> targets (besides the FEM decoder's).
  skip: regex (re.match on the key without 'module.') of keys dropped on purpose.
  fem: the model has the FEM decoder of PFENet / MM-Net (its keys are known here).
  backbone_prefix: what the backbone's keys start with ('' for PFENet.py's layer0..layer4 at
    the top, 'backbone.' for HSNet's torchvision ResNet attribute).
  stem: 'official' (PFENet.py's `layer0` nn.Sequential deep stem) or 'torchvision' (conv1,
    bn1); `mmnet_jax.convert` maps the backbone.
  """
  modules: Mapping[str, Target]
  skip: str | None = None
  fem: bool = True
  backbone_prefix: str = ''
  stem: str = 'official'

  def target(self, name: str) -> Target | None:
    """The flax target of a torch head module name (no parameter suffix), None if unknown."""
    return self.modules.get(name) or (fem_target(name) if self.fem else None)

  def is_skipped(self, key: str) -> bool:
    return self.skip is not None and re.match(self.skip, key) is not None

  def is_parameter(self, key: str) -> bool:
    """Whether `key` is a bare parameter (no '.weight' suffix to split off)."""
    return key in self.modules and self.modules[key].kind == 'parameter'

  def required(self, found: set[PathT]) -> list[Target]:
    """Head targets that must be present, given the head paths that were found."""
    fixed = list(self.modules.values())
    if not self.fem:
      return fixed
    return fixed + [fem_target(fem_torch_name(p)) for p in fem_required(found)]

  def torch_name(self, path: PathT) -> str:
    """The torch module name of a head path (for messages about missing keys)."""
    for name, target in self.modules.items():
      if target.path == path:
        return name
    return fem_torch_name(path) if self.fem else '/'.join(path)
