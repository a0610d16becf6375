"""The graph training pipeline run on tf.data service workers (dataset.pipeline='service').

For hosts whose cores cannot feed their accelerators: the per-image work of graph_pipeline.py
(record parse, decode, checks, binarise, tf_augment) runs in worker processes, each with its
own thread pool and no Python on the path, on this host or others. What makes that possible:

* Records readable by TensorFlow ops. `export_records` writes each stored record of the split
  (the serialized tf.train.Example graph_pipeline parses) to its own file, once, under
  dataset.service.records_dir (any tf.io.gfile path: a shared disk or gs:// for workers on
  other hosts). Files are renamed into place and the manifest is written last, so an
  interrupted export resumes and a half-written file is never read.
* Episodes as tables. The image slots (index, class, stateless seed) of each step are computed
  here, exactly as graph_pipeline.step_slots (a pure function of (seed, step, row)), and
  written as table files of TABLE_STEPS steps, TABLE_AHEAD steps ahead of the step consumed,
  beside the records (one folder per stream, removed when it closes).

The stream is one tf.data service job over `range(first, end)` with dynamic sharding: the
dispatcher hands each step to whichever worker asks, once. The dataset graph is the same for the
whole stream (built and sent once). Elements carry their step and this client puts them back in
step order, so the stream is the local graph stream's batches, bit for bit
(tests/data/test_service.py). A step whose graph fails on a worker (a bad sample, a table not
written yet) is dropped there by `ignore_errors`; so is a step lost with a worker. Once the
client holds dataset.service.reorder_window later steps without it (or the job ends), the step
is rebuilt here by graph_pipeline's row-by-row fallback, which redraws episodes that hit bad
samples and counts them in `skips`, as the local stream does; a late copy is then ignored, and
since the rebuild gives the same numbers, a step declared dropped too early costs time only.

The dispatcher: dataset.service.address ('HOST:PORT' of `python -m
mmnet_jax.data.service_server dispatcher`), or '' to start one in this process with
dataset.service.local_workers worker processes of this machine (they exit with it).
Evaluation stays on the local graph pipeline.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from typing import Sequence

import numpy as np

from mmnet_jax.data import graph_pipeline
from mmnet_jax.data import pipeline

MANIFEST = 'manifest.json'
FORMAT = 1   # of the record folder; bump when its layout changes


def record_name(index: int) -> str:
  return f'{int(index):08d}.rec'


def _split_key(split) -> dict:
  ids = json.dumps([str(i) for i in split.image_ids]).encode()
  return {'format': FORMAT, 'name': split.name, 'split': split.split,
          'count': len(split.image_ids), 'image_ids_sha256': hashlib.sha256(ids).hexdigest()}


def records_path(split, root: str) -> str:
  """The record folder of `split` under `root`: named by the split and its image ids, so a
  rebuilt dataset with other images never reads another build's records."""
  key = _split_key(split)
  return os.path.join(root, f"{split.name}-{split.split}-{key['image_ids_sha256'][:12]}")


def _record(split, index: int) -> bytes:
  """The bytes graph_pipeline parses (records=True) for split image `index`."""
  if graph_pipeline.has_records(split):
    return split.load_record(index)
  tf = pipeline.tf_module()
  image, label = graph_pipeline.encoded_sample(split, index)
  feature = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
  return tf.train.Example(features=tf.train.Features(feature={
      'image': feature(image), 'label': feature(label)})).SerializeToString()


def _write_atomic(gfile, path: str, data: bytes) -> None:
  tmp = f'{path}.tmp-{os.uname().nodename}-{os.getpid()}-{threading.get_ident()}'
  with gfile.GFile(tmp, 'wb') as f:
    f.write(data)
  gfile.rename(tmp, path, overwrite=True)


def export_records(split, root: str) -> str:
  """Writes the record files of `split` under `root` (once) and returns their folder.

  An image whose record cannot be read gets no file: the workers drop its steps and the client
  redraws them (module docstring). Raises ValueError naming the manifest when the folder holds
  another split's records.
  """
  gfile = pipeline.tf_module().io.gfile
  path = records_path(split, root)
  manifest = os.path.join(path, MANIFEST)
  key = _split_key(split)
  if gfile.exists(manifest):
    with gfile.GFile(manifest, 'r') as f:
      found = json.load(f)
    if {k: found.get(k) for k in key} != key:
      raise ValueError(f'{manifest}: records of {found}, expected {key}; delete {path} to '
                       'export again')
    return path
  gfile.makedirs(path)
  present = set(gfile.listdir(path))
  missing = []
  for index in range(len(split.image_ids)):
    if record_name(index) in present:
      continue   # an interrupted export's finished file (renamed into place whole)
    try:
      data = _record(split, index)
    except Exception as e:  # pylint: disable=broad-except
      missing.append(index)
      logging.warning('export_records: image %r (index %d) of %s/%s has no record: %s: %s',
                      split.image_ids[index], index, split.name, split.split,
                      type(e).__name__, e)
      continue
    _write_atomic(gfile, os.path.join(path, record_name(index)), data)
  _write_atomic(gfile, manifest, json.dumps(dict(key, missing=missing), indent=1).encode())
  return path


def default_records_root(config) -> str:
  root = getattr(config.dataset, 'data_dir', '') or os.environ.get('TFDS_DATA_DIR') or \
      os.path.expanduser('~/tensorflow_datasets')
  return os.path.join(root, 'mmnet_service_records')


def table_name(chunk: int) -> str:
  return f'{int(chunk):08d}.tbl'


def table_bytes(pool, config, rows: Sequence[int], first: int, end: int) -> bytes:
  """The image slots of steps [first, end) as little-endian int64 (steps, n, 4): image index,
  class id, the two seed words (graph_pipeline.step_slots)."""
  out = []
  for step in range(first, end):
    index, classes, seeds = graph_pipeline.step_slots(pool, config, step, rows)
    out.append(np.concatenate([index[:, None], classes[:, None], seeds], 1).astype('<i8'))
  return np.stack(out).tobytes()


# --- the servers ----------------------------------------------------------------------------

class LocalService:
  """A dispatcher in this process and `num_workers` worker processes of this machine."""

  def __init__(self, num_workers: int):
    if num_workers < 1:
      raise ValueError(f'dataset.service.local_workers={num_workers}; expected >= 1 when '
                       'dataset.service.address is empty')
    service = pipeline.tf_module().data.experimental.service
    self._dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    self.target = self._dispatcher.target
    address = self.target.split('://')[-1]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (root, env.get('PYTHONPATH')) if p)
    self.workers = [subprocess.Popen(
        [sys.executable, '-m', 'mmnet_jax.data.service_server', 'worker',
         f'--dispatcher={address}', f'--parent-pid={os.getpid()}'], env=env,
        stdout=subprocess.DEVNULL) for _ in range(num_workers)]
    self.num_workers = num_workers

  def stop(self) -> None:
    for worker in self.workers:
      if worker.poll() is None:
        worker.kill()
        worker.wait()
    self._dispatcher.stop()


_LOCAL: LocalService | None = None


def _stop_local() -> None:
  global _LOCAL
  if _LOCAL is not None:
    _LOCAL.stop()
    _LOCAL = None


def local_service(num_workers: int) -> LocalService:
  """The process's local service (started on first use, stopped at exit)."""
  global _LOCAL
  if _LOCAL is not None and _LOCAL.num_workers != num_workers:
    _stop_local()
  if _LOCAL is None:
    _LOCAL = LocalService(num_workers)
    atexit.register(_stop_local)
  return _LOCAL


def service_options(config) -> dict:
  s = getattr(config.dataset, 'service', None)
  get = (lambda k, d: s.get(k, d)) if s is not None else (lambda k, d: d)
  return {'address': get('address', '') or '', 'local_workers': int(get('local_workers', 2)),
          'reorder_window': int(get('reorder_window', 64)),
          'records_dir': get('records_dir', '') or default_records_root(config)}


def service_target(options: dict) -> str:
  address = options['address']
  if address:
    return address if '://' in address else f'grpc://{address}'
  return local_service(options['local_workers']).target


# --- the stream -----------------------------------------------------------------------------

TABLE_STEPS = 256    # steps per table file
TABLE_AHEAD = 4096   # steps of tables written ahead of the one consumed
CLIENT_PREFETCH = 2  # batches received ahead of the one consumed
LABELS = ('query_label', 'support_labels')   # sent as uint8, handed on as int32


def _batch(element: dict) -> dict:
  """A received element as the local stream's batch: read-only views of the tensors, as
  as_numpy_iterator gives (`.numpy()` would copy ~22 MB per 1-shot batch under the GIL)."""
  return {k: np.asarray(v) for k, v in element.items() if k != 'step'}


class ServiceTrainStream(graph_pipeline.GraphTrainStream):
  """Training batches of steps [first, end) built by tf.data service workers, in step order,
  equal to GraphTrainStream's (module docstring)."""

  def __init__(self, pool, config, rows: Sequence[int], first: int, end: int):
    options = service_options(config)
    if options['reorder_window'] < 1:
      raise ValueError(f"dataset.service.reorder_window={options['reorder_window']}; "
                       'expected >= 1')
    self._window = options['reorder_window']
    self._records = export_records(pool.split, options['records_dir'])
    self._tables = os.path.join(options['records_dir'], 'tables', uuid.uuid4().hex)
    self._target = service_target(options)
    self.dropped = 0   # steps the service did not deliver in time (rebuilt here)
    super().__init__(pool, config, rows, first, end)

  def _open(self, first: int) -> None:
    self._next = first
    self._ready: dict[int, dict] = {}
    self._tabled = first - first % TABLE_STEPS   # steps below have their table file
    pipeline.tf_module().io.gfile.makedirs(self._tables)
    self._write_tables(first)
    self._iterator = iter(self._service_dataset(first))
    self._delivering = True

  def _write_tables(self, step: int) -> None:
    """Table files up to step + TABLE_AHEAD (a worker that reads past them drops the step)."""
    gfile = pipeline.tf_module().io.gfile
    limit = min(self._end, step + TABLE_AHEAD)
    while self._tabled < limit:
      lo = self._tabled
      hi = min(lo + TABLE_STEPS, self._end)
      _write_atomic(gfile, os.path.join(self._tables, table_name(lo // TABLE_STEPS)),
                    table_bytes(self._pool, self._config, self._rows, lo, hi))
      self._tabled = hi

  def _service_dataset(self, first: int):
    tf = pipeline.tf_module()
    rows, shots = self._rows, int(self._config.shots)
    size = int(self._config.train.crop_size)
    n = len(rows) * (shots + 1)
    records = self._records.rstrip('/') + '/'
    tables = self._tables.rstrip('/') + '/'
    image_fn = graph_pipeline.train_image_fn(self._config, self._pool.split.num_classes,
                                             records=True)

    def one(args):
      path, class_id, seed = args
      image, label = image_fn(tf.io.read_file(path), tf.constant(b''), class_id, seed)
      # Labels travel as uint8 (their values are 0, 1 and 255): a quarter of int32's bytes.
      return (tf.ensure_shape(image, [size, size, 3]),
              tf.ensure_shape(tf.cast(label, tf.uint8), [size, size]))

    def per_step(step):
      chunk = step // TABLE_STEPS
      data = tf.io.read_file(tables + tf.strings.as_string(chunk, width=8, fill='0') + '.tbl')
      table = tf.reshape(tf.io.decode_raw(data, tf.int64), [-1, n, 4])[step - chunk * TABLE_STEPS]
      index, class_id = tf.cast(table[:, 0], tf.int32), tf.cast(table[:, 1], tf.int32)
      paths = records + tf.strings.as_string(index, width=8, fill='0') + '.rec'
      image, label = tf.map_fn(
          one, (paths, class_id, table[:, 2:]), parallel_iterations=n,
          fn_output_signature=(tf.TensorSpec([size, size, 3], tf.float32),
                               tf.TensorSpec([size, size], tf.uint8)))
      out = graph_pipeline._group({'image': image, 'label': label, 'index': index,  # pylint: disable=protected-access
                                   'class_id': class_id}, len(rows), shots)
      out['step'] = step
      return out

    ds = tf.data.Dataset.range(first, self._end)   # dynamic sharding: one step per split
    ds = ds.map(per_step, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.ignore_errors()   # a failed step is rebuilt by the client
    ds = ds.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
        service=self._target, compression=None))   # float images: compressing costs, saves ~0
    # Receiving and widening the labels run on tf.data's threads, not under this thread's GIL.
    ds = ds.map(lambda e: {k: tf.cast(v, tf.int32) if k in LABELS else v for k, v in e.items()})
    return ds.prefetch(CLIENT_PREFETCH)

  def __next__(self) -> dict:
    if self._iterator is not None and self._next >= self._end:
      self.close()   # its tables are no longer needed
    if self._iterator is None:
      raise StopIteration
    tf = pipeline.tf_module()
    step = self._next
    self._write_tables(step)
    # Holding `window` later steps while this one has not come: it was dropped (a bad sample,
    # a lost worker, a missing table) or is late; either way the rebuild gives its numbers.
    while step not in self._ready and self._delivering and len(self._ready) < self._window:
      try:
        element = next(self._iterator)
      except StopIteration:
        self._delivering = False
      except tf.errors.OpError as e:   # the job failed: what it did not deliver is rebuilt
        logging.warning('tf.data service from step %d: %s', step, e.message)
        self._delivering = False
      else:
        got = int(element['step'])
        if got >= step and got not in self._ready:   # a late copy of a rebuilt step: dropped
          self._ready[got] = _batch(element)
    batch = self._ready.pop(step, None)
    if batch is None:
      self.dropped += 1
      batch = self.rebuild(step)
    self._next += 1
    return batch

  def close(self) -> None:
    if self._iterator is not None:
      self._iterator = None
      self._ready.clear()
      gfile = pipeline.tf_module().io.gfile
      if gfile.exists(self._tables):
        gfile.rmtree(self._tables)


def train_dataset(pool, config, rows: Sequence[int], first: int, end: int) -> ServiceTrainStream:
  return ServiceTrainStream(pool, config, rows, first, end)
