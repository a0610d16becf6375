"""Tests for the procedural synthetic benchmark generator."""

import numpy as np
import pytest

from mmnet_jax.data import synthetic

GEN = synthetic.SyntheticConfig(num_train=40, num_val=40)


def test_same_seed_same_bytes_different_seed_differs():
  a_img, a_lab = synthetic.render_example(GEN, 'train', 7)
  b_img, b_lab = synthetic.render_example(GEN, 'train', 7)
  assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
  other = synthetic.SyntheticConfig(seed=1, num_train=40, num_val=40)
  c_img, _ = synthetic.render_example(other, 'train', 7)
  assert c_img.shape != a_img.shape or not np.array_equal(c_img, a_img)
  # Splits draw from disjoint streams: image 7 of val is not image 7 of train.
  d_img, _ = synthetic.render_example(GEN, 'val', 7)
  assert d_img.shape != a_img.shape or not np.array_equal(d_img, a_img)


def test_class_specs_are_40_distinct_family_texture_pairs():
  specs = synthetic.class_specs(0)
  assert [s.class_id for s in specs] == list(range(1, 41))
  assert len({(s.family, s.texture) for s in specs}) == 40
  assert specs != synthetic.class_specs(1)


@pytest.mark.parametrize('split', synthetic.SPLITS)
def test_every_class_in_every_split_with_enough_pixels(split):
  seen = set()
  for i in range(40):
    image, label = synthetic.render_example(GEN, split, i)
    h, w = label.shape
    assert image.shape == (h, w, 3) and image.dtype == np.uint8 and label.dtype == np.uint8
    assert GEN.min_size <= h <= GEN.max_size and GEN.min_size <= w <= GEN.max_size
    assert set(np.unique(label)) <= set(range(41)) | {255}
    areas = synthetic.class_areas(label)
    primary = synthetic.primary_class(GEN, split, i)
    # The primary object is drawn on top and large enough for a ~200 px min-area rule.
    assert areas[primary] >= 200, (split, i, areas)
    seen.add(primary)
  assert seen == set(range(1, 41))


def test_image_sizes_vary_and_are_not_square():
  shapes = {synthetic.render_example(GEN, 'train', i)[0].shape for i in range(10)}
  assert len(shapes) > 5
  assert any(h != w for h, w, _ in shapes)


def test_border_band_present_only_when_enabled():
  no_band = synthetic.SyntheticConfig(border_band=0)
  for i in range(5):
    img0, lab0 = synthetic.render_example(no_band, 'val', i)
    img2, lab2 = synthetic.render_example(GEN, 'val', i)
    assert not np.any(lab0 == 255)
    np.testing.assert_array_equal(img0, img2)  # the band changes labels, never pixels
    band = lab2 == 255
    assert band.any()
    # Band pixels sit on object boundaries: each touches an object pixel of the unbanded label
    # within the band width, and every object keeps an interior.
    assert np.all(lab2[~band] == lab0[~band])
    assert np.any(lab0[band] > 0) and np.any(lab0[band] == 0)  # on both sides of the edge
    near = np.zeros_like(band)
    for dy in range(-2, 3):
      for dx in range(-2, 3):
        near |= np.roll(np.roll(lab0 > 0, dy, 0), dx, 1)
    assert np.all(near[band])
    assert set(synthetic.class_areas(lab2)) <= set(synthetic.class_areas(lab0))


def test_class_areas_recount():
  _, label = synthetic.render_example(GEN, 'train', 3)
  areas = synthetic.class_areas(label)
  for c, n in areas.items():
    assert n == np.sum(label == c)
  assert sum(areas.values()) == np.sum((label > 0) & (label < 255))


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='split'):
    synthetic.render_example(GEN, 'test', 0)
  with pytest.raises(ValueError, match='min_size'):
    synthetic.SyntheticConfig(min_size=200, max_size=100)
