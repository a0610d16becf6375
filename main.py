"""mmnet_jax entry point: `python main.py --config=configs/synth_1shot.py --workdir=DIR`.

Modes: train (train, then evaluate the selected checkpoint), eval (restore and evaluate),
summary (per-module parameter table), predict (segment --query from --support IMG:MASK pairs
with the workdir's checkpoint; writes --output and OUT_overlay.png). All logic lives in
mmnet_jax/.

eval and predict without --config use the config the workdir's training recorded
(DIR/config.json); --config.FIELD=VALUE overrides still apply. A user error (a bad flag, path,
config field or file) prints one line, `error: ...`, and exits 2; --debug (or MMNET_DEBUG=1)
shows its traceback.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from mmnet_jax import cli
from mmnet_jax import host_allocator
from mmnet_jax import log_setup
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
_DEBUG = flags.DEFINE_bool(
    'debug', False, 'Show the traceback of a user error (also with MMNET_DEBUG=1).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  debug = _DEBUG.value or cli.debug_requested(sys.argv)
  try:
    config = cli.load_config_flag(_CONFIG, _MODE.value, _WORKDIR.value, sys.argv)
    result = _run(config)
  except cli.USER_ERRORS as e:
    if debug:
      raise
    print(f'error: {cli.one_line(e)}', file=sys.stderr, flush=True)
    sys.exit(cli.USER_ERROR_EXIT_CODE)
  # A preempted run saved its checkpoint and stopped: exit like the signal so schedulers
  # requeue it (128 + SIGTERM/SIGINT/SIGHUP).
  stopped_by = result.get('preempted') if isinstance(result, dict) else None
  if stopped_by:
    sys.exit(cli.PREEMPTED_EXIT_CODES.get(stopped_by, 1))


def _run(config):
  log_setup.configure()   # our INFO lines; not orbax's and TFDS's per-save, per-read ones
  # Before JAX starts its threads: XLA:CPU's step buffers then reuse freed memory instead of
  # page-faulting fresh pages every step (mmnet_jax/host_allocator.py; off with
  # MMNET_KEEP_FREED_MEMORY=0).
  host_allocator.keep_freed_memory()
  # Joins a multi-host run (TPU pods, SLURM, ...) before anything touches the backend; a no-op
  # on one host. Here, not in cli.run, which tests and notebooks call after JAX has started.
  sharding.initialize_distributed()
  predict_args = {'supports': _SUPPORT.value, 'query': _QUERY.value, 'output': _OUTPUT.value,
                  'mask_class': _MASK_CLASS.value}
  return cli.run(_MODE.value, config, _WORKDIR.value, predict_args=predict_args)


def _parse_flags(argv):
  """absl's flag parsing, with a bad flag or --config.FIELD override as one line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, OSError, ValueError) as e:
    if cli.debug_requested(argv):
      raise
    message = (cli.override_message(e, argv) if isinstance(e, AttributeError)
               else cli.one_line(e))
    print(f'error: {message}', file=sys.stderr, flush=True)
    sys.exit(cli.USER_ERROR_EXIT_CODE)


if __name__ == '__main__':
  sys.argv = cli.with_workdir_config(sys.argv)
  app.run(main, flags_parser=_parse_flags)
