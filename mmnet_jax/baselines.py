"""Shortcut baselines for one few-shot episode (pure numpy).

A trained model must beat both clearly on the held-out classes; otherwise the data has a
shortcut (everything textured is foreground, or the class is given away by its colour).

Inputs are ONE episode as in an episode batch row (docs/architecture.md): images float32
(H, W, 3) normalised with `conventions.IMAGENET_MEAN` / `IMAGENET_STD` on 0-255 (pass
`normalized=False` for raw 0-255 RGB), labels with 0 background, 1 the episode's class and 255
ignore. Predictions are int32 (H, W) in {0, 1}.
"""

import numpy as np

from mmnet_jax import conventions


def all_foreground(query_img, support_imgs, support_labels):
  """Predicts every query pixel as foreground: its IoU is the foreground fraction."""
  del support_imgs, support_labels
  query_img = np.asarray(query_img)
  if query_img.ndim != 3:
    raise ValueError(f'query_img must be (H, W, 3), got shape {query_img.shape}')
  return np.ones(query_img.shape[:2], np.int32)


def _bin_index(images, bins, normalized):
  """Joint RGB bin of every pixel: (...,) int in [0, bins**3)."""
  rgb = conventions.denormalize_image(images) if normalized else np.asarray(images, np.float32)
  q = np.clip((rgb * (bins / 256.0)).astype(np.int64), 0, bins - 1)  # (..., 3)
  return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]


def histogram_matching(query_img, support_imgs, support_labels, bins=8, smoothing=1.0,
                       normalized=True, equal_priors=True):
  """Colour-histogram Bayes classifier fitted on the supports, applied to the query.

  Foreground and background joint-RGB histograms (`bins` per channel) are counted from the
  support pixels with label 1 and 0 (255 ignored), Laplace-smoothed by `smoothing` per bin;
  each query pixel is foreground when p(colour | fg) P(fg) > p(colour | bg) P(bg). With
  `equal_priors` (the default, the stronger baseline for IoU: objects are small, so support
  pixel fractions as priors would label almost everything background) P(fg) = P(bg);
  otherwise the priors are the support pixel fractions.

  Args:
    query_img: (H, W, 3) float32 (normalised, see module docstring).
    support_imgs: (K, H', W', 3) like query_img.
    support_labels: (K, H', W') int, {0, 1, 255}.
    bins: histogram bins per channel.
    smoothing: pseudo-count added to every bin of both histograms.
    normalized: whether images are ImageNet-normalised (True) or raw 0-255 RGB (False).
    equal_priors: P(fg) = P(bg) (True) or the support pixel fractions (False).

  Returns:
    (H, W) int32 in {0, 1}.
  """
  query_img = np.asarray(query_img)
  support_imgs = np.asarray(support_imgs)
  support_labels = np.asarray(support_labels)
  if query_img.ndim != 3 or query_img.shape[-1] != 3:
    raise ValueError(f'query_img must be (H, W, 3), got shape {query_img.shape}')
  if support_imgs.ndim != 4 or support_imgs.shape[:3] != support_labels.shape:
    raise ValueError(f'support_imgs must be (K, H, W, 3) and support_labels (K, H, W), got '
                     f'{support_imgs.shape} and {support_labels.shape}')
  if bins < 1 or smoothing <= 0:
    raise ValueError(f'need bins >= 1 and smoothing > 0, got bins={bins}, smoothing={smoothing}')
  support_bins = _bin_index(support_imgs, bins, normalized)  # (K, H', W')
  n_bins = bins ** 3
  fg_counts = np.bincount(support_bins[support_labels == 1], minlength=n_bins)
  bg_counts = np.bincount(support_bins[support_labels == 0], minlength=n_bins)
  n_fg, n_bg = fg_counts.sum(), bg_counts.sum()
  if n_fg == 0:  # nothing to match: everything is background
    return np.zeros(query_img.shape[:2], np.int32)
  # Log-odds per bin: log p(c|fg) + log P(fg) - log p(c|bg) - log P(bg); P(.) = n / (n_fg + n_bg).
  log_fg = np.log(fg_counts + smoothing) - np.log(n_fg + smoothing * n_bins)
  log_bg = np.log(bg_counts + smoothing) - np.log(n_bg + smoothing * n_bins)
  if not equal_priors:
    log_fg += np.log(n_fg)
    log_bg += np.log(max(n_bg, 1))
  foreground_bin = log_fg > log_bg  # (bins**3,)
  return foreground_bin[_bin_index(query_img, bins, normalized)].astype(np.int32)
