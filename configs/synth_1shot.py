"""The embedded synthetic benchmark, 1-shot: trains and evaluates in 650 s of CPU time
(about 10 minutes wall on 2 CPU cores). Tiny deep-stem ResNet trained from scratch (no
ImageNet weights exist offline), so the backbone is trainable here; everything else is the
MM-Net head and the original recipe's optimiser and augmentations at a small size.
Arg: `fold=N,shots=K,runlocal`."""

from configs import default


def get_config(arg=None):
  args = default.parse_arg(arg, fold=0, shots=1, runlocal=False)
  c = default.get_config(f"fold={args['fold']},shots={args['shots']}")
  c.dataset.name = 'synthetic'
  c.dataset.min_class_pixels = 200
  c.model.backbone = 'tiny'
  c.model.freeze_backbone = False
  c.model.reduce_dim = 64
  c.model.ppm_scales = (1.0, 0.5, 0.25, 0.125)
  c.train.crop_size = 129
  c.train.batch_size = 8
  c.train.num_steps = 1500
  c.train.base_lr = 0.005
  c.train.log_every = 25
  c.train.eval_every = 500
  c.train.checkpoint_every = 250
  c.eval.size = 129
  c.eval.num_episodes = 1000
  c.eval.during_training_episodes = 300
  c.eval.batch_size = 8
  c.eval.max_label_size = 192
  if args['runlocal']:
    default.runlocal(c)
  return c
