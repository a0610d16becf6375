"""PFENet on the embedded synthetic benchmark, 1-shot: configs/synth_1shot.py's recipe (tiny
deep-stem ResNet trained from scratch, C = 64, fractional scales, 129 px) with the PFENet head.
Arg: `fold=N,shots=K,smoke,runlocal`:
* `smoke`: configs/synth_1shot.py's one-minute run (600/300 images, 300 steps at 65 px); it
  scored 18.87 mIoU (FB-IoU 53.56) against 8.63 / 8.84 for the shortcut baselines, 151 s wall
  on 2 shared cores (`python main.py --config=configs/pfenet/synth_1shot.py:smoke`).
* `runlocal`: the smallest config that runs every code path (tests); too small to learn."""

from configs import default
from configs import synth_1shot


def get_config(arg=None):
  args = default.parse_arg(arg, fold=0, shots=1, smoke=False, runlocal=False)
  c = default.get_config(f"fold={args['fold']},shots={args['shots']}", model='pfenet')
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
  if args['smoke']:
    synth_1shot.smoke(c)
  if args['runlocal']:
    default.runlocal(c)
  return c
