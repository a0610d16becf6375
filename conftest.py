"""Test-session setup: 8 CPU devices for sharding tests; the repo root importable (configs/)."""

import os
import sys

# Must happen before jax is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent XLA compilation cache for the whole session, inherited by the subprocesses the
# tests start: most tests build fresh jit wrappers of the same tiny programs, and recompiling
# them was most of the suite's time. A cached executable is the same program (same results).
# A fresh directory per session, so nothing carries over between runs or jax versions.
# Each pytest-xdist worker makes its own (jax writes entries in place, not atomically).
if 'PYTEST_XDIST_WORKER' in os.environ or 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import atexit
  import shutil
  import tempfile
  _owner = os.environ.get('PYTEST_XDIST_WORKER', 'main')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix=f'mmnet_xla_cache_{_owner}_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], True)
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
# Before gcsfs is imported (it reads this once): its bucket-type probe speaks gRPC, which the
# GCS emulator of tests/test_gcs.py lacks, and would wait a minute per bucket.
os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
