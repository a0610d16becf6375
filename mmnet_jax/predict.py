"""Few-shot prediction on your own images: `python main.py --mode=predict ...`.

Each image goes through the input transform of config.eval.protocol and is mapped back as
evaluation scores a query (`evaluate.score_batch`), so a prediction here equals the one
evaluation would score for the same episode:
* 'pfenet', 'bam': the pad-resize (`augment.eval_resize`, PFENet's Resize: the longer side to
  config.eval.size, pasted top-left on a square canvas); the logit difference is upsampled
  (align corners) to a square of side max(h, w) and cropped to the query's (h, w)
  (`evaluate.canvas_prediction`; with eval.resize='test_resize' a small query is cropped from
  the canvas unscaled).
* 'hsnet': image and masks stretched to the protocol's square (`stretch_batches.stretch_pair`); the
  logit difference is upsampled (align corners) to (h, w).

Masks are image files: nonzero pixels are the foreground, or, with `mask_class=N`, pixels equal
to N (e.g. one class of a VOC palette PNG; 255 stays "ignore", which the model, like
evaluation, treats as background). Any number of supports K >= 1 works; a checkpoint trained
for config.shots supports is most accurate with that many, so another K only logs a warning.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from mmnet_jax import conventions
from mmnet_jax import storage
from mmnet_jax.data import augment
from mmnet_jax.data import image_io
from mmnet_jax.data import stretch_batches
from mmnet_jax.models import registry

OVERLAY_SUFFIX = '_overlay'
OVERLAY_COLOR = np.array([255, 40, 40], np.float32)   # red foreground tint
OVERLAY_ALPHA = 0.5


def _check_file(path: str, what: str) -> None:
  if storage.isdir(path):
    raise IsADirectoryError(f'{what} {path!r} is a directory; expected an image file')
  if not storage.isfile(path):
    raise FileNotFoundError(f'{what} {path!r}: no such file')


def _image_source(path: str):
  """What Image.open takes: the path, or a gs:// object's bytes (Pillow reads no URLs)."""
  return io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else path


def _save_image(array: np.ndarray, path: str) -> None:
  """Writes `array` as the image file `path` (format from its extension); on gs:// one upload."""
  from PIL import Image
  image = Image.fromarray(array)
  if not storage.is_remote(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
    return
  buffer = io.BytesIO()
  image.save(buffer, format=Image.registered_extensions()[os.path.splitext(path)[1].lower()])
  storage.write_bytes(path, buffer.getvalue())


def load_image(path: str, what: str = 'image') -> np.ndarray:
  """uint8 (h, w, 3) RGB from an image file, 16-bit grayscale scaled (`image_io.rgb8`).

  Clear errors for a missing or unreadable file.
  """
  from PIL import Image, UnidentifiedImageError
  _check_file(path, what)
  try:
    with Image.open(_image_source(path)) as im:
      return image_io.rgb8(im)
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f'{what} {path!r} is not a readable image file: {e}') from e


def load_mask(path: str, mask_class: int | None = None, what: str = 'mask') -> np.ndarray:
  """uint8 (h, w) label: 1 foreground, 0 background (255 ignore with `mask_class`).

  Without `mask_class`, every nonzero pixel is foreground (a binary PNG, 0/1 or 0/255; colour
  masks count a pixel whose channels are not all zero). With it, a palette or grayscale PNG is
  read as class ids and pixels equal to `mask_class` are the foreground.
  """
  from PIL import Image, UnidentifiedImageError
  _check_file(path, what)
  try:
    with Image.open(_image_source(path)) as im:
      if mask_class is None:
        values = np.asarray(im.convert('RGB') if im.mode not in ('1', 'L', 'P', 'I', 'I;16')
                            else im)
      else:
        if im.mode not in ('1', 'L', 'P', 'I', 'I;16'):
          raise ValueError(f'{what} {path!r}: --mask_class needs a palette or grayscale PNG of '
                           f'class ids, got mode {im.mode}')
        values = np.asarray(im)
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f'{what} {path!r} is not a readable image file: {e}') from e
  if mask_class is None:
    fg = values.any(axis=-1) if values.ndim == 3 else values != 0
    return fg.astype(np.uint8)
  label = (values == mask_class).astype(np.uint8)
  label[values == conventions.IGNORE_LABEL] = conventions.IGNORE_LABEL
  return label


def check_support(image: np.ndarray, mask: np.ndarray, name: str) -> None:
  """Raises ValueError when a support's mask size differs from its image or has no foreground."""
  if mask.shape != image.shape[:2]:
    raise ValueError(f'{name}: mask is {mask.shape[0]}x{mask.shape[1]} (h x w) but its image is '
                     f'{image.shape[0]}x{image.shape[1]}; they must be the same size')
  if not np.any(mask == 1):
    raise ValueError(f'{name}: the mask has no foreground pixels (an empty support mask '
                     'gives the model nothing to match)')


def prepare_inputs(config: ml_collections.ConfigDict, support_images: Sequence[np.ndarray],
                   support_masks: Sequence[np.ndarray], query_image: np.ndarray) -> dict:
  """The model batch of one episode (B = 1) after the evaluation pad-resize."""
  if len(support_images) != len(support_masks):
    raise ValueError(f'{len(support_images)} support images but {len(support_masks)} masks')
  if not support_images:
    raise ValueError('at least one support (image and mask) is needed')
  transform = _input_transform(config)
  imgs, labels = [], []
  for k, (image, mask) in enumerate(zip(support_images, support_masks)):
    image, mask = np.asarray(image), np.asarray(mask, np.uint8)
    check_support(image, mask, f'support {k}')
    img, lbl = transform(image, mask)
    imgs.append(img)
    labels.append(lbl)
  query_image = np.asarray(query_image)
  query_img, _ = transform(query_image, np.zeros(query_image.shape[:2], np.uint8))
  return {'query_img': query_img[None],                              # (1, H, W, 3)
          'support_imgs': np.stack(imgs)[None],                      # (1, K, H, W, 3)
          'support_labels': np.stack(labels).astype(np.int32)[None]}  # (1, K, H, W)


def _input_transform(config: ml_collections.ConfigDict):
  """(image, mask) -> (model image, model label) of config.eval.protocol's input transform."""
  from mmnet_jax import protocols
  resolved = protocols.resolve(config)
  if resolved.scoring != 'original':
    return lambda image, mask: stretch_batches.stretch_pair(image, mask, resolved.input_size)
  size, fill = resolved.input_size, resolved.pad_fill or 'black'
  return lambda image, mask: augment.eval_resize(image, mask, size, fill, resolved.resize)[:2]


def query_prediction(config: ml_collections.ConfigDict, logit_diff: np.ndarray, h: int,
                     w: int) -> np.ndarray:
  """The uint8 (h, w) foreground mask of a query from the model's logit difference, mapped back
  as config.eval.protocol's scoring maps it (module docstring)."""
  from mmnet_jax import evaluate
  from mmnet_jax import protocols
  resolved = protocols.resolve(config)
  if resolved.scoring != 'original':
    return evaluate.predict_at_hw(logit_diff, h, w)
  crop = augment.eval_scored_by_crop(h, w, resolved.input_size, resolved.resize)
  return evaluate.canvas_prediction(logit_diff, max(h, w), crop)[:h, :w]


_STEPS = {}


def _eval_step(config: ml_collections.ConfigDict, model):
  """The evaluation step (jit) for `model`, cached per model config."""
  from mmnet_jax import evaluate
  key = repr(sorted(config.model.to_dict().items()))
  if key not in _STEPS:
    _STEPS[key] = jax.jit(evaluate.make_eval_step(model))
  return _STEPS[key]


def predict(config: ml_collections.ConfigDict, variables: dict,
            support_images: Sequence[np.ndarray], support_masks: Sequence[np.ndarray],
            query_image: np.ndarray, model=None) -> np.ndarray:
  """The query's foreground mask, uint8 (h, w) in {0, 1}, at the query's original size.

  Args:
    config: the run's config (config.model builds the model; config.eval.size and
      config.eval.pad_fill set the pad-resize).
    variables: {'params', 'batch_stats'} (e.g. from `restore`).
    support_images: K uint8 (h_k, w_k, 3) RGB images (grayscale (h, w) is accepted).
    support_masks: K (h_k, w_k) labels: 1 foreground, 0 background, 255 ignore.
    query_image: uint8 (h, w, 3) RGB.
    model: the built model (default: `registry.build(config)`).
  """
  if model is None:
    model = registry.build(config)
  if len(support_images) != config.shots:
    logging.warning('predicting with %d supports; the model was trained with config.shots=%d',
                    len(support_images), config.shots)
  batch = prepare_inputs(config, support_images, support_masks, query_image)
  diff = np.asarray(jax.device_get(_eval_step(config, model)(variables, batch)))[0]  # (H, W)
  h, w = np.asarray(query_image).shape[:2]
  return query_prediction(config, diff, h, w)


def restore(config: ml_collections.ConfigDict, workdir: str):
  """(variables, model, step, which) of the checkpoint evaluation would use (best, else latest)."""
  from mmnet_jax import evaluate
  model = registry.build(config)
  variables, step, which = evaluate.restore_for_eval(config, workdir, model)
  return variables, model, step, which


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
  """uint8 (h, w, 3): `image` tinted red where `mask` is foreground, with a white outline."""
  image = augment.to_rgb(image)
  fg = np.asarray(mask) == 1
  out = image.copy()
  out[fg] = (1 - alpha) * image[fg] + alpha * OVERLAY_COLOR
  # Outline: foreground pixels with a background 4-neighbour.
  pad = np.pad(fg, 1, mode='edge')
  inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
  out[fg & ~inner] = 255.0
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def overlay_path(output: str) -> str:
  """OUT.png -> OUT_overlay.png (beside the mask)."""
  root, ext = os.path.splitext(output)
  return root + OVERLAY_SUFFIX + (ext or '.png')


def parse_support(spec: str) -> tuple[str, str]:
  """'IMG:MASK' -> (IMG, MASK). Either path may contain ':': of the possible splits the one
  naming two existing files wins, else the last ':' splits. The ':' of a gs:// never splits."""
  splits = [(spec[:i], spec[i + 1:]) for i, ch in enumerate(spec)
            if ch == ':' and spec[i - 2:i + 3] != storage.REMOTE_PREFIX]
  splits = [(image, mask) for image, mask in splits if image and mask]
  if not splits:
    raise ValueError(f'--support {spec!r}: expected IMAGE:MASK (two file paths joined by ":")')
  for image, mask in splits:
    if storage.isfile(image) and storage.isfile(mask):
      return image, mask
  return splits[-1]


def check_output(output: str) -> None:
  """Raises ValueError unless `output` names an image file Pillow can write (by extension)."""
  from PIL import Image
  ext = os.path.splitext(output)[1].lower()
  if ext not in Image.registered_extensions():
    raise ValueError(f'--output {output!r}: expected an image file name such as mask.png '
                     f'(got extension {ext or "none"!r})')
  if storage.isdir(output):
    raise IsADirectoryError(f'--output {output!r} is a directory; expected an image file name')


def predict_files(config: ml_collections.ConfigDict, workdir: str,
                  supports: Sequence[tuple[str, str] | str], query: str, output: str,
                  mask_class: int | None = None, variables: dict | None = None) -> dict:
  """Predicts the query file's mask and writes OUT (mask) and OUT_overlay (query + mask).

  Args:
    config: the run's config.
    workdir: the training run whose checkpoint is used (ignored when `variables` is given).
    supports: (image path, mask path) pairs or 'IMG:MASK' strings.
    query: the query image path.
    output: the mask PNG to write (0 background, 255 foreground, the query's size); the
      overlay goes beside it as OUT_overlay.png.
    mask_class: class id of the foreground in the support masks (default: nonzero).
    variables: model variables to use instead of restoring `workdir`'s checkpoint.

  Returns:
    {'mask': path, 'overlay': path, 'foreground_fraction': float, 'shots': K, 'step': int|None}
  """
  if not output:
    raise ValueError('--output is required: the mask PNG to write')
  check_output(output)   # before any work: a bad name must not cost a model restore
  pairs = [parse_support(s) if isinstance(s, str) else tuple(s) for s in supports]
  if not pairs:
    raise ValueError('give at least one --support IMAGE:MASK')
  for k, (image_path, mask_path) in enumerate(pairs):   # every path first, then the decoding
    _check_file(image_path, f'support {k} image')
    _check_file(mask_path, f'support {k} mask')
  _check_file(query, 'query image')
  images, masks = [], []
  for k, (image_path, mask_path) in enumerate(pairs):
    image = load_image(image_path, f'support {k} image')
    mask = load_mask(mask_path, mask_class, f'support {k} mask')
    check_support(image, mask, f'support {k} ({image_path}, {mask_path})')
    images.append(image)
    masks.append(mask)
  query_image = load_image(query, 'query image')
  step, model = None, None
  if variables is None:
    variables, model, step, which = restore(config, workdir)
    logging.info('predicting with the %s checkpoint of %s at step %d', which, workdir, step)
  mask = predict(config, variables, images, masks, query_image, model=model)
  _save_image(mask * np.uint8(255), output)
  over = overlay_path(output)
  _save_image(overlay(query_image, mask), over)
  return {'mask': output, 'overlay': over, 'foreground_fraction': float(mask.mean()),
          'shots': len(pairs), 'step': step}
