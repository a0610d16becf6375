"""The episodic pipelines with decode and augmentation inside the tf.data graph
(config.dataset.pipeline = 'graph'; pipeline.py dispatches here).

Per step (or eval batch) one small Python call (`tf.numpy_function`) picks the episodes, exactly
as pipeline.py does (`episodes.train_episode`, the eval list), and reads the stored records of
their images (`FewShotSplit.load_record`: the serialized tf.train.Example bytes, no Python
parsing); everything per image after that (record parsing, PNG/JPEG decode, the mask checks of
pipeline.load_sample, binarising, tf_augment's transforms) is TensorFlow ops run by a parallel
`map` in TensorFlow's C++ thread pool, which does not hold the GIL. Splits without records
(in-memory test splits) pass encoded (image, label) bytes instead (`load_encoded`), or are
PNG-encoded in that call.

Randomness: the augmentation of image slot j (query 1, support k 2 + k, as pipeline.py) of the
episode with rng words w (pipeline._episode) is drawn by stateless ops from the seed
SeedSequence(w + [j]).generate_state(2): a pure function of (seed, step, row), so resume and
multi-process sharding behave as pipeline.py. The draws differ from the numpy pipeline's
(the distributions are the same), so the two pipelines give different training streams; the
eval batches are the same numbers (tests/data/test_graph_pipeline.py).

Bad samples: a failed decode or check makes its step's batch fail inside tf.data. The stream then
rebuilds that one step row by row with the same per-image graph function (so the numbers equal
what the fast path would have given), redrawing an episode that hits a bad sample exactly as
pipeline.train_batch does (counted in `skips`, same rng words), and restarts the tf.data
pipeline after it. In evaluation the batch is rebuilt by pipeline.eval_batch, whose error names
the image.
"""

from __future__ import annotations

import io
import logging
from typing import Sequence

import numpy as np

from mmnet_jax import conventions
from mmnet_jax.data import augment
from mmnet_jax.data import episodes as episodes_lib
from mmnet_jax.data import pipeline


def _png(array: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG', compress_level=0)
  return buffer.getvalue()


def encoded_sample(split, index: int) -> tuple[bytes, bytes]:
  """(image bytes, label bytes) of split image `index`; raises BadSampleError naming it."""
  loader = getattr(split, 'load_encoded', None)
  if loader is not None:
    try:
      return loader(index)
    except Exception as e:  # a damaged record: counted and redrawn like a bad image
      where = f'image {split.image_ids[index]!r} (index {index}) of {split.name}/{split.split}'
      raise pipeline.BadSampleError(f'{where} could not be read: {type(e).__name__}: {e}') from e
  image, label = pipeline.load_sample(split, index)
  if image.dtype != np.uint8:
    where = f'image {split.image_ids[index]!r} (index {index}) of {split.name}/{split.split}'
    raise pipeline.BadSampleError(f'{where}: image dtype {image.dtype}; the graph pipeline '
                                  'decodes uint8 images (use dataset.pipeline="numpy")')
  return _png(image), _png(label)


def sample_inputs(split, index: int) -> tuple[bytes, bytes]:
  """The two strings the per-image graph takes for split image `index`: (stored record, b'')
  when the split has records (parsed in the graph: the cheapest Python), else the encoded
  (image, label) bytes."""
  loader = getattr(split, 'load_record', None)
  if loader is None:
    return encoded_sample(split, index)
  try:
    return loader(index), b''
  except Exception as e:  # a damaged record: counted and redrawn like a bad image
    where = f'image {split.image_ids[index]!r} (index {index}) of {split.name}/{split.split}'
    raise pipeline.BadSampleError(f'{where} could not be read: {type(e).__name__}: {e}') from e


def has_records(split) -> bool:
  return getattr(split, 'load_record', None) is not None


def slot_seed(words: Sequence[int], slot: int) -> np.ndarray:
  """The stateless seed (2,) int64 of image slot `slot` of the episode with rng words `words`."""
  state = np.random.SeedSequence([int(w) for w in words] + [int(slot)]).generate_state(2)
  return state.astype(np.int64)


# --- graph side -----------------------------------------------------------------------------

def _decode_image(data):
  tf = pipeline.tf_module()
  # JPEG with the accurate integer DCT, as libjpeg's default that PIL (the numpy path) uses.
  return tf.cond(tf.io.is_jpeg(data),
                 lambda: tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE'),
                 lambda: tf.io.decode_image(data, channels=0, expand_animations=False))


def _parse_record(record):
  tf = pipeline.tf_module()
  features = tf.io.parse_single_example(record, {
      'image': tf.io.FixedLenFeature([], tf.string),
      'label': tf.io.FixedLenFeature([], tf.string)})
  return features['image'], features['label']


def decode_checked(image_bytes, label_bytes, num_classes: int, records: bool = False):
  """Decoded (image (h, w, C) uint8, label (h, w) uint8) with pipeline.load_sample's checks
  as assertions (a failing one raises InvalidArgumentError inside tf.data). With `records`,
  `image_bytes` is a stored record (`sample_inputs`) and `label_bytes` is ignored."""
  tf = pipeline.tf_module()
  if records:
    image_bytes, label_bytes = _parse_record(image_bytes)
  image = _decode_image(image_bytes)
  label = tf.io.decode_image(label_bytes, channels=1, expand_animations=False)[:, :, 0]
  label = tf.cast(label, tf.uint8)
  same = tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.shape(label)))
  bad = (label > num_classes) & (label != conventions.IGNORE_LABEL)
  checks = [
      tf.debugging.Assert(same, ['image and mask sizes differ:', tf.shape(image),
                                 tf.shape(label)]),
      tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)),
                          [f'mask values outside 0..{num_classes} and '
                           f'{conventions.IGNORE_LABEL}']),
  ]
  with tf.control_dependencies(checks):
    return tf.identity(image), tf.identity(label)


def binarise(label, class_id):
  """episodes.binarise in graph ops."""
  tf = pipeline.tf_module()
  ignore = tf.constant(conventions.IGNORE_LABEL, tf.uint8)
  out = tf.cast(tf.equal(label, tf.cast(class_id, tf.uint8)), tf.uint8)
  return tf.where(tf.equal(label, ignore), ignore, out)


def _train_transform(train_config):
  """(image, label, seed) -> (image, label) of config.train.augment, in graph ops."""
  from mmnet_jax.data import tf_augment  # pylint: disable=g-import-not-at-top
  t, size = train_config, int(train_config.crop_size)
  kind = t.get('augment', 'pfenet')
  if kind == 'stretch':
    return lambda image, label, seed: tf_augment.stretch(image, label, size)
  if kind != 'pfenet':
    raise ValueError(f'config.train.augment={kind!r}; expected one of '
                     f'{list(augment.TRAIN_AUGMENTS)}')
  kwargs = dict(crop_size=size, scale_min=float(t.scale_min), scale_max=float(t.scale_max),
                rotate_deg=float(t.rotate_deg))
  return lambda image, label, seed: tf_augment.train_transform(image, label, seed, **kwargs)


def train_image_fn(config, num_classes: int, records: bool = False):
  """(the two strings of `sample_inputs`, class id, seed) -> augmented (image, label int32)."""
  tf = pipeline.tf_module()
  transform = _train_transform(config.train)

  def fn(image_bytes, label_bytes, class_id, seed):
    image, label = decode_checked(image_bytes, label_bytes, num_classes, records)
    image, label = transform(image, binarise(label, class_id), seed)
    return image, tf.cast(label, tf.int32)
  return fn


# --- training -------------------------------------------------------------------------------

def _row_inputs(pool, ep, words):
  """The encoded images, indices and seeds of one episode's slots (query, supports)."""
  indices = [ep.query_index] + list(ep.support_indices)
  encoded = [sample_inputs(pool.split, i) for i in indices]
  seeds = [slot_seed(words, 1 + j) for j in range(len(indices))]
  return indices, encoded, seeds


def step_slots(pool, config, step: int, rows: Sequence[int]):
  """The image slots of a step's regular draws (attempt 0), row-major (query, supports):
  (image index int32, class id int32, seed (n, 2) int64) of n = rows x (K + 1)."""
  seed, shots, batch = int(config.seed), int(config.shots), int(config.train.batch_size)
  index, classes, seeds = [], [], []
  for row in rows:
    ep, words = pipeline._episode(pool, seed, step, row, batch, shots, 0)  # pylint: disable=protected-access
    slots = [ep.query_index] + list(ep.support_indices)
    index.extend(slots)
    classes.extend([ep.class_id] * len(slots))
    seeds.extend(slot_seed(words, 1 + j) for j in range(len(slots)))
  return np.array(index, np.int32), np.array(classes, np.int32), np.stack(seeds)


def train_step_inputs(pool, config, step: int, rows: Sequence[int]):
  """The per-image inputs of a step's regular draws (attempt 0), row-major (query, supports).

  Returns (image bytes, label bytes, image index, class id, seed) arrays of n = rows x (K + 1).
  """
  index, classes, seeds = step_slots(pool, config, step, rows)
  encoded = [sample_inputs(pool.split, int(i)) for i in index]
  return (np.array([e[0] for e in encoded], dtype=object),
          np.array([e[1] for e in encoded], dtype=object), index, classes, seeds)


def _group(flat: dict, rows: int, shots: int) -> dict:
  """Per-image outputs (n = rows x (K + 1), row-major) -> the batch keys of pipeline.py."""
  tf = pipeline.tf_module()
  slots = shots + 1
  img = tf.reshape(flat['image'], tf.concat([[rows, slots], tf.shape(flat['image'])[1:]], 0))
  lbl = tf.reshape(flat['label'], tf.concat([[rows, slots], tf.shape(flat['label'])[1:]], 0))
  index = tf.reshape(flat['index'], [rows, slots])
  return {'query_img': img[:, 0], 'query_label': lbl[:, 0], 'support_imgs': img[:, 1:],
          'support_labels': lbl[:, 1:], 'class_id': tf.reshape(flat['class_id'],
                                                                [rows, slots])[:, 0],
          'query_index': index[:, 0], 'support_index': index[:, 1:]}


class _Stream:
  """What both graph streams share: a restartable tf.data iterator from batch `first` on."""

  def _open(self, first: int) -> None:
    self._next = first
    self._iterator = iter(pipeline.BatchStream(self._dataset(first)))

  def __iter__(self):
    return self

  def close(self) -> None:
    self._iterator = None

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


class GraphTrainStream(_Stream):
  """Training batches of steps [first, end) from the graph pipeline, with the bad-sample
  fallback of the module docstring. Iterator of numpy dicts, like pipeline.BatchStream."""

  def __init__(self, pool, config, rows: Sequence[int], first: int, end: int):
    self.skips = pipeline.SkipCounter()
    self._pool, self._config, self._rows = pool, config, list(rows)
    self._end = int(end)
    self._image_fn = train_image_fn(config, pool.split.num_classes, has_records(pool.split))
    self._single = None   # the per-image function compiled once, for the fallback
    self._open(int(first))

  def _dataset(self, first: int):
    tf = pipeline.tf_module()
    pool, config, rows = self._pool, self._config, self._rows
    shots, size = int(config.shots), int(config.train.crop_size)
    n = len(rows) * (shots + 1)

    def fetch(step):
      return train_step_inputs(pool, config, int(step), rows)

    def inputs(step):
      out = tf.numpy_function(fetch, [step], [tf.string, tf.string, tf.int32, tf.int32,
                                              tf.int64], stateful=False)
      shapes = [[n], [n], [n], [n], [n, 2]]
      out = [tf.ensure_shape(o, s) for o, s in zip(out, shapes)]
      return tf.data.Dataset.from_tensor_slices(tuple(out))

    def per_image(image_bytes, label_bytes, index, class_id, seed):
      image, label = self._image_fn(image_bytes, label_bytes, class_id, seed)
      return {'image': tf.ensure_shape(image, [size, size, 3]),
              'label': tf.ensure_shape(label, [size, size]), 'index': index,
              'class_id': class_id}

    ds = tf.data.Dataset.range(first, self._end)
    ds = ds.interleave(inputs, cycle_length=1, num_parallel_calls=1, deterministic=True)
    ds = ds.map(per_image, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(n).map(lambda flat: _group(flat, len(rows), shots))
    return ds.prefetch(2)


  def __next__(self) -> dict:
    if self._iterator is None or self._next >= self._end:
      raise StopIteration
    tf = pipeline.tf_module()
    step = self._next
    try:
      batch = next(self._iterator)
      self._next += 1
      return batch
    except StopIteration:
      raise
    except tf.errors.OpError:
      batch = self.rebuild(step)
      self._open(step + 1)   # the failed pipeline's later elements are misaligned: restart
      return batch

  def rebuild(self, step: int) -> dict:
    """Step `step` built row by row with redraws (pipeline.train_batch's rule)."""
    tf = pipeline.tf_module()
    if self._single is None:
      self._single = tf.function(self._image_fn)
    pool, config = self._pool, self._config
    seed, shots = int(config.seed), int(config.shots)
    out = pipeline.empty_batch(len(self._rows), shots, int(config.train.crop_size))
    for i, row in enumerate(self._rows):
      for attempt in range(pipeline.MAX_REDRAWS + 1):
        ep, words = pipeline._episode(pool, seed, step, row, int(config.train.batch_size),  # pylint: disable=protected-access
                                      shots, attempt)
        try:
          pairs = self._row(ep, words)
          break
        except pipeline.BadSampleError as e:
          message = f'step {step} row {row}: skipped an episode ({e})'
          logging.warning('%s', message)
          self.skips.record(message)
          if attempt == pipeline.MAX_REDRAWS:
            raise pipeline.BadSampleError(
                f'step {step} row {row}: {pipeline.MAX_REDRAWS + 1} episodes in a row hit bad '
                f'samples; last: {e}') from e
      (out['query_img'][i], out['query_label'][i]), supports = pairs[0], pairs[1:]
      for j, (s_img, s_lbl) in enumerate(supports):
        out['support_imgs'][i, j], out['support_labels'][i, j] = s_img, s_lbl
      out['class_id'][i] = ep.class_id
      out['query_index'][i] = ep.query_index
      out['support_index'][i] = ep.support_indices
    return out

  def _row(self, ep, words):
    tf = pipeline.tf_module()
    indices, encoded, seeds = _row_inputs(self._pool, ep, words)
    pairs = []
    for index, (im, lb), s in zip(indices, encoded, seeds):
      try:
        image, label = self._single(tf.constant(im), tf.constant(lb),
                                    tf.constant(ep.class_id, tf.int32), tf.constant(s))
      except tf.errors.OpError as e:
        split = self._pool.split
        raise pipeline.BadSampleError(
            f'image {split.image_ids[index]!r} (index {index}) of {split.name}/{split.split}: '
            f'{type(e).__name__}: {e.message}') from e
      pairs.append((image.numpy(), label.numpy()))
    return pairs


def train_dataset(pool, config, rows: Sequence[int], first: int, end: int) -> GraphTrainStream:
  return GraphTrainStream(pool, config, rows, first, end)


# --- evaluation -----------------------------------------------------------------------------

def eval_batch_inputs(split, episode_list, positions: Sequence[int]):
  """Per-image inputs of the eval batch `positions` (row-major query, supports) and valid."""
  images, labels, index, classes, valid = [], [], [], [], []
  k = len(episode_list[0].support_indices)
  for pos in positions:
    ok = pos < len(episode_list)
    ep = episode_list[pos if ok else -1]
    if len(ep.support_indices) != k:
      raise ValueError(f'episode {pos} has {len(ep.support_indices)} supports, episode 0 has {k}')
    for i in [ep.query_index] + list(ep.support_indices):
      im, lb = sample_inputs(split, i)
      images.append(im)
      labels.append(lb)
      index.append(i)
      classes.append(ep.class_id)
    valid.append(ok)
  return (np.array(images, dtype=object), np.array(labels, dtype=object),
          np.array(index, np.int32), np.array(classes, np.int32), np.array(valid, bool))


def eval_image_fn(config, num_classes: int, records: bool = False):
  """(the two strings of `sample_inputs`, class id) -> (image, label int32, original label
  padded to eval.max_label_size, its side, scored-by-crop flag): augment.eval_resize in graph
  ops."""
  from mmnet_jax.data import tf_augment  # pylint: disable=g-import-not-at-top
  tf = pipeline.tf_module()
  size, s_max = int(config.eval.size), int(config.eval.max_label_size)
  fill = getattr(config.eval, 'pad_fill', None) or 'black'
  mode = getattr(config.eval, 'resize', None) or 'resize'
  augment._check_mode(mode)  # pylint: disable=protected-access

  def fn(image_bytes, label_bytes, class_id):
    image, label = decode_checked(image_bytes, label_bytes, num_classes, records)
    label = binarise(label, class_id)
    img, lbl, original = tf_augment.eval_resize(image, label, size, fill, mode)
    side = tf.shape(original)[0]
    with tf.control_dependencies([tf.debugging.assert_less_equal(
        side, s_max, message=f'label larger than eval.max_label_size={s_max}')]):
      padded = tf.pad(original, [[0, s_max - side], [0, s_max - side]],
                      constant_values=tf.constant(conventions.IGNORE_LABEL, tf.uint8))
    h, w = tf.shape(label)[0], tf.shape(label)[1]
    by_crop = tf.constant(mode == 'test_resize') & (tf.maximum(h, w) <= size)
    return (img, tf.cast(lbl, tf.int32), tf.ensure_shape(padded, [s_max, s_max]), side,
            by_crop)
  return fn


class GraphEvalStream(_Stream):
  """Eval batches 0 .. num_batches - 1 from the graph pipeline; a batch that fails inside
  tf.data is rebuilt by pipeline.eval_batch (its error names the image)."""

  def __init__(self, split, episode_list, config, rows: Sequence[int]):
    self.skips = None
    self._split, self._list, self._config, self._rows = split, episode_list, config, list(rows)
    self._global = int(config.eval.batch_size)
    self._end = -(-len(episode_list) // self._global)
    self._image_fn = eval_image_fn(config, split.num_classes, has_records(split))
    self._open(0)

  def _positions(self, n: int) -> list[int]:
    return [n * self._global + r for r in self._rows]

  def _dataset(self, first: int):
    tf = pipeline.tf_module()
    k = len(self._list[0].support_indices)
    slots, rows = k + 1, len(self._rows)
    n = rows * slots
    size, s_max = int(self._config.eval.size), int(self._config.eval.max_label_size)

    def fetch(b):
      return eval_batch_inputs(self._split, self._list, self._positions(int(b)))

    def inputs(b):
      out = tf.numpy_function(fetch, [b], [tf.string, tf.string, tf.int32, tf.int32, tf.bool],
                              stateful=False)
      out = [tf.ensure_shape(o, s) for o, s in zip(out, [[n], [n], [n], [n], [rows]])]
      valid = tf.repeat(out[4], slots)
      return tf.data.Dataset.from_tensor_slices(tuple(out[:4]) + (valid,))

    def per_image(image_bytes, label_bytes, index, class_id, valid):
      img, lbl, original, side, by_crop = self._image_fn(image_bytes, label_bytes, class_id)
      return {'image': tf.ensure_shape(img, [size, size, 3]),
              'label': tf.ensure_shape(lbl, [size, size]), 'index': index,
              'class_id': class_id, 'original': original, 'side': side, 'by_crop': by_crop,
              'valid': valid}

    def group(flat):
      out = _group(flat, rows, k)
      for key, name in (('original', 'eval_label'), ('side', 'eval_label_size'),
                        ('by_crop', 'eval_label_crop'), ('valid', 'valid')):
        value = tf.reshape(flat[key], tf.concat([[rows, slots], tf.shape(flat[key])[1:]], 0))
        out[name] = value[:, 0]   # the query's
      return out

    ds = tf.data.Dataset.range(first, self._end)
    ds = ds.interleave(inputs, cycle_length=1, num_parallel_calls=1, deterministic=True)
    ds = ds.map(per_image, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(n).map(group).prefetch(2)


  def __next__(self) -> dict:
    if self._iterator is None or self._next >= self._end:
      raise StopIteration
    tf = pipeline.tf_module()
    n = self._next
    try:
      batch = next(self._iterator)
    except StopIteration:
      raise
    except tf.errors.OpError as e:
      # Raises the numpy pipeline's error naming the image; a batch only TF fails on is named.
      pipeline.eval_batch(self._split, self._list, self._config, self._positions(n))
      raise pipeline.BadSampleError(f'eval batch {n} (episodes {self._positions(n)}): '
                                    f'TensorFlow could not build it: {e.message}') from e
    self._next += 1
    return batch


def eval_dataset(split, episode_list, config, rows: Sequence[int]) -> GraphEvalStream:
  return GraphEvalStream(split, episode_list, config, rows)
