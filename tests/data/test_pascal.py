"""PASCAL-5i builder on a tiny VOC2012 + SBD-aug tree written in the official formats."""

import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from mmnet_jax.data import dataset_registry

from mmnet_jax.data import datasets
from mmnet_jax.data import episodes
from mmnet_jax.data import pascal
from tests.data import fake_formats

H, W = 48, 64   # 3,072 pixels: room for class areas just below / at the 2048 rule


def make_label(regions, border=0):
  """(H, W) label: each (class, pixels) filled in raster order, then `border` 255 pixels."""
  flat = np.zeros(H * W, np.uint8)
  cur = 0
  for cls, n in regions:
    flat[cur:cur + n] = cls
    cur += n
  flat[cur:cur + border] = 255
  return flat.reshape(H, W)


VOC_TRAIN = ['2007_000001', '2007_000002']
VOC_VAL = ['2007_000010', '2007_000011', '2007_000012']
# SBD list: one VOC val id (must be dropped), one VOC train id and one repeat (de-duplicated).
SBD_TRAIN = ['2008_000005', '2007_000010', '2007_000001', '2008_000003', '2008_000005']
EXPECTED_TRAIN = ['2008_000005', '2007_000001', '2008_000003', '2007_000002']
LABELS = {
    '2008_000005': make_label([(1, 2048)], border=64),
    '2007_000001': make_label([(1, 2500)], border=40),
    '2008_000003': make_label([(12, 2200), (1, 30)], border=10),
    '2007_000002': make_label([(12, 2100)]),
    '2007_000010': make_label([(2, 2048)], border=100),           # exactly at the rule
    '2007_000011': make_label([(3, 2047), (7, 100)], border=300),  # 1 pixel short (+255 band)
    '2007_000012': make_label([(7, 2100), (3, 50)], border=20),
}


def write_tree(root, sbd_name='train.txt'):
  voc = os.path.join(root, 'VOCdevkit', 'VOC2012')
  fake_formats.write_voc(voc, LABELS, VOC_TRAIN, VOC_VAL, aug_ids=set(LABELS))
  fake_formats.write_ids(os.path.join(root, 'SBD', sbd_name), SBD_TRAIN)
  return voc


def config(manual_dir, data_dir, **kw):
  c = ml_collections.ConfigDict(dict(name='pascal', manual_dir=str(manual_dir),
                                     data_dir=str(data_dir), list_file='', val_list_file=''))
  c.update(kw)
  return c


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('voc_manual')
  voc = write_tree(str(root))
  data_dir = tmp_path_factory.mktemp('tfds')
  cfg = config(root, data_dir)
  return root, voc, data_dir, {s: dataset_registry.open_split(cfg, s) for s in datasets.SPLITS}


def test_pfenet_train_rule():
  assert pascal.pfenet_train_ids(SBD_TRAIN, VOC_TRAIN, VOC_VAL) == EXPECTED_TRAIN
  # a VOC train id that is also in val (never in real data) is still excluded
  assert pascal.pfenet_train_ids(['a', 'b'], ['c', 'b', 'v'], ['v']) == ['a', 'b', 'c']


def test_lists_order_and_counts(built, capsys):
  _, _, _, splits = built
  assert list(splits['train'].image_ids) == EXPECTED_TRAIN
  assert list(splits['val'].image_ids) == VOC_VAL
  assert splits['train'].num_classes == 20 and splits['val'].name == 'pascal'


def test_labels_are_indices_with_255_kept(built):
  _, voc, _, splits = built
  for split in splits.values():
    for i, image_id in enumerate(split.image_ids):
      image, label = split.load(i)
      assert image.shape == (H, W, 3) and image.dtype == np.uint8
      np.testing.assert_array_equal(label, LABELS[image_id])
      # class_areas: exact class pixels, 0 and 255 not counted
      expected = {c: int((LABELS[image_id] == c).sum()) for c in range(1, 21)
                  if (LABELS[image_id] == c).any()}
      assert split.class_areas[i] == expected
  # the val masks were palette PNGs whose RGB colours differ from the indices
  with Image.open(os.path.join(voc, 'SegmentationClass', '2007_000010.png')) as im:
    assert im.mode == 'P'
    assert np.asarray(im.convert('RGB'))[0, 0].tolist() == [0, 128, 0]   # class 2 colour


def test_binarisation(built):
  _, _, _, splits = built
  _, label = splits['val'].load(1)   # 2007_000011: classes 3, 7 and a 255 band
  binary = episodes.binarise(label, 3)
  assert set(np.unique(binary)) == {0, 1, 255}
  assert (binary == 1).sum() == 2047 and (binary == 255).sum() == 300
  assert ((binary == 0) == ((label != 3) & (label != 255))).all()


def test_2048_rule_and_fold_membership(built):
  _, _, _, splits = built
  assert episodes.pool_sizes(splits['val'], 'pascal') == {0: 1, 1: 1, 2: 0, 3: 0}
  pool0 = episodes.build_pool(splits['val'], datasets.fold_classes('pascal', 0)[1])
  assert [splits['val'].image_ids[i] for i in pool0.indices] == ['2007_000010']  # 2047 px out
  # train pools use the base classes: fold 0 drops 1..5, fold 2 drops 11..15
  assert episodes.pool_sizes(splits['train'], 'pascal') == {0: 2, 1: 4, 2: 2, 3: 4}
  pool2 = episodes.build_pool(splits['train'], datasets.fold_classes('pascal', 2)[0])
  assert [splits['train'].image_ids[i] for i in pool2.indices] == ['2008_000005', '2007_000001']


def test_supports_never_the_query(built):
  _, _, _, splits = built
  pool = episodes.build_pool(splits['train'], datasets.fold_classes('pascal', 1)[0])
  eps = episodes.eval_episodes(pool, shots=1, num_episodes=40, seed=0)
  assert {e.class_id for e in eps} == {1, 12}
  assert all(e.query_index not in e.support_indices for e in eps)


def test_pool_sizes_printed_after_build(tmp_path, capsys):
  root = tmp_path / 'm'
  write_tree(str(root), sbd_name='train_noval.txt')
  split = dataset_registry.open_split(config(root, tmp_path / 'tfds'), 'val')
  out = capsys.readouterr().out
  assert 'pascal/val: 3 images; pool sizes per fold [1, 1, 0, 0]' in out
  assert 'pascal/train: 4 images; pool sizes per fold [2, 4, 2, 4]' in out
  assert len(split) == 3
  dataset_registry.open_split(config(root, tmp_path / 'tfds'), 'val')   # found, not rebuilt
  assert 'pool sizes' not in capsys.readouterr().out


def test_user_pfenet_lists(built, tmp_path):
  root, _, _, _ = built
  train = tmp_path / 'train.txt'
  train.write_text('JPEGImages/2007_000002.jpg SegmentationClassAug/2007_000002.png\n'
                   'JPEGImages/2008_000005.jpg SegmentationClassAug/2008_000005.png\n'
                   'JPEGImages/2007_000002.jpg SegmentationClassAug/2007_000002.png\n\n')
  val = tmp_path / 'val.txt'
  val.write_text('JPEGImages/2007_000012.jpg SegmentationClassAug/2007_000012.png\n')
  cfg = config(root, tmp_path / 'tfds', list_file=str(train), val_list_file=str(val))
  assert dataset_registry.open_split(cfg, 'train').image_ids == ('2007_000002', '2008_000005')
  split = dataset_registry.open_split(cfg, 'val')
  assert split.image_ids == ('2007_000012',)
  np.testing.assert_array_equal(split.load(0)[1], LABELS['2007_000012'])
  bad = tmp_path / 'bad.txt'
  bad.write_text('2007_000002\n')
  with pytest.raises(ValueError, match='bad.txt:1'):
    pascal.parse_pfenet_list(str(bad))


def test_hsnet_fold_lists(built, tmp_path):
  root, _, _, _ = built
  hs = tmp_path / 'hsnet'
  lines = {'trn': [['2007_000001__01', '2008_000005__01'], ['2007_000002__12'], [],
                   ['2007_000001__16']],
           'val': [['2007_000010__02'], ['2007_000012__07'], [], ['2007_000010__17']]}
  for sub, folds in lines.items():
    for f, ls in enumerate(folds):
      fake_formats.write_ids(str(hs / sub / f'fold{f}.txt'), ls)
  cfg = config(root, tmp_path / 'tfds', list_file=str(hs))
  assert dataset_registry.open_split(cfg, 'train').image_ids == ('2007_000001', '2008_000005',
                                                         '2007_000002')
  assert dataset_registry.open_split(cfg, 'val').image_ids == ('2007_000010', '2007_000012')


def test_missing_paths_are_named(tmp_path):
  data_dir = tmp_path / 'tfds'
  with pytest.raises(FileNotFoundError, match='manual_dir'):
    dataset_registry.open_split(config('', data_dir), 'train')
  root = tmp_path / 'm'
  voc = write_tree(str(root))
  os.remove(root / 'SBD' / 'train.txt')
  with pytest.raises(FileNotFoundError, match=r'SBD train list: .*train_noval\.txt'
                     r'(.|\n)*docs/data\.md'):
    dataset_registry.open_split(config(root, data_dir), 'train')
  fake_formats.write_ids(str(root / 'SBD' / 'train.txt'), SBD_TRAIN)
  missing = os.path.join(voc, 'SegmentationClassAug', '2008_000003.png')
  os.remove(missing)
  with pytest.raises(FileNotFoundError) as err:
    dataset_registry.open_split(config(root, data_dir), 'train')
  assert missing in str(err.value) and 'MANUAL_DOWNLOAD_INSTRUCTIONS' in str(err.value)
  os.remove(os.path.join(voc, 'ImageSets', 'Segmentation', 'val.txt'))
  with pytest.raises(FileNotFoundError, match='VOC2012 val list'):
    dataset_registry.open_split(config(root, data_dir), 'val')


def test_colour_mask_rejected(tmp_path):
  path = tmp_path / 'rgb.png'
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
  with pytest.raises(ValueError, match='class-index PNG'):
    pascal.read_label(str(path))


def _fresh(tmp_path):
  root = tmp_path / 'm'
  voc = write_tree(str(root))
  return root, voc, config(root, tmp_path / 'tfds')


def _break_voc(kind, root, voc):
  """Breaks the tree one way; returns the path the error must name."""
  seg = os.path.join(voc, 'ImageSets', 'Segmentation')
  if kind == 'empty_sbd_list':
    path = os.path.join(root, 'SBD', 'train.txt')
    open(path, 'w').close()
  elif kind == 'empty_voc_train':
    path = os.path.join(seg, 'train.txt')
    open(path, 'w').write('\n\n')
  elif kind == 'empty_val':
    path = os.path.join(seg, 'val.txt')
    open(path, 'w').close()
  elif kind == 'repeated_val_id':
    path = os.path.join(seg, 'val.txt')
    fake_formats.write_ids(path, VOC_VAL + [VOC_VAL[0]])
  elif kind == 'truncated_jpeg':
    path = os.path.join(voc, 'JPEGImages', '2008_000003.jpg')
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])    # the header (size) still reads
  elif kind == 'truncated_mask':
    path = os.path.join(voc, 'SegmentationClassAug', '2008_000003.png')
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])
  elif kind == 'mask_value_30':
    path = os.path.join(voc, 'SegmentationClassAug', '2008_000003.png')
    label = LABELS['2008_000003'].copy()
    label[0, 0] = 30
    fake_formats.write_gray_png(path, label)
  return path


@pytest.mark.parametrize('kind, message', [
    ('empty_sbd_list', 'the SBD train list is empty'),
    ('empty_voc_train', 'the VOC2012 train list is empty'),
    ('empty_val', 'the VOC2012 val list is empty'),
    ('repeated_val_id', r":4: id '2007_000010' repeats line 1"),
    ('truncated_jpeg', 'the image could not be decoded'),
    ('truncated_mask', 'the mask could not be read|the image could not be decoded'),
    ('mask_value_30', r'mask values \[30\] outside 0..20 and 255'),
])
def test_broken_input_never_builds(tmp_path, kind, message):
  """Each broken download is one error at build time naming the file (before: an empty list
  built a smaller dataset, a truncated JPEG was stored, the others named no file)."""
  root, voc, cfg = _fresh(tmp_path)
  path = _break_voc(kind, str(root), voc)
  with pytest.raises(ValueError, match=message) as err:
    dataset_registry.open_split(cfg, 'train')
  assert str(err.value).startswith(path)


def test_repeated_id_in_a_val_list_file(built, tmp_path):
  root, _, _, _ = built
  val = tmp_path / 'val.txt'
  val.write_text('JPEGImages/2007_000012.jpg SegmentationClassAug/2007_000012.png\n'
                 'JPEGImages/2007_000012.jpg SegmentationClassAug/2007_000012.png\n')
  with pytest.raises(ValueError, match=r"val.txt:2: image '2007_000012' is listed twice"):
    dataset_registry.open_split(config(root, tmp_path / 'tfds', val_list_file=str(val)), 'val')


def test_build_of_another_manual_dir_is_refused(tmp_path):
  root, _, cfg = _fresh(tmp_path)
  dataset_registry.open_split(cfg, 'val')
  other = tmp_path / 'other'
  write_tree(str(other))     # the same lists, so the same builder config: found before
  with pytest.raises(ValueError, match=r'build_source.json: this build was made from '
                     r"dataset.manual_dir='.*/m', but dataset.manual_dir='.*/other'"):
    dataset_registry.open_split(config(other, tmp_path / 'tfds'), 'val')
  assert len(dataset_registry.open_split(cfg, 'val')) == 3              # its own source: found
  assert len(dataset_registry.open_split(config(other, tmp_path / 'tfds2'), 'val')) == 3
