"""Default configuration: MM-Net ResNet-50 on PASCAL-5i fold 0, 1-shot (the original recipe);
`get_config(arg, model='pfenet')` the same for another registered model (its config.model and
loss weights come from its spec).

The reference config of the package (config checks, workdir configs, benchmarks use it);
`configs/default.py` re-exports it for the experiment files.

Experiment files import this, override fields, and accept one argument string of
comma-separated `key=value` items and flags, e.g. `configs/pascal_1shot.py:fold=2,runlocal`:
* `fold=N` selects the test fold; `shots=K` the number of supports;
* `runlocal` shrinks everything (tiny backbone, small crops, few steps and episodes) for a CPU.
"""

import ml_collections

from mmnet_jax.models import registry


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


def get_config(arg=None, model='mmnet'):
  """Returns the default (PASCAL-5i, ResNet-50, 1-shot, fold 0) configuration of `model`
  (config.model.name: 'mmnet', 'pfenet' or a registered model, models/registry.py)."""
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
  # 'graph': decode and augment as TensorFlow ops (data/graph_pipeline.py); 'numpy': the
  # numpy/PIL builders in tf.numpy_function (data/pipeline.py). Different training streams.
  # 'service': the graph training stream built by tf.data service workers (data/service.py).
  c.dataset.pipeline = 'graph'
  c.dataset.service = ml_collections.ConfigDict()
  c.dataset.service.address = ''      # HOST:PORT of a dispatcher; '' -> one in this process
  c.dataset.service.local_workers = 2   # worker processes started here when address == ''
  c.dataset.service.reorder_window = 64   # later steps held before a missing one is rebuilt
  c.dataset.service.records_dir = ''    # record files the workers read ('' -> data_dir/...)
  # Synthetic benchmark knobs (used when name == 'synthetic').
  c.dataset.synthetic = ml_collections.ConfigDict()
  c.dataset.synthetic.seed = 0
  c.dataset.synthetic.num_train = 3000
  c.dataset.synthetic.num_val = 1000
  c.dataset.synthetic.min_size = 128
  c.dataset.synthetic.max_size = 192
  c.dataset.synthetic.border_band = 2

  spec = registry.get(model)
  c.model = spec.config_defaults()   # the model's fields: models/<name>_spec.py

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 4
  c.train.crop_size = 473
  c.train.scale_min = 0.9
  c.train.scale_max = 1.1
  c.train.rotate_deg = 10.0
  c.train.augment = 'pfenet'      # 'pfenet' (RandScale/Rotate/blur/flip/crop) | 'stretch' (HSNet)
  c.train.epochs = 200
  c.train.num_steps = 0           # > 0 overrides epochs
  c.train.optimizer = 'sgd'       # 'sgd' (torch SGD, momentum) | 'adam' (torch Adam: HSNet)
  c.train.lr_schedule = 'poly'    # 'poly' (the original's per-iteration poly) | 'constant'
  c.train.base_lr = 0.0025
  c.train.lr_multiplier = 10.0    # the original multiplies every parameter group by 10
  c.train.momentum = 0.9
  c.train.weight_decay = 1e-4
  c.train.poly_power = 0.9
  c.train.update(dict(spec.train_defaults))   # its loss weights (MM-Net: aux 1.0, recon 0.1)
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
  c.eval.stretch_size = 0         # HSNet stretch side; 0 -> the model's (HSNet 400, MM-Net 401)
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


def runlocal_model(c):
  """The model's own CPU size (its spec's `runlocal`; MM-Net: tiny backbone, C = 32)."""
  registry.of(c).runlocal(c.model)


def runlocal(c):
  """Shrinks a config so that it runs on a CPU in minutes (smoke runs, tests, Colab cells)."""
  runlocal_model(c)
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
