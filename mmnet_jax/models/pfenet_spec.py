"""PFENet in the model registry: its config defaults, checks, loss, converter keys, summary rows.

Cheap to import (ml_collections only): the Flax model and its losses are imported when built.
"""

from __future__ import annotations

import ml_collections

from mmnet_jax.models import pfenet_keys
from mmnet_jax.models import registry

# --mode=summary rows in data-flow order: (label, top-level key, decoder prefix).
SUMMARY_GROUPS = (
    ('backbone', 'backbone', None),
    ('down_query', 'down_query', None),
    ('down_supp', 'down_supp', None),
    ('decoder/init_merge', 'decoder', 'init_merge'),
    ('decoder/alpha_conv', 'decoder', 'alpha_conv'),
    ('decoder/beta_conv', 'decoder', 'beta_conv'),
    ('decoder/inner_cls', 'decoder', 'inner_cls'),
    ('decoder/res1', 'decoder', 'res1'),
    ('decoder/res2', 'decoder', 'res2'),
    ('decoder/cls', 'decoder', 'cls'),
)

CONVERT_FORMATS = {'pfenet-official': pfenet_keys.PFENET_OFFICIAL}


def config_defaults() -> ml_collections.ConfigDict:
  """`config.model` of the original PFENet on PASCAL-5i (ResNet-50, deep stem)."""
  m = ml_collections.ConfigDict()
  m.name = 'pfenet'
  m.backbone = 'resnet50'   # resnet50 | resnet101 (deep stem) | resnet50_tv | resnet101_tv | tiny
  m.reduce_dim = 256
  m.ppm_scales = (60, 30, 15, 8)   # COCO: (1.0, 0.5, 0.25, 0.125), fractions of the features
  m.bn_mode = 'train'       # 'train' (faithful: batch statistics) or 'frozen'
  m.freeze_backbone = True
  m.feature_dropout = 0.5
  m.head_dropout = 0.1
  m.dtype = 'float32'       # computation dtype: 'float32' or 'bfloat16' (params stay float32)
  # Query pixels per block of the prior's cosine matrix; 0 = all at once (no parameter changes).
  m.attention_chunk = 1024
  return m


def build(model_config):
  from mmnet_jax.models import pfenet  # pylint: disable=g-import-not-at-top
  return pfenet.PFENet.from_config(model_config)


def loss(outputs, query_label, train_config):
  """main + aux_weight * aux (losses.pfenet_loss)."""
  from mmnet_jax.models import losses  # pylint: disable=g-import-not-at-top
  return losses.pfenet_loss(outputs, query_label, aux_weight=train_config.aux_weight)


def check(c, config) -> None:
  from mmnet_jax.models import mid_level  # pylint: disable=g-import-not-at-top
  mid_level.check_config_fields(c, config)
  c.int_at_least('model.attention_chunk', 0)   # 0: all query pixels at once


def runlocal(m) -> None:
  """A CPU-sized PFENet (tiny backbone, C = 32, fractional scales)."""
  m.backbone = 'tiny'
  m.freeze_backbone = False
  m.reduce_dim = 32
  m.ppm_scales = (1.0, 0.5, 0.25, 0.125)


SPEC = registry.register(registry.ModelSpec(
    name='pfenet',
    config_defaults=config_defaults,
    build=build,
    loss=loss,
    train_defaults={'aux_weight': 1.0},
    check=check,
    fingerprint_exclude=('dtype', 'attention_chunk'),
    convert_formats=CONVERT_FORMATS,
    summary_groups=SUMMARY_GROUPS,
    # The original's torch count (model.parameters(), pretrained=False; it builds nothing it
    # leaves unused): tools/parity_official.py --count-params.
    reference_params={'resnet50': 34_448_842, 'resnet101': 53_440_970},
    runlocal=runlocal,
))
