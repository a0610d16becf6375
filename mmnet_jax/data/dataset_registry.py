"""Datasets by name (`config.dataset.name`): `open_split(dataset_config, split)` builds or finds
one split as a `datasets.FewShotSplit` (fields read: the `datasets` module docstring).

The builders (synthetic_tfds, pascal, coco) import `datasets` for the interface they share; this
registry imports them (when a split is opened: TFDS and pycocotools load slowly), so
nothing imports back into it.
"""

from __future__ import annotations

import dataclasses
import os

from mmnet_jax.data import datasets
from mmnet_jax.data import synthetic


def _field(cfg, key, default):
  value = getattr(cfg, key, default)
  return default if value is None else value


def synthetic_config_from(dataset_config):
  """The `synthetic.SyntheticConfig` described by a dataset config's generator fields."""
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


def _open_downloaded(module, dataset_config, split):
  """`module.open_split` of a dataset built from the user's downloads (pascal, coco)."""
  return module.open_split(
      manual_dir=_field(dataset_config, 'manual_dir', ''), split=split,
      data_dir=_field(dataset_config, 'data_dir', None) or default_data_dir(),
      list_file=_field(dataset_config, 'list_file', ''),
      val_list_file=_field(dataset_config, 'val_list_file', ''),
      pool_options=_pool_options(dataset_config))


def _open_pascal(dataset_config, split):
  from mmnet_jax.data import pascal
  return _open_downloaded(pascal, dataset_config, split)


def _open_coco(dataset_config, split):
  from mmnet_jax.data import coco
  return _open_downloaded(coco, dataset_config, split)


def _pool_options(dataset_config):
  return dict(num_folds=int(_field(dataset_config, 'num_folds', 4)),
              coco_convention=_field(dataset_config, 'coco_convention', 'interleaved'),
              min_class_pixels=int(_field(dataset_config, 'min_class_pixels', 2048)))


_REGISTRY = {
    'synthetic': _open_synthetic,
    'pascal': _open_pascal,
    'coco': _open_coco,
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
  if split not in datasets.SPLITS:
    raise ValueError(f'split must be one of {datasets.SPLITS}, got {split!r}')
  return _REGISTRY[name](dataset_config, split)
