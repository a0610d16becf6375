"""Keep freed host memory in the process, so XLA:CPU's per-step buffers skip the page faults.

XLA:CPU allocates the temporary buffers of a compiled step afresh on each call, with malloc,
from its worker threads. glibc serves large blocks (and a worker thread's arena serves blocks
beyond its 64 MiB heaps) with a fresh mmap and unmaps them on free, so every step touches its
activations as new pages. Measured on the 2-core VM of docs/benchmarks.md: an elementwise step
on a 59 MB array page-faulted 15,104 times per call (every page) and ran at 6.6 GB/s; with one
arena and 2 GiB mmap/trim thresholds it faulted 0 times and ran at 40 GB/s. The cost: the
process keeps its peak heap instead of returning it to the OS, which a training or evaluation
process reaches on every step anyway.

Only glibc on Linux; elsewhere (macOS, musl) nothing changes. MMNET_KEEP_FREED_MEMORY=0 turns
it off. Call it first thing in a process, before JAX starts its threads: arenas that threads
already own are not merged.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_THRESHOLD = 2**31 - 1   # mallopt takes an int: the largest accepted value
ENV_SWITCH = 'MMNET_KEEP_FREED_MEMORY'


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed blocks; True if it did, False where it does not apply."""
  if os.environ.get(ENV_SWITCH, '1') == '0' or not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL('libc.so.6')
    libc.gnu_get_libc_version   # glibc only: musl has no mallopt arenas
  except (OSError, AttributeError):
    return False
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, _THRESHOLD), (_M_TRIM_THRESHOLD, _THRESHOLD))
  return all(libc.mallopt(param, value) == 1 for param, value in settings)
