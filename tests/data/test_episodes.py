"""Episode rules: pool, query class, supports, determinism, binarisation, episode files."""

import collections
import json

import numpy as np
import pytest

from mmnet_jax.data import episodes as ep

try:
  from mmnet_jax.data.datasets import FewShotSplit
except ImportError:  # the dataset module lands separately; same fields as the contract
  import dataclasses
  from typing import Callable

  @dataclasses.dataclass(frozen=True)
  class FewShotSplit:
    name: str
    split: str
    num_classes: int
    image_ids: tuple
    class_areas: tuple
    load: Callable


def make_split(samples, num_classes=10, name='toy', split='train'):
  """An in-memory FewShotSplit over [(image, label), ...]; class_areas from the labels."""
  samples = [(np.asarray(i, np.uint8), np.asarray(l, np.uint8)) for i, l in samples]
  areas = []
  for _, label in samples:
    values, counts = np.unique(label, return_counts=True)
    areas.append({int(v): int(c) for v, c in zip(values, counts) if v not in (0, 255)})
  return FewShotSplit(name=name, split=split, num_classes=num_classes,
                      image_ids=tuple(f'img{i:03d}' for i in range(len(samples))),
                      class_areas=tuple(areas), load=lambda i: samples[i])


def areas_split(class_areas, num_classes=10):
  """A FewShotSplit that only has class areas (episodes never decode images)."""
  def load(i):
    raise AssertionError('episode sampling must not decode images')
  return FewShotSplit(name='toy', split='train', num_classes=num_classes,
                      image_ids=tuple(f'img{i:03d}' for i in range(len(class_areas))),
                      class_areas=tuple(class_areas), load=load)


# index: areas                         PFENet pool?  lists
RULE_AREAS = [
    {1: 2048},                         # 0 yes        1
    {1: 2047},                         # 1 no (small)
    {1: 100, 2: 3000},                 # 2 yes        2 (class 1 drawable, not in list 1)
    {7: 50000},                        # 3 no (class outside the list)
    {1: 5000, 7: 10},                  # 4 yes        1 (dropped by filter_intersection)
    {},                                # 5 no (background only)
    {1: 4000, 2: 2048},                # 6 yes        1, 2
]


def test_pool_pixel_rule_and_lists():
  pool = ep.build_pool(areas_split(RULE_AREAS), [1, 2, 3])
  assert pool.indices.tolist() == [0, 2, 4, 6]
  assert pool.query_classes == ((1,), (1, 2), (1,), (1, 2))
  assert pool.support_lists[1].tolist() == [0, 4, 6]
  assert pool.support_lists[2].tolist() == [2, 6]
  assert pool.support_lists[3].tolist() == []


def test_pool_filter_intersection_drops_images_with_outside_classes():
  pool = ep.build_pool(areas_split(RULE_AREAS), [1, 2, 3], filter_intersection=True)
  assert pool.indices.tolist() == [0, 2, 6]
  assert pool.support_lists[1].tolist() == [0, 6]


def test_pool_min_pixels_is_configurable_and_errors_are_clear():
  pool = ep.build_pool(areas_split(RULE_AREAS), [1], min_class_pixels=2047)
  assert 1 in pool.indices.tolist()
  with pytest.raises(ValueError, match='outside 1..10'):
    ep.build_pool(areas_split(RULE_AREAS), [0, 1])
  with pytest.raises(ValueError, match='no image'):
    ep.build_pool(areas_split(RULE_AREAS), [5])


def random_areas(n, num_classes, seed):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    classes = rng.choice(num_classes, size=rng.integers(1, 4), replace=False) + 1
    out.append({int(c): int(rng.choice([500, 3000, 9000])) for c in classes})
  return out


def test_sample_episode_rules():
  split = areas_split(random_areas(300, 10, 0))
  classes = [1, 2, 3, 4, 5, 6]
  pool = ep.build_pool(split, classes)
  rng = np.random.default_rng(0)
  drawn = collections.Counter()
  for pos in range(len(pool)):
    for _ in range(3):
      e = ep.sample_episode(pool, pos, 5, rng)
      assert e.query_index == pool.indices[pos]
      assert e.class_id in classes
      assert split.class_areas[e.query_index].get(e.class_id, 0) > 0
      assert e.query_index not in e.support_indices
      assert len(set(e.support_indices)) == 5
      for s in e.support_indices:
        assert split.class_areas[s][e.class_id] >= ep.DEFAULT_MIN_CLASS_PIXELS
      drawn[(pos, e.class_id)] += 1
  # A small (< 2048 px) class of a pool image can still be the query class (no size filter).
  assert any(split.class_areas[pool.indices[p]][c] < 2048 for p, c in drawn)


def test_query_class_is_uniform_over_candidates():
  pool = ep.build_pool(areas_split(RULE_AREAS), [1, 2])
  rng = np.random.default_rng(1)
  counts = collections.Counter(ep.sample_episode(pool, 1, 1, rng).class_id for _ in range(2000))
  assert set(counts) == {1, 2}
  assert abs(counts[1] / 2000 - 0.5) < 0.05


def test_too_few_supports_raise_clear_errors():
  pool = ep.build_pool(areas_split(RULE_AREAS), [1, 2])
  # Class 2 has images {2, 6}: with query 6, only one other image.
  with pytest.raises(ValueError, match=r'class 2 .* 1 support images besides query'):
    for seed in range(50):
      ep.sample_episode(pool, 3, 2, np.random.default_rng(seed))
  with pytest.raises(ValueError, match=r'too few for class.*2: 2'):
    ep.check_pool(pool, 2)
  ep.check_pool(pool, 1)


def test_train_episodes_are_deterministic_and_cover_each_epoch():
  pool = ep.build_pool(areas_split(random_areas(37, 10, 2)), [1, 2, 3, 4, 5, 6])
  batch = 4
  args = dict(pool=pool, seed=7, batch_size=batch, shots=2)
  assert ep.train_episode(step=5, row=1, **args) == ep.train_episode(step=5, row=1, **args)
  assert ep.train_episode(step=5, row=1, **args) != ep.train_episode(
      pool=pool, seed=8, step=5, row=1, batch_size=batch, shots=2)
  # Epoch 0 = episodes k in [0, P): every pool image is the query exactly once.
  p = len(pool)
  firsts = [ep.train_position(p, 7, k // batch, k % batch, batch) for k in range(p)]
  assert sorted(firsts) == list(range(p))
  seconds = [ep.train_position(p, 7, k // batch, k % batch, batch) for k in range(p, 2 * p)]
  assert sorted(seconds) == list(range(p)) and seconds != firsts


def test_eval_episodes_list_order_and_seed():
  pool = ep.build_pool(areas_split(random_areas(40, 10, 3)), [1, 2, 3, 4, 5])
  episodes = ep.eval_episodes(pool, 1, len(pool) + 5, seed=321)
  queries = [e.query_index for e in episodes]
  assert queries == pool.indices.tolist() + pool.indices[:5].tolist()
  assert episodes == ep.eval_episodes(pool, 1, len(pool) + 5, seed=321)
  assert episodes != ep.eval_episodes(pool, 1, len(pool) + 5, seed=0)


def test_binarise():
  label = np.array([[0, 3, 255], [5, 3, 1]], np.uint8)
  out = ep.binarise(label, 3)
  np.testing.assert_array_equal(out, [[0, 1, 255], [0, 1, 0]])
  assert out.dtype == np.uint8


def test_episode_file_round_trip_and_errors(tmp_path):
  split = areas_split(random_areas(40, 10, 4))
  pool = ep.build_pool(split, [1, 2, 3, 4, 5])
  episodes = ep.eval_episodes(pool, 2, 25, seed=1)
  path = str(tmp_path / 'episodes.json')
  ep.save_episodes(episodes, path, split, meta={'seed': 1, 'shots': 2})
  loaded, meta = ep.load_episodes(path, split)
  assert loaded == episodes and meta == {'seed': 1, 'shots': 2}

  # Ids are authoritative: a split listing the same images in another order still matches.
  order = list(range(len(split.image_ids)))[::-1]
  reordered = FewShotSplit(name='toy', split='train', num_classes=10,
                           image_ids=tuple(split.image_ids[i] for i in order),
                           class_areas=tuple(split.class_areas[i] for i in order),
                           load=split.load)
  moved, _ = ep.load_episodes(path, reordered)
  assert [reordered.image_ids[e.query_index] for e in moved] == [
      split.image_ids[e.query_index] for e in episodes]

  record = json.load(open(path))
  record['episodes'][3]['support_ids'][1] = 'no_such_image'
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps(record))
  with pytest.raises(ValueError, match=r"bad\.json: episode 3: image id 'no_such_image'"):
    ep.load_episodes(str(bad), split)
  bad.write_text('{not json')
  with pytest.raises(ValueError, match=r'bad\.json: not an episodes JSON'):
    ep.load_episodes(str(bad), split)


def test_episode_file_checks_dataset_shots_classes_and_supports(tmp_path):
  split = areas_split(random_areas(40, 10, 4))
  pool = ep.build_pool(split, [1, 2, 3, 4, 5])
  path = str(tmp_path / 'episodes.json')
  ep.save_episodes(ep.eval_episodes(pool, 2, 12, seed=1), path, split)
  assert len(ep.load_episodes(path, split, shots=2, classes=[1, 2, 3, 4, 5])[0]) == 12
  with pytest.raises(ValueError, match=r'episodes\.json: episode 0 has 2 supports; .* 1-shot'):
    ep.load_episodes(path, split, shots=1)
  with pytest.raises(ValueError, match=r'episodes\.json: episode \d+: class \d is not one of'):
    ep.load_episodes(path, split, classes=[1])
  other = FewShotSplit(name='toy', split='val', num_classes=10, image_ids=split.image_ids,
                       class_areas=split.class_areas, load=split.load)
  with pytest.raises(ValueError, match=r"episodes\.json: episodes of split 'train'.* 'val'"):
    ep.load_episodes(path, other)

  record = json.load(open(path))
  bad = tmp_path / 'bad.json'
  edited = json.loads(json.dumps(record))
  edited['episodes'][2]['support_ids'][0] = edited['episodes'][2]['query_id']
  bad.write_text(json.dumps(edited))
  with pytest.raises(ValueError, match=r'bad\.json: episode 2: query .* is also a support'):
    ep.load_episodes(str(bad), split)
  # A support that does not hold the class.
  edited = json.loads(json.dumps(record))
  e = edited['episodes'][4]
  without = next(i for i, a in zip(split.image_ids, split.class_areas)
                 if e['class_id'] not in a and i != e['query_id'])
  e['support_ids'][1] = without
  bad.write_text(json.dumps(edited))
  with pytest.raises(ValueError, match=rf"bad\.json: episode 4: class \d+ is absent from "
                                       rf"image '{without}'"):
    ep.load_episodes(str(bad), split)
  edited['episodes'] = []
  bad.write_text(json.dumps(edited))
  with pytest.raises(ValueError, match=r'bad\.json: no episodes'):
    ep.load_episodes(str(bad), split)
