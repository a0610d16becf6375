"""PFENet, PASCAL-5i, ResNet-50, 5-shot: pascal_1shot.py at K = 5 (PFENet trains each K on
its own). Arg: `fold=N,shots=K,runlocal`."""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg, fold=0, shots=5, runlocal=False)
  return default.get_config(f"fold={args['fold']},shots={args['shots']},"
                            f"runlocal={args['runlocal']}", model='pfenet')
