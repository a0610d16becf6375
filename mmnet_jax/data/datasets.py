"""The dataset interface (`FewShotSplit`), fold class lists and what the TFDS builders share.

`dataset_registry.open_split(dataset_config, split)` reads these fields of `dataset_config` (a ConfigDict or any
object with attributes; missing optional fields take the defaults shown):

  name          'synthetic', 'pascal' (PASCAL-5i) or 'coco' (COCO-20i).
  data_dir      TFDS data directory; None or '' -> ~/tensorflow_datasets (or $TFDS_DATA_DIR).
  Real datasets ('pascal', 'coco'; see docs/data.md):
  manual_dir    folder holding the user's official downloads (required to build; see
                pascal.MANUAL_DOWNLOAD_INSTRUCTIONS / coco.MANUAL_DOWNLOAD_INSTRUCTIONS).
  list_file     optional. 'pascal': a PFENet-format train list
                (`JPEGImages/x.jpg SegmentationClassAug/x.png` per line), or a folder of HSNet's
                per-fold lists (`trn/fold{0..3}.txt`, `val/fold{0..3}.txt`) that sets both splits;
                '' -> the PFENet train list built by rule (pascal.pfenet_train_ids).
                'coco': PFENet's `train_data_list.txt` format (`<image path> <label path>`), or
                a folder of HSNet's split pickles (`trn|val/fold{0..3}.pkl`, both splits);
                '' -> every annotated image in file-name order.
  val_list_file optional, a PFENet-format val list, in the order its queries are scored;
                '' -> VOC2012 val ('pascal'), every annotated val image by name ('coco').
  Pool sizes printed after a build use num_folds (4), coco_convention ('interleaved') and
  min_class_pixels (2048).
  Synthetic generator knobs (see `synthetic.SyntheticConfig`), read from the sub-config
  `dataset_config.synthetic` when it exists, else from `dataset_config` itself:
  seed          0      benchmark seed (class definitions and every image).
  num_train     3000   images in the train split.
  num_val       1000   images in the val split.
  min_size      128    smallest image side (height and width drawn independently per image).
  max_size      192    largest image side.
  border_band   2      half-width of the 255 band around class objects (0 = none).
  max_clutter   5      at most this many non-class clutter shapes per image.
"""

import dataclasses
import os
from typing import Callable

import numpy as np

from mmnet_jax import storage

NUM_CLASSES = {'synthetic': 40, 'pascal': 20, 'coco': 80}
COCO_CONVENTIONS = ('interleaved', 'consecutive')
SPLITS = ('train', 'val')


@dataclasses.dataclass(frozen=True)
class FewShotSplit:
  """One split of one dataset, random access.

  Episodes are sampled from `class_areas` alone; `load` decodes only the images an episode uses.
  """
  name: str                                   # 'synthetic', 'pascal', 'coco'
  split: str                                  # 'train' or 'val'
  num_classes: int                            # class ids are 1..num_classes
  image_ids: tuple[str, ...]
  class_areas: tuple[dict[int, int], ...]     # per image: class id -> pixels at original size
  load: Callable[[int], tuple[np.ndarray, np.ndarray]]  # index -> (uint8 (h,w,3), uint8 (h,w))
  # index -> (image file bytes, label PNG bytes) as stored, for decoding in the tf.data graph
  # (graph_pipeline.py); None: not stored encoded (in-memory splits)
  load_encoded: Callable[[int], tuple[bytes, bytes]] | None = None
  # index -> the stored record (a serialized tf.train.Example with 'image' and 'label' bytes),
  # parsed by TensorFlow ops (no Python per image); None: not stored as such records
  load_record: Callable[[int], bytes] | None = None

  def __len__(self):
    return len(self.image_ids)


def fold_classes(name, fold, num_folds=4, coco_convention='interleaved'):
  """Training (base) and test (novel) class ids of a fold.

  Args:
    name: 'synthetic' (40 classes, fold i tests 10i+1..10i+10), 'pascal' (20, fold i tests
      5i+1..5i+5) or 'coco' (80; 'interleaved': fold i tests {4k+i+1 : k=0..19}, 'consecutive':
      20i+1..20i+20).
    fold: 0 <= fold < num_folds.
    num_folds: number of folds; must divide the class count (4 for all the standard benchmarks).
    coco_convention: 'interleaved' (PFENet use_split_coco, HSNet, BAM) or 'consecutive' (PANet);
      used only for 'coco'.

  Returns:
    (train_classes, test_classes): sorted tuples of 1-based class ids, disjoint, covering all.
  """
  if name not in NUM_CLASSES:
    raise ValueError(f'dataset name must be one of {sorted(NUM_CLASSES)}, got {name!r}')
  n = NUM_CLASSES[name]
  if num_folds < 1 or n % num_folds:
    raise ValueError(f'num_folds={num_folds} must be >= 1 and divide the {n} classes of {name!r}')
  if not (isinstance(fold, (int, np.integer)) and 0 <= fold < num_folds):
    raise ValueError(f'fold must be an int in [0, {num_folds}) for {name!r}, got {fold!r}')
  per_fold = n // num_folds
  if name == 'coco' and coco_convention not in COCO_CONVENTIONS:
    raise ValueError(f'coco_convention must be one of {COCO_CONVENTIONS}, got '
                     f'{coco_convention!r}')
  if name == 'coco' and coco_convention == 'interleaved':
    test = tuple(num_folds * k + fold + 1 for k in range(per_fold))
  else:
    test = tuple(range(per_fold * fold + 1, per_fold * (fold + 1) + 1))
  train = tuple(c for c in range(1, n + 1) if c not in test)
  return train, test


def fss_features(image_encoding, with_list_index=True):
  """The TFDS features every few-shot builder writes: image, class-index label (h, w, 1),
  image_id, optional list_index (row order of the source list), classes and class_areas."""
  import tensorflow_datasets as tfds
  features = {
      'image': tfds.features.Image(shape=(None, None, 3), encoding_format=image_encoding),
      'label': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
      'image_id': tfds.features.Text(),
      'classes': tfds.features.Sequence(np.int32),
      'class_areas': tfds.features.Sequence(np.int32),
  }
  if with_list_index:
    features['list_index'] = np.int32
  return tfds.features.FeaturesDict(features)


class _OrderedLoader:
  """index (in list order) -> what `_read` makes of the source's row; picklable."""

  def __init__(self, source, order):
    self._source = source
    self._order = order

  def __call__(self, index):
    if not 0 <= index < len(self._order):
      raise IndexError(f'image index {index} out of range [0, {len(self._order)})')
    return self._read(self._source[self._order[index]])


class TfdsLoader(_OrderedLoader):
  """index (in list order) -> (uint8 (h, w, 3) RGB image, uint8 (h, w) label); picklable."""

  def _read(self, example):
    image = np.asarray(example['image'], np.uint8)
    if image.ndim == 2 or image.shape[-1] == 1:  # grayscale JPEGs (COCO has some)
      image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
    return image, np.asarray(example['label'], np.uint8)[..., 0]


class TfdsEncodedLoader(_OrderedLoader):
  """index (in list order) -> (image bytes, label PNG bytes) as stored; picklable."""

  def _read(self, example):
    return bytes(example['image']), bytes(example['label'])


class TfdsRecordLoader:
  """index (in list order) -> the serialized tf.train.Example as stored; picklable."""

  def __init__(self, source, order):
    self._records = source.data_source   # the array_record reader under TFDS's decoding
    self._order = order

  def __call__(self, index):
    if not 0 <= index < len(self._order):
      raise IndexError(f'image index {index} out of range [0, {len(self._order)})')
    return self._records[self._order[index]]


def split_from_tfds(builder, name, split, sort_by='list_index'):
  """A built TFDS few-shot builder's `split` as a `FewShotSplit`, rows ordered by `sort_by`
  ('list_index': the source list's order (pascal.py, coco.py); 'image_id': synthetic).

  The builder's features are `fss_features`. Only the small fields are read here (an
  array_record source's read order is not its write order, hence the sort); images are decoded
  by `load` on demand. Every record is read here, so a damaged record file is reported now,
  by name (`CorruptedRecordError`), not at training time.
  """
  import tensorflow_datasets as tfds
  try:
    meta = builder.as_data_source(split=split, decoders={
        'image': tfds.decode.SkipDecoding(), 'label': tfds.decode.SkipDecoding()})
    rows = []
    for i in range(len(meta)):
      ex = meta[i]
      ident = ex['image_id']
      ident = ident.decode() if isinstance(ident, bytes) else str(ident)
      areas = {int(c): int(a) for c, a in zip(ex['classes'], ex['class_areas'])}
      key = ident if sort_by == 'image_id' else int(ex[sort_by])
      rows.append((key, ident, i, areas))
  except (RuntimeError, ValueError, OSError) as err:
    raise CorruptedRecordError(_damaged_record_file(builder, split, err)) from err
  rows.sort(key=lambda r: r[0])
  return FewShotSplit(
      name=name, split=split, num_classes=NUM_CLASSES[name],
      image_ids=tuple(r[1] for r in rows), class_areas=tuple(r[3] for r in rows),
      load=TfdsLoader(builder.as_data_source(split=split), tuple(r[2] for r in rows)),
      load_encoded=TfdsEncodedLoader(meta, tuple(r[2] for r in rows)),
      load_record=TfdsRecordLoader(meta, tuple(r[2] for r in rows)))


class CorruptedRecordError(ValueError):
  """A built dataset's record file cannot be read (truncated or overwritten on disk)."""


def _damaged_record_file(builder, split, err):
  """The message for a split whose records failed to read: the first file that does not read
  back whole (each file is read on its own to find it), and how to rebuild."""
  from array_record.python import array_record_module
  paths = [os.fspath(p) for p in builder.info.splits[split].filepaths]
  bad = None
  for path in paths:
    try:
      reader = array_record_module.ArrayRecordReader(path)
      reader.read_all()
      reader.close()
    except (RuntimeError, ValueError, OSError):
      bad = path
      break
  where = bad or f'one of {paths}'
  return (f'corrupted TFDS record file: {where} ({type(err).__name__}: {err}). Remove '
          f'{os.fspath(builder.data_path)} and open the dataset again to rebuild it.')


BUILD_SOURCE_FILE = 'build_source.json'


def record_build_source(builder, manual_dir):
  """Writes the absolute `manual_dir` a dataset was just built from next to its records."""
  import json
  path = os.path.join(os.fspath(builder.data_path), BUILD_SOURCE_FILE)
  with open(path, 'w') as f:
    json.dump({'manual_dir': os.path.realpath(manual_dir)}, f)


def check_build_source(builder, manual_dir):
  """Refuses a built dataset whose recorded source is not `manual_dir`.

  A built dataset is found by its data_dir and config alone, so without this a different
  download folder would silently get the old build. An empty `manual_dir` (open a build without
  its downloads) and builds without a record (older versions) are accepted.
  """
  import json
  path = storage.join(os.fspath(builder.data_path), BUILD_SOURCE_FILE)
  if not manual_dir or not storage.isfile(path):   # also a build copied to gs://
    return
  built_from = json.loads(storage.read_text(path)).get('manual_dir')
  if built_from != os.path.realpath(manual_dir):
    raise ValueError(
        f'{path}: this build was made from dataset.manual_dir={built_from!r}, but '
        f'dataset.manual_dir={os.path.realpath(manual_dir)!r} now. Use another '
        f'dataset.data_dir for the new downloads, set manual_dir back, or remove '
        f'{os.fspath(builder.data_path)} to rebuild.')


def build_from_downloads(make, manual_dir, check_inputs):
  """Builds a dataset from the user's downloads once, under its build lock (`build_lock`):
  concurrent first runs build once, the others wait and read it. Returns (builder,
  was_built_now).

  `make()` returns a fresh builder; `check_inputs()` runs before a build (missing files are
  named before TFDS starts). A build made from another `manual_dir` is refused.
  """
  import tensorflow_datasets as tfds
  from mmnet_jax.data import build_lock
  builder = make()

  def prepare():
    check_inputs()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False,
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
    record_build_source(builder, manual_dir)

  if build_lock.prepare_once(builder, prepare):
    return builder, True
  builder = make()   # prepared before, or meanwhile by another process: its info from disk
  check_build_source(builder, manual_dir)
  return builder, False


def open_image(path):
  """PIL.Image.open(path), with a file that is not an image reported as a ValueError naming it."""
  from PIL import Image
  try:
    return Image.open(path)
  except FileNotFoundError:
    raise
  except (OSError, SyntaxError) as err:   # PIL.UnidentifiedImageError is an OSError
    raise ValueError(f'{path}: not a readable image ({err}); download it again') from err


def decode_fully(path, im):
  """Decodes every pixel of the PIL image `im` opened from `path` (Image.open reads only the
  header, so a truncated file would otherwise be stored and fail at training time).

  Raises ValueError naming `path`.
  """
  try:
    im.load()
  except (OSError, SyntaxError, ValueError) as err:
    raise ValueError(f'{path}: the image could not be decoded ({err}); the file is damaged or '
                     'truncated: download it again') from err


def label_class_areas(label, num_classes, where='label'):
  """{class id: pixels} of classes 1..num_classes in a uint8 label (0 and 255 not counted).

  Raises ValueError for values in (num_classes, 255): a mask that is not a class-index image;
  the message starts with `where` (the mask's file).
  """
  counts = np.bincount(np.asarray(label, np.uint8).ravel(), minlength=256)
  bad = [v for v in range(num_classes + 1, 255) if counts[v]]
  if bad:
    raise ValueError(f'{where}: mask values {bad[:5]} outside 0..{num_classes} and 255 '
                     '(expected a class-index mask)')
  return {c: int(counts[c]) for c in range(1, num_classes + 1) if counts[c]}
