"""Read PyTorch `.pth` files without PyTorch and without running checkpoint code.

Both serialisation formats that `torch.save` has written are supported:

* zip (torch >= 1.6): `<archive>/data.pkl` holds the object pickle, whose persistent ids
  name storages stored raw in `<archive>/data/<key>`; `<archive>/byteorder` says the byte
  order (little endian when absent).
* legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): consecutive pickles
  magic number, protocol version, sys_info, the object pickle, the list of storage keys,
  then for every key an int64 element count followed by the raw storage bytes.

The unpickler is restricted: `find_class` resolves only the handful of globals that
tensors, containers and numbers need and refuses every other global with an
`UnsafeCheckpointError` naming the file and the global, so nothing from a checkpoint is
ever called. Tensors (and `nn.Parameter`s) come back as numpy arrays that own their data,
honouring the storage offset, size and stride.

A crafted file cannot make the reader allocate more than the file justifies: every pickle is
scanned (`_check_pickle`) before it is unpickled, so a length field or memo index larger than
the pickle itself is refused before the C unpickler allocates for it; `bytes`/`bytearray` are
never called with a size; storages must hold exactly the bytes their ids declare; the copied
tensors may not exceed `_SHARED_FACTOR` x the storage bytes in the file (a zero-stride
1e7 x 1e7 view of one float is refused); containers nest at most `_MAX_DEPTH` levels. Each
such file, and any other malformed one, raises a one-line `CheckpointFormatError` naming it.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from typing import Any

import ml_dtypes
import numpy as np

from mmnet_jax import storage

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# Checkpoints nest a few levels (checkpoint -> optimizer -> state -> param -> buffer); a deeper
# (or cyclic) structure is crafted, and materialising it would exhaust Python's recursion.
_MAX_DEPTH = 100
# Copied tensors may take this many times the storage bytes in the file: tied or shared
# weights and small expanded (zero-stride) views fit, a view multiplying one storage does not.
_SHARED_FACTOR = 4
_SHARED_SLACK_BYTES = 2**28
# No zip member is decompressed beyond this (ResNet-101 MM-Net checkpoints are ~0.3 GB).
_MAX_MEMBER_BYTES = 2**34
# Opcodes that store into the memo at an explicit index (the C unpickler sizes the memo to it).
_MEMO_PUTS = frozenset(['PUT', 'BINPUT', 'LONG_BINPUT'])

# torch storage class name -> numpy dtype of one element.
_STORAGE_DTYPES = {
    'FloatStorage': np.dtype(np.float32),
    'DoubleStorage': np.dtype(np.float64),
    'HalfStorage': np.dtype(np.float16),
    'BFloat16Storage': np.dtype(ml_dtypes.bfloat16),
    'LongStorage': np.dtype(np.int64),
    'IntStorage': np.dtype(np.int32),
    'ShortStorage': np.dtype(np.int16),
    'CharStorage': np.dtype(np.int8),
    'ByteStorage': np.dtype(np.uint8),
    'BoolStorage': np.dtype(np.bool_),
    'ComplexFloatStorage': np.dtype(np.complex64),
    'ComplexDoubleStorage': np.dtype(np.complex128),
    'UntypedStorage': np.dtype(np.uint8),  # _rebuild_tensor_v3 (uint16, float8, ...) storages
}

# torch dtype name (as pickled: GLOBAL torch.<name>) -> numpy dtype; used by _rebuild_tensor_v3.
_TORCH_DTYPES = {
    'float32': np.dtype(np.float32),
    'float64': np.dtype(np.float64),
    'float16': np.dtype(np.float16),
    'bfloat16': np.dtype(ml_dtypes.bfloat16),
    'int64': np.dtype(np.int64),
    'int32': np.dtype(np.int32),
    'int16': np.dtype(np.int16),
    'int8': np.dtype(np.int8),
    'uint8': np.dtype(np.uint8),
    'uint16': np.dtype(np.uint16),
    'uint32': np.dtype(np.uint32),
    'uint64': np.dtype(np.uint64),
    'bool': np.dtype(np.bool_),
    'complex64': np.dtype(np.complex64),
    'complex128': np.dtype(np.complex128),
    'float8_e4m3fn': np.dtype(ml_dtypes.float8_e4m3fn),
    'float8_e5m2': np.dtype(ml_dtypes.float8_e5m2),
}

# Builtins that the pickle protocol uses to rebuild plain containers and numbers.
_SAFE_BUILTINS = frozenset(
    ['dict', 'list', 'tuple', 'set', 'frozenset', 'int', 'float', 'complex', 'bool',
     'bytes', 'bytearray', 'str', 'slice'])


class UnsafeCheckpointError(pickle.UnpicklingError):
  """A checkpoint referenced a global outside the allow-list (it was not imported)."""


class CheckpointFormatError(ValueError):
  """A checkpoint is malformed or uses a feature this reader does not support."""


class _BadPickle(CheckpointFormatError):
  """A pickle stream is truncated, unknown or asks for more memory than its bytes justify."""


class _StorageType:
  """Stand-in for a torch storage class (e.g. `torch.FloatStorage`): only its dtype."""

  def __init__(self, name: str, dtype: np.dtype):
    self.name = name
    self.dtype = dtype


class _TorchDtype:
  """Stand-in for a `torch.dtype` global such as `torch.float32`."""

  def __init__(self, dtype: np.dtype):
    self.dtype = dtype


class _Storage:
  """A storage named by a persistent id; `data` (flat numpy) is filled once read."""

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key = key
    self.dtype = dtype
    self.numel = numel
    self.data: np.ndarray | None = None


class _StorageView:
  """Legacy storage view: a slice [offset, offset + numel) of a root storage."""

  def __init__(self, root: _Storage, offset: int, numel: int):
    self.root = root
    self.offset = offset
    self.numel = numel
    self.dtype = root.dtype


class _TensorRef:
  """A tensor whose storage bytes may not be read yet (legacy files store them last)."""

  def __init__(self, storage, offset, size, stride, dtype=None):
    self.storage = storage
    self.offset = int(offset)
    self.size = tuple(int(s) for s in size)
    self.stride = tuple(int(s) for s in stride)
    self.dtype = dtype  # only _rebuild_tensor_v3 reinterprets the storage


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(dtype, _TorchDtype):
    raise CheckpointFormatError(f'_rebuild_tensor_v3 expects a torch dtype, got {dtype!r}')
  return _TensorRef(storage, storage_offset, size, stride, dtype=dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  del requires_grad, backward_hooks, state
  return data


def _torch_size(sizes=()):
  return tuple(sizes)


_TORCH_UTILS = {
    '_rebuild_tensor': _rebuild_tensor,
    '_rebuild_tensor_v2': _rebuild_tensor_v2,
    '_rebuild_tensor_v3': _rebuild_tensor_v3,
    '_rebuild_parameter': _rebuild_parameter,
    '_rebuild_parameter_with_state': _rebuild_parameter_with_state,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only allow-listed globals and torch storage persistent ids."""

  def __init__(self, file, source: str, storages: dict[str, _Storage], legacy: bool):
    super().__init__(file, encoding='latin1')
    self._source = source
    self._storages = storages
    self._legacy = legacy

  def find_class(self, module, name):
    resolved = _resolve_global(module, name)
    if resolved is None:
      raise UnsafeCheckpointError(
          f'{self._source}: refusing to load global {module}.{name!s}: only tensors, '
          'containers and numbers are allowed in a checkpoint')
    return resolved

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid:
      raise CheckpointFormatError(f'{self._source}: unexpected persistent id {pid!r}')
    typename = pid[0].decode('ascii') if isinstance(pid[0], bytes) else pid[0]
    if typename != 'storage':
      raise UnsafeCheckpointError(
          f'{self._source}: refusing persistent id of type {typename!r} (only storages '
          'are allowed; whole pickled modules are not supported)')
    if self._legacy:
      if len(pid) != 6:
        raise CheckpointFormatError(f'{self._source}: bad legacy storage id {pid!r}')
      storage_type, key, _location, numel, view = pid[1:]
    else:
      if len(pid) != 5:
        raise CheckpointFormatError(f'{self._source}: bad storage id {pid!r}')
      storage_type, key, _location, numel = pid[1:]
      view = None
    if not isinstance(storage_type, _StorageType):
      raise CheckpointFormatError(
          f'{self._source}: storage {key!r} has no storage type ({storage_type!r})')
    key = str(key)
    storage = self._storages.get(key)
    if storage is None:
      storage = _Storage(key, storage_type.dtype, int(numel))
      self._storages[key] = storage
    if view is not None:
      _view_key, offset, view_numel = view
      return _StorageView(storage, int(offset), int(view_numel))
    return storage


def _resolve_global(module: str, name: str):
  """Returns the stand-in for an allow-listed global, or None if it is not allowed."""
  if module == 'collections' and name == 'OrderedDict':
    return collections.OrderedDict
  if module in ('builtins', '__builtin__') and name in ('bytes', 'bytearray'):
    return _BYTES_CONSTRUCTORS[name]
  if module in ('builtins', '__builtin__') and name in _SAFE_BUILTINS:
    return getattr(__import__('builtins'), name)
  if module == '_codecs' and name == 'encode':
    # Protocol-2 pickles of `bytes` call _codecs.encode(str, 'latin1').
    return _codecs_encode
  if module == 'torch._utils' and name in _TORCH_UTILS:
    return _TORCH_UTILS[name]
  if module in ('torch', 'torch.cuda') and name in _STORAGE_DTYPES:
    return _StorageType(f'{module}.{name}', _STORAGE_DTYPES[name])
  if module == 'torch' and name in _TORCH_DTYPES:
    return _TorchDtype(_TORCH_DTYPES[name])
  if module == 'torch' and name == 'Size':
    return _torch_size
  return None


def _bytes_constructor(cls):
  """`cls` (bytes or bytearray) called only as pickles call it: with no argument or with data.

  `bytes(10**12)` would allocate a terabyte of zeros that the file does not contain.
  """

  def construct(*args):
    if args and not isinstance(args[0], (str, bytes, bytearray)):
      raise CheckpointFormatError(
          f'refusing {cls.__name__}({args[0]!r:.40}): pickles build {cls.__name__} from data, '
          'never from a size')
    return cls(*args)

  return construct


_BYTES_CONSTRUCTORS = {'bytes': _bytes_constructor(bytes),
                       'bytearray': _bytes_constructor(bytearray)}


def _check_pickle(f: io.BytesIO, source: str) -> None:
  """Scans one pickle from `f`'s position (restored after) without building anything.

  Refuses what would make the C unpickler allocate memory the file does not hold: a counted
  argument (BINBYTES8, BYTEARRAY8, LONG4, ...) longer than the bytes left, and a memo index
  larger than the bytes read so far (the C memo is resized to twice the index and cleared;
  picklers number memo entries from 0, one per opcode at most).
  """
  start = f.tell()
  try:
    for opcode, arg, pos in pickletools.genops(f):
      if opcode.name in _MEMO_PUTS and arg > pos - start:
        raise _BadPickle(f'{source}: memo index {arg:,} at byte {pos} is larger than the '
                         'pickle read so far (crafted to exhaust memory)')
  except ValueError as e:  # genops: truncated argument, unknown opcode, no STOP
    if isinstance(e, _BadPickle):
      raise
    raise _BadPickle(f'{source}: malformed pickle ({e})') from e
  finally:
    f.seek(start)


def _unpickle(f: io.BytesIO, source: str, storages: dict[str, _Storage], legacy: bool) -> Any:
  """The next pickle of `f`, checked by `_check_pickle`, through the restricted unpickler."""
  _check_pickle(f, source)
  return _RestrictedUnpickler(f, source, storages, legacy).load()


def _codecs_encode(obj, encoding='utf-8'):
  if not isinstance(obj, str) or encoding not in ('latin1', 'latin-1', 'utf-8', 'utf8'):
    raise CheckpointFormatError(f'unexpected _codecs.encode({type(obj).__name__}, {encoding!r})')
  return obj.encode(encoding)


def load(path: str | os.PathLike) -> Any:
  """Loads a `.pth` file written by `torch.save` without importing torch.

  Args:
    path: the checkpoint file (zip or legacy format).

  Returns:
    The saved object with every tensor replaced by a numpy array (float32, float16,
    bfloat16 via ml_dtypes, int64, bool, ...) that owns its memory.

  Raises:
    UnsafeCheckpointError: the pickle references a global outside the allow-list.
    CheckpointFormatError: the file is not a torch checkpoint this reader understands.
  """
  source = os.fspath(path)
  raw = storage.read_bytes(source)
  try:
    if zipfile.is_zipfile(io.BytesIO(raw)):
      return _load_zip(raw, source)
    return _load_legacy(raw, source)
  except UnsafeCheckpointError:
    raise
  except CheckpointFormatError as e:
    if source in str(e):
      raise
    raise CheckpointFormatError(f'{source}: {e}') from e  # raised where the file is unknown
  except (TypeError, ValueError, KeyError, IndexError, AttributeError, EOFError,
          OverflowError, RecursionError, NotImplementedError, struct.error, zlib.error,
          zipfile.BadZipFile, pickle.UnpicklingError) as e:
    # Containers, numbers and stand-ins of the wrong type or arity anywhere in the pickle.
    raise CheckpointFormatError(
        f'{source}: malformed checkpoint ({type(e).__name__}: {e})'.splitlines()[0]) from e


def _read_member(zf: zipfile.ZipFile, name: str, source: str, nbytes: int | None = None
                 ) -> bytes:
  """Member `name`, after checking its declared size (a deflate bomb is never inflated)."""
  size = zf.getinfo(name).file_size
  if nbytes is not None and size != nbytes:
    raise CheckpointFormatError(f'{source}: {name} holds {size:,} bytes, its storage id '
                                f'declares {nbytes:,}')
  if size > _MAX_MEMBER_BYTES:
    raise CheckpointFormatError(f'{source}: {name} would inflate to {size:,} bytes (more '
                                f'than {_MAX_MEMBER_BYTES:,})')
  return zf.read(name)


def _load_zip(raw: bytes, source: str) -> Any:
  with zipfile.ZipFile(io.BytesIO(raw)) as zf:
    names = zf.namelist()
    pickles = [n for n in names if n.endswith('data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
      raise CheckpointFormatError(
          f'{source}: expected one <archive>/data.pkl in the zip, found {pickles}')
    prefix = pickles[0][:-len('data.pkl')]
    byteorder = 'little'
    if prefix + 'byteorder' in names:
      byteorder = _read_member(zf, prefix + 'byteorder', source).decode('ascii').strip()
    if byteorder not in ('little', 'big'):
      raise CheckpointFormatError(f'{source}: unknown byteorder {byteorder!r}')
    storages: dict[str, _Storage] = {}
    obj = _unpickle(io.BytesIO(_read_member(zf, pickles[0], source)), source, storages,
                    legacy=False)
    for key, storage in storages.items():
      member = f'{prefix}data/{key}'
      if member not in names:
        raise CheckpointFormatError(f'{source}: storage {member} is missing')
      payload = _read_member(zf, member, source, storage.numel * storage.dtype.itemsize)
      storage.data = _frombuffer(payload, storage, byteorder, source)
  return _materialise(obj, source, _Budget(storages, source))


def _load_legacy(raw: bytes, source: str) -> Any:
  f = io.BytesIO(raw)

  def plain_load(what):
    # The header pickles are plain data: the same restricted unpickler, no storages.
    try:
      return _unpickle(f, source, {}, legacy=True)
    except (EOFError, pickle.UnpicklingError, _BadPickle) as e:
      if isinstance(e, UnsafeCheckpointError):
        raise
      detail = str(e).removeprefix(f'{source}: ')
      raise CheckpointFormatError(
          f'{source}: not a torch checkpoint (reading {what} failed: {detail})') from e

  magic = plain_load('the magic number')
  if magic != _LEGACY_MAGIC:
    raise CheckpointFormatError(
        f'{source}: not a torch checkpoint (bad magic number {magic!r}); the pre-0.4 tar '
        'format is not supported')
  protocol = plain_load('the protocol version')
  if protocol != _LEGACY_PROTOCOL:
    raise CheckpointFormatError(f'{source}: unsupported legacy protocol {protocol!r}')
  sys_info = plain_load('sys_info')
  little = sys_info.get('little_endian', True) if isinstance(sys_info, dict) else True
  byteorder = 'little' if little else 'big'

  storages: dict[str, _Storage] = {}
  obj = _unpickle(f, source, storages, legacy=True)
  keys = plain_load('the storage keys')
  for key in keys:
    storage = storages.get(str(key))
    if storage is None:
      raise CheckpointFormatError(f'{source}: storage key {key!r} was never referenced')
    header = f.read(8)
    if len(header) != 8:
      raise CheckpointFormatError(f'{source}: truncated before storage {key!r}')
    (numel,) = struct.unpack('<q' if little else '>q', header)
    nbytes = numel * storage.dtype.itemsize
    payload = f.read(nbytes)
    if numel != storage.numel or len(payload) != nbytes:
      raise CheckpointFormatError(
          f'{source}: storage {key!r} holds {len(payload)} bytes, expected '
          f'{storage.numel} elements of {storage.dtype}')
    storage.data = _frombuffer(payload, storage, byteorder, source)
  return _materialise(obj, source, _Budget(storages, source))


def _frombuffer(payload: bytes, storage: _Storage, byteorder: str, source: str) -> np.ndarray:
  dtype = storage.dtype.newbyteorder('<' if byteorder == 'little' else '>')
  if len(payload) != storage.numel * dtype.itemsize:
    raise CheckpointFormatError(
        f'{source}: storage {storage.key!r} holds {len(payload)} bytes, expected '
        f'{storage.numel} x {dtype.itemsize}')
  # Native byte order so that downstream code never sees a swapped dtype.
  return np.frombuffer(payload, dtype=dtype).astype(storage.dtype, copy=False)


class _Budget:
  """Bytes the copied tensors may still take: `_SHARED_FACTOR` x the storages' bytes."""

  def __init__(self, storages: dict[str, _Storage], source: str):
    stored = sum(s.data.nbytes for s in storages.values() if s.data is not None)
    self.limit = _SHARED_FACTOR * stored + _SHARED_SLACK_BYTES
    self.left = self.limit
    self.stored = stored
    self.source = source

  def take(self, nbytes: int, what: str) -> None:
    if nbytes > self.left:
      raise CheckpointFormatError(
          f'{self.source}: {what} takes {nbytes:,} bytes, past the {self.limit:,} that '
          f'{self.stored:,} bytes of storage allow (a zero-stride or repeatedly shared '
          'storage); refusing to allocate')
    self.left -= nbytes


def _tensor_to_numpy(ref: _TensorRef, source: str, budget: _Budget | None = None
                     ) -> np.ndarray:
  storage = ref.storage
  base_offset = 0
  if isinstance(storage, _StorageView):
    base_offset, view_numel, storage = storage.offset, storage.numel, storage.root
    if base_offset + view_numel > storage.numel:
      raise CheckpointFormatError(f'{source}: storage view outside storage {storage.key!r}')
  if not isinstance(storage, _Storage) or storage.data is None:
    raise CheckpointFormatError(f'{source}: tensor refers to an unread storage')
  flat = storage.data
  if ref.dtype is not None and ref.dtype != flat.dtype:
    if flat.nbytes % ref.dtype.itemsize:
      raise CheckpointFormatError(
          f'{source}: storage {storage.key!r} of {flat.nbytes} bytes is not a whole number of '
          f'{ref.dtype} elements ({ref.dtype.itemsize} bytes)')
    flat = flat.view(np.uint8).view(ref.dtype)  # v3: reinterpret the untyped bytes
  if any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
    raise CheckpointFormatError(f'{source}: negative size/stride/offset in a tensor')
  if len(ref.size) != len(ref.stride):
    raise CheckpointFormatError(f'{source}: size {ref.size} and stride {ref.stride} differ')
  nbytes = math.prod(ref.size) * flat.itemsize
  if budget is not None:
    budget.take(nbytes, f'a tensor of size {ref.size} stride {ref.stride}')
  start = base_offset + ref.offset
  if nbytes == 0:
    return np.zeros(ref.size, dtype=flat.dtype)
  # Bounds check before as_strided, which would otherwise read arbitrary memory.
  last = start + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
  if last >= flat.size:
    raise CheckpointFormatError(
        f'{source}: tensor of size {ref.size} stride {ref.stride} offset {ref.offset} '
        f'reads past the end of storage {storage.key!r} ({flat.size} elements)')
  item = flat.itemsize
  # A size-1 dimension's stride is never used; torch allows any value there.
  strides = tuple(0 if n == 1 else s * item for n, s in zip(ref.size, ref.stride))
  view = np.lib.stride_tricks.as_strided(flat[start:], shape=ref.size, strides=strides,
                                         writeable=False)
  return np.array(view, order='C', copy=True)


def _materialise(obj: Any, source: str, budget: _Budget | None = None, depth: int = 0) -> Any:
  """Replaces every _TensorRef in nested containers with its numpy array."""
  if depth > _MAX_DEPTH:
    raise CheckpointFormatError(
        f'{source}: containers nested more than {_MAX_DEPTH} levels deep (or cyclic)')
  if isinstance(obj, _TensorRef):
    return _tensor_to_numpy(obj, source, budget)
  if isinstance(obj, (_Storage, _StorageView)):
    raise CheckpointFormatError(f'{source}: bare storages (not tensors) are not supported')
  if isinstance(obj, dict):
    for k in list(obj.keys()):
      obj[k] = _materialise(obj[k], source, budget, depth + 1)
    return obj
  if isinstance(obj, list):
    obj[:] = [_materialise(v, source, budget, depth + 1) for v in obj]
    return obj
  if isinstance(obj, tuple):
    if type(obj) is not tuple:
      return obj
    return tuple(_materialise(v, source, budget, depth + 1) for v in obj)
  return obj
