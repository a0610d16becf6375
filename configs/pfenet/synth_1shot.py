"""PFENet on the embedded synthetic benchmark, 1-shot: configs/synth_1shot.py's recipe (tiny
deep-stem ResNet trained from scratch, C = 64, fractional scales, 129 px) with the PFENet head.
Arg: `fold=N,shots=K,smoke,runlocal`:
* `smoke`: configs/synth_1shot.py's one-minute run (600/300 images, 300 steps at 65 px); it
  scored 18.87 mIoU (FB-IoU 53.56) against 8.63 / 8.84 for the shortcut baselines, 151 s wall
  on 2 shared cores (`python main.py --config=configs/pfenet/synth_1shot.py:smoke`).
* `runlocal`: the smallest config that runs every code path (tests); too small to learn."""

from configs import synth_1shot


def get_config(arg=None):
  return synth_1shot.get_config(arg, model='pfenet')
