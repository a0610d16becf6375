"""COCO-20i builder on a tiny COCO 2014 tree (instances JSON with polygons, RLE and crowd)."""

import collections
import json
import os
import pickle

import ml_collections
import numpy as np
from pycocotools import coco as coco_api
from pycocotools import mask as mask_utils
import pytest

from mmnet_jax.data import coco
from mmnet_jax.data import dataset_registry
from mmnet_jax.data import datasets
from mmnet_jax.data import episodes
from tests.data import fake_formats

H, W = 48, 64


def rect_polygon(x0, y0, x1, y1):
  return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def uncompressed_rle(n_pixels, start=0):
  """Uncompressed RLE (column-major counts) of `n_pixels` pixels starting at `start`."""
  return {'size': [H, W], 'counts': [start, n_pixels, H * W - start - n_pixels]}


def compressed_rle(mask):
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {'size': rle['size'], 'counts': rle['counts'].decode('ascii')}


_flat = np.zeros(H * W, bool)
_flat[100:100 + 2047] = True
SMALL = _flat.reshape((H, W), order='F')   # 2047 pixels, one short of the 2048 rule

VAL_IMAGES = [(42, H, W), (7, H, W), (300, H, W), (9, H, W)]   # 9 has no annotation
VAL_ANNS = [
    # image 42: a large polygon of category 1 (class 1) with a smaller overlapping two-part
    # polygon of category 5 (class 5) listed FIRST: the smaller instance must win.
    dict(id=11, image_id=42, category_id=5, iscrowd=0,
         segmentation=[rect_polygon(10, 10, 30, 30), rect_polygon(40, 2, 50, 8)]),
    dict(id=10, image_id=42, category_id=1, iscrowd=0,
         segmentation=[rect_polygon(0, 0, 63, 47)]),
    # image 7: uncompressed RLE of category 90 (class 80), exactly 2048 px; a crowd region of
    # category 1 partly covered by a non-crowd instance of category 2 (class 2).
    dict(id=20, image_id=7, category_id=90, iscrowd=0, segmentation=uncompressed_rle(2048)),
    dict(id=21, image_id=7, category_id=1, iscrowd=1,
         segmentation=uncompressed_rle(900, start=2100)),
    dict(id=22, image_id=7, category_id=2, iscrowd=0,
         segmentation=[rect_polygon(50, 20, 60, 40)]),
    # image 300: compressed RLE of category 3 (class 3), 2047 px: one short of the rule.
    dict(id=30, image_id=300, category_id=3, iscrowd=0, segmentation=compressed_rle(SMALL)),
]
TRAIN_IMAGES = [(5, H, W), (6, H, W)]
TRAIN_ANNS = [
    dict(id=1, image_id=5, category_id=13, iscrowd=0,     # category 13 -> class 12
         segmentation=[rect_polygon(0, 0, 63, 40)]),
    dict(id=2, image_id=6, category_id=13, iscrowd=0,
         segmentation=[rect_polygon(0, 0, 50, 47)]),
]


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('coco_manual'))
  fake_formats.write_coco(root, 'val', VAL_IMAGES, VAL_ANNS)
  fake_formats.write_coco(root, 'train', TRAIN_IMAGES, TRAIN_ANNS)
  cfg = ml_collections.ConfigDict(dict(name='coco', manual_dir=root,
                                       data_dir=str(tmp_path_factory.mktemp('tfds'))))
  return root, {s: dataset_registry.open_split(cfg, s) for s in datasets.SPLITS}


def reference_label(api, image_id):
  """The documented rule, painted from pycocotools' own `annToMask`."""
  anns = api.loadAnns(api.getAnnIds(imgIds=[image_id], iscrowd=None))
  label = np.zeros((H, W), np.uint8)
  for ann in anns:
    if ann['iscrowd']:
      label[api.annToMask(ann) > 0] = 255
  cls = {c: k + 1 for k, c in enumerate(sorted(api.getCatIds()))}
  order = sorted((a for a in anns if not a['iscrowd']),
                 key=lambda a: (-int(api.annToMask(a).sum()), a['id']))
  for ann in order:
    label[api.annToMask(ann) > 0] = cls[ann['category_id']]
  return label


def test_category_remap():
  cat_map = coco.category_map([{'id': c} for c in reversed(coco.CATEGORY_IDS)])
  assert cat_map[1] == 1 and cat_map[13] == 12 and cat_map[90] == 80 and len(cat_map) == 80
  with pytest.raises(ValueError, match='80 COCO category ids'):
    coco.category_map([{'id': 1}])


def test_splits_and_order(built):
  _, splits = built
  assert splits['val'].image_ids == ('COCO_val2014_000000000007', 'COCO_val2014_000000000042',
                                     'COCO_val2014_000000000300')   # image 9: no annotation
  assert splits['train'].image_ids == ('COCO_train2014_000000000005',
                                       'COCO_train2014_000000000006')


def test_masks_equal_pycocotools(built):
  root, splits = built
  for split in ('val', 'train'):
    api = coco_api.COCO(coco.annotation_path(root, split))
    for i, image_id in enumerate(splits[split].image_ids):
      image, label = splits[split].load(i)
      assert image.shape == (H, W, 3)
      expected = reference_label(api, int(image_id.rsplit('_', 1)[1]))
      np.testing.assert_array_equal(label, expected)
      assert splits[split].class_areas[i] == {
          c: int((expected == c).sum()) for c in range(1, 81) if (expected == c).any()}


def test_overlap_and_crowd_rules(built):
  _, splits = built
  _, label42 = splits['val'].load(1)
  assert label42[20, 20] == 5 and label42[5, 45] == 5 and label42[40, 5] == 1
  _, label7 = splits['val'].load(0)
  flat = label7.reshape(-1, order='F')
  assert (flat[:2048] == 80).all()
  crowd = np.zeros(H * W, bool)
  crowd[2100:3000] = True
  assert (flat[crowd & (flat != 2)] == 255).all()     # crowd -> ignore
  assert (flat[crowd] == 2).any()                     # the instance overrides the crowd
  assert 1 not in splits['val'].class_areas[0]       # crowd pixels never count for the class
  binary = episodes.binarise(label7, 2)
  assert set(np.unique(binary)) == {0, 1, 255}


def test_2048_rule_and_folds(built):
  _, splits = built
  val = splits['val']
  assert val.class_areas[0][80] == 2048 and val.class_areas[2] == {3: 2047}
  # interleaved: fold 0 tests 1, 5, ... (image 42); fold 1 tests 2, ... (class 2 of image 7
  # is small); fold 2 tests 3, ... (2047 px: out); fold 3 tests ..., 80 (image 7, 2048 px)
  assert episodes.pool_sizes(val, 'coco') == {0: 1, 1: 0, 2: 0, 3: 1}
  pool = episodes.build_pool(val, datasets.fold_classes('coco', 3)[1])
  assert [val.image_ids[i] for i in pool.indices] == ['COCO_val2014_000000000007']
  # consecutive: fold 0 tests 1..20 (image 42), fold 3 tests 61..80 (image 7)
  assert episodes.pool_sizes(val, 'coco', coco_convention='consecutive') == {
      0: 1, 1: 0, 2: 0, 3: 1}
  pool = episodes.build_pool(val, datasets.fold_classes('coco', 0, coco_convention='consecutive')[1])
  assert [val.image_ids[i] for i in pool.indices] == ['COCO_val2014_000000000042']


def test_missing_paths_are_named(tmp_path):
  cfg = ml_collections.ConfigDict(dict(name='coco', manual_dir=str(tmp_path),
                                       data_dir=str(tmp_path / 'tfds')))
  with pytest.raises(FileNotFoundError, match='train2014(.|\n)*docs/data.md'):
    dataset_registry.open_split(cfg, 'train')
  fake_formats.write_coco(str(tmp_path), 'train', TRAIN_IMAGES, TRAIN_ANNS)
  os.makedirs(tmp_path / 'val2014')
  with pytest.raises(FileNotFoundError, match=r'instances_val2014\.json'):
    dataset_registry.open_split(cfg, 'train')
  fake_formats.write_coco(str(tmp_path), 'val', VAL_IMAGES, VAL_ANNS)
  os.remove(tmp_path / 'val2014' / fake_formats.coco_file_name('val', 300))
  with pytest.raises(FileNotFoundError, match='COCO_val2014_000000000300.jpg'):
    dataset_registry.open_split(cfg, 'val')


def val_name(image_id):
  return fake_formats.coco_file_name('val', image_id)


def write_pfenet_list(path, split, image_ids):
  """A list in PFENet's COCO format: `<image path> <label path>` per line."""
  with open(path, 'w') as f:
    for i in image_ids:
      name = fake_formats.coco_file_name(split, i)
      f.write(f'{split}2014/{name} annotations/{split}2014/{name[:-4]}.png\n')


def test_pfenet_lists_set_images_and_order(built, tmp_path):
  """The rows follow PFENet's list (which queries are scored before the episode cut), not the
  file-name order; masks are still painted from the JSON."""
  root, splits = built
  write_pfenet_list(tmp_path / 'val_data_list.txt', 'val', [300, 7, 42])
  write_pfenet_list(tmp_path / 'train_data_list.txt', 'train', [6, 5, 6])   # repeat dropped
  cfg = ml_collections.ConfigDict(dict(
      name='coco', manual_dir=root, data_dir=str(tmp_path / 'tfds'),
      list_file=str(tmp_path / 'train_data_list.txt'),
      val_list_file=str(tmp_path / 'val_data_list.txt')))
  val = dataset_registry.open_split(cfg, 'val')
  assert val.image_ids == ('COCO_val2014_000000000300', 'COCO_val2014_000000000007',
                           'COCO_val2014_000000000042')
  np.testing.assert_array_equal(val.load(1)[1], splits['val'].load(0)[1])
  assert dataset_registry.open_split(cfg, 'train').image_ids == ('COCO_train2014_000000000006',
                                                         'COCO_train2014_000000000005')


@pytest.mark.parametrize('lines, message', [
    ([300, 7, 300], r'val_data_list.txt:3: image .*000300.jpg\' repeats line 1'),
    ([300, 9], r"val_data_list.txt: 1 image\(s\) of the list have no annotation in .*"
               r"instances_val2014.json, first 'COCO_val2014_000000000009.jpg'"),
])
def test_bad_pfenet_list_is_named(built, tmp_path, lines, message):
  root, _ = built
  write_pfenet_list(tmp_path / 'val_data_list.txt', 'val', lines)
  cfg = ml_collections.ConfigDict(dict(name='coco', manual_dir=root,
                                       data_dir=str(tmp_path / 'tfds'),
                                       val_list_file=str(tmp_path / 'val_data_list.txt')))
  with pytest.raises(ValueError, match=message):
    dataset_registry.open_split(cfg, 'val')
  (tmp_path / 'train.txt').write_text('JPEGImages/x.jpg SegmentationClassAug/x.png\n')
  with pytest.raises(ValueError, match=r"train.txt:1: expected train images named "
                     r"COCO_train2014_<12 digits>.jpg, got 'x.jpg'"):
    coco.parse_pfenet_list(str(tmp_path / 'train.txt'), 'train')


def write_hsnet_pickles(folder, folds):
  """HSNet's data/splits/coco layout: {trn,val}/fold{k}.pkl, each {class index: [paths]}."""
  for sub, per_fold in folds.items():
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for k, classwise in enumerate(per_fold):
      with open(os.path.join(folder, sub, f'fold{k}.pkl'), 'wb') as f:
        pickle.dump(classwise, f, protocol=3)     # HSNet's files are protocol 3


def test_hsnet_split_pickles(built, tmp_path):
  root, _ = built
  t, v = (lambda i: f'train2014/{fake_formats.coco_file_name("train", i)}',
          lambda i: f'val2014/{val_name(i)}')
  folder = str(tmp_path / 'splits' / 'coco')
  write_hsnet_pickles(folder, {
      'trn': [{1: [t(6)], 2: [t(5), t(6)]}, {}, {0: [t(5)]}, {}],
      'val': [{0: [v(42)], 4: [v(7), v(42)]}, {1: [v(300)]}, {}, {3: [v(7)]}]})
  cfg = ml_collections.ConfigDict(dict(name='coco', manual_dir=root,
                                       data_dir=str(tmp_path / 'tfds'), list_file=folder))
  assert dataset_registry.open_split(cfg, 'val').image_ids == (
      'COCO_val2014_000000000042', 'COCO_val2014_000000000007', 'COCO_val2014_000000000300')
  assert dataset_registry.open_split(cfg, 'train').image_ids == ('COCO_train2014_000000000006',
                                                         'COCO_train2014_000000000005')


class _Payload:
  def __reduce__(self):
    return (os.getcwd, ())


@pytest.mark.parametrize('content, message', [
    (_Payload(), r'refers to (posix|nt).getcwd'),
    (collections.OrderedDict({0: ['a']}), r'refers to collections.OrderedDict'),
    ({0: 'val2014/x.jpg'}, r'expected a dict \{class index: \[image paths\]\}'),
])
def test_split_pickle_runs_no_code(tmp_path, content, message):
  path = tmp_path / 'fold0.pkl'
  path.write_bytes(pickle.dumps(content, protocol=3))
  with pytest.raises(ValueError, match=f'{path}: .*{message}'):
    coco.read_split_pickle(str(path))


def _fresh(tmp_path, val_anns=VAL_ANNS):
  root = str(tmp_path / 'm')
  fake_formats.write_coco(root, 'val', VAL_IMAGES, val_anns)
  fake_formats.write_coco(root, 'train', TRAIN_IMAGES, TRAIN_ANNS)
  cfg = ml_collections.ConfigDict(dict(name='coco', manual_dir=root,
                                       data_dir=str(tmp_path / 'tfds')))
  return root, cfg


@pytest.mark.parametrize('kind, message', [
    ('empty_file', 'instances_val2014.json: not a COCO instances JSON'),
    ('no_annotations', 'instances_val2014.json: no image has an annotation'),
    ('unknown_category', r'instances_val2014.json: annotation 30 \(image 300\) has '
                         r'category_id 12, not one of the 80 COCO categories'),
    ('truncated_jpeg', r'COCO_val2014_000000000042.jpg: the image could not be decoded'),
])
def test_broken_coco_never_builds(tmp_path, kind, message):
  """Before: TFDS AssertionError / json error without the file, bare `KeyError: 12`, and a
  truncated JPEG stored (only its header read) to fail at training time."""
  root, cfg = _fresh(tmp_path)
  path = coco.annotation_path(root, 'val')
  if kind == 'empty_file':
    open(path, 'w').close()
  elif kind in ('no_annotations', 'unknown_category'):
    data = json.load(open(path))
    if kind == 'no_annotations':
      data['annotations'] = []
    else:
      data['annotations'][-1]['category_id'] = 12
    json.dump(data, open(path, 'w'))
  else:
    image = os.path.join(root, 'val2014', val_name(42))
    data = open(image, 'rb').read()
    open(image, 'wb').write(data[:len(data) // 2])
  with pytest.raises(ValueError, match=message):
    dataset_registry.open_split(cfg, 'val')


def test_degenerate_polygons_dropped_with_a_warning(tmp_path, caplog):
  """A polygon of fewer than 3 points has no area: pycocotools renders it as no pixel after a
  valid polygon and cannot decode it first (before: a TypeError naming nothing)."""
  anns = [dict(a) for a in VAL_ANNS]
  anns[0] = dict(anns[0], segmentation=anns[0]['segmentation'] + [[5.0, 5.0, 9.0, 9.0]])
  root, cfg = _fresh(tmp_path, anns)
  path = coco.annotation_path(root, 'val')
  data = json.load(open(path))
  data['annotations'].append(dict(data['annotations'][1], id=99,
                                  segmentation=[[1.0, 1.0, 3.0, 3.0]]))
  json.dump(data, open(path, 'w'))
  with caplog.at_level('WARNING'):
    val = dataset_registry.open_split(cfg, 'val')
  assert 'instances_val2014.json: annotation 11 (image 42): 1 polygon' in caplog.text
  assert 'annotation 99 (image 42)' in caplog.text
  expected = coco.paint_label([a for a in anns if a['image_id'] == 42], H, W,
                              coco.category_map([{'id': c} for c in coco.CATEGORY_IDS]))
  np.testing.assert_array_equal(val.load(1)[1], expected)
  bad = dict(anns[0], segmentation=[[1.0, 2.0, 3.0]])
  with pytest.raises(ValueError, match=r'x.json: annotation 11 \(image 42\) .*odd number'):
    coco.drop_degenerate_polygons(bad, 'x.json')


def test_build_of_another_manual_dir_is_refused(tmp_path):
  """Before: a different download folder on a used data_dir silently returned the old build."""
  root, cfg = _fresh(tmp_path)
  dataset_registry.open_split(cfg, 'val')
  other = str(tmp_path / 'other')
  fake_formats.write_coco(other, 'val', VAL_IMAGES[:1], VAL_ANNS[:2])
  fake_formats.write_coco(other, 'train', TRAIN_IMAGES, TRAIN_ANNS)
  with pytest.raises(ValueError, match=r"this build was made from dataset.manual_dir='.*/m'"):
    dataset_registry.open_split(ml_collections.ConfigDict(dict(cfg, manual_dir=other)), 'val')
  assert len(dataset_registry.open_split(ml_collections.ConfigDict(dict(cfg, manual_dir='')), 'val')) == 3
