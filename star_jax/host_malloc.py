"""glibc malloc settings that let XLA:CPU reuse its per-step buffers instead of faulting them in afresh.

XLA:CPU allocates a compiled step's temporary buffer (359 MiB for the reference training step of
benchmarks/train_step.py) with malloc on every execution and frees it afterwards. glibc serves such a block
from a private mmap (always so on XLA's worker threads, whose per-thread arenas cannot hold it) and returns
it with munmap, so the kernel faults in and zeroes every 4 KiB page again on every step: ~96k page faults
and 0.22-0.24 s of kernel CPU time per reference step. Three mallopt(3) settings keep those pages mapped:

  M_ARENA_MAX = 1            every thread allocates from the main arena, which grows with brk;
  M_MMAP_MAX = 0             no allocation is served by a private mmap;
  M_TRIM_THRESHOLD = 2**31-1 freed memory at the top of the heap (up to 2 GiB) stays mapped for reuse.

Measured on the reference step (2-core CPU, benchmarks/RESULTS.md): 95,673 -> 0 page faults per step, kernel
time 0.24 -> 0.004 s per step, single-step median 1.08-1.11 -> 0.94-1.05 s; `make demo`'s job took 296 s
instead of 322 s. The price: memory the process frees is kept for reuse instead of being returned to the OS
(the resident size stays at its peak), and all threads share one malloc arena, which made the KV-cache
sampler 0.6-6% slower (three pairs of processes).

A thread is bound to its arena at its first allocation, and XLA creates its thread pools together with
the JAX backend, so this must run before the first JAX computation: the entry points (`star_jax.main`,
`experiments.sweep`, `experiments.pg_star_arithmetic.compare`, `experiments.prm_arithmetic.study`), both benchmarks and the notebooks call
it first thing. It applies only where JAX will run on the CPU (JAX_PLATFORMS names cpu first, or no GPU/TPU
plugin is installed): on accelerator hosts the step buffers live in device memory and a single host arena
would only add contention. Setting STAR_JAX_SYSTEM_MALLOC=1 keeps glibc's defaults. Where the C library is
not glibc (macOS, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import pkgutil
import platform

from absl import logging

OPT_OUT_ENV = "STAR_JAX_SYSTEM_MALLOC"
# mallopt(3) parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2 ** 31 - 1))  # mallopt takes a C int


def _runs_on_cpu() -> bool:
  """Whether JAX will compute on the CPU: JAX_PLATFORMS (or jax_platforms) lists cpu first, or none is set
  and no accelerator plugin (libtpu, or a jax_plugins module such as CUDA's or ROCm's) is installed."""
  import jax  # noqa: PLC0415 (reading a config value does not start a backend)
  platforms = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms or ""
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  if importlib.util.find_spec("libtpu") is not None:
    return False
  try:
    import jax_plugins  # noqa: PLC0415 (namespace package of PJRT plugins)
  except ImportError:
    return True
  return not any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def reuse_freed_memory() -> bool:
  """Apply SETTINGS to glibc malloc; True when they were applied.

  False (and nothing changed) when STAR_JAX_SYSTEM_MALLOC is set to a non-empty value other than 0, JAX will
  not run on the CPU, or the C library is not glibc; False with a warning if glibc refuses a setting (the
  ones before it stay applied).
  Call it before the first JAX computation (see the module docstring).
  """
  if os.environ.get(OPT_OUT_ENV, "") not in ("", "0"):
    return False
  if platform.libc_ver()[0] != "glibc" or not _runs_on_cpu():
    return False
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  from jax._src import xla_bridge  # noqa: PLC0415 (private: the public API cannot tell whether it started)
  if getattr(xla_bridge, "backends_are_initialized", lambda: False)():
    logging.warning("host_malloc.reuse_freed_memory() called after the JAX backend started: XLA's existing "
                    "threads keep their malloc arenas, so per-step buffers may still be page-faulted afresh.")
  for parameter, value in SETTINGS:
    if libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) != 1:
      logging.warning("host_malloc: glibc mallopt(%d, %d) failed; XLA:CPU step buffers may be page-faulted afresh "
                      "every step (slower, not wrong).", parameter, value)
      return False
  return True
