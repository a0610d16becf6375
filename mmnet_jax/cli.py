"""What main.py runs for each --mode (importable from tests and notebooks)."""

from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')   # before TensorFlow is first imported

import jax
import ml_collections

MODES = ('train', 'eval', 'summary')


def initialize_distributed() -> None:
  """Joins a multi-host run when a cluster environment exists; a no-op on one host."""
  try:
    jax.distributed.initialize()
  except (ValueError, RuntimeError):
    pass   # single host, no cluster environment


def run(mode: str, config: ml_collections.ConfigDict, workdir: str | None):
  """Runs one mode; returns its result (results dict or the summary text)."""
  if mode == 'summary':
    from mmnet_jax import train
    from mmnet_jax.models import mmnet, summary
    variables = jax.eval_shape(lambda: train.init_variables(mmnet.build_model(config.model),
                                                            config))
    text = summary.parameter_table(variables['params'])
    print(text)
    return text
  if not workdir:
    raise ValueError(f'--workdir is required for --mode={mode}')
  initialize_distributed()
  if mode == 'train':
    from mmnet_jax import train
    return train.train_and_evaluate(config, workdir)
  if mode == 'eval':
    from mmnet_jax import evaluate
    return evaluate.evaluate_workdir(config, workdir)
  raise ValueError(f'unknown --mode={mode!r}; expected one of {MODES}')
