"""Impossible configs end in one ConfigError before any work; the documented protocols run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from configs import synth_1shot
from mmnet_jax import cli
from mmnet_jax import config_checks
from mmnet_jax import evaluate
from mmnet_jax import protocols
from mmnet_jax import train_state
from mmnet_jax.models import mmnet


def test_the_documented_hsnet_protocol_runs_at_its_size():
  """`--config.eval.protocol=hsnet` on the shipped config: HSNet's 400 is not 8k + 1, so the
  first batch used to fail inside the model; the protocol's side is now 401 and runs."""
  config = default.get_config()
  config.eval.protocol = 'hsnet'
  assert config_checks.problems(config) == []
  assert protocols.resolve(config).input_size == 401
  tiny = synth_1shot.get_config('runlocal')
  tiny.eval.protocol = 'hsnet'
  assert config_checks.problems(tiny) == []
  size = protocols.resolve(tiny).input_size
  model = mmnet.build_model(tiny.model)
  variables = train_state.init_variables(model, tiny)
  batch = {'query_img': jnp.zeros((1, size, size, 3)),
           'support_imgs': jnp.zeros((1, 1, size, size, 3)),
           'support_labels': jnp.ones((1, 1, size, size), jnp.int32)}
  diff = jax.jit(evaluate.make_eval_step(model))(variables, batch)
  assert diff.shape == (1, size, size) and np.isfinite(diff).all()


def test_impossible_fields_are_listed_in_one_error():
  config = synth_1shot.get_config('runlocal')
  config.model.dtype = 'float16'
  config.model.attention_chunk = -1
  config.eval.protocol = 'pfenet2'
  config.eval.pictures = -1
  config.eval.resize = 'pad'
  config.eval.stretch_size = 400
  config.eval.sampling = 'random'
  config.eval.seeds = (1, -2)
  with pytest.raises(config_checks.ConfigError) as info:
    config_checks.check_config(config)
  text = str(info.value)
  assert text.startswith('config has 8 problems:'), text
  for expected in ("model.dtype: got 'float16', expected one of ['bfloat16', 'float32']",
                   'model.attention_chunk: got -1, expected an int >= 0',
                   "eval.protocol: got 'pfenet2', expected one of ['bam', 'hsnet', 'pfenet']",
                   'eval.pictures: got -1, expected an int >= 0',
                   "eval.resize: got 'pad', expected one of ['resize', 'test_resize']",
                   'eval.stretch_size: got 400, expected 0',
                   "eval.sampling: got 'random'", 'eval.seeds: got (1, -2)'):
    assert expected in text, text


@pytest.mark.parametrize('fields, message', [
    (dict(hsnet_original_size=True), 'eval.hsnet_original_size=True needs eval.protocol="hsnet"'),
    (dict(seed=5), r'eval.seed=5 is no longer read by the evaluator; set config.eval.seeds=\(5,\)'),
    (dict(num_episodes=-3), 'eval.num_episodes: got -3'),
])
def test_combinations_of_the_protocol_are_caught_by_the_checks(fields, message):
  """What only the resolved protocol shows used to surface at the first evaluation, after
  training (hours in); it is now one of the start-up ConfigError's lines."""
  config = synth_1shot.get_config('runlocal')
  for key, value in fields.items():
    config.eval[key] = value
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check_config(config)


def test_predict_and_summary_check_the_config_first(tmp_path):
  config = synth_1shot.get_config('runlocal')
  config.model.dtype = 'float16'
  for mode in ('predict', 'summary'):
    with pytest.raises(config_checks.ConfigError, match="model.dtype: got 'float16'"):
      cli.run(mode, config, str(tmp_path), {'supports': ['a:b'], 'query': 'q', 'output': 'o'})
