"""Logging for main.py: mmnet_jax's own INFO lines shown, other libraries' INFO chatter not.

orbax logs every save at INFO and TFDS every read, so main.py used to set absl to WARNING,
which hid this project's INFO lines as well. Now absl stays at INFO and a filter on its handler
drops INFO (and below) from code outside mmnet_jax and main.py, and TFDS's "Using custom data
configuration" warning: every dataset here is a custom config by design (the synthetic
generator's knobs, the PASCAL/COCO list digests), so it said nothing, once per split opened.
"""

from __future__ import annotations

import logging as std_logging
import os

from absl import logging

_OURS = (os.path.dirname(os.path.abspath(__file__)) + os.sep,
         os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'main.py'))
_SILENCED_WARNINGS = ('Using custom data configuration',)


def keep(record: std_logging.LogRecord) -> bool:
  """Whether a log record is shown: warnings and errors (bar the silenced ones) from anywhere,
  INFO and DEBUG from this project only."""
  if record.levelno >= std_logging.WARNING:
    return not str(record.msg).startswith(_SILENCED_WARNINGS)
  path = os.path.abspath(record.pathname or '')
  return path.startswith(_OURS[0]) or path == _OURS[1]


class _Filter(std_logging.Filter):

  def filter(self, record: std_logging.LogRecord) -> bool:
    return keep(record)


def configure() -> None:
  """absl at INFO with the filter on its handler (idempotent)."""
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _Filter) for f in handler.filters):
    handler.addFilter(_Filter())
