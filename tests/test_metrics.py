"""Metrics on hand-computed cases."""

import numpy as np
import pytest

from mmnet_jax import metrics


def test_intersection_union_ignores_255():
  pred = np.array([[1, 1, 0],
                   [0, 1, 0]])
  label = np.array([[1, 255, 0],
                    [1, 1, 255]])
  inter, union = metrics.intersection_union(pred, label)
  # valid pixels: (0,0) p1 g1, (0,2) p0 g0, (1,0) p0 g1, (1,1) p1 g1
  np.testing.assert_array_equal(inter, [1, 2])   # bg: (0,2); fg: (0,0), (1,1)
  np.testing.assert_array_equal(union, [2, 3])   # bg: (0,2), (1,0); fg: (0,0), (1,0), (1,1)


def test_intersection_union_shape_mismatch_is_an_error():
  with pytest.raises(ValueError, match='shape'):
    metrics.intersection_union(np.zeros((2, 2)), np.zeros((2, 3)))


def test_classwise_miou_differs_from_mean_of_episodes():
  totals = metrics.SegmentationTotals()
  # class 1: a big episode (IoU 90/100) and a small one (IoU 0/10)
  totals = totals.add(1, np.array([0, 90]), np.array([10, 100]))
  totals = totals.add(1, np.array([5, 0]), np.array([15, 10]))
  # class 2: one episode, IoU 1/4
  totals = totals.add(2, np.array([3, 1]), np.array([3, 4]))
  ious = metrics.class_iou(totals, [1, 2])
  assert ious[1] == pytest.approx(90 / 110)   # summed over episodes, not averaged
  assert ious[2] == pytest.approx(0.25)
  assert metrics.mean_iou(totals, [1, 2]) == pytest.approx((90 / 110 + 0.25) / 2)
  assert metrics.mean_episode_iou(totals) == pytest.approx((0.9 + 0.0 + 0.25) / 3)
  # FB-IoU: bg (0+5+3)/(10+15+3), fg (90+0+1)/(100+10+4)
  assert metrics.fb_iou(totals) == pytest.approx((8 / 28 + 91 / 114) / 2)
  summary = metrics.summarize(totals, [1, 2])
  assert summary['miou'] == pytest.approx(100 * (90 / 110 + 0.25) / 2)
  assert summary['episodes'] == 3
  assert set(summary['class_iou']) == {'1', '2'}


def _pfenet_class_miou(inter, union, classes):
  """PFENet test.py's class mIoU restated: per-class meters start at 0, IoU = I / (U + 1e-10),
  the mean over all `split_gap` classes."""
  return float(np.mean([inter.get(c, 0.0) / (union.get(c, 0.0) + 1e-10) for c in classes]))


def _hsnet_miou(inter, union, classes):
  """HSNet common/logger.py's compute_iou restated: I / max(U, 1) over the classes of
  interest, mean."""
  return float(np.mean([inter.get(c, 0.0) / max(union.get(c, 0.0), 1.0) for c in classes]))


def test_class_without_episodes_counts_as_zero_as_the_originals_or_is_dropped():
  totals = metrics.SegmentationTotals().add(1, np.array([1, 1]), np.array([1, 2]))
  totals = totals.add(2, np.array([4, 3]), np.array([5, 4]))
  classes = [1, 2, 3]   # class 3: no episode (a short evaluation, a rare class)
  inter, union = dict(totals.class_inter), dict(totals.class_union)
  zero = metrics.mean_iou(totals, classes)
  assert zero == pytest.approx((0.5 + 0.75 + 0.0) / 3)   # it used to be 0.625: 3 left out
  assert zero == pytest.approx(_pfenet_class_miou(inter, union, classes), abs=1e-9)
  assert zero == pytest.approx(_hsnet_miou(inter, union, classes), abs=1e-12)
  assert metrics.mean_iou(totals, classes, 'drop') == pytest.approx(0.625)
  summary = metrics.summarize(totals, classes)
  assert summary['classes_without_episodes'] == [3]
  assert summary['class_iou'] == {'1': 50.0, '2': 75.0, '3': 0.0}
  dropped = metrics.summarize(totals, classes, 'drop')
  assert dropped['miou'] == pytest.approx(62.5) and set(dropped['class_iou']) == {'1', '2'}
  with pytest.raises(ValueError, match="config.eval.empty_classes='none'"):
    metrics.mean_iou(totals, classes, 'none')


def test_merge_equals_sequential_accumulation():
  a = metrics.SegmentationTotals().add(1, np.array([1, 2]), np.array([3, 4]))
  b = metrics.SegmentationTotals().add(2, np.array([5, 6]), np.array([7, 8]))
  both = a.merge(b)
  seq = a.add(2, np.array([5, 6]), np.array([7, 8]))
  assert both == seq


def test_align_corners_matrix_matches_hand_values():
  m = metrics.align_corners_matrix(3, 5)
  # output positions 0, 0.5, 1, 1.5, 2 in input coordinates
  expected = np.array([[1, 0, 0], [.5, .5, 0], [0, 1, 0], [0, .5, .5], [0, 0, 1]])
  np.testing.assert_allclose(m, expected)
  np.testing.assert_allclose(metrics.align_corners_matrix(4, 1), [[1, 0, 0, 0]])


def test_predict_at_size_on_padded_square():
  # 3x3 logit difference, upsampled to 5x5: corners keep their sign, centre interpolates.
  diff = np.array([[1., -1., -1.],
                   [1., -1., -1.],
                   [-1., -1., -1.]])
  pred = metrics.predict_at_size(diff, 5)
  assert pred.shape == (5, 5)
  assert pred[0, 0] == 1 and pred[2, 0] == 1 and pred[4, 4] == 0
  assert pred[0, 1] == 0   # exactly 0 between +1 and -1: ties go to background
  # scoring against an original 2x3 label padded with 255 to a 3x3 square
  label = np.full((3, 3), 255)
  label[:2, :3] = [[1, 0, 0], [1, 0, 0]]
  inter, union = metrics.intersection_union(metrics.predict_at_size(diff, 3), label)
  np.testing.assert_array_equal(inter, [4, 2])
  np.testing.assert_array_equal(union, [4, 2])


def test_vector_round_trip_and_sum_of_parts():
  a = metrics.SegmentationTotals().add(1, np.array([1, 2]), np.array([3, 4]))
  b = metrics.SegmentationTotals().add(2, np.array([5, 6]), np.array([7, 8]))
  b = b.add(1, np.array([1, 0]), np.array([2, 5]))
  classes = [1, 2, 3]
  assert metrics.totals_from_vector(metrics.totals_to_vector(a, classes), classes) == a
  summed = metrics.totals_to_vector(a, classes) + metrics.totals_to_vector(b, classes)
  assert metrics.totals_from_vector(summed, classes) == a.merge(b)
