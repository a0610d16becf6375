"""HSNet on the embedded synthetic benchmark, 1-shot: configs/synth_1shot.py's data, steps,
batch, augmentation and evaluation (tiny ResNet trained from scratch, 129 px, PFENet protocol),
so the README rows differ only in the model and its optimiser: HSNet's Adam at a constant
1e-3. Arg: `fold=N,shots=K,smoke,runlocal`."""

from configs import synth_1shot


def get_config(arg=None):
  c = synth_1shot.get_config(arg, model='hsnet')
  c.train.optimizer = 'adam'
  c.train.lr_schedule = 'constant'
  c.train.base_lr = 1e-3
  c.train.lr_multiplier = 1.0
  c.train.weight_decay = 0.0
  return c
