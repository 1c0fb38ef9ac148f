"""Fault injection for the reliability suite: run an entry point in this process, and SIGKILL it at a chosen
moment or make its writes fail with a full disk.

  python -m tests.reliability.faults <module> [args...]    e.g. star_jax.main --config=... --workdir=...

Environment (one of each at most):
  FAULT_KILL="write:<substring>:<n>"  SIGKILL at the n-th atomic file write (star_jax.io: every JSON/JSONL/
                                      markdown/CSV/PNG output) whose path contains <substring>, once its
                                      temporary file is complete and before it is renamed over the destination
  FAULT_KILL="ckpt:<substring>:<n>"   SIGKILL at the n-th Orbax checkpoint commit whose step directory contains
                                      <substring>: every array written, the rename that commits it not done
  FAULT_KILL="time:<seconds>"         SIGKILL after <seconds> of wall time (seeded random moments)
  FAULT_ENOSPC="write:<substring>"    such writes fail half-way with OSError(ENOSPC)
  FAULT_ENOSPC="ckpt:<substring>"     such checkpoint commits fail with OSError(ENOSPC)

The kill is a real SIGKILL of this process (os.kill(getpid(), SIGKILL)): no handler, no cleanup, no flush.
`pattern` substrings use "/" as the separator.
"""

from __future__ import annotations

import builtins
import errno
import os
import runpy
import signal
import sys
import threading


def _kill() -> None:
  sys.stdout.flush()
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)


class _Trigger:
  """Counts the events of one kind whose path contains a substring; fires at the n-th."""

  def __init__(self, spec: str):
    self.kind, self.pattern, n = spec.split(":", 2)
    self.remaining = int(n)

  def hit(self, kind: str, path: str) -> bool:
    if kind != self.kind or self.pattern not in str(path).replace(os.sep, "/"):
      return False
    self.remaining -= 1
    return self.remaining == 0


def _enospc(path) -> OSError:
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class _HalfWritingFile:
  """A text file whose first write stores half of its data and then fails as on a full disk."""

  def __init__(self, f):
    self._f = f

  def write(self, text):
    self._f.write(text[:len(text) // 2])
    self._f.flush()
    raise _enospc(self._f.name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._f.close()

  def __getattr__(self, name):
    return getattr(self._f, name)


def install(kill: str | None, enospc: str | None) -> None:
  """Patch star_jax.io and Orbax's commit step for the faults asked for (see the module docstring)."""
  from orbax.checkpoint._src.path import atomicity  # noqa: PLC0415 (only the fault-injecting process needs it)

  from star_jax import io  # noqa: PLC0415

  trigger = _Trigger(kill) if kill and not kill.startswith("time:") else None
  if kill and kill.startswith("time:"):
    timer = threading.Timer(float(kill.split(":", 1)[1]), _kill)
    timer.daemon = True
    timer.start()
  full_kind, _, full_pattern = (enospc or "").partition(":")

  class _Os:
    """star_jax.io's `os`, with `replace` (the commit of an atomic write) watched."""

    def __getattr__(self, name):
      return getattr(os, name)

    def replace(self, src, dst):
      if trigger is not None and trigger.hit("write", dst):
        _kill()
      os.replace(src, dst)

  def open_(file, mode="r", *args, **kwargs):
    f = builtins.open(file, mode, *args, **kwargs)
    if full_kind == "write" and "w" in mode and full_pattern in str(file).replace(os.sep, "/"):
      return _HalfWritingFile(f)
    return f

  def savefig_guard(path):
    if full_kind == "write" and full_pattern in str(path).replace(os.sep, "/"):
      raise _enospc(path)

  io.os = _Os()
  io.open = open_
  real_save_figure = io.save_figure

  def save_figure(fig, path, dpi=120):
    savefig_guard(path)
    real_save_figure(fig, path, dpi)
  io.save_figure = save_figure

  real_finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self, *args, **kwargs):
    final = str(self.get_final())
    if trigger is not None and trigger.hit("ckpt", final):
      _kill()
    if full_kind == "ckpt" and full_pattern in final.replace(os.sep, "/"):
      raise _enospc(final)
    return await real_finalize(self, *args, **kwargs)
  atomicity.AtomicRenameTemporaryPath.finalize = finalize


def main() -> None:
  install(os.environ.get("FAULT_KILL"), os.environ.get("FAULT_ENOSPC"))
  module, args = sys.argv[1], sys.argv[2:]
  sys.argv = [module] + args
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
