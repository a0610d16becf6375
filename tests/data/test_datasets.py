"""Tests for the dataset interface: fold class lists, registry and the synthetic TFDS split."""

import pickle

import ml_collections
import numpy as np
import pytest

from mmnet_jax import conventions
from mmnet_jax.data import dataset_registry
from mmnet_jax.data import datasets
from mmnet_jax.data import episodes
from mmnet_jax.data import synthetic


@pytest.mark.parametrize('name,n,convention', [
    ('synthetic', 40, 'interleaved'), ('pascal', 20, 'interleaved'),
    ('coco', 80, 'interleaved'), ('coco', 80, 'consecutive')])
def test_folds_disjoint_and_covering(name, n, convention):
  all_test = []
  for fold in range(4):
    train, test = datasets.fold_classes(name, fold, coco_convention=convention)
    assert len(test) == n // 4 and len(train) == n - n // 4
    assert not set(train) & set(test)
    assert sorted(train + test) == list(range(1, n + 1))
    all_test += test
  assert sorted(all_test) == list(range(1, n + 1))  # every class is novel in exactly one fold


def test_fold_class_lists():
  assert datasets.fold_classes('synthetic', 0)[1] == tuple(range(1, 11))
  assert datasets.fold_classes('synthetic', 3)[1] == tuple(range(31, 41))
  assert datasets.fold_classes('pascal', 1)[1] == (6, 7, 8, 9, 10)
  assert datasets.fold_classes('pascal', 1)[0] == tuple(c for c in range(1, 21)
                                                      if c not in (6, 7, 8, 9, 10))
  assert datasets.fold_classes('coco', 0)[1][:3] == (1, 5, 9)
  assert datasets.fold_classes('coco', 2)[1][-1] == 79
  assert datasets.fold_classes('coco', 1, coco_convention='consecutive')[1] == tuple(
      range(21, 41))


def test_fold_errors():
  with pytest.raises(ValueError, match='fold'):
    datasets.fold_classes('pascal', 4)
  with pytest.raises(ValueError, match='fold'):
    datasets.fold_classes('pascal', -1)
  with pytest.raises(ValueError, match='name'):
    datasets.fold_classes('voc', 0)
  with pytest.raises(ValueError, match='coco_convention'):
    datasets.fold_classes('coco', 0, coco_convention='random')


def test_open_split_errors():
  with pytest.raises(FileNotFoundError, match='manual_dir'):
    dataset_registry.open_split(ml_collections.ConfigDict({'name': 'pascal'}), 'train')
  with pytest.raises(ValueError, match='name'):
    dataset_registry.open_split(ml_collections.ConfigDict({'name': 'imagenet'}), 'train')
  with pytest.raises(ValueError, match='split'):
    dataset_registry.open_split(ml_collections.ConfigDict({'name': 'synthetic'}), 'test')


def test_normalize_roundtrip_and_binarize():
  img = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
  norm = conventions.normalize_image(img)
  np.testing.assert_allclose(norm[0, 0, 0], (0 - 123.675) / 58.395, rtol=1e-6)
  np.testing.assert_allclose(conventions.denormalize_image(norm), img, atol=1e-4)
  label = np.array([[0, 3, 5], [255, 3, 0]], np.uint8)
  np.testing.assert_array_equal(episodes.binarise(label, 3), [[0, 1, 0], [255, 1, 0]])


def test_synthetic_config_from_nested_and_flat():
  nested = ml_collections.ConfigDict({'name': 'synthetic', 'data_dir': '', 'synthetic': {
      'seed': 3, 'num_train': 10, 'num_val': 5, 'min_size': 64, 'max_size': 80,
      'border_band': 0}})
  gen = dataset_registry.synthetic_config_from(nested)
  assert gen == synthetic.SyntheticConfig(seed=3, num_train=10, num_val=5, min_size=64,
                                          max_size=80, border_band=0)
  flat = ml_collections.ConfigDict({'name': 'synthetic', 'num_val': 7})
  assert dataset_registry.synthetic_config_from(flat) == synthetic.SyntheticConfig(num_val=7)


def test_synthetic_tfds_roundtrip(tmp_path):
  """Builds a tiny benchmark into tmp_path; images, labels and class_areas come back exactly."""
  cfg = ml_collections.ConfigDict({'name': 'synthetic', 'data_dir': str(tmp_path), 'synthetic': {
      'seed': 0, 'num_train': 40, 'num_val': 20, 'min_size': 64, 'max_size': 96,
      'border_band': 2}})
  gen = dataset_registry.synthetic_config_from(cfg)
  val = dataset_registry.open_split(cfg, 'val')
  train = dataset_registry.open_split(cfg, 'train')  # second open reuses the build
  assert (val.name, val.split, val.num_classes, len(val)) == ('synthetic', 'val', 40, 20)
  assert len(train) == 40
  assert val.image_ids == tuple(f'val_{i:06d}' for i in range(20))
  for split, n in ((val, 20), (train, 40)):
    for i in range(0, n, 3):
      image, label = split.load(i)
      ref_image, ref_label = synthetic.render_example(gen, split.split, i)
      assert image.dtype == np.uint8 and label.dtype == np.uint8 and label.ndim == 2
      np.testing.assert_array_equal(image, ref_image)
      np.testing.assert_array_equal(label, ref_label)
      assert split.class_areas[i] == synthetic.class_areas(label)
  seen = set().union(*train.class_areas)
  assert {synthetic.primary_class(gen, 'train', i) for i in range(40)} <= seen
  assert pickle.loads(pickle.dumps(val.load))(1)[1].shape == val.load(1)[1].shape
  with pytest.raises(IndexError):
    val.load(20)


@pytest.mark.parametrize('damage', ['truncate', 'overwrite'])
def test_corrupted_record_file_is_named_at_start_up(tmp_path, damage):
  """Before: RuntimeError 'Corrupted Riegeli/records file' or ValueError 'type NoneType is not
  supported by np_map_fn', naming no file."""
  import glob
  from tests.data import test_pascal
  root = tmp_path / 'm'
  test_pascal.write_tree(str(root))
  cfg = test_pascal.config(root, tmp_path / 'tfds')
  dataset_registry.open_split(cfg, 'val')
  record = sorted(glob.glob(str(tmp_path / 'tfds' / '**' / '*val.array_record*'),
                            recursive=True))[0]
  data = bytearray(open(record, 'rb').read())
  if damage == 'truncate':
    data = data[:len(data) // 2]
  else:
    data[100::7] = bytes(b ^ 0xff for b in data[100::7])
  open(record, 'wb').write(bytes(data))
  with pytest.raises(datasets.CorruptedRecordError,
                     match=f'corrupted TFDS record file: {record} .*Remove .* to rebuild'):
    dataset_registry.open_split(cfg, 'val')
