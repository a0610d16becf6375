"""Validation of a run config before any work starts: one error listing every bad field.

`check_config(config)` raises `ConfigError` (a ValueError) whose lines each name a field, the
value found and the value expected, e.g.

    config has 2 problems:
      train.crop_size: got 64, expected 8k + 1 (e.g. 473, 129, 65, 33)
      dataset.fold: got 4, expected an int in [0, 4)

Unknown keys (a mistyped field in a config file, which ConfigDict silently accepts) are found
by comparing with the reference config of config.model.name, `mmnet_jax/default_config.py`
unless another is given. The model's own fields are checked by its spec (models/registry.py).
Only the fields a run reads are checked; a field that is absent is left to its reader.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import ml_collections

class ConfigError(ValueError):
  """A config with unknown keys or impossible values."""


def _flat_keys(tree: Any, prefix: str = '') -> dict:
  """{'a.b.c': value} of every leaf of a ConfigDict / dict."""
  out = {}
  items = tree.items() if hasattr(tree, 'items') else ()
  for key, value in items:
    path = f'{prefix}{key}'
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(_flat_keys(value, path + '.'))
    else:
      out[path] = value
  return out


def default_reference(model: str = 'mmnet') -> ml_collections.ConfigDict:
  """The package's reference config of `model` (`mmnet_jax.default_config`)."""
  from mmnet_jax import default_config
  return default_config.get_config(model=model)


def unknown_keys(config, reference) -> list[str]:
  """Dotted keys of `config` that `reference` does not have (sub-config names included)."""
  known = _flat_keys(reference)
  prefixes = {k.rsplit('.', i)[0] for k in known for i in range(k.count('.') + 1)}
  return sorted(k for k in _flat_keys(config) if k not in known and k not in prefixes)


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


class Checker:
  """Collects `field: got X, expected Y` lines for the fields present in a config."""

  def __init__(self, config):
    self.flat = _flat_keys(config)
    self.problems: list[str] = []

  def get(self, key):
    return self.flat.get(key)

  def check(self, key: str, ok: Callable[[Any], bool], expected: str) -> None:
    if key not in self.flat:
      return
    value = self.flat[key]
    try:
      good = ok(value)
    except (TypeError, ValueError):
      good = False
    if not good:
      self.problems.append(f'{key}: got {value!r}, expected {expected}')

  def int_at_least(self, key: str, low: int) -> None:
    self.check(key, lambda v: _is_int(v) and v >= low, f'an int >= {low}')

  def num_in(self, key: str, low: float, high: float, high_open: bool = False,
             low_open: bool = False) -> None:
    def ok(v):
      return (_is_num(v) and (v > low if low_open else v >= low)
              and (v < high if high_open else v <= high))
    expected = (f'a number in {"(" if low_open else "["}{low}, {high}'
                f'{")" if high_open else "]"}')
    self.check(key, ok, expected)

  def one_of(self, key: str, choices) -> None:
    self.check(key, lambda v: v in choices, f'one of {sorted(choices)}')


def problems(config, reference=None, num_devices: int | None = None) -> list[str]:
  """The list of problems `check_config` would report (empty when the config is valid)."""
  from mmnet_jax import metrics
  from mmnet_jax import optimizer
  from mmnet_jax import protocols
  from mmnet_jax.data import augment
  from mmnet_jax.data import datasets
  from mmnet_jax.data import episodes
  from mmnet_jax.data import streams
  from mmnet_jax.models import registry

  c = Checker(config)
  try:
    spec = registry.of(config)
  except registry.UnknownModelError as e:
    return [str(e).replace('config.', '', 1)]
  ref = default_reference(spec.name) if reference is None else reference
  for key in unknown_keys(config, ref):
    c.problems.append(f'{key}: unknown key (not in the reference config; mistyped?)')

  c.int_at_least('seed', 0)
  c.int_at_least('shots', 1)
  c.one_of('init_from_format', ('backbone', 'full'))

  c.one_of('dataset.name', tuple(datasets.NUM_CLASSES))
  c.int_at_least('dataset.num_folds', 1)
  name, folds = c.get('dataset.name'), c.get('dataset.num_folds')
  if name in datasets.NUM_CLASSES and _is_int(folds) and folds >= 1:
    n = datasets.NUM_CLASSES[name]
    if n % folds:
      c.problems.append(f'dataset.num_folds: got {folds}, expected a divisor of the {n} '
                        f'classes of {name!r}')
    c.check('dataset.fold', lambda v: _is_int(v) and 0 <= v < folds,
            f'an int in [0, {folds})')
  else:
    c.int_at_least('dataset.fold', 0)
  c.one_of('dataset.coco_convention', datasets.COCO_CONVENTIONS)
  c.one_of('dataset.pipeline', streams.PIPELINES)
  c.int_at_least('dataset.service.reorder_window', 1)
  c.int_at_least('dataset.service.local_workers', 1)
  c.check('dataset.service.address', lambda v: isinstance(v, str) and ' ' not in v,
          "'' or 'HOST:PORT' of a dispatcher")
  c.int_at_least('dataset.min_class_pixels', 0)

  spec.check(c, config)   # the model's own fields and loss weights (models/<name>_spec.py)

  size_ok = lambda v: _is_int(v) and spec.input_size_ok(v)   # noqa: E731
  rule = spec.input_size_rule
  c.check('train.crop_size', size_ok, rule)
  c.check('eval.size', size_ok, rule)
  for key in ('train.batch_size', 'eval.batch_size'):
    c.int_at_least(key, 1)
    value = c.get(key)
    if num_devices and _is_int(value) and value >= 1 and value % num_devices:
      c.problems.append(f'{key}: got {value}, expected a multiple of the {num_devices} '
                        'devices')
  c.num_in('train.scale_min', 0, float('inf'), low_open=True, high_open=True)
  c.num_in('train.scale_max', 0, float('inf'), low_open=True, high_open=True)
  lo, hi = c.get('train.scale_min'), c.get('train.scale_max')
  if _is_num(lo) and _is_num(hi) and lo > hi:
    c.problems.append(f'train.scale_min: got {lo}, expected <= train.scale_max ({hi})')
  c.num_in('train.rotate_deg', 0, 180)
  c.one_of('train.augment', augment.TRAIN_AUGMENTS)
  c.one_of('train.optimizer', optimizer.OPTIMIZERS)
  c.one_of('train.lr_schedule', optimizer.LR_SCHEDULES)
  c.int_at_least('train.num_steps', 0)
  if c.get('train.num_steps') == 0:
    c.int_at_least('train.epochs', 1)
  c.num_in('train.base_lr', 0, float('inf'), low_open=True, high_open=True)
  c.num_in('train.lr_multiplier', 0, float('inf'), low_open=True, high_open=True)
  c.num_in('train.momentum', 0, 1, high_open=True)
  c.num_in('train.weight_decay', 0, float('inf'), high_open=True)
  c.num_in('train.poly_power', 0, float('inf'), high_open=True)
  c.int_at_least('train.log_every', 1)
  c.int_at_least('train.checkpoint_every', 1)
  c.int_at_least('train.eval_every', 0)

  before_eval = len(c.problems)
  c.one_of('eval.protocol', tuple(protocols.PROTOCOLS))
  c.one_of('eval.resize', augment.EVAL_RESIZES)
  c.check('eval.sampling', lambda v: v == '' or v in episodes.SAMPLERS,
          f"'' (the protocol's) or one of {sorted(episodes.SAMPLERS)}")
  c.check('eval.seeds', lambda v: all(_is_int(s) and s >= 0 for s in v),
          'a tuple of ints >= 0 (empty: the protocol\'s seeds)')
  c.check('eval.stretch_size', lambda v: _is_int(v) and (v == 0 or size_ok(v)),
          f"0 (the model's {spec.stretch_size}) or {rule}")
  c.one_of('eval.hsnet_original_size', (False, True))
  c.check('eval.void_label', lambda v: v == '' or v in protocols.VOID_LABELS,
          f"'' (the protocol's) or one of {list(protocols.VOID_LABELS)}")
  c.check('eval.empty_classes', lambda v: v == '' or v in metrics.EMPTY_CLASS_RULES,
          f"'' (the protocol's) or one of {list(metrics.EMPTY_CLASS_RULES)}")
  c.int_at_least('eval.pictures', 0)
  c.one_of('eval.baselines', (False, True))
  c.int_at_least('eval.num_episodes', 0)   # 0: the protocol's count
  c.int_at_least('eval.during_training_episodes', 0)
  c.int_at_least('eval.max_label_size', 1)
  c.int_at_least('eval.seed', 0)
  c.one_of('eval.pad_fill', ('black', 'mean'))
  c.one_of('eval.select_on', ('test_fold', 'last'))
  if len(c.problems) == before_eval and 'eval.protocol' in c.flat:
    _check_protocol(c, config, spec)
  return c.problems


def _check_protocol(c: Checker, config, spec) -> None:
  """The combinations only the resolved protocol shows: its input size (the model's rule,
  e.g. 8k + 1), options of another protocol, the legacy seed."""
  from mmnet_jax import protocols
  try:
    resolved = protocols.resolve(config)
  except (ValueError, KeyError, AttributeError) as e:
    c.problems.append(str(e).replace('config.', '', 1))
    return
  if resolved.scoring != 'original' and not spec.input_size_ok(resolved.input_size):
    c.problems.append(f'eval.stretch_size: the {resolved.protocol!r} protocol stretches to '
                      f'{resolved.input_size}, expected {spec.input_size_rule} (the model\'s '
                      'input rule)')


def check_config(config, reference=None, num_devices: int | None = None) -> None:
  """Raises ConfigError listing every unknown key and impossible value of `config`.

  Args:
    config: the run's ConfigDict.
    reference: the config whose keys are the known ones (default: mmnet_jax/default_config.py
      for config.model.name).
    num_devices: when given, train.batch_size and eval.batch_size must be multiples of it.
  """
  found = problems(config, reference, num_devices)
  if found:
    lines = '\n  '.join(found)
    raise ConfigError(f'config has {len(found)} problem{"s" * (len(found) > 1)}:\n  {lines}')
