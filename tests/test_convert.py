"""Tests for mmnet_jax.convert: key mapping, errors, merge into the real model, save/load."""

import json
import os

import ml_collections
import numpy as np
import pytest

from mmnet_jax import convert
from mmnet_jax import torch_pickle

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


@pytest.fixture(scope='module')
def expected():
  with np.load(os.path.join(FIXTURES, 'expected.npz')) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope='module')
def official_sd():
  return torch_pickle.load(os.path.join(FIXTURES, 'mmnet_official.pth'))['state_dict']


def _hwio(w):
  return w.transpose(2, 3, 1, 0)


def test_official_mapping(official_sd, expected):
  tree, info = convert.convert_state_dict_with_info(official_sd, 'mmnet-official')
  e = lambda k: expected[f'mmnet_official/module.{k}']
  p, s = tree['params'], tree['batch_stats']
  stem = p['backbone']['stem']
  np.testing.assert_array_equal(stem['conv1']['kernel'], _hwio(e('layer0.0.weight')))
  np.testing.assert_array_equal(stem['conv2']['kernel'], _hwio(e('layer0.3.weight')))
  np.testing.assert_array_equal(stem['conv3']['kernel'], _hwio(e('layer0.6.weight')))
  np.testing.assert_array_equal(stem['bn3']['scale'], e('layer0.7.weight'))
  np.testing.assert_array_equal(stem['bn2']['bias'], e('layer0.4.bias'))
  np.testing.assert_array_equal(s['backbone']['stem']['bn1']['mean'], e('layer0.1.running_mean'))
  np.testing.assert_array_equal(s['backbone']['stem']['bn1']['var'], e('layer0.1.running_var'))
  blk = p['backbone']['layer2_1']
  np.testing.assert_array_equal(blk['conv2']['kernel'], _hwio(e('layer2.1.conv2.weight')))
  assert 'downsample_conv' not in blk
  np.testing.assert_array_equal(p['backbone']['layer3_0']['downsample_conv']['kernel'],
                                _hwio(e('layer3.0.downsample.0.weight')))
  np.testing.assert_array_equal(s['backbone']['layer4_0']['downsample_bn']['var'],
                                e('layer4.0.downsample.1.running_var'))
  np.testing.assert_array_equal(p['down_query']['conv']['kernel'],
                                _hwio(e('down_query_level_2.0.weight')))
  np.testing.assert_array_equal(p['down_supp']['conv']['kernel'],
                                _hwio(e('down_supp_level_2.0.weight')))
  np.testing.assert_array_equal(p['memory']['slots'], e('part_emb_2_level')[0])  # (C, N)
  d = p['decoder']
  np.testing.assert_array_equal(d['init_merge_3']['conv']['kernel'],
                                _hwio(e('init_merge.3.0.weight')))
  np.testing.assert_array_equal(d['alpha_conv_2']['conv']['kernel'],
                                _hwio(e('alpha_conv.2.0.weight')))
  np.testing.assert_array_equal(d['beta_conv_1']['conv2']['kernel'],
                                _hwio(e('beta_conv.1.2.weight')))
  np.testing.assert_array_equal(d['inner_cls_0']['conv']['kernel'],
                                _hwio(e('inner_cls.0.0.weight')))
  np.testing.assert_array_equal(d['inner_cls_2']['cls']['bias'], e('inner_cls.2.3.bias'))
  np.testing.assert_array_equal(d['res2']['conv1']['kernel'], _hwio(e('res2.0.weight')))
  np.testing.assert_array_equal(d['cls']['cls']['kernel'], _hwio(e('cls.3.weight')))
  np.testing.assert_array_equal(d['cls']['cls']['bias'], e('cls.3.bias'))
  assert 'bias' not in d['cls']['conv'] and 'bias' not in d['res1']['conv']
  # Skipped: alpha/beta Linear layers and every num_batches_tracked; all else is mapped.
  skipped = set(info['skipped'])
  assert {'module.alpha.weight', 'module.alpha.bias', 'module.beta.weight'} <= skipped
  assert all(k.endswith('num_batches_tracked') or k.startswith(('module.alpha.', 'module.beta.'))
             for k in skipped)
  assert info['mapped'] + len(skipped) == len(official_sd)
  assert sorted(tree['params']) == ['backbone', 'decoder', 'down_query', 'down_supp', 'memory']
  assert sorted(d) == sorted([f'init_merge_{b}' for b in range(4)] +
                             [f'alpha_conv_{b}' for b in range(3)] +
                             [f'beta_conv_{b}' for b in range(4)] +
                             [f'inner_cls_{b}' for b in range(4)] + ['res1', 'res2', 'cls'])


def test_pfenet_legacy_backbone(expected):
  sd = torch_pickle.load(os.path.join(FIXTURES, 'pfenet_resnet_legacy.pth'))
  tree, info = convert.convert_state_dict_with_info(sd, 'pfenet-resnet')
  assert list(tree['params']) == ['backbone'] and list(tree['batch_stats']) == ['backbone']
  stem = tree['params']['backbone']['stem']
  assert sorted(stem) == sorted(['conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3'])
  np.testing.assert_array_equal(stem['conv2']['kernel'],
                                _hwio(expected['pfenet_resnet_legacy/conv2.weight']))
  np.testing.assert_array_equal(tree['batch_stats']['backbone']['layer1_0']['bn2']['mean'],
                                expected['pfenet_resnet_legacy/layer1.0.bn2.running_mean'])
  assert {'fc.weight', 'fc.bias'} <= set(info['skipped'])


def test_torchvision_stem(expected):
  sd = torch_pickle.load(os.path.join(FIXTURES, 'torchvision_resnet.pth'))
  tree = convert.convert_state_dict(sd, 'torchvision-resnet')
  stem = tree['params']['backbone']['stem']
  assert sorted(stem) == ['bn1', 'conv1']
  assert stem['conv1']['kernel'].shape == (7, 7, 3, 4)
  np.testing.assert_array_equal(stem['conv1']['kernel'],
                                _hwio(expected['torchvision_resnet/conv1.weight']))
  # The same file read as a deep-stem backbone lacks conv2/bn2/conv3/bn3.
  with pytest.raises(convert.ConversionError, match=r"'conv2\.weight'.*'bn3\.running_var'"):
    convert.convert_state_dict(sd, 'pfenet-resnet')


def test_unknown_and_missing_keys_are_named(official_sd):
  extra = dict(official_sd)
  extra['module.key.weight'] = np.zeros((1,), np.float32)
  with pytest.raises(convert.ConversionError, match=r"unmapped.*'module\.key\.weight'"):
    convert.convert_state_dict(extra, 'mmnet-official')
  for gone in ('module.layer2.1.bn3.running_var', 'module.inner_cls.1.3.bias',
               'module.part_emb_2_level', 'module.layer0.4.weight'):
    partial = {k: v for k, v in official_sd.items() if k != gone}
    with pytest.raises(convert.ConversionError, match='missing') as err:
      convert.convert_state_dict(partial, 'mmnet-official')
    assert repr(gone) in str(err.value)
  # A whole block (layer1.0 is the last of its layer) and a whole scale disappear.
  partial = {k: v for k, v in official_sd.items() if not k.startswith('module.alpha_conv.1.')}
  with pytest.raises(convert.ConversionError, match=r"'module\.alpha_conv\.1\.0\.weight'"):
    convert.convert_state_dict(partial, 'mmnet-official')
  with pytest.raises(convert.ConversionError, match='unknown format'):
    convert.convert_state_dict(official_sd, 'caffe')


def _tiny_model_config():
  config = ml_collections.ConfigDict()
  config.shots = 2
  config.model = ml_collections.ConfigDict(
      {'backbone': 'tiny', 'reduce_dim': 16, 'memory_slots': 6, 'ppm_scales': (60, 30, 15, 8)})
  return config


def _torch_state_dict_for(variables, fmt, rng):
  """The torch-layout state dict the original would save for these variable shapes."""
  flat = {}
  for collection, tree in variables.items():
    flat.update({(collection,) + p: v for p, v in convert._flatten(tree).items()})
  sd = {}
  leaf_to_param = {'kernel': 'weight', 'bias': 'bias', 'scale': 'weight', 'mean': 'running_mean',
                   'var': 'running_var'}
  for (collection, *path), leaf in flat.items():
    if tuple(path) == ('memory', 'slots'):
      sd['module.part_emb_2_level'] = rng.standard_normal((1,) + leaf.shape).astype(np.float32)
      continue
    name = convert._torch_name(tuple(path[:-1]), fmt)
    shape = leaf.shape
    if path[-1] == 'kernel':
      shape = (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
    sd[f'module.{name}.{leaf_to_param[path[-1]]}'] = rng.standard_normal(shape).astype(np.float32)
  return sd


def test_real_model_roundtrip_via_eval_shape():
  config = _tiny_model_config()
  abstract = convert.abstract_variables(config)
  assert sorted(abstract) == ['batch_stats', 'params']
  sd = _torch_state_dict_for(abstract, 'mmnet-official', np.random.default_rng(0))
  sd['module.alpha.weight'] = np.zeros((16, 16), np.float32)
  tree = convert.convert_state_dict(sd, 'mmnet-official')
  merged = convert.merge_into(abstract, tree)  # raises unless every leaf matches exactly
  np.testing.assert_array_equal(merged['params']['memory']['slots'],
                                sd['module.part_emb_2_level'][0])
  np.testing.assert_array_equal(merged['params']['decoder']['beta_conv_2']['conv2']['kernel'],
                                _hwio(sd['module.beta_conv.2.2.weight']))
  bs = merged['batch_stats']['backbone']
  np.testing.assert_array_equal(bs['layer3_0']['downsample_bn']['var'],
                                sd['module.layer3.0.downsample.1.running_var'])


def _pfenet_config():
  from mmnet_jax.models import pfenet_spec  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({'shots': 1, 'model': pfenet_spec.config_defaults()})
  config.model.backbone, config.model.reduce_dim = 'tiny', 16
  return config


def _pfenet_official_sd(abstract, rng, c=16, scales=4, fea_dim=256 + 128):
  """PFENet train.py's state dict for a tiny PFENet: head names and OIHW shapes from PFENet.py."""
  sd = {}
  backbone = _torch_state_dict_for(
      {col: {'backbone': tree['backbone']} for col, tree in abstract.items()}, 'mmnet-official',
      rng)   # the layer0 Sequential + layer1..4 of PFENet.py (checked for MM-Net above)
  sd.update(backbone)
  head = {'down_query.0.weight': (c, fea_dim, 1, 1), 'down_supp.0.weight': (c, fea_dim, 1, 1),
          'res1.0.weight': (c, c * scales, 1, 1), 'res2.0.weight': (c, c, 3, 3),
          'res2.2.weight': (c, c, 3, 3), 'cls.0.weight': (c, c, 3, 3),
          'cls.3.weight': (2, c, 1, 1), 'cls.3.bias': (2,)}
  for b in range(scales):
    head.update({f'init_merge.{b}.0.weight': (c, 2 * c + 1, 1, 1),
                 f'beta_conv.{b}.0.weight': (c, c, 3, 3), f'beta_conv.{b}.2.weight': (c, c, 3, 3),
                 f'inner_cls.{b}.0.weight': (c, c, 3, 3), f'inner_cls.{b}.3.weight': (2, c, 1, 1),
                 f'inner_cls.{b}.3.bias': (2,)})
    if b:
      head[f'alpha_conv.{b - 1}.0.weight'] = (c, 2 * c, 1, 1)
  for name, shape in head.items():
    sd[f'module.{name}'] = rng.standard_normal(shape).astype(np.float32)
  sd['module.layer1.0.bn1.num_batches_tracked'] = np.zeros((), np.int64)
  return sd


def test_pfenet_official_fits_the_real_model():
  abstract = convert.abstract_variables(_pfenet_config())
  assert sorted(abstract['params']) == ['backbone', 'decoder', 'down_query', 'down_supp']
  sd = _pfenet_official_sd(abstract, np.random.default_rng(1))
  checkpoint = {'epoch': 199, 'state_dict': sd, 'optimizer': {}}   # train.py's torch.save
  tree, info = convert.convert_state_dict_with_info(
      convert.extract_state_dict(checkpoint, 'pfenet-official'), 'pfenet-official')
  assert info['skipped'] == ['module.layer1.0.bn1.num_batches_tracked']
  assert info['mapped'] == len(sd) - 1
  merged = convert.merge_into(abstract, tree)  # raises unless every leaf matches exactly
  p = merged['params']
  np.testing.assert_array_equal(p['down_supp']['conv']['kernel'],
                                _hwio(sd['module.down_supp.0.weight']))
  np.testing.assert_array_equal(p['decoder']['init_merge_2']['conv']['kernel'],
                                _hwio(sd['module.init_merge.2.0.weight']))
  np.testing.assert_array_equal(p['decoder']['inner_cls_3']['cls']['bias'],
                                sd['module.inner_cls.3.3.bias'])
  np.testing.assert_array_equal(p['backbone']['stem']['conv3']['kernel'],
                                _hwio(sd['module.layer0.6.weight']))
  assert 'pfenet-official' in convert.formats() and 'mmnet-official' in convert.formats()


def test_pfenet_official_missing_and_unknown_keys_are_named():
  sd = _pfenet_official_sd(convert.abstract_variables(_pfenet_config()),
                           np.random.default_rng(2))
  for gone in ('module.down_supp.0.weight', 'module.alpha_conv.2.0.weight',
               'module.layer0.7.running_mean'):
    partial = {k: v for k, v in sd.items() if k != gone}
    with pytest.raises(convert.ConversionError, match='missing key.*pfenet-official') as err:
      convert.convert_state_dict(partial, 'pfenet-official')
    assert repr(gone) in str(err.value)
  # MM-Net's names are not PFENet's: its memory and its down_*_level_2 are unknown here.
  for extra in ('module.part_emb_2_level', 'module.down_query_level_2.0.weight'):
    with pytest.raises(convert.ConversionError,
                       match=r'unmapped key.*pfenet-official.*' + extra.replace('.', r'\.')):
      convert.convert_state_dict({**sd, extra: np.zeros((1, 16, 4), np.float32)},
                                 'pfenet-official')


def test_cli_accepts_pfenet_official(tmp_path, capsys):
  # argparse knows the format (exit 2 otherwise); the missing input is the one error.
  missing = str(tmp_path / 'train_epoch_200.pth')
  assert convert.main(['--format', 'pfenet-official', '--input', missing,
                       '--output', str(tmp_path / 'out')]) == 1
  assert missing in capsys.readouterr().err


def test_merge_into_concrete_variables_and_errors():
  variables = {'params': {'backbone': {'stem': {'conv1': {'kernel': np.zeros((3, 3, 3, 4))}}},
                          'decoder': {'w': np.full((2,), 5.0, np.float32)}},
               'batch_stats': {'backbone': {'stem': {'bn1': {'mean': np.zeros(4, np.float32)}}}}}
  new_kernel = np.ones((3, 3, 3, 4), np.float32)
  merged = convert.merge_into(variables, {'params': {'backbone': {'stem': {'conv1': {
      'kernel': new_kernel}}}}})
  np.testing.assert_array_equal(merged['params']['backbone']['stem']['conv1']['kernel'], new_kernel)
  assert merged['params']['backbone']['stem']['conv1']['kernel'].dtype == np.float64  # model's
  np.testing.assert_array_equal(merged['params']['decoder']['w'], [5.0, 5.0])  # untouched
  assert variables['params']['backbone']['stem']['conv1']['kernel'].sum() == 0  # not mutated
  with pytest.raises(convert.ConversionError,
                     match=r'params/backbone/stem/conv1/kernel: model shape \(3, 3, 3, 4\) != '
                     r'converted shape \(7, 7, 3, 4\)'):
    convert.merge_into(variables, {'params': {'backbone': {'stem': {'conv1': {
        'kernel': np.ones((7, 7, 3, 4))}}}}})
  with pytest.raises(convert.ConversionError, match='params/backbone/stem/conv9/kernel is not'):
    convert.merge_into(variables, {'params': {'backbone': {'stem': {
        'conv1': {'kernel': new_kernel}, 'conv9': {'kernel': new_kernel}}}}})
  with pytest.raises(convert.ConversionError,
                     match='batch_stats/backbone/stem/bn1/mean is in the model but not'):
    convert.merge_into(variables, {'batch_stats': {'backbone': {'other': {'mean': np.zeros(4)}}}})


def test_pfenet_backbone_does_not_fit_tiny_model():
  sd = torch_pickle.load(os.path.join(FIXTURES, 'pfenet_resnet_legacy.pth'))
  tree = convert.convert_state_dict(sd, 'pfenet-resnet')
  with pytest.raises(convert.ConversionError, match=r'params/backbone/stem/conv1/kernel: model '
                     r'shape \(3, 3, 3, 16\) != converted shape \(3, 3, 3, 4\)'):
    convert.merge_into(convert.abstract_variables(_tiny_model_config()), tree)


def test_cli_save_load_roundtrip(tmp_path, official_sd):
  out = tmp_path / 'converted'
  src = os.path.join(FIXTURES, 'mmnet_official.pth')
  assert convert.main(['--format', 'mmnet-official', '--input', src, '--output', str(out)]) == 0
  info = json.loads((out / 'convert_info.json').read_text())
  assert info['format'] == 'mmnet-official' and info['epoch'] == 7
  assert info['num_input_keys'] == len(official_sd)
  assert info['num_arrays'] + len(info['skipped_keys']) == len(official_sd)
  restored = convert.load_converted(str(out))
  want = convert.convert_state_dict(official_sd, 'mmnet-official')
  flat_got, flat_want = convert._flatten(restored), convert._flatten(want)
  assert sorted(flat_got) == sorted(flat_want)
  for k, v in flat_want.items():
    np.testing.assert_array_equal(flat_got[k], v, err_msg=str(k))
  # Never overwrite a non-empty output; no temp dirs are left behind.
  assert convert.main(['--format', 'mmnet-official', '--input', src, '--output', str(out)]) == 1
  with pytest.raises(FileExistsError, match='not empty'):
    convert.save_converted(want, str(out))
  assert sorted(os.listdir(tmp_path)) == ['converted']


def test_cli_refuses_malicious(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  out = tmp_path / 'out'
  src = os.path.join(FIXTURES, 'malicious_zip.pth')
  assert convert.main(['--format', 'mmnet-official', '--input', src, '--output', str(out)]) == 1
  assert not out.exists() and not (tmp_path / 'mmnet_pwned_marker').exists()


def test_cli_config_validation(tmp_path):
  cfg = tmp_path / 'tiny_config.py'
  cfg.write_text('import ml_collections\n'
                 'def get_config(arg=None):\n'
                 '  c = ml_collections.ConfigDict()\n'
                 '  c.shots = 1\n'
                 '  c.model = ml_collections.ConfigDict({"backbone": arg or "tiny"})\n'
                 '  return c\n')
  src = os.path.join(FIXTURES, 'torchvision_resnet.pth')
  out = tmp_path / 'out'
  assert convert.main(['--format', 'torchvision-resnet', '--input', src, '--output', str(out),
                       '--config', f'{cfg}:tiny']) == 1
  assert not out.exists()


def _crafted_files(tmp_path):
  """Crafted .pth files (from tests/test_torch_pickle.py) that once ended in tracebacks."""
  from tests import test_torch_pickle as tp  # pylint: disable=g-import-not-at-top
  files = {}
  for name, payload, storage in [
      ('zero_stride', tp._tensor_pickle((10**7, 10**7), (0, 0), 1), b'\0' * 4),
      ('nested', b'\x80\x02' + b']' * 100_000 + b'a' * 99_999 + b'.', None),
      ('bytes_size', b'\x80\x02' + tp._global('__builtin__', 'bytes') + tp._plain(10**12)
       + b'\x85R.', None),
      ('binbytes8', b'\x80\x05\x8e' + (10**12).to_bytes(8, 'little') + b'abc.', None),
      ('v3_odd', tp._tensor_pickle((1,), (1,), 6, 'ByteStorage', 'float32'), b'\0' * 6)]:
    sub = tmp_path / name
    sub.mkdir()
    files[name] = tp._zip_checkpoint(sub, payload, storage)
  return files


def test_cli_crafted_files_are_one_line_errors(tmp_path, capsys):
  for name, src in _crafted_files(tmp_path).items():
    out = tmp_path / f'out_{name}'
    assert convert.main(['--format', 'mmnet-official', '--input', src,
                         '--output', str(out)]) == 1, name
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and src in err, (name, err)
    assert not out.exists()


def test_cli_module_exit_status_and_message(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  src = _crafted_files(tmp_path)['nested']
  for args in (['--input', src], ['--input', str(tmp_path)]):  # crafted; a directory
    proc = subprocess.run(
        [sys.executable, '-m', 'mmnet_jax.convert', '--format', 'mmnet-official', *args,
         '--output', str(tmp_path / 'out')], capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith('error: ') and proc.stderr.count('\n') == 1, proc.stderr
