"""The assembled MM-Net (Wu et al., ICCV 2021) as a Flax Linen module.

Data flow for B episodes with K shots (feature size h x w = ((H-1)/8+1, (W-1)/8+1)):
  backbone (frozen) -> query / support layer2, layer3, layer4
  mid-level features: concat(layer3, layer2) -> down_query / down_supp (1x1, ReLU, Dropout2d)
  prior: cosine of query layer4 with masked support layer4, max, min-max, mean over shots
  memory: activations A_q, A_s; reconstruction loss on support shot 0
  APM: per shot propagated activations P_k and quality q_k; Q = sigmoid(A_q) * sum_k w_k P_k
  FEM decoder on concat(Q, prior) -> logits, upsampled to the input size.
The faithful 1-shot model is this K-shot path at K = 1.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmnet_jax.models import memory as memory_lib
from mmnet_jax.models import propagation
from mmnet_jax.models.backbone import ResNetBackbone, backbone_output, feature_size
from mmnet_jax.models.conv import DTYPES, wide_dtype
from mmnet_jax.models.decoder import FEMDecoder
from mmnet_jax.models.mid_level import (MidLevelReduce, check_episode_inputs,
                                        check_family_fields, module_kwargs)
from mmnet_jax.models.prior import confidence_map
from mmnet_jax.models.resize import resize_bilinear_align_corners

_FIELDS = ('backbone', 'reduce_dim', 'memory_slots', 'ppm_scales', 'bn_mode', 'freeze_backbone',
           'kshot_mask_compat', 'feature_dropout', 'head_dropout', 'num_classes', 'dtype',
           'attention_chunk')


class MMNet(nn.Module):
  """MM-Net. Call: ``model.apply(variables, query_img, support_imgs, support_masks, train=)``.

  Attributes (from config.model):
    backbone: 'resnet50', 'resnet101', 'resnet50_tv', 'resnet101_tv' or 'tiny'.
    reduce_dim: C of the mid-level features and the memory (256).
    memory_slots: N (50).
    ppm_scales: FEM scales; a value <= 1 is a fraction of the feature size.
    bn_mode: 'train' (faithful: batch statistics while training, each backbone call its own,
      running stats updated when 'batch_stats' is mutable) or 'frozen' (running statistics).
    freeze_backbone: stop gradients at the backbone outputs (the original).
    kshot_mask_compat: every shot's APM uses the LAST shot's mask (the released code's bug).
    feature_dropout: Dropout2d rate after down_query / down_supp (0.5).
    head_dropout: Dropout2d rate in the classifier heads (0.1).
    dtype: computation dtype of the convolutions, 'float32' or 'bfloat16' (mixed precision:
      parameters, BN statistics, memory, prior, propagation, logits and losses stay float32),
      or 'float64' (everything in float64: needs jax_enable_x64 and float64 variables; the
      parity tool's exactness check).
    attention_chunk: > 0 computes the pixel-to-pixel matrices (propagation attention, prior
      cosines, reconstruction logits) for at most that many query pixels at a time; 0 = all
      at once (the dataclass default; the configs use 1024).
  """
  backbone: str = 'resnet50'
  reduce_dim: int = 256
  memory_slots: int = 50
  ppm_scales: Sequence[float] = (60, 30, 15, 8)
  bn_mode: str = 'train'
  freeze_backbone: bool = True
  kshot_mask_compat: bool = False
  feature_dropout: float = 0.5
  head_dropout: float = 0.1
  num_classes: int = 2
  dtype: str = 'float32'
  attention_chunk: int = 0

  @classmethod
  def from_config(cls, model_config: Any) -> 'MMNet':
    """Builds the model from ``config.model`` (a ConfigDict or mapping); missing keys default."""
    model = cls(**module_kwargs(model_config, _FIELDS))
    model.check_config()
    return model

  def check_config(self) -> None:
    """Raises ValueError naming the bad config.model field."""
    check_family_fields(self)
    if int(self.memory_slots) < 1:
      raise ValueError(f'config.model.memory_slots must be >= 1, got {self.memory_slots}')

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
      dict(logits (B, H, W, classes), aux_logits (tuple of (B, b, b, classes)),
           recon_loss scalar).
    """
    self.check_config()
    b, h_in, w_in, _ = query_img.shape
    k_shots = check_episode_inputs(query_img, support_imgs, support_masks)
    support_hw = feature_size(*support_imgs.shape[2:4])
    support_masks = support_masks.astype(wide_dtype(DTYPES[self.dtype]))

    use_running_average = not (train and self.bn_mode == 'train')
    frozen = self.freeze_backbone
    dt, chunk = DTYPES[self.dtype], int(self.attention_chunk)
    f32 = wide_dtype(dt)  # memory, prior, propagation: float32 (float64 in float64)
    backbone = ResNetBackbone(self.backbone, dtype=dt, name='backbone')
    down_query = MidLevelReduce(self.reduce_dim, self.feature_dropout, dtype=dt, name='down_query')
    down_supp = MidLevelReduce(self.reduce_dim, self.feature_dropout, dtype=dt, name='down_supp')

    # Query: one backbone pass (its own BN statistics, as the original).
    q2, q3, q4 = (backbone_output(f, frozen) for f in backbone(query_img, use_running_average))
    query_mid = down_query(jnp.concatenate([q3, q2], axis=-1), train)  # (B, h, w, C)
    feat_h, feat_w = query_mid.shape[1:3]

    # Supports, shot by shot in the original's order: layer0-3, then layer4 on masked layer3.
    support_mids, support_l4, masks_feat = [], [], []
    for k in range(k_shots):
      mask_k = resize_bilinear_align_corners(support_masks[:, k, :, :, None], support_hw)[..., 0]
      s2, s3, s4 = (backbone_output(f, frozen) for f in
                    backbone(support_imgs[:, k], use_running_average, layer4_mask=mask_k))
      support_mids.append(down_supp(jnp.concatenate([s3, s2], axis=-1), train))
      support_l4.append(s4)
      masks_feat.append(mask_k)  # (B, hs, ws) soft mask

    # Foreground confidence map (prior): per-shot mask, mean over shots. The original computes
    # it under torch.no_grad, so no gradient reaches layer4 even with a trainable backbone
    # (stopped at its inputs: the same values and gradients, and nothing kept for backward).
    sg = jax.lax.stop_gradient
    prior = jnp.mean(jnp.stack([confidence_map(sg(q4), sg(s4), sg(m), chunk) for s4, m in
                                zip(support_l4, masks_feat)], axis=1), axis=1)  # (B, h, w)

    # Meta-class memory and activation propagation.
    slots = memory_lib.MetaClassMemory(self.reduce_dim, self.memory_slots, name='memory')()
    c = self.reduce_dim
    query_flat = query_mid.reshape(b, feat_h * feat_w, c).astype(f32)
    query_act = memory_lib.activations(query_flat, slots)  # (B, HW_q, N)
    support_flats = [s.reshape(b, -1, c).astype(f32) for s in support_mids]
    recon_loss = memory_lib.reconstruction_loss(support_flats[0], slots, chunk)
    apm_masks = [masks_feat[-1]] * k_shots if self.kshot_mask_compat else masks_feat
    props, quals = [], []
    for s_flat, m in zip(support_flats, apm_masks):
      p_k, q_k = propagation.propagate(query_act, memory_lib.activations(s_flat, slots),
                                       m.reshape(b, -1), chunk)
      props.append(p_k)
      quals.append(q_k)
    query_map, weights = propagation.combine_shots(
        query_act, jnp.stack(props, axis=1), jnp.stack(quals, axis=1))
    query_map = query_map.reshape(b, feat_h, feat_w, self.memory_slots)
    self.sow('intermediates', 'prior', prior)
    self.sow('intermediates', 'quality_weights', weights.reshape(b, k_shots, feat_h, feat_w))

    logits, aux_logits = FEMDecoder(self.ppm_scales, self.reduce_dim, self.num_classes,
                                    self.head_dropout, dtype=dt, name='decoder')(
                                        query_map, prior[..., None], train)
    logits = resize_bilinear_align_corners(logits, (h_in, w_in))
    return {'logits': logits, 'aux_logits': aux_logits, 'recon_loss': recon_loss}


def build_model(model_config: Any) -> MMNet:
  """``MMNet.from_config`` as a function."""
  return MMNet.from_config(model_config)
