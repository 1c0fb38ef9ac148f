"""host_malloc.reuse_freed_memory: XLA:CPU's per-step temporary buffer is reused instead of page-faulted afresh.

Each case runs tests/host_malloc_worker.py in its own process (malloc settings are process-wide and must
precede the JAX backend), with one CPU device, and compares minor page faults per train step.
"""

import json
import os
import platform
import subprocess
import sys

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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc mallopt(3) parameters")
def test_reused_buffers_are_not_page_faulted_every_step():
  system = _faults_per_step(opt_out=True)
  reused = _faults_per_step(opt_out=False)
  assert not system["applied"] and reused["applied"]
  # ~90 MiB of temporary buffer = ~23k fresh 4 KiB pages per step with glibc's defaults.
  assert system["faults_per_step"] > 10_000, system
  assert reused["faults_per_step"] < 0.01 * system["faults_per_step"], (reused, system)


def test_opt_out_changes_nothing(monkeypatch):
  monkeypatch.setenv(host_malloc.OPT_OUT_ENV, "1")
  assert host_malloc.reuse_freed_memory() is False
