"""Metric writers: TensorBoard event files (tensorboardX) plus absl logging, behind clu's writer interface.

clu.metric_writers imports TensorFlow at import time, which this project deliberately does not install,
so the two writers it would provide are re-made here with the same `write_scalars` / `write_images` / `flush` /
`close` calls.
"""

from __future__ import annotations

from typing import Mapping

from absl import logging
import numpy as np
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

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Each [N, H, W, C] batch of images in [0, 1] as one TensorBoard image summary."""
    for name, value in images.items():
      self._tb.add_images(name, np.clip(np.asarray(value, np.float32), 0, 1), step, dataformats="NHWC")

  def flush(self) -> None:
    self._tb.flush()

  def close(self) -> None:
    self._tb.close()


class NullWriter:
  """MetricWriter's interface, writing nothing: the writer of the processes other than 0 in a multi-host run."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    del step, scalars

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    del step, images

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass
