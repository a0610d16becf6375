"""The graph pipeline (dataset.pipeline='graph'): same episodes as the numpy pipeline, eval
batches equal to it, augmentations equal to tf_augment's on the same seeds, resume and
multi-process rows, the bad-sample redraw, and no Python callbacks on the per-image path."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mmnet_jax.data import datasets
from mmnet_jax.data import episodes as ep
from mmnet_jax.data import graph_pipeline as gp
from mmnet_jax.data import pipeline
from mmnet_jax.data import streams
from mmnet_jax.data import tf_augment
from tests.data.test_pipeline import assert_same
from tests.data.test_pipeline import toy_config
from tests.data.test_pipeline import toy_split


def encode(array, fmt):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt, **({'quality': 90} if fmt == 'JPEG' else {}))
  return buffer.getvalue()


def example(image: bytes, label: bytes) -> bytes:
  """A record as TFDS stores it: a serialized tf.train.Example with the encoded files."""
  feature = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
  return tf.train.Example(features=tf.train.Features(feature={
      'image': feature(image), 'label': feature(label),
      'image_id': feature(b'x')})).SerializeToString()


def stored_split(n=24, seed=0, corrupt=(), records=True):
  """toy_split's images stored as the TFDS builders store them: JPEG images (some grayscale)
  and PNG labels in tf.train.Example records (`records`; else only the encoded files),
  decoded by PIL for the numpy pipeline; images in `corrupt` are truncated."""
  toy = toy_split(n, seed)
  files = []
  for i in range(n):
    image, label = toy.load(i)
    data = encode(image, 'JPEG')
    files.append((data[:len(data) // 2] if i in corrupt else data, encode(label, 'PNG')))

  def load(i):
    image = np.asarray(Image.open(io.BytesIO(files[i][0])))
    if image.ndim == 2:
      image = np.repeat(image[:, :, None], 3, axis=2)
    return image, np.asarray(Image.open(io.BytesIO(files[i][1])))
  stored = [example(*r) for r in files] if records else None
  return datasets.FewShotSplit(name=toy.name, split=toy.split, num_classes=toy.num_classes,
                               image_ids=toy.image_ids, class_areas=toy.class_areas, load=load,
                               load_encoded=lambda i: files[i],
                               load_record=stored.__getitem__ if records else None)


def graph_config(shots=2):
  c = toy_config(shots)
  c.dataset.pipeline = 'graph'
  return c


@pytest.fixture(scope='module')
def setup():
  split = stored_split()
  config = graph_config()
  return split, config, pipeline.train_pool(split, [1, 2, 3, 4], config)


def test_same_episodes_as_numpy_and_augmentation_of_tf_augment(setup):
  split, config, pool = setup
  batch = next(streams.train_dataset(pool, config, start_step=3, host_batch_size=4))
  numpy_config = toy_config()
  reference = pipeline.train_batch(pool, numpy_config, 3, range(4))
  for key in ('class_id', 'query_index', 'support_index'):
    np.testing.assert_array_equal(batch[key], reference[key])
  assert batch['query_img'].dtype == np.float32 and batch['query_label'].dtype == np.int32
  assert batch['support_imgs'].shape == (4, 2, 33, 33, 3)
  t = config.train
  for row in range(4):
    words = [config.seed, 3, row]
    slots = [(batch['query_index'][row], batch['query_img'][row], batch['query_label'][row])]
    slots += [(batch['support_index'][row, j], batch['support_imgs'][row, j],
               batch['support_labels'][row, j]) for j in range(2)]
    for slot, (index, image, label) in enumerate(slots):
      raw, raw_label = split.load_encoded(int(index))
      decoded = tf.io.decode_jpeg(raw, channels=3, dct_method='INTEGER_ACCURATE')
      binary = ep.binarise(np.asarray(Image.open(io.BytesIO(raw_label))), batch['class_id'][row])
      want = tf_augment.train_transform(
          decoded, binary, gp.slot_seed(words, 1 + slot), crop_size=33, scale_min=t.scale_min,
          scale_max=t.scale_max, rotate_deg=t.rotate_deg)
      np.testing.assert_array_equal(image, want[0])
      np.testing.assert_array_equal(label, want[1])
      assert set(np.unique(label)) <= {0, 1, 255}


def test_jpeg_decode_equals_pil(setup):
  split, _, _ = setup
  for i in range(len(split)):
    raw, raw_label = split.load_encoded(i)
    image, label = split.load(i)
    for decoded in (gp.decode_checked(tf.constant(raw), tf.constant(raw_label), 6),
                    gp.decode_checked(tf.constant(split.load_record(i)), tf.constant(b''), 6,
                                      records=True)):
      np.testing.assert_array_equal(decoded[0].numpy(), image)
      np.testing.assert_array_equal(decoded[1].numpy(), label)


def test_encoded_files_without_records_give_the_same_batches(setup):
  _, config, pool = setup
  files_only = stored_split(records=False)
  other = pipeline.train_pool(files_only, [1, 2, 3, 4], config)
  assert_same(next(streams.train_dataset(other, config, 2, 4)),
              next(streams.train_dataset(pool, config, 2, 4)))


def test_deterministic_resume_and_process_rows(setup):
  _, config, pool = setup
  stream = list(streams.train_dataset(pool, config, 0, 4, num_steps=4))
  assert len(stream) == 4
  again = list(streams.train_dataset(pool, config, 0, 4, num_steps=4))
  for a, b in zip(stream, again):
    assert_same(a, b)
  resumed = next(streams.train_dataset(pool, config, start_step=2, host_batch_size=4))
  assert_same(resumed, stream[2])
  parts = [next(streams.train_dataset(pool, config, 3, 2, process_index=p, process_count=2))
           for p in range(2)]
  for key in stream[3]:
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), stream[3][key])


def test_in_memory_split_is_encoded_on_the_fly():
  split = toy_split()   # no load_encoded: PNG-encoded in the per-step call, lossless
  config = graph_config()
  pool = pipeline.train_pool(split, [1, 2, 3, 4], config)
  batch = next(streams.train_dataset(pool, config, 0, 4))
  reference = pipeline.train_batch(pool, toy_config(), 0, range(4))
  np.testing.assert_array_equal(batch['query_index'], reference['query_index'])
  # stretch (no random draws) is the same function in both pipelines
  config.train.augment = 'stretch'
  numpy_config = toy_config()
  numpy_config.train.augment = 'stretch'
  batch = next(streams.train_dataset(pool, config, 0, 4))
  reference = pipeline.train_batch(pool, numpy_config, 0, range(4))
  assert batch.keys() == reference.keys()
  for key in batch:
    np.testing.assert_allclose(batch[key], reference[key], atol=1e-6, err_msg=key)


@pytest.mark.parametrize('fill, mode', [('black', 'resize'), ('mean', 'test_resize')])
def test_eval_batches_equal_numpy(setup, fill, mode):
  split, config, _ = setup
  val_pool = pipeline.train_pool(split, [5, 6, 1], config)
  episodes = ep.eval_episodes(val_pool, 2, 10, 321)
  config = graph_config()
  config.eval.pad_fill, config.eval.resize = fill, mode
  numpy_config = toy_config()
  numpy_config.eval.pad_fill, numpy_config.eval.resize = fill, mode
  for rows, p in ((4, 0), (2, 1)):
    graph = list(streams.eval_dataset(split, episodes, config, rows, p, 4 // rows))
    numpy = list(streams.eval_dataset(split, episodes, numpy_config, rows, p, 4 // rows))
    assert len(graph) == len(numpy) == 3
    for a, b in zip(graph, numpy):
      assert_same(a, b)
  assert not graph[-1]['valid'][-1]


def test_bad_sample_redrawn_as_numpy_and_other_rows_unchanged():
  clean = stored_split()
  config = graph_config()
  pool = pipeline.train_pool(clean, [1, 2, 3, 4], config)
  steps = list(streams.train_dataset(pool, config, 0, 4, num_steps=6))
  used = {int(i) for b in steps for i in np.concatenate([b['query_index'],
                                                         b['support_index'].ravel()])}
  bad = sorted(used)[len(used) // 2]
  broken = stored_split(corrupt={bad})   # a record whose JPEG is truncated
  bad_pool = pipeline.train_pool(broken, [1, 2, 3, 4], config)
  stream = streams.train_dataset(bad_pool, config, 0, 4, num_steps=6)
  got = list(stream)
  numpy_skips = pipeline.SkipCounter()
  hit = 0
  for step, (a, b) in enumerate(zip(got, steps)):
    reference = pipeline.train_batch(bad_pool, toy_config(), step, range(4), numpy_skips)
    for key in ('class_id', 'query_index', 'support_index'):
      np.testing.assert_array_equal(a[key], reference[key])
    for row in range(4):
      touched = bad in [int(b['query_index'][row])] + b['support_index'][row].tolist()
      hit += touched
      if not touched:   # rows of a rebuilt step equal the fast path's numbers
        for key in a:
          np.testing.assert_array_equal(a[key][row], b[key][row], err_msg=key)
  assert hit > 0 and stream.skips.count == numpy_skips.count >= hit
  assert repr(broken.image_ids[bad]) in stream.skips.last


def test_eval_bad_sample_names_the_image(setup):
  split, config, _ = setup
  broken = stored_split(corrupt={3})
  episodes = [ep.Episode(3, 1, (0, 1))]
  with pytest.raises(pipeline.BadSampleError, match="img003"):
    list(streams.eval_dataset(broken, episodes, config, 4))
  big = graph_config()
  big.eval.max_label_size = 8
  with pytest.raises(ValueError, match='max_label_size=8'):
    list(streams.eval_dataset(split, [ep.Episode(0, 1, (1, 2))], big, 4))


def test_per_image_graphs_have_no_python_callbacks(setup):
  split, config, _ = setup
  spec = [tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string),
          tf.TensorSpec([], tf.int32)]
  train = tf.function(gp.train_image_fn(config, split.num_classes)).get_concrete_function(
      *spec, tf.TensorSpec([2], tf.int64))
  evaluate = tf.function(gp.eval_image_fn(config, split.num_classes)).get_concrete_function(*spec)
  for graph in (train.graph, evaluate.graph):
    graph_def = graph.as_graph_def()
    types = {n.op for n in graph_def.node}
    types |= {n.op for f in graph_def.library.function for n in f.node_def}
    assert 'DecodeJpeg' in types or 'DecodeImage' in types
    assert not types & {'PyFunc', 'PyFuncStateless', 'EagerPyFunc'}, types


def test_unknown_pipeline_is_named():
  config = graph_config()
  config.dataset.pipeline = 'torch'
  with pytest.raises(ValueError, match="dataset.pipeline='torch'"):
    streams.pipeline_kind(config)
