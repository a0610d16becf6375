"""HSNet, COCO-20i, ResNet-101 (torchvision), 1-shot: the original's README (`--benchmark coco
--lr 1e-3 --bsz 40`; train.py's default backbone) with pascal_1shot.py's recipe; HSNet's COCO
folds are the interleaved split (class fold + 4v). Arg: `fold=N,shots=K,runlocal`."""

from configs.hsnet import pascal_1shot


def get_config(arg=None):
  c = pascal_1shot.get_config(arg, dataset='coco', backbone='resnet101_tv', batch_size=40)
  c.dataset.coco_convention = 'interleaved'
  return c
