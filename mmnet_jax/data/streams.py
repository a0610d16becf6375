"""The episodic streams a run reads, by `config.dataset.pipeline`: 'graph' (graph_pipeline.py:
records decoded and augmented by TensorFlow ops), 'service' (the graph training stream built
by tf.data service workers, service.py; evaluation as 'graph') or 'numpy' (pipeline.py: the
numpy/PIL builders in tf.numpy_function). All give the same episodes and eval batches and the
same batch keys (docs/architecture.md); the numpy training augmentation draws differ.

Arguments as pipeline.train_dataset and pipeline.eval_dataset.
"""

from __future__ import annotations

from mmnet_jax.data import graph_pipeline
from mmnet_jax.data import pipeline
from mmnet_jax.data import service

PIPELINES = ('graph', 'numpy', 'service')


def pipeline_kind(config) -> str:
  """config.dataset.pipeline; absent (configs recorded before it existed): 'numpy'."""
  kind = getattr(config.dataset, 'pipeline', None) or 'numpy'
  if kind not in PIPELINES:
    raise ValueError(f'config.dataset.pipeline={kind!r}; expected one of {list(PIPELINES)}')
  return kind


def training_draws(config) -> str:
  """Which augmentation draws the training stream makes: 'numpy', or 'graph' (also the
  service's: its batches are the graph stream's, so a resume across the two changes nothing)."""
  kind = pipeline_kind(config)
  return 'graph' if kind == 'service' else kind


def train_dataset(pool, config, start_step: int = 0, host_batch_size: int | None = None,
                  process_index: int = 0, process_count: int = 1, num_steps: int | None = None):
  """Host training batches for steps start_step, start_step + 1, ... (numpy dicts)."""
  if pipeline_kind(config) == 'numpy':
    return pipeline.train_dataset(pool, config, start_step, host_batch_size, process_index,
                                  process_count, num_steps)
  rows, end = pipeline.train_rows(pool, config, host_batch_size, process_index, process_count,
                                  num_steps)
  if pipeline_kind(config) == 'service':
    return service.train_dataset(pool, config, rows, start_step, end)
  return graph_pipeline.train_dataset(pool, config, rows, start_step, end)


def eval_dataset(split, episode_list, config, host_batch_size: int | None = None,
                 process_index: int = 0, process_count: int = 1):
  """Host eval batches over `episode_list` in order, with the eval keys."""
  if pipeline_kind(config) == 'numpy':
    return pipeline.eval_dataset(split, episode_list, config, host_batch_size, process_index,
                                 process_count)
  rows = pipeline.eval_rows(episode_list, config, host_batch_size, process_index,
                            process_count)
  return graph_pipeline.eval_dataset(split, episode_list, config, rows)
