"""PASCAL-5i, ResNet-50, 1-shot: the original recipe (mmnet.md §3). Arg: `fold=N,runlocal`."""

from configs import default


def get_config(arg=None):
  return default.get_config(arg)
