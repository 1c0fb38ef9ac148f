"""Metric sinks: TensorBoard event files (tensorboardX, no TensorFlow needed) plus a JSON-lines log."""

from __future__ import annotations

import json
import os

import jax
from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes scalars to `<logdir>/events.*` and appends them to `<logdir>/metrics.jsonl` (process 0 only)."""

  def __init__(self, logdir: str):
    self.logdir = logdir
    self._active = jax.process_index() == 0
    if self._active:
      os.makedirs(logdir, exist_ok=True)
      self._tb = SummaryWriter(logdir)
      self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    if not self._active:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), step)
    self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
    self._jsonl.flush()

  def flush(self) -> None:
    if self._active:
      self._tb.flush()

  def close(self) -> None:
    if self._active:
      self._tb.close()
      self._jsonl.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
