"""The conventions every module shares, defined once: the ignore label and the image normalisation.

Labels: 0 background, 1 the episode's class (after binarising), IGNORE_LABEL for pixels that
are neither scored nor trained on (object borders, crowds, padding). Images: RGB on 0-255,
normalised with the ImageNet mean and std scaled to 0-255 (PFENet's and MM-Net's values).
"""

from __future__ import annotations

import numpy as np

IGNORE_LABEL = 255
IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], np.float32)   # ImageNet mean * 255
IMAGENET_STD = np.array([58.395, 57.12, 57.375], np.float32)      # ImageNet std * 255


def normalize_image(image) -> np.ndarray:
  """uint8/float RGB (..., 3) on 0-255 -> float32 (x - mean) / std."""
  return (np.asarray(image, np.float32) - IMAGENET_MEAN) / IMAGENET_STD


def denormalize_image(image) -> np.ndarray:
  """Inverse of `normalize_image`: float32 on 0-255."""
  return np.asarray(image, np.float32) * IMAGENET_STD + IMAGENET_MEAN
