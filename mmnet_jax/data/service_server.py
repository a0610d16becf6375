"""tf.data service servers for dataset.pipeline='service' (data/service.py).

  python -m mmnet_jax.data.service_server dispatcher --port=5050
  python -m mmnet_jax.data.service_server worker --dispatcher=HOST:5050 [--port=0]

A worker runs the dataset graphs the training processes send it; those graphs hold only
TensorFlow ops (record files read with tf.io.read_file), so a worker needs TensorFlow and the
record directory (data/service.py `export_records`) readable at the same path, nothing of this
project. Imports TensorFlow only, so that a worker starts in seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time


def _tf():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for kind in ('GPU', 'TPU'):   # a worker's graphs run on CPU; leave accelerators to JAX
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      pass
  return tf


def _exit_with(parent_pid: int) -> None:
  # A worker orphaned by a killed training process would hold its cores forever.
  while os.getppid() == parent_pid:
    time.sleep(1.0)
  os._exit(0)  # pylint: disable=protected-access


def _parse(argv):
  p = argparse.ArgumentParser(prog='python -m mmnet_jax.data.service_server',
                              description=__doc__.split('\n\n')[0])
  sub = p.add_subparsers(dest='role', required=True)
  d = sub.add_parser('dispatcher', help='run a dispatcher')
  d.add_argument('--port', type=int, default=5050, help='port to listen on (0: any free one)')
  w = sub.add_parser('worker', help='run a worker')
  w.add_argument('--dispatcher', required=True, help='HOST:PORT of the dispatcher')
  w.add_argument('--port', type=int, default=0, help='port to listen on (0: any free one)')
  w.add_argument('--parent-pid', type=int, default=0,
                 help='exit when this process is gone (the local service sets it)')
  return p.parse_args(argv)


def main(argv=None) -> None:
  args = _parse(sys.argv[1:] if argv is None else argv)
  service = _tf().data.experimental.service
  if args.role == 'dispatcher':
    server = service.DispatchServer(service.DispatcherConfig(port=args.port))
    print(f'dispatcher listening at {server.target}', flush=True)
  else:
    address = args.dispatcher.split('://')[-1]
    server = service.WorkerServer(service.WorkerConfig(dispatcher_address=address,
                                                       port=args.port))
    print(f'worker of {address} started', flush=True)
    if args.parent_pid:
      threading.Thread(target=_exit_with, args=(args.parent_pid,), daemon=True).start()
  server.join()


if __name__ == '__main__':
  main()
