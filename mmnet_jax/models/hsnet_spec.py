"""HSNet in the model registry: its config defaults, checks, loss, size rule, summary rows.

Cheap to import (ml_collections only): the Flax model and its loss are imported when built.
"""

from __future__ import annotations

import ml_collections

from mmnet_jax.models import hsnet_keys
from mmnet_jax.models import registry

BACKBONES = ('resnet50_tv', 'resnet101_tv', 'tiny')

# --mode=summary rows in data-flow order: (label, top-level key, submodule prefix).
SUMMARY_GROUPS = (
    ('backbone', 'backbone', None),
    ('hpn_learner/encoder_layer4', 'hpn_learner', 'encoder_layer4'),
    ('hpn_learner/encoder_layer3', 'hpn_learner', 'encoder_layer3'),
    ('hpn_learner/encoder_layer2', 'hpn_learner', 'encoder_layer2'),
    ('hpn_learner/encoder_layer4to3', 'hpn_learner', 'encoder_layer4to3'),
    ('hpn_learner/encoder_layer3to2', 'hpn_learner', 'encoder_layer3to2'),
    ('hpn_learner/decoder1', 'hpn_learner', 'decoder1'),
    ('hpn_learner/decoder2', 'hpn_learner', 'decoder2'),
)

CONVERT_FORMATS = {'hsnet-official': hsnet_keys.HSNET_OFFICIAL}

# HSNet's input side: 400 (data/dataset.py img_size). Any side works (models/hsnet.py).
STRETCH_SIZE = 400


def config_defaults() -> ml_collections.ConfigDict:
  """`config.model` of the original HSNet (torchvision ResNet-50, frozen)."""
  m = ml_collections.ConfigDict()
  m.name = 'hsnet'
  m.backbone = 'resnet50_tv'   # resnet50_tv | resnet101_tv (torchvision, the original's) | tiny
  m.freeze_backbone = True
  m.num_classes = 2
  m.dtype = 'float32'          # computation dtype: 'float32' or 'bfloat16' (params stay float32)
  return m


def build(model_config):
  from mmnet_jax.models import hsnet  # pylint: disable=g-import-not-at-top
  return hsnet.HSNet.from_config(model_config)


def loss(outputs, query_label, train_config):
  """compute_objective: CE over every pixel, 255 as background (hsnet.hsnet_loss)."""
  del train_config
  from mmnet_jax.models import hsnet  # pylint: disable=g-import-not-at-top
  return hsnet.hsnet_loss(outputs, query_label)


def check(c, config) -> None:
  del config
  c.one_of('model.backbone', BACKBONES)
  c.one_of('model.freeze_backbone', (False, True))
  c.check('model.num_classes', lambda v: v == 2, '2 (background and foreground)')
  # float64 needs jax_enable_x64, which main.py never sets: it is the parity tool's.
  c.one_of('model.dtype', ('float32', 'bfloat16'))


def runlocal(m) -> None:
  """A CPU-sized HSNet: the tiny backbone, trainable (no ImageNet weights offline)."""
  m.backbone = 'tiny'
  m.freeze_backbone = False


def input_size_ok(side: int) -> bool:
  """Every side >= 1 (the squeezed support sides are all ceil(side / 256); models/hsnet.py)."""
  return side >= 1


SPEC = registry.register(registry.ModelSpec(
    name='hsnet',
    config_defaults=config_defaults,
    build=build,
    loss=loss,
    train_defaults={},
    check=check,
    fingerprint_exclude=('dtype',),
    convert_formats=CONVERT_FORMATS,
    summary_groups=SUMMARY_GROUPS,
    # torch: sum of the original's parameters() (parity_official --model hsnet --count-params).
    reference_params={'resnet50_tv': 28_130_826, 'resnet101_tv': 47_136_554},
    reference_note=("the original's torchvision ResNet keeps its ImageNet classifier fc "
                    '(2,049,000 parameters) that HSNet never uses; this port does not build '
                    'it (the converter skips it)'),
    runlocal=runlocal,
    input_size_ok=input_size_ok,
    input_size_rule='an int >= 1 (HSNet takes any side; 400 is the original\'s)',
    stretch_size=STRETCH_SIZE,
))
