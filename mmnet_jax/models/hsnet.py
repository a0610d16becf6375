"""HSNet (Min, Kang, Cho, ICCV 2021; juhongm999/hsnet model/) as a Flax Linen module.

Data flow for B episodes with K shots, each shot a 1-shot forward as in the original:
  backbone (torchvision ResNet, frozen, running statistics): every layer2..4 bottleneck's
    output before its last ReLU, for the query and the support (13 maps for ResNet-50)
  support features x the support mask (bilinear, align corners, to each map's size)
  correlations: per map, ReLU(cosine(query pixel, support pixel)), a 4-D (ha, wa, hb, wb)
    tensor; stacked as channels per layer group (layer4, layer3, layer2)
  HPN learner: center-pivot 4-D convolutions squeeze the support dims of each group, the
    groups are mixed coarse to fine, the support dims are averaged away, and a 2-D decoder
    gives 2-class logits, upsampled (align corners) to the input size.
  K > 1: the vote of predict_mask_nshot (see `vote`).

Layout: a 4-D correlation is channels-last, (B, ha, wa, hb, wb, C): the query dims first (they
stay at full resolution), the support dims next (strided away by the squeezing blocks).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmnet_jax import conventions
from mmnet_jax.models.backbone import ResNetBackbone, get_spec
from mmnet_jax.models.conv import DTYPES, wide_dtype
from mmnet_jax.models.initializers import torch_conv
from mmnet_jax.models.resize import resize_bilinear_align_corners

COSINE_EPS = 1e-5   # Correlation.multilayer_correlation: x / (||x|| + eps)
GROUPS = 4          # GroupNorm groups of every building block
# Channels of the squeezing blocks (outch1, outch2, outch3 of learner.py).
WIDTHS = (16, 64, 128)
# (kernel sizes, support strides) of the squeezing block of layer4, layer3, layer2.
SQUEEZE = (((3, 3, 3), (2, 2, 2)), ((5, 3, 3), (4, 2, 2)), ((5, 5, 3), (4, 4, 2)))

_FIELDS = ('backbone', 'freeze_backbone', 'num_classes', 'dtype')


def _out_side(n: int, stride: int) -> int:
  """A k x k conv with padding k // 2 (k odd) and `stride`: ceil(n / stride) outputs, which is
  also the length of the original's pruned index arange(0, n, stride)."""
  return -(-n // stride)


def backbone_sides(side: int) -> tuple[int, int, int]:
  """Sides of layer2, layer3, layer4 of a torchvision ResNet for an input `side`."""
  s = _out_side(_out_side(side, 2), 2)   # conv1 7x7 s2 p3, maxpool 3x3 s2 p1
  s2 = _out_side(s, 2)
  s3 = _out_side(s2, 2)
  return s2, s3, _out_side(s3, 2)


def squeezed_sides(side: int) -> tuple[int, int, int]:
  """Support side of each group (layer4, layer3, layer2) after its squeezing block."""
  out = []
  for feat, (_, strides) in zip(reversed(backbone_sides(side)), SQUEEZE):
    for s in strides:
      feat = _out_side(feat, s)
    out.append(feat)
  return tuple(out)


def input_side_ok(side: int) -> bool:
  """Every side >= 1: the learner adds the three groups' squeezed 4-D tensors, whose support
  sides are ceil(ceil(side / 8) / 32), ceil(ceil(side / 16) / 16) and ceil(ceil(side / 32) / 8),
  all ceil(side / 256) (2 at the original's 400). So HSNet has no 8k + 1 rule."""
  return isinstance(side, int) and not isinstance(side, bool) and side >= 1


def _norm(x: jax.Array) -> jax.Array:
  """The L2 norm over the last axis, keepdims, with torch's zero gradient at a zero vector
  (masked-out support pixels are exactly 0; d sqrt / dx there is NaN in plain JAX)."""
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1)), 0)


def cosine_correlation(query: jax.Array, support: jax.Array) -> jax.Array:
  """ReLU of the cosine of every query pixel with every support pixel.

  Args:
    query: (B, ha, wa, C), support: (B, hb, wb, C).
  Returns:
    (B, ha, wa, hb, wb) in the wide dtype (float32, or float64 for float64 inputs).
  """
  dt = wide_dtype(query.dtype)
  q, s = query.astype(dt), support.astype(dt)
  q = q / (_norm(q) + COSINE_EPS)
  s = s / (_norm(s) + COSINE_EPS)
  corr = jnp.einsum('bhwc,bijc->bhwij', q, s, precision=jax.lax.Precision.HIGHEST)
  # clamp(min=0): torch passes the gradient at exactly 0 (masked support pixels), as `where`
  # does; jnp.maximum would halve it there.
  return jnp.where(corr >= 0, corr, 0)


def group_ids(blocks: tuple[int, int, int, int]) -> tuple[tuple[int, int], ...]:
  """(start, stop) into the layer2..4 bottleneck list of the layer4, layer3, layer2 groups."""
  n2, n3, n4 = blocks[1:]
  return ((n2 + n3, n2 + n3 + n4), (n2, n2 + n3), (0, n2))


class CenterPivotConv4d(nn.Module):
  """conv4d.CenterPivotConv4d: a k^4 kernel restricted to its two center-pivot 2-D slices.

  out = conv1 over the query dims of the support-strided input + conv2 over the support dims
  with that stride. Each is one 2-D convolution with the other two dims folded into the batch
  (no loop over positions): XLA sees two `conv_general_dilated`s and two transposes. Support
  maps of 1x1 .. 4x4 (after squeezing) in batches of B * ha * wa run as matrix products of
  their patches (conv.conv2d small_maps), 3x faster on a CPU than XLA's convolution there.
  Parameters: conv1 / conv2, each {kernel (k, k, Cin, Cout), bias}.
  """
  features: int
  kernel_size: int
  stride: int          # on the support dims only (the query dims keep stride 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, ha, wa, hb, wb, cin = x.shape
    k, s = self.kernel_size, self.stride
    conv = lambda name: torch_conv(self.features, k, cin, use_bias=True,  # noqa: E731
                                   padding=k // 2, stride=1 if name == 'conv1' else s,
                                   name=name, dtype=self.dtype, small_maps=True)
    pruned = x[:, :, :, ::s, ::s] if s > 1 else x
    hp, wp = pruned.shape[3:5]
    out1 = pruned.transpose(0, 3, 4, 1, 2, 5).reshape(b * hp * wp, ha, wa, cin)
    out1 = conv('conv1')(out1)
    out1 = out1.reshape(b, hp, wp, ha, wa, -1).transpose(0, 3, 4, 1, 2, 5)
    out2 = conv('conv2')(x.reshape(b * ha * wa, hb, wb, cin))
    out2 = out2.reshape(b, ha, wa, *out2.shape[1:])
    return out1 + out2


class GroupNorm(nn.Module):
  """torch nn.GroupNorm(groups, C) over a channels-last array: statistics per example and
  group over every other axis, biased variance, eps 1e-5, in the wide dtype.
  Params: scale (1s), bias (0s)."""
  groups: int = GROUPS
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if c % self.groups:
      raise ValueError(f'GroupNorm {self.name}: {c} channels do not split into '
                       f'{self.groups} groups')
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    dt = wide_dtype(x.dtype)
    g = x.astype(dt).reshape(x.shape[0], -1, self.groups, c // self.groups)
    mean = jnp.mean(g, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(1, 3), keepdims=True)
    g = ((g - mean) / jnp.sqrt(var + self.epsilon)).reshape(x.shape)
    return (g * scale + bias).astype(x.dtype)


class BuildingBlock(nn.Module):
  """learner.make_building_block: (CenterPivotConv4d, GroupNorm(4), ReLU) per layer."""
  widths: tuple[int, ...]
  kernels: tuple[int, ...]
  strides: tuple[int, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, (c, k, s) in enumerate(zip(self.widths, self.kernels, self.strides)):
      x = CenterPivotConv4d(c, k, s, dtype=self.dtype, name=f'conv{i}')(x)
      x = nn.relu(GroupNorm(name=f'norm{i}')(x))
    return x


def resize_query_dims(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """learner.interpolate_support_dims: bilinear (align corners) over the query dims (ha, wa)
  of (B, ha, wa, hb, wb, C); the support dims ride along as channels."""
  b, ha, wa, hb, wb, c = x.shape
  y = resize_bilinear_align_corners(x.reshape(b, ha, wa, hb * wb * c), size)
  return y.reshape(b, size[0], size[1], hb, wb, c)


class HPNLearner(nn.Module):
  """learner.HPNLearner on the three correlation groups (layer4, layer3, layer2)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, corr4, corr3, corr2):
    dt = self.dtype
    w1, w2, w3 = WIDTHS
    sqz = [BuildingBlock(WIDTHS, kernels, strides, dtype=dt, name=f'encoder_layer{l}')(c)
           for (kernels, strides), l, c in zip(SQUEEZE, (4, 3, 2), (corr4, corr3, corr2))]
    sqz4, sqz3, sqz2 = sqz
    mix = BuildingBlock((w3,) * 3, (3,) * 3, (1,) * 3, dtype=dt, name='encoder_layer4to3')(
        resize_query_dims(sqz4, sqz3.shape[1:3]) + sqz3)
    mix = BuildingBlock((w3,) * 3, (3,) * 3, (1,) * 3, dtype=dt, name='encoder_layer3to2')(
        resize_query_dims(mix, sqz2.shape[1:3]) + sqz2)
    x = jnp.mean(mix.astype(wide_dtype(mix.dtype)), axis=(3, 4)).astype(mix.dtype)
    conv = lambda c, cin, name: torch_conv(c, 3, cin, use_bias=True, padding=1,  # noqa: E731
                                           name=name, dtype=dt)
    x = nn.relu(conv(w3, w3, 'decoder1_0')(x))
    x = nn.relu(conv(w2, w3, 'decoder1_2')(x))
    # The original upsamples to (2 * width, 2 * width): square inputs only. 2 * (h, w) here,
    # the same for square inputs.
    x = resize_bilinear_align_corners(x, (2 * x.shape[1], 2 * x.shape[2]))
    x = nn.relu(conv(w2, w2, 'decoder2_0')(x))
    return conv(2, w2, 'decoder2_2')(x)


def vote(shot_logits: jax.Array) -> jax.Array:
  """predict_mask_nshot's K-shot vote: the sum over shots of each shot's argmax, divided by
  max(1, the largest sum in the image), >= 0.5 is foreground.

  Args:
    shot_logits: (B, K, H, W, 2).
  Returns:
    (B, H, W) int32 {0, 1}. K = 1 is the argmax.
  """
  votes = jnp.sum(jnp.argmax(shot_logits, axis=-1), axis=1)
  top = jnp.maximum(jnp.max(votes, axis=(1, 2), keepdims=True), 1)
  return (votes.astype(jnp.float32) / top.astype(jnp.float32) >= 0.5).astype(jnp.int32)


def vote_logits(mask: jax.Array, dtype) -> jax.Array:
  """(B, H, W) {0, 1} -> (B, H, W, 2) logits whose argmax is the mask (+-1, not 0, so a
  bilinear resize keeps the decision away from a tie)."""
  fg = 2 * mask.astype(dtype) - 1
  return jnp.stack([-fg, fg], axis=-1)


class HSNet(nn.Module):
  """HSNet. Call: ``model.apply(variables, query_img, support_imgs, support_masks, train=)``.

  Returns {'logits': (B, H, W, 2), 'shot_logits': (B, K, H, W, 2)}: 'shot_logits' are each
  shot's 1-shot logits at the input size (the loss reads them); 'logits' are shot 0's when
  K = 1 and the vote's decision as +-1 logits when K > 1.

  Attributes (from config.model):
    backbone: 'resnet50_tv', 'resnet101_tv' (torchvision ResNets, the original's) or 'tiny'.
    freeze_backbone: stop gradients at the backbone (the original's no_grad); the backbone
      always normalises with its running statistics (the original keeps it in eval mode).
    dtype: computation dtype: 'float32', 'bfloat16' (correlations, normalisation and the loss
      stay float32) or 'float64' (the parity tool's; needs jax_enable_x64).
  """
  backbone: str = 'resnet50_tv'
  freeze_backbone: bool = True
  num_classes: int = 2
  dtype: str = 'float32'

  @classmethod
  def from_config(cls, model_config: Any) -> 'HSNet':
    get = (model_config.get if hasattr(model_config, 'get')
           else lambda k, d: getattr(model_config, k, d))
    kwargs = {f: get(f, None) for f in _FIELDS}
    module = cls(**{k: v for k, v in kwargs.items() if v is not None})
    get_spec(module.backbone)
    if module.dtype not in DTYPES:
      raise ValueError(f'config.model.dtype must be one of {sorted(DTYPES)}, '
                       f'got {module.dtype!r}')
    if module.num_classes != 2:
      raise ValueError(f'config.model.num_classes must be 2 (HSNet predicts background and '
                       f'foreground), got {module.num_classes}')
    return module

  def features(self, backbone: nn.Module, img: jax.Array) -> tuple[jax.Array, ...]:
    feats = backbone(img, use_running_average=True)
    if self.freeze_backbone:
      feats = tuple(jax.lax.stop_gradient(f) for f in feats)
    return feats

  @nn.compact
  def __call__(self, query_img, support_imgs, support_masks, train: bool = False):
    del train   # no dropout; the backbone keeps its running statistics in training too
    dt = DTYPES[self.dtype]
    b, h, w, _ = query_img.shape
    k_shots = support_imgs.shape[1]
    if support_imgs.shape[0] != b or support_masks.shape != support_imgs.shape[:4]:
      raise ValueError(f'support_imgs {support_imgs.shape} / support_masks '
                       f'{support_masks.shape} must be (B={b}, K, H, W, 3) / (B, K, H, W)')
    spec = get_spec(self.backbone)
    backbone = ResNetBackbone(self.backbone, dtype=dt, dilated=False, all_blocks=True,
                              name='backbone')
    learner = HPNLearner(dtype=dt, name='hpn_learner')
    query_feats = self.features(backbone, query_img)
    # All K supports through the backbone at once (running statistics: no cross-talk).
    hs, ws = support_imgs.shape[2:4]
    support_feats = self.features(backbone, support_imgs.reshape(b * k_shots, hs, ws, 3))
    masks = support_masks.reshape(b * k_shots, hs, ws, 1)
    ids = group_ids(spec.blocks)
    shot_logits = []
    for shot in range(k_shots):
      corrs = []
      for q, s in zip(query_feats, support_feats):
        s = s.reshape(b, k_shots, *s.shape[1:])[:, shot]
        m = masks.reshape(b, k_shots, hs, ws, 1)[:, shot].astype(s.dtype)
        s = s * resize_bilinear_align_corners(m, s.shape[1:3])
        corrs.append(cosine_correlation(q, s))
      groups = [jnp.stack(corrs[lo:hi], axis=-1).astype(dt) for lo, hi in ids]
      logits = learner(*groups)
      logits = resize_bilinear_align_corners(logits.astype(wide_dtype(dt)), (h, w))
      shot_logits.append(logits)
    shot_logits = jnp.stack(shot_logits, axis=1)
    if k_shots == 1:
      logits = shot_logits[:, 0]
    else:
      logits = vote_logits(vote(shot_logits), shot_logits.dtype)
    return {'logits': logits, 'shot_logits': shot_logits}


def hsnet_loss(outputs: Mapping[str, Any], query_label: jax.Array
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """compute_objective: CrossEntropyLoss over every pixel, the void label (255) counted as
  background (HSNet's reader sets every pixel that is not the class to 0). With K > 1 shots
  (the original trains 1-shot only) it is the mean over the shots of each 1-shot loss.

  Returns (total, {'main': total}).
  """
  shot_logits = outputs['shot_logits']
  label = jnp.where(query_label == conventions.IGNORE_LABEL, 0, query_label).astype(jnp.int32)
  if shot_logits.shape[2:4] != label.shape[1:3]:
    shot_logits = jax.vmap(lambda l: resize_bilinear_align_corners(l, label.shape[1:3]),
                           in_axes=1, out_axes=1)(shot_logits)
  log_probs = jax.nn.log_softmax(shot_logits.astype(wide_dtype(shot_logits.dtype)), axis=-1)
  nll = -jnp.take_along_axis(log_probs, label[:, None, :, :, None], axis=-1)[..., 0]
  main = jnp.mean(nll)
  return main, {'main': main}


__all__ = ['BuildingBlock', 'CenterPivotConv4d', 'GroupNorm', 'HPNLearner', 'HSNet',
           'backbone_sides', 'cosine_correlation', 'group_ids',
           'hsnet_loss', 'input_side_ok', 'resize_query_dims', 'squeezed_sides', 'vote',
           'vote_logits']
