"""COCO-20i builder on a tiny COCO 2014 tree (instances JSON with polygons, RLE and crowd)."""

import os

import ml_collections
import numpy as np
from pycocotools import coco as coco_api
from pycocotools import mask as mask_utils
import pytest

from mmnet_jax.data import coco
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
  return root, {s: datasets.open_split(cfg, s) for s in datasets.SPLITS}


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
  assert datasets.pool_sizes(val, 'coco') == {0: 1, 1: 0, 2: 0, 3: 1}
  pool = episodes.build_pool(val, datasets.fold_classes('coco', 3)[1])
  assert [val.image_ids[i] for i in pool.indices] == ['COCO_val2014_000000000007']
  # consecutive: fold 0 tests 1..20 (image 42), fold 3 tests 61..80 (image 7)
  assert datasets.pool_sizes(val, 'coco', coco_convention='consecutive') == {
      0: 1, 1: 0, 2: 0, 3: 1}
  pool = episodes.build_pool(val, datasets.fold_classes('coco', 0, coco_convention='consecutive')[1])
  assert [val.image_ids[i] for i in pool.indices] == ['COCO_val2014_000000000042']


def test_missing_paths_are_named(tmp_path):
  cfg = ml_collections.ConfigDict(dict(name='coco', manual_dir=str(tmp_path),
                                       data_dir=str(tmp_path / 'tfds')))
  with pytest.raises(FileNotFoundError, match='train2014(.|\n)*docs/data.md'):
    datasets.open_split(cfg, 'train')
  fake_formats.write_coco(str(tmp_path), 'train', TRAIN_IMAGES, TRAIN_ANNS)
  os.makedirs(tmp_path / 'val2014')
  with pytest.raises(FileNotFoundError, match=r'instances_val2014\.json'):
    datasets.open_split(cfg, 'train')
  fake_formats.write_coco(str(tmp_path), 'val', VAL_IMAGES, VAL_ANNS)
  os.remove(tmp_path / 'val2014' / fake_formats.coco_file_name('val', 300))
  with pytest.raises(FileNotFoundError, match='COCO_val2014_000000000300.jpg'):
    datasets.open_split(cfg, 'val')
