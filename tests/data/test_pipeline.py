"""tf.data pipelines: batch contents, determinism, resume, multi-process rows, eval padding."""

import itertools
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from mmnet_jax.data import episodes as ep
from mmnet_jax.data import pipeline
from tests.data.test_episodes import make_split

TRAIN_KEYS = {'query_img', 'query_label', 'support_imgs', 'support_labels', 'class_id',
              'query_index', 'support_index'}
EVAL_KEYS = TRAIN_KEYS | {'eval_label', 'eval_label_size', 'eval_label_crop', 'valid'}


def toy_split(n=24, seed=0):
  """Images of random sizes (some grayscale) with one or two class blocks of 1..4 and 255 edges."""
  rng = np.random.default_rng(seed)
  samples = []
  for i in range(n):
    h, w = rng.integers(30, 60, size=2)
    image = rng.integers(0, 256, (h, w, 3) if i % 5 else (h, w)).astype(np.uint8)
    label = np.zeros((h, w), np.uint8)
    for c in rng.choice(4, size=rng.integers(1, 3), replace=False) + 1:
      y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
      label[y:y + h // 2, x:x + w // 2] = c
    label[0] = 255
    samples.append((image, label))
  return make_split(samples, num_classes=6)


def toy_config(shots=2):
  c = ml_collections.ConfigDict()
  c.seed = 5
  c.shots = shots
  c.train = ml_collections.ConfigDict(dict(batch_size=4, crop_size=33, scale_min=0.9,
                                           scale_max=1.1, rotate_deg=10.0, num_steps=0))
  c.eval = ml_collections.ConfigDict(dict(size=41, batch_size=4, max_label_size=64,
                                          num_episodes=10, seed=321))
  c.dataset = ml_collections.ConfigDict(dict(min_class_pixels=100, filter_intersection=False))
  return c


@pytest.fixture(scope='module')
def setup():
  split = toy_split()
  config = toy_config()
  return split, config, pipeline.train_pool(split, [1, 2, 3, 4], config)


def assert_same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key


def test_train_batch_contents(setup):
  split, config, pool = setup
  batch = pipeline.train_batch(pool, config, 3, range(4))
  assert set(batch) == TRAIN_KEYS
  assert batch['query_img'].shape == (4, 33, 33, 3) and batch['query_img'].dtype == np.float32
  assert batch['support_labels'].shape == (4, 2, 33, 33)
  assert batch['query_label'].dtype == np.int32 and batch['class_id'].dtype == np.int32
  assert set(np.unique(batch['support_labels'])) <= {0, 1, 255}
  assert np.isfinite(batch['support_imgs']).all()
  for r in range(4):
    e = ep.train_episode(pool, config.seed, 3, r, 4, 2)
    assert batch['class_id'][r] == e.class_id and batch['query_index'][r] == e.query_index
    assert tuple(batch['support_index'][r]) == e.support_indices
    assert e.query_index not in e.support_indices


def test_stretch_augment_is_hsnets_resize_of_each_image(setup):
  """train.augment='stretch' (HSNet): every image and binarised label stretched to crop_size,
  no random draw; the episodes are the same as with PFENet's augmentation."""
  from mmnet_jax.data import augment  # pylint: disable=g-import-not-at-top
  split, config, pool = setup
  c = config.copy_and_resolve_references()
  c.train.augment = 'stretch'
  batch = pipeline.train_batch(pool, c, 3, range(4))
  plain = pipeline.train_batch(pool, config, 3, range(4))
  for r in range(4):
    e = ep.train_episode(pool, c.seed, 3, r, 4, 2)
    assert batch['query_index'][r] == plain['query_index'][r] == e.query_index
    image, label = pipeline.load_sample(split, e.query_index)
    want_img, want_lbl = augment.stretch(image, ep.binarise(label, e.class_id), 33)
    np.testing.assert_array_equal(batch['query_img'][r], want_img)
    np.testing.assert_array_equal(batch['query_label'][r], want_lbl)
    image, label = pipeline.load_sample(split, e.support_indices[1])
    want_img, _ = augment.stretch(image, ep.binarise(label, e.class_id), 33)
    np.testing.assert_array_equal(batch['support_imgs'][r, 1], want_img)
  assert not np.array_equal(batch['query_img'], plain['query_img'])
  c.train.augment = 'cutmix'
  with pytest.raises(ValueError, match='config.train.augment'):
    pipeline.train_batch(pool, c, 3, range(1))


def test_train_stream_is_deterministic_and_resumable(setup):
  split, config, pool = setup
  stream = list(itertools.islice(pipeline.train_dataset(pool, config, 0, 4), 4))
  for step, batch in enumerate(stream):
    assert_same(batch, pipeline.train_batch(pool, config, step, range(4)))
  resumed = next(pipeline.train_dataset(pool, config, start_step=2, host_batch_size=4))
  assert_same(resumed, stream[2])
  assert stream[0]['query_img'].tobytes() != stream[1]['query_img'].tobytes()
  bounded = list(pipeline.train_dataset(pool, config, 1, 4, num_steps=3))
  assert len(bounded) == 2


def test_multi_process_rows_union_is_global_batch(setup):
  split, config, pool = setup
  whole = next(pipeline.train_dataset(pool, config, 6, 4))
  parts = [next(pipeline.train_dataset(pool, config, 6, 2, process_index=p, process_count=2))
           for p in range(2)]
  assert_same({k: np.concatenate([p[k] for p in parts]) for k in whole}, whole)
  with pytest.raises(ValueError, match='train.batch_size=4 must equal host_batch_size'):
    pipeline.train_dataset(pool, config, 0, 3, process_count=2)


def test_eval_dataset_pads_last_batch(setup):
  split, config, _ = setup
  pool = ep.build_pool(split, [1, 2, 3, 4], min_class_pixels=100)
  episodes = ep.eval_episodes(pool, 2, 10, seed=config.eval.seed)
  batches = list(pipeline.eval_dataset(split, episodes, config, host_batch_size=4))
  assert len(batches) == 3 and set(batches[0]) == EVAL_KEYS
  assert batches[2]['valid'].tolist() == [True, True, False, False]
  assert all(b['valid'].all() for b in batches[:2])
  flat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  assert flat['query_index'][:10].tolist() == [e.query_index for e in episodes]
  for i, e in enumerate(episodes):
    image, label = split.load(e.query_index)
    h, w = label.shape
    side = flat['eval_label_size'][i]
    assert side == max(h, w)
    np.testing.assert_array_equal(flat['eval_label'][i, :h, :w], ep.binarise(label, e.class_id))
    assert (flat['eval_label'][i, side:] == 255).all() and (flat['eval_label'][i, :, w:] == 255).all()
  assert flat['query_img'].shape == (12, 41, 41, 3) and flat['eval_label'].dtype == np.uint8
  # Two processes: each builds its half of every global batch.
  halves = [list(pipeline.eval_dataset(split, episodes, config, 2, p, 2)) for p in range(2)]
  for n in range(3):
    joined = {k: np.concatenate([halves[0][n][k], halves[1][n][k]]) for k in batches[n]}
    assert_same(joined, batches[n])


def test_eval_label_larger_than_max_raises(setup):
  split, config, _ = setup
  pool = ep.build_pool(split, [1, 2, 3, 4], min_class_pixels=100)
  episodes = ep.eval_episodes(pool, 2, 2, seed=0)
  small = toy_config()
  small.eval.max_label_size = 20
  with pytest.raises(ValueError, match='eval.max_label_size=20 must be >='):
    pipeline.eval_batch(split, episodes, small, [0])


def test_open_stream_does_not_hang_interpreter_exit():
  # Without the atexit close, a tf.data iterator with numpy_function work in flight at exit
  # deadlocks the interpreter (seen with an endless stream after a few batches).
  code = ('from tests.data.test_pipeline import toy_split, toy_config\n'
          'from mmnet_jax.data import pipeline\n'
          'split, c = toy_split(), toy_config()\n'
          'stream = pipeline.train_dataset(pipeline.train_pool(split, [1, 2, 3, 4], c), c, 0, 4)\n'
          'next(stream)\n'
          'print("done")\n')
  root = pathlib.Path(__file__).resolve().parents[2]
  proc = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True,
                        timeout=90)
  assert proc.returncode == 0 and 'done' in proc.stdout, proc.stderr[-2000:]


def test_stream_with_a_bad_image_is_deterministic_resumable_and_counts_skips(setup):
  split, config, _ = setup
  def load(i):
    if i == 2:
      raise OSError('truncated file')
    return split.load(i)
  bad = split.__class__(name=split.name, split=split.split, num_classes=split.num_classes,
                        image_ids=split.image_ids, class_areas=split.class_areas, load=load)
  pool = pipeline.train_pool(bad, [1, 2, 3, 4], config)
  stream = pipeline.train_dataset(pool, config, 0, 4, num_steps=6)
  batches = list(stream)
  assert stream.skips.count > 0 and "'img002'" in stream.skips.last
  used = {int(i) for b in batches for i in np.concatenate([b['query_index'],
                                                           b['support_index'].ravel()])}
  assert 2 not in used
  resumed = next(pipeline.train_dataset(pool, config, 3, 4, num_steps=6))
  assert_same(resumed, batches[3])
  with pytest.raises(pipeline.BadSampleError, match="image 'img002'"):
    pipeline.load_sample(bad, 2)
