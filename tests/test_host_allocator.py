"""keep_freed_memory: glibc's malloc keeps freed blocks, so big buffers stop page-faulting."""

import os
import subprocess
import sys

import pytest

from mmnet_jax import host_allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates and frees a 64 MiB block from a new thread 10 times; prints the minor page faults
# of the last 5 rounds (each round touches all 16384 pages of the block).
_PROBE = r'''
import ctypes, resource, sys, threading
sys.path.insert(0, sys.argv[1])
from mmnet_jax import host_allocator
print(host_allocator.keep_freed_memory() if sys.argv[2] == '1' else False)
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 * 2**20
def round_trip():
  p = libc.malloc(size)
  ctypes.memset(p, 1, size)
  libc.free(p)
faults = []
for i in range(10):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  t = threading.Thread(target=round_trip); t.start(); t.join()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[5:]))
'''


def _probe(enable: bool) -> tuple[str, int]:
  out = subprocess.run([sys.executable, '-c', _PROBE, ROOT, '1' if enable else '0'],
                       capture_output=True, text=True, check=True).stdout.split()
  return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc only')
def test_freed_blocks_are_reused_without_page_faults():
  applied, faults_on = _probe(True)
  _, faults_off = _probe(False)
  assert applied == 'True'
  pages = 5 * 64 * 2**20 // 4096
  assert faults_off >= pages // 2   # glibc default: a fresh mmap, every page faulted again
  assert faults_on < pages // 20    # kept: the same pages, already mapped


def test_switch_off_by_environment(monkeypatch):
  monkeypatch.setenv(host_allocator.ENV_SWITCH, '0')
  assert host_allocator.keep_freed_memory() is False
