"""Models by name (`config.model.name`): everything the library needs of a model, in one record.

`train`, `evaluate`, `predict`, `convert`, `benchmark` and the summary ask this registry for the
model; none of them imports a specific model. A model is a `ModelSpec`; the built-in ones are
imported on first use. A model of your own needs no change to the library: put its spec in a
module that calls `register(ModelSpec(name='my_pkg.my_model', ...))` at import and run with
`--config.model.name=my_pkg.my_model` (a dotted name is imported as a module; docs/models.md).

Every model's Flax module is called as
  outputs = module.apply(variables, query_img (B, H, W, 3), support_imgs (B, K, H, W, 3),
                         support_masks (B, K, H, W) float {0, 1}, train=bool,
                         rngs={'dropout': key}, mutable=['batch_stats'] or False)
and returns a dict with at least 'logits' (B, H, W, 2) at the input size; the rest of the dict
is the model's own business (its loss reads it).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

# Built-in models: name -> module that registers it (imported lazily: specs are cheap to import,
# their models import jax and flax only when built).
BUILTIN = {
    'mmnet': 'mmnet_jax.models.mmnet_spec',
    'pfenet': 'mmnet_jax.models.pfenet_spec',
    'hsnet': 'mmnet_jax.models.hsnet_spec',
}

# The input rule of the stride-8 models (PFENet, MM-Net): align-corners resizes between the
# input and features of side (s - 1) / 8 + 1 need s = 8k + 1.
SIZE_RULE = '8k + 1 with k >= 1 (e.g. 473, 129, 65, 33)'


def eight_k_plus_one(side: int) -> bool:
  return side >= 9 and (side - 1) % 8 == 0


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the library needs of one model.

  name: `config.model.name`.
  config_defaults: () -> the model's `config.model` ConfigDict (its `name` included).
  build: config.model -> the Flax module; raises ValueError naming `config.model.<field>`.
  loss: (outputs, query_label (B, H, W) int with 255 ignored, config.train) ->
    (total, {term: unweighted scalar}); the terms are logged as train/<term>.
  train_defaults: the loss weights (and other `config.train` fields) this model adds, e.g.
    MM-Net's {'aux_weight': 1.0, 'recon_weight': 0.1}.
  check: (checker, config) -> None; adds the problems of the model's fields to `checker`
    (`config_checks.Checker`: int_at_least, num_in, one_of, check).
  fingerprint_exclude: `config.model` fields that change no parameter (compute dtype,
    chunking): a checkpoint may be evaluated or resumed with another value.
  convert_formats: `python -m mmnet_jax.convert --format` names this model's released
    checkpoints use -> the converter's key map for them (convert.py).
  summary_groups: rows of --mode=summary, in data-flow order: (label, top-level parameter key,
    prefix of its submodules or None for the whole subtree).
  reference_params: config.model.backbone -> parameter count of the original model (the
    summary states it beside ours); reference_note says what makes them differ, if they do.
  runlocal: (config.model) -> None; shrinks the model for CPU smoke runs (`runlocal` configs).
  frozen: top-level parameter keys that `config.model.freeze_backbone` freezes.
  input_size_ok: int side -> whether the model takes it (train.crop_size, eval.size, the
    stretch side); input_size_rule says it in words for the config checks' messages.
  stretch_size: the side the 'hsnet' protocol stretches to for this model (HSNet's 400, or
    the nearest side the model takes).
  """
  name: str
  config_defaults: Callable[[], Any]
  build: Callable[[Any], Any]
  loss: Callable[[Mapping[str, Any], Any, Any], tuple[Any, dict]]
  train_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  check: Callable[[Any, Any], None] = lambda checker, config: None
  fingerprint_exclude: tuple[str, ...] = ()
  convert_formats: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  summary_groups: tuple[tuple[str, str, str | None], ...] = ()
  reference_params: Mapping[str, int] = dataclasses.field(default_factory=dict)
  reference_note: str = ''
  runlocal: Callable[[Any], None] = lambda model_config: None
  frozen: tuple[str, ...] = ('backbone',)
  input_size_ok: Callable[[int], bool] = eight_k_plus_one
  input_size_rule: str = SIZE_RULE
  stretch_size: int = 401


_SPECS: dict[str, ModelSpec] = {}


class UnknownModelError(ValueError):
  """`config.model.name` names no registered, built-in or importable model."""


def register(spec: ModelSpec) -> ModelSpec:
  """Adds `spec` under `spec.name` (re-registering the same name replaces it: reloads)."""
  if not spec.name or not isinstance(spec.name, str):
    raise ValueError(f'ModelSpec.name must be a non-empty str, got {spec.name!r}')
  _SPECS[spec.name] = spec
  return spec


def get(name: str) -> ModelSpec:
  """The spec of `name`: registered, built in (imported now) or a module path to import."""
  if name in _SPECS:
    return _SPECS[name]
  module = BUILTIN.get(name, name if isinstance(name, str) and '.' in name else None)
  if module is not None:
    try:
      importlib.import_module(module)
    except ImportError as e:
      if name in BUILTIN:
        raise
      raise UnknownModelError(f'config.model.name={name!r}: cannot import {module!r} ({e}); '
                              f'expected one of {names()} or an importable module that '
                              'registers a ModelSpec of that name') from e
  if name not in _SPECS:
    raise UnknownModelError(f'config.model.name={name!r}: unknown model; expected one of '
                            f'{names()} or an importable module (a dotted name) that registers '
                            'a ModelSpec of that name')
  return _SPECS[name]


def names() -> list[str]:
  """Built-in and registered model names."""
  return sorted(set(BUILTIN) | set(_SPECS))


def of(config) -> ModelSpec:
  """The spec of `config.model.name` ('mmnet' for configs written before there was a name)."""
  return get(model_name(config.model))


def model_name(model_config) -> str:
  """`config.model.name`, 'mmnet' when absent (configs and checkpoints before the registry)."""
  get_ = getattr(model_config, 'get', None)
  name = get_('name', None) if get_ else getattr(model_config, 'name', None)
  return name or 'mmnet'


def build(config) -> Any:
  """The Flax module of `config` (its `config.model`)."""
  return of(config).build(config.model)
