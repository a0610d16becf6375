"""Tests for mmnet_jax.torch_pickle on fixtures written by real torch.save (no torch here)."""

import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile

import numpy as np
import pytest

from mmnet_jax import torch_pickle

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


@pytest.fixture(scope='module')
def expected():
  with np.load(os.path.join(FIXTURES, 'expected.npz')) as data:
    return {k: data[k] for k in data.files}


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_tensors_match_torch(fmt, expected):
  obj = torch_pickle.load(os.path.join(FIXTURES, f'tensors_{fmt}.pth'))
  tensors = obj['tensors']
  assert isinstance(tensors, collections.OrderedDict)
  names = [k.split('/', 1)[1] for k in expected if k.startswith('tensors/')]
  assert sorted(tensors) == sorted(names)
  for name in names:
    want = expected[f'tensors/{name}']
    got = tensors[name]
    assert isinstance(got, np.ndarray), name
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    np.testing.assert_array_equal(got, want, err_msg=name)
  # Strided views come back as owned, C-contiguous copies.
  assert tensors['transposed'].flags['C_CONTIGUOUS'] and tensors['transposed'].flags['OWNDATA']
  np.testing.assert_array_equal(tensors['offset_slice'], [[23, 24, 25, 26], [33, 34, 35, 36]])
  assert tensors['f16'].dtype == np.float16 and tensors['i64'][2] == 2**40
  assert obj['meta'] == {'list': [1, 2.5, 'x'], 'tuple': (None, True)}


@pytest.mark.parametrize('name', ['pfenet_resnet_legacy', 'torchvision_resnet'])
def test_state_dicts_match_torch(name, expected):
  sd = torch_pickle.load(os.path.join(FIXTURES, f'{name}.pth'))
  keys = [k.split('/', 1)[1] for k in expected if k.startswith(name + '/')]
  assert list(sd) == keys  # order preserved (OrderedDict)
  for k in keys:
    np.testing.assert_array_equal(sd[k], expected[f'{name}/{k}'], err_msg=k)
  assert sd['bn1.num_batches_tracked'].dtype == np.int64


def test_official_checkpoint_with_optimizer(expected):
  ckpt = torch_pickle.load(os.path.join(FIXTURES, 'mmnet_official.pth'))
  assert ckpt['epoch'] == 7
  sd = ckpt['state_dict']
  assert all(k.startswith('module.') for k in sd)
  np.testing.assert_array_equal(sd['module.part_emb_2_level'],
                                expected['mmnet_official/module.part_emb_2_level'])
  state = ckpt['optimizer']['state']
  assert state and all(isinstance(v['momentum_buffer'], np.ndarray) for v in state.values())
  assert ckpt['optimizer']['param_groups'][0]['momentum'] == 0.9


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_malicious_reduce_is_refused(fmt, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the payload would `touch mmnet_pwned_marker` in the cwd
  path = os.path.join(FIXTURES, f'malicious_{fmt}.pth')
  with pytest.raises(torch_pickle.UnsafeCheckpointError) as err:
    torch_pickle.load(path)
  assert 'posix.system' in str(err.value) and path in str(err.value)
  assert not (tmp_path / 'mmnet_pwned_marker').exists()


def _zip_with_pickle(tmp_path, payload: bytes):
  path = tmp_path / 'crafted.pth'
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', payload)
    zf.writestr('archive/byteorder', 'little')
  return str(path)


def test_refuses_builtins_eval(tmp_path):
  payload = b'cbuiltins\neval\n(V1+1\ntR.'  # protocol 0: eval('1+1')
  assert pickle.loads(payload) == 2  # sanity: the payload really is a call
  path = _zip_with_pickle(tmp_path, payload)
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match=r'builtins\.eval'):
    torch_pickle.load(path)


def test_refuses_pickled_module_source(tmp_path):
  # Legacy torch saved whole nn.Modules with persistent id ('module', cls, file, source).
  buf = io.BytesIO()

  class P(pickle.Pickler):

    def persistent_id(self, obj):
      return ('module', 'X', 'x.py', 'src') if obj == 'M' else None

  P(buf, protocol=2).dump(['M'])
  with pytest.raises(torch_pickle.UnsafeCheckpointError, match="'module'"):
    torch_pickle.load(_zip_with_pickle(tmp_path, buf.getvalue()))


def test_out_of_bounds_stride_is_rejected():
  storage = torch_pickle._Storage('0', np.dtype(np.float32), 6)
  storage.data = np.arange(6, dtype=np.float32)
  ok = torch_pickle._TensorRef(storage, 1, (2, 2), (3, 1))
  np.testing.assert_array_equal(torch_pickle._tensor_to_numpy(ok, 'f'), [[1, 2], [4, 5]])
  bad = torch_pickle._TensorRef(storage, 2, (2, 2), (3, 2))  # last index 2 + 3 + 2 = 7 >= 6
  with pytest.raises(torch_pickle.CheckpointFormatError, match='past the end'):
    torch_pickle._tensor_to_numpy(bad, 'f')


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / 'junk.pth'
  path.write_bytes(pickle.dumps({'a': 1}, protocol=2))
  with pytest.raises(torch_pickle.CheckpointFormatError, match='magic'):
    torch_pickle.load(str(path))


# Crafted files: each must end in one CheckpointFormatError naming the file, and never
# allocate what it asks for (the old reader died with MemoryError or RecursionError).


def _global(module: str, name: str) -> bytes:
  return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def _plain(obj) -> bytes:
  """Opcodes pushing a plain value (no PROTO, no STOP, no memo)."""
  return pickletools.optimize(pickle.dumps(obj, protocol=2))[2:-1]


def _tensor_pickle(size, stride, numel, storage='FloatStorage', v3_dtype=None) -> bytes:
  """A torch-style pickle of one tensor on storage '0' (as torch.save writes it)."""
  persid = (b'(' + _plain('storage') + _global('torch', storage) + _plain('0') + _plain('cpu')
            + _plain(numel) + b'tQ')  # MARK ... TUPLE BINPERSID
  args = persid + _plain(0) + _plain(tuple(size)) + _plain(tuple(stride)) + b'\x89}'
  if v3_dtype is None:
    return b'\x80\x02' + _global('torch._utils', '_rebuild_tensor_v2') + b'(' + args + b'tR.'
  return (b'\x80\x02' + _global('torch._utils', '_rebuild_tensor_v3') + b'(' + args
          + _global('torch', v3_dtype) + b'tR.')


def _zip_checkpoint(tmp_path, payload: bytes, storage: bytes | None = None) -> str:
  path = tmp_path / 'crafted.pth'
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', payload)
    zf.writestr('archive/byteorder', 'little')
    if storage is not None:
      zf.writestr('archive/data/0', storage)
  return str(path)


def _refused(path: str, match: str) -> str:
  with pytest.raises(torch_pickle.CheckpointFormatError, match=match) as err:
    torch_pickle.load(path)
  message = str(err.value)
  assert path in message and '\n' not in message
  return message


def test_tensor_helper_builds_real_tensors(tmp_path):
  path = _zip_checkpoint(tmp_path, _tensor_pickle((2, 3), (3, 1), 6),
                         np.arange(6, dtype='<f4').tobytes())
  np.testing.assert_array_equal(torch_pickle.load(path), np.arange(6).reshape(2, 3))


def test_zero_stride_huge_view_is_refused(tmp_path):
  # One float viewed as 1e7 x 1e7: the old reader asked numpy for 400 TB.
  path = _zip_checkpoint(tmp_path, _tensor_pickle((10**7, 10**7), (0, 0), 1),
                         np.ones(1, '<f4').tobytes())
  _refused(path, 'refusing to allocate')


def test_small_expanded_and_shared_tensors_still_load(tmp_path):
  # torch.save keeps expand()ed views as stride 0; small ones are copied as before.
  path = _zip_checkpoint(tmp_path, _tensor_pickle((1000, 4), (0, 1), 4),
                         np.arange(4, dtype='<f4').tobytes())
  np.testing.assert_array_equal(torch_pickle.load(path), np.tile(np.arange(4), (1000, 1)))


def test_shared_storage_amplification_is_refused(tmp_path, monkeypatch):
  # One 4-float storage (16 bytes) memoised and referenced by three 2 x 4 expanded tensors
  # (32 bytes each): the budget is 4 x 16 bytes (slack 0 here), so the third is refused.
  monkeypatch.setattr(torch_pickle, '_SHARED_SLACK_BYTES', 0)
  tensor = _tensor_pickle((2, 4), (0, 1), 4)[2:-1]  # leaves the tensor on the stack
  payload = b'\x80\x02(' + tensor + b'q\x00h\x00h\x00l.'  # [t, t, t]
  path = _zip_checkpoint(tmp_path, payload, np.arange(4, dtype='<f4').tobytes())
  with pytest.raises(torch_pickle.CheckpointFormatError, match='past the 64 that 16 bytes'):
    torch_pickle.load(path)
  monkeypatch.setattr(torch_pickle, '_SHARED_FACTOR', 6)
  assert len(torch_pickle.load(path)) == 3


def test_deeply_nested_lists_are_refused(tmp_path):
  n = 100_000
  payload = b'\x80\x02' + b']' * n + b'a' * (n - 1) + b'.'  # [[[...]]] 100k deep
  assert pickle.loads(payload) is not None  # sanity: the C unpickler itself builds it
  _refused(_zip_checkpoint(tmp_path, payload), 'nested more than')


def test_cyclic_list_is_refused(tmp_path):
  payload = b'\x80\x02]q\x00h\x00a.'  # x = []; x.append(x)
  _refused(_zip_checkpoint(tmp_path, payload), 'nested more than')


def test_bytes_of_a_size_is_refused(tmp_path):
  payload = b'\x80\x02' + _global('__builtin__', 'bytes') + _plain(10**12) + b'\x85R.'
  _refused(_zip_checkpoint(tmp_path, payload), r'refusing bytes\(1000000000000\)')


@pytest.mark.parametrize('opcode', [b'\x8e', b'\x96'], ids=['BINBYTES8', 'BYTEARRAY8'])
def test_huge_length_field_is_refused(tmp_path, opcode):
  # A 1e12-byte length on a 3-byte payload: the C unpickler allocates the length first.
  payload = b'\x80\x05' + opcode + struct.pack('<Q', 10**12) + b'abc.'
  _refused(_zip_checkpoint(tmp_path, payload), 'malformed pickle')


def test_huge_memo_index_is_refused(tmp_path):
  # LONG_BINPUT 2**32 - 1: the C unpickler resizes its memo to 2**33 entries (64 GB).
  payload = b'\x80\x02N' + b'r' + struct.pack('<I', 2**32 - 1) + b'.'
  _refused(_zip_checkpoint(tmp_path, payload), 'memo index 4,294,967,295')


def test_storage_member_size_must_match_its_id(tmp_path):
  path = _zip_checkpoint(tmp_path, _tensor_pickle((2,), (1,), 10**12), b'\0' * 8)
  _refused(path, 'holds 8 bytes, its storage id declares 4,000,000,000,000')


def test_v3_untyped_storage_loads(tmp_path):
  # torch >= 2.3 saves uint16/uint32/float8 tensors with _rebuild_tensor_v3 on an
  # UntypedStorage (its byte count as numel).
  data = np.array([1, 2, 65535], '<u2')
  path = _zip_checkpoint(tmp_path, _tensor_pickle((3,), (1,), 6, 'UntypedStorage', 'uint16'),
                         data.tobytes())
  got = torch_pickle.load(path)
  assert got.dtype == np.uint16
  np.testing.assert_array_equal(got, data)


def test_v3_storage_not_a_whole_number_of_elements(tmp_path):
  # 6 bytes read as float32: numpy's raw "size must be a divisor" error before.
  path = _zip_checkpoint(tmp_path, _tensor_pickle((1,), (1,), 6, 'ByteStorage', 'float32'),
                         b'\0' * 6)
  _refused(path, 'not a whole number of float32')


@pytest.mark.parametrize('payload, what', [
    (b'\x80\x02' + _global('torch._utils', '_rebuild_tensor_v2') + b'K\x01\x85R.', 'TypeError'),
    (b'\x80\x02' + _global('collections', 'OrderedDict') + b'K\x01\x85R.', 'TypeError'),
    (b'\x80\x02' + _global('torch._utils', '_rebuild_tensor_v3') + b'(K\x01K\x00)))\x89}K\x01tR.',
     'expects a torch dtype'),
], ids=['v2-arity', 'OrderedDict-of-int', 'v3-dtype'])
def test_wrong_arguments_are_one_line_errors(tmp_path, payload, what):
  _refused(_zip_checkpoint(tmp_path, payload), what)


def test_legacy_zero_stride_is_refused(tmp_path):
  # The legacy format: magic, protocol, sys_info, object, keys, then count + bytes.
  persid = (b'(' + _plain('storage') + _global('torch', 'FloatStorage') + _plain('0')
            + _plain('cpu') + _plain(1) + b'NtQ')
  obj = (b'\x80\x02' + _global('torch._utils', '_rebuild_tensor') + b'(' + persid + _plain(0)
         + _plain((10**7, 10**7)) + _plain((0, 0)) + b'tR.')
  raw = b''.join([pickle.dumps(torch_pickle._LEGACY_MAGIC, 2),
                  pickle.dumps(torch_pickle._LEGACY_PROTOCOL, 2),
                  pickle.dumps({'little_endian': True}, 2), obj, pickle.dumps(['0'], 2),
                  struct.pack('<q', 1), np.ones(1, '<f4').tobytes()])
  path = tmp_path / 'legacy.pth'
  path.write_bytes(raw)
  _refused(str(path), 'refusing to allocate')
