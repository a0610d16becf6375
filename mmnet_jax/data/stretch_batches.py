"""HSNet's evaluation batches ('stretch' scoring): images and labels stretched to a square.

HSNet's test transform resizes every image and its label to the protocol's square (aspect
ratio not kept); scoring is on that square or, with --use_original_imgsize, on the original
label. The batches have the keys of `pipeline.eval_batch` plus `eval_label_hw`
(docs/architecture.md).
"""

from __future__ import annotations

import math

import numpy as np

from mmnet_jax import conventions
from mmnet_jax.data import augment
from mmnet_jax.data import episodes as episodes_lib
from mmnet_jax.data import pipeline

# What a scored 255 query pixel is: left out ('ignore', PFENet) or background (HSNet's COCO).
VOID_LABELS = ('ignore', 'background')


def stretch_pair(image: np.ndarray, label: np.ndarray, size: int):
  """HSNet's test transform of one (image, binarised label) pair (augment.stretch)."""
  return augment.stretch(image, label, size)


def stretch_eval_batch(split, episode_list, size: int, label_side: int, original: bool,
                       positions, void_label: str = 'ignore') -> dict:
  """The eval batch of `positions` under HSNet's stretch scoring (pure; numpy arrays).

  Keys as `pipeline.eval_batch`, plus `eval_label_hw` (B, 2): the scored label is
  `eval_label[i, :h, :w]`, the stretched label (h = w = size) or, with `original`, the
  binarised original label. Positions past the end repeat the last episode with valid=False.
  void_label='background' scores the query's 255 pixels as background, as HSNet's COCO reader
  does (it sets every pixel that is not the class to 0); supports are unchanged, since the
  model reads only their foreground.
  """
  if void_label not in VOID_LABELS:
    raise ValueError(f'void_label={void_label!r}; expected one of {list(VOID_LABELS)}')
  if not episode_list:
    raise ValueError('stretch_eval_batch: the episode list is empty')
  k = len(episode_list[0].support_indices)
  out = pipeline.empty_batch(len(positions), k, size, eval_label_side=label_side,
                             with_label_hw=True)
  for i, pos in enumerate(positions):
    valid = pos < len(episode_list)
    ep = episode_list[pos if valid else -1]
    if len(ep.support_indices) != k:
      raise ValueError(f'episode {pos} has {len(ep.support_indices)} supports, episode 0 has {k}')
    image, label = pipeline.load_sample(split, ep.query_index)
    label = episodes_lib.binarise(label, ep.class_id)
    if void_label == 'background':
      label = np.where(label == conventions.IGNORE_LABEL, 0, label).astype(np.uint8)
    out['query_img'][i], out['query_label'][i] = stretch_pair(image, label, size)
    scored = label if original else out['query_label'][i]
    h, w = scored.shape
    if max(h, w) > label_side:
      raise ValueError(f'query {split.image_ids[ep.query_index]!r} of {split.name}/{split.split} '
                       f'has a {h}x{w} label; eval.max_label_size={label_side} must be >= '
                       f'{max(h, w)}')
    out['eval_label'][i, :h, :w] = scored
    out['eval_label_size'][i] = max(h, w)
    out['eval_label_hw'][i] = (h, w)
    for j, s in enumerate(ep.support_indices):
      image, label = pipeline.load_sample(split, s)
      out['support_imgs'][i, j], out['support_labels'][i, j] = stretch_pair(
          image, episodes_lib.binarise(label, ep.class_id), size)
    out['class_id'][i] = ep.class_id
    out['query_index'][i] = ep.query_index
    out['support_index'][i] = ep.support_indices
    out['valid'][i] = valid
  return out


def stretch_eval_dataset(split, episode_list, config, resolved, host_batch_size: int,
                         process_index: int = 0, process_count: int = 1):
  """Host batches of `stretch_eval_batch` over `episode_list` in order (tf.data, as
  `pipeline.eval_dataset`: global batch n holds episodes [n * G, (n + 1) * G), this process
  builds rows [p * host_batch, (p + 1) * host_batch)). `resolved`: the protocols.Resolved
  protocol (its scoring, input size and void label)."""
  global_batch = int(config.eval.batch_size)
  if host_batch_size * process_count != global_batch:
    raise ValueError(f'eval.batch_size={global_batch} must equal host_batch_size '
                     f'({host_batch_size}) x process_count ({process_count})')
  rows = range(process_index * host_batch_size, (process_index + 1) * host_batch_size)
  original = resolved.scoring == 'stretch_original'
  size = resolved.input_size
  side = int(config.eval.max_label_size) if original else size

  def make(n):
    return stretch_eval_batch(split, episode_list, size, side, original,
                              [int(n) * global_batch + r for r in rows], resolved.void_label)

  example = {k: np.empty((len(rows),) + v.shape[1:], v.dtype)
             for k, v in stretch_eval_batch(split, episode_list[:1], size, side, original,
                                            [0], resolved.void_label).items()}
  num_batches = math.ceil(len(episode_list) / global_batch)
  return pipeline.numpy_stream(num_batches, make, example)
