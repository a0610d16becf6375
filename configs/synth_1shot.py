"""The embedded synthetic benchmark, 1-shot: trains and evaluates in 650 s of CPU time
(about 10 minutes wall on 2 CPU cores). Tiny deep-stem ResNet trained from scratch (no
ImageNet weights exist offline), so the backbone is trainable here; everything else is the
MM-Net head and the original recipe's optimiser and augmentations at a small size.
Arg: `fold=N,shots=K,smoke,runlocal`:
* `smoke`: the README's one-minute run that shows learning: the same model on a 600/300-image
  build of the benchmark, 300 steps at 65 px with twice the learning rate, 296 episodes; it
  scored 18.24 mIoU against 8.63 / 8.84 for the shortcut baselines (105 s wall on 2 cores).
* `runlocal`: the smallest config that runs every code path (tests, notebook smoke); it is too
  small to learn (predicts background: mIoU 0.00)."""

from configs import default


def get_config(arg=None, model='mmnet'):
  """The benchmark's recipe for `model` (configs/pfenet/synth_1shot.py passes 'pfenet')."""
  args = default.parse_arg(arg, fold=0, shots=1, smoke=False, runlocal=False)
  c = default.get_config(f"fold={args['fold']},shots={args['shots']}", model=model)
  c.dataset.name = 'synthetic'
  c.dataset.min_class_pixels = 200
  c.model.backbone = 'tiny'
  c.model.freeze_backbone = False
  if 'reduce_dim' in c.model:   # the FEM models' head width and scales (not HSNet's fields)
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
  if args['smoke']:
    smoke(c)
  if args['runlocal']:
    default.runlocal(c)
  return c


def smoke(c):
  """About a minute on 2 CPU cores, and the held-out mIoU clearly above the baselines."""
  c.dataset.synthetic.num_train = 600   # a 15 s build instead of 65 s
  c.dataset.synthetic.num_val = 300
  c.train.crop_size = 65
  c.train.num_steps = 300
  c.train.base_lr = 0.01
  c.train.eval_every = 300
  c.train.checkpoint_every = 300
  c.eval.size = 65
  c.eval.during_training_episodes = 48   # the checkpoint selection; the final eval is below
  c.eval.num_episodes = 296
  c.eval.pictures = 4
