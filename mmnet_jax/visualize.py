"""Pictures of a run: episode grids during evaluation, training curves and per-class IoU plots.

* `EpisodeGrids(workdir, max_episodes, step)` is an `on_batch(host_batch, logit_diff)` hook for
  `evaluate.Evaluator.evaluate`: for the first `max_episodes` valid episodes it draws one row
  (supports with their masks, query, ground truth, prediction; masks tinted and outlined, a
  legend strip naming the colours and the ignore band), saves
  `workdir/pictures/[subdir/]episode_XXXX.png` and logs it to TensorBoard
  (`workdir/tensorboard`, tag `eval_episodes/episode_XXXX`).
* `plot_run(workdir)` reads the run's TensorBoard scalars and results.json and writes
  `workdir/pictures/training_curves.png` (one fixed style per curve, CURVE_STYLES) and
  `workdir/pictures/class_iou.png` (classes by number).

Pictures show the evaluation canvas (config.eval.size, pad-resized) since that is what the
model sees, each panel scaled to 256..480 pixels a side so that it reads on a screen. Only
process 0 writes. matplotlib runs with the Agg backend (no display needed).
"""

from __future__ import annotations

import io
import json
import logging

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmnet_jax import conventions
from mmnet_jax import storage
from mmnet_jax import workdir_io

PICTURES_DIR = 'pictures'
TENSORBOARD_DIR = 'tensorboard'
CURVES_FILE = 'training_curves.png'
CLASS_IOU_FILE = 'class_iou.png'
# Magenta is green's complement: a support mask stays visible on green objects (the old green
# tint vanished on them). Every mask is also outlined in its colour, whatever the object's.
MASK_COLORS = {'support': (255, 0, 255), 'truth': (40, 120, 255), 'prediction': (255, 40, 40)}
IGNORE_COLOR = np.array([128, 128, 128], np.float32)
LEGEND = (('support mask', MASK_COLORS['support']), ('ground truth', MASK_COLORS['truth']),
          ('prediction', MASK_COLORS['prediction']),
          ('ignore (label 255: borders, padding)', tuple(int(c) for c in IGNORE_COLOR)))
FONT_SIZE = 16
_TITLE_H = FONT_SIZE + 8
_LEGEND_H = FONT_SIZE + 12
_GAP = 4
_MIN_PANEL, _MAX_PANEL = 256, 480


def denormalise(image: np.ndarray) -> np.ndarray:
  """uint8 (H, W, 3) RGB from a normalised float image (inverse of conventions.normalize_image)."""
  return np.clip(np.round(conventions.denormalize_image(image)), 0, 255).astype(
      np.uint8)


def outline(mask: np.ndarray, width: int) -> np.ndarray:
  """The pixels of boolean `mask` within `width` pixels of its border (4-neighbourhood)."""
  inner = np.asarray(mask, bool)
  for _ in range(width):
    padded = np.pad(inner, 1)
    inner = (inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2]
             & padded[1:-1, 2:])
  return np.asarray(mask, bool) & ~inner


def tint(image: np.ndarray, label: np.ndarray | None, color, alpha: float = 0.5,
         edge: int = 0) -> np.ndarray:
  """`image` with label == 1 tinted `color` and label == 255 (ignore) greyed; uint8.

  `edge` > 0 also paints the mask's border `edge` pixels wide in the solid colour.
  """
  out = np.asarray(image, np.float32).copy()
  if label is not None:
    fg, ignore = label == 1, label == conventions.IGNORE_LABEL
    out[fg] = (1 - alpha) * out[fg] + alpha * np.asarray(color, np.float32)
    out[ignore] = 0.5 * out[ignore] + 0.5 * IGNORE_COLOR
    if edge > 0:
      out[outline(fg, edge)] = np.asarray(color, np.float32)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
  """A scalable font of `size` pixels (Pillow's bundled one), the bitmap default without it."""
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, ImportError, OSError):   # Pillow < 10.1 or no FreeType
    return ImageFont.load_default()


def _scaled(array: np.ndarray, side: int) -> np.ndarray:
  """`array` (H, W[, 3]) nearest-resized to (side, side), so masks stay crisp."""
  return np.asarray(Image.fromarray(np.asarray(array, np.uint8)).resize((side, side),
                                                                        Image.NEAREST))


def _panel(image: np.ndarray, label: np.ndarray | None, color, title: str,
           side: int) -> Image.Image:
  """One titled square panel of `side` pixels; the mask tinted and outlined at that size."""
  edge = max(2, side // 96)
  shown = tint(_scaled(image, side), None if label is None else _scaled(label, side), color,
               edge=edge)
  panel = Image.new('RGB', (side, side + _TITLE_H), (255, 255, 255))
  panel.paste(Image.fromarray(shown), (0, _TITLE_H))
  ImageDraw.Draw(panel).text((3, 3), title, fill=(0, 0, 0), font=font())
  return panel


def _legend(width: int) -> Image.Image:
  """A strip of colour swatches naming the mask colours and the ignore band."""
  strip = Image.new('RGB', (width, _LEGEND_H), (255, 255, 255))
  draw, text_font = ImageDraw.Draw(strip), font()
  x, box = 4, FONT_SIZE
  for name, color in LEGEND:
    top = (_LEGEND_H - box) // 2
    draw.rectangle([x, top, x + box - 1, top + box - 1], fill=tuple(color))
    draw.text((x + box + 4, top), name, fill=(0, 0, 0), font=text_font)
    x += box + 4 + int(draw.textlength(name, font=text_font)) + 16
  return strip


def panel_side(size: int) -> int:
  """Display side of one panel: small eval canvases are enlarged, big ones reduced."""
  if size < _MIN_PANEL:
    return size * -(-_MIN_PANEL // size)
  return min(size, _MAX_PANEL)


def episode_grid(batch: dict, row: int, logit_diff: np.ndarray) -> np.ndarray:
  """uint8 (h, w, 3): supports with masks, query, ground truth and prediction of one episode.

  A legend strip under the panels names the mask colours and the ignore band.

  Args:
    batch: a host eval batch (docs/architecture.md): query_img (B, H, W, 3), query_label,
      support_imgs (B, K, H, W, 3), support_labels, class_id.
    row: which episode of the batch.
    logit_diff: (H, W) model logit[1] - logit[0] at the canvas size.
  """
  side = panel_side(batch['query_img'].shape[1])
  label = np.asarray(batch['query_label'][row])
  pred = (np.asarray(logit_diff) > 0).astype(np.uint8)
  pred[label == conventions.IGNORE_LABEL] = conventions.IGNORE_LABEL   # padding: not predicted
  valid = label != conventions.IGNORE_LABEL
  inter = np.sum((pred == 1) & (label == 1))
  union = np.sum(((pred == 1) | (label == 1)) & valid)
  iou = f'{100 * inter / union:.0f}' if union else '-'
  panels = []
  for k in range(batch['support_imgs'].shape[1]):
    panels.append(_panel(denormalise(batch['support_imgs'][row, k]),
                         np.asarray(batch['support_labels'][row, k]), MASK_COLORS['support'],
                         f'support {k + 1}', side))
  query = denormalise(batch['query_img'][row])
  panels.append(_panel(query, None, None, f'query, class {int(batch["class_id"][row])}', side))
  panels.append(_panel(query, label, MASK_COLORS['truth'], 'ground truth', side))
  panels.append(_panel(query, pred, MASK_COLORS['prediction'], f'prediction, IoU {iou}', side))
  width = len(panels) * (side + _GAP) - _GAP
  grid = Image.new('RGB', (width, side + _TITLE_H + _LEGEND_H), (255, 255, 255))
  for i, p in enumerate(panels):
    grid.paste(p, (i * (side + _GAP), 0))
  grid.paste(_legend(width), (0, side + _TITLE_H))
  return np.asarray(grid)


class EpisodeGrids:
  """`on_batch` hook of `Evaluator.evaluate` that saves a grid per episode (the first N).

  Usage: `evaluator.evaluate(variables, ..., on_batch=visualize.EpisodeGrids(workdir, 8, step))`.
  Files: `workdir/pictures/[subdir/]episode_XXXX.png` (XXXX: the episode's position in the
  evaluated list on this process); TensorBoard images at `step` unless `tensorboard=False`.
  """

  def __init__(self, workdir: str, max_episodes: int = 8, step: int = 0, subdir: str = '',
               tensorboard: bool = True):
    self.directory = storage.join(workdir, PICTURES_DIR, subdir)
    self.max_episodes = int(max_episodes)
    self.step = int(step)
    self.subdir = subdir
    self.paths: list[str] = []
    self._seen = 0
    self._active = jax.process_index() == 0 and self.max_episodes > 0
    self._writer = None
    if self._active and tensorboard:   # workdir_io's writer keeps TensorFlow off gs://
      self._writer = workdir_io.SummaryWriter(storage.join(workdir, TENSORBOARD_DIR))

  def __call__(self, batch: dict, logit_diff: np.ndarray) -> None:
    if not self._active:
      return
    for row in range(logit_diff.shape[0]):
      index = self._seen
      self._seen += 1
      if not batch['valid'][row] or len(self.paths) >= self.max_episodes:
        continue
      grid = episode_grid(batch, row, logit_diff[row])
      storage.makedirs(self.directory)
      path = storage.join(self.directory, f'episode_{index:04d}.png')
      _write_png(grid, path)
      self.paths.append(path)
      if self._writer is not None:
        tag = '/'.join(filter(None, ['eval_episodes', self.subdir, f'episode_{index:04d}']))
        self._writer.images(self.step, {tag: grid[None]})

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
  for path in storage.glob(storage.join(logdir, '**', 'events.out.tfevents.*')):
    with storage.local_copy(path) as local:
      events = list(_readable_events(tf, local))
    for event in events:
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
  """The events of one file up to its first unreadable record (warned about, not raised).

  Read with tf.data's TFRecordDataset: summary_iterator wraps the deprecated
  tf_record_iterator, which warns on every call."""
  from tensorboard.compat.proto import event_pb2
  records = iter(tf.data.TFRecordDataset(path))
  events = (event_pb2.Event.FromString(r.numpy()) for r in records)
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


# One fixed style per curve: main and aux are often close, so they differ in colour AND line
# style (a dashed aux over a solid main leaves both visible where they overlap).
CURVE_STYLES = {
    'train/loss': dict(color='black', linestyle='-', linewidth=2.0, marker='o',
                       label='total (main + weighted aux, recon)'),
    'train/main': dict(color='tab:blue', linestyle='-', marker='s', label='main (final logits)'),
    'train/aux': dict(color='tab:orange', linestyle='--', marker='^',
                      label='aux (FEM scale heads, unweighted)'),
    'train/recon': dict(color='tab:green', linestyle=':', marker='v',
                        label='recon (memory, unweighted)'),
    'train/lr': dict(color='tab:purple', linestyle='-', marker='o', label='learning rate'),
    'eval/miou': dict(color='tab:red', linestyle='-', marker='o', label='mIoU'),
    'eval/fb_iou': dict(color='tab:brown', linestyle='--', marker='s', label='FB-IoU'),
}
_CURVE_GROUPS = (('loss', ('train/loss', 'train/main', 'train/aux', 'train/recon')),
                 ('learning rate', ('train/lr',)),
                 ('evaluation (%)', ('eval/miou', 'eval/fb_iou')))


def curves_figure(scalars: dict):
  """A matplotlib figure: losses, learning rate and evaluation mIoU / FB-IoU against the step.

  One panel per group present in `scalars` ({tag: [(step, value), ...]}), each curve in its
  CURVE_STYLES style and named in the panel's legend.
  """
  plt = _pyplot()
  groups = [(name, [t for t in tags if t in scalars]) for name, tags in _CURVE_GROUPS]
  groups = [(name, tags) for name, tags in groups if tags]
  if not groups:
    raise ValueError('no training or evaluation scalars to plot')
  fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
  for ax, (name, tags) in zip(axes[0], groups):
    for tag in tags:
      steps, values = zip(*scalars[tag])
      style = dict(CURVE_STYLES[tag])
      if len(steps) >= 30:
        style.pop('marker')   # markers only help while points are few
      ax.plot(steps, values, ms=4, **style)
    ax.set_title(name)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def plot_curves(scalars: dict, path: str) -> str:
  """Writes `curves_figure(scalars)` to `path`; returns `path`."""
  return _save(curves_figure(scalars), path)


def class_order(class_ids) -> list[str]:
  """results.json class ids (strings) by class number: '2' before '10'."""
  return sorted(class_ids, key=lambda c: (0, int(c), '') if str(c).isdigit() else (1, 0, str(c)))


def class_iou_figure(results: dict):
  """A matplotlib figure: per-class IoU bars of the model and the baselines (results.json).

  Classes run by class number; each series' mIoU is in the legend.
  """
  plt = _pyplot()
  classes = class_order(results['class_iou'])
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
  return fig


def plot_class_iou(results: dict, path: str) -> str:
  """Writes `class_iou_figure(results)` to `path`; returns `path`."""
  return _save(class_iou_figure(results), path)


def _write_png(image: np.ndarray, path: str) -> None:
  """A PNG file; on gs:// one upload of the encoded bytes."""
  if not storage.is_remote(path):
    Image.fromarray(image).save(path)
    return
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  storage.write_bytes(path, buffer.getvalue())


def _save(fig, path: str) -> str:
  if storage.is_remote(path):
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format='png')
    storage.write_bytes(path, buffer.getvalue())
  else:
    fig.savefig(path, dpi=100)
  _pyplot().close(fig)
  return path


def plot_run(workdir: str) -> list[str]:
  """Writes the run's plots to `workdir/pictures/`; returns the paths written.

  training_curves.png when TensorBoard scalars exist, class_iou.png when results.json does.
  """
  if jax.process_index() != 0:
    return []
  out_dir = storage.join(workdir, PICTURES_DIR)
  storage.makedirs(out_dir)
  written = []
  scalars = read_scalars(storage.join(workdir, TENSORBOARD_DIR))
  if scalars:
    written.append(plot_curves(scalars, storage.join(out_dir, CURVES_FILE)))
  results_path = storage.join(workdir, 'results.json')
  if storage.isfile(results_path):
    results = json.loads(storage.read_text(results_path))
    written.append(plot_class_iou(results, storage.join(out_dir, CLASS_IOU_FILE)))
  return written
