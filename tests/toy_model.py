"""A third model that lives only in this file: the registry's extension seam, end to end.

`python main.py --config=tests/toy_model.py --workdir=DIR` trains it on the synthetic
benchmark; eval and predict find it again from DIR/config.json (config.model.name is this
module's dotted path, which the registry imports). Nothing outside this file knows it.

The model: per pixel, the colour distance of the query to the mean support foreground and
background colours, through one 1x1 convolution (6 inputs -> 2 logits). Its loss is plain
cross-entropy with an L2 term, so a run logs the terms train/ce and train/l2.
"""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from configs import default
from mmnet_jax.models import losses
from mmnet_jax.models import registry

NAME = 'tests.toy_model'


class ToyNet(nn.Module):
  l2_scale: float = 1.0

  @nn.compact
  def __call__(self, query_img, support_imgs, support_masks, train=False):
    del train
    fg = support_masks[..., None]                                     # (B, K, H, W, 1)
    def mean_colour(weights):
      total = jnp.sum(support_imgs * weights, axis=(1, 2, 3))
      return total / jnp.maximum(jnp.sum(weights, axis=(1, 2, 3)), 1.0)  # (B, 3)
    fg_colour, bg_colour = mean_colour(fg), mean_colour(1.0 - fg)
    features = jnp.concatenate([query_img - fg_colour[:, None, None],
                                query_img - bg_colour[:, None, None]], axis=-1)
    logits = nn.Dense(2, name='head')(jnp.abs(features))
    return {'logits': logits, 'l2': self.l2_scale * jnp.mean(jnp.square(logits))}


def config_defaults():
  m = ml_collections.ConfigDict()
  m.name = NAME
  m.l2_scale = 1.0
  m.freeze_backbone = False   # read by the optimiser; the toy has no backbone
  return m


def loss(outputs, query_label, train_config):
  ce = losses.cross_entropy_ignore(outputs['logits'], query_label)
  return ce + train_config.l2_weight * outputs['l2'], {'ce': ce, 'l2': outputs['l2']}


def check(c, config):
  del config
  c.num_in('model.l2_scale', 0, float('inf'), high_open=True)
  c.num_in('train.l2_weight', 0, float('inf'), high_open=True)


SPEC = registry.register(registry.ModelSpec(
    name=NAME,
    config_defaults=config_defaults,
    build=lambda model_config: ToyNet(l2_scale=model_config.l2_scale),
    loss=loss,
    train_defaults={'l2_weight': 1e-3},
    check=check,
    summary_groups=(('head', 'head', None),),
))


def get_config(arg=None):
  """The synthetic runlocal run with this model: `--config=tests/toy_model.py`."""
  c = default.get_config(arg or 'runlocal', model=NAME)   # this model's reference config
  c.dataset.name = 'synthetic'
  c.train.num_steps = 6
  c.train.eval_every = 6
  c.train.checkpoint_every = 6
  c.train.log_every = 3
  c.eval.num_episodes = 8
  c.eval.during_training_episodes = 8
  c.eval.pictures = 1
  return c
