"""COCO-20i: a TFDS builder over the official COCO 2014 downloads, with class-index masks.

Layout expected under `manual_dir` (MANUAL_DOWNLOAD_INSTRUCTIONS, docs/data.md):

  train2014/COCO_train2014_<12 digits>.jpg     82,783 images
  val2014/COCO_val2014_<12 digits>.jpg         40,504 images
  annotations/instances_train2014.json
  annotations/instances_val2014.json

Split contents (default): every image with at least one annotation (crowd included), ordered
by file name (82,081 train / 40,137 val with the real data, PFENet's list sizes). image_id =
file stem. `list_file` / `val_list_file` set the images and their order instead (`resolve_lists`):
PFENet's list files (`lists/coco/{train,val}_data_list.txt`, lines `<image path> <label path>`)
or a folder of HSNet's split pickles (`trn/fold{0..3}.pkl`, `val/fold{0..3}.pkl`). Order
matters: evaluation scores queries in row order until the episode budget is spent.

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

import dataclasses
import hashlib
import json
import logging
import os
import pickle

import numpy as np
from pycocotools import mask as mask_utils
import tensorflow_datasets as tfds

from mmnet_jax import conventions
from mmnet_jax.data import datasets
from mmnet_jax.data import episodes
from mmnet_jax.data import image_io

NUM_CLASSES = 80
# The 80 category ids of COCO 2014/2017 (1..90 with 10 unused ids); class c is CATEGORY_IDS[c-1].
CATEGORY_IDS = tuple(i for i in range(1, 91)
                     if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
SPLIT_DIRS = {'train': 'train2014', 'val': 'val2014'}

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


def category_map(categories, where='annotation file'):
  """{COCO category id: class id 1..80} (ascending id order); checks the 80 COCO ids."""
  ids = sorted(int(c['id']) for c in categories)
  if tuple(ids) != CATEGORY_IDS:
    raise ValueError(f'{where}: expected the 80 COCO category ids {CATEGORY_IDS}, got {ids}')
  return {cat: k + 1 for k, cat in enumerate(ids)}


def drop_degenerate_polygons(ann, where):
  """`ann` without the polygons of fewer than 3 points (logged with `where` and the id).

  pycocotools renders such a polygon as no pixel when another polygon of the annotation comes
  first, and fails (TypeError / 'input type is not supported') when it comes first, so
  `COCO.annToMask` cannot decode these annotations at all; dropping them gives the mask that
  pycocotools gives in the cases it can decode. An odd coordinate count is malformed: an error.
  """
  seg = ann.get('segmentation')
  if not isinstance(seg, list):
    return ann
  for poly in seg:
    if len(poly) % 2:
      raise ValueError(f'{where}: annotation {ann.get("id")} (image {ann.get("image_id")}) '
                       f'has a polygon with an odd number of coordinates ({len(poly)})')
  kept = [poly for poly in seg if len(poly) >= 6]
  if len(kept) == len(seg):
    return ann
  logging.warning('%s: annotation %s (image %s): %d polygon(s) of fewer than 3 points dropped '
                  '(no area)', where, ann.get('id'), ann.get('image_id'), len(seg) - len(kept))
  return dict(ann, segmentation=kept)


def annotation_mask(segmentation, height, width):
  """bool (h, w) mask of one annotation's `segmentation` (polygons, or RLE with list or
  compressed string counts), decoded with pycocotools as `COCO.annToMask` does."""
  if isinstance(segmentation, list) and not segmentation:   # every polygon was degenerate
    return np.zeros((height, width), bool)
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
      label[m] = conventions.IGNORE_LABEL
    else:
      instances.append((-int(m.sum()), int(ann['id']), cat_map[int(ann['category_id'])], m))
  for _, _, cls, m in sorted(instances, key=lambda t: t[:2]):  # larger first, then by id
    label[m] = cls
  return label


def read_annotations(path):
  """The parsed instances JSON at `path`; a ValueError naming it when it is not one."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f'{path}: not a COCO instances JSON ({err}); an empty or truncated '
                     'download? Extract annotations_trainval2014.zip again') from err
  missing = [k for k in ('images', 'annotations', 'categories')
             if not isinstance(data, dict) or k not in data]
  if missing:
    raise ValueError(f'{path}: not a COCO instances JSON (no {missing} field)')
  return data


def load_split_index(manual_dir, split, names=None, names_source=''):
  """([(file name, height, width, annotations)], category map).

  Only images with at least one annotation are kept, sorted by file name; or, with `names` (the
  file names of a list, read from `names_source`), those images in that order.
  """
  path = annotation_path(manual_dir, split)
  if not os.path.isfile(path):
    raise _missing(path, f'{split} annotation file')
  data = read_annotations(path)
  cat_map = category_map(data['categories'], path)
  by_image = {}
  for ann in data['annotations']:
    if int(ann['category_id']) not in cat_map:
      raise ValueError(f'{path}: annotation {ann.get("id")} (image {ann.get("image_id")}) has '
                       f'category_id {ann["category_id"]}, not one of the 80 COCO categories')
    by_image.setdefault(int(ann['image_id']), []).append(drop_degenerate_polygons(ann, path))
  images = {im['file_name']: (im['file_name'], int(im['height']), int(im['width']),
                              by_image[int(im['id'])])
            for im in data['images'] if int(im['id']) in by_image}
  if not images:
    raise ValueError(f'{path}: no image has an annotation (expected the {split} instances of '
                     'COCO 2014)')
  if names is None:
    return [images[n] for n in sorted(images)], cat_map
  unknown = [n for n in names if n not in images]
  if unknown:
    raise ValueError(f'{names_source}: {len(unknown)} image(s) of the list have no annotation '
                     f'in {path}, first {unknown[0]!r}')
  return [images[n] for n in names], cat_map


def _check_names(names, split, where):
  """COCO 2014 file names of `split` (`COCO_<split>2014_<12 digits>.jpg`), else a ValueError."""
  prefix = f'COCO_{SPLIT_DIRS[split]}_'
  for name in names:
    stem = os.path.splitext(name)[0]
    if not (stem.startswith(prefix) and stem[len(prefix):].isdigit() and name.endswith('.jpg')):
      raise ValueError(f'{where}: expected {split} images named {prefix}<12 digits>.jpg, '
                       f'got {name!r}')
  return names


def parse_pfenet_list(path, split, unique=False):
  """Image file names of a PFENet COCO list, in its order.

  Lines are `<image path> <label path>` relative to PFENet's data_root (its
  `lists/coco/val_data_list.txt` style); only the image's file name is used, masks are painted
  from the annotations. Repeated images are dropped (first kept), or with `unique` (val lists:
  every row is scored) an error naming the line.
  """
  if not os.path.isfile(path):
    raise _missing(path, f'{split} list file')
  names, seen = [], {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != 2:
        raise ValueError(f'{path}:{n}: expected "<image path> <label path>", got '
                         f'{line.strip()!r}')
      name = os.path.basename(parts[0])
      _check_names([name], split, f'{path}:{n}')
      if name in seen:
        if unique:
          raise ValueError(f'{path}:{n}: image {name!r} repeats line {seen[name]} (a val list '
                           'scores every row: each image once)')
        continue
      seen[name] = n
      names.append(name)
  if not names:
    raise ValueError(f'{path}: the {split} list is empty')
  return names


class _ContainersOnly(pickle.Unpickler):
  """An unpickler that builds only dicts, lists, str and int: every global is refused, so no
  code of the file runs."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f'refers to {module}.{name}; only dict/list/str/int allowed')


def read_split_pickle(path):
  """{class index: [image paths]} of one HSNet COCO split pickle, read without running code."""
  if not os.path.isfile(path):
    raise _missing(path, 'HSNet split pickle')
  try:
    with open(path, 'rb') as f:
      data = _ContainersOnly(f).load()
  except Exception as err:  # any malformed pickle: one message naming the file
    raise ValueError(f'{path}: not an HSNet COCO split pickle ({type(err).__name__}: {err})'
                     ) from err
  if not (isinstance(data, dict) and all(
      isinstance(k, int) and isinstance(v, list) and all(isinstance(x, str) for x in v)
      for k, v in data.items())):
    raise ValueError(f'{path}: expected a dict {{class index: [image paths]}} (HSNet '
                     'data/splits/coco/<trn|val>/fold<k>.pkl)')
  return data


def parse_hsnet_pickles(folder):
  """{'train': names, 'val': names} from HSNet's split pickles (`trn|val/fold{0..3}.pkl`).

  Each split is the union of its four folds' images, in first-seen order (fold 0 to 3, each
  pickle's class order, each class's list order).
  """
  out = {}
  for split, sub in (('train', 'trn'), ('val', 'val')):
    names = []
    for fold in range(4):
      path = os.path.join(folder, sub, f'fold{fold}.pkl')
      for paths in read_split_pickle(path).values():
        names += _check_names([os.path.basename(p) for p in paths], split, path)
    if not names:
      raise ValueError(f'{folder}: the HSNet {sub} pickles list no image')
    out[split] = list(dict.fromkeys(names))
  return out


def resolve_lists(list_file='', val_list_file=''):
  """({'train': names or None, 'val': names or None}, source name); None = every annotated
  image in file-name order. source: 'sorted', 'list', 'hsnet' (+'-val' for a val list)."""
  lists = {'train': None, 'val': None}
  source = 'sorted'
  if list_file and os.path.isdir(list_file):
    lists, source = parse_hsnet_pickles(list_file), 'hsnet'
  elif list_file:
    lists['train'], source = parse_pfenet_list(list_file, 'train'), 'list'
  if val_list_file:
    lists['val'] = parse_pfenet_list(val_list_file, 'val', unique=True)
    source += '-val'
  return lists, source


def config_name(source, lists):
  """Builder config name: the list source and a digest of the listed names ('sorted': none)."""
  if all(v is None for v in lists.values()):
    return source
  h = hashlib.sha1()
  for split in sorted(lists):
    for name in lists[split] or ('<sorted>',):
      h.update(f'{split} {name}\n'.encode())
  return f'{source}-{h.hexdigest()[:12]}'


@dataclasses.dataclass(eq=False)
class Coco20iConfig(tfds.core.BuilderConfig):
  """A BuilderConfig carrying the image lists (split -> tuple of file names, or None) and the
  files they were read from (split -> path, for messages)."""
  lists: dict = dataclasses.field(default_factory=dict)
  list_paths: dict = dataclasses.field(default_factory=dict)


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
    config = self.builder_config
    images, cat_map = load_split_index(manual_dir, split, config.lists.get(split),
                                       config.list_paths.get(split, ''))
    for index, (file_name, height, width, anns) in enumerate(images):
      image_path = os.path.join(manual_dir, SPLIT_DIRS[split], file_name)
      if not os.path.isfile(image_path):
        raise _missing(image_path, f'{split} image')
      with datasets.open_image(image_path) as im:
        if im.size != (width, height):
          raise ValueError(f'{image_path}: size {im.size[::-1]} != annotated '
                           f'{(height, width)}')
        datasets.decode_fully(image_path, im)
        image = image_io.builder_image(image_path, im)
      label = paint_label(anns, height, width, cat_map)
      areas = datasets.label_class_areas(label, NUM_CLASSES, where=image_path)
      image_id = os.path.splitext(file_name)[0]
      yield image_id, {
          'image': image,   # the file's bytes as they are (16-bit grayscale: an 8-bit PNG)
          'label': label[..., None],
          'image_id': image_id,
          'list_index': index,
          'classes': np.asarray(sorted(areas), np.int32),
          'class_areas': np.asarray([areas[c] for c in sorted(areas)], np.int32),
      }


def build(manual_dir, data_dir, list_file='', val_list_file=''):
  """Builds COCO-20i from the downloads (no-op if built). Returns (builder, was_built_now).

  A build made from another `manual_dir` is refused (`datasets.check_build_source`).
  """
  lists, source = resolve_lists(list_file, val_list_file)
  config = Coco20iConfig(
      name=config_name(source, lists),
      lists={s: (None if v is None else tuple(v)) for s, v in lists.items()},
      list_paths={'train': list_file, 'val': val_list_file or list_file},
      description=f'COCO-20i, {source} lists')
  return datasets.build_from_downloads(
      lambda: Coco20i(config=config, data_dir=data_dir, file_format='array_record'),
      manual_dir, lambda: check_manual_dir(manual_dir))


def open_split(manual_dir, split, data_dir, list_file='', val_list_file='', pool_options=None):
  """Builds COCO-20i on first use and returns `split` as a `datasets.FewShotSplit`.

  Rows follow the list order (file-name order by default). Once built, `manual_dir` is not
  read again (only compared with the one recorded at build time). After a fresh build the
  per-fold pool sizes of both splits are printed (`episodes.print_pool_sizes`).
  """
  builder, built = build(manual_dir, data_dir, list_file, val_list_file)
  if built:
    for s in datasets.SPLITS:
      episodes.print_pool_sizes(datasets.split_from_tfds(builder, 'coco', s), 'coco',
                                **(pool_options or {}))
  return datasets.split_from_tfds(builder, 'coco', split)
