"""tf.data episodic pipelines: host batches of numpy arrays (keys in docs/architecture.md).

Each batch is built by one pure function of (config seed, step or batch number, process), run
through `tf.numpy_function` in parallel with deterministic order, so a run resumed at step k
gets exactly the stream an uninterrupted run would have had from k on.

Per training episode (global step t, global row r): the episode comes from
`episodes.train_episode` (rng [seed, t, r]); the query's augmentation uses
default_rng([seed, t, r, 1]) and support k's default_rng([seed, t, r, 2 + k]).

Bad input (see docs/robustness.md): every image and mask is checked when loaded
(`load_sample`): unreadable (decoder error, truncated file), not (h, w[, 1|3|4]), image and mask
of different sizes, or mask values outside 0..num_classes and 255 raise `BadSampleError`.
Evaluation lets it propagate (the benchmark's episode list is fixed). Training counts and logs
the skip and redraws the whole episode from default_rng([seed, t, r, REDRAW, a]) for attempt
a = 1, 2, ... (augmentations [seed, t, r, REDRAW, a, 1] and [..., 2 + k]), so the stream stays
a pure function of (seed, step, row); after MAX_REDRAWS failed attempts the error is raised.
Grayscale and RGBA images are converted (`augment.to_rgb`); images smaller than the crop are
padded (PFENet).

Multi-process: process p builds global rows [p * host_batch, (p + 1) * host_batch) of every
global batch, so the union over processes is the single-process global batch.

Config fields read:
  seed                       base seed of the training stream.
  shots                      supports per episode (K).
  train.batch_size           global training batch (= host_batch_size * process_count).
  train.crop_size            training crop side.
  train.scale_min, train.scale_max   RandScale range.
  train.rotate_deg           RandRotate range +-deg.
  train.augment              'pfenet' (the above) or 'stretch' (HSNet: stretched to crop_size,
                             no augmentation).
  train.num_steps            > 0: the stream ends there; 0: endless (the caller stops it).
  eval.size                  eval canvas side (PFENet Resize).
  eval.resize                optional, 'resize' (default, PFENet Resize) or 'test_resize'.
  eval.batch_size            global eval batch (the last one is padded with valid=False).
  eval.max_label_size        S_max of `eval_label`; an original label larger than this raises.
  eval.pad_fill              optional, 'black' (default, PFENet) or 'mean': eval canvas colour.
The pools (dataset.min_class_pixels, dataset.filter_intersection) and the eval episode list
(eval.num_episodes, eval.seed) are built by the caller with `episodes`, see `train_pool`.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import weakref
from typing import Sequence

import numpy as np

from mmnet_jax import conventions
from mmnet_jax.data import augment
from mmnet_jax.data import episodes as episodes_lib

_UNBOUNDED_STEPS = 2**62
REDRAW = 7919        # marks the rng of a redrawn episode (distinct from the slot words 1, 2+k)
MAX_REDRAWS = 8      # redraws of one training episode before a bad sample becomes an error


class BadSampleError(ValueError):
  """An image or mask that cannot be used: unreadable, malformed or inconsistent."""


class SkipCounter:
  """Thread-safe count of training episodes redrawn because of a bad sample (tf.data runs
  batch builders on several threads). Counts batches built so far, prefetched ones included."""

  def __init__(self):
    self._lock = threading.Lock()
    self.count = 0
    self.last = ''

  def record(self, message: str) -> None:
    with self._lock:
      self.count += 1
      self.last = message


def tf_module():
  """TensorFlow with accelerators hidden (JAX owns them)."""
  import tensorflow as tf
  for kind in ('GPU', 'TPU'):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      pass  # already initialised, or no such device type: nothing to hide
  return tf


def train_pool(split, classes: Sequence[int], config) -> episodes_lib.Pool:
  """The training pool of `split` for `classes` under config.dataset's rules."""
  return episodes_lib.build_pool(split, classes,
                                 min_class_pixels=config.dataset.min_class_pixels,
                                 filter_intersection=config.dataset.filter_intersection)


def _row_range(global_batch: int, host_batch_size: int | None, process_index: int,
               process_count: int, field: str) -> range:
  if host_batch_size is None:
    host_batch_size = global_batch // max(process_count, 1)
  if host_batch_size * process_count != global_batch:
    raise ValueError(f'{field}={global_batch} must equal host_batch_size ({host_batch_size}) '
                     f'x process_count ({process_count})')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} outside [0, {process_count})')
  return range(process_index * host_batch_size, (process_index + 1) * host_batch_size)


def load_sample(split, index: int) -> tuple[np.ndarray, np.ndarray]:
  """(image, label) of split image `index`, checked; raises BadSampleError naming the image.

  image: (h, w), (h, w, 1), (h, w, 3) or (h, w, 4) (converted later by augment.to_rgb);
  label: (h, w) or (h, w, 1) integers in 0..split.num_classes or 255, same h, w as the image.
  """
  where = f'image {split.image_ids[index]!r} (index {index}) of {split.name}/{split.split}'
  try:
    image, label = split.load(index)
  except Exception as e:  # decoders raise OSError, tf InvalidArgumentError, ValueError, ...
    raise BadSampleError(f'{where} could not be read: {type(e).__name__}: {e}') from e
  image, label = np.asarray(image), np.asarray(label)
  if label.ndim == 3 and label.shape[2] == 1:
    label = label[:, :, 0]
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
    raise BadSampleError(f'{where}: image shape {image.shape}, expected (h, w) or (h, w, C) '
                         'with C in 1, 3, 4')
  if label.ndim != 2:
    raise BadSampleError(f'{where}: mask shape {label.shape}, expected (h, w)')
  if image.shape[:2] != label.shape:
    raise BadSampleError(f'{where}: image is {image.shape[0]}x{image.shape[1]} but its mask '
                         f'is {label.shape[0]}x{label.shape[1]}; they must have the same size')
  if min(label.shape) < 1:
    raise BadSampleError(f'{where}: empty image {label.shape}')
  if not np.issubdtype(label.dtype, np.integer):
    raise BadSampleError(f'{where}: mask dtype {label.dtype}, expected integer class indices')
  if not np.issubdtype(image.dtype, np.number) or (image.dtype.kind == 'f' and
                                                   not np.isfinite(image).all()):
    raise BadSampleError(f'{where}: image dtype {image.dtype} or values not finite numbers')
  bad = (label < 0) | ((label > split.num_classes) & (label != conventions.IGNORE_LABEL))
  if bad.any():
    values = np.unique(label[bad])[:5].tolist()
    raise BadSampleError(f'{where}: mask values {values} outside 0..{split.num_classes} and '
                         f'{conventions.IGNORE_LABEL} (a class-index mask of {split.name} was expected)')
  return image, label.astype(np.uint8)


def _load_binarised(split, index: int, class_id: int):
  image, label = load_sample(split, index)
  return image, episodes_lib.binarise(label, class_id)


def _transform(train_config):
  """(image, label, rng) -> (image, label) of `config.train.augment`."""
  t, size = train_config, int(train_config.crop_size)
  kind = t.get('augment', 'pfenet')
  if kind == 'stretch':   # HSNet: no augmentation, so no draws
    return lambda image, label, rng: augment.stretch(image, label, size)
  if kind != 'pfenet':
    raise ValueError(f'config.train.augment={kind!r}; expected one of '
                     f'{list(augment.TRAIN_AUGMENTS)}')
  kwargs = dict(crop_size=size, scale_min=float(t.scale_min), scale_max=float(t.scale_max),
                rotate_deg=float(t.rotate_deg))
  return lambda image, label, rng: augment.train_transform(image, label, rng, **kwargs)


def _train_row(pool, ep, seed_words: list[int], transform) -> tuple:
  """Augmented (query image, query label, support images, support labels) of one episode."""
  image, label = _load_binarised(pool.split, ep.query_index, ep.class_id)
  q_img, q_lbl = transform(image, label, np.random.default_rng(seed_words + [1]))
  supports = []
  for j, s in enumerate(ep.support_indices):
    image, label = _load_binarised(pool.split, s, ep.class_id)
    supports.append(transform(image, label, np.random.default_rng(seed_words + [2 + j])))
  return q_img, q_lbl, supports


def _episode(pool, seed: int, step: int, row: int, batch_size: int, shots: int, attempt: int):
  """Episode of (step, row) on attempt `attempt` (0: the regular draw) and its rng words."""
  if attempt == 0:
    return (episodes_lib.train_episode(pool, seed, step, row, batch_size, shots),
            [seed, step, row])
  words = [seed, step, row, REDRAW, attempt]
  rng = np.random.default_rng(words)
  return episodes_lib.sample_episode(pool, int(rng.integers(len(pool))), shots, rng), words


def train_batch(pool: episodes_lib.Pool, config, step: int, rows: Sequence[int],
                skips: SkipCounter | None = None) -> dict:
  """The training batch rows `rows` of global step `step` (pure; numpy arrays).

  An episode touching a bad sample is redrawn (module docstring); `skips` counts those.
  """
  seed, shots = int(config.seed), int(config.shots)
  t = config.train
  transform = _transform(t)
  out = empty_batch(len(rows), shots, int(t.crop_size))
  for i, row in enumerate(rows):
    for attempt in range(MAX_REDRAWS + 1):
      ep, words = _episode(pool, seed, step, row, int(t.batch_size), shots, attempt)
      try:
        q_img, q_lbl, supports = _train_row(pool, ep, words, transform)
        break
      except BadSampleError as e:
        message = f'step {step} row {row}: skipped an episode ({e})'
        logging.warning('%s', message)
        if skips is not None:
          skips.record(message)
        if attempt == MAX_REDRAWS:
          raise BadSampleError(f'step {step} row {row}: {MAX_REDRAWS + 1} episodes in a row '
                               f'hit bad samples; last: {e}') from e
    out['query_img'][i], out['query_label'][i] = q_img, q_lbl
    for j, (s_img, s_lbl) in enumerate(supports):
      out['support_imgs'][i, j], out['support_labels'][i, j] = s_img, s_lbl
    out['class_id'][i] = ep.class_id
    out['query_index'][i] = ep.query_index
    out['support_index'][i] = ep.support_indices
  return out


def empty_batch(b: int, k: int, size: int, eval_label_side: int | None = None,
                with_label_hw: bool = False) -> dict:
  """Uninitialised arrays of a batch of `b` episodes of `k` shots at `size` (the keys of
  docs/architecture.md); with `eval_label_side` also the eval keys (eval_label filled with 255),
  with `with_label_hw` also `eval_label_hw`."""
  out = {
      'query_img': np.empty((b, size, size, 3), np.float32),
      'query_label': np.empty((b, size, size), np.int32),
      'support_imgs': np.empty((b, k, size, size, 3), np.float32),
      'support_labels': np.empty((b, k, size, size), np.int32),
      'class_id': np.empty((b,), np.int32),
      'query_index': np.empty((b,), np.int32),
      'support_index': np.empty((b, k), np.int32),
  }
  if eval_label_side is not None:
    out['eval_label'] = np.full((b, eval_label_side, eval_label_side), conventions.IGNORE_LABEL,
                                np.uint8)
    out['eval_label_size'] = np.empty((b,), np.int32)
    out['eval_label_crop'] = np.zeros((b,), bool)   # evaluate.canvas_prediction
    out['valid'] = np.empty((b,), bool)
  if with_label_hw:
    out['eval_label_hw'] = np.empty((b, 2), np.int32)
  return out


def eval_batch(split, episode_list: Sequence[episodes_lib.Episode], config,
               positions: Sequence[int]) -> dict:
  """The eval batch of episode-list positions `positions` (pure; numpy arrays).

  Positions past the end of the list repeat the last episode with valid=False.
  """
  if not episode_list:
    raise ValueError('eval_batch: the episode list is empty')
  size, s_max = int(config.eval.size), int(config.eval.max_label_size)
  fill = getattr(config.eval, 'pad_fill', None) or 'black'
  mode = getattr(config.eval, 'resize', None) or 'resize'
  k = len(episode_list[0].support_indices)
  out = empty_batch(len(positions), k, size, eval_label_side=s_max)
  for i, pos in enumerate(positions):
    valid = pos < len(episode_list)
    ep = episode_list[pos if valid else -1]
    if len(ep.support_indices) != k:
      raise ValueError(f'episode {pos} has {len(ep.support_indices)} supports, episode 0 has {k}')
    image, label = _load_binarised(split, ep.query_index, ep.class_id)
    img, lbl, original = augment.eval_resize(image, label, size, fill, mode)
    side = original.shape[0]
    if side > s_max:
      raise ValueError(f'query {split.image_ids[ep.query_index]!r} of {split.name}/{split.split} '
                       f'has a {label.shape[0]}x{label.shape[1]} label; '
                       f'eval.max_label_size={s_max} must be >= {side}')
    out['query_img'][i], out['query_label'][i] = img, lbl
    out['eval_label'][i, :side, :side] = original
    out['eval_label_size'][i] = side
    out['eval_label_crop'][i] = augment.eval_scored_by_crop(*label.shape, size, mode)
    for j, s in enumerate(ep.support_indices):
      image, label = _load_binarised(split, s, ep.class_id)
      out['support_imgs'][i, j], out['support_labels'][i, j], _ = augment.eval_resize(
          image, label, size, fill, mode)
    out['class_id'][i] = ep.class_id
    out['query_index'][i] = ep.query_index
    out['support_index'][i] = ep.support_indices
    out['valid'][i] = valid
  return out


class BatchStream:
  """Iterator of numpy batch dicts over a tf.data pipeline; `close()` stops its workers.

  A tf.data iterator still running `numpy_function` work when the interpreter exits deadlocks
  the exit, so open streams are closed by an atexit hook (and by `close`, `with`, or `del`).
  """

  def __init__(self, dataset, skips: SkipCounter | None = None):
    global _ATEXIT_REGISTERED
    self.skips = skips   # training streams: episodes redrawn because of bad samples
    if not _ATEXIT_REGISTERED:  # after TensorFlow's own hooks, so that it runs before them
      atexit.register(_close_open_streams)
      _ATEXIT_REGISTERED = True
    self._iterator = dataset.as_numpy_iterator()
    _OPEN_STREAMS.add(self)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._iterator is None:
      raise StopIteration
    return next(self._iterator)

  def close(self) -> None:
    """Releases the tf.data iterator (its destructor cancels the in-flight work)."""
    self._iterator = None

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


_OPEN_STREAMS: 'weakref.WeakSet[BatchStream]' = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_open_streams():
  for stream in list(_OPEN_STREAMS):
    stream.close()


def numpy_stream(num_batches: int, make_batch, example: dict, first: int = 0,
                 skips: SkipCounter | None = None) -> BatchStream:
  """Batches make_batch(first), ..., make_batch(num_batches - 1) (numpy dicts shaped like
  `example`) as a stream: built in parallel by tf.data, delivered in order, closable."""
  tf = tf_module()
  indices = tf.data.Dataset.range(int(first), int(num_batches))
  keys = sorted(example)
  dtypes = [tf.as_dtype(example[key].dtype) for key in keys]

  def build(i):
    batch = make_batch(int(i))
    return tuple(batch[key] for key in keys)

  def to_dict(i):
    values = tf.numpy_function(build, [i], dtypes, stateful=False)
    for value, key in zip(values, keys):
      value.set_shape(example[key].shape)
    return dict(zip(keys, values))

  ds = indices.map(to_dict, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return BatchStream(ds.prefetch(tf.data.AUTOTUNE), skips)


def train_rows(pool, config, host_batch_size, process_index, process_count, num_steps):
  """(this process's global rows, the stream's end step) of a training stream, checked."""
  rows = _row_range(int(config.train.batch_size), host_batch_size, process_index,
                    process_count, 'train.batch_size')
  episodes_lib.check_pool(pool, int(config.shots))
  if num_steps is None:
    num_steps = int(getattr(config.train, 'num_steps', 0) or 0) or _UNBOUNDED_STEPS
  return rows, num_steps


def eval_rows(episode_list, config, host_batch_size, process_index, process_count) -> range:
  """This process's rows of every global eval batch, checked."""
  if not episode_list:
    raise ValueError('eval_dataset: the episode list is empty')
  return _row_range(int(config.eval.batch_size), host_batch_size, process_index, process_count,
                    'eval.batch_size')


def train_dataset(pool: episodes_lib.Pool, config, start_step: int = 0,
                  host_batch_size: int | None = None, process_index: int = 0,
                  process_count: int = 1, num_steps: int | None = None) -> BatchStream:
  """Host training batches for steps start_step, start_step + 1, ... (numpy dicts).

  Args:
    pool: the training pool (`train_pool`).
    config: see the module docstring.
    start_step: first global step (resume point).
    host_batch_size: rows this process builds; config.train.batch_size / process_count.
    process_index, process_count: this process and the number of processes.
    num_steps: end of the stream (exclusive); default config.train.num_steps, 0 = endless.
  """
  rows, num_steps = train_rows(pool, config, host_batch_size, process_index, process_count,
                               num_steps)
  skips = SkipCounter()
  example = train_batch(pool, config, start_step, rows[:1])
  example = {k: np.empty((len(rows),) + v.shape[1:], v.dtype) for k, v in example.items()}
  return numpy_stream(num_steps, lambda step: train_batch(pool, config, step, rows, skips),
                      example, first=start_step, skips=skips)


def eval_dataset(split, episode_list: Sequence[episodes_lib.Episode], config,
                 host_batch_size: int | None = None, process_index: int = 0,
                 process_count: int = 1) -> BatchStream:
  """Host eval batches over `episode_list` in order, with the eval keys.

  Global batch n holds episodes [n * G, (n + 1) * G), G = config.eval.batch_size; this process
  builds rows [p * host_batch, (p + 1) * host_batch) of it. The last batch is completed with
  copies of the last episode marked valid=False.
  """
  global_batch = int(config.eval.batch_size)
  rows = eval_rows(episode_list, config, host_batch_size, process_index, process_count)
  num_batches = math.ceil(len(episode_list) / global_batch)

  def make(n):
    return eval_batch(split, episode_list, config, [n * global_batch + r for r in rows])

  example = {k: np.empty((len(rows),) + v.shape[1:], v.dtype)
             for k, v in eval_batch(split, episode_list[:1], config, [0]).items()}
  return numpy_stream(num_batches, make, example)
