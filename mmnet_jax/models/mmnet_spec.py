"""MM-Net in the model registry: its config defaults, checks, loss, converter keys, summary rows.

Cheap to import (ml_collections only): the Flax model and its losses are imported when built.
"""

from __future__ import annotations

import ml_collections

from mmnet_jax.models import mmnet_keys
from mmnet_jax.models import registry

# --mode=summary rows in data-flow order: (label, top-level key, decoder prefix).
SUMMARY_GROUPS = (
    ('backbone', 'backbone', None),
    ('down_query', 'down_query', None),
    ('down_supp', 'down_supp', None),
    ('memory', 'memory', None),
    ('decoder/init_merge', 'decoder', 'init_merge'),
    ('decoder/alpha_conv', 'decoder', 'alpha_conv'),
    ('decoder/beta_conv', 'decoder', 'beta_conv'),
    ('decoder/inner_cls', 'decoder', 'inner_cls'),
    ('decoder/res1', 'decoder', 'res1'),
    ('decoder/res2', 'decoder', 'res2'),
    ('decoder/cls', 'decoder', 'cls'),
)


def config_defaults() -> ml_collections.ConfigDict:
  """`config.model` of the original MM-Net (ResNet-50, deep stem)."""
  m = ml_collections.ConfigDict()
  m.name = 'mmnet'
  m.backbone = 'resnet50'   # resnet50 | resnet101 (deep stem) | resnet50_tv | resnet101_tv | tiny
  m.reduce_dim = 256
  m.memory_slots = 50
  m.ppm_scales = (60, 30, 15, 8)
  m.bn_mode = 'train'       # 'train' (faithful: batch statistics) or 'frozen'
  m.freeze_backbone = True
  m.kshot_mask_compat = False
  m.feature_dropout = 0.5
  m.head_dropout = 0.1
  m.dtype = 'float32'       # computation dtype: 'float32' or 'bfloat16' (params stay float32)
  # Query pixels per block of the pixel-to-pixel matrices (attention, prior, reconstruction);
  # 0 = all at once. Blocks cut memory (-50% train step at 473) and run faster on CPU.
  m.attention_chunk = 1024
  return m


def build(model_config):
  from mmnet_jax.models import mmnet
  return mmnet.MMNet.from_config(model_config)


def loss(outputs, query_label, train_config):
  """main + aux_weight * aux + recon_weight * recon (losses.mmnet_loss)."""
  from mmnet_jax.models import losses
  return losses.mmnet_loss(outputs, query_label, aux_weight=train_config.aux_weight,
                           recon_weight=train_config.recon_weight)


def check(c, config) -> None:
  from mmnet_jax.models import mid_level  # pylint: disable=g-import-not-at-top
  mid_level.check_config_fields(c, config)
  c.int_at_least('model.memory_slots', 1)
  c.int_at_least('model.attention_chunk', 0)   # 0: all query pixels at once
  c.num_in('train.recon_weight', 0, float('inf'), high_open=True)


def runlocal(m) -> None:
  """A CPU-sized MM-Net (tiny backbone, C = 32, 16 memory slots)."""
  m.backbone = 'tiny'
  m.freeze_backbone = False
  m.reduce_dim = 32
  m.memory_slots = 16
  m.ppm_scales = (1.0, 0.5, 0.25, 0.125)


# `python -m mmnet_jax.convert --format` name -> the head key map of those checkpoints.
CONVERT_FORMATS = {'mmnet-official': mmnet_keys.MMNET_OFFICIAL}

SPEC = registry.register(registry.ModelSpec(
    name='mmnet',
    config_defaults=config_defaults,
    build=build,
    loss=loss,
    train_defaults={'aux_weight': 1.0, 'recon_weight': 0.1},
    check=check,
    fingerprint_exclude=('dtype', 'attention_chunk'),
    convert_formats=CONVERT_FORMATS,
    summary_groups=SUMMARY_GROUPS,
    # torch: sum of the original's parameters(), pretrained=False (parity_official --count-params)
    reference_params={'resnet50': 34_120_138, 'resnet101': 53_112_266},
    reference_note=('the original builds two Linear(256, 256) layers, alpha and beta, that its '
                    'forward never uses (131,584 parameters; the converter skips them)'),
    runlocal=runlocal,
))
