"""COCO-20i, ResNet-101, 1-shot at 641: MM-Net's config/coco/coco_split0_resnet101.yaml (PFENet's
COCO recipe: scale 0.8-1.25, batch 32, SGD lr 0.02 x 10, 50 epochs, FEM bins 1/0.5/0.25/0.125 of
the feature map). Arg: `fold=N,shots=K,runlocal`."""

from configs import default


def get_config(arg=None, model='mmnet'):
  """The COCO recipe for `model` (configs/pfenet/coco_1shot.py passes 'pfenet')."""
  args = default.parse_arg(arg, fold=0, shots=1, runlocal=False)
  c = default.get_config(f"fold={args['fold']},shots={args['shots']}", model=model)
  c.dataset.name = 'coco'
  c.dataset.coco_convention = 'interleaved'   # use_split_coco: classes split + 1, + 5, ...
  c.model.backbone = 'resnet101'
  c.model.ppm_scales = (1.0, 0.5, 0.25, 0.125)   # both originals' COCO bins (fractions)
  c.train.crop_size = 641
  c.train.scale_min = 0.8
  c.train.scale_max = 1.25
  c.train.batch_size = 32
  c.train.base_lr = 0.02
  c.train.epochs = 50
  c.eval.size = 641
  c.eval.max_label_size = 640
  if args['runlocal']:
    default.runlocal(c)
  return c
