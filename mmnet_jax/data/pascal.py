"""PASCAL-5i: a TFDS builder over the user's VOC2012 + SBD-aug downloads, and its list rules.

Layout expected under `manual_dir` (MANUAL_DOWNLOAD_INSTRUCTIONS, docs/data.md):

  <voc>/JPEGImages/<id>.jpg                      VOC2012 images
  <voc>/SegmentationClass/<id>.png               VOC2012 masks (palette PNG, read as indices)
  <voc>/ImageSets/Segmentation/{train,val}.txt   VOC2012 segmentation lists (1,464 / 1,449 ids)
  <voc>/SegmentationClassAug/<id>.png            SBD masks as class-index PNGs (255 borders)
  SBD/train_noval.txt (or SBD/train.txt)         the SBD train list, one id per line

where <voc> is `manual_dir/VOCdevkit/VOC2012`, `manual_dir/VOC2012` or `manual_dir` itself.

Lists (one `Entry` per image, paths relative to <voc>):
* train, by rule (`pfenet_train_ids`): the SBD train list minus VOC12 val, then VOC12 train,
  de-duplicated keeping the first occurrence, masks from SegmentationClassAug. With SBD's
  `train_noval.txt` (5,623 ids) this reproduces PFENet's `voc_sbd_merge_noduplicate.txt`
  exactly (5,953 ids, same order); SBD's `train.txt` (8,498 ids) gives a different, larger list.
* val: VOC12 val (1,449 ids) with the official SegmentationClass masks (PFENet's val list points
  to SegmentationClassAug, which holds the same VOC masks for these ids).
* `list_file`: a PFENet-format train list (`JPEGImages/x.jpg SegmentationClassAug/x.png`), or a
  folder of HSNet's per-fold lists (`trn/fold{0..3}.txt`, `val/fold{0..3}.txt`, lines
  `<id>__<class>`): each split is the union of its four folds' images in first-seen order, masks
  from SegmentationClassAug (as HSNet). `val_list_file`: a PFENet-format val list.

Features: image (the JPEG bytes as stored), label (uint8 png (h, w, 1): 0 background, 1..20,
255 borders), image_id, list_index (row order of the list), classes / class_areas (int32 class
ids present and their pixel counts; 0 and 255 not counted).
"""

import dataclasses
import hashlib
import os

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mmnet_jax.data import datasets
from mmnet_jax.data import episodes
from mmnet_jax.data import image_io

NUM_CLASSES = 20
VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
               'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')
SBD_LISTS = ('SBD/train_noval.txt', 'SBD/train.txt')   # first one present is used
VOC_ROOTS = ('VOCdevkit/VOC2012', 'VOC2012', '.')

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put these official downloads under `manual_dir` (full steps and counts: docs/data.md):
1. VOC2012: http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar
   Extract it into manual_dir: manual_dir/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass,
   ImageSets/Segmentation/train.txt, ImageSets/Segmentation/val.txt}.
2. SegmentationClassAug (SBD masks as VOC class-index PNGs, 12,031 files; the DeepLab
   'SegmentationClassAug.zip', also linked from the PFENet README as 'annotations'):
   extract to manual_dir/VOCdevkit/VOC2012/SegmentationClassAug/<id>.png.
3. SBD train list: http://home.bharathh.info/pubs/codes/SBD/train_noval.txt (5,623 ids, no
   VOC2012 val image) -> manual_dir/SBD/train_noval.txt. (SBD's own train.txt from
   benchmark.tgz, benchmark_RELEASE/dataset/train.txt, is also accepted as
   manual_dir/SBD/train.txt, but gives a larger list than PFENet's 5,953.)
Then set dataset.manual_dir to that folder.
"""


def _missing(path, what):
  return FileNotFoundError(
      f'PASCAL-5i: missing {what}: {path}\nSee docs/data.md and '
      f'mmnet_jax.data.pascal.MANUAL_DOWNLOAD_INSTRUCTIONS:\n{MANUAL_DOWNLOAD_INSTRUCTIONS}')


@dataclasses.dataclass(frozen=True)
class Entry:
  """One image of a list: its id and image / mask paths relative to the VOC2012 folder."""
  image_id: str
  image: str
  label: str


def voc_entry(image_id, mask_dir):
  """The `Entry` of VOC id `image_id` with its mask in `mask_dir` (a folder under VOC2012)."""
  return Entry(image_id, f'JPEGImages/{image_id}.jpg', f'{mask_dir}/{image_id}.png')


def find_voc_root(manual_dir):
  """The VOC2012 folder under `manual_dir` (the first of VOC_ROOTS holding JPEGImages)."""
  if not manual_dir:
    raise _missing('<dataset.manual_dir is empty>', 'manual_dir (the folder of the downloads)')
  if not os.path.isdir(manual_dir):
    raise _missing(manual_dir, 'manual_dir')
  for rel in VOC_ROOTS:
    root = os.path.normpath(os.path.join(manual_dir, rel))
    if os.path.isdir(os.path.join(root, 'JPEGImages')):
      return root
  raise _missing(os.path.join(manual_dir, VOC_ROOTS[0], 'JPEGImages'), 'VOC2012 JPEGImages folder')


def read_ids(path, what='id list', allow_empty=False, unique=False):
  """Ids from a one-id-per-line file (VOC ImageSets, SBD lists); blank lines skipped.

  An empty list is an error unless `allow_empty` (an empty SBD or VOC train list would build a
  silently smaller dataset: 1,464 instead of 5,953 images); with `unique`, a repeated id is an
  error naming both lines (a val list scores each row).
  """
  if not os.path.isfile(path):
    raise _missing(path, what)
  with open(path) as f:
    rows = [(n, line.strip()) for n, line in enumerate(f, 1)]
  rows = [(n, i) for n, i in rows if i]
  first = {}
  for n, i in rows:
    if ' ' in i or '/' in i:
      raise ValueError(f'{path}:{n}: expected one image id per line, got {i!r}')
    if unique and i in first:
      raise ValueError(f'{path}:{n}: id {i!r} repeats line {first[i]} ({what}: every id once)')
    first.setdefault(i, n)
  if not rows and not allow_empty:
    raise ValueError(f'{path}: the {what} is empty (expected one image id per line)')
  return [i for _, i in rows]


def dedupe(ids):
  """`ids` with later repeats removed (first occurrence kept, order preserved)."""
  return list(dict.fromkeys(ids))


def pfenet_train_ids(sbd_train, voc_train, voc_val):
  """PFENet's train list rule: (SBD train minus VOC12 val) then VOC12 train, de-duplicated.

  Order: SBD list order, then VOC12 train order; the first occurrence of an id is kept (as
  PFENet's `duplicate_removel.py` on `voc_sbd_merge.txt`). VOC12 val ids never appear.
  """
  val = set(voc_val)
  return dedupe([i for i in sbd_train if i not in val] + [i for i in voc_train if i not in val])


def parse_pfenet_list(path, unique=False):
  """Entries of a PFENet list: lines `JPEGImages/x.jpg SegmentationClassAug/x.png`.

  Repeated lines are dropped (first kept), or with `unique` (val lists) an error naming the
  line. Paths are relative to the VOC2012 folder.
  """
  if not os.path.isfile(path):
    raise _missing(path, 'list file')
  entries = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != 2:
        raise ValueError(f'{path}:{n}: expected "JPEGImages/<id>.jpg <mask dir>/<id>.png", '
                         f'got {line.strip()!r}')
      image_id = os.path.splitext(os.path.basename(parts[0]))[0]
      if unique and any(e.image_id == image_id for e in entries):
        raise ValueError(f'{path}:{n}: image {image_id!r} is listed twice (a val list scores '
                         'every row: each image once)')
      entries.append(Entry(image_id, parts[0], parts[1]))
  if not entries:
    raise ValueError(f'{path}: the list is empty')
  seen = set()
  return [e for e in entries if not (e.image_id in seen or seen.add(e.image_id))]


def parse_hsnet_lists(folder):
  """{'train': ids, 'val': ids} from HSNet's per-fold lists (`<id>__<class>` lines).

  Each split is the union of `trn/fold{0..3}.txt` (`val/...`) images, in first-seen order.
  """
  out = {}
  for split, sub in (('train', 'trn'), ('val', 'val')):
    ids = []
    for fold in range(4):
      path = os.path.join(folder, sub, f'fold{fold}.txt')
      for line in read_ids(path, 'HSNet fold list', allow_empty=True):
        image_id, sep, cls = line.rpartition('__')
        if not sep or not cls.isdigit():
          raise ValueError(f'{path}: expected "<id>__<class>" lines, got {line!r}')
        ids.append(image_id)
    out[split] = dedupe(ids)
  return out


def resolve_lists(manual_dir, list_file='', val_list_file=''):
  """The lists of both splits: ({'train': entries, 'val': entries}, source name, voc root).

  source is 'pfenet' (rule-built), 'list' (a user PFENet list) or 'hsnet'.
  """
  voc = find_voc_root(manual_dir)
  seg = os.path.join(voc, 'ImageSets', 'Segmentation')
  if list_file and os.path.isdir(list_file):
    ids = parse_hsnet_lists(list_file)
    for s, v in ids.items():
      if not v:
        raise ValueError(f'{list_file}: the HSNet {s} fold lists are all empty')
    lists = {s: [voc_entry(i, 'SegmentationClassAug') for i in v] for s, v in ids.items()}
    source = 'hsnet'
  else:
    voc_val = read_ids(os.path.join(seg, 'val.txt'), 'VOC2012 val list', unique=True)
    if list_file:
      train, source = parse_pfenet_list(list_file), 'list'
    else:
      sbd = next((os.path.join(manual_dir, p) for p in SBD_LISTS
                  if os.path.isfile(os.path.join(manual_dir, p))), None)
      if sbd is None:
        raise _missing(os.path.join(manual_dir, SBD_LISTS[0]), 'SBD train list')
      voc_train = read_ids(os.path.join(seg, 'train.txt'), 'VOC2012 train list')
      ids = pfenet_train_ids(read_ids(sbd, 'SBD train list'), voc_train, voc_val)
      train, source = [voc_entry(i, 'SegmentationClassAug') for i in ids], 'pfenet'
    val = (parse_pfenet_list(val_list_file, unique=True) if val_list_file
           else [voc_entry(i, 'SegmentationClass') for i in voc_val])
    lists = {'train': train, 'val': val}
    if val_list_file:
      source += '+val'
  return lists, source, voc


def check_files(voc_root, lists):
  """Raises FileNotFoundError naming the first missing image or mask (and how many miss)."""
  for split, entries in lists.items():
    missing = [os.path.join(voc_root, p) for e in entries for p in (e.image, e.label)
               if not os.path.isfile(os.path.join(voc_root, p))]
    if missing:
      raise _missing(missing[0], f'file of the {split} list ({len(missing)} files missing in '
                     f'all)')


def read_label(path):
  """uint8 (h, w) class indices from a VOC palette PNG or a grayscale index PNG.

  Palette PNGs are read as their indices, never through the RGB colours. A file that does not
  decode whole (truncated, not an image) is a ValueError naming it.
  """
  try:
    im = Image.open(path)
  except (OSError, SyntaxError) as err:   # PIL.UnidentifiedImageError is an OSError
    raise ValueError(f'{path}: the mask could not be read ({err}); expected a class-index '
                     'PNG') from err
  with im:
    if im.mode not in ('P', 'L'):
      raise ValueError(f'{path}: mask mode {im.mode!r}; expected a class-index PNG (mode P '
                       'palette or L grayscale), not a colour rendering')
    datasets.decode_fully(path, im)
    return np.asarray(im, np.uint8)


def config_name(source, lists):
  """Builder config name: the list source and a digest of every (split, id, image, mask)."""
  h = hashlib.sha1()
  for split in sorted(lists):
    for e in lists[split]:
      h.update(f'{split} {e.image_id} {e.image} {e.label}\n'.encode())
  return f'{source.replace("+", "-")}-{h.hexdigest()[:12]}'


@dataclasses.dataclass(eq=False)
class Pascal5iConfig(tfds.core.BuilderConfig):
  """A BuilderConfig carrying the resolved lists (split -> tuple of `Entry`)."""
  lists: dict = dataclasses.field(default_factory=dict)


class Pascal5i(tfds.core.GeneratorBasedBuilder):
  """PASCAL-5i (VOC2012 + SBD-aug) with class-index masks, for few-shot segmentation."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self):
    return self.dataset_info_from_configs(
        features=datasets.fss_features('jpeg'),
        supervised_keys=None,
        homepage='http://host.robots.ox.ac.uk/pascal/VOC/voc2012/',
    )

  def _split_generators(self, dl_manager):
    voc = find_voc_root(os.fspath(dl_manager.manual_dir))
    return {split: self._generate_examples(voc, entries)
            for split, entries in self.builder_config.lists.items()}

  def _generate_examples(self, voc, entries):
    for index, e in enumerate(entries):
      label_path = os.path.join(voc, e.label)
      label = read_label(label_path)
      image_path = os.path.join(voc, e.image)
      with datasets.open_image(image_path) as im:
        if im.size != label.shape[::-1]:
          raise ValueError(f'{image_path}: image size {im.size[::-1]} != mask size '
                           f'{label.shape} of {e.label}')
        datasets.decode_fully(image_path, im)
        image = image_io.builder_image(image_path, im)
      areas = datasets.label_class_areas(label, NUM_CLASSES, where=label_path)
      yield e.image_id, {
          'image': image,   # the file's bytes as they are (16-bit grayscale: an 8-bit PNG)
          'label': label[..., None],
          'image_id': e.image_id,
          'list_index': index,
          'classes': np.asarray(sorted(areas), np.int32),
          'class_areas': np.asarray([areas[c] for c in sorted(areas)], np.int32),
      }


def build(manual_dir, data_dir, list_file='', val_list_file=''):
  """Builds PASCAL-5i from the downloads (no-op if built). Returns (builder, was_built_now)."""
  lists, source, voc = resolve_lists(manual_dir, list_file, val_list_file)
  config = Pascal5iConfig(name=config_name(source, lists),
                          lists={s: tuple(v) for s, v in lists.items()},
                          description=f'PASCAL-5i, {source} lists')
  return datasets.build_from_downloads(
      lambda: Pascal5i(config=config, data_dir=data_dir, file_format='array_record'),
      manual_dir, lambda: check_files(voc, lists))


def open_split(manual_dir, split, data_dir, list_file='', val_list_file='', pool_options=None):
  """Builds PASCAL-5i on first use and returns `split` as a `datasets.FewShotSplit`.

  Rows follow the list order. After a fresh build the per-fold pool sizes of both splits are
  printed (`episodes.print_pool_sizes` with `pool_options`).
  """
  builder, built = build(manual_dir, data_dir, list_file, val_list_file)
  if built:
    for s in datasets.SPLITS:
      episodes.print_pool_sizes(datasets.split_from_tfds(builder, 'pascal', s), 'pascal',
                                **(pool_options or {}))
  return datasets.split_from_tfds(builder, 'pascal', split)
