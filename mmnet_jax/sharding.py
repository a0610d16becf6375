"""Device mesh and data-parallel shardings (jax.jit over a Mesh; the replacement of pmap).

Works from jax 0.7.2 to 0.12: the mesh axis is always Auto (0.10+ defaults to Explicit, under
which a conv on a sharded batch with unplaced parameters fails), parameters are replicated and
batches are split along their leading axis.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins a multi-process run; returns whether one was joined.

  Without arguments, JAX detects the cluster (TPU pods, SLURM, Open MPI, ...) and raises
  ValueError when there is none: that is the single-host case, and a no-op here. Every other
  error propagates (e.g. a call after the backend started, or an unreachable coordinator):
  swallowing it would turn one N-host run into N independent runs that overwrite each other.
  Must run before anything touches the backend (jax.devices, computations).
  """
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  except ValueError:
    if coordinator_address is not None:
      raise
    return False
  return True


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  axis_type = getattr(jax.sharding, 'AxisType', None)
  if axis_type is not None:
    try:
      return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(axis_type.Auto,))
    except TypeError:   # versions whose Mesh takes no axis_types
      pass
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of parameters and optimiser state: a full copy on every device."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding of batch arrays: the leading (episode) axis split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def host_batch_size(global_batch: int, mesh: Mesh) -> int:
  """This process's share of a global batch; errors name the flag when it does not divide."""
  devices = mesh.devices.size
  if global_batch % devices:
    raise ValueError(f'batch size {global_batch} is not divisible by the {devices} devices '
                     'of the mesh (config train.batch_size / eval.batch_size)')
  return global_batch // jax.process_count()


def to_global(host_batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global jax arrays sharded over the mesh (one host or many)."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in host_batch.items()}


def replicate(tree, mesh: Mesh):
  """Places a pytree replicated on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a global batch array, in order (the host batch).

  The rows are those `batch_sharded` gives this process's devices, whatever `x`'s own
  sharding (a replicated output would otherwise hand every process the whole batch).
  """
  if jax.process_count() == 1:
    return np.asarray(x)
  mesh = getattr(x.sharding, 'mesh', None)
  if mesh is None:
    raise ValueError(f'local_rows needs an array with a NamedSharding, got {x.sharding}')
  wanted = batch_sharded(mesh)
  if not x.sharding.is_equivalent_to(wanted, x.ndim):
    x = jax.jit(lambda a: a, out_shardings=wanted)(x)
  shards = {}
  for shard in x.addressable_shards:
    start = shard.index[0].start or 0
    shards.setdefault(start, np.asarray(shard.data))
  return np.concatenate([shards[k] for k in sorted(shards)])


def sum_across_processes(vector: np.ndarray) -> np.ndarray:
  """Sum of a host numpy vector over all processes (identity on one process)."""
  if jax.process_count() == 1:
    return vector
  from jax.experimental import multihost_utils
  gathered = multihost_utils.process_allgather(np.asarray(vector))   # (processes, n)
  return np.asarray(gathered).sum(axis=0)
