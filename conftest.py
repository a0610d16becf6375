"""Test-session setup: 8 CPU devices for sharding tests; the repo root importable (configs/)."""

import os
import sys

# Must happen before jax is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Before gcsfs is imported (it reads this once): its bucket-type probe speaks gRPC, which the
# GCS emulator of tests/test_gcs.py lacks, and would wait a minute per bucket.
os.environ.setdefault('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
