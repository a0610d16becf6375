"""PFENet augmentations (util/transform.py) in numpy, with OpenCV's sampling conventions.

Train (`train_transform`), applied independently to the query and to each support after
binarising, in PFENet's order:
  1. RandScale U[scale_min, scale_max]: output size rint(h*s) x rint(w*s); image bilinear with
     cv2 INTER_LINEAR geometry (half-pixel centres, edge clamp, no antialias), label nearest
     with cv2 INTER_NEAREST geometry (source = floor(x / s)).
  2. RandRotate U[-deg, deg], p 0.5, about (w/2, h/2) as cv2.getRotationMatrix2D, same output
     size; image bilinear with border = ImageNet mean, label nearest with border 255.
  3. GaussianBlur 5x5, p 0.5, sigma 0: OpenCV then uses its fixed binomial kernel
     [1, 4, 6, 4, 1] / 16 (not a sigma-1.1 Gaussian), border reflect-101.
  4. Horizontal flip, p 0.5.
  5. Crop: pad to >= crop (half before, rest after; image mean, label 255), random crop
     re-drawn while it keeps < 85% of the foreground (label == 1) pixels, at most 31 re-draws;
     the last draw is kept if none succeeds.
  6. Normalise with the ImageNet mean/std on 0-255.
Against OpenCV 5.0 on float32 images (0-255): resize max |diff| 5e-5, rotation max 0.014 (its
fixed-point coordinates), blur exact; nearest labels equal except ~2e-5 of rotated pixels
(.5 rounding ties). The ops run in PFENet's order, one interpolation each, as the original.

Eval (`eval_resize`) is PFENet's Resize, which `resized_val: True` selects in PFENet's and
MM-Net's configs: the longer side always becomes size (up or down), the other
int(side * size / longer), then both are floored to a multiple of 8 (so 473 -> 472). The image
is pasted top-left on a black (0) canvas BEFORE normalisation, as PFENet (the canvas becomes
-mean/std); `fill='mean'` pastes on the mean colour instead (0 after normalisation). The label
is resized nearest and padded with 255. `mode='test_resize'` is PFENet's test_Resize (an
option): images whose longer side is at most size keep their size. `eval_scored_by_crop` says
how the canvas logits then map back to the original label (evaluate.canvas_prediction).
"""

from __future__ import annotations

import math

import numpy as np

from mmnet_jax import conventions

_BLUR_KERNEL = np.array([1, 4, 6, 4, 1], np.float32) / 16  # cv2.getGaussianKernel(5, 0)


def to_rgb(image: np.ndarray) -> np.ndarray:
  """float32 (h, w, 3): grayscale (h, w) or (h, w, 1) is repeated, RGBA loses alpha."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
    raise ValueError(f'image must be (h, w), (h, w, 1), (h, w, 3) or (h, w, 4); '
                     f'got shape {image.shape}')
  if image.shape[2] == 1:
    image = np.repeat(image, 3, axis=2)
  return np.ascontiguousarray(image[:, :, :3], dtype=np.float32)


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
  if label.ndim != 2 or image.shape[:2] != label.shape:
    raise ValueError(f'image {image.shape} and label {label.shape} sizes differ')


def _linear_taps(src: int, dst: int, scale: float):
  """cv2 INTER_LINEAR source taps along one axis: (i0, i1, w1), src pos = (d+.5)*scale-.5."""
  pos = (np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5
  pos = np.clip(pos, 0, src - 1)
  i0 = np.floor(pos).astype(np.int64)
  i1 = np.minimum(i0 + 1, src - 1)
  return i0, i1, (pos - i0).astype(np.float32)


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int, scale_y: float | None = None,
                    scale_x: float | None = None) -> np.ndarray:
  """cv2.resize INTER_LINEAR of a float32 (h, w, C) image; scale = source pixels per output
  pixel (default h / out_h as when cv2 gets a dsize; 1 / fx when it gets fx)."""
  h, w = image.shape[:2]
  if (out_h, out_w) == (h, w) and scale_y in (None, 1.0) and scale_x in (None, 1.0):
    return image.copy()
  y0, y1, wy = _linear_taps(h, out_h, h / out_h if scale_y is None else scale_y)
  x0, x1, wx = _linear_taps(w, out_w, w / out_w if scale_x is None else scale_x)
  wy = wy.reshape((-1,) + (1,) * (image.ndim - 1))
  rows = image[y0] * (1 - wy) + image[y1] * wy  # (out_h, w, C)
  wx = wx.reshape((1, -1) + (1,) * (image.ndim - 2))
  return rows[:, x0] * (1 - wx) + rows[:, x1] * wx


def resize_nearest(label: np.ndarray, out_h: int, out_w: int, scale_y: float | None = None,
                   scale_x: float | None = None) -> np.ndarray:
  """cv2.resize INTER_NEAREST: source index = min(floor(d * scale), size - 1)."""
  h, w = label.shape[:2]
  sy = h / out_h if scale_y is None else scale_y
  sx = w / out_w if scale_x is None else scale_x
  ys = np.minimum(np.floor(np.arange(out_h) * sy).astype(np.int64), h - 1)
  xs = np.minimum(np.floor(np.arange(out_w) * sx).astype(np.int64), w - 1)
  return label[ys[:, None], xs[None, :]]


def rotation_matrix(center_x: float, center_y: float, angle_deg: float) -> np.ndarray:
  """cv2.getRotationMatrix2D(center, angle, 1): (2, 3) forward map, positive = anticlockwise."""
  a = math.cos(math.radians(angle_deg))
  b = math.sin(math.radians(angle_deg))
  return np.array([[a, b, (1 - a) * center_x - b * center_y],
                   [-b, a, b * center_x + (1 - a) * center_y]], np.float64)


def _inverse_coords(matrix: np.ndarray, out_h: int, out_w: int):
  """Source coordinates (x, y) of every output pixel under the forward affine `matrix`."""
  inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
  ys, xs = np.meshgrid(np.arange(out_h, dtype=np.float64), np.arange(out_w, dtype=np.float64),
                       indexing='ij')
  src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
  src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
  return src_x, src_y


def warp_affine_bilinear(image: np.ndarray, matrix: np.ndarray, fill) -> np.ndarray:
  """cv2.warpAffine INTER_LINEAR, BORDER_CONSTANT=fill, same output size; (h, w, C) float32."""
  h, w, c = image.shape
  src_x, src_y = _inverse_coords(matrix, h, w)
  # One pixel of fill around the image: a tap outside it reads fill, as OpenCV's border.
  padded = np.empty((h + 2, w + 2, c), np.float32)
  padded[...] = np.asarray(fill, np.float32)
  padded[1:-1, 1:-1] = image
  px = np.clip(src_x + 1, 0, w + 1)
  py = np.clip(src_y + 1, 0, h + 1)
  x0 = np.floor(px).astype(np.int64)
  y0 = np.floor(py).astype(np.int64)
  x1 = np.minimum(x0 + 1, w + 1)
  y1 = np.minimum(y0 + 1, h + 1)
  wx = (px - x0).astype(np.float32)[..., None]
  wy = (py - y0).astype(np.float32)[..., None]
  flat = padded.reshape(-1, c)
  stride = w + 2
  top = flat[y0 * stride + x0] * (1 - wx) + flat[y0 * stride + x1] * wx
  bottom = flat[y1 * stride + x0] * (1 - wx) + flat[y1 * stride + x1] * wx
  return top * (1 - wy) + bottom * wy


def warp_affine_nearest(label: np.ndarray, matrix: np.ndarray, fill: int) -> np.ndarray:
  """cv2.warpAffine INTER_NEAREST, BORDER_CONSTANT=fill, same output size; (h, w) labels."""
  h, w = label.shape
  src_x, src_y = _inverse_coords(matrix, h, w)
  xi = np.floor(src_x + 0.5).astype(np.int64)
  yi = np.floor(src_y + 0.5).astype(np.int64)
  inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
  out = label[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
  return np.where(inside, out, np.asarray(fill, label.dtype))


def gaussian_blur5(image: np.ndarray) -> np.ndarray:
  """cv2.GaussianBlur(image, (5, 5), 0): separable [1,4,6,4,1]/16, border reflect-101."""
  h, w = image.shape[:2]
  mode = 'reflect' if min(h, w) > 2 else 'symmetric'
  p = np.pad(image, ((2, 2), (0, 0), (0, 0)), mode=mode)
  k = _BLUR_KERNEL
  rows = k[0] * p[:-4] + k[1] * p[1:-3] + k[2] * p[2:-2] + k[3] * p[3:-1] + k[4] * p[4:]
  p = np.pad(rows, ((0, 0), (2, 2), (0, 0)), mode=mode)
  return (k[0] * p[:, :-4] + k[1] * p[:, 1:-3] + k[2] * p[:, 2:-2] + k[3] * p[:, 3:-1]
          + k[4] * p[:, 4:])


def pad_to(image: np.ndarray, label: np.ndarray, size: int):
  """Pads to at least size x size: half before, rest after; image mean, label 255."""
  h, w = label.shape
  pad_h, pad_w = max(size - h, 0), max(size - w, 0)
  if not (pad_h or pad_w):
    return image, label
  top, left = pad_h // 2, pad_w // 2
  out_img = np.empty((h + pad_h, w + pad_w, 3), np.float32)
  out_img[...] = conventions.IMAGENET_MEAN
  out_img[top:top + h, left:left + w] = image
  out_lbl = np.full((h + pad_h, w + pad_w), conventions.IGNORE_LABEL, label.dtype)
  out_lbl[top:top + h, left:left + w] = label
  return out_img, out_lbl


def random_crop(image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator,
                min_keep: float = 0.85, max_redraws: int = 31):
  """PFENet Crop(crop_type='rand'): pad, then draw offsets until the crop keeps
  >= min_keep of the foreground (label == 1); at most `max_redraws` re-draws, last one kept."""
  image, label = pad_to(image, label, size)
  h, w = label.shape
  fg = label == 1
  total = int(fg.sum())
  # Column-wise cumulative counts make each draw's foreground count O(size).
  cum = np.concatenate([np.zeros((1, w), np.int64), np.cumsum(fg, axis=0)], axis=0)
  for draw in range(max_redraws + 1):
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    kept = int((cum[top + size, left:left + size] - cum[top, left:left + size]).sum())
    if kept >= min_keep * total:
      break
  return (image[top:top + size, left:left + size],
          label[top:top + size, left:left + size])


def train_transform(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *,
                    crop_size: int, scale_min: float, scale_max: float,
                    rotate_deg: float = 10.0):
  """PFENet training augmentation of one (image, binarised label) pair.

  Args:
    image: uint8/float (h, w), (h, w, 1), (h, w, 3) or (h, w, 4), RGB 0-255.
    label: (h, w) binarised label in {0, 1, 255}.
    rng: this slot's generator (query and each support get their own).

  Returns:
    float32 (crop, crop, 3) normalised image, uint8 (crop, crop) label in {0, 1, 255}.
  """
  image = to_rgb(image)
  label = np.asarray(label, np.uint8)
  _check_pair(image, label)
  h, w = label.shape
  scale = scale_min + (scale_max - scale_min) * rng.random()
  out_h, out_w = max(int(np.rint(h * scale)), 1), max(int(np.rint(w * scale)), 1)
  image = resize_bilinear(image, out_h, out_w, 1 / scale, 1 / scale)
  label = resize_nearest(label, out_h, out_w, 1 / scale, 1 / scale)
  if rng.random() < 0.5:
    angle = -rotate_deg + 2 * rotate_deg * rng.random()
    matrix = rotation_matrix(out_w / 2, out_h / 2, angle)
    image = warp_affine_bilinear(image, matrix, conventions.IMAGENET_MEAN)
    label = warp_affine_nearest(label, matrix, conventions.IGNORE_LABEL)
  if rng.random() < 0.5:
    image = gaussian_blur5(image)
  if rng.random() < 0.5:
    image, label = image[:, ::-1], label[:, ::-1]
  image, label = random_crop(image, label, crop_size, rng)
  return conventions.normalize_image(image).astype(np.float32), np.ascontiguousarray(label)


# config.train.augment: PFENet's train_transform, or HSNet's (no augmentation: `stretch`).
TRAIN_AUGMENTS = ('pfenet', 'stretch')


def stretch(image: np.ndarray, label: np.ndarray, size: int):
  """HSNet's transform (training and test) of one (image, binarised label) pair: both
  stretched to size x size (aspect ratio not kept), the image bilinearly (half-pixel centres,
  no antialiasing: torchvision's PIL Resize antialiases when it shrinks), the label by
  nearest neighbour.

  Returns (float32 (size, size, 3) normalised image, uint8 (size, size) label).
  """
  image = to_rgb(image)
  label = np.asarray(label, np.uint8)
  _check_pair(image, label)
  return (conventions.normalize_image(resize_bilinear(image, size, size)).astype(np.float32),
          resize_nearest(label, size, size))


EVAL_RESIZES = ('resize', 'test_resize')   # PFENet transform.Resize, transform.test_Resize


def _check_mode(mode: str) -> None:
  if mode not in EVAL_RESIZES:
    raise ValueError(f'config.eval.resize={mode!r}; expected one of {list(EVAL_RESIZES)}')


def eval_size(h: int, w: int, size: int, mode: str = 'resize') -> tuple[int, int]:
  """PFENet Resize's (or, with mode='test_resize', test_Resize's) find_new_hw: the resized
  (h, w) before the top-left paste."""
  _check_mode(mode)
  if mode == 'test_resize' and max(h, w) <= size:
    return h, w
  if h >= w:
    new_h, new_w = size, int(w * (size / h))
  else:
    new_h, new_w = int(h * (size / w)), size
  return new_h // 8 * 8, new_w // 8 * 8


def eval_scored_by_crop(h: int, w: int, size: int, mode: str = 'resize') -> bool:
  """True when an h x w image sits unscaled on the canvas (test_Resize, longer side <= size):
  the canvas logits are then cropped to the original label, not resized (PFENet's rule, the
  canvas resized to the longer side, would score a shrunken prediction)."""
  _check_mode(mode)
  return mode == 'test_resize' and max(h, w) <= size


def eval_resize(image: np.ndarray, label: np.ndarray, size: int, fill: str = 'black',
                mode: str = 'resize'):
  """PFENet Resize (mode='test_resize': test_Resize) of one (image, binarised label) pair,
  plus the scoring label.

  Returns:
    image: float32 (size, size, 3) normalised; the canvas outside the pasted image is black
      before normalisation (fill='black', PFENet) or the mean colour (fill='mean', 0 after).
    label: uint8 (size, size), nearest-resized, 255 outside the pasted area.
    original: uint8 (S, S), S = max(h, w): the original label top-left, 255 elsewhere.
  """
  if fill not in ('black', 'mean'):
    raise ValueError(f"eval fill must be 'black' or 'mean', got {fill!r}")
  image = to_rgb(image)
  label = np.asarray(label, np.uint8)
  _check_pair(image, label)
  h, w = label.shape
  new_h, new_w = eval_size(h, w, size, mode)
  if min(new_h, new_w) < 1:
    raise ValueError(f'image {h}x{w} is too elongated to resize to {size}')
  canvas = np.zeros((size, size, 3), np.float32) if fill == 'black' else np.tile(
      conventions.IMAGENET_MEAN, (size, size, 1))
  canvas[:new_h, :new_w] = resize_bilinear(image, new_h, new_w)
  out_label = np.full((size, size), conventions.IGNORE_LABEL, np.uint8)
  out_label[:new_h, :new_w] = resize_nearest(label, new_h, new_w)
  side = max(h, w)
  original = np.full((side, side), conventions.IGNORE_LABEL, np.uint8)
  original[:h, :w] = label
  return conventions.normalize_image(canvas), out_label, original
