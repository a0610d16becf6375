"""What a run writes beside its checkpoints: the config, results, TensorBoard scalars, and the
lock that keeps two runs out of one workdir."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid

import ml_collections

from mmnet_jax import storage

LOCK_FILE = 'run.lock'
CONFIG_FILE = 'config.json'   # read back by workdir_config for eval and predict


# Writes through a temporary file locally and as one object upload on gs://.
write_json_atomic = storage.write_json_atomic


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Records the run's config as JSON in the workdir."""
  write_json_atomic(storage.join(workdir, CONFIG_FILE), config.to_dict())


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
  """TensorBoard scalars and images through tf.summary (TensorFlow is already a dependency of
  tf.data).

  A gs:// logdir is written locally and its event files uploaded after every flush: TensorFlow's
  own GCS filesystem is kept off gs:// (it has no emulator endpoint to test it against).
  """

  def __init__(self, logdir: str):
    import tensorflow as tf   # lazily: importing TF costs seconds
    self._tf = tf
    self._remote = logdir if storage.is_remote(logdir) else None
    self._local = tempfile.mkdtemp(prefix='tensorboard-') if self._remote else logdir
    self._writer = tf.summary.create_file_writer(self._local)

  def scalars(self, step: int, values: dict) -> None:
    with self._writer.as_default():
      for name, value in values.items():
        self._tf.summary.scalar(name, value, step=step)
    self._writer.flush()
    self._upload()

  def images(self, step: int, images: dict) -> None:
    """{tag: (N, H, W, C) uint8} as TensorBoard images at `step`."""
    with self._writer.as_default():
      for tag, image in images.items():
        self._tf.summary.image(tag, image, step=step)
    self._writer.flush()
    self._upload()

  def _upload(self) -> None:
    """Copies each local event file whole (one object upload each) to the gs:// logdir."""
    if self._remote is None:
      return
    for name in os.listdir(self._local):
      with open(os.path.join(self._local, name), 'rb') as f:
        storage.write_bytes(storage.join(self._remote, name), f.read())

  def close(self) -> None:
    self._writer.close()
    self._upload()
    if self._remote is not None:
      shutil.rmtree(self._local, ignore_errors=True)


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
  """Exclusive use of a workdir by one run: `<workdir>/run.lock` holds JSON {pid, host, since,
  id} (id: a random name for this lock object, telling it from another's of the same pid).

  The lock is an flock on that file, so the kernel releases it when the holder dies in any way
  (SIGKILL included); the JSON only names the holder in messages. A finished run removes the
  file while still holding the lock; a process that locked the file meanwhile sees that its
  path now names another file (or none) and starts over on the new one. A lock file left by a dead
  process is taken over with a warning. Where flock is unsupported (some network filesystems)
  the JSON decides: a live pid on this host holds the workdir, a dead one is stale; a holder on
  another host cannot be checked and is refused (delete the file if that run is gone).

  On a gs:// workdir the lock is the object itself, created only where none exists (generation
  precondition 0, atomic on GCS) and holding the same JSON; release deletes it only while it
  still is this run's generation. Nothing removes it when its holder is killed: the next run on
  the holder's host takes over once that pid is gone, and a run elsewhere is refused with the
  `gcloud storage rm` command that frees the workdir.
  """

  def __init__(self, workdir: str):
    self.path = storage.join(workdir, LOCK_FILE)
    self._fd = None
    self._generation = None   # of the gs:// lock object while this run holds it
    self._id = uuid.uuid4().hex   # tells this run's lock object from any other's
    self._bucket = None   # google-cloud-storage's, made on first use

  def _holder(self) -> dict:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def _in_use(self, holder: dict) -> WorkdirInUseError:
    message = (
        f'workdir {os.path.dirname(self.path)} is in use by pid {holder.get("pid")} on host '
        f'{holder.get("host")!r} (lock {self.path}); use another --workdir or stop that run')
    if storage.is_remote(self.path):
      message += (f' (since {holder.get("since")}; if that run is gone, free the workdir with: '
                  f'gcloud storage rm {self.path})')
    return WorkdirInUseError(message)

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirInUseError naming the holder's pid and host."""
    if storage.is_remote(self.path):
      self._acquire_object()
      return
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
    record = self._record_json()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    os.fsync(fd)
    self._fd = fd

  def _record_json(self) -> str:
    return json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                       'since': time.strftime('%Y-%m-%dT%H:%M:%S'), 'id': self._id})

  def _blob(self, generation=None):
    if self._bucket is None:
      from google.cloud import storage as gcs   # lazily: only gs:// workdirs need it
      self._bucket = gcs.Client().bucket(self.path[len(storage.REMOTE_PREFIX):].split('/')[0])
    name = self.path[len(storage.REMOTE_PREFIX):].partition('/')[2]
    return self._bucket.blob(name, generation=generation)

  def _acquire_object(self) -> None:
    """Creates the lock object unless one exists; takes over one left by a dead pid on this
    host, refuses any other."""
    from google.api_core import exceptions
    while True:
      blob = self._blob()
      try:
        blob.upload_from_string(self._record_json(), content_type='application/json',
                                if_generation_match=0)
        self._generation = blob.generation
        return
      except exceptions.PreconditionFailed:
        pass
      found = self._blob_holder()
      if found is None:
        continue   # released since the create failed: try again
      holder, generation = found
      if holder.get('id') == self._id:   # a retried create whose first try had succeeded
        self._generation = generation
        return
      if not self._stale(holder):
        raise self._in_use(holder) from None
      logging.warning('taking over the stale lock %s of pid %s on host %r (that run is gone)',
                      self.path, holder.get('pid'), holder.get('host'))
      with contextlib.suppress(exceptions.PreconditionFailed, exceptions.NotFound):
        self._blob().delete(if_generation_match=generation)   # not one taken meanwhile

  def _blob_holder(self):
    """(the JSON, the generation) of the lock object, or None where there is none."""
    from google.api_core import exceptions
    try:
      blob = self._blob()
      blob.reload()
      data = self._blob(blob.generation).download_as_bytes()
    except exceptions.NotFound:
      return None
    try:
      holder = json.loads(data)
    except ValueError:
      holder = {}
    return (holder if isinstance(holder, dict) else {}), blob.generation

  @staticmethod
  def _stale(holder: dict) -> bool:
    """A holder known to be gone: a dead pid on this host. Other hosts cannot be checked."""
    pid = holder.get('pid')
    return (holder.get('host') == socket.gethostname() and isinstance(pid, int)
            and pid != os.getpid() and not _pid_alive(pid))

  def _release_object(self) -> None:
    """Deletes the lock object if it is still this run's generation. The precondition makes
    that atomic on GCS; the check before it is for emulators that ignore it on delete."""
    from google.api_core import exceptions
    found = self._blob_holder()
    try:
      if found is None or found[1] != self._generation:
        raise exceptions.PreconditionFailed('another generation')
      self._blob().delete(if_generation_match=self._generation)
    except (exceptions.PreconditionFailed, exceptions.NotFound):
      logging.warning('lock %s is no longer this run\'s (removed or taken over); left as it is',
                      self.path)
    self._generation = None

  def release(self) -> None:
    """Removes the lock file, then drops the lock (no-op if not held). Removing it while the
    lock is held is safe: `acquire` re-checks that its locked file is still the named one."""
    if self._generation is not None:
      self._release_object()
      return
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
