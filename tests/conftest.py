"""Test-wide settings: 8 simulated CPU devices, strict rank promotion, and a --run-slow switch."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_addoption(parser):
  parser.addoption("--run-slow", action="store_true", default=False,
                   help="also run tests marked slow (full experiments, minutes each)")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: a full experiment; skipped unless --run-slow is given")
  config.addinivalue_line("markers", "e2e: whole loops, notebooks, subprocess/multi-host runs (the end-to-end tier)")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--run-slow"):
    return
  skip = pytest.mark.skip(reason="slow experiment: run with --run-slow (make test-all)")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
