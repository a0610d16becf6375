"""PFENet, COCO-20i, ResNet-101, 1-shot: PFENet's config/coco/coco_split0_resnet101.yaml
(641 crop, scale 0.8-1.25, batch 32, SGD lr 0.02 x 10, 50 epochs, fractional scales
1/0.5/0.25/0.125, no warmup; interleaved class split, use_split_coco): configs/coco_1shot.py's
recipe, which MM-Net's COCO YAML repeats. Arg: `fold=N,shots=K,runlocal`."""

from configs import coco_1shot


def get_config(arg=None):
  return coco_1shot.get_config(arg, model='pfenet')
