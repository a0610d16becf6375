"""Input-pipeline throughput next to what the train step consumes: `python -m mmnet_jax.benchmark_input`.

Builds a synthetic split with real-size images (375-500 px sides, PNG-encoded in TFDS
array_record, as the benchmark builder writes them) in a temporary data dir, then times the real
tf.data pipelines of `data/pipeline.py` on this machine:
* train, full PFENet augmentation (RandScale, RandRotate, blur, flip, crop to --size), 1-shot and
  5-shot, batches of --batch-size;
* eval, PFENet pad-resize to --size, 1-shot;
and the jitted train step (forward, backward, SGD update) of --model at --size, batch
--batch-size, 1-shot, on random batches: its episodes/s is what the input must supply.

The first batch of each stream (tf.data start-up, thread pools) and the first --warmup train
steps (compilation) are not timed. Prints a table and, with --output, writes JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from mmnet_jax import workdir_io


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--size', type=int, default=473, help='train crop and eval canvas side')
  p.add_argument('--batch-size', type=int, default=4, help='episodes per batch (MM-Net: 4)')
  p.add_argument('--batches', type=int, default=6, help='timed batches per input stream')
  p.add_argument('--model', default='resnet50', choices=['resnet50', 'tiny', 'none'],
                 help="train-step backbone ('none': skip the train step)")
  p.add_argument('--train-steps', type=int, default=2, help='timed train steps')
  p.add_argument('--warmup', type=int, default=1, help='untimed train steps (compilation)')
  p.add_argument('--min-image', type=int, default=375, help='smallest synthetic image side')
  p.add_argument('--max-image', type=int, default=500, help='largest synthetic image side')
  p.add_argument('--num-images', type=int, default=120, help='synthetic images per split')
  p.add_argument('--min-class-pixels', type=int, default=2048, help='pool size rule')
  p.add_argument('--data-dir', default='', help="TFDS data dir ('' -> a temporary one)")
  p.add_argument('--output', default='', help='write the results as JSON here')
  return p.parse_args(argv)


def make_config(args, data_dir: str):
  """The default (MM-Net) config on a synthetic split of real-size images."""
  from mmnet_jax import default_config as default
  c = default.get_config()
  c.dataset.name = 'synthetic'
  c.dataset.data_dir = data_dir
  c.dataset.synthetic.num_train = args.num_images
  c.dataset.synthetic.num_val = args.num_images
  c.dataset.synthetic.min_size = args.min_image
  c.dataset.synthetic.max_size = args.max_image
  c.dataset.min_class_pixels = args.min_class_pixels
  c.train.crop_size = args.size
  c.train.batch_size = args.batch_size
  c.eval.size = args.size
  c.eval.batch_size = args.batch_size
  c.eval.max_label_size = max(args.max_image, 8)
  if args.model == 'tiny':
    c.model.backbone = 'tiny'
    c.model.freeze_backbone = False
  return c


def time_stream(stream, batches: int, batch_size: int) -> dict:
  """Episodes/s of `stream` over `batches` batches after an untimed first one."""
  next(stream)
  start = time.perf_counter()
  for _ in range(batches):
    next(stream)
  seconds = time.perf_counter() - start
  stream.close()
  return {'episodes_per_s': batches * batch_size / seconds, 'seconds': seconds,
          'episodes': batches * batch_size}


def usable_pool(split, classes, config, shots):
  """The pool over the classes of `classes` with >= shots + 1 images (a small synthetic split
  lacks some; the cost of an episode does not depend on its class)."""
  from mmnet_jax.data import pipeline
  pool = pipeline.train_pool(split, classes, config)
  usable = [c for c in classes if len(pool.support_lists[c]) >= shots + 1]
  if not usable:
    raise ValueError(f'no class of {split.name}/{split.split} has {shots + 1} images: raise '
                     f'--num-images')
  return pipeline.train_pool(split, usable, config)


def input_rates(config, args) -> dict:
  """Episodes/s of the train (1- and 5-shot) and eval (1-shot) pipelines."""
  from mmnet_jax.data import dataset_registry
  from mmnet_jax.data import datasets
  from mmnet_jax.data import episodes as episodes_lib
  from mmnet_jax.data import pipeline
  train_classes, test_classes = datasets.fold_classes('synthetic', config.dataset.fold)
  out = {}
  train_split = dataset_registry.open_split(config.dataset, 'train')
  for shots in (1, 5):
    c = config.copy_and_resolve_references()
    c.shots = shots
    pool = usable_pool(train_split, train_classes, c, shots)
    stream = pipeline.train_dataset(pool, c, host_batch_size=args.batch_size)
    out[f'train_{shots}shot'] = time_stream(stream, args.batches, args.batch_size)
  val = dataset_registry.open_split(config.dataset, 'val')
  pool = usable_pool(val, test_classes, config, 1)
  episode_list = episodes_lib.eval_episodes(pool, 1, (args.batches + 1) * args.batch_size, 0)
  stream = pipeline.eval_dataset(val, episode_list, config, host_batch_size=args.batch_size)
  out['eval_1shot'] = time_stream(stream, args.batches, args.batch_size)
  return out


def train_step_rate(config, args) -> dict:
  """Episodes/s of the jitted train step (1-shot) on a random batch of the train shapes."""
  import jax
  import jax.numpy as jnp
  from mmnet_jax import train
  from mmnet_jax import train_state
  from mmnet_jax.models import registry
  model = registry.build(config)
  rng = np.random.default_rng(0)
  b, s, k = args.batch_size, args.size, 1
  label = rng.integers(0, 2, (b, s, s)).astype(np.int32)
  batch = {
      'query_img': jnp.asarray(rng.standard_normal((b, s, s, 3)), jnp.float32),
      'query_label': jnp.asarray(label),
      'support_imgs': jnp.asarray(rng.standard_normal((b, k, s, s, 3)), jnp.float32),
      'support_labels': jnp.asarray(label[:, None]),
  }
  start = time.perf_counter()
  state, tx = train_state.create_state(model, config, total_steps=100)
  step = jax.jit(train.make_train_step(model, tx, config))
  for _ in range(args.warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(args.train_steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  return {'model': args.model, 'device': str(jax.devices()[0].device_kind),
          'episodes_per_s': args.train_steps * b / seconds,
          'seconds_per_step': seconds / args.train_steps,
          'init_and_compile_seconds': compile_seconds, 'steps': args.train_steps}


def run(args) -> dict:
  """Builds the data, measures, returns the results dict."""
  with tempfile.TemporaryDirectory(prefix='mmnet_bench_') as tmp:
    data_dir = args.data_dir or tmp
    config = make_config(args, data_dir)
    from mmnet_jax.data import dataset_registry
    start = time.perf_counter()
    dataset_registry.open_split(config.dataset, 'train')
    dataset_registry.open_split(config.dataset, 'val')
    build_seconds = time.perf_counter() - start
    results = {
        'size': args.size, 'batch_size': args.batch_size,
        'images': f'synthetic {args.min_image}-{args.max_image} px, png',
        'cpu_count': os.cpu_count(), 'machine': platform.processor() or platform.machine(),
        'data_build_seconds': build_seconds,
        'input': input_rates(config, args),
    }
    if args.model != 'none':
      results['train_step'] = train_step_rate(config, args)
  return results


def format_results(results: dict) -> str:
  """A small table: pipeline episodes/s and the train step's consumption."""
  lines = [f'input pipeline at {results["size"]}x{results["size"]}, batch '
           f'{results["batch_size"]}, {results["cpu_count"]} CPU cores, '
           f'{results["images"]} images']
  for name, r in results['input'].items():
    lines.append(f'  {name:<14} {r["episodes_per_s"]:8.2f} episodes/s')
  step = results.get('train_step')
  if step:
    lines.append(f'train step ({step["model"]}, 1-shot, {step["device"]}): '
                 f'{step["episodes_per_s"]:8.2f} episodes/s '
                 f'({step["seconds_per_step"]:.2f} s/step; init+compile '
                 f'{step["init_and_compile_seconds"]:.0f} s)')
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  results = run(args)
  print(format_results(results), flush=True)
  if args.output:
    workdir_io.write_json_atomic(args.output, results)
  return results


if __name__ == '__main__':
  main()
