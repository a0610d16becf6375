"""Default configuration: MM-Net ResNet-50 on PASCAL-5i fold 0, 1-shot (the original recipe).

The reference config of the package (config checks, workdir configs, benchmarks use it);
`configs/default.py` re-exports it for the experiment files.

Experiment files import this, override fields, and accept one argument string of
comma-separated `key=value` items and flags, e.g. `configs/pascal_1shot.py:fold=2,runlocal`:
* `fold=N` selects the test fold; `shots=K` the number of supports;
* `runlocal` shrinks everything (tiny backbone, small crops, few steps and episodes) for a CPU.
"""

import ml_collections


def parse_arg(arg, **defaults):
  """Parses 'fold=2,runlocal' into a dict; values keep the type of their default."""
  out = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; expected one of {sorted(defaults)}')
    if not sep:
      out[key] = True
    elif isinstance(defaults[key], bool):
      out[key] = value.lower() in ('1', 'true', 'yes')
    else:
      out[key] = type(defaults[key])(value)
  return out


def get_config(arg=None):
  """Returns the default (PASCAL-5i, ResNet-50, 1-shot, fold 0) configuration."""
  args = parse_arg(arg, fold=0, shots=1, runlocal=False)
  c = ml_collections.ConfigDict()
  c.seed = 321
  c.shots = args['shots']
  c.init_from = ''            # orbax dir written by `python -m mmnet_jax.convert`
  c.init_from_format = 'backbone'   # 'backbone' (ImageNet backbone) or 'full' (a whole model)

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'pascal'
  c.dataset.data_dir = ''     # TFDS data dir ('' -> ~/tensorflow_datasets)
  c.dataset.manual_dir = ''   # where the user's official downloads are (docs/data.md)
  c.dataset.list_file = ''    # optional train list: PFENet line format, or a folder of HSNet lists
  c.dataset.val_list_file = ''
  c.dataset.fold = args['fold']
  c.dataset.num_folds = 4
  c.dataset.coco_convention = 'interleaved'
  c.dataset.min_class_pixels = 2 * 32 * 32
  c.dataset.filter_intersection = False   # False: PFENet (novel pixels as background)
  # Synthetic benchmark knobs (used when name == 'synthetic').
  c.dataset.synthetic = ml_collections.ConfigDict()
  c.dataset.synthetic.seed = 0
  c.dataset.synthetic.num_train = 3000
  c.dataset.synthetic.num_val = 1000
  c.dataset.synthetic.min_size = 128
  c.dataset.synthetic.max_size = 192
  c.dataset.synthetic.border_band = 2

  c.model = ml_collections.ConfigDict()
  c.model.backbone = 'resnet50'   # resnet50 | resnet101 (deep stem) | resnet50_tv | resnet101_tv | tiny
  c.model.reduce_dim = 256
  c.model.memory_slots = 50
  c.model.ppm_scales = (60, 30, 15, 8)
  c.model.bn_mode = 'train'       # 'train' (faithful: batch statistics) or 'frozen'
  c.model.freeze_backbone = True
  c.model.kshot_mask_compat = False
  c.model.feature_dropout = 0.5
  c.model.head_dropout = 0.1
  c.model.dtype = 'float32'       # computation dtype: 'float32' or 'bfloat16' (params stay float32)
  # Query pixels per block of the pixel-to-pixel matrices (attention, prior, reconstruction);
  # 0 = all at once. Blocks cut memory (-50% train step at 473) and run faster on CPU.
  c.model.attention_chunk = 1024

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 4
  c.train.crop_size = 473
  c.train.scale_min = 0.9
  c.train.scale_max = 1.1
  c.train.rotate_deg = 10.0
  c.train.epochs = 200
  c.train.num_steps = 0           # > 0 overrides epochs
  c.train.base_lr = 0.0025
  c.train.lr_multiplier = 10.0    # the original multiplies every parameter group by 10
  c.train.momentum = 0.9
  c.train.weight_decay = 1e-4
  c.train.poly_power = 0.9
  c.train.aux_weight = 1.0
  c.train.recon_weight = 0.1
  c.train.log_every = 50
  c.train.eval_every = 0          # steps between evaluations; 0 -> every 2 epochs (the original)
  c.train.checkpoint_every = 1000

  c.eval = ml_collections.ConfigDict()
  c.eval.protocol = 'pfenet'     # 'pfenet' (MM-Net's) | 'hsnet' | 'bam': mmnet_jax/protocols.py
  c.eval.size = 473
  c.eval.num_episodes = 0         # episodes per seed; 0 -> the protocol's (PFENet PASCAL: 5000)
  c.eval.seeds = ()               # () -> the protocol's seeds (PFENet 321, HSNet 0, BAM 5 seeds)
  c.eval.seed = 321               # legacy; the evaluator reads eval.seeds (see protocols.py)
  c.eval.sampling = ''            # '' -> the protocol's episode rule for the dataset
  c.eval.stretch_size = 0         # HSNet stretch side (8k + 1); 0 -> the protocol's (401)
  c.eval.hsnet_original_size = False   # HSNet --use_original_imgsize scoring
  c.eval.void_label = ''          # '' -> the protocol's: 'ignore' 255 (PFENet) or 'background' (HSNet COCO)
  c.eval.empty_classes = ''       # '' -> the protocol's ('zero': a class without episodes is IoU 0) or 'drop'
  c.eval.episodes_file = ''       # a saved episode list to evaluate exactly (eval_episodes*.json)
  c.eval.batch_size = 1
  c.eval.max_label_size = 512
  c.eval.resize = 'resize'        # 'resize' (PFENet Resize, resized_val: True) or 'test_resize'
  c.eval.pad_fill = 'black'       # eval canvas: 'black' (PFENet pastes before normalising) or 'mean'
  c.eval.select_on = 'test_fold'  # 'test_fold' (the original's choice) or 'last'
  c.eval.during_training_episodes = 1000
  c.eval.baselines = True
  c.eval.pictures = 8             # episode grids saved (workdir/pictures) and sent to TensorBoard

  if args['runlocal']:
    runlocal(c)
  return c


def runlocal(c):
  """Shrinks a config so that it runs on a CPU in minutes (smoke runs, tests, Colab cells)."""
  c.model.backbone = 'tiny'
  c.model.freeze_backbone = False
  c.model.reduce_dim = 32
  c.model.memory_slots = 16
  c.model.ppm_scales = (1.0, 0.5, 0.25, 0.125)
  c.train.batch_size = 4
  c.train.crop_size = 65
  c.train.num_steps = 20
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.checkpoint_every = 10
  c.eval.size = 65
  c.eval.num_episodes = 40
  c.eval.batch_size = 4
  c.eval.during_training_episodes = 40
  c.dataset.min_class_pixels = 64
  c.dataset.synthetic.num_train = 200
  c.dataset.synthetic.num_val = 120
  c.dataset.synthetic.min_size = 64
  c.dataset.synthetic.max_size = 96
