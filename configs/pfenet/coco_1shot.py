"""PFENet, COCO-20i, ResNet-101, 1-shot: PFENet's config/coco/coco_split0_resnet101.yaml
(641 crop, scale 0.8-1.25, batch 32, SGD lr 0.02 x 10, 50 epochs, fractional scales
1/0.5/0.25/0.125, no warmup; interleaved class split, use_split_coco).
Arg: `fold=N,shots=K,runlocal`."""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg, fold=0, shots=1, runlocal=False)
  return coco(default.get_config(f"fold={args['fold']},shots={args['shots']}", model='pfenet'),
              args['runlocal'])


def coco(c, runlocal=False):
  """PFENet's COCO fields on a PFENet config (`runlocal` shrinks it afterwards)."""
  c.dataset.name = 'coco'
  c.dataset.coco_convention = 'interleaved'   # use_split_coco: classes split + 1, + 5, ...
  c.model.backbone = 'resnet101'
  c.model.ppm_scales = (1.0, 0.5, 0.25, 0.125)
  c.train.crop_size = 641
  c.train.scale_min = 0.8
  c.train.scale_max = 1.25
  c.train.batch_size = 32
  c.train.base_lr = 0.02
  c.train.epochs = 50
  c.eval.size = 641
  c.eval.max_label_size = 640
  if runlocal:
    default.runlocal(c)
  return c
