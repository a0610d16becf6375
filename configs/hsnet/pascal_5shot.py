"""HSNet, PASCAL-5i, ResNet-50, 5-shot: the 1-shot model's recipe evaluated at K = 5 (HSNet
trains 1-shot only and votes over the 5 shots at test time; training here at K = 5 averages
the five 1-shot losses). Arg: `fold=N,shots=K,runlocal`."""

from configs.hsnet import pascal_1shot
from mmnet_jax.default_config import parse_arg


def get_config(arg=None):
  args = parse_arg(arg, fold=0, shots=5, runlocal=False)
  return pascal_1shot.get_config(f"fold={args['fold']},shots={args['shots']},"
                                 f"runlocal={args['runlocal']}")
