"""Episode grids (evaluation hook), TensorBoard images, training-curve and per-class plots."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from configs import synth_1shot
from mmnet_jax import conventions
from mmnet_jax import evaluate
from mmnet_jax import train_state
from mmnet_jax import visualize
from mmnet_jax import workdir_io
from mmnet_jax.data import datasets
from mmnet_jax.models import mmnet


def _fake_batch(b=3, k=2, size=33):
  rng = np.random.default_rng(0)
  label = np.zeros((b, size, size), np.int32)
  label[:, 5:20, 5:20] = 1
  label[:, :, 30:] = 255                      # padding of the pad-resize
  return {
      'query_img': rng.normal(size=(b, size, size, 3)).astype(np.float32),
      'query_label': label,
      'support_imgs': rng.normal(size=(b, k, size, size, 3)).astype(np.float32),
      'support_labels': np.repeat(label[:, None], k, axis=1),
      'class_id': np.array([3, 4, 5], np.int32)[:b],
      'valid': np.array([True, False, True])[:b],
  }


def _tensorboard_tags(logdir):
  import tensorflow as tf
  tags = []
  for name in os.listdir(logdir):
    for event in visualize._readable_events(tf, os.path.join(logdir, name)):
      tags += [(v.tag, event.step) for v in event.summary.value]
  return tags


def test_episode_grids_hook_writes_pngs_and_tensorboard_images(tmp_path):
  batch = _fake_batch()
  diff = np.full((3, 33, 33), -1.0, np.float32)
  diff[:, 5:20, 5:12] = 2.0                   # predicted foreground: part of the truth
  hook = visualize.EpisodeGrids(str(tmp_path), max_episodes=5, step=7)
  hook(batch, diff)
  hook(batch, diff)                           # a second batch continues the numbering
  hook.close()
  names = sorted(os.listdir(tmp_path / 'pictures'))
  # Row 1 of each batch is padding (valid=False): episodes 0, 2, 3, 5 are drawn.
  assert names == ['episode_0000.png', 'episode_0002.png', 'episode_0003.png',
                   'episode_0005.png']
  grid = np.asarray(Image.open(tmp_path / 'pictures' / 'episode_0000.png'))
  side = visualize.panel_side(33)
  assert side == 264
  # 2 supports, query, truth, pred; a 24 px title above each panel, a 28 px legend below.
  assert grid.shape == (24 + side + 28, 5 * (side + 4) - 4, 3)
  # The prediction panel is tinted red where diff > 0 and untinted elsewhere.
  pred_panel = grid[24:24 + side, 4 * (side + 4):]
  scale = side // 33
  inside = pred_panel[8 * scale, 8 * scale].astype(int)      # predicted pixel
  query_panel = grid[24:24 + side, 2 * (side + 4):3 * (side + 4) - 4]
  assert inside[0] > query_panel[8 * scale, 8 * scale, 0] or inside[0] == 255
  assert np.array_equal(pred_panel[25 * scale, 25 * scale], query_panel[25 * scale, 25 * scale])
  tags = _tensorboard_tags(tmp_path / 'tensorboard')
  assert ('eval_episodes/episode_0000', 7) in tags and len(tags) == 4


def _green_episode(size=33):
  """One episode on a plain green image (the colour of many synthetic and PASCAL objects)."""
  label = np.zeros((1, size, size), np.int32)
  label[:, 5:20, 5:20] = 1
  label[:, :, 30:] = 255
  green = np.zeros((size, size, 3), np.float32)
  green[..., 1] = 200
  image = conventions.normalize_image(green)
  return {'query_img': image[None], 'query_label': label, 'support_imgs': image[None, None],
          'support_labels': label[:, None], 'class_id': np.array([3]), 'valid': np.array([True])}


def test_support_mask_is_visible_on_a_green_object():
  """The old green support tint moved a green pixel by 28 RGB units; magenta moves it ~207."""
  grid = visualize.episode_grid(_green_episode(), 0, np.zeros((33, 33), np.float32))
  side = visualize.panel_side(33)
  support = grid[24:24 + side, :side].astype(float)
  scale = side // 33
  masked, plain = support[12 * scale, 12 * scale], support[25 * scale, 25 * scale]
  assert np.linalg.norm(masked - plain) > 150
  # The mask border is outlined in the solid support colour.
  assert tuple(support[5 * scale, 12 * scale]) == visualize.MASK_COLORS['support']


def test_episode_grid_has_a_legend_of_the_mask_colours_and_the_ignore_band():
  names = [name for name, _ in visualize.LEGEND]
  assert names[:3] == ['support mask', 'ground truth', 'prediction']
  assert 'ignore' in names[3] and '255' in names[3]
  grid = visualize.episode_grid(_green_episode(), 0, np.zeros((33, 33), np.float32))
  strip = grid[-28:]                              # below the panels
  for name, color in visualize.LEGEND:
    swatch = np.all(strip == np.asarray(color, np.uint8), axis=-1).sum()
    assert swatch >= visualize.FONT_SIZE ** 2, name


def test_panels_and_titles_are_large_enough_to_read():
  # Small canvases are enlarged by a whole factor to >= 256 px, big ones kept up to 480 px.
  assert [visualize.panel_side(s) for s in (33, 65, 129, 257, 473, 641)] == [
      264, 260, 258, 257, 473, 480]
  left, top, right, bottom = visualize.font().getbbox('Ag')
  assert bottom - top >= 14                       # the old bitmap font: 11 px


def test_class_iou_plot_orders_classes_by_number():
  """results.json keys are strings: sorted as text, '10' came before '2'."""
  ious = {'1': 10.0, '10': 100.0, '11': 110.0, '2': 20.0, '3': 30.0}
  results = {'miou': 54.0, 'class_iou': ious,
             'baselines': {'all_foreground': {'miou': 1.0, 'class_iou': dict(ious)}}}
  fig = visualize.class_iou_figure(results)
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == ['1', '2', '3', '10', '11']
  model_bars = ax.containers[0]
  assert [bar.get_height() for bar in model_bars] == [10.0, 20.0, 30.0, 100.0, 110.0]
  assert visualize.class_order(['b', '10', '2', 'a']) == ['2', '10', 'a', 'b']


def test_training_curves_tell_main_and_aux_apart():
  """main and aux are often close: they differ in colour and line style, and are named."""
  scalars = {t: [(s, 1.0 / s) for s in (1, 2, 3)]
             for t in ('train/loss', 'train/main', 'train/aux', 'train/recon', 'train/lr')}
  fig = visualize.curves_figure(scalars)
  loss_ax = fig.axes[0]
  lines = {line.get_label(): line for line in loss_ax.get_lines()}
  legend = [t.get_text() for t in loss_ax.get_legend().get_texts()]
  assert legend == list(lines)
  main = next(line for label, line in lines.items() if label.startswith('main'))
  aux = next(line for label, line in lines.items() if label.startswith('aux'))
  assert main.get_color() != aux.get_color()
  assert main.get_linestyle() != aux.get_linestyle()
  styles = {(line.get_color(), line.get_linestyle()) for line in lines.values()}
  assert len(styles) == len(lines) == 4           # every loss curve its own look


def test_max_episodes_zero_writes_nothing(tmp_path):
  hook = visualize.EpisodeGrids(str(tmp_path), max_episodes=0)
  hook(_fake_batch(), np.zeros((3, 33, 33), np.float32))
  assert not os.path.exists(tmp_path / 'pictures')


def test_denormalise_inverts_normalise():
  image = np.random.default_rng(1).integers(0, 256, (5, 7, 3)).astype(np.uint8)
  assert np.array_equal(visualize.denormalise(conventions.normalize_image(image.astype(np.float32))),
                        image)


def test_plot_run_reads_scalars_and_results(tmp_path):
  writer = workdir_io.SummaryWriter(str(tmp_path / 'tensorboard'))
  for step in (5, 10, 15):
    writer.scalars(step, {'train/loss': 2.0 / step, 'train/main': 1.0 / step,
                          'train/aux': 0.5 / step, 'train/recon': 0.1, 'train/lr': 0.01 * step})
  writer.scalars(10, {'eval/miou': 20.0, 'eval/fb_iou': 50.0})
  writer.scalars(10, {'eval/miou': 25.0})     # a resumed run re-logs step 10: last one wins
  writer.close()
  scalars = visualize.read_scalars(str(tmp_path / 'tensorboard'))
  assert [s for s, _ in scalars['train/loss']] == [5, 10, 15]
  assert scalars['train/loss'][1][1] == pytest.approx(0.2)
  assert scalars['eval/miou'] == [(10, 25.0)]
  results = {'miou': 30.0, 'fb_iou': 55.0, 'class_iou': {'1': 20.0, '2': 40.0},
             'dataset': 'synthetic', 'fold': 0, 'shots': 1, 'episodes': 40,
             'baselines': {'all_foreground': {'miou': 5.0, 'class_iou': {'1': 4.0, '2': 6.0}}}}
  (tmp_path / 'results.json').write_text(json.dumps(results))
  paths = visualize.plot_run(str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ['training_curves.png', 'class_iou.png']
  for p in paths:
    image = np.asarray(Image.open(p).convert('RGB'))
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert image.std() > 10        # drawn, not blank


def test_plot_run_on_an_empty_workdir_writes_nothing(tmp_path):
  assert visualize.plot_run(str(tmp_path)) == []


def test_grids_through_the_real_evaluator(tmp_path):
  """The hook on Evaluator.evaluate with real synthetic episodes: one PNG per episode."""
  config = synth_1shot.get_config('runlocal')
  config.dataset.data_dir = str(tmp_path / 'tfds')
  config.eval.batch_size = 8
  model = mmnet.build_model(config.model)
  _, test_classes = datasets.fold_classes('synthetic', 0)
  evaluator = evaluate.Evaluator(config, model, evaluate.sharding.make_mesh(), test_classes)
  variables = train_state.init_variables(model, config)
  hook = visualize.EpisodeGrids(str(tmp_path / 'run'), max_episodes=3, step=1)
  summary = evaluator.evaluate(variables, num_episodes=10, on_batch=hook)
  hook.close()
  assert summary['episodes'] == 10
  assert len(hook.paths) == 3
  size = config.eval.size
  side = visualize.panel_side(size)
  assert 256 <= side <= 480
  for p in hook.paths:
    assert np.asarray(Image.open(p)).shape == (24 + side + 28, 4 * (side + 4) - 4, 3)
