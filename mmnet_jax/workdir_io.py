"""What a run writes beside its checkpoints: the config, results and TensorBoard scalars."""

from __future__ import annotations

import json
import os
import tempfile

import ml_collections


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON to `path` through a temporary file, so a crash never leaves half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix='.tmp')
  with os.fdopen(fd, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the run's config as JSON in the workdir."""
  write_json_atomic(os.path.join(workdir, 'config.json'), config.to_dict())


def check_fingerprint(meta: dict, expected: dict, where: str) -> None:
  """Raises a clear error when a checkpoint was written by another model or config."""
  found = meta.get('fingerprint')
  if found is None:
    return
  expected = json.loads(json.dumps(expected))   # tuples -> lists, as stored in JSON
  diffs = [k for k in expected if found.get(k) != expected[k]]
  if diffs:
    details = '; '.join(f'{k}: checkpoint {found.get(k)!r} vs config {expected[k]!r}'
                        for k in diffs)
    raise ValueError(f'checkpoint in {where} was written by another model or config ({details})')


class SummaryWriter:
  """TensorBoard scalars through tf.summary (TensorFlow is already a dependency of tf.data)."""

  def __init__(self, logdir: str):
    import tensorflow as tf   # lazily: importing TF costs seconds
    self._tf = tf
    self._writer = tf.summary.create_file_writer(logdir)

  def scalars(self, step: int, values: dict) -> None:
    with self._writer.as_default():
      for name, value in values.items():
        self._tf.summary.scalar(name, value, step=step)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
