"""The two originals as tools/parity_official.py drives them: MM-Net (wu-zhonghua/MM-Net) and
PFENet (dvlab-research/PFENet), each imported from a checkout, nothing copied.

An `Original` says how to import and build the torch model, how its train.py turns the
forward's outputs into the loss it back-propagates, which parameter groups its train.py hands
torch.optim.SGD, and how our side of the same model is configured and converted.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from typing import Any, Callable


class KShotInt(int):
  """1 that answers `> 1` with True, steering PartNet.py into its (working) K-shot branch."""

  def __gt__(self, other):
    return True if other == 1 else int(self) > other


@dataclasses.dataclass(frozen=True)
class Original:
  """One original model and the matching pieces of ours.

  name: our registry name (config.model.name).
  module: the original's model file (model/<module>.py), imported from --official-repo.
  fmt: our converter's format for the original's state dict.
  groups: the attributes of the model that the original train.py passes torch.optim.SGD, one
    parameter group each, in its order.
  build_kwargs: (shots) -> extra constructor arguments.
  losses: (outputs of the train-mode forward) -> {our term name: unweighted torch scalar}.
  total: ({term: scalar}, aux_weight) -> the loss train.py back-propagates.
  compat_modes: our kshot_mask_compat values to compare at K > 1 (None: the model has no such
    field).
  """
  name: str
  module: str
  fmt: str
  groups: tuple[str, ...]
  build_kwargs: Callable[[int], dict]
  losses: Callable[[Any], dict]
  total: Callable[[dict, float], Any]
  compat_modes: tuple[Any, ...] = (None,)


def _mmnet_losses(outputs):
  # PartNet.py returns (pred, main, aux, recon * 0.1): the recon term comes pre-weighted.
  _, main, aux, recon_weighted = outputs
  return {'main': main, 'aux': aux, 'recon': recon_weighted / 0.1}


def _pfenet_losses(outputs):
  _, main, aux = outputs
  return {'main': main, 'aux': aux}


ORIGINALS = {
    'mmnet': Original(
        name='mmnet', module='PartNet', fmt='mmnet-official',
        # MM-Net train.py: SGD over these 12 groups (alpha and beta are built, never used).
        groups=('down_query_level_2', 'down_supp_level_2', 'init_merge', 'alpha_conv',
                'beta_conv', 'inner_cls', 'res1', 'res2', 'cls', 'alpha', 'beta',
                'part_emb_2_level'),
        # The original's 1-shot training branch crashes (undefined sim_loss_level_2); its
        # K-shot branch at K = 1 is the faithful 1-shot model (docs/parity.md).
        build_kwargs=lambda shots: {'shot': KShotInt(shots) if shots == 1 else shots},
        losses=_mmnet_losses,
        # train.py: main + aux_weight * aux + sim_loss (sim_loss already x0.1).
        total=lambda t, aux_weight: t['main'] + aux_weight * t['aux'] + 0.1 * t['recon'],
        compat_modes=(True, False)),
    'pfenet': Original(
        name='pfenet', module='PFENet', fmt='pfenet-official',
        # PFENet train.py: SGD over these 9 groups.
        groups=('down_query', 'down_supp', 'init_merge', 'alpha_conv', 'beta_conv',
                'inner_cls', 'res1', 'res2', 'cls'),
        build_kwargs=lambda shots: {'shot': shots},
        losses=_pfenet_losses,
        total=lambda t, aux_weight: t['main'] + aux_weight * t['aux']),
}

BACKBONE_LAYERS = ('layer0', 'layer1', 'layer2', 'layer3', 'layer4')


def import_original(original: Original, repo: str):
  """(model module, util.util module) of the checkout, patched for a CPU-only run."""
  import torch  # pylint: disable=g-import-not-at-top
  path = os.path.join(repo, 'model', f'{original.module}.py')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--official-repo {repo}: no model/{original.module}.py (need a '
                            f'checkout of the original {original.name})')
  if 'cv2' not in sys.modules:
    sys.modules['cv2'] = types.ModuleType('cv2')  # imported by the model files, never used
  # Both call .cuda() in a default argument at import time and in forward.
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  sys.path.insert(0, os.path.abspath(repo))
  import importlib  # pylint: disable=g-import-not-at-top
  model_module = importlib.import_module(f'model.{original.module}')
  util = importlib.import_module('util.util')
  return model_module, util


def build(original: Original, model_module, depth: int, shots: int, seed: int):
  """The original model, random init from torch.manual_seed(seed), no pretrained weights."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  return model_module.PFENet(layers=depth, classes=2, zoom_factor=8,
                             criterion=nn.CrossEntropyLoss(ignore_index=255),
                             BatchNorm=nn.BatchNorm2d, pretrained=False, sync_bn=False,
                             ppm_scales=[60, 30, 15, 8], vgg=False,
                             **original.build_kwargs(shots))


def freeze_backbone(model) -> None:
  """As the original train.py: layer0..layer4 get requires_grad False."""
  for layer in BACKBONE_LAYERS:
    for p in getattr(model, layer).parameters():
      p.requires_grad = False


def make_sgd(original: Original, model, base_lr: float, momentum: float, weight_decay: float):
  """The original train.py's optimizer: torch.optim.SGD, one group per head module."""
  import torch  # pylint: disable=g-import-not-at-top
  groups = []
  for attr in original.groups:
    value = getattr(model, attr)
    groups.append({'params': value if isinstance(value, torch.nn.Parameter)
                   else value.parameters()})
  return torch.optim.SGD(groups, lr=base_lr, momentum=momentum, weight_decay=weight_decay)


def count_params(original: Original, model_module, depth: int) -> dict:
  """Parameter counts of the original (pretrained=False): all, and without unused modules."""
  model = build(original, model_module, depth, 1, 0)
  total = sum(p.numel() for p in model.parameters())
  unused = sum(p.numel() for attr in ('alpha', 'beta') if hasattr(model, attr)
               for p in getattr(model, attr).parameters())
  return {'all': int(total), 'unused': int(unused), 'used': int(total - unused)}
