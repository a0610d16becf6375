"""PFENet's augmentations (augment.py) as TensorFlow graph ops, for tf.data map functions.

Every op is the numpy op of augment.py restated with the same OpenCV conventions and the same
float arithmetic in the same order (coordinates in float64, pixel blends in float32), so both
give the same numbers (tests/data/test_tf_augment.py measures them). Shapes may be dynamic;
nothing calls back into Python, so the ops run inside tf.function and Dataset.map in parallel.

Where augment.py draws random numbers, the op here takes them as arguments (`apply_train`
takes all of one pair's draws, `train_params` draws them statelessly from a seed), so a test can
feed both implementations the same draws. Only the stream differs from numpy's, not the
distribution: `train_transform` draws the same quantities in the same ranges.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from mmnet_jax import conventions

_BLUR_KERNEL = np.array([1, 4, 6, 4, 1], np.float32) / 16  # cv2.getGaussianKernel(5, 0)
_MEAN = tf.constant(conventions.IMAGENET_MEAN)
_STD = tf.constant(conventions.IMAGENET_STD)


def _f64(x):
  # Python floats straight to float64: tf.cast would round them through float32 first.
  return tf.cast(x if tf.is_tensor(x) else np.asarray(x, np.float64), tf.float64)


def to_rgb(image):
  """float32 (h, w, 3): grayscale (h, w) or (h, w, 1) is repeated, RGBA loses alpha."""
  image = tf.convert_to_tensor(image)
  if image.shape.rank == 2:
    image = image[:, :, None]
  image = tf.cast(image, tf.float32)
  # Channels may be unknown in a graph: choose at run time.
  image = tf.cond(tf.shape(image)[2] == 1, lambda: tf.tile(image, [1, 1, 3]),
                  lambda: image[:, :, :3])
  return tf.ensure_shape(image, [None, None, 3])


def _linear_taps(src, dst, scale):
  """cv2 INTER_LINEAR source taps along one axis: (i0, i1, w1), src pos = (d+.5)*scale-.5."""
  pos = (_f64(tf.range(dst)) + 0.5) * scale - 0.5
  pos = tf.clip_by_value(pos, 0.0, _f64(src - 1))
  i0 = tf.cast(tf.floor(pos), tf.int32)
  i1 = tf.minimum(i0 + 1, src - 1)
  return i0, i1, tf.cast(pos - _f64(i0), tf.float32)


def resize_bilinear(image, out_h, out_w, scale_y=None, scale_x=None):
  """cv2.resize INTER_LINEAR of a (h, w, C) image, float32; scale = source pixels per output
  pixel (default h / out_h, as cv2 with a dsize)."""
  image = tf.cast(image, tf.float32)
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  sy = _f64(h) / _f64(out_h) if scale_y is None else _f64(scale_y)
  sx = _f64(w) / _f64(out_w) if scale_x is None else _f64(scale_x)
  y0, y1, wy = _linear_taps(h, out_h, sy)
  x0, x1, wx = _linear_taps(w, out_w, sx)
  wy = wy[:, None, None]
  rows = tf.gather(image, y0) * (1 - wy) + tf.gather(image, y1) * wy  # (out_h, w, C)
  wx = wx[None, :, None]
  return tf.gather(rows, x0, axis=1) * (1 - wx) + tf.gather(rows, x1, axis=1) * wx


def resize_nearest(label, out_h, out_w, scale_y=None, scale_x=None):
  """cv2.resize INTER_NEAREST: source index = min(floor(d * scale), size - 1)."""
  label = tf.convert_to_tensor(label)
  h, w = tf.shape(label)[0], tf.shape(label)[1]
  sy = _f64(h) / _f64(out_h) if scale_y is None else _f64(scale_y)
  sx = _f64(w) / _f64(out_w) if scale_x is None else _f64(scale_x)
  ys = tf.minimum(tf.cast(tf.floor(_f64(tf.range(out_h)) * sy), tf.int32), h - 1)
  xs = tf.minimum(tf.cast(tf.floor(_f64(tf.range(out_w)) * sx), tf.int32), w - 1)
  return tf.gather(tf.gather(label, ys), xs, axis=1)


def rotation_matrix(center_x, center_y, angle_deg):
  """cv2.getRotationMatrix2D(center, angle, 1): (2, 3) float64, positive = anticlockwise."""
  rad = _f64(angle_deg) * (math.pi / 180)  # = math.radians
  a, b = tf.cos(rad), tf.sin(rad)
  cx, cy = _f64(center_x), _f64(center_y)
  return tf.stack([tf.stack([a, b, (1 - a) * cx - b * cy]),
                   tf.stack([-b, a, b * cx + (1 - a) * cy])])


def _paste(inner, top, left, out_h, out_w, fill):
  """`inner` (h, w, C) at (top, left) on an (out_h, out_w, C) canvas of `fill` (per channel)."""
  h, w = tf.shape(inner)[0], tf.shape(inner)[1]
  pads = [[top, out_h - h - top], [left, out_w - w - left]]
  # tf.pad fills with one scalar; a mask then selects the per-channel fill exactly.
  inside = tf.pad(tf.ones([h, w], tf.bool), pads)
  canvas = tf.broadcast_to(tf.cast(fill, inner.dtype), tf.stack([out_h, out_w, tf.shape(inner)[2]]))
  return tf.where(inside[:, :, None], tf.pad(inner, pads + [[0, 0]]), canvas)


def _projective_transform(matrix):
  """ImageProjectiveTransform's (1, 8) float32 output-to-input map of the forward affine
  `matrix` (the inverse is taken in float64, as augment.py)."""
  full = tf.concat([_f64(matrix), tf.constant([[0, 0, 1]], tf.float64)], axis=0)
  inv = tf.linalg.inv(full)
  return tf.cast(tf.concat([inv[0], inv[1], tf.zeros([2], tf.float64)], 0)[None], tf.float32)


def _warp(image, matrix, fill, interpolation):
  """(h, w, C) warped by one fused C++ op per channel (each channel has its own fill)."""
  shape = tf.shape(image)[:2]
  transform = _projective_transform(matrix)
  fill = np.asarray(fill, np.float32).reshape(-1)
  channels = [tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None, :, :, c:c + 1], transforms=transform, output_shape=shape,
      fill_value=float(fill[c % fill.size]), interpolation=interpolation,
      fill_mode='CONSTANT')[0] for c in range(image.shape[2])]
  return tf.concat(channels, axis=2) if len(channels) > 1 else channels[0]


def warp_affine_bilinear(image, matrix, fill):
  """cv2.warpAffine INTER_LINEAR, BORDER_CONSTANT=fill (per channel), same output size;
  (h, w, 3) float32. Source coordinates are float32 here (ImageProjectiveTransformV3; float64
  in augment.py, fixed point in OpenCV): measured differences in tests/data/test_tf_augment.py."""
  image = tf.ensure_shape(tf.cast(image, tf.float32), [None, None, 3])
  return _warp(image, matrix, fill, 'BILINEAR')


def warp_affine_nearest(label, matrix, fill):
  """cv2.warpAffine INTER_NEAREST, BORDER_CONSTANT=fill, same output size; (h, w) labels.
  Rounds source coordinates half away from zero (augment.py: floor(x + 0.5)): they differ only
  on .5 ties, which float32 coordinates (see warp_affine_bilinear) make slightly wider."""
  label = tf.convert_to_tensor(label)
  return _warp(label[:, :, None], matrix, [fill], 'NEAREST')[:, :, 0]


def _blur_taps(n, reflect):
  """Source indices of the 5 taps along an axis of n: np.pad 'reflect' (= reflect-101) when
  `reflect`, else 'symmetric' (augment.py's choice when a side is <= 2), clamped for n = 1."""
  i = tf.range(n)[None, :] + tf.range(-2, 3)[:, None]  # (5, n)
  low = tf.where(reflect, -i, -i - 1)
  high = tf.where(reflect, 2 * (n - 1) - i, 2 * n - 1 - i)
  i = tf.where(i < 0, low, tf.where(i > n - 1, high, i))
  return tf.clip_by_value(i, 0, n - 1)


def _blur_sliced(image):
  """gaussian_blur5 for sides >= 3: reflect-101 padding and five shifted slices per axis, the
  same products summed in the same order as the gathers of `_blur_gathered` (exact), faster."""
  k = [tf.constant(v) for v in _BLUR_KERNEL]
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  padded = tf.pad(image, [[2, 2], [0, 0], [0, 0]], mode='REFLECT')
  rows = k[0] * padded[0:h]
  for j in range(1, 5):
    rows = rows + k[j] * padded[j:j + h]
  padded = tf.pad(rows, [[0, 0], [2, 2], [0, 0]], mode='REFLECT')
  out = k[0] * padded[:, 0:w]
  for j in range(1, 5):
    out = out + k[j] * padded[:, j:j + w]
  return out


def gaussian_blur5(image):
  """cv2.GaussianBlur(image, (5, 5), 0): separable [1,4,6,4,1]/16, border reflect-101."""
  image = tf.cast(image, tf.float32)
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  return tf.cond(tf.minimum(h, w) > 2, lambda: _blur_sliced(image),
                 lambda: _blur_gathered(image))


def _blur_gathered(image):
  """gaussian_blur5 by index gathers: any size (np.pad's modes for sides <= 2)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  reflect = tf.minimum(h, w) > 2
  k = [tf.constant(v) for v in _BLUR_KERNEL]
  ty = _blur_taps(h, reflect)
  # Summed left to right, as augment.py, for the same float32 rounding.
  rows = k[0] * tf.gather(image, ty[0])
  for j in range(1, 5):
    rows = rows + k[j] * tf.gather(image, ty[j])
  tx = _blur_taps(w, reflect)
  out = k[0] * tf.gather(rows, tx[0], axis=1)
  for j in range(1, 5):
    out = out + k[j] * tf.gather(rows, tx[j], axis=1)
  return out


def hflip(image, label):
  """Horizontal flip of an (h, w, C) image and its (h, w) label."""
  return tf.reverse(image, [1]), tf.reverse(label, [1])


def pad_to(image, label, size):
  """Pads to at least size x size: half before, rest after; image mean, label 255."""
  h, w = tf.shape(label)[0], tf.shape(label)[1]
  pad_h, pad_w = tf.maximum(size - h, 0), tf.maximum(size - w, 0)
  top, left = pad_h // 2, pad_w // 2
  image = _paste(tf.cast(image, tf.float32), top, left, h + pad_h, w + pad_w,
                 conventions.IMAGENET_MEAN)
  label = tf.pad(label, [[top, pad_h - top], [left, pad_w - left]],
                 constant_values=tf.cast(conventions.IGNORE_LABEL, label.dtype))
  return image, label


def _pad_normalised(image, label, size):
  """pad_to of a normalised image (its fill, the mean, is 0 once normalised)."""
  h, w = tf.shape(label)[0], tf.shape(label)[1]
  pad_h, pad_w = tf.maximum(size - h, 0), tf.maximum(size - w, 0)
  top, left = pad_h // 2, pad_w // 2
  image = tf.pad(image, [[top, pad_h - top], [left, pad_w - left], [0, 0]])
  label = tf.pad(label, [[top, pad_h - top], [left, pad_w - left]],
                 constant_values=tf.cast(conventions.IGNORE_LABEL, label.dtype))
  return image, label


def crop(image, label, top, left, size):
  """The size x size window at (top, left) of both."""
  return image[top:top + size, left:left + size], label[top:top + size, left:left + size]


def choose_crop(label, size, tops, lefts, min_keep: float = 0.85):
  """augment.random_crop's rule on its draws (tops[i], lefts[i]) of a padded label: the first
  draw keeping >= min_keep of the foreground (label == 1), else the last. Returns (top, left)."""
  fg = tf.cast(tf.equal(label, 1), tf.int64)
  # Integral image: each draw's foreground count from four corners.
  cum = tf.pad(tf.cumsum(tf.cumsum(fg, axis=0), axis=1), [[1, 0], [1, 0]])
  total = cum[-1, -1]
  corners = lambda y, x: tf.gather_nd(cum, tf.stack([y, x], axis=-1))
  tops, lefts = tf.cast(tops, tf.int32), tf.cast(lefts, tf.int32)
  kept = (corners(tops + size, lefts + size) - corners(tops, lefts + size)
          - corners(tops + size, lefts) + corners(tops, lefts))
  ok = _f64(kept) >= min_keep * _f64(total)
  n = tf.shape(tops)[0]
  first = tf.where(tf.reduce_any(ok), tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32),
                   n - 1)
  return tops[first], lefts[first]


def normalize(image):
  """float32 (x - mean) / std on 0-255, as conventions.normalize_image."""
  return (tf.cast(image, tf.float32) - _MEAN) / _STD


def scaled_size(h, w, scale):
  """RandScale's output size: max(rint(side * scale), 1) for each side."""
  out = tf.math.rint(_f64(tf.stack([h, w])) * _f64(scale))
  return tf.maximum(tf.cast(out, tf.int32), 1)


def apply_train(image, label, params, *, crop_size: int):
  """augment.train_transform with its draws given (`params`, as from `train_params`):
  scale; rotate, blur, flip (bools); angle (degrees); tops, lefts (int (n,): the crop's
  draws in order, each in [0, padded side - crop_size]; see `choose_crop`).

  Returns float32 (crop, crop, 3) normalised image and uint8 (crop, crop) label.
  """
  image = to_rgb(image)
  label = tf.cast(label, tf.uint8)
  h, w = tf.shape(label)[0], tf.shape(label)[1]
  scale = _f64(params['scale'])
  size = scaled_size(h, w, scale)
  out_h, out_w = size[0], size[1]
  image = resize_bilinear(image, out_h, out_w, 1 / scale, 1 / scale)
  label = resize_nearest(label, out_h, out_w, 1 / scale, 1 / scale)

  def rotate():
    matrix = rotation_matrix(_f64(out_w) / 2, _f64(out_h) / 2, params['angle'])
    return (warp_affine_bilinear(image, matrix, conventions.IMAGENET_MEAN),
            warp_affine_nearest(label, matrix, conventions.IGNORE_LABEL))
  image, label = tf.cond(params['rotate'], rotate, lambda: (image, label))
  image = tf.cond(params['blur'], lambda: gaussian_blur5(image), lambda: image)
  image, label = tf.cond(params['flip'], lambda: hflip(image, label), lambda: (image, label))
  # Normalised before the mean padding, which then is exactly 0: one tf.pad instead of a
  # per-channel paste, the same numbers as pad_to then normalize.
  image, label = _pad_normalised(normalize(image), label, crop_size)
  top, left = choose_crop(label, crop_size, params['tops'], params['lefts'])
  image, label = crop(image, label, top, left, crop_size)
  return (tf.ensure_shape(image, [crop_size, crop_size, 3]),
          tf.ensure_shape(label, [crop_size, crop_size]))


def train_params(seed, h, w, *, crop_size: int, scale_min: float, scale_max: float,
                 rotate_deg: float = 10.0, max_redraws: int = 31):
  """One pair's draws for `apply_train`, stateless from `seed` (shape (2,) int), with
  augment.train_transform's distributions (p 0.5 each flag, 1 + max_redraws crop draws)."""
  seeds = tf.random.experimental.stateless_split(seed, 3)
  u = tf.random.stateless_uniform([5], seeds[0], dtype=tf.float64)
  scale = scale_min + (scale_max - scale_min) * u[0]
  size = scaled_size(h, w, scale)
  # The crop's ranges depend on the padded size, known once the scale is drawn.
  padded = tf.maximum(size, crop_size)
  n = max_redraws + 1
  tops = tf.random.stateless_uniform([n], seeds[1], 0, padded[0] - crop_size + 1, tf.int32)
  lefts = tf.random.stateless_uniform([n], seeds[2], 0, padded[1] - crop_size + 1, tf.int32)
  return {'scale': scale, 'rotate': u[1] < 0.5, 'angle': -rotate_deg + 2 * rotate_deg * u[2],
          'blur': u[3] < 0.5, 'flip': u[4] < 0.5, 'tops': tops, 'lefts': lefts}


def train_transform(image, label, seed, *, crop_size: int, scale_min: float, scale_max: float,
                    rotate_deg: float = 10.0):
  """PFENet training augmentation of one (image, binarised label) pair, drawn from `seed`."""
  params = train_params(seed, tf.shape(label)[0], tf.shape(label)[1], crop_size=crop_size,
                        scale_min=scale_min, scale_max=scale_max, rotate_deg=rotate_deg)
  return apply_train(image, label, params, crop_size=crop_size)


def stretch(image, label, size: int):
  """augment.stretch (HSNet): both stretched to size x size, the image bilinearly (normalised),
  the label by nearest neighbour."""
  image = to_rgb(image)
  label = tf.cast(label, tf.uint8)
  image = tf.ensure_shape(normalize(resize_bilinear(image, size, size)), [size, size, 3])
  return image, tf.ensure_shape(resize_nearest(label, size, size), [size, size])


def eval_size(h, w, size: int, mode: str = 'resize'):
  """augment.eval_size in graph ops: the resized (h, w) before the top-left paste."""
  if mode not in ('resize', 'test_resize'):
    raise ValueError(f'eval resize mode={mode!r}; expected resize or test_resize')
  longer = tf.maximum(h, w)
  ratio = size / _f64(longer)
  # int() of a positive float truncates: floor.
  new_h = tf.where(h >= w, size, tf.cast(tf.floor(_f64(h) * ratio), tf.int32)) // 8 * 8
  new_w = tf.where(h >= w, tf.cast(tf.floor(_f64(w) * ratio), tf.int32), size) // 8 * 8
  if mode == 'test_resize':
    keep = longer <= size
    new_h, new_w = tf.where(keep, h, new_h), tf.where(keep, w, new_w)
  return new_h, new_w


def eval_resize(image, label, size: int, fill: str = 'black', mode: str = 'resize'):
  """augment.eval_resize (PFENet Resize / test_Resize) in graph ops: (image, label, original),
  the image normalised on a black (or mean) size x size canvas, the label padded with 255,
  the original label top-left on a max(h, w) square of 255."""
  if fill not in ('black', 'mean'):
    raise ValueError(f"eval fill must be 'black' or 'mean', got {fill!r}")
  image = to_rgb(image)
  label = tf.cast(label, tf.uint8)
  h, w = tf.shape(label)[0], tf.shape(label)[1]
  new_h, new_w = eval_size(h, w, size, mode)
  tf.debugging.assert_positive(tf.minimum(new_h, new_w),
                               message=f'image too elongated to resize to {size}')
  canvas_fill = np.zeros(3, np.float32) if fill == 'black' else conventions.IMAGENET_MEAN
  canvas = _paste(resize_bilinear(image, new_h, new_w), 0, 0, size, size, canvas_fill)
  ignore = tf.constant(conventions.IGNORE_LABEL, tf.uint8)
  out_label = tf.pad(resize_nearest(label, new_h, new_w),
                     [[0, size - new_h], [0, size - new_w]], constant_values=ignore)
  side = tf.maximum(h, w)
  original = tf.pad(label, [[0, side - h], [0, side - w]], constant_values=ignore)
  return (tf.ensure_shape(normalize(canvas), [size, size, 3]),
          tf.ensure_shape(out_label, [size, size]), original)
