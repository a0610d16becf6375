"""COCO-20i: a TFDS builder over the official COCO 2014 downloads, with class-index masks.

Layout expected under `manual_dir` (MANUAL_DOWNLOAD_INSTRUCTIONS, docs/data.md):

  train2014/COCO_train2014_<12 digits>.jpg     82,783 images
  val2014/COCO_val2014_<12 digits>.jpg         40,504 images
  annotations/instances_train2014.json
  annotations/instances_val2014.json

Split contents: every image with at least one annotation (crowd included), ordered by file name
(82,081 train / 40,137 val with the real data, PFENet's list sizes). image_id = file stem.

Class ids: the 80 COCO category ids in ascending order -> 1..80 (`CATEGORY_IDS`); folds follow
`datasets.fold_classes` ('interleaved' by default, 'consecutive' by option).

Mask rule (`paint_label`), deterministic and independent of the JSON's annotation order:
1. label = 0 (background).
2. every crowd annotation (iscrowd=1) is painted 255 (ignore): a crowd blob is not an object
   mask, so its pixels are neither the class nor background.
3. non-crowd annotations are painted with their class id in order of decreasing mask area
   (pixels of the decoded mask), ties by ascending annotation id; a later paint wins, so where
   instances overlap the smaller one is kept, and an instance inside a crowd region overrides
   the 255.
Masks are decoded with pycocotools exactly as `COCO.annToMask` does (polygons, uncompressed and
compressed RLE).
"""

import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
import tensorflow_datasets as tfds

from mmnet_jax.data import datasets
from mmnet_jax.data import image_io

NUM_CLASSES = 80
# The 80 category ids of COCO 2014/2017 (1..90 with 10 unused ids); class c is CATEGORY_IDS[c-1].
CATEGORY_IDS = tuple(i for i in range(1, 91)
                     if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
SPLIT_DIRS = {'train': 'train2014', 'val': 'val2014'}
IGNORE = 255

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the official COCO 2014 downloads under `manual_dir` (steps and counts: docs/data.md):
  http://images.cocodataset.org/zips/train2014.zip -> manual_dir/train2014/
  http://images.cocodataset.org/zips/val2014.zip   -> manual_dir/val2014/
  http://images.cocodataset.org/annotations/annotations_trainval2014.zip
      -> manual_dir/annotations/instances_train2014.json, instances_val2014.json
Then set dataset.manual_dir to that folder.
"""


def _missing(path, what):
  return FileNotFoundError(
      f'COCO-20i: missing {what}: {path}\nSee docs/data.md and '
      f'mmnet_jax.data.coco.MANUAL_DOWNLOAD_INSTRUCTIONS:\n{MANUAL_DOWNLOAD_INSTRUCTIONS}')


def annotation_path(manual_dir, split):
  return os.path.join(manual_dir, 'annotations', f'instances_{SPLIT_DIRS[split]}.json')


def check_manual_dir(manual_dir):
  """Raises FileNotFoundError naming the first missing folder or annotation file."""
  if not manual_dir:
    raise _missing('<dataset.manual_dir is empty>', 'manual_dir (the folder of the downloads)')
  for split, sub in SPLIT_DIRS.items():
    if not os.path.isdir(os.path.join(manual_dir, sub)):
      raise _missing(os.path.join(manual_dir, sub), f'{split} image folder')
    if not os.path.isfile(annotation_path(manual_dir, split)):
      raise _missing(annotation_path(manual_dir, split), f'{split} annotation file')


def category_map(categories):
  """{COCO category id: class id 1..80} (ascending id order); checks the 80 COCO ids."""
  ids = sorted(int(c['id']) for c in categories)
  if tuple(ids) != CATEGORY_IDS:
    raise ValueError(f'expected the 80 COCO category ids {CATEGORY_IDS}, got {ids}')
  return {cat: k + 1 for k, cat in enumerate(ids)}


def annotation_mask(segmentation, height, width):
  """bool (h, w) mask of one annotation's `segmentation` (polygons, or RLE with list or
  compressed string counts), decoded with pycocotools as `COCO.annToMask` does."""
  if isinstance(segmentation, list):          # polygons of one instance
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
  elif isinstance(segmentation.get('counts'), list):   # uncompressed RLE
    rle = mask_utils.frPyObjects(segmentation, height, width)
  else:                                        # compressed RLE
    rle = segmentation
  return mask_utils.decode(rle).astype(bool)


def paint_label(annotations, height, width, cat_map):
  """uint8 (h, w) class-index label of one image by the module's mask rule.

  Args:
    annotations: the image's annotation dicts (`segmentation`, `category_id`, `iscrowd`, `id`).
    height, width: the image size.
    cat_map: `category_map` of the JSON.
  """
  label = np.zeros((height, width), np.uint8)
  instances = []
  for ann in annotations:
    m = annotation_mask(ann['segmentation'], height, width)
    if ann.get('iscrowd', 0):
      label[m] = IGNORE
    else:
      instances.append((-int(m.sum()), int(ann['id']), cat_map[int(ann['category_id'])], m))
  for _, _, cls, m in sorted(instances, key=lambda t: t[:2]):  # larger first, then by id
    label[m] = cls
  return label


def load_split_index(manual_dir, split):
  """([(file name, height, width, annotations)] sorted by file name, category map).

  Only images with at least one annotation are kept.
  """
  path = annotation_path(manual_dir, split)
  if not os.path.isfile(path):
    raise _missing(path, f'{split} annotation file')
  with open(path) as f:
    data = json.load(f)
  cat_map = category_map(data['categories'])
  by_image = {}
  for ann in data['annotations']:
    by_image.setdefault(int(ann['image_id']), []).append(ann)
  images = [(im['file_name'], int(im['height']), int(im['width']), by_image[int(im['id'])])
            for im in data['images'] if int(im['id']) in by_image]
  images.sort(key=lambda t: t[0])
  return images, cat_map


class Coco20i(tfds.core.GeneratorBasedBuilder):
  """COCO-20i (COCO 2014) with class-index masks built from the instance annotations."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release (mask rule: crowd 255, smaller instance wins).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self):
    return self.dataset_info_from_configs(
        features=datasets.fss_features('jpeg'),
        supervised_keys=None,
        homepage='https://cocodataset.org/',
    )

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    check_manual_dir(manual_dir)
    return {split: self._generate_examples(manual_dir, split) for split in SPLIT_DIRS}

  def _generate_examples(self, manual_dir, split):
    images, cat_map = load_split_index(manual_dir, split)
    for index, (file_name, height, width, anns) in enumerate(images):
      image_path = os.path.join(manual_dir, SPLIT_DIRS[split], file_name)
      if not os.path.isfile(image_path):
        raise _missing(image_path, f'{split} image')
      with Image.open(image_path) as im:
        if im.size != (width, height):
          raise ValueError(f'{image_path}: size {im.size[::-1]} != annotated '
                           f'{(height, width)}')
        image = image_io.builder_image(image_path, im)
      label = paint_label(anns, height, width, cat_map)
      areas = datasets.label_class_areas(label, NUM_CLASSES)
      image_id = os.path.splitext(file_name)[0]
      yield image_id, {
          'image': image,   # the file's bytes as they are (16-bit grayscale: an 8-bit PNG)
          'label': label[..., None],
          'image_id': image_id,
          'list_index': index,
          'classes': np.asarray(sorted(areas), np.int32),
          'class_areas': np.asarray([areas[c] for c in sorted(areas)], np.int32),
      }


def build(manual_dir, data_dir):
  """Builds COCO-20i from the downloads (no-op if built). Returns (builder, was_built_now)."""
  builder = Coco20i(data_dir=data_dir, file_format='array_record')
  if builder.is_prepared():
    return builder, False
  check_manual_dir(manual_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False,
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder, True


def open_split(manual_dir, split, data_dir, pool_options=None):
  """Builds COCO-20i on first use and returns `split` as a `datasets.FewShotSplit`.

  Once built, `manual_dir` is not read again. After a fresh build the per-fold pool sizes of
  both splits are printed (`datasets.print_pool_sizes` with `pool_options`).
  """
  builder, built = build(manual_dir, data_dir)
  if built:
    for s in datasets.SPLITS:
      datasets.print_pool_sizes(datasets.split_from_tfds(builder, 'coco', s), 'coco',
                                **(pool_options or {}))
  return datasets.split_from_tfds(builder, 'coco', split)
