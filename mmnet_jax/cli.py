"""What main.py runs for each --mode (importable from tests and notebooks)."""

from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')   # before TensorFlow is first imported

import jax
import ml_collections

MODES = ('train', 'eval', 'summary', 'predict')


PREEMPTED_EXIT_CODES = {'SIGTERM': 143, 'SIGINT': 130, 'SIGHUP': 129}   # 128 + signal number


def run(mode: str, config: ml_collections.ConfigDict, workdir: str | None,
        predict_args: dict | None = None):
  """Runs one mode; returns its result (results dict, summary text or prediction paths).

  `predict_args` (mode 'predict'): {'supports': ['IMG:MASK', ...], 'query': path,
  'output': path, 'mask_class': int or None}.
  """
  from mmnet_jax import config_checks
  from mmnet_jax import train   # lazily: importing the training stack pulls in TensorFlow
  if mode not in MODES:
    raise ValueError(f'unknown --mode={mode!r}; expected one of {MODES}')
  config_checks.check_config(config)   # every mode: one error before any work starts
  if mode == 'summary':
    from mmnet_jax.models import mmnet, summary
    variables = jax.eval_shape(lambda: train.init_variables(mmnet.build_model(config.model),
                                                            config))
    text = summary.parameter_table(variables['params'])
    print(text)
    return text
  if not workdir:
    raise ValueError(f'--workdir is required for --mode={mode}')
  if mode == 'train':
    return train.train_and_evaluate(config, workdir)
  if mode == 'eval':
    from mmnet_jax import evaluate
    return evaluate.evaluate_workdir(config, workdir)
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
