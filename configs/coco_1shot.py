"""COCO-20i, ResNet-101, 1-shot at 641 (PFENet's COCO recipe). Arg: `fold=N,runlocal`."""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg, fold=0, shots=1, runlocal=False)
  c = default.get_config(f"fold={args['fold']},shots={args['shots']}")
  c.dataset.name = 'coco'
  c.model.backbone = 'resnet101'
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
