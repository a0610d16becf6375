"""A run's model state: the registered model's variables, init_from weights, the train state and
the config fingerprint a checkpoint must match (shared by train, evaluate, predict, benchmarks).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mmnet_jax import optimizer
from mmnet_jax.models import registry

TrainState = dict   # {'step', 'params', 'batch_stats', 'opt_state'}


def init_variables(model, config: ml_collections.ConfigDict) -> dict:
  """Initial variables (params, batch_stats) of `model` (`registry.build(config)`) from
  config.seed, on the host."""
  size = config.train.crop_size
  k = config.shots
  query = jnp.zeros((1, size, size, 3), jnp.float32)
  supports = jnp.zeros((1, k, size, size, 3), jnp.float32)
  masks = jnp.zeros((1, k, size, size), jnp.float32)
  rng = jax.random.key(config.seed)
  variables = jax.jit(lambda r: model.init(r, query, supports, masks, train=False))(rng)
  return dict(variables)


def load_init_from(config: ml_collections.ConfigDict, variables: dict) -> dict:
  """Overwrites `variables` with the converted weights named by config.init_from.

  init_from_format 'backbone' takes only the backbone of the file (ImageNet weights; the head
  keeps its fresh initialisation); 'full' requires the file to cover every model parameter
  (a released MM-Net checkpoint) and raises naming the first modules it lacks.
  """
  if not config.init_from:
    return variables
  from mmnet_jax import convert   # imported lazily: only runs that import weights need it
  converted = convert.load_converted(config.init_from)
  if config.init_from_format == 'backbone':
    converted = {c: {'backbone': t['backbone']} for c, t in converted.items() if 'backbone' in t}
    if not converted:
      raise ValueError(f'config.init_from={config.init_from!r} holds no backbone weights '
                       "(config.init_from_format='backbone')")
  else:
    missing = sorted(set(variables['params']) - set(converted.get('params', {})))
    if missing:
      raise ValueError(f'config.init_from={config.init_from!r} lacks the modules {missing}; '
                       "init_from_format='full' needs a whole-model conversion (mmnet-official)")
  return convert.merge_into(variables, converted)


def create_state(model, config: ml_collections.ConfigDict, total_steps: int) -> tuple[TrainState, Any]:
  """Fresh train state (initialised, init_from applied) and the optimiser."""
  variables = load_init_from(config, init_variables(model, config))
  tx = optimizer.make_optimizer(config, total_steps, variables['params'])
  state = {
      'step': jnp.zeros((), jnp.int32),
      'params': variables['params'],
      'batch_stats': variables.get('batch_stats', {}),
      'opt_state': tx.init(variables['params']),
  }
  return state, tx


def abstract_state(model, config: ml_collections.ConfigDict) -> TrainState:
  """Shapes and dtypes of a train state (no computation, no init_from): a restore target."""
  def build():
    variables = init_variables(model, config)
    tx = optimizer.make_optimizer(config, 1, variables['params'])
    return {'step': jnp.zeros((), jnp.int32), 'params': variables['params'],
            'batch_stats': variables.get('batch_stats', {}),
            'opt_state': tx.init(variables['params'])}
  return jax.eval_shape(build)


def support_masks(batch: dict) -> jax.Array:
  """The model's support masks: label == 1 (255 borders and padding count as background)."""
  return (batch['support_labels'] == 1).astype(jnp.float32)


def config_fingerprint(config: ml_collections.ConfigDict) -> dict:
  """The parts of a config that must match for a checkpoint to be resumed or evaluated.
  The model's `fingerprint_exclude` fields (MM-Net: the compute dtype and the attention
  chunking) change no parameter, so they may differ; so may the shots: the parameters of
  MM-Net and PFENet do not depend on K, so a 1-shot checkpoint is evaluated
  at 5 shots as HSNet's `test.py --nshot 5` does (a resume at another K warns, as a recipe
  change). Checkpoints that recorded 'shots' still match: only these keys are compared."""
  spec = registry.of(config)
  skip = set(spec.fingerprint_exclude) | {'name'}
  model = {k: v for k, v in config.model.to_dict().items() if k not in skip}
  return {'model_name': spec.name, 'model': model, 'dataset': config.dataset.name,
          'fold': config.dataset.fold}
