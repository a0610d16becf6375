"""Row-chunked evaluation of per-query-pixel computations (the memory option of MM-Net).

The attention of the activation propagation (B, HW_q, HW_s), the prior's cosine matrix and
the reconstruction logits are quadratic in the number of pixels; every output row depends on
its own query row only. `map_rows` evaluates such a function on chunks of rows with
`lax.map`, so only one (B, chunk, HW_s) block is alive at a time, and rematerialises each chunk
in the backward pass (`jax.checkpoint`), so training keeps no stack of blocks either.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def map_rows(fn: Callable, rows, chunk: int):
  """fn(rows) with the row axis (axis 1 of every leaf) processed `chunk` rows at a time.

  Args:
    fn: maps a pytree of (B, R, ...) arrays to a pytree of (B, R, ...) arrays, row-wise
      (output row r depends only on input row r and on values fn closes over).
    rows: pytree of (B, R, ...) arrays sharing B and R.
    chunk: at most this many rows per block; <= 0 or >= R calls fn once (no chunking).
      The blocks are equal, ceil(R / ceil(R / chunk)) rows, so the padding is under one row
      per block (3600 rows at chunk 1024: 4 blocks of 900, not 4 of 1024 with 496 padded).
  Returns:
    fn(rows), equal to the unchunked result up to float reassociation.
  """
  leaves = jax.tree_util.tree_leaves(rows)
  num_rows = leaves[0].shape[1]
  if chunk <= 0 or chunk >= num_rows:
    return fn(rows)
  blocks = -(-num_rows // chunk)
  chunk = -(-num_rows // blocks)
  pad = blocks * chunk - num_rows

  def split(x):  # (B, R, ...) -> (blocks, B, chunk, ...); edge rows pad (finite, then dropped)
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), mode='edge')
    return jnp.moveaxis(x.reshape(x.shape[0], blocks, chunk, *x.shape[2:]), 1, 0)

  def merge(y):  # (blocks, B, chunk, ...) -> (B, R, ...)
    y = jnp.moveaxis(y, 0, 1)
    return y.reshape(y.shape[0], blocks * chunk, *y.shape[3:])[:, :num_rows]

  out = jax.lax.map(jax.checkpoint(fn), jax.tree_util.tree_map(split, rows))
  return jax.tree_util.tree_map(merge, out)
