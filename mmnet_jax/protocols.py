"""Few-shot evaluation protocols: one table of defaults, resolved against a config.

`config.eval.protocol` names a row of `PROTOCOLS`; config fields override it (docs/protocols.md
has the long version, with the sources):

* 'pfenet' (MM-Net, PFENet): 5,000 PASCAL-5i / 20,000 COCO-20i episodes, one run, seed 321.
  Queries are the pool images in list order (cycling); the class is uniform among the fold's
  classes present in the query (any size) and the K supports are distinct images of that
  class's list (>= 2048 px), never the query. Images are resized (longer side to eval.size,
  sides floored to multiples of 8) and pasted top-left on a black canvas; logits are upsampled
  (align corners) to the ORIGINAL label padded with 255 to a square and scored there.
* 'hsnet' (HSNet and its followers): 1,000 episodes, one run, seed 0.
  PASCAL ('pair_order'): the queries are (image, class) pairs in list order, one per class of
  the fold that the image holds with >= 2048 px, cycling; supports drawn per episode.
  COCO ('class_balanced'): each episode draws the class uniformly from the fold's 20, then the
  query uniformly from that class's list, then the supports.
  Scoring ('stretch'): image and label are stretched (aspect ratio not kept) to the model's
  stretch side (its spec's `stretch_size`: HSNet's own 400 for HSNet; 401 for MM-Net and
  PFENet, whose inputs must be 8k + 1), the label by nearest neighbour, and scored there. `eval.hsnet_original_size=True` (HSNet's `--use_original_imgsize`) keeps
  the stretched input but upsamples the logits (align corners) to the original (h, w) label
  and scores there.
* 'bam' (BAM, MSANet): 1,000 episodes x 5 seeds, PFENet's sampling and original-size scoring
  for each seed; mean and standard deviation over the seeds are reported with the per-seed
  values. The seeds are BAM's own: legacy `np.random.seed(123); np.random.randint(0, 1000, 5)`
  = 510, 365, 382, 322, 988.

Where this port differs from the originals (all protocols): the random generator is numpy's
`default_rng(seed)`, not the originals' global numpy/torch/python state, so the episodes are
not the originals' episodes (same rules, same counts, other draws); K supports are always
distinct (HSNet may repeat a support in K-shot); HSNet's stretch uses our bilinear
resize without antialiasing (torchvision/PIL antialiases when shrinking); HSNet's PASCAL
pairs come from our pools (the 2048-pixel rule), not from its shipped per-fold lists.

Config fields read (all under `config.eval`):
  protocol              'pfenet' | 'hsnet' | 'bam'.
  num_episodes          episodes per seed; 0 -> the protocol's count for the dataset.
  seeds                 tuple of ints; () -> the protocol's seeds.
  seed                  legacy single seed: must stay 321 (its default) unless it equals the
                        one seed of `seeds`; set `seeds` instead.
  sampling              optional; '' -> the protocol's rule for the dataset.
  stretch_size          optional; 0 -> the model's (HSNet 400, MM-Net / PFENet 401); must
                        be a side the model takes.
  hsnet_original_size   optional; HSNet scoring at the original label size.
  episodes_file         optional; a saved episode list: evaluates exactly those episodes.
  void_label            optional; '' -> the protocol's: a scored 255 pixel is 'ignore'd
                        (PFENet, BAM; HSNet on PASCAL) or 'background' (HSNet on COCO, whose
                        reader maps every pixel that is not the class to 0; stretch only).
  empty_classes         optional; '' -> the protocol's ('zero' for all three: a fold class
                        without episodes counts as IoU 0 in PFENet test.py and HSNet
                        common/logger.py); 'drop' leaves it out of the mean.
  size, pad_fill        the pad-resize canvas of 'original' scoring (pipeline.py).
  resize                'resize' (default: PFENet's Resize, which `resized_val: True` selects in
                        PFENet's and MM-Net's configs) or 'test_resize' (PFENet's test_Resize:
                        images not larger than the canvas keep their size; the canvas logits
                        are then cropped, not resized, for scoring).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from mmnet_jax import metrics
from mmnet_jax.data import augment
from mmnet_jax.data import episodes as episodes_lib
from mmnet_jax.data import stretch_batches

# BAM test.py: setup_seed(123); np.random.randint(0, 1000, 5) with numpy's legacy generator.
BAM_SEEDS = (510, 365, 382, 322, 988)
LEGACY_SEED_DEFAULT = 321   # mmnet_jax/default_config.py eval.seed
SCORINGS = ('original', 'stretch', 'stretch_original')
# HSNet stretches to 400x400. A model that cannot take 400 (MM-Net, PFENet: 8k + 1) states
# the nearest side it takes in its spec (`stretch_size`: 401, 0.25% larger); see resolve.
HSNET_STRETCH = 400
VOID_LABELS = stretch_batches.VOID_LABELS


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One row of the protocol table.

  Attributes:
    name: the `config.eval.protocol` value.
    episodes: dataset name -> episodes per seed ('default' for any other dataset).
    seeds: the seeds of the runs (one run per seed).
    sampling: dataset name -> episode rule of `episodes.SAMPLERS` ('default' likewise).
    scoring: 'original' (PFENet pad-resize, scored on the original label padded to a square)
      or 'stretch' (HSNet: stretched to `stretch_size`, scored there).
    stretch_size: input side of 'stretch' scoring.
    void_label: dataset name -> what a 255 query pixel is when scored: 'ignore' (left out of
      intersections and unions) or 'background' (HSNet's COCO reader maps every pixel that
      is not the class to 0).
    empty_classes: a fold class without episodes in the mIoU: 'zero' (PFENet test.py, HSNet
      common/logger.py) or 'drop'.
    source: where the rule comes from.
  """

  name: str
  episodes: Mapping[str, int]
  seeds: tuple[int, ...]
  sampling: Mapping[str, str]
  scoring: str
  stretch_size: int
  void_label: Mapping[str, str]
  empty_classes: str
  source: str

  def for_dataset(self, table: Mapping[str, object], dataset: str):
    return table.get(dataset, table['default'])


PROTOCOLS = {
    'pfenet': Protocol(
        name='pfenet', episodes={'pascal': 5000, 'coco': 20000, 'default': 1000},
        seeds=(321,), sampling={'default': 'query_order'}, scoring='original',
        stretch_size=0, void_label={'default': 'ignore'}, empty_classes='zero', source='PFENet test.py / MM-Net test.py (5,000 PASCAL, 20,000 COCO)'),
    'hsnet': Protocol(
        name='hsnet', episodes={'default': 1000}, seeds=(0,),
        sampling={'coco': 'class_balanced', 'default': 'pair_order'}, scoring='stretch',
        stretch_size=HSNET_STRETCH, void_label={'coco': 'background', 'default': 'ignore'},
        empty_classes='zero', source='HSNet test.py, data/pascal.py, data/coco.py'),
    'bam': Protocol(
        name='bam', episodes={'default': 1000}, seeds=BAM_SEEDS,
        sampling={'default': 'query_order'}, scoring='original', stretch_size=0,
        void_label={'default': 'ignore'}, empty_classes='zero', source='BAM test.py (val_num=5, seeds from np.random.seed(123))'),
}


@dataclasses.dataclass(frozen=True)
class Resolved:
  """A protocol with every parameter fixed for one evaluation (what results.json records)."""

  protocol: str
  dataset: str
  num_episodes: int
  seeds: tuple[int, ...]
  sampling: str
  scoring: str
  input_size: int            # the model's input side
  episodes_file: str         # '' unless a saved list is evaluated
  pad_fill: str
  resize: str                # 'original' scoring's pad-resize: 'resize' | 'test_resize'
  void_label: str            # a scored 255 pixel: 'ignore' | 'background'
  empty_classes: str         # a fold class without episodes: 'zero' | 'drop'
  min_class_pixels: int

  def as_dict(self) -> dict:
    return dataclasses.asdict(self) | {'seeds': list(self.seeds)}


def _get(section, key, default):
  return section[key] if key in section else default


def _model_stretch(config, proto: Protocol) -> int:
  """The protocol's stretch side, or the model's nearest side to it (its spec's)."""
  from mmnet_jax.models import registry  # pylint: disable=g-import-not-at-top
  spec = registry.of(config)
  return proto.stretch_size if spec.input_size_ok(proto.stretch_size) else spec.stretch_size


def resolve(config) -> Resolved:
  """The evaluation parameters for `config` (protocol table + config overrides).

  Raises ValueError naming the config field on an unknown protocol, sampling or bad value.
  """
  ev = config.eval
  name = ev.protocol
  if name not in PROTOCOLS:
    raise ValueError(f'config.eval.protocol={name!r}; expected one of {sorted(PROTOCOLS)}')
  proto = PROTOCOLS[name]
  dataset = config.dataset.name
  num_episodes = int(_get(ev, 'num_episodes', 0) or 0)
  if num_episodes < 0:
    raise ValueError(f'config.eval.num_episodes={num_episodes}; expected >= 1, or 0 for the '
                     f'protocol default')
  num_episodes = num_episodes or int(proto.for_dataset(proto.episodes, dataset))
  seeds = tuple(int(s) for s in (_get(ev, 'seeds', ()) or ()))
  legacy = int(_get(ev, 'seed', LEGACY_SEED_DEFAULT))
  if legacy != LEGACY_SEED_DEFAULT and seeds != (legacy,):
    raise ValueError(f'config.eval.seed={legacy} is no longer read by the evaluator; set '
                     f'config.eval.seeds=({legacy},) (the protocol gives the seeds otherwise)')
  seeds = seeds or proto.seeds
  sampling = _get(ev, 'sampling', '') or proto.for_dataset(proto.sampling, dataset)
  if sampling not in episodes_lib.SAMPLERS:
    raise ValueError(f'config.eval.sampling={sampling!r}; expected one of '
                     f'{sorted(episodes_lib.SAMPLERS)}')
  scoring = proto.scoring
  input_size = int(ev.size)
  if scoring == 'stretch':
    input_size = int(_get(ev, 'stretch_size', 0) or 0) or _model_stretch(config, proto)
    if _get(ev, 'hsnet_original_size', False):
      scoring = 'stretch_original'
  elif _get(ev, 'hsnet_original_size', False):
    raise ValueError(f'config.eval.hsnet_original_size=True needs eval.protocol="hsnet", '
                     f'got {name!r}')
  resize = str(_get(ev, 'resize', '') or 'resize')
  if resize not in augment.EVAL_RESIZES:
    raise ValueError(f'config.eval.resize={resize!r}; expected one of '
                     f'{list(augment.EVAL_RESIZES)}')
  void_label = str(_get(ev, 'void_label', '') or proto.for_dataset(proto.void_label, dataset))
  if void_label not in VOID_LABELS:
    raise ValueError(f'config.eval.void_label={void_label!r}; expected \'\' (the '
                     f'protocol\'s) or one of {list(VOID_LABELS)}')
  empty_classes = str(_get(ev, 'empty_classes', '') or proto.empty_classes)
  if empty_classes not in metrics.EMPTY_CLASS_RULES:
    raise ValueError(f'config.eval.empty_classes={empty_classes!r}; expected \'\' (the '
                     f'protocol\'s) or one of {list(metrics.EMPTY_CLASS_RULES)}')
  if void_label == 'background' and scoring == 'original':
    raise ValueError("config.eval.void_label='background' is HSNet's COCO rule and needs its "
                     "stretch scoring (eval.protocol='hsnet'): the 'original' square pads "
                     "with 255 too")
  episodes_file = str(_get(ev, 'episodes_file', '') or '')
  if episodes_file:
    seeds = seeds[:1]   # one saved list is one run
  return Resolved(protocol=name, dataset=dataset, num_episodes=num_episodes, seeds=seeds,
                  sampling=sampling, scoring=scoring, input_size=input_size,
                  episodes_file=episodes_file, pad_fill=str(_get(ev, 'pad_fill', 'black')),
                  resize=resize if scoring == 'original' else 'stretch',
                  void_label=void_label, empty_classes=empty_classes,
                  min_class_pixels=int(config.dataset.min_class_pixels))
