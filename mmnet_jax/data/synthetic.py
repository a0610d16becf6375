"""Procedural synthetic few-shot segmentation images (pure numpy, seeded).

The embedded default benchmark: 40 classes in 4 folds of 10. A class is the pair (shape family,
texture type), 8 families x 5 textures, with class-specific shape parameters and texture
frequency; which pair gets which class id is a seeded permutation. Colour is NOT a class cue:
both texture colours of every object are drawn from the pixels of the image's own background
(then jittered), so a colour-histogram model learns little that transfers from a support to a
query. Backgrounds are crops of photos and textures bundled inside the scikit-image wheel mixed
with fractal noise; 0-5 clutter shapes (flat, gradient or concentric-ring fill, shapes that are
no class) sit on the background and are labelled 0.

Every image holds 1-4 class objects. Object 0 is the image's primary class, which cycles through
all classes (a seeded permutation per block of 40 images), so every class appears in every split
of at least 40 images. It is drawn last, so it is never occluded. Other objects are random
classes; every object is labelled with its class id (the episode rules decide what counts as
background). Optional 255 band on the boundaries of class objects (VOC-like).

Randomness: class definitions come from `np.random.default_rng([seed, 0, class_index])`, image
`index` of split s from `np.random.default_rng([seed, 1 + s, index])` (train s=0, val s=1), so
the splits draw from disjoint streams and any image can be rendered alone.
"""

import dataclasses
import functools

import numpy as np
import scipy.ndimage as ndi

NUM_CLASSES = 40
SPLITS = ('train', 'val')
SHAPE_FAMILIES = ('star', 'polygon', 'superellipse', 'ring', 'crescent', 'asterisk', 'fourier',
                  'gear')
TEXTURES = ('stripes', 'checker', 'dots', 'hatching', 'blobs')
# Bundled in the scikit-image wheel (no fetch); see skimage/data/.
BACKGROUND_IMAGES = ('astronaut', 'coffee', 'chelsea', 'rocket', 'hubble_deep_field', 'camera',
                     'brick', 'gravel', 'grass', 'coins', 'moon', 'page', 'text',
                     'stereo_motorcycle', 'retina', 'clock')
_OBJECT_COUNT_PROBS = (0.4, 0.3, 0.2, 0.1)  # 1..4 class objects per image


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Knobs of the generator.

  Attributes:
    seed: benchmark seed (class definitions and every image).
    num_train: images in the 'train' split.
    num_val: images in the 'val' split.
    min_size: smallest image side in pixels (height and width drawn independently).
    max_size: largest image side in pixels (inclusive).
    border_band: half-width in pixels of the 255 band on each side of class-object boundaries;
      0 disables it.
    max_clutter: at most this many clutter shapes (uniform 0..max_clutter).
  """
  seed: int = 0
  num_train: int = 3000
  num_val: int = 1000
  min_size: int = 128
  max_size: int = 192
  border_band: int = 2
  max_clutter: int = 5

  def __post_init__(self):
    if not 32 <= self.min_size <= self.max_size:
      raise ValueError(f'SyntheticConfig: need 32 <= min_size <= max_size, got '
                       f'min_size={self.min_size}, max_size={self.max_size}')
    if self.border_band < 0 or self.max_clutter < 0:
      raise ValueError('SyntheticConfig: border_band and max_clutter must be >= 0, got '
                       f'{self.border_band}, {self.max_clutter}')
    if self.num_train < 0 or self.num_val < 0:
      raise ValueError(f'SyntheticConfig: num_train/num_val must be >= 0, got '
                       f'{self.num_train}, {self.num_val}')

  def num_examples(self, split):
    """Number of images in `split`."""
    return {'train': self.num_train, 'val': self.num_val}[_check_split(split)]


@dataclasses.dataclass(frozen=True)
class ClassSpec:
  """One class: a shape family with parameters and a texture with a frequency."""
  class_id: int
  family: str
  shape_params: tuple
  texture: str
  frequency: float       # texture cycles per object radius
  orientation: float     # texture angle in the object frame (radians)
  texture_param: float   # dot radius / line half-width (fraction of a period)


def _check_split(split):
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  return split


@functools.lru_cache(maxsize=8)
def class_specs(seed):
  """The 40 class definitions of benchmark `seed`, index 0 = class id 1."""
  pairs = [(f, t) for f in range(len(SHAPE_FAMILIES)) for t in range(len(TEXTURES))]
  order = np.random.default_rng([seed, 0, 999]).permutation(len(pairs))
  specs = []
  for c in range(NUM_CLASSES):
    rng = np.random.default_rng([seed, 0, c])
    fam, tex = pairs[order[c]]
    family = SHAPE_FAMILIES[fam]
    if family == 'star':
      params = (int(rng.integers(5, 9)), float(rng.uniform(0.35, 0.55)))
    elif family == 'polygon':
      params = (int(rng.integers(3, 8)),)
    elif family == 'superellipse':
      params = (float(rng.choice([rng.uniform(0.6, 0.8), rng.uniform(2.8, 5.0)])),)
    elif family == 'ring':
      params = (float(rng.uniform(0.45, 0.65)),)
    elif family == 'crescent':
      params = (float(rng.uniform(0.35, 0.6)), float(rng.uniform(0.7, 0.9)))
    elif family == 'asterisk':
      params = (int(rng.integers(3, 7)), float(rng.uniform(0.22, 0.38)))
    elif family == 'fourier':
      amps = rng.uniform(0.04, 0.14, size=4)
      phases = rng.uniform(0, 2 * np.pi, size=4)
      params = tuple(float(v) for v in np.concatenate([amps, phases]))
    else:  # gear
      params = (int(rng.integers(6, 12)), float(rng.uniform(0.15, 0.3)))
    specs.append(ClassSpec(
        class_id=c + 1, family=family, shape_params=params, texture=TEXTURES[tex],
        frequency=float(rng.uniform(1.6, 3.6)), orientation=float(rng.uniform(0, np.pi)),
        texture_param=float(rng.uniform(0.2, 0.32))))
  return tuple(specs)


@functools.lru_cache(maxsize=1)
def _background_sources():
  """Bundled skimage photos/textures as float32 RGB in [0, 1], at most 512 px a side."""
  import skimage.data  # local import: only the generator needs it
  out = []
  for name in BACKGROUND_IMAGES:
    img = getattr(skimage.data, name)()
    img = np.asarray(img[0] if isinstance(img, tuple) else img)  # stereo: left view
    if img.ndim == 2:
      img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3].astype(np.float32)
    img /= 255.0 if img.max() > 1.5 else 1.0
    step = int(np.ceil(max(img.shape[:2]) / 512))
    out.append(np.ascontiguousarray(img[::step, ::step]))
  return tuple(out)


@functools.lru_cache(maxsize=1)
def _fractal_noise_bank(num=6, size=384):
  """Fixed colour fractal-noise tiles (1/f octaves), float32 in [0, 1]."""
  rng = np.random.default_rng(12345)
  tiles = []
  for _ in range(num):
    tile = np.zeros((size, size, 3), np.float32)
    for octave in range(1, 7):
      cells = 2 ** octave
      grid = rng.standard_normal((cells + 1, cells + 1, 3)).astype(np.float32)
      tile += _resample(grid, np.linspace(0, cells, size), np.linspace(0, cells, size)) / octave
    tile -= tile.min()
    tiles.append(tile / tile.max())
  return tuple(tiles)


def _resample(src, ys, xs):
  """Bilinear sample of src (H, W, C) at float rows ys (h,) and cols xs (w,)."""
  h_s, w_s = src.shape[:2]
  y0 = np.clip(np.floor(ys).astype(np.int64), 0, h_s - 2)
  x0 = np.clip(np.floor(xs).astype(np.int64), 0, w_s - 2)
  fy = (ys - y0).astype(np.float32)[:, None, None]
  fx = (xs - x0).astype(np.float32)[None, :, None]
  top = src[y0][:, x0] * (1 - fx) + src[y0][:, x0 + 1] * fx
  bot = src[y0 + 1][:, x0] * (1 - fx) + src[y0 + 1][:, x0 + 1] * fx
  return top * (1 - fy) + bot * fy


def _random_crop(rng, src, h, w):
  """A random scaled, flipped crop of src resampled to (h, w, 3)."""
  h_s, w_s = src.shape[:2]
  scale = rng.uniform(0.5, 1.5)
  scale = min(scale, (h_s - 2) / h, (w_s - 2) / w)  # source pixels per output pixel
  y0 = rng.uniform(0, h_s - 1 - scale * (h - 1))
  x0 = rng.uniform(0, w_s - 1 - scale * (w - 1))
  ys = y0 + scale * np.arange(h)
  xs = x0 + scale * np.arange(w)
  if rng.random() < 0.5:
    xs = xs[::-1]
  return _resample(src, ys, xs)


def _background(rng, h, w):
  """Photo/texture crop with channel shuffle and gains, mixed with fractal noise."""
  sources = _background_sources()
  photo = _random_crop(rng, sources[rng.integers(len(sources))], h, w)
  photo = photo[..., rng.permutation(3)] * rng.uniform(0.6, 1.3, size=3).astype(np.float32)
  bank = _fractal_noise_bank()
  noise = _random_crop(rng, bank[rng.integers(len(bank))], h, w)
  noise = noise * rng.uniform(0.3, 1.0, size=3).astype(np.float32)
  alpha = np.float32(rng.uniform(0.1, 0.6))
  return np.clip((1 - alpha) * photo + alpha * noise, 0, 1)


def _palette_colours(rng, image, num):
  """`num` colours picked from `image`'s own pixels, jittered, with luminance contrast."""
  h, w = image.shape[:2]
  cols = image[rng.integers(h, size=num), rng.integers(w, size=num)].astype(np.float32)
  cols = np.clip(cols * rng.uniform(0.8, 1.2, size=(num, 3)) +
                 rng.normal(0, 0.08, size=(num, 3)), 0, 1).astype(np.float32)
  if num >= 2:  # make the texture visible: push the second colour away in brightness
    diff = cols[1].mean() - cols[0].mean()
    if abs(diff) < 0.25:
      shift = 0.3 if (diff >= 0 and cols[0].mean() < 0.7) or cols[0].mean() < 0.3 else -0.3
      cols[1] = np.clip(cols[0] + shift + rng.normal(0, 0.05, 3), 0, 1)
  return cols.astype(np.float32)


def _object_frame(rng, cy, cx, radius, h, w, aspect, warp):
  """Object-frame coordinates (u, v) in units of the radius over the clipped bounding box."""
  ext = radius * 1.6 * max(aspect, 1 / aspect) ** 0.5
  y0, y1 = int(max(0, cy - ext)), int(min(h, cy + ext + 1))
  x0, x1 = int(max(0, cx - ext)), int(min(w, cx + ext + 1))
  if y1 <= y0 or x1 <= x0:
    return None
  dy = ((np.arange(y0, y1, dtype=np.float32) - cy) / radius)[:, None]
  dx = ((np.arange(x0, x1, dtype=np.float32) - cx) / radius)[None, :]
  theta = rng.uniform(0, 2 * np.pi)
  c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
  sa = np.float32(np.sqrt(aspect))
  u = (c * dx + s * dy) / sa
  v = (-s * dx + c * dy) * sa
  if warp > 0:  # smooth sinusoidal bend of the frame
    f, p1, p2 = rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
    u, v = (u + np.float32(warp) * np.sin(np.float32(f * np.pi) * v + np.float32(p1)),
            v + np.float32(warp) * np.sin(np.float32(f * np.pi) * u + np.float32(p2)))
  return (slice(y0, y1), slice(x0, x1)), u, v


def _shape_mask(family, params, u, v):
  """Boolean inside-test of a shape family in its frame (outer radius about 1)."""
  r = np.sqrt(u * u + v * v)
  ang = np.arctan2(v, u)
  if family == 'star':
    n, inner = params
    return r < inner + (1 - inner) * ((1 + np.cos(n * ang)) / 2) ** 2
  if family == 'polygon':
    (n,) = params
    sector = 2 * np.pi / n
    return r * np.cos(np.mod(ang, sector) - sector / 2) < np.cos(np.pi / n)
  if family == 'superellipse':
    (p,) = params
    return np.abs(u) ** p + np.abs(v) ** p < (1.0 if p < 1 else 0.85)  # astroids are thin
  if family == 'ring':
    (inner,) = params
    return (r < 1) & (r > inner)
  if family == 'crescent':
    offset, r2 = params
    return (r < 1) & ((u - offset) ** 2 + v * v > r2 * r2)
  if family == 'asterisk':
    n, half_width = params
    sector = 2 * np.pi / n
    delta = np.mod(ang + sector / 2, sector) - sector / 2  # angle to the nearest arm
    return (r < 1) & (r * np.abs(np.sin(delta)) < half_width * 0.7) & (np.cos(delta) > 0)
  if family == 'fourier':
    amps, phases = params[:4], params[4:]
    edge = 0.75 + sum(a * np.cos((k + 2) * ang + p) for k, (a, p) in enumerate(zip(amps, phases)))
    return r < edge
  if family == 'gear':
    n, tooth = params
    edge = 1 - tooth * (np.cos(n * ang) < 0)
    return (r < edge) & (r > 0.25)
  raise ValueError(f'unknown shape family {family!r}')


def _texture(spec, rng, u, v):
  """Binary texture (float32 0/1) of a class in the object frame, with instance jitter."""
  f = np.float32(2 * np.pi * spec.frequency * rng.uniform(0.85, 1.15))
  phi = spec.orientation + rng.normal(0, 0.15)
  c, s = np.float32(np.cos(phi)), np.float32(np.sin(phi))
  a = c * u + s * v
  b = -s * u + c * v
  a = a + np.float32(rng.uniform(0, 2 * np.pi) / f)  # random phase
  if spec.texture == 'stripes':
    t = np.sin(f * a) > 0
  elif spec.texture == 'checker':
    t = np.sin(f * a) * np.sin(f * b) > 0
  elif spec.texture == 'dots':
    pa = np.mod(a * f / (2 * np.pi), 1) - 0.5
    pb = np.mod(b * f / (2 * np.pi), 1) - 0.5
    t = pa * pa + pb * pb < spec.texture_param ** 2
  elif spec.texture == 'hatching':
    w = np.float32(np.sin(np.pi * spec.texture_param * 0.6))
    t = (np.abs(np.sin(0.5 * f * a)) < w) | (np.abs(np.sin(0.5 * f * (0.5 * a + 0.866 * b))) < w)
  elif spec.texture == 'blobs':  # band-limited noise: random waves at the class frequency
    acc = np.zeros_like(u)
    for alpha, beta in zip(rng.uniform(0, np.pi, 4), rng.uniform(0, 2 * np.pi, 4)):
      acc += np.cos(f * (np.float32(np.cos(alpha)) * u + np.float32(np.sin(alpha)) * v) +
                    np.float32(beta))
    t = acc > 0
  else:
    raise ValueError(f'unknown texture {spec.texture!r}')
  return t.astype(np.float32)


def _paint(image, region, mask, texture, colours, rng, u, v):
  """Composite a two-colour textured (and linearly shaded) object into image[region]."""
  g = rng.normal(0, 0.12, size=2).astype(np.float32)
  shade = (1 + g[0] * u + g[1] * v)[..., None]
  fill = colours[0] * (1 - texture[..., None]) + colours[1] * texture[..., None]
  patch = image[region]
  patch[mask] = np.clip(fill * shade, 0, 1)[mask]


def _clutter(rng, image):
  """One clutter shape (never a class shape): ellipse, bar, triangle or disk; plain fills."""
  h, w = image.shape[:2]
  radius = rng.uniform(0.05, 0.18) * min(h, w)
  frame = _object_frame(rng, rng.uniform(0, h), rng.uniform(0, w), radius, h, w,
                        aspect=rng.uniform(0.3, 3.0), warp=0.0)
  if frame is None:
    return
  region, u, v = frame
  kind = rng.integers(4)
  if kind == 0:
    mask = u * u + v * v < 1
  elif kind == 1:
    mask = (np.abs(u) < 1) & (np.abs(v) < 0.25)
  elif kind == 2:
    mask = (v > -0.5) & (v < 1 - 1.7 * np.abs(u))
  else:
    mask = u * u + v * v < 0.5
  fill_kind = rng.integers(3)
  if fill_kind == 0:
    texture = np.zeros_like(u)
  elif fill_kind == 1:
    texture = np.clip(0.5 + 0.5 * u, 0, 1)
  else:
    texture = (np.sin(np.float32(rng.uniform(6, 14)) * np.sqrt(u * u + v * v)) > 0).astype(
        np.float32)
  _paint(image, region, mask, texture, _palette_colours(rng, image, 2), rng, u, v)


def _border_band(label, object_mask, band):
  """Pixels within `band` px of a label change that touches a class object -> 255."""
  size = 2 * band + 1
  changes = ndi.maximum_filter(label, size=size) != ndi.minimum_filter(label, size=size)
  near_object = ndi.maximum_filter(object_mask.view(np.uint8), size=size).astype(bool)
  out = label.copy()
  out[changes & near_object] = 255
  return out


def primary_class(config, split, index):
  """Class id (1-based) of image `index`'s primary object: cycles through all 40 classes."""
  split_id = SPLITS.index(_check_split(split))
  block = np.random.default_rng([config.seed, 1 + split_id, 10**9 + index // NUM_CLASSES])
  return int(block.permutation(NUM_CLASSES)[index % NUM_CLASSES]) + 1


def render_example(config, split, index):
  """Renders image `index` of `split`.

  Args:
    config: a `SyntheticConfig`.
    split: 'train' or 'val'.
    index: 0 <= index < config.num_examples(split) (larger indices also render; the split size
      only bounds the dataset).

  Returns:
    image: uint8 (h, w, 3) RGB, h and w in [min_size, max_size].
    label: uint8 (h, w); 0 background, 1..40 class ids, 255 border band.
  """
  split_id = SPLITS.index(_check_split(split))
  if index < 0:
    raise ValueError(f'index must be >= 0, got {index}')
  rng = np.random.default_rng([config.seed, 1 + split_id, index])
  specs = class_specs(config.seed)
  h = int(rng.integers(config.min_size, config.max_size + 1))
  w = int(rng.integers(config.min_size, config.max_size + 1))
  image = _background(rng, h, w)
  for _ in range(rng.integers(config.max_clutter + 1)):
    _clutter(rng, image)

  num_objects = 1 + rng.choice(len(_OBJECT_COUNT_PROBS), p=_OBJECT_COUNT_PROBS)
  classes = [primary_class(config, split, index)]
  classes += [int(c) for c in rng.integers(1, NUM_CLASSES + 1, size=num_objects - 1)]
  label = np.zeros((h, w), np.uint8)
  object_mask = np.zeros((h, w), bool)
  side = min(h, w)
  centres = []
  for k in reversed(range(num_objects)):  # primary (k = 0) last, on top
    radius = side * (rng.uniform(0.2, 0.32) if k == 0 else rng.uniform(0.1, 0.24))
    for _ in range(8):  # rejection: keep objects apart so distractors stay visible
      margin = radius * (0.9 if k == 0 else 0.6)
      cy = rng.uniform(margin, h - margin)
      cx = rng.uniform(margin, w - margin)
      if all((cy - y) ** 2 + (cx - x) ** 2 > (0.9 * (radius + r)) ** 2 for y, x, r in centres):
        break
    centres.append((cy, cx, radius))
    spec = specs[classes[k] - 1]
    frame = _object_frame(rng, cy, cx, radius, h, w, aspect=np.exp(rng.uniform(-0.4, 0.4)),
                          warp=rng.uniform(0, 0.12))
    region, u, v = frame
    mask = _shape_mask(spec.family, spec.shape_params, u, v)
    _paint(image, region, mask, _texture(spec, rng, u, v), _palette_colours(rng, image, 2),
           rng, u, v)
    label[region][mask] = spec.class_id
    object_mask[region] |= mask

  image = image * 255 + rng.normal(0, 2.0, size=image.shape).astype(np.float32)
  image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  if config.border_band > 0:
    label = _border_band(label, object_mask, config.border_band)
  return image, label


def class_areas(label, num_classes=NUM_CLASSES):
  """{class id: pixel count} of the classes present in `label` (255 and 0 not counted)."""
  counts = np.bincount(label.ravel(), minlength=256)[1:num_classes + 1]
  return {int(c) + 1: int(n) for c, n in enumerate(counts) if n > 0}
