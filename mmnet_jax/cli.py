"""What main.py runs for each --mode (importable from tests and notebooks)."""

from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')   # before TensorFlow is first imported
# TensorFlow only runs tf.data here (no TF math: decoding, batching), so its oneDNN kernels
# change nothing but print a two-line banner at import; off unless the user set it.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import jax
import ml_collections

from mmnet_jax import storage
from mmnet_jax import workdir_io

MODES = ('train', 'eval', 'summary', 'predict')


PREEMPTED_EXIT_CODES = {'SIGTERM': 143, 'SIGINT': 130, 'SIGHUP': 129}   # 128 + signal number
USER_ERROR_EXIT_CODE = 2


# What main.py reports as one line with exit 2: bad flags, paths, config values and files
# (ValueError covers ConfigError, CheckpointFormatError, BadSampleError, ...), and a workdir
# another run holds. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, workdir_io.WorkdirInUseError)
READ_ONLY_MODES = ('eval', 'predict')


def debug_requested(argv) -> bool:
  """--debug on the command line or MMNET_DEBUG set (not 0): show user errors' tracebacks."""
  return ('--debug' in argv or '--debug=true' in argv
          or os.environ.get('MMNET_DEBUG', '') not in ('', '0'))


def one_line(error: BaseException) -> str:
  """`error`'s message on one line: a multi-line ConfigError's problems joined by '; '."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  head, rest = lines[0], lines[1:]
  return head + (' ' + '; '.join(rest) if rest else '')


def _flag_value(argv, name: str) -> str | None:
  """The value of --name=V or --name V in `argv` (the last one given), else None."""
  value = None
  for i, arg in enumerate(argv[1:], start=1):
    for prefix in (f'--{name}=', f'-{name}='):
      if arg.startswith(prefix):
        value = arg[len(prefix):]
    if arg in (f'--{name}', f'-{name}') and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def with_workdir_config(argv: list[str]) -> list[str]:
  """`argv` plus `--config=<mmnet_jax/workdir_config.py>:DIR` for eval and predict runs that
  name a workdir with a recorded config.json but no --config (README: eval after training)."""
  from mmnet_jax import workdir_config
  mode, workdir = _flag_value(argv, 'mode'), _flag_value(argv, 'workdir')
  if mode not in READ_ONLY_MODES or not workdir or _flag_value(argv, 'config') is not None:
    return argv
  if not storage.isfile(storage.join(workdir, workdir_config.CONFIG_FILE)):
    return argv   # load_config_flag reports it
  return argv[:1] + [f'--config={workdir_config.__file__}:{workdir}'] + argv[1:]


def load_config_flag(holder, mode: str, workdir: str | None, argv: list[str]):
  """The ConfigDict of the --config flag `holder`, with one-line errors naming the flag: a
  missing config file, a mistyped --config.FIELD override (with its "did you mean"), no
  --config where the workdir recorded none."""
  path = (_flag_value(argv, 'config') or '').split(':', 1)[0]
  try:
    config = holder.value
    if config is not None:
      config.keys()   # a config file that failed to load raises on first access
  except AttributeError as e:   # ConfigDict: a --config.FIELD override names no field
    raise ValueError(override_message(e, argv)) from e
  except OSError as e:
    if path and not os.path.isfile(path):
      raise FileNotFoundError(f'--config={path}: no such config file') from e
    raise ValueError(f'--config={path}: {one_line(e)}') from e
  if config is not None:
    return config
  if mode in READ_ONLY_MODES and workdir:
    from mmnet_jax import workdir_config
    raise FileNotFoundError(
        f'--workdir={workdir} has no recorded {workdir_config.CONFIG_FILE} (not a training '
        'run\'s directory, or mistyped?): give --config, e.g. --config=configs/synth_1shot.py')
  if mode in READ_ONLY_MODES:
    raise ValueError(f'--workdir is required for --mode={mode}')
  raise ValueError(f'--config is required for --mode={mode}, e.g. '
                   '--config=configs/synth_1shot.py')


def override_message(error: Exception, argv: list[str]) -> str:
  """'--config.train.num_step=3: no field 'num_step' in the config; did you mean ...'"""
  text = str(error).strip('\'"').replace('\\n', '\n')
  lines = [line.strip().strip('\'"') for line in text.splitlines() if line.strip()]
  field = lines[0].strip('\'"\\') if lines else '?'
  hint = '; ' + lines[-1][0].lower() + lines[-1][1:] if len(lines) > 1 else ''
  flag = next((a.split('=', 1)[0] for a in argv if a.startswith('--config.')
               and field in a.split('=', 1)[0].split('.')), '--config.<field>')
  return f'{flag}: the config has no field {field!r}{hint}'


def _summary(config: ml_collections.ConfigDict) -> str:
  """Prints and returns the parameter table of the configured model (no FLOPs: shapes only)."""
  from mmnet_jax import train_state
  from mmnet_jax.models import registry
  from mmnet_jax.models import summary
  spec, backbone = registry.of(config), config.model.get('backbone')
  variables = jax.eval_shape(lambda: train_state.init_variables(registry.build(config), config))
  text = summary.parameter_table(variables['params'],
                                 freeze_backbone=config.model.get('freeze_backbone'),
                                 groups=spec.summary_groups,
                                 reference=spec.reference_params.get(backbone),
                                 reference_note=spec.reference_note)
  print(f'model: {spec.name} (backbone {backbone})')
  print(text)
  return text


def run(mode: str, config: ml_collections.ConfigDict, workdir: str | None,
        predict_args: dict | None = None):
  """Runs one mode; returns its result (results dict, summary text or prediction paths).

  `predict_args` (mode 'predict'): {'supports': ['IMG:MASK', ...], 'query': path,
  'output': path, 'mask_class': int or None}.
  """
  from mmnet_jax import config_checks
  if mode not in MODES:
    raise ValueError(f'unknown --mode={mode!r}; expected one of {MODES}')
  config_checks.check_config(config)   # every mode: one error before any work starts
  if mode == 'summary':
    return _summary(config)
  if not workdir:
    raise ValueError(f'--workdir is required for --mode={mode}')
  if not storage.is_remote(workdir) and os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f'--workdir={workdir}: is a file, expected a directory (or a new '
                             'path)')
  if mode == 'train':
    from mmnet_jax import train   # lazily: importing the training stack pulls in TensorFlow
    return train.train_and_evaluate(config, workdir)
  if mode == 'eval':
    from mmnet_jax import evaluate
    return evaluate.evaluate_workdir(config, workdir, results_file=None)
  if mode == 'predict':
    from mmnet_jax import predict
    args = dict(predict_args or {})
    for key in ('supports', 'query', 'output'):
      if not args.get(key):
        flag = '--support IMG:MASK' if key == 'supports' else f'--{key}'
        raise ValueError(f'--mode=predict needs {flag}')
    out = predict.predict_files(config, workdir, args['supports'], args['query'],
                                args['output'], mask_class=args.get('mask_class'))
    print(f'wrote {out["mask"]} and {out["overlay"]} ({out["shots"]}-shot, step {out["step"]}; '
          f'foreground {100 * out["foreground_fraction"]:.1f}% of the query)', flush=True)
    return out
  raise ValueError(f'unknown --mode={mode!r}; expected one of {MODES}')
