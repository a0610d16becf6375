"""PFENet (Tian et al., TPAMI 2020; dvlab-research/PFENet model/PFENet.py) as a Flax Linen module.

Data flow for B episodes with K shots (feature size h x w = ((H-1)/8+1, (W-1)/8+1)):
  backbone (frozen) -> query / support layer2, layer3, layer4 (support layer4 of layer3 * mask)
  mid-level features: concat(layer3, layer2) -> down_query / down_supp (1x1, ReLU, Dropout2d)
  prototype: masked average pooling (Weighted_GAP) of each shot's support features
  prior: cosine of query layer4 with masked support layer4, max, min-max, per shot
  K shots: the mean of the K prototypes and the mean of the K priors
  FEM decoder on [query features pooled to each scale, prototype, prior] -> logits at the
  input size, aux logits per scale.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmnet_jax.models.backbone import ResNetBackbone, backbone_output, feature_size
from mmnet_jax.models.conv import DTYPES, wide_dtype
from mmnet_jax.models.decoder import FEMDecoder
from mmnet_jax.models.mid_level import (MidLevelReduce, check_episode_inputs,
                                        check_family_fields, module_kwargs)
from mmnet_jax.models.prior import confidence_map
from mmnet_jax.models.resize import resize_bilinear_align_corners

GAP_EPS = 0.0005   # Weighted_GAP's area guard (an empty mask gives a zero prototype)

_FIELDS = ('backbone', 'reduce_dim', 'ppm_scales', 'bn_mode', 'freeze_backbone',
           'feature_dropout', 'head_dropout', 'num_classes', 'dtype', 'attention_chunk')


def weighted_gap(features: jax.Array, mask: jax.Array) -> jax.Array:
  """PFENet's Weighted_GAP: the mask-weighted mean of the features, in float32 (float64 for
  float64 features).

  Args:
    features: (B, h, w, C) support features.
    mask: (B, h, w) soft support mask at the same resolution.
  Returns:
    (B, C) = sum(features * mask) / (sum(mask) + 0.0005), the sums written as the original's
    means times h * w.
  """
  f32 = wide_dtype(features.dtype)
  _, h, w, _ = features.shape
  mask = mask.astype(f32)[..., None]
  area = jnp.mean(mask, axis=(1, 2)) * h * w + GAP_EPS   # (B, 1)
  return jnp.mean(features.astype(f32) * mask, axis=(1, 2)) * h * w / area


class PFENet(nn.Module):
  """PFENet. Call: ``model.apply(variables, query_img, support_imgs, support_masks, train=)``.

  Attributes (from config.model):
    backbone: 'resnet50', 'resnet101' (the original's deep-stem ResNets), '*_tv' or 'tiny'.
    reduce_dim: C of the mid-level features and the decoder (256).
    ppm_scales: FEM scales; a value <= 1 is a fraction of the feature size (COCO).
    bn_mode: 'train' (faithful: the original trains with model.train(), so the frozen backbone
      normalises with batch statistics, each call its own) or 'frozen' (running statistics).
    freeze_backbone: stop gradients at the backbone outputs (the original's no_grad).
    feature_dropout: Dropout2d rate after down_query / down_supp (0.5).
    head_dropout: Dropout2d rate in the classifier heads (0.1).
    dtype: computation dtype of the convolutions, 'float32' or 'bfloat16' (prototype, prior,
      logits and losses stay float32), or 'float64' (everything in float64: needs
      jax_enable_x64 and float64 variables; the parity tool's exactness check).
    attention_chunk: > 0 computes the prior's cosines for at most that many query pixels at a
      time; 0 = all at once.
  """
  backbone: str = 'resnet50'
  reduce_dim: int = 256
  ppm_scales: Sequence[float] = (60, 30, 15, 8)
  bn_mode: str = 'train'
  freeze_backbone: bool = True
  feature_dropout: float = 0.5
  head_dropout: float = 0.1
  num_classes: int = 2
  dtype: str = 'float32'
  attention_chunk: int = 0

  @classmethod
  def from_config(cls, model_config: Any) -> 'PFENet':
    """Builds the model from ``config.model`` (a ConfigDict or mapping); missing keys default."""
    model = cls(**module_kwargs(model_config, _FIELDS))
    model.check_config()
    return model

  def check_config(self) -> None:
    """Raises ValueError naming the bad config.model field."""
    check_family_fields(self)

  @nn.compact
  def __call__(self, query_img: jax.Array, support_imgs: jax.Array, support_masks: jax.Array,
               train: bool = False) -> dict[str, Any]:
    """Forward pass.

    Args:
      query_img: (B, H, W, 3) normalised RGB.
      support_imgs: (B, K, H, W, 3).
      support_masks: (B, K, H, W) float in {0, 1} (support_labels == 1).
      train: dropout on, and batch-statistics BN if bn_mode == 'train'.
    Returns:
      dict(logits (B, H, W, classes), aux_logits (tuple of (B, b, b, classes) per scale)).
      Sown 'intermediates': prototypes (B, K, C), prototype (B, C), priors (B, K, h, w),
      prior (B, h, w).
    """
    self.check_config()
    _, h_in, w_in, _ = query_img.shape
    k_shots = check_episode_inputs(query_img, support_imgs, support_masks)
    support_hw = feature_size(*support_imgs.shape[2:4])
    support_masks = support_masks.astype(wide_dtype(DTYPES[self.dtype]))

    use_running_average = not (train and self.bn_mode == 'train')
    frozen = self.freeze_backbone
    dt, chunk = DTYPES[self.dtype], int(self.attention_chunk)
    backbone = ResNetBackbone(self.backbone, dtype=dt, name='backbone')
    down_query = MidLevelReduce(self.reduce_dim, self.feature_dropout, dtype=dt, name='down_query')
    down_supp = MidLevelReduce(self.reduce_dim, self.feature_dropout, dtype=dt, name='down_supp')

    # Query: one backbone pass (its own BN statistics, as the original).
    q2, q3, q4 = (backbone_output(f, frozen) for f in backbone(query_img, use_running_average))
    query_feat = down_query(jnp.concatenate([q3, q2], axis=-1), train)  # (B, h, w, C)

    # Supports, shot by shot in the original's order: layer0-3, layer4 on masked layer3, then
    # down_supp and the prototype of the mask at the layer3 resolution.
    prototypes, priors = [], []
    sg = jax.lax.stop_gradient
    for k in range(k_shots):
      mask_k = resize_bilinear_align_corners(support_masks[:, k, :, :, None], support_hw)[..., 0]
      s2, s3, s4 = (backbone_output(f, frozen) for f in
                    backbone(support_imgs[:, k], use_running_average, layer4_mask=mask_k))
      supp_feat = down_supp(jnp.concatenate([s3, s2], axis=-1), train)
      prototypes.append(weighted_gap(supp_feat, mask_k))  # (B, C)
      # The original's layer4 features come from no_grad: no gradient reaches the backbone.
      priors.append(confidence_map(sg(q4), sg(s4), mask_k, chunk))  # (B, h, w)

    # K shots: the prototypes' mean (summed, then divided by K) and the per-shot (each min-max
    # normalised) priors' mean; at K = 1 both are the one shot's.
    prototypes, priors = jnp.stack(prototypes, axis=1), jnp.stack(priors, axis=1)
    prototype, prior = jnp.mean(prototypes, axis=1), jnp.mean(priors, axis=1)
    self.sow('intermediates', 'prototypes', prototypes)
    self.sow('intermediates', 'prototype', prototype)
    self.sow('intermediates', 'priors', priors)
    self.sow('intermediates', 'prior', prior)

    logits, aux_logits = FEMDecoder(self.ppm_scales, self.reduce_dim, self.num_classes,
                                    self.head_dropout, dtype=dt, query_resize='adaptive_avg',
                                    name='decoder')(query_feat, prior[..., None], train,
                                                    prototype=prototype)
    logits = resize_bilinear_align_corners(logits, (h_in, w_in))
    return {'logits': logits, 'aux_logits': aux_logits}


def build_model(model_config: Any) -> PFENet:
  """``PFENet.from_config`` as a function."""
  return PFENet.from_config(model_config)
