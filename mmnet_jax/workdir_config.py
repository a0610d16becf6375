"""The config a training run recorded in its workdir, as a config file for `--config`.

`python main.py --mode=eval --workdir=DIR` (and `--mode=predict`) without `--config` uses
`DIR/config.json`, which training writes: main.py passes `--config=<this file>:DIR`, so the
usual `--config.eval.protocol=hsnet` overrides still apply on top of it. Fields added to the
library since the run was recorded take the defaults of the recorded model
(`mmnet_jax/default_config.py`, config.model.name; 'mmnet' before there was a name), so an
older workdir still evaluates and its new fields can be overridden.
"""

from __future__ import annotations

import json

from absl import logging
import ml_collections

from mmnet_jax import default_config
from mmnet_jax import storage
from mmnet_jax import workdir_io
from mmnet_jax.models import registry

CONFIG_FILE = workdir_io.CONFIG_FILE


def _tuples(value):
  """JSON lists back to the tuples the configs use (override parsing keeps their types)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load(workdir: str) -> ml_collections.ConfigDict:
  """The ConfigDict recorded in `workdir`; FileNotFoundError / ValueError name the file."""
  path = storage.join(workdir, CONFIG_FILE)
  if not storage.isfile(path):
    raise FileNotFoundError(f'{path}: no such file; --workdir must be a training run\'s '
                            'directory, or give --config')
  try:
    recorded = json.loads(storage.read_text(path))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path}: not a readable config ({e}); give --config') from e
  if not isinstance(recorded, dict):
    raise ValueError(f'{path}: expected a JSON object, got {type(recorded).__name__}')
  config = ml_collections.ConfigDict(_tuples(recorded))
  model = registry.model_name(config.get('model') or {})
  try:
    defaults = default_config.get_config(model=model)
  except registry.UnknownModelError as e:
    raise ValueError(f'{path}: {e}') from e
  added = _fill_missing(config, defaults)
  if added:
    logging.info('%s predates the fields %s: they take their defaults', path, added)
  return config


def _fill_missing(config, defaults, prefix='') -> list[str]:
  """Adds to `config` (in place) the fields of `defaults` it lacks; returns their names."""
  added = []
  for key in defaults.keys():
    value = defaults[key]
    if key not in config:
      with config.unlocked():
        config[key] = value
      added.append(prefix + key)
    elif (isinstance(value, ml_collections.ConfigDict)
          and isinstance(config[key], ml_collections.ConfigDict)):
      added += _fill_missing(config[key], value, f'{prefix}{key}.')
  return added


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """config_flags entry point: `--config=mmnet_jax/workdir_config.py:DIR`."""
  return load(workdir)
