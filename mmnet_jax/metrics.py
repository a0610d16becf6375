"""Few-shot segmentation metrics: class-wise mIoU and FB-IoU (PFENet / HSNet definition).

Every number a user sees comes from here:
* mIoU: for each test class c, I_c and U_c are summed over all episodes of class c; IoU_c =
  I_c / U_c; mIoU is the mean over the fold's classes. It is NOT the mean of per-episode IoUs
  (``mean_episode_iou`` computes that one for comparison only). A fold class without any
  episode counts as IoU 0 (`empty_classes='zero'`: PFENet test.py's 1e-10 guard, HSNet
  common/logger.py's max(U, 1)) or is left out of the mean (`'drop'`, an option).
* FB-IoU: background and foreground intersections and unions each summed over all episodes;
  the mean of the two IoUs.
Pixels labelled 255 (borders, padding) are excluded from intersections and unions.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

import numpy as np

from mmnet_jax import conventions



def intersection_union(pred: np.ndarray, label: np.ndarray,
                       ignore_label: int = conventions.IGNORE_LABEL) -> tuple[np.ndarray, np.ndarray]:
  """Background/foreground intersection and union of one binary prediction.

  Args:
    pred: (H, W) ints in {0, 1}.
    label: (H, W) ints in {0, 1, ignore_label}.
  Returns:
    (intersection, union), each float64 (2,) indexed [background, foreground].
  """
  pred = np.asarray(pred)
  label = np.asarray(label)
  if pred.shape != label.shape:
    raise ValueError(f'prediction shape {pred.shape} != label shape {label.shape}')
  valid = label != ignore_label
  inter = np.empty(2)
  union = np.empty(2)
  for c in (0, 1):
    p = (pred == c) & valid
    g = (label == c) & valid
    inter[c] = np.count_nonzero(p & g)
    union[c] = np.count_nonzero(p | g)
  return inter, union


def align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) linear-interpolation matrix with align_corners=True semantics."""
  if out_size == 1 or in_size == 1:
    m = np.zeros((out_size, in_size))
    m[:, 0] = 1.0
    return m
  pos = np.arange(out_size) * (in_size - 1) / (out_size - 1)
  lo = np.clip(np.floor(pos).astype(int), 0, in_size - 2)
  frac = pos - lo
  m = np.zeros((out_size, in_size))
  m[np.arange(out_size), lo] = 1.0 - frac
  m[np.arange(out_size), lo + 1] += frac
  return m


def predict_at_size(logit_diff: np.ndarray, size: int) -> np.ndarray:
  """Foreground prediction at `size` x `size` from a (H, W) map of logit[1] - logit[0].

  Bilinear interpolation is linear, so resizing the logit difference equals resizing both logits;
  ties go to background as torch's argmax does.
  """
  logit_diff = np.asarray(logit_diff, np.float64)
  rows = align_corners_matrix(logit_diff.shape[0], size)
  cols = align_corners_matrix(logit_diff.shape[1], size)
  return (rows @ logit_diff @ cols.T > 0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class SegmentationTotals:
  """Accumulated counts of one evaluation (immutable; `add` returns a new value)."""
  class_inter: Mapping[int, float] = dataclasses.field(default_factory=dict)
  class_union: Mapping[int, float] = dataclasses.field(default_factory=dict)
  fb_inter: tuple[float, float] = (0.0, 0.0)
  fb_union: tuple[float, float] = (0.0, 0.0)
  episodes: int = 0
  episode_iou_sum: float = 0.0      # over episodes whose foreground union is non-empty
  episodes_scored: int = 0

  def add(self, class_id: int, inter: np.ndarray, union: np.ndarray) -> 'SegmentationTotals':
    """Adds one episode of class `class_id` with its (2,) intersection and union."""
    class_id = int(class_id)
    ci = dict(self.class_inter)
    cu = dict(self.class_union)
    ci[class_id] = ci.get(class_id, 0.0) + float(inter[1])
    cu[class_id] = cu.get(class_id, 0.0) + float(union[1])
    scored = union[1] > 0
    return SegmentationTotals(
        class_inter=ci, class_union=cu,
        fb_inter=(self.fb_inter[0] + float(inter[0]), self.fb_inter[1] + float(inter[1])),
        fb_union=(self.fb_union[0] + float(union[0]), self.fb_union[1] + float(union[1])),
        episodes=self.episodes + 1,
        episode_iou_sum=self.episode_iou_sum + (float(inter[1] / union[1]) if scored else 0.0),
        episodes_scored=self.episodes_scored + int(scored))

  def merge(self, other: 'SegmentationTotals') -> 'SegmentationTotals':
    """Sum of two accumulations (e.g. from two processes)."""
    classes = set(self.class_inter) | set(other.class_inter)
    return SegmentationTotals(
        class_inter={c: self.class_inter.get(c, 0.0) + other.class_inter.get(c, 0.0)
                     for c in classes},
        class_union={c: self.class_union.get(c, 0.0) + other.class_union.get(c, 0.0)
                     for c in classes},
        fb_inter=tuple(a + b for a, b in zip(self.fb_inter, other.fb_inter)),
        fb_union=tuple(a + b for a, b in zip(self.fb_union, other.fb_union)),
        episodes=self.episodes + other.episodes,
        episode_iou_sum=self.episode_iou_sum + other.episode_iou_sum,
        episodes_scored=self.episodes_scored + other.episodes_scored)


EMPTY_CLASS_RULES = ('zero', 'drop')


def class_iou(totals: SegmentationTotals, classes: Iterable[int]) -> dict[int, float]:
  """IoU of each class of `classes` that has episodes (a class without any is left out, not
  counted as 0; `summarize` lists such classes)."""
  out = {}
  for c in classes:
    if c in totals.class_union:
      u = totals.class_union[c]
      out[c] = totals.class_inter[c] / u if u > 0 else 0.0
  return out


def _check_rule(empty_classes: str) -> None:
  if empty_classes not in EMPTY_CLASS_RULES:
    raise ValueError(f'config.eval.empty_classes={empty_classes!r}; expected one of '
                     f'{list(EMPTY_CLASS_RULES)}')


def mean_iou(totals: SegmentationTotals, classes: Iterable[int],
             empty_classes: str = 'zero') -> float:
  """Class-wise mIoU over `classes` (the fold's test classes); a class without episodes
  counts as 0 ('zero', the originals) or is left out ('drop')."""
  _check_rule(empty_classes)
  classes = list(classes)
  ious = class_iou(totals, classes)
  if empty_classes == 'zero':
    return float(np.mean([ious.get(c, 0.0) for c in classes])) if classes else float('nan')
  return float(np.mean(list(ious.values()))) if ious else float('nan')


def fb_iou(totals: SegmentationTotals) -> float:
  """Mean of the background and foreground IoUs accumulated over all episodes."""
  ious = [i / u if u > 0 else 0.0 for i, u in zip(totals.fb_inter, totals.fb_union)]
  return float(np.mean(ious))


def mean_episode_iou(totals: SegmentationTotals) -> float:
  """Mean of per-episode foreground IoUs (not the field's metric; for comparison only)."""
  if not totals.episodes_scored:
    return float('nan')
  return totals.episode_iou_sum / totals.episodes_scored


def summarize(totals: SegmentationTotals, classes: Iterable[int],
              empty_classes: str = 'zero') -> dict:
  """The numbers a report shows, in percent: mIoU, FB-IoU, per-class IoU, episode count.

  `classes_without_episodes` lists the fold classes no episode drew; under 'zero' they are in
  `class_iou` as 0, as the originals print them."""
  classes = list(classes)
  ious = class_iou(totals, classes)
  missing = [c for c in classes if c not in ious]
  if empty_classes == 'zero':
    ious = {c: ious.get(c, 0.0) for c in classes}
  return {
      'miou': 100.0 * mean_iou(totals, classes, empty_classes),
      'classes_without_episodes': missing,
      'fb_iou': 100.0 * fb_iou(totals),
      'class_iou': {str(c): 100.0 * v for c, v in ious.items()},
      'mean_episode_iou': 100.0 * mean_episode_iou(totals),
      'episodes': totals.episodes,
  }



def totals_to_vector(totals: SegmentationTotals, classes: Iterable[int]) -> np.ndarray:
  """A fixed-layout float64 vector of `totals` over `classes`, for summing across processes:
  [inter_c, union_c, has_episodes_c for c in classes] + fb_inter(2) + fb_union(2) +
  [episodes, episode_iou_sum, episodes_scored]."""
  classes = list(classes)
  extra = set(totals.class_union) - set(classes)
  if extra:
    raise ValueError(f'episodes of classes {sorted(extra)} outside the evaluated classes')
  per_class = [v for c in classes
               for v in (totals.class_inter.get(c, 0.0), totals.class_union.get(c, 0.0),
                         float(c in totals.class_union))]
  return np.array(per_class + list(totals.fb_inter) + list(totals.fb_union) +
                  [totals.episodes, totals.episode_iou_sum, totals.episodes_scored], np.float64)


def totals_from_vector(vector: np.ndarray, classes: Iterable[int]) -> SegmentationTotals:
  """Inverse of `totals_to_vector`, also for a sum of such vectors."""
  classes = list(classes)
  present = [(i, c) for i, c in enumerate(classes) if vector[3 * i + 2] > 0]
  n = 3 * len(classes)
  return SegmentationTotals(
      class_inter={c: float(vector[3 * i]) for i, c in present},
      class_union={c: float(vector[3 * i + 1]) for i, c in present},
      fb_inter=(float(vector[n]), float(vector[n + 1])),
      fb_union=(float(vector[n + 2]), float(vector[n + 3])),
      episodes=int(round(vector[n + 4])), episode_iou_sum=float(vector[n + 5]),
      episodes_scored=int(round(vector[n + 6])))
