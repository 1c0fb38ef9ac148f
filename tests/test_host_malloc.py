"""host_malloc.reuse_freed_memory: XLA:CPU's per-step temporary buffer is reused instead of page-faulted afresh.

Each case runs tests/host_malloc_worker.py in its own process (malloc settings are process-wide and must
precede the JAX backend), with one CPU device, and compares minor page faults per train step.
"""

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from star_jax import host_malloc

WORKER = os.path.join(os.path.dirname(__file__), "host_malloc_worker.py")


def _faults_per_step(opt_out: bool) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", host_malloc.OPT_OUT_ENV)}
  if opt_out:
    env[host_malloc.OPT_OUT_ENV] = "1"
  result = subprocess.run([sys.executable, WORKER], env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


def _transparent_huge_pages_always() -> bool:
  """With THP in `always` mode the default allocator's fresh blocks take 2 MiB faults, a few per step."""
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="utf-8") as f:
      return "[always]" in f.read()
  except OSError:
    return False


@pytest.mark.e2e
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc mallopt(3) parameters")
@pytest.mark.skipif(_transparent_huge_pages_always(), reason="THP `always`: the default costs few faults to compare")
def test_reused_buffers_are_not_page_faulted_every_step():
  system = _faults_per_step(opt_out=True)
  reused = _faults_per_step(opt_out=False)
  assert not system["applied"] and reused["applied"]
  # Medians of 6 steps: with the machine loaded, an occasional reused step extends the heap once more.
  system_median, reused_median = (float(np.median(r["faults_per_step"])) for r in (system, reused))
  # ~90 MiB of temporary buffer = ~23k fresh 4 KiB pages per step with glibc's defaults (~28k measured).
  assert system_median > 10_000, system
  assert reused_median < 0.01 * system_median, (reused, system)


class _RefusingLibc:
  def __init__(self):
    self.calls = []

  def mallopt(self, parameter, value):
    self.calls.append((parameter.value, value.value))
    return 0  # glibc's "refused"


def _no_libc(*args):
  raise AssertionError(f"the C library was opened: {args}")


def test_opt_out_changes_nothing(monkeypatch):
  monkeypatch.setenv(host_malloc.OPT_OUT_ENV, "1")
  monkeypatch.setattr(host_malloc.ctypes, "CDLL", _no_libc)
  assert host_malloc.reuse_freed_memory() is False


@pytest.mark.parametrize("platforms, expected",
                         [("tpu", False), ("cuda,cpu", False), ("cpu", True), ("cpu,cuda", True)])
def test_applies_only_where_jax_runs_on_the_cpu(monkeypatch, platforms, expected):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_malloc._runs_on_cpu() is expected
  if not expected:  # never touches malloc on an accelerator host
    monkeypatch.delenv(host_malloc.OPT_OUT_ENV, raising=False)
    monkeypatch.setattr(host_malloc.ctypes, "CDLL", _no_libc)
    assert host_malloc.reuse_freed_memory() is False


def test_a_refused_setting_warns_and_returns_false(monkeypatch):
  libc = _RefusingLibc()
  monkeypatch.delenv(host_malloc.OPT_OUT_ENV, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setattr(host_malloc.platform, "libc_ver", lambda: ("glibc", "2.36"))
  monkeypatch.setattr(host_malloc.ctypes, "CDLL", lambda *args: libc)
  assert host_malloc.reuse_freed_memory() is False
  assert libc.calls == [host_malloc.SETTINGS[0]]  # stopped at the first refusal
