"""One builder at a time per dataset: concurrent runs on a fresh data_dir wait, then read.

Two runs started together on a data_dir without the dataset (two folds, a train and an eval)
both saw it missing, both generated it, and the later one died renaming its finished copy
onto the earlier one's (FileExistsError from TFDS). `prepare_once` holds an exclusive file
lock beside the dataset while checking and building, so the second run waits for the first
and then finds the dataset prepared.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Callable

from mmnet_jax import storage


@contextlib.contextmanager
def _locked(path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)   # released when the file closes, also if the process dies
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def lock_path(builder) -> str:
  """The lock file of `builder`'s dataset: `<data_dir>/<name>/<config>.build.lock`."""
  config = builder.builder_config.name if builder.builder_config else 'default'
  return os.path.join(str(builder.data_dir_root), builder.name, f'{config}.build.lock')


def prepare_once(builder, prepare: Callable[[], None]) -> bool:
  """Runs `prepare()` unless `builder` is prepared, under the dataset's lock; True if it ran."""
  if builder.is_prepared():   # the common case: no lock needed to read a finished build
    return False
  data_dir = str(builder.data_dir_root)
  if storage.is_remote(data_dir):
    raise ValueError(
        f'dataset.data_dir={data_dir!r} holds no prepared {builder.name}/'
        f'{builder.builder_config.name if builder.builder_config else "default"}: a gs:// '
        'data_dir is read-only here (array_record writes only local files, and the build lock '
        'is a local file lock). Build it with a local data_dir, then copy that directory '
        'there: gcloud storage cp -r LOCAL_DATA_DIR/* ' + data_dir)
  with _locked(lock_path(builder)):
    if builder.is_prepared():   # built by another process while this one waited
      return False
    prepare()
    return True
