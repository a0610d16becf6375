"""HSNet, PASCAL-5i, ResNet-50 (torchvision), 1-shot: the original's train.py and README
(`--benchmark pascal --lr 1e-3 --bsz 20`, niter 2000): Adam at a constant 1e-3, batch 20,
400x400 stretched inputs without augmentation, frozen ImageNet backbone, evaluated with the
`hsnet` protocol (1,000 episodes, seed 0, stretch to 400). Arg: `fold=N,shots=K,runlocal`.

HSNet's epoch is one pass over its list of (image, class) pairs; ours is one pass over the
training images, so `train.epochs = 2000` is fewer steps than the original's 2000 epochs where
images hold more than one class (set `train.num_steps` to match a step count).
"""

from configs import default


def hsnet_recipe(c) -> None:
  """The fields HSNet's train.py and test.py set, on a config of model 'hsnet'."""
  c.train.crop_size = 400          # data/dataset.py img_size=400
  c.train.augment = 'stretch'      # transforms.Resize((400, 400)): no augmentation
  c.train.optimizer = 'adam'       # optim.Adam(model.parameters(), lr): torch's defaults
  c.train.lr_schedule = 'constant'
  c.train.base_lr = 1e-3
  c.train.lr_multiplier = 1.0
  c.train.weight_decay = 0.0
  c.train.batch_size = 20
  c.train.epochs = 2000
  c.eval.protocol = 'hsnet'
  c.eval.size = 400
  c.eval.seed = 321                # legacy field; the protocol's seed 0 is used


def get_config(arg=None, dataset='pascal', backbone='resnet50_tv', batch_size=20):
  """HSNet's recipe on `dataset` (coco_*.py pass 'coco', ResNet-101 and batch 40)."""
  args = default.parse_arg(arg, fold=0, shots=1, runlocal=False)
  c = default.get_config(f"fold={args['fold']},shots={args['shots']}", model='hsnet')
  c.dataset.name = dataset
  c.model.backbone = backbone
  hsnet_recipe(c)
  c.train.batch_size = batch_size
  if args['runlocal']:
    default.runlocal(c)
    c.eval.stretch_size = c.eval.size   # the CPU-sized stretch (HSNet's 400 otherwise)
  return c
