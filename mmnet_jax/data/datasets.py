"""The dataset interface (`FewShotSplit`), fold class lists and the dataset registry.

`open_split(dataset_config, split)` reads these fields of `dataset_config` (a ConfigDict or any
object with attributes; missing optional fields take the defaults shown):

  name          'synthetic' ('pascal' and 'coco' are not implemented yet).
  data_dir      TFDS data directory; None or '' -> ~/tensorflow_datasets (or $TFDS_DATA_DIR).
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

# ImageNet statistics on the 0-255 scale; every normalisation in the project uses these.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

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


def binarize_label(label, class_id):
  """Episode label: `class_id` -> 1, other classes -> 0, 255 kept. uint8 in, uint8 out."""
  out = (label == class_id).astype(np.uint8)
  out[label == 255] = 255
  return out


def normalize_image(image):
  """uint8/float RGB (..., 3) on 0-255 -> float32 normalised with IMAGENET_MEAN/STD."""
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  std = np.asarray(IMAGENET_STD, np.float32)
  return (np.asarray(image, np.float32) - mean) / std


def denormalize_image(image):
  """Inverse of `normalize_image`: float32 on 0-255."""
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  std = np.asarray(IMAGENET_STD, np.float32)
  return np.asarray(image, np.float32) * std + mean


def _field(cfg, key, default):
  value = getattr(cfg, key, default)
  return default if value is None else value


def synthetic_config_from(dataset_config):
  """The `synthetic.SyntheticConfig` described by a dataset config's generator fields."""
  from mmnet_jax.data import synthetic
  defaults = synthetic.SyntheticConfig()
  dataset_config = getattr(dataset_config, 'synthetic', None) or dataset_config
  kwargs = {f.name: int(_field(dataset_config, f.name, getattr(defaults, f.name)))
            for f in dataclasses.fields(synthetic.SyntheticConfig)}
  return synthetic.SyntheticConfig(**kwargs)


def default_data_dir():
  """TFDS's default data directory (~/tensorflow_datasets unless TFDS_DATA_DIR is set)."""
  return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def _open_synthetic(dataset_config, split):
  from mmnet_jax.data import synthetic_tfds
  data_dir = _field(dataset_config, 'data_dir', None) or default_data_dir()
  return synthetic_tfds.open_split(synthetic_config_from(dataset_config), split, data_dir)


def _not_implemented(name):
  def opener(dataset_config, split):
    del dataset_config, split
    raise NotImplementedError(
        f'dataset {name!r} is not implemented yet (the real-data loader is a separate issue: '
        f'{name} TFDS builder with class-index masks); use name="synthetic"')
  return opener


_REGISTRY = {
    'synthetic': _open_synthetic,
    'pascal': _not_implemented('pascal'),
    'coco': _not_implemented('coco'),
}


def open_split(dataset_config, split):
  """Builds (first use) or finds the dataset and returns one split as a `FewShotSplit`.

  Args:
    dataset_config: object with a `name` field and the dataset's fields (module docstring).
    split: 'train' or 'val'.
  """
  name = getattr(dataset_config, 'name', None)
  if name not in _REGISTRY:
    raise ValueError(f'dataset_config.name must be one of {sorted(_REGISTRY)}, got {name!r}')
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  return _REGISTRY[name](dataset_config, split)
