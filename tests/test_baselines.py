"""Tests for the shortcut baselines, and the synthetic benchmark's honesty check."""

import numpy as np
import pytest

from mmnet_jax import baselines
from mmnet_jax import conventions
from mmnet_jax.data import datasets
from mmnet_jax.data import episodes
from mmnet_jax.data import synthetic


def _iou(pred, label):
  valid = label != 255
  inter = np.sum((pred == 1) & (label == 1) & valid)
  union = np.sum(((pred == 1) | (label == 1)) & valid)
  return inter / union


def _square_episode(rng, colour, size=48, lo=12, hi=30):
  """A noisy grey image with a `colour` square at [lo:hi, lo:hi]; label 1 on the square."""
  img = rng.uniform(60, 200, size=(size, size, 1)).repeat(3, axis=-1)
  img[lo:hi, lo:hi] = colour
  label = np.zeros((size, size), np.int32)
  label[lo:hi, lo:hi] = 1
  return img.astype(np.float32), label


def test_histogram_finds_red_square():
  rng = np.random.default_rng(0)
  support, s_label = _square_episode(rng, (230, 10, 10))
  query, q_label = _square_episode(rng, (230, 10, 10), lo=5, hi=25)
  s_label[0, :] = 255  # an ignored row must not break anything
  pred = baselines.histogram_matching(conventions.normalize_image(query),
                                      conventions.normalize_image(support)[None], s_label[None])
  assert pred.shape == (48, 48) and pred.dtype == np.int32
  assert _iou(pred, q_label) == 1.0
  # Raw 0-255 input gives the same answer.
  raw = baselines.histogram_matching(query, support[None], s_label[None], normalized=False)
  np.testing.assert_array_equal(raw, pred)


def test_histogram_ignores_255_and_uses_priors():
  rng = np.random.default_rng(1)
  support, s_label = _square_episode(rng, (230, 10, 10))
  # The red square marked ignore: no foreground evidence left -> all background.
  ignored = np.where(s_label == 1, 255, s_label)
  pred = baselines.histogram_matching(support, support[None], ignored[None], normalized=False)
  assert pred.sum() == 0
  # A colour seen 10x as background as foreground is background despite appearing in fg.
  img = np.zeros((1, 10, 11, 3), np.float32)
  img[..., 0] = 200.0
  lab = np.zeros((1, 10, 11), np.int32)
  lab[0, :, 10] = 1
  pred = baselines.histogram_matching(img[0], img, lab, normalized=False)
  assert pred.sum() == 0


def test_all_foreground_iou_is_fg_fraction():
  rng = np.random.default_rng(2)
  query, q_label = _square_episode(rng, (0, 0, 255))
  pred = baselines.all_foreground(query, query[None], q_label[None])
  assert pred.shape == (48, 48) and np.all(pred == 1)
  assert _iou(pred, q_label) == pytest.approx(q_label.mean())


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match='support_imgs'):
    baselines.histogram_matching(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), np.zeros((8, 8)))


def honesty_check(num_episodes=200, fold=0, num_images=400, min_class_pixels=200, seed=0):
  """Class-wise mIoU (I and U summed per class) of both baselines on 1-shot val episodes.

  Query: a val image with a fold test class (>= min_class_pixels px); support: another val
  image with that class; labels binarised; scored at the query's original size, 255 ignored.
  """
  gen = synthetic.SyntheticConfig(num_val=num_images)
  _, test_classes = datasets.fold_classes('synthetic', fold)
  examples = [synthetic.render_example(gen, 'val', i) for i in range(num_images)]
  areas = [synthetic.class_areas(lab) for _, lab in examples]
  pool = {c: [i for i, a in enumerate(areas) if a.get(c, 0) >= min_class_pixels]
          for c in test_classes}
  rng = np.random.default_rng(seed)
  totals = {name: np.zeros((2, len(test_classes))) for name in ('all_fg', 'histogram')}
  for _ in range(num_episodes):
    ci = rng.integers(len(test_classes))
    c = test_classes[ci]
    q, s = rng.choice(pool[c], size=2, replace=False)
    q_img, q_lab = examples[q][0], episodes.binarise(examples[q][1], c)
    s_img, s_lab = examples[s][0], episodes.binarise(examples[s][1], c)
    args = (conventions.normalize_image(q_img), conventions.normalize_image(s_img)[None], s_lab[None])
    for name, fn in (('all_fg', baselines.all_foreground),
                     ('histogram', baselines.histogram_matching)):
      pred = fn(*args)
      valid = q_lab != 255
      totals[name][0, ci] += np.sum((pred == 1) & (q_lab == 1) & valid)
      totals[name][1, ci] += np.sum(((pred == 1) | (q_lab == 1)) & valid)
  return {name: float(np.mean(t[0] / t[1])) for name, t in totals.items()}


def test_synthetic_has_no_colour_or_foreground_shortcut():
  miou = honesty_check(num_episodes=100, num_images=240)
  assert miou['all_fg'] < 0.25, miou
  assert miou['histogram'] < 0.35, miou


if __name__ == '__main__':
  print(honesty_check())
