"""COCO-20i, ResNet-101, 5-shot at 641. Arg: `fold=N,runlocal`."""

from configs import coco_1shot


def get_config(arg=None):
  c = coco_1shot.get_config(arg)
  c.shots = 5
  return c
