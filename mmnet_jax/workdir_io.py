"""What a run writes beside its checkpoints: the config, results, TensorBoard scalars, and the
lock that keeps two runs out of one workdir."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import tempfile
import time

import ml_collections

LOCK_FILE = 'run.lock'
CONFIG_FILE = 'config.json'   # read back by workdir_config for eval and predict


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_json_atomic(path: str, obj) -> None:
  """Writes JSON to `path` through a temporary file, so a crash never leaves half a file.

  The file gets the mode of a plain `open` (0644 under the usual umask 022): mkstemp's 0600
  made results and configs unreadable to the rest of a shared group.
  """
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


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the run's config as JSON in the workdir."""
  write_json_atomic(os.path.join(workdir, CONFIG_FILE), config.to_dict())


# Fingerprint fields added since checkpoints were first written: their value in older ones.
LEGACY_FINGERPRINT = {'model_name': 'mmnet'}   # before the registry every run was MM-Net


def check_fingerprint(meta: dict, expected: dict, where: str) -> None:
  """Raises a clear error when a checkpoint was written by another model or config."""
  found = meta.get('fingerprint')
  if found is None:
    return
  found = {**LEGACY_FINGERPRINT, **found}
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


class WorkdirInUseError(RuntimeError):
  """Another live process holds the workdir's lock."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """Exclusive use of a workdir by one run: `<workdir>/run.lock` holds JSON {pid, host, since}.

  The lock is an flock on that file, so the kernel releases it when the holder dies in any way
  (SIGKILL included); the JSON only names the holder in messages. A finished run removes the
  file while still holding the lock; a process that locked the file meanwhile sees that its
  path now names another file (or none) and starts over on the new one. A lock file left by a dead
  process is taken over with a warning. Where flock is unsupported (some network filesystems)
  the JSON decides: a live pid on this host holds the workdir, a dead one is stale; a holder on
  another host cannot be checked and is refused (delete the file if that run is gone).
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd = None

  def _holder(self) -> dict:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def _in_use(self, holder: dict) -> WorkdirInUseError:
    return WorkdirInUseError(
        f'workdir {os.path.dirname(self.path)} is in use by pid {holder.get("pid")} on host '
        f'{holder.get("host")!r} (lock {self.path}); use another --workdir or stop that run')

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirInUseError naming the holder's pid and host."""
    import fcntl   # POSIX only; imported here so the module still imports elsewhere
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      holder = self._holder()
      locked = self._try_flock(fd, holder, fcntl)
      if not locked or self._still_named(fd):
        break
      os.close(fd)   # removed by the run that released it: lock the file now at the path
    self._record(fd, holder)

  def _still_named(self, fd: int) -> bool:
    try:
      return os.stat(self.path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      return False

  def _try_flock(self, fd: int, holder: dict, fcntl) -> bool:
    """True once `fd` is flocked, False where flock is unsupported and the recorded pid is
    gone; raises WorkdirInUseError for a live holder."""
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        os.close(fd)
        raise self._in_use(self._holder() or holder) from None
      if e.errno != errno.ENOLCK:
        os.close(fd)
        raise
      # No flock here: fall back to the recorded pid.
      if holder.get('pid') not in (None, os.getpid()) and (
          holder.get('host') != socket.gethostname() or _pid_alive(int(holder['pid']))):
        os.close(fd)
        raise self._in_use(holder) from None
      return False

  def _record(self, fd: int, holder: dict) -> None:
    if holder.get('pid') is not None and (holder.get('pid'), holder.get('host')) != (
        os.getpid(), socket.gethostname()):
      logging.warning('taking over the stale lock %s of pid %s on host %r (that run is gone)',
                      self.path, holder.get('pid'), holder.get('host'))
    record = json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                         'since': time.strftime('%Y-%m-%dT%H:%M:%S')})
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    """Removes the lock file, then drops the lock (no-op if not held). Removing it while the
    lock is held is safe: `acquire` re-checks that its locked file is still the named one."""
    if self._fd is None:
      return
    with contextlib.suppress(OSError):
      if self._still_named(self._fd):
        os.unlink(self.path)
    os.close(self._fd)   # closing the descriptor drops the flock
    self._fd = None

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc_info):
    self.release()
