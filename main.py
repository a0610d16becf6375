"""mmnet_jax entry point: `python main.py --config=configs/synth_1shot.py --workdir=DIR`.

Modes: train (train, then evaluate the selected checkpoint), eval (restore and evaluate),
summary (per-module parameter table). All logic lives in mmnet_jax/.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mmnet_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with an argument: configs/pascal_1shot.py:fold=2',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
_MODE = flags.DEFINE_enum('mode', 'train', cli.MODES, 'What to run.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)   # orbax and TFDS log every step at INFO
  cli.run(_MODE.value, _CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
