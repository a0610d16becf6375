"""PFENet, PASCAL-5i, ResNet-50, 1-shot: PFENet's config/pascal/pascal_split0_resnet50.yaml
(473 crop, batch 4, SGD lr 0.0025 x 10, 200 epochs, scales 60/30/15/8, no warmup: the MM-Net
recipe's numbers). Arg: `fold=N,shots=K,runlocal`."""

from configs import default


def get_config(arg=None):
  return default.get_config(arg, model='pfenet')
