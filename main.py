"""mmnet_jax entry point: `python main.py --config=configs/synth_1shot.py --workdir=DIR`.

Modes: train (train, then evaluate the selected checkpoint), eval (restore and evaluate),
summary (per-module parameter table), predict (segment --query from --support IMG:MASK pairs
with the workdir's checkpoint; writes --output and OUT_overlay.png). All logic lives in
mmnet_jax/.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mmnet_jax import cli
from mmnet_jax import host_allocator
from mmnet_jax import sharding

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with an argument: configs/pascal_1shot.py:fold=2',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
_MODE = flags.DEFINE_enum('mode', 'train', cli.MODES, 'What to run.')
_SUPPORT = flags.DEFINE_multi_string(
    'support', [], 'predict: a support IMAGE:MASK pair (repeat for K shots).')
_QUERY = flags.DEFINE_string('query', None, 'predict: the query image.')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'predict: the mask PNG to write (0/255); the overlay goes beside it.')
_MASK_CLASS = flags.DEFINE_integer(
    'mask_class', None, 'predict: foreground class id in the support masks (default nonzero).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)   # orbax and TFDS log every step at INFO
  # Before JAX starts its threads: XLA:CPU's step buffers then reuse freed memory instead of
  # page-faulting fresh pages every step (mmnet_jax/host_allocator.py; off with
  # MMNET_KEEP_FREED_MEMORY=0).
  host_allocator.keep_freed_memory()
  # Joins a multi-host run (TPU pods, SLURM, ...) before anything touches the backend; a no-op
  # on one host. Here, not in cli.run, which tests and notebooks call after JAX has started.
  sharding.initialize_distributed()
  predict_args = {'supports': _SUPPORT.value, 'query': _QUERY.value, 'output': _OUTPUT.value,
                  'mask_class': _MASK_CLASS.value}
  try:
    result = cli.run(_MODE.value, _CONFIG.value, _WORKDIR.value, predict_args=predict_args)
  except (FileNotFoundError, ValueError) as e:
    if _MODE.value != 'predict':
      raise
    sys.exit(f'error: {e}')   # a bad file or flag: the message, not a traceback
  # A preempted run saved its checkpoint and stopped: exit like the signal so schedulers
  # requeue it (128 + SIGTERM/SIGINT).
  stopped_by = result.get('preempted') if isinstance(result, dict) else None
  if stopped_by:
    sys.exit(cli.PREEMPTED_EXIT_CODES.get(stopped_by, 1))


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
