"""Per-module parameter counts of an MMNet parameter tree."""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax

# Rows of the table, in the model's data-flow order: (label, top-level key, decoder prefix).
_GROUPS = (
    ('backbone', 'backbone', None),
    ('down_query', 'down_query', None),
    ('down_supp', 'down_supp', None),
    ('memory', 'memory', None),
    ('decoder/init_merge', 'decoder', 'init_merge'),
    ('decoder/alpha_conv', 'decoder', 'alpha_conv'),
    ('decoder/beta_conv', 'decoder', 'beta_conv'),
    ('decoder/inner_cls', 'decoder', 'inner_cls'),
    ('decoder/res1', 'decoder', 'res1'),
    ('decoder/res2', 'decoder', 'res2'),
    ('decoder/cls', 'decoder', 'cls'),
)


def count_parameters(tree: Any) -> int:
  """Total number of elements in a pytree of arrays or ShapeDtypeStructs."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _decoder_prefix(name: str) -> str:
  return re.sub(r'_\d+$', '', name)


def module_counts(params: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
  """label -> (number of instances, parameters) for every group present in ``params``.

  Decoder submodules with a scale suffix (``init_merge_0`` ...) are grouped by prefix.
  Top-level keys outside the known groups get their own row.
  """
  rows: dict[str, tuple[int, int]] = {}
  seen = set()
  for label, top, prefix in _GROUPS:
    if top not in params:
      continue
    if prefix is None:
      rows[label] = (1, count_parameters(params[top]))
      seen.add((top, None))
      continue
    subs = [k for k in params[top] if _decoder_prefix(k) == prefix]
    if subs:
      rows[label] = (len(subs), sum(count_parameters(params[top][k]) for k in subs))
      seen.update((top, k) for k in subs)
  for top, sub in params.items():
    if top == 'decoder':
      for k in sub:
        if ('decoder', k) not in seen:
          rows[f'decoder/{k}'] = (1, count_parameters(sub[k]))
    elif (top, None) not in seen:
      rows[top] = (1, count_parameters(sub))
  return rows


def parameter_table(params: Mapping[str, Any]) -> str:
  """A text table: module, instances, parameters; then head, backbone and total lines."""
  rows = module_counts(params)
  width = max(len(k) for k in rows) + 2
  lines = [f'{"module":<{width}}{"x":>4}{"params":>14}']
  for label, (n, count) in rows.items():
    lines.append(f'{label:<{width}}{n:>4}{count:>14,}')
  total = count_parameters(params)
  backbone = rows.get('backbone', (0, 0))[1]
  lines.append(f'{"head (trainable)":<{width}}{"":>4}{total - backbone:>14,}')
  lines.append(f'{"backbone":<{width}}{"":>4}{backbone:>14,}')
  lines.append(f'{"total":<{width}}{"":>4}{total:>14,}')
  return '\n'.join(lines)
