"""--mode=summary: per-module parameter counts of a model's parameter tree, beside the original's.

The rows (their order and grouping) come from the model's registry spec (`summary_groups`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax

def count_parameters(tree: Any) -> int:
  """Total number of elements in a pytree of arrays or ShapeDtypeStructs."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _decoder_prefix(name: str) -> str:
  return re.sub(r'_\d+$', '', name)


def module_counts(params: Mapping[str, Any], groups: Sequence[tuple[str, str, str | None]] = ()
                  ) -> dict[str, tuple[int, int]]:
  """label -> (number of instances, parameters) for every group present in ``params``.

  `groups`: (label, top-level key, prefix or None) rows, the model spec's `summary_groups`.

  Decoder submodules with a scale suffix (``init_merge_0`` ...) are grouped by prefix.
  Top-level keys outside the known groups get their own row.
  """
  rows: dict[str, tuple[int, int]] = {}
  seen = set()
  for label, top, prefix in groups:
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
    # A subtree whose submodules have rows (the FEM decoder, HSNet's learner) lists the rest
    # of its submodules one by one; any other subtree gets one row.
    grouped = top == 'decoder' or any(t == top and k is not None for t, k in seen)
    if grouped:
      for k in sub:
        if (top, k) not in seen:
          rows[f'{top}/{k}'] = (1, count_parameters(sub[k]))
    elif (top, None) not in seen:
      rows[top] = (1, count_parameters(sub))
  return rows


def parameter_table(params: Mapping[str, Any], freeze_backbone: bool | None = None,
                    groups: Sequence[tuple[str, str, str | None]] = (),
                    reference: int | None = None, reference_note: str = '') -> str:
  """A text table: module, instances, parameters; then head, backbone and total lines.

  A header line explains the columns. With `freeze_backbone` (config.model.freeze_backbone)
  a last line counts the parameters the optimizer trains (optimizer.trainable_labels: the
  backbone subtree is frozen or not); without it the table makes no claim about training.
  With `reference` (the model spec's `reference_params` of this backbone: the original's own
  torch count) a line states it and the difference, with `reference_note` saying why.
  """
  rows = module_counts(params, groups)
  width = max(len(k) for k in rows) + 2
  lines = ['x: instances of the module (the FEM modules have one per scale); params: learnable '
           'parameters (BN running mean/var are batch_stats, not counted)',
           f'{"module":<{width}}{"x":>4}{"params":>14}']
  for label, (n, count) in rows.items():
    lines.append(f'{label:<{width}}{n:>4}{count:>14,}')
  total = count_parameters(params)
  backbone = rows.get('backbone', (0, 0))[1]
  lines.append(f'{"head":<{width}}{"":>4}{total - backbone:>14,}  (all but the backbone)')
  lines.append(f'{"backbone":<{width}}{"":>4}{backbone:>14,}')
  lines.append(f'{"total":<{width}}{"":>4}{total:>14,}')
  if freeze_backbone is not None:
    trained = total - backbone if freeze_backbone else total
    why = 'the backbone is frozen' if freeze_backbone else 'the backbone is trained too'
    lines.append(f'{"trainable":<{width}}{"":>4}{trained:>14,}  '
                 f'(model.freeze_backbone={bool(freeze_backbone)}: {why})')
  if reference is not None:
    diff = total - reference
    same = 'the same count' if diff == 0 else f'ours {diff:+,}'
    note = f'; {reference_note}' if reference_note else ''
    lines.append(f'{"original":<{width}}{"":>4}{reference:>14,}  (the original torch model: '
                 f'{same}{note})')
  return '\n'.join(lines)
