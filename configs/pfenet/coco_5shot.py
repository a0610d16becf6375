"""PFENet, COCO-20i, ResNet-101, 5-shot: coco_1shot.py at K = 5. Arg: `fold=N,shots=K,runlocal`."""

from configs import default
from configs.pfenet import coco_1shot


def get_config(arg=None):
  args = default.parse_arg(arg, fold=0, shots=5, runlocal=False)
  return coco_1shot.get_config(f"fold={args['fold']},shots={args['shots']}"
                               f"{',runlocal' if args['runlocal'] else ''}")
