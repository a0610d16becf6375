"""Dilated ResNet backbone (output stride 8) as used by PFENet / MM-Net.

Variants: the PSPNet/semseg deep stem (three 3x3 convs, the original's ``resnet50_v2``) or the
torchvision 7x7 stem; depths 50 and 101; and a 'tiny' deep-stem variant for CPU tests and the
synthetic benchmark. Bottlenecks put the stride on the 3x3 conv. layer3 / layer4 run with
stride 1 and dilation 2 / 4 in every block, so the features are at stride 8:
H -> (H-1)/2+1 -> (H-1)/4+1 -> (H-1)/8+1 (layer2, layer3, layer4).

Parameter names follow docs/architecture.md: ``stem/{conv1,bn1,...}`` and
``layer{l}_{i}/{conv1,bn1,conv2,bn2,conv3,bn3,downsample_conv,downsample_bn}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmnet_jax.models.batchnorm import BatchNorm
from mmnet_jax.models.initializers import resnet_kernel_init, torch_conv

EXPANSION = 4


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """Static description of a ResNet variant."""
  deep_stem: bool
  stem_widths: tuple[int, ...]   # deep: (c1, c2, c3); torchvision: (c1,)
  blocks: tuple[int, int, int, int]
  widths: tuple[int, int, int, int]  # bottleneck planes per layer; output = planes * 4

  @property
  def channels(self) -> tuple[int, int, int]:
    """Output channels of layer2, layer3, layer4."""
    return tuple(w * EXPANSION for w in self.widths[1:])


BACKBONES = {
    'resnet50': BackboneSpec(True, (64, 64, 128), (3, 4, 6, 3), (64, 128, 256, 512)),
    'resnet101': BackboneSpec(True, (64, 64, 128), (3, 4, 23, 3), (64, 128, 256, 512)),
    'resnet50_tv': BackboneSpec(False, (64,), (3, 4, 6, 3), (64, 128, 256, 512)),
    'resnet101_tv': BackboneSpec(False, (64,), (3, 4, 23, 3), (64, 128, 256, 512)),
    # CPU-sized: deep stem 16/16/32, one block per layer, outputs 64/128/256/512 channels.
    'tiny': BackboneSpec(True, (16, 16, 32), (1, 1, 1, 1), (16, 32, 64, 128)),
}

# (stride, dilation) of each layer's first block / 3x3 convs: output stride 8.
_LAYER_STRIDE_DILATION = ((1, 1), (2, 1), (1, 2), (1, 4))
# torchvision's classification ResNet (HSNet): no dilation, output stride 32.
_LAYER_STRIDE_PLAIN = ((1, 1), (2, 1), (2, 1), (2, 1))


def get_spec(name: str) -> BackboneSpec:
  """Returns the BackboneSpec for a config name, or raises naming the allowed values."""
  if name not in BACKBONES:
    raise ValueError(f'config.model.backbone must be one of {sorted(BACKBONES)}, got {name!r}')
  return BACKBONES[name]


def feature_size(h: int, w: int) -> tuple[int, int]:
  """Spatial size of layer2..4 for an (h, w) input; requires (h-1) % 8 == 0 == (w-1) % 8."""
  if h < 9 or w < 9 or (h - 1) % 8 or (w - 1) % 8:
    raise ValueError(f'input size {h}x{w} is not supported: need (H-1) % 8 == 0 and '
                     f'(W-1) % 8 == 0 with H, W >= 9 (e.g. 473, 641, 33)')
  return (h - 1) // 8 + 1, (w - 1) // 8 + 1


def _conv(features, kernel, in_features, name, stride=1, padding=0, dilation=1, dtype=None):
  return torch_conv(features, kernel, in_features, padding=padding, stride=stride,
                    dilation=dilation, name=name, kernel_init=resnet_kernel_init, dtype=dtype)


class Bottleneck(nn.Module):
  """ResNet v1.5-style bottleneck (stride on the 3x3 conv) with torch BatchNorm."""
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32   # computation dtype
  final_relu: bool = True    # False: the residual sum before its ReLU (HSNet's features)

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    cin, p, d, dt = x.shape[-1], self.planes, self.dilation, self.dtype
    out = _conv(p, 1, cin, 'conv1', dtype=dt)(x)
    out = nn.relu(BatchNorm(name='bn1')(out, use_running_average))
    out = _conv(p, 3, p, 'conv2', stride=self.stride, padding=d, dilation=d, dtype=dt)(out)
    out = nn.relu(BatchNorm(name='bn2')(out, use_running_average))
    out = _conv(p * EXPANSION, 1, p, 'conv3', dtype=dt)(out)
    out = BatchNorm(name='bn3')(out, use_running_average)
    residual = x
    if self.downsample:
      residual = _conv(p * EXPANSION, 1, cin, 'downsample_conv', stride=self.stride,
                       dtype=dt)(x)
      residual = BatchNorm(name='downsample_bn')(residual, use_running_average)
    out = out + residual
    return nn.relu(out) if self.final_relu else out


class Stem(nn.Module):
  """Deep stem (3x3 s2, 3x3, 3x3) or torchvision stem (7x7 s2), each followed by maxpool."""
  deep: bool
  widths: tuple[int, ...]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    dt = self.dtype
    if self.deep:
      c1, c2, c3 = self.widths
      x = nn.relu(BatchNorm(name='bn1')(_conv(c1, 3, x.shape[-1], 'conv1', 2, 1, dtype=dt)(x),
                                        use_running_average))
      x = nn.relu(BatchNorm(name='bn2')(_conv(c2, 3, c1, 'conv2', 1, 1, dtype=dt)(x),
                                        use_running_average))
      x = nn.relu(BatchNorm(name='bn3')(_conv(c3, 3, c2, 'conv3', 1, 1, dtype=dt)(x),
                                        use_running_average))
    else:
      (c1,) = self.widths
      x = nn.relu(BatchNorm(name='bn1')(_conv(c1, 7, x.shape[-1], 'conv1', 2, 3, dtype=dt)(x),
                                        use_running_average))
    # torch MaxPool2d pads with -inf; flax max_pool pads with the reduction's init (-inf).
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResNetBackbone(nn.Module):
  """Returns (layer2, layer3, layer4) features, NHWC, all at stride 8.

  ``layer4_mask`` (B, h, w) at the layer3 resolution, if given, multiplies layer3 before layer4
  (the support path of the original: layer4(layer3 * mask)). One call = one pass of the
  original's layer0..layer4, so BatchNorm statistics are per call, as in torch.
  Features come out in ``dtype`` (the computation dtype; parameters are float32).

  ``dilated=False`` is torchvision's ResNet (layer2..4 at strides 8, 16, 32; sides
  ceil(H / 8), ceil(H / 16), ceil(H / 32)). ``all_blocks=True`` returns instead the tuple of
  every layer2..4 bottleneck's residual sum before its last ReLU, in order (HSNet's
  extract_feat_res); the parameters are the same.
  """
  name_or_spec: str = 'resnet50'
  dtype: Any = jnp.float32
  dilated: bool = True
  all_blocks: bool = False

  @nn.compact
  def __call__(self, x, use_running_average: bool, layer4_mask=None):
    spec = get_spec(self.name_or_spec)
    x = Stem(spec.deep_stem, spec.stem_widths, dtype=self.dtype, name='stem')(
        x.astype(self.dtype), use_running_average)
    feats, blocks = [], []
    layout = _LAYER_STRIDE_DILATION if self.dilated else _LAYER_STRIDE_PLAIN
    for l, (n_blocks, planes, (stride, dil)) in enumerate(
        zip(spec.blocks, spec.widths, layout), start=1):
      if l == 4 and layer4_mask is not None:
        if layer4_mask.shape != x.shape[:3]:
          raise ValueError(f'layer4_mask shape {layer4_mask.shape} != layer3 map {x.shape[:3]}')
        x = x * layer4_mask[..., None].astype(x.dtype)
      for i in range(n_blocks):
        s = stride if i == 0 else 1
        # As torch's _make_layer: a projection shortcut only where the shape changes.
        down = i == 0 and (s != 1 or x.shape[-1] != planes * EXPANSION)
        x = Bottleneck(planes, stride=s, dilation=dil, downsample=down, dtype=self.dtype,
                       final_relu=not self.all_blocks, name=f'layer{l}_{i}')(
                           x, use_running_average)
        if self.all_blocks:
          if l > 1:
            blocks.append(x)
          x = nn.relu(x)
      feats.append(x)
    if self.all_blocks:
      return tuple(blocks)
    return feats[1], feats[2], feats[3]


def backbone_output(x: jax.Array, freeze: bool) -> jax.Array:
  """Stops gradients at a backbone output when the backbone is frozen (the original's no_grad)."""
  return jax.lax.stop_gradient(x) if freeze else x


__all__ = ['BACKBONES', 'BackboneSpec', 'Bottleneck', 'ResNetBackbone', 'Stem',
           'backbone_output', 'feature_size', 'get_spec']
