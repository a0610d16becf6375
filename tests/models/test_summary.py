"""The --mode=summary parameter table: columns explained, trainable count per freeze_backbone."""

import jax
import numpy as np
import pytest

from mmnet_jax import optimizer
from mmnet_jax.models import mmnet_spec
from mmnet_jax.models import summary

GROUPS = mmnet_spec.SUMMARY_GROUPS


def _params():
  """A small MMNet-shaped tree: 100 backbone, 10 memory, 2 x 3 decoder init_merge parameters."""
  def leaf(*shape):
    return jax.ShapeDtypeStruct(shape, np.float32)
  return {'backbone': {'stem': {'conv1': {'kernel': leaf(10, 10)}}},
          'memory': {'slots': leaf(2, 5)},
          'decoder': {'init_merge_0': {'conv': {'kernel': leaf(3)}},
                      'init_merge_1': {'conv': {'kernel': leaf(3)}}}}


def _line(text, name):
  return next(line for line in text.splitlines() if line.split()[:1] == [name])


def _count(line):
  return int(line.split()[1].replace(',', ''))


def test_header_explains_the_columns():
  header, columns = summary.parameter_table(_params(), groups=GROUPS).splitlines()[:2]
  assert header.startswith('x: instances') and 'params: learnable' in header
  assert columns.split() == ['module', 'x', 'params']
  assert _line(summary.parameter_table(_params(), groups=GROUPS), 'decoder/init_merge').split()[1:] == ['2', '6']


def test_no_trainable_claim_without_the_freeze_flag():
  """The old table said 'head (trainable)' whatever the backbone did."""
  text = summary.parameter_table(_params(), groups=GROUPS)
  assert 'trainable' not in text
  assert _count(_line(text, 'head')) == 16 and _count(_line(text, 'total')) == 116


@pytest.mark.parametrize('freeze, trained', [(True, 16), (False, 116)])
def test_trainable_count_follows_freeze_backbone(freeze, trained):
  text = summary.parameter_table(_params(), freeze_backbone=freeze, groups=GROUPS)
  line = _line(text, 'trainable')
  assert _count(line) == trained
  assert f'model.freeze_backbone={freeze}' in line
  assert ('frozen' in line) == freeze
  # The optimizer's own labels (optimizer.trainable_labels) count the same parameters.
  labels = optimizer.trainable_labels(_params(), freeze)
  sizes = jax.tree_util.tree_map(lambda leaf, label: leaf.size * (label == 'trainable'),
                                 _params(), labels)
  assert sum(jax.tree_util.tree_leaves(sizes)) == trained


def test_reference_line_states_the_original_count_and_the_difference():
  text = summary.parameter_table(_params(), groups=GROUPS, reference=110, reference_note='why')
  line = _line(text, 'original')
  assert _count(line) == 110 and 'ours +6; why' in line
  same = _line(summary.parameter_table(_params(), groups=GROUPS, reference=116), 'original')
  assert 'the same count' in same
  assert 'original' not in summary.parameter_table(_params(), groups=GROUPS)


def test_rows_follow_the_model_groups():
  """Without groups every top-level key and decoder submodule is its own row."""
  rows = summary.module_counts(_params())
  assert 'decoder/init_merge_0' in rows and 'decoder/init_merge' not in rows
  assert summary.module_counts(_params(), GROUPS)['decoder/init_merge'] == (2, 6)
