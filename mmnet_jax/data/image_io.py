"""Decoded images as uint8 RGB, with 16-bit grayscale scaled to 0..255 instead of clipped.

Pillow opens a 16-bit grayscale PNG (or TIFF) as mode 'I;16'. Its `convert('RGB')` clips every
value above 255 (32768, mid-grey, becomes 255) and TFDS's numpy decoder casts it to uint8
(32768 becomes 0). 16-bit colour PNGs Pillow already opens as 8-bit RGB(A) (the high byte of
each sample), so only the grayscale modes need scaling here.
"""

from __future__ import annotations

import io

import numpy as np

# Pillow's 16-bit grayscale modes (native, little and big endian).
SIXTEEN_BIT_MODES = frozenset(['I;16', 'I;16L', 'I;16B', 'I;16N'])
_MAX16 = 65535


def is_sixteen_bit(im) -> bool:
  """Whether the PIL image `im` holds 16-bit grayscale samples."""
  return im.mode in SIXTEEN_BIT_MODES


def rgb8(im) -> np.ndarray:
  """uint8 (h, w, 3) RGB of the PIL image `im`; 16-bit samples v become round(v * 255 / 65535)."""
  if not is_sixteen_bit(im):
    return np.asarray(im.convert('RGB'), np.uint8)
  values = np.asarray(im).astype(np.uint32)
  gray = ((values * 255 + _MAX16 // 2) // _MAX16).astype(np.uint8)
  return np.repeat(gray[..., None], 3, axis=-1)


def builder_image(path: str, im):
  """What a dataset builder stores for the image file `path`, opened as `im`.

  The file's bytes as they are (the path), except for a 16-bit grayscale image: a PNG of its
  `rgb8`, since the stored bytes are later decoded to uint8 without scaling.
  """
  if not is_sixteen_bit(im):
    return path
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(rgb8(im)).save(buffer, format='PNG')
  return buffer.getvalue()
