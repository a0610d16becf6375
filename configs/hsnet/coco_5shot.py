"""HSNet, COCO-20i, ResNet-101, 5-shot: coco_1shot.py evaluated at K = 5 (the vote).
Arg: `fold=N,shots=K,runlocal`."""

from configs.hsnet import coco_1shot
from mmnet_jax.default_config import parse_arg


def get_config(arg=None):
  args = parse_arg(arg, fold=0, shots=5, runlocal=False)
  return coco_1shot.get_config(f"fold={args['fold']},shots={args['shots']},"
                               f"runlocal={args['runlocal']}")
