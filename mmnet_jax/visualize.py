"""Pictures of a run: episode grids during evaluation, training curves and per-class IoU plots.

* `EpisodeGrids(workdir, max_episodes, step)` is an `on_batch(host_batch, logit_diff)` hook for
  `evaluate.Evaluator.evaluate`: for the first `max_episodes` valid episodes it draws one row
  (supports with their masks, query, ground truth, prediction), saves
  `workdir/pictures/[subdir/]episode_XXXX.png` and logs it to TensorBoard
  (`workdir/tensorboard`, tag `eval_episodes/episode_XXXX`).
* `plot_run(workdir)` reads the run's TensorBoard scalars and results.json and writes
  `workdir/pictures/training_curves.png` and `workdir/pictures/class_iou.png`.

Pictures are drawn at the evaluation canvas (config.eval.size, pad-resized; the padding shows
black) since that is what the model sees. Only process 0 writes. matplotlib runs with the Agg
backend (no display needed).
"""

from __future__ import annotations

import glob
import json
import logging
import os

import jax
import numpy as np
from PIL import Image, ImageDraw

from mmnet_jax.data import augment

PICTURES_DIR = 'pictures'
TENSORBOARD_DIR = 'tensorboard'
CURVES_FILE = 'training_curves.png'
CLASS_IOU_FILE = 'class_iou.png'
MASK_COLORS = {'support': (40, 200, 40), 'truth': (40, 120, 255), 'prediction': (255, 40, 40)}
IGNORE_COLOR = np.array([128, 128, 128], np.float32)
_TITLE_H = 14
_MIN_PANEL, _MAX_PANEL = 128, 320


def denormalise(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3) RGB from a normalised float image (inverse of augment.normalise)."""
  return np.clip(np.round(np.asarray(image) * augment.STD + augment.MEAN), 0, 255).astype(
      np.uint8)


def tint(image: np.ndarray, label: np.ndarray | None, color, alpha: float = 0.5) -> np.ndarray:
  """`image` with label == 1 tinted `color` and label == 255 (ignore) greyed; uint8."""
  out = np.asarray(image, np.float32).copy()
  if label is not None:
    fg, ignore = label == 1, label == augment.IGNORE_LABEL
    out[fg] = (1 - alpha) * out[fg] + alpha * np.asarray(color, np.float32)
    out[ignore] = 0.5 * out[ignore] + 0.5 * IGNORE_COLOR
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _panel(image: np.ndarray, title: str, side: int) -> Image.Image:
  """One titled square panel of `side` pixels (nearest-resized so masks stay crisp)."""
  panel = Image.new('RGB', (side, side + _TITLE_H), (255, 255, 255))
  panel.paste(Image.fromarray(image).resize((side, side), Image.NEAREST), (0, _TITLE_H))
  ImageDraw.Draw(panel).text((2, 1), title, fill=(0, 0, 0))
  return panel


def panel_side(size: int) -> int:
  """Display side of one panel: small eval canvases are enlarged, big ones reduced."""
  if size < _MIN_PANEL:
    return size * -(-_MIN_PANEL // size)
  return min(size, _MAX_PANEL)


def episode_grid(batch: dict, row: int, logit_diff: np.ndarray) -> np.ndarray:
  """uint8 (h, w, 3): supports with masks, query, ground truth and prediction of one episode.

  Args:
    batch: a host eval batch (docs/architecture.md): query_img (B, H, W, 3), query_label,
      support_imgs (B, K, H, W, 3), support_labels, class_id.
    row: which episode of the batch.
    logit_diff: (H, W) model logit[1] - logit[0] at the canvas size.
  """
  side = panel_side(batch['query_img'].shape[1])
  label = np.asarray(batch['query_label'][row])
  pred = (np.asarray(logit_diff) > 0).astype(np.uint8)
  pred[label == augment.IGNORE_LABEL] = augment.IGNORE_LABEL   # padding: not predicted
  valid = label != augment.IGNORE_LABEL
  inter = np.sum((pred == 1) & (label == 1))
  union = np.sum(((pred == 1) | (label == 1)) & valid)
  iou = f'{100 * inter / union:.0f}' if union else '-'
  panels = []
  for k in range(batch['support_imgs'].shape[1]):
    img = denormalise(batch['support_imgs'][row, k])
    panels.append(_panel(tint(img, np.asarray(batch['support_labels'][row, k]),
                              MASK_COLORS['support']), f'support {k + 1}', side))
  query = denormalise(batch['query_img'][row])
  panels.append(_panel(query, f'query, class {int(batch["class_id"][row])}', side))
  panels.append(_panel(tint(query, label, MASK_COLORS['truth']), 'ground truth', side))
  panels.append(_panel(tint(query, pred, MASK_COLORS['prediction']), f'prediction IoU {iou}',
                       side))
  gap = 4
  grid = Image.new('RGB', (len(panels) * (side + gap) - gap, side + _TITLE_H), (255, 255, 255))
  for i, p in enumerate(panels):
    grid.paste(p, (i * (side + gap), 0))
  return np.asarray(grid)


class EpisodeGrids:
  """`on_batch` hook of `Evaluator.evaluate` that saves a grid per episode (the first N).

  Usage: `evaluator.evaluate(variables, ..., on_batch=visualize.EpisodeGrids(workdir, 8, step))`.
  Files: `workdir/pictures/[subdir/]episode_XXXX.png` (XXXX: the episode's position in the
  evaluated list on this process); TensorBoard images at `step` unless `tensorboard=False`.
  """

  def __init__(self, workdir: str, max_episodes: int = 8, step: int = 0, subdir: str = '',
               tensorboard: bool = True):
    self.directory = os.path.join(workdir, PICTURES_DIR, subdir)
    self.max_episodes = int(max_episodes)
    self.step = int(step)
    self.subdir = subdir
    self.paths: list[str] = []
    self._seen = 0
    self._active = jax.process_index() == 0 and self.max_episodes > 0
    self._writer = None
    if self._active and tensorboard:
      import tensorflow as tf   # lazily: TF is imported by the eval pipeline anyway
      self._tf = tf
      self._writer = tf.summary.create_file_writer(os.path.join(workdir, TENSORBOARD_DIR))

  def __call__(self, batch: dict, logit_diff: np.ndarray) -> None:
    if not self._active:
      return
    for row in range(logit_diff.shape[0]):
      index = self._seen
      self._seen += 1
      if not batch['valid'][row] or len(self.paths) >= self.max_episodes:
        continue
      grid = episode_grid(batch, row, logit_diff[row])
      os.makedirs(self.directory, exist_ok=True)
      path = os.path.join(self.directory, f'episode_{index:04d}.png')
      Image.fromarray(grid).save(path)
      self.paths.append(path)
      if self._writer is not None:
        tag = '/'.join(filter(None, ['eval_episodes', self.subdir, f'episode_{index:04d}']))
        with self._writer.as_default():
          self._tf.summary.image(tag, grid[None], step=self.step)
        self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} from every event file under `logdir`, sorted by step.

  A step logged twice (a resumed run) keeps the value written last. A truncated or damaged
  record (a run killed mid-write, or a file still being written) ends that file's reading
  with a warning; the records before it count.
  """
  import tensorflow as tf
  found: dict[str, dict[int, tuple[float, float]]] = {}
  for path in sorted(glob.glob(os.path.join(logdir, '**', 'events.out.tfevents.*'),
                               recursive=True)):
    for event in _readable_events(tf, path):
      for value in event.summary.value:
        kind = value.WhichOneof('value')
        if kind == 'simple_value':
          number = float(value.simple_value)
        elif kind == 'tensor':
          array = tf.make_ndarray(value.tensor)
          if array.ndim != 0 or not np.issubdtype(array.dtype, np.number):
            continue   # images and text
          number = float(array)
        else:
          continue
        seen = found.setdefault(value.tag, {}).get(event.step)
        if seen is None or event.wall_time >= seen[0]:
          found[value.tag][event.step] = (event.wall_time, number)
  return {tag: sorted((s, v) for s, (_, v) in steps.items()) for tag, steps in found.items()}


def _readable_events(tf, path: str):
  """The events of one file up to its first unreadable record (warned about, not raised)."""
  events = tf.compat.v1.train.summary_iterator(path)
  while True:
    try:
      yield next(events)
    except StopIteration:
      return
    except tf.errors.DataLossError as e:
      logging.warning('TensorBoard file %s: stopped at a truncated or damaged record (%s); '
                      'using the records before it', path, str(e).splitlines()[0])
      return


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')   # files only; works without a display
  import matplotlib.pyplot as plt
  return plt


def plot_curves(scalars: dict, path: str) -> str:
  """Training losses, learning rate and evaluation mIoU / FB-IoU against the step."""
  plt = _pyplot()
  groups = [
      ('loss', [t for t in ('train/loss', 'train/main', 'train/aux', 'train/recon')
                if t in scalars]),
      ('learning rate', [t for t in ('train/lr',) if t in scalars]),
      ('evaluation (%)', [t for t in ('eval/miou', 'eval/fb_iou') if t in scalars]),
  ]
  groups = [(name, tags) for name, tags in groups if tags]
  if not groups:
    raise ValueError('no training or evaluation scalars to plot')
  fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
  for ax, (name, tags) in zip(axes[0], groups):
    for tag in tags:
      steps, values = zip(*scalars[tag])
      ax.plot(steps, values, marker='o' if len(steps) < 30 else None, ms=3,
              label=tag.split('/', 1)[1])
    ax.set_title(name)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_class_iou(results: dict, path: str) -> str:
  """Per-class IoU bars of the model and the baselines (results.json), mIoU in the legend."""
  plt = _pyplot()
  classes = list(results['class_iou'])
  series = [('model', results['class_iou'], results['miou'])]
  for name, base in sorted(results.get('baselines', {}).items()):
    series.append((name, base['class_iou'], base['miou']))
  width = 0.8 / len(series)
  x = np.arange(len(classes))
  fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(classes) * len(series)), 3.8))
  for i, (name, ious, miou) in enumerate(series):
    ax.bar(x + (i - (len(series) - 1) / 2) * width,
           [ious.get(c, float('nan')) for c in classes], width, label=f'{name} (mIoU {miou:.1f})')
  ax.set_xticks(x)
  ax.set_xticklabels(classes, fontsize=7, rotation=90 if len(classes) > 30 else 0)
  ax.set_xlabel('class id')
  ax.set_ylabel('IoU (%)')
  ax.set_title(f'{results.get("dataset", "")} fold {results.get("fold", "")}, '
               f'{results.get("shots", "")}-shot, {results.get("episodes", "")} episodes')
  ax.legend(fontsize=8)
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_run(workdir: str) -> list[str]:
  """Writes the run's plots to `workdir/pictures/`; returns the paths written.

  training_curves.png when TensorBoard scalars exist, class_iou.png when results.json does.
  """
  if jax.process_index() != 0:
    return []
  out_dir = os.path.join(workdir, PICTURES_DIR)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  scalars = read_scalars(os.path.join(workdir, TENSORBOARD_DIR))
  if scalars:
    written.append(plot_curves(scalars, os.path.join(out_dir, CURVES_FILE)))
  results_path = os.path.join(workdir, 'results.json')
  if os.path.isfile(results_path):
    with open(results_path) as f:
      results = json.load(f)
    written.append(plot_class_iou(results, os.path.join(out_dir, CLASS_IOU_FILE)))
  return written
