"""PASCAL-5i, ResNet-50, 5-shot: the original recipe (mmnet.md §3). Arg: `fold=N,runlocal`."""

from configs import default


def get_config(arg=None):
  c = default.get_config(arg)
  c.shots = 5
  return c
