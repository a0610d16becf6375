"""Bad input: each case is a clear error or a counted, logged skip (docs/robustness.md)."""

import io
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import synth_1shot
from mmnet_jax import config_checks
from mmnet_jax import train
from mmnet_jax import train_state
from mmnet_jax import workdir_io
from mmnet_jax.data import episodes as ep
from mmnet_jax.data import pipeline
from mmnet_jax.data import streams
from mmnet_jax.models import losses
from mmnet_jax.models import mmnet
from tests.data.test_episodes import make_split
from tests.data.test_pipeline import toy_config, toy_split
from tests.test_determinism import (NUM_STEPS, assert_bitwise_equal, compile_cache,  # noqa: F401
                                    load_state, reference_params, shared_config)


def png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, 'PNG')
  return buf.getvalue()


def decoding_split(samples, num_classes=6):
  """A FewShotSplit over encoded (image bytes, mask bytes) pairs, decoded on load with PIL;
  class_areas from `areas`, so a broken file is only found when decoded."""
  good = toy_split()
  def load(i):
    image, label = samples[i]
    return (np.asarray(Image.open(io.BytesIO(image))), np.asarray(Image.open(io.BytesIO(label))))
  return good.__class__(name='toy', split='train', num_classes=num_classes,
                        image_ids=good.image_ids[:len(samples)],
                        class_areas=good.class_areas[:len(samples)], load=load)


def broken_split(kind):
  """toy_split with images 3 and 7 broken in one way."""
  split = toy_split()
  samples = [split.load(i) for i in range(len(split))]
  encoded = [(png(i), png(l)) for i, l in samples]
  for i in (3, 7):
    image, label = samples[i]
    if kind == 'truncated_image':
      encoded[i] = (encoded[i][0][:len(encoded[i][0]) // 2], encoded[i][1])
    elif kind == 'truncated_mask':
      encoded[i] = (encoded[i][0], encoded[i][1][:40])
    elif kind == 'mask_out_of_range':
      bad = label.copy()
      bad[5, 5] = 17
      encoded[i] = (encoded[i][0], png(bad))
    elif kind == 'size_mismatch':
      encoded[i] = (encoded[i][0], png(label[:-3]))
  return decoding_split(encoded)


@pytest.mark.parametrize('kind, message', [
    ('truncated_image', 'could not be read'),
    ('truncated_mask', 'could not be read'),
    ('mask_out_of_range', r'mask values \[17\] outside 0..6 and 255'),
    ('size_mismatch', 'image is .* but its mask is'),
])
def test_bad_sample_is_an_error_in_eval_and_a_counted_skip_in_training(kind, message):
  split = broken_split(kind)
  with pytest.raises(pipeline.BadSampleError, match=f"image 'img003' .*{message}"):
    pipeline.load_sample(split, 3)
  config = toy_config()
  pool = pipeline.train_pool(split, [1, 2, 3, 4], config)
  # Evaluation: an error naming the image (the benchmark's episode list is fixed).
  eval_list = [ep.Episode(query_index=3, class_id=next(iter(split.class_areas[3])),
                          support_indices=(0, 1))]
  with pytest.raises(pipeline.BadSampleError, match='img003'):
    pipeline.eval_batch(split, eval_list, config, [0])
  # Training: every episode touching 3 or 7 is redrawn, counted, and the stream stays pure.
  skips = pipeline.SkipCounter()
  batches = [pipeline.train_batch(pool, config, step, range(4), skips) for step in range(12)]
  used = np.concatenate([np.concatenate([b['query_index'], b['support_index'].ravel()])
                         for b in batches])
  assert not set(used.tolist()) & {3, 7}
  assert skips.count > 0 and 'img00' in skips.last
  again = pipeline.train_batch(pool, config, 5, range(4))
  assert again['query_img'].tobytes() == batches[5]['query_img'].tobytes()


def test_every_sample_bad_raises_after_the_redraw_limit():
  split = toy_split()
  def load(i):
    raise OSError('disk gone')
  dead = split.__class__(name='toy', split='train', num_classes=6, image_ids=split.image_ids,
                         class_areas=split.class_areas, load=load)
  config = toy_config()
  pool = pipeline.train_pool(dead, [1, 2, 3, 4], config)
  with pytest.raises(pipeline.BadSampleError, match='episodes in a row hit bad samples'):
    pipeline.train_batch(pool, config, 0, [0])


def test_grayscale_rgba_and_cmyk_images_become_rgb():
  rgb = np.zeros((16, 16, 3), np.uint8)
  rgb[:, :8] = (200, 30, 40)
  rgb[:, 8:] = (20, 180, 90)
  # CMYK JPEGs (a few in COCO) go through the builders' TFDS image feature: decoded as RGB.
  from mmnet_jax.data import datasets
  buf = io.BytesIO()
  Image.fromarray(rgb).convert('CMYK').save(buf, 'JPEG', quality=95)
  feature = datasets.fss_features('jpeg')['image']
  decoded = np.asarray(feature.decode_example(buf.getvalue()))
  assert decoded.shape == (16, 16, 3)
  assert np.abs(decoded.astype(int) - rgb).max() <= 8   # JPEG loss only
  # Grayscale and RGBA arrays (PNG decoders) are accepted by the pipeline.
  gray = rgb[:, :, 0]
  rgba = np.concatenate([rgb, np.full((16, 16, 1), 7, np.uint8)], axis=2)
  label = np.zeros((16, 16), np.uint8)
  label[4:12, 4:12] = 1
  split = make_split([(gray, label), (rgba, label), (rgb, label)], num_classes=2)
  for i in range(3):
    image, _ = pipeline.load_sample(split, i)
    out, _, _ = pipeline.augment.eval_resize(image, ep.binarise(label, 1), 17)
    assert out.shape == (17, 17, 3) and np.isfinite(out).all()


def test_empty_support_foreground_gives_finite_loss_and_gradients(compile_cache):
  config = shared_config()   # its init is in the compile cache of the training tests
  model = mmnet.build_model(config.model)
  state, tx = train_state.create_state(model, config, total_steps=10)
  rng = np.random.default_rng(0)
  query_label = (rng.random((2, 33, 33)) < 0.3).astype(np.int32)
  for support_value in (0, 255):   # all background; all ignore (e.g. cropped-out borders)
    batch = {'query_img': jnp.asarray(rng.normal(size=(2, 33, 33, 3)), jnp.float32),
             'query_label': jnp.asarray(query_label),
             'support_imgs': jnp.asarray(rng.normal(size=(2, 1, 33, 33, 3)), jnp.float32),
             'support_labels': jnp.full((2, 1, 33, 33), support_value, jnp.int32)}

    def loss_fn(params):
      outputs, _ = model.apply({'params': params, 'batch_stats': state['batch_stats']},
                               batch['query_img'], batch['support_imgs'],
                               train_state.support_masks(batch), train=True,
                               rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])
      return losses.mmnet_loss(outputs, batch['query_label'])[0]

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(state['params'])
    assert np.isfinite(float(loss))
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))


def test_config_errors_name_the_field_and_the_expected_value():
  config = synth_1shot.get_config('runlocal')
  assert config_checks.problems(config, num_devices=4) == []
  config.train.crop_size = 64
  config.eval.size = 100
  config.shots = 0
  config.dataset.fold = 4
  config.model.backbone = 'resnet18'
  config.train.batch_size = 6
  config.train.num_stepz = 3
  with pytest.raises(config_checks.ConfigError) as info:
    config_checks.check_config(config, num_devices=4)
  text = str(info.value)
  for expected in ('train.crop_size: got 64, expected 8k + 1', 'eval.size: got 100',
                   'shots: got 0, expected an int >= 1', 'dataset.fold: got 4, expected an int '
                   'in [0, 4)', "model.backbone: got 'resnet18'", 'train.batch_size: got 6, '
                   'expected a multiple of the 4 devices', 'train.num_stepz: unknown key'):
    assert expected in text, text


@pytest.mark.parametrize('name', ['default', 'synth_1shot', 'synth_5shot', 'pascal_1shot',
                                  'pascal_5shot', 'coco_1shot', 'coco_5shot',
                                  'pfenet.synth_1shot', 'pfenet.pascal_1shot',
                                  'pfenet.pascal_5shot', 'pfenet.coco_1shot',
                                  'pfenet.coco_5shot', 'hsnet.synth_1shot',
                                  'hsnet.pascal_1shot', 'hsnet.pascal_5shot',
                                  'hsnet.coco_1shot', 'hsnet.coco_5shot'])
def test_shipped_configs_pass_the_checks(name):
  import importlib
  module = importlib.import_module(f'configs.{name}')
  for arg in (None, 'runlocal'):
    assert config_checks.problems(module.get_config(arg)) == []


@pytest.mark.parametrize('name', ['coco_1shot', 'coco_5shot', 'pfenet.coco_1shot',
                                  'pfenet.coco_5shot'])
def test_coco_configs_follow_the_originals_yaml(name):
  """MM-Net's and PFENet's config/coco/coco_split0_resnet101.yaml: fractional FEM bins (the
  MM-Net COCO configs had PASCAL's 60/30/15/8), 641 crops, batch 32, lr 0.02, 50 epochs."""
  import importlib
  c = importlib.import_module(f'configs.{name}').get_config()
  assert c.model.name == ('pfenet' if name.startswith('pfenet') else 'mmnet')
  assert c.model.ppm_scales == (1.0, 0.5, 0.25, 0.125)
  assert (c.model.backbone, c.train.crop_size, c.train.batch_size, c.train.base_lr,
          c.train.epochs, c.train.scale_min, c.train.scale_max) == (
              'resnet101', 641, 32, 0.02, 50, 0.8, 1.25)
  assert c.shots == (5 if '5shot' in name else 1)


@pytest.mark.parametrize('name', ['hsnet.pascal_1shot', 'hsnet.pascal_5shot', 'hsnet.coco_1shot',
                                  'hsnet.coco_5shot'])
def test_hsnet_configs_follow_its_train_py_and_readme(name):
  """HSNet's README / train.py: Adam lr 1e-3 (constant), batch 20 (PASCAL) / 40 (COCO),
  400x400 stretched inputs without augmentation, niter 2000; its protocol at 400."""
  import importlib
  from mmnet_jax import protocols
  c = importlib.import_module(f'configs.{name}').get_config()
  coco = 'coco' in name
  assert c.model.name == 'hsnet' and c.dataset.name == ('coco' if coco else 'pascal')
  assert (c.model.backbone, c.train.batch_size) == (('resnet101_tv', 40) if coco
                                                    else ('resnet50_tv', 20))
  assert (c.train.optimizer, c.train.lr_schedule, c.train.base_lr * c.train.lr_multiplier,
          c.train.weight_decay, c.train.augment, c.train.crop_size, c.train.epochs) == (
              'adam', 'constant', 1e-3, 0.0, 'stretch', 400, 2000)
  r = protocols.resolve(c)
  assert (r.protocol, r.input_size, r.num_episodes, r.seeds) == ('hsnet', 400, 1000, (0,))
  assert c.shots == (5 if '5shot' in name else 1)


def test_train_refuses_a_bad_config_before_touching_the_workdir(tmp_path):
  config = shared_config()
  config.train.crop_size = 32
  with pytest.raises(config_checks.ConfigError, match='train.crop_size: got 32'):
    train.train(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')


HOLD_LOCK = '''
import sys, time
from mmnet_jax import workdir_io
lock = workdir_io.WorkdirLock(sys.argv[1]); lock.acquire()
print('locked', flush=True); time.sleep(120)
'''


def test_workdir_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path, caplog):
  workdir = str(tmp_path)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, workdir], cwd=root,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(workdir_io.WorkdirInUseError,
                       match=f'in use by pid {holder.pid} on host {socket.gethostname()!r}'):
      workdir_io.WorkdirLock(workdir).acquire()
  finally:
    holder.kill()   # like SIGKILL of a run: the lock file stays, naming a dead pid
    holder.wait()
  path = os.path.join(workdir, workdir_io.LOCK_FILE)
  assert json.load(open(path))['pid'] == holder.pid
  with caplog.at_level('WARNING'):
    with workdir_io.WorkdirLock(workdir):
      assert json.load(open(path))['pid'] == os.getpid()
      with pytest.raises(workdir_io.WorkdirInUseError):   # a second run in this process too
        workdir_io.WorkdirLock(workdir).acquire()
  assert f'stale lock {path} of pid {holder.pid}' in caplog.text
  assert not os.path.exists(path)   # released: no empty run.lock left


def test_non_finite_step_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path, compile_cache, monkeypatch):
  reference = reference_params()
  config = shared_config()
  workdir = str(tmp_path / 'run')
  real = streams.train_dataset

  class Poisoned:
    """The real stream, with a NaN image in the batch of step 4 (the 5th, 1-based 5)."""

    def __init__(self, stream, start):
      self.stream, self.step, self.skips = stream, start, stream.skips

    def __next__(self):
      batch = next(self.stream)
      if self.step == 4:
        batch = dict(batch, query_img=batch['query_img'].copy())
        batch['query_img'][0, 0, 0, 0] = np.nan
      self.step += 1
      return batch

    def close(self):
      self.stream.close()

  def poisoned(pool, cfg, start_step=0, **kwargs):
    return Poisoned(real(pool, cfg, start_step=start_step, **kwargs), start_step)

  monkeypatch.setattr(streams, 'train_dataset', poisoned)
  with pytest.raises(FloatingPointError, match=r'non-finite loss or gradient at step 5 .*'
                     r'last good checkpoint \(step 4\)'):
    train.train(config, workdir)
  monkeypatch.setattr(streams, 'train_dataset', real)
  state, meta = load_state(config, workdir)
  assert meta['step'] == 4 and int(state['step']) == 4
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state))
  # The kept checkpoint is the true step-4 state: resuming from it gives the reference run.
  assert train.train(config, workdir)['step'] == NUM_STEPS
  assert_bitwise_equal(load_state(config, workdir)[0], reference)


def test_checkpoint_of_another_config_is_refused(tmp_path, compile_cache):
  reference_params()   # makes sure the shared reference workdir exists
  from tests.test_determinism import _shared_data_dir
  workdir = os.path.join(_shared_data_dir(), 'reference_run')
  other_fold = shared_config()
  other_fold.dataset.fold = 1
  with pytest.raises(ValueError, match=r"another model or config \(fold: checkpoint 0 vs "
                     r"config 1\)"):
    train.train(other_fold, workdir)
  other_model = shared_config()
  other_model.model.reduce_dim = 48
  with pytest.raises(ValueError, match='another model or config'):
    train.train(other_model, workdir)
