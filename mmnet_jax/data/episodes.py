"""Few-shot episode rules (PFENet, util/dataset.py): pools, query class, supports.

Everything here is pure numpy and seeded explicitly; nothing touches global RNG state.
Episodes are sampled from `FewShotSplit.class_areas` alone, so no image is decoded here.

Rules (see docs/architecture.md and the reference notes, mmnet.md section 4):
* Pool: an image enters if at least one class of the class list covers >= `min_class_pixels`
  (2 * 32 * 32 = 2048) pixels at original size. The per-class support lists use the same rule.
* `filter_intersection=False` (PFENet): training keeps images that also contain classes
  outside the list; `binarise` turns those pixels into background.
  `filter_intersection=True` (BAM, `make_dataset(..., filter_intersection=True)` for meta-training):
  an image containing ANY pixel of a class outside the list is dropped from the pool and from
  every support list, whatever that class's size. BAM applies it to training only.
* Query class: uniform among the list's classes present in the query label with NO size filter
  (PFENet `__getitem__`), so a class may be chosen whose own support list excludes this image.
* Supports: `shots` distinct images from that class's list, never the query image.
* Test episodes (`sample_eval_episodes`, docs/protocols.md): 'query_order' (PFENet, BAM: pool
  images in list order, class and supports random), 'pair_order' (HSNet PASCAL: (image, class)
  pairs in list order), 'class_balanced' (HSNet COCO: class first, then query and supports).
* Episode files (`save_episodes` / `load_episodes`) hold query id, class and support ids, so an
  evaluation can be repeated exactly; loading checks them against the split.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from mmnet_jax import conventions
from mmnet_jax import storage
from mmnet_jax.data import datasets

# OSLSM/PFENet small-object rule: a class counts if it survives a 1/32 downsample with > 2 px.
DEFAULT_MIN_CLASS_PIXELS = 2 * 32 * 32


@dataclasses.dataclass(frozen=True)
class Pool:
  """The episode pool of one split for one class list.

  Attributes:
    split: the `FewShotSplit` the indices refer to.
    classes: the class list (fold's base classes for training, novel for testing), sorted.
    indices: (P,) int64 split indices of the pool images, in split (list) order.
    query_classes: per pool image, the sorted classes of `classes` present in its label at
      any size (the query-class candidates).
    support_lists: class id -> (n_c,) int64 sorted split indices of the images where the class
      covers >= min_class_pixels (after the intersection filter).
    min_class_pixels: the size rule used.
    filter_intersection: whether BAM's filter was applied.
  """

  split: Any
  classes: tuple[int, ...]
  indices: np.ndarray
  query_classes: tuple[tuple[int, ...], ...]
  support_lists: Mapping[int, np.ndarray]
  min_class_pixels: int
  filter_intersection: bool

  def __len__(self) -> int:
    return len(self.indices)


@dataclasses.dataclass(frozen=True)
class Episode:
  """One episode: split indices of the query and its supports, and the 1-based class id."""

  query_index: int
  class_id: int
  support_indices: tuple[int, ...]


def build_pool(split, classes: Sequence[int], min_class_pixels: int = DEFAULT_MIN_CLASS_PIXELS,
               filter_intersection: bool = False) -> Pool:
  """Builds the PFENet episode pool of `split` for the class list `classes`.

  Args:
    split: a `FewShotSplit` (only `class_areas`, `image_ids`, `num_classes` are read).
    classes: the fold's class list (1-based ids).
    min_class_pixels: minimum pixels at original size for an image to count for a class.
    filter_intersection: BAM's rule; drop images holding any class outside `classes`.

  Returns:
    The `Pool`. Raises ValueError if `classes` is empty or out of range, or if no image
    qualifies.
  """
  classes = tuple(sorted(int(c) for c in classes))
  if not classes:
    raise ValueError('build_pool: `classes` is empty')
  bad = [c for c in classes if not 1 <= c <= split.num_classes]
  if bad:
    raise ValueError(f'build_pool: classes {bad} are outside 1..{split.num_classes} '
                     f'of split {split.name}/{split.split}')
  if len(split.class_areas) != len(split.image_ids):
    raise ValueError(f'split {split.name}/{split.split}: {len(split.class_areas)} class_areas '
                     f'for {len(split.image_ids)} image_ids')
  class_set = frozenset(classes)
  indices, query_classes = [], []
  support_lists = {c: [] for c in classes}
  for index, areas in enumerate(split.class_areas):
    present = {int(c) for c, a in areas.items() if a > 0 and int(c) not in (0, conventions.IGNORE_LABEL)}
    if filter_intersection and not present <= class_set:
      continue
    large = [c for c in sorted(present & class_set) if areas[c] >= min_class_pixels]
    if not large:
      continue
    indices.append(index)
    query_classes.append(tuple(sorted(present & class_set)))
    for c in large:
      support_lists[c].append(index)
  if not indices:
    raise ValueError(f'build_pool: no image of split {split.name}/{split.split} has a class '
                     f'of {classes} with >= {min_class_pixels} pixels')
  return Pool(split=split, classes=classes, indices=np.asarray(indices, np.int64),
              query_classes=tuple(query_classes),
              support_lists={c: np.asarray(v, np.int64) for c, v in support_lists.items()},
              min_class_pixels=int(min_class_pixels),
              filter_intersection=bool(filter_intersection))


def check_pool(pool: Pool, shots: int) -> None:
  """Raises ValueError if a class that can be drawn for a query has < shots + 1 supports.

  A query of class c may itself be in c's support list, so c needs shots + 1 images to
  always find `shots` distinct others (PFENet would loop forever instead).
  """
  drawable = sorted({c for qc in pool.query_classes for c in qc})
  short = {c: len(pool.support_lists[c]) for c in drawable
           if len(pool.support_lists[c]) < shots + 1}
  if short:
    raise ValueError(f'{shots}-shot episodes need >= {shots + 1} support images per class '
                     f'(>= {pool.min_class_pixels} px); split {pool.split.name}/'
                     f'{pool.split.split} has too few for class: images {short}')


def _is_member(sorted_list: np.ndarray, value: int) -> bool:
  pos = np.searchsorted(sorted_list, value)
  return bool(pos < len(sorted_list) and sorted_list[pos] == value)


def draw_supports(pool: Pool, class_id: int, query_index: int, shots: int,
                  rng: np.random.Generator) -> tuple[int, ...]:
  """`shots` distinct split indices from class `class_id`'s support list, never `query_index`.

  Uniform without replacement, by PFENet's rejection loop (O(shots) draws, no copy of a long
  class list). Raises ValueError if the list has fewer than `shots` images besides the query.
  """
  if shots < 1:
    raise ValueError(f'shots must be >= 1, got {shots}')
  support_list = pool.support_lists[class_id]
  available = len(support_list) - _is_member(support_list, query_index)
  if available < shots:
    raise ValueError(
        f'class {class_id} of split {pool.split.name}/{pool.split.split} has {available} '
        f'support images besides query {pool.split.image_ids[query_index]!r}; '
        f'{shots}-shot needs {shots} (class lists need >= shots + 1 images)')
  chosen: list[int] = []
  while len(chosen) < shots:
    index = int(support_list[rng.integers(len(support_list))])
    if index != query_index and index not in chosen:
      chosen.append(index)
  return tuple(chosen)


def sample_episode(pool: Pool, query_pos: int, shots: int, rng: np.random.Generator) -> Episode:
  """Samples the class and supports of the episode whose query is pool image `query_pos`.

  The class is uniform among `pool.query_classes[query_pos]`; the supports are `shots`
  distinct images of that class's list, never the query (`draw_supports`).
  """
  if shots < 1:
    raise ValueError(f'shots must be >= 1, got {shots}')
  query_index = int(pool.indices[query_pos])
  candidates = pool.query_classes[query_pos]
  class_id = int(candidates[rng.integers(len(candidates))])
  return Episode(query_index=query_index, class_id=class_id,
                 support_indices=draw_supports(pool, class_id, query_index, shots, rng))


@functools.lru_cache(maxsize=8)
def _epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
  perm = np.random.default_rng([seed, epoch]).permutation(size)
  perm.flags.writeable = False
  return perm


def train_position(pool_size: int, seed: int, step: int, row: int, batch_size: int) -> int:
  """Pool position of the query for global step `step`, global batch row `row`.

  One pass over the pool per epoch in a shuffled order (PFENet's shuffled DataLoader, without
  its drop_last): the k-th episode overall, k = step * batch_size + row, is position k mod P
  of the permutation of epoch k // P, drawn from default_rng([seed, epoch]).
  """
  if not 0 <= row < batch_size:
    raise ValueError(f'row {row} outside batch of {batch_size}')
  k = step * batch_size + row
  epoch, pos = divmod(k, pool_size)
  return int(_epoch_permutation(int(seed), int(epoch), int(pool_size))[pos])


def train_episode(pool: Pool, seed: int, step: int, row: int, batch_size: int,
                  shots: int) -> Episode:
  """The training episode of global step `step`, global batch row `row`.

  A pure function of its arguments: resuming at step k reproduces the uninterrupted stream.
  The class and supports come from default_rng([seed, step, row]).
  """
  query_pos = train_position(len(pool), seed, step, row, batch_size)
  rng = np.random.default_rng([int(seed), int(step), int(row)])
  return sample_episode(pool, query_pos, shots, rng)


def eval_episodes(pool: Pool, shots: int, num_episodes: int, seed: int) -> list[Episode]:
  """PFENet test episodes: queries in pool (list) order, cycling; class and supports drawn
  from one rng, default_rng(seed), in episode order."""
  rng = np.random.default_rng(int(seed))
  return [sample_episode(pool, i % len(pool), shots, rng) for i in range(num_episodes)]


def query_class_pairs(pool: Pool) -> list[tuple[int, int]]:
  """HSNet's PASCAL query list: (split index, class) for each pool image in list order and
  each class of its own support lists (>= min_class_pixels), classes ascending.

  An image with two large novel classes is two queries, one per class; a class present below
  the size rule is never a query class (unlike PFENet's query-class rule).
  """
  pairs = []
  for index in pool.indices.tolist():
    for c in pool.classes:
      if _is_member(pool.support_lists[c], index):
        pairs.append((int(index), int(c)))
  return pairs


def pair_order_episodes(pool: Pool, shots: int, num_episodes: int, seed: int) -> list[Episode]:
  """HSNet PASCAL test episodes: episode i uses pair i mod P of `query_class_pairs` (list
  order, cycling); supports from default_rng(seed), in episode order."""
  pairs = query_class_pairs(pool)
  rng = np.random.default_rng(int(seed))
  out = []
  for i in range(num_episodes):
    query_index, class_id = pairs[i % len(pairs)]
    out.append(Episode(query_index=query_index, class_id=class_id,
                       support_indices=draw_supports(pool, class_id, query_index, shots, rng)))
  return out


def class_balanced_episodes(pool: Pool, shots: int, num_episodes: int,
                            seed: int) -> list[Episode]:
  """HSNet COCO test episodes: per episode the class is uniform over the pool's classes, the
  query uniform over that class's support list, the supports `shots` other images of it.

  One rng, default_rng(seed), draws (class, query, supports) in episode order. Classes whose
  list has fewer than shots + 1 images cannot make an episode and are left out of the draw
  (HSNet would loop forever); a ValueError is raised if no class is left.
  """
  drawable = [c for c in pool.classes if len(pool.support_lists[c]) >= shots + 1]
  if not drawable:
    raise ValueError(f'no class of {pool.classes} in split {pool.split.name}/'
                     f'{pool.split.split} has the {shots + 1} images a {shots}-shot '
                     f'episode needs')
  rng = np.random.default_rng(int(seed))
  out = []
  for _ in range(num_episodes):
    class_id = int(drawable[rng.integers(len(drawable))])
    support_list = pool.support_lists[class_id]
    query_index = int(support_list[rng.integers(len(support_list))])
    out.append(Episode(query_index=query_index, class_id=class_id,
                       support_indices=draw_supports(pool, class_id, query_index, shots, rng)))
  return out


SAMPLERS = {
    'query_order': eval_episodes,
    'pair_order': pair_order_episodes,
    'class_balanced': class_balanced_episodes,
}


def sample_eval_episodes(pool: Pool, sampling: str, shots: int, num_episodes: int,
                         seed: int) -> list[Episode]:
  """Test episodes by one of the rules of `SAMPLERS` ('query_order': PFENet/BAM,
  'pair_order': HSNet PASCAL, 'class_balanced': HSNet COCO)."""
  if sampling not in SAMPLERS:
    raise ValueError(f'unknown episode sampling {sampling!r}; expected one of {sorted(SAMPLERS)}')
  if num_episodes < 1:
    raise ValueError(f'num_episodes must be >= 1, got {num_episodes}')
  return SAMPLERS[sampling](pool, shots, num_episodes, seed)


def binarise(label: np.ndarray, class_id: int) -> np.ndarray:
  """uint8 label: `class_id` -> 1, 255 stays 255, every other value -> 0."""
  label = np.asarray(label)
  out = (label == class_id).astype(np.uint8)
  out[label == conventions.IGNORE_LABEL] = conventions.IGNORE_LABEL
  return out


def save_episodes(episodes: Sequence[Episode], path: str, split,
                  meta: Mapping[str, Any] | None = None) -> None:
  """Writes episodes as JSON (ids and indices), so an evaluation can be repeated exactly.

  `split` (the split the indices refer to) supplies the image ids; `meta` (JSON-able)
  records how they were drawn (protocol, fold, shots, seed, ...).
  """
  ids = split.image_ids
  record = {
      'format': 'mmnet_jax.episodes/1',
      'dataset': split.name, 'split': split.split,
      'meta': dict(meta or {}),
      'episodes': [{
          'query_id': ids[e.query_index], 'query_index': int(e.query_index),
          'class_id': int(e.class_id),
          'support_ids': [ids[i] for i in e.support_indices],
          'support_indices': [int(i) for i in e.support_indices],
      } for e in episodes],
  }
  if storage.is_remote(path):   # one object upload: atomic on GCS, no temporary object
    storage.write_text(path, json.dumps(record))
    return
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f)
  os.replace(tmp, path)


def load_episodes(path: str, split, shots: int | None = None,
                  classes: Sequence[int] | None = None) -> tuple[list[Episode], dict]:
  """Reads a `save_episodes` file and resolves it against `split` by image id.

  Returns (episodes, meta). Indices are re-derived from the ids, so the file stays valid if
  the split was rebuilt in another order. With `shots` every episode must have that many
  supports; with `classes` every class must be one of them. Raises ValueError naming the file
  and the offending dataset, split, episode, id or field.
  """
  try:
    record = json.loads(storage.read_text(path))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not an episodes JSON file ({e})') from e
  if not isinstance(record, dict) or record.get('format') != 'mmnet_jax.episodes/1':
    raise ValueError(f'{path}: missing format "mmnet_jax.episodes/1"')
  for field, want in (('dataset', split.name), ('split', split.split)):
    if record.get(field, want) != want:
      raise ValueError(f'{path}: episodes of {field} {record.get(field)!r}, but the evaluated '
                       f'{field} is {want!r}')
  items = record.get('episodes')
  if not isinstance(items, list) or not items:
    raise ValueError(f'{path}: no episodes')
  lookup = {image_id: i for i, image_id in enumerate(split.image_ids)}
  class_set = None if classes is None else {int(c) for c in classes}
  episodes = []
  for n, e in enumerate(items):
    try:
      query_id, class_id, support_ids = e['query_id'], int(e['class_id']), list(e['support_ids'])
    except (KeyError, TypeError, ValueError) as err:
      raise ValueError(f'{path}: episode {n} lacks query_id/class_id/support_ids') from err
    for image_id in [query_id, *support_ids]:
      if image_id not in lookup:
        raise ValueError(f'{path}: episode {n}: image id {image_id!r} is not in split '
                         f'{split.name}/{split.split}')
    if shots is not None and len(support_ids) != shots:
      raise ValueError(f'{path}: episode {n} has {len(support_ids)} supports; the evaluation '
                       f'is {shots}-shot')
    if class_set is not None and class_id not in class_set:
      raise ValueError(f'{path}: episode {n}: class {class_id} is not one of the evaluated '
                       f'classes {sorted(class_set)}')
    if query_id in support_ids:
      raise ValueError(f'{path}: episode {n}: query {query_id!r} is also a support')
    for image_id in [query_id, *support_ids]:
      if split.class_areas[lookup[image_id]].get(class_id, 0) <= 0:
        raise ValueError(f'{path}: episode {n}: class {class_id} is absent from image '
                         f'{image_id!r}')
    episodes.append(Episode(query_index=lookup[query_id], class_id=class_id,
                            support_indices=tuple(lookup[s] for s in support_ids)))
  return episodes, dict(record.get('meta', {}))


def pool_sizes(split, name, num_folds=4, coco_convention='interleaved', min_class_pixels=2048):
  """{fold: number of pool images} of `split` (train: base classes, val: novel classes).

  Uses `build_pool` (PFENet rule, no intersection filter); a fold whose pool is empty
  gets 0.
  """
  sizes = {}
  for fold in range(num_folds):
    train, test = datasets.fold_classes(name, fold, num_folds, coco_convention)
    try:
      pool = build_pool(split, train if split.split == 'train' else test, min_class_pixels)
      sizes[fold] = len(pool)
    except ValueError:
      sizes[fold] = 0
  return sizes


def print_pool_sizes(split, name, **pool_options):
  """Prints one line with the per-fold pool sizes of `split` (shown after a dataset build)."""
  sizes = pool_sizes(split, name, **pool_options)
  opts = ', '.join(f'{k}={v}' for k, v in pool_options.items())
  print(f'{name}/{split.split}: {len(split)} images; pool sizes per fold '
        f'{[sizes[f] for f in sorted(sizes)]} ({opts})', flush=True)
