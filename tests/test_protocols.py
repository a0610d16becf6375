"""Protocol table, config overrides, episode rules of each protocol, multi-seed aggregation."""

import collections

import numpy as np
import pytest

from configs import default
from mmnet_jax import evaluate
from mmnet_jax import protocols
from mmnet_jax.data import episodes as ep
from tests.data.test_episodes import areas_split, random_areas


def config_for(protocol, dataset='pascal', **eval_fields):
  c = default.get_config()
  c.dataset.name = dataset
  c.eval.protocol = protocol
  for key, value in eval_fields.items():
    c.eval[key] = value
  return c


def test_protocol_table_defaults():
  pf = protocols.resolve(config_for('pfenet'))
  assert (pf.num_episodes, pf.seeds, pf.sampling, pf.scoring, pf.input_size) == (
      5000, (321,), 'query_order', 'original', 473)
  assert protocols.resolve(config_for('pfenet', 'coco')).num_episodes == 20000
  hs = protocols.resolve(config_for('hsnet'))
  assert (hs.num_episodes, hs.seeds, hs.sampling, hs.scoring, hs.input_size) == (
      1000, (0,), 'pair_order', 'stretch', 401)
  hs_coco = protocols.resolve(config_for('hsnet', 'coco'))
  assert (hs_coco.num_episodes, hs_coco.sampling) == (1000, 'class_balanced')
  bam = protocols.resolve(config_for('bam', 'coco'))
  assert (bam.num_episodes, bam.seeds, bam.sampling, bam.scoring) == (
      1000, (510, 365, 382, 322, 988), 'query_order', 'original')
  # BAM's seeds are numpy's legacy draw after seeding 123, as its test.py does.
  legacy = np.random.RandomState(123)
  assert tuple(int(s) for s in legacy.randint(0, 1000, 5)) == protocols.BAM_SEEDS


def test_config_overrides_and_record():
  r = protocols.resolve(config_for('bam', num_episodes=64, seeds=[3, 4]))
  assert (r.num_episodes, r.seeds) == (64, (3, 4))
  r = protocols.resolve(config_for('hsnet', 'coco', hsnet_original_size=True, stretch_size=96,
                                   sampling='pair_order'))
  assert (r.scoring, r.input_size, r.sampling) == ('stretch_original', 96, 'pair_order')
  record = r.as_dict()
  assert record['protocol'] == 'hsnet' and record['seeds'] == [0]
  assert set(record) >= {'num_episodes', 'seeds', 'sampling', 'scoring', 'input_size',
                         'episodes_file', 'min_class_pixels', 'dataset'}
  # A saved list is one run, whatever the protocol's seed count.
  r = protocols.resolve(config_for('bam', episodes_file='/tmp/x.json'))
  assert r.seeds == (510,) and r.episodes_file == '/tmp/x.json'


@pytest.mark.parametrize('fields, message', [
    (dict(), 'eval.protocol'),
    (dict(seed=5), r'eval.seeds=\(5,\)'),
    (dict(sampling='random'), 'eval.sampling'),
    (dict(num_episodes=-1), 'eval.num_episodes'),
])
def test_bad_config_names_the_field(fields, message):
  protocol = 'nope' if not fields else 'pfenet'
  with pytest.raises(ValueError, match=message):
    protocols.resolve(config_for(protocol, **fields))
  with pytest.raises(ValueError, match='hsnet_original_size'):
    protocols.resolve(config_for('pfenet', hsnet_original_size=True))
  # The legacy seed is accepted when it agrees with eval.seeds.
  assert protocols.resolve(config_for('pfenet', seed=5, seeds=(5,))).seeds == (5,)


def imbalanced_pool():
  """Class 1 is in 160 images, class 2 in 80, classes 3-5 in 12 each (all >= 2048 px)."""
  areas = []
  for c, n in ((1, 160), (2, 80), (3, 12), (4, 12), (5, 12)):
    areas += [{c: 5000}] * n
  return ep.build_pool(areas_split(areas), [1, 2, 3, 4, 5])


def test_class_balanced_sampling_is_uniform_over_classes():
  pool = imbalanced_pool()
  n = 5000
  counts = collections.Counter(e.class_id for e in ep.class_balanced_episodes(pool, 1, n, 0))
  assert set(counts) == {1, 2, 3, 4, 5}
  for c in range(1, 6):   # binomial sd at n/5 = 1000 is ~28: 10% is > 3.5 sd
    assert abs(counts[c] - n / 5) < 0.1 * n / 5, counts
  # PFENet's list-order queries follow the images instead: class 1 gets 160/276 of them.
  pf = collections.Counter(e.class_id for e in ep.eval_episodes(pool, 1, len(pool), 0))
  assert pf[1] == 160 and pf[3] == 12
  # Within a class, the queries are spread over its images.
  queries = {e.query_index for e in ep.class_balanced_episodes(pool, 1, n, 0) if e.class_id == 1}
  assert len(queries) > 140


def test_pair_order_lists_each_image_once_per_large_class():
  areas = [{1: 3000, 2: 3000}, {1: 100, 2: 3000}, {3: 5000}, {1: 4000}, {2: 2500, 3: 2500}]
  pool = ep.build_pool(areas_split(areas), [1, 2, 3])
  assert ep.query_class_pairs(pool) == [(0, 1), (0, 2), (1, 2), (2, 3), (3, 1), (4, 2), (4, 3)]
  episodes = ep.pair_order_episodes(pool, 1, 10, seed=0)
  pairs = [(e.query_index, e.class_id) for e in episodes]
  assert pairs == ep.query_class_pairs(pool) + ep.query_class_pairs(pool)[:3]


@pytest.mark.parametrize('sampling', sorted(ep.SAMPLERS))
@pytest.mark.parametrize('shots', [1, 5])
def test_supports_never_the_query_in_any_protocol(sampling, shots):
  split = areas_split(random_areas(120, 10, 5))
  pool = ep.build_pool(split, [1, 2, 3, 4, 5])
  episodes = ep.sample_eval_episodes(pool, sampling, shots, 600, seed=11)
  assert episodes == ep.sample_eval_episodes(pool, sampling, shots, 600, seed=11)
  assert episodes != ep.sample_eval_episodes(pool, sampling, shots, 600, seed=12)
  for e in episodes:
    assert e.query_index not in e.support_indices
    assert len(set(e.support_indices)) == shots
    assert split.class_areas[e.query_index].get(e.class_id, 0) > 0
    for s in e.support_indices:
      assert split.class_areas[s][e.class_id] >= ep.DEFAULT_MIN_CLASS_PIXELS


def test_unknown_sampling_and_empty_counts_are_refused():
  pool = imbalanced_pool()
  with pytest.raises(ValueError, match='unknown episode sampling'):
    ep.sample_eval_episodes(pool, 'shuffled', 1, 10, 0)
  with pytest.raises(ValueError, match='num_episodes'):
    ep.sample_eval_episodes(pool, 'query_order', 1, 0, 0)
  # 20-shot needs 21 images: only classes 1 and 2 can be drawn class-balanced.
  drawn = {e.class_id for e in ep.class_balanced_episodes(pool, 20, 200, 0)}
  assert drawn == {1, 2}


def run(seed, miou, fb, classes):
  return {'seed': seed, 'miou': miou, 'fb_iou': fb, 'class_iou': classes,
          'mean_episode_iou': miou + 1, 'classes_without_episodes': [], 'episodes': 10,
          'seconds': 1.0}


def test_multi_seed_aggregation_matches_hand_computation():
  runs = [run(1, 50.0, 70.0, {'1': 40.0, '2': 60.0}),
          run(2, 54.0, 71.0, {'1': 44.0, '2': 64.0}),
          run(3, 61.0, 75.0, {'1': 52.0, '2': 70.0})]
  for r, b in zip(runs, (10.0, 20.0, 30.0)):
    r['baselines'] = {'all_foreground': run(r['seed'], b, b, {'1': b})}
  out = evaluate.aggregate_runs(runs)
  # mean 55, deviations -5, -1, 6: sample variance (25 + 1 + 36) / 2 = 31
  assert out['miou'] == pytest.approx(55.0)
  assert out['miou_std'] == pytest.approx(31 ** 0.5)
  # FB: mean 72, deviations -2, -1, 3: (4 + 1 + 9) / 2 = 7
  assert out['fb_iou'] == pytest.approx(72.0)
  assert out['fb_iou_std'] == pytest.approx(7 ** 0.5)
  assert out['class_iou'] == pytest.approx({'1': 136 / 3, '2': 194 / 3})
  assert out['seeds'] == [1, 2, 3] and [r['seed'] for r in out['per_seed']] == [1, 2, 3]
  assert out['episodes'] == 10 and out['total_episodes'] == 30
  assert out['baselines']['all_foreground']['miou'] == pytest.approx(20.0)
  assert out['baselines']['all_foreground']['miou_std'] == pytest.approx(10.0)
  single = evaluate.aggregate_runs(runs[:1])
  assert single['miou'] == 50.0 and 'miou_std' not in single and single['seeds'] == [1]


def test_each_protocol_scores_255_and_empty_classes_as_its_original():
  """HSNet on COCO scores 255 as background (its reader zeroes every pixel that is not the
  class); PFENet, BAM and HSNet on PASCAL ignore it; all three count a class without episodes
  as IoU 0. Options keep the other rule; 'background' cannot apply to the padded square."""
  rules = {(p, d): (r.void_label, r.empty_classes)
           for p in protocols.PROTOCOLS for d in ('pascal', 'coco')
           for r in [protocols.resolve(config_for(p, d))]}
  assert rules == {('pfenet', 'pascal'): ('ignore', 'zero'), ('pfenet', 'coco'): ('ignore', 'zero'),
                   ('hsnet', 'pascal'): ('ignore', 'zero'), ('hsnet', 'coco'): ('background', 'zero'),
                   ('bam', 'pascal'): ('ignore', 'zero'), ('bam', 'coco'): ('ignore', 'zero')}
  r = protocols.resolve(config_for('hsnet', 'coco', void_label='ignore', empty_classes='drop'))
  assert (r.void_label, r.empty_classes) == ('ignore', 'drop')
  assert {'void_label', 'empty_classes', 'resize'} <= set(r.as_dict())
  with pytest.raises(ValueError, match="void_label='background' is HSNet's COCO rule"):
    protocols.resolve(config_for('pfenet', 'coco', void_label='background'))
  with pytest.raises(ValueError, match="config.eval.empty_classes='nan'"):
    protocols.resolve(config_for('pfenet', empty_classes='nan'))
