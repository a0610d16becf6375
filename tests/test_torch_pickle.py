"""Tests for mmnet_jax.torch_pickle on fixtures written by real torch.save (no torch here)."""

import collections
import io
import os
import pickle
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
