"""TFDS builder for the synthetic few-shot benchmark, and its `FewShotSplit` reader.

The dataset is written as array_record so `builder.as_data_source(split)` gives random access
(numpy decoding, no tf graph per example). Each builder config is one setting of the generator
knobs; its name encodes them, so a data_dir holds every setting built so far side by side:
`<data_dir>/synthetic_fss/<config name>/1.0.0/`.

Features: image (uint8 png (h, w, 3)), label (uint8 png (h, w, 1); 0 background, 1..40, 255
band), image_id ('train_000042'), classes (int32 ids present, ascending), class_areas (int32
pixel counts aligned with classes; 255 not counted).
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from mmnet_jax.data import build_lock
from mmnet_jax.data import datasets
from mmnet_jax.data import synthetic


def config_name(gen):
  """Builder config name that encodes every generator knob (a directory name)."""
  return (f's{gen.seed}_n{gen.num_train}-{gen.num_val}_sz{gen.min_size}-{gen.max_size}'
          f'_b{gen.border_band}_c{gen.max_clutter}')


@dataclasses.dataclass(eq=False)
class SyntheticFssConfig(tfds.core.BuilderConfig):
  """A BuilderConfig carrying the generator knobs."""
  generator: synthetic.SyntheticConfig = synthetic.SyntheticConfig()


def builder_config(gen):
  """The `SyntheticFssConfig` for generator knobs `gen` (a `synthetic.SyntheticConfig`)."""
  return SyntheticFssConfig(name=config_name(gen), generator=gen,
                            description=f'synthetic few-shot benchmark, {gen}')


def image_id(split, index):
  """Stable id of image `index` of `split`; zero padded so sorting ids restores index order."""
  return f'{split}_{index:06d}'


class SyntheticFss(tfds.core.GeneratorBasedBuilder):
  """Procedural few-shot segmentation benchmark (40 classes, 4 folds of 10)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [builder_config(synthetic.SyntheticConfig())]

  def _info(self):
    return self.dataset_info_from_configs(
        features=datasets.fss_features('png', with_list_index=False),
        supervised_keys=None,
        homepage='https://github.com/wu-zhonghua/MM-Net',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: everything is generated
    return {split: self._generate_examples(split) for split in synthetic.SPLITS}

  def _generate_examples(self, split):
    gen = self.builder_config.generator
    for index in range(gen.num_examples(split)):
      image, label = synthetic.render_example(gen, split, index)
      areas = synthetic.class_areas(label)
      key = image_id(split, index)
      yield key, {
          'image': image,
          'label': label[..., None],
          'image_id': key,
          'classes': np.asarray(sorted(areas), np.int32),
          'class_areas': np.asarray([areas[c] for c in sorted(areas)], np.int32),
      }


def make_builder(gen, data_dir):
  """The array_record builder for generator knobs `gen` under `data_dir` (not built yet)."""
  name = config_name(gen)
  # TFDS refuses a custom config named like a registered one; pass the registered one by name.
  config = name if name in SyntheticFss.builder_configs else builder_config(gen)
  return SyntheticFss(config=config, data_dir=data_dir, file_format='array_record')


def build(gen, data_dir):
  """Builds the dataset (no-op if present); offline and deterministic. Returns the builder."""
  builder = make_builder(gen, data_dir)
  if build_lock.prepare_once(builder, lambda: builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))):
    return builder
  # Prepared before, or by another process while this one waited: read its info from disk.
  return make_builder(gen, data_dir)


def open_split(gen, split, data_dir):
  """Builds the dataset on first use and returns `split` as a `datasets.FewShotSplit`.

  Rows are ordered by image_id (an array_record source's index order is not its write order),
  so row i is `synthetic.render_example(gen, split, i)`.
  """
  return datasets.split_from_tfds(build(gen, data_dir), 'synthetic', split, sort_by='image_id')
