"""Metric writers: TensorBoard event files (tensorboardX) plus absl logging, behind clu's writer interface.

clu.metric_writers imports TensorFlow at import time, which this project deliberately does not install,
so the two writers it would provide are re-made here with the same `write_scalars` / `flush` / `close` calls.
"""

from __future__ import annotations

from typing import Mapping

from absl import logging
from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes scalars to `logdir` (TensorBoard) and, optionally, to the log."""

  def __init__(self, logdir: str, *, log: bool = True):
    self._tb = SummaryWriter(logdir)
    self._log = log

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), step)
    if self._log:
      logging.info("[%d] %s", step, ", ".join(f"{k}={float(v):.4g}" for k, v in scalars.items()))

  def flush(self) -> None:
    self._tb.flush()

  def close(self) -> None:
    self._tb.close()


class NullWriter:
  """MetricWriter's interface, writing nothing: the writer of the processes other than 0 in a multi-host run."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    del step, scalars

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass
