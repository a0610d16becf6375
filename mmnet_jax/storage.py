"""One path layer for everything a run writes in its workdir: a local directory or gs://.

Local paths go through `os` exactly as before; gs:// paths go through etils epath's fsspec
(gcsfs) backend, never TensorFlow's GCS filesystem, with gcsfs's directory-listing cache turned
off: a cached listing never shows objects another process wrote after it, which would hide a
second run's lock or a newer checkpoint. orbax reaches gs:// through epath too: give it
EPATH_USE_TF=false so that it takes the same backend, not TensorFlow's.

Testing against an emulator (tests/test_gcs.py): STORAGE_EMULATOR_HOST=http://HOST:PORT for
gcsfs and google-cloud-storage, and GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false, since gcsfs's
bucket-type probe speaks gRPC, which emulators lack, and waits a minute per bucket.
"""

from __future__ import annotations

import contextlib
import glob as glob_lib
import json
import os
import tempfile

REMOTE_PREFIX = 'gs://'
# fsspec defaults for every gcsfs instance, epath's and orbax's included.
_GCS_OPTIONS = {'use_listings_cache': False}


def is_remote(path) -> bool:
  """True for a gs:// path, which the `os` functions cannot reach."""
  return os.fspath(path).startswith(REMOTE_PREFIX)


def abspath(path) -> str:
  """os.path.abspath for a local path; a gs:// one is already absolute (and abspath would
  turn it into CWD/gs:/...)."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def join(path, *parts) -> str:
  """os.path.join for both kinds (posixpath rules, so gs:// keeps its slashes)."""
  return os.path.join(os.fspath(path), *parts)


def _gcs():
  """epath's fsspec backend, never its TensorFlow one, with gcsfs's listing cache off."""
  import fsspec   # lazily: only gs:// needs fsspec, gcsfs and epath's backends
  from etils.epath import backend
  fsspec.config.conf.setdefault('gcs', {}).update(_GCS_OPTIONS)
  gcs = backend.fsspec_backend
  cache = gcs.fs(REMOTE_PREFIX).dircache
  if cache.use_listings_cache:   # a filesystem made before the options were set
    cache.use_listings_cache = False
    cache.clear()
  return gcs


def exists(path) -> bool:
  return _gcs().exists(os.fspath(path)) if is_remote(path) else os.path.exists(path)


def isfile(path) -> bool:
  if is_remote(path):
    return _gcs().fs(path).isfile(os.fspath(path))
  return os.path.isfile(path)


def isdir(path) -> bool:
  return _gcs().isdir(os.fspath(path)) if is_remote(path) else os.path.isdir(path)


def makedirs(path) -> None:
  """mkdir -p; on GCS, which has only object names, a no-op for a path inside a bucket."""
  if is_remote(path):
    _gcs().makedirs(os.fspath(path), exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def listdir(path) -> list[str]:
  """Sorted entry names (not paths) in `path`, read afresh from GCS on every call."""
  if is_remote(path):
    return sorted(_gcs().listdir(os.fspath(path)))
  return sorted(os.listdir(path))


def read_bytes(path) -> bytes:
  opener = _gcs().open if is_remote(path) else open
  with opener(os.fspath(path), 'rb') as f:
    return f.read()


def read_text(path) -> str:
  return read_bytes(path).decode()


def write_bytes(path, data: bytes) -> None:
  """Writes `data`; on GCS a single upload, so readers see the old object or the new one."""
  opener = _gcs().open if is_remote(path) else open
  with opener(os.fspath(path), 'wb') as f:
    f.write(data)


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode())


def remove(path) -> None:
  """Deletes one file or object; FileNotFoundError where there is none."""
  if is_remote(path):
    gcs = _gcs()
    if not gcs.fs(path).isfile(os.fspath(path)):
      raise FileNotFoundError(path)
    gcs.remove(os.fspath(path))
  else:
    os.remove(path)


def glob(pattern) -> list[str]:
  """Sorted paths matching `pattern` (`**` matches any depth), gs:// ones with their prefix."""
  if is_remote(pattern):
    return sorted(_gcs().glob(os.fspath(pattern)))
  return sorted(glob_lib.glob(os.fspath(pattern), recursive=True))


@contextlib.contextmanager
def local_copy(path):
  """A local path with the contents of `path`, for readers that take only local files
  (TensorFlow's, kept off gs://): `path` itself, or a temporary copy of the object."""
  if not is_remote(path):
    yield os.fspath(path)
    return
  with tempfile.TemporaryDirectory() as directory:
    local = os.path.join(directory, os.path.basename(os.fspath(path)))
    with open(local, 'wb') as f:
      f.write(read_bytes(path))
    yield local


def rename(path, target) -> None:
  """Moves a file or directory. On GCS a copy then a delete of every object below `path`: not
  atomic, so only for what no reader needs whole (checkpoints set aside)."""
  if is_remote(path):
    _gcs().fs(path).mv(os.fspath(path), os.fspath(target), recursive=True)
  else:
    os.rename(path, target)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_json_atomic(path, obj) -> None:
  """Writes `obj` as JSON so that a reader or a crash never sees half a file.

  Locally: through a temporary file in the same directory and os.replace. The file gets the
  mode of a plain `open` (0644 under the usual umask 022): mkstemp's 0600 made results and
  configs unreadable to the rest of a shared group. On GCS one object upload is already
  atomic, and a temporary object would be one more thing a reader could list or delete.
  """
  if is_remote(path):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True))
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix='.tmp')
  try:
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, 'w') as f:
      json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise
