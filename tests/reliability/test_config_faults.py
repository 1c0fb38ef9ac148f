"""Bad configs and changed configs: every error names the key, and nothing is written before it.

- `--config.foo.bar=1`: a usage error naming config.foo (not a bare KeyError); lr = inf/NaN refused.
- A mesh that cannot be built: the error names config.mesh.axes and the workdir is not even created.
- A workdir stopped in its first phase refuses a re-run with a changed config, naming the field, and
  writes nothing (config.json included): the library check here; STaR, PG and the PRM study killed in
  their first phase in tests/reliability/test_kill.py.
- The issue's NaN run (tiny STaR, lr=1e6, a checkpoint every step): it stops naming the newest checkpoint,
  every checkpoint on disk is finite, and the re-run with a sane lr is refused (a changed train.lr) untouched.
"""

import math
import os

import jax
import pytest

from experiments.configs import arithmetic as arithmetic_config
from experiments.configs import star_arithmetic
from star_jax import checkpoint, config, star
from star_jax.star.config import star_experiment_from_config
from tests.reliability import runs

STAR_CONFIG = star_arithmetic.__file__


def snapshot(directory) -> dict[str, tuple[int, int]]:
  """{path: (size, mtime_ns)} of every file under `directory` (what a refused run must leave unchanged)."""
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      st = os.stat(os.path.join(root, f))
      out[os.path.relpath(os.path.join(root, f), directory)] = (st.st_size, st.st_mtime_ns)
  return out


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_non_finite_lr_is_refused(value, fault_table):
  c = star_arithmetic.get_config("tiny")
  c.train.lr = value
  with pytest.raises(ValueError, match=r"config.train.lr must be a finite number"):
    star_experiment_from_config(c)
  c = star_arithmetic.get_config("tiny")
  c.star.temperature = value  # any float key
  with pytest.raises(ValueError, match=r"config.star.temperature must be a finite number"):
    star_experiment_from_config(c)
  fault_table(f"lr = {value}", "--config.train.lr", "ValueError: config.train.lr must be a finite number")


def test_a_mesh_that_cannot_be_built_names_the_key_before_anything_is_written(tmp_path, fault_table):
  c = star_arithmetic.get_config("tiny")
  c.data.data_dir = str(tmp_path / "data")
  c.mesh.axes = (("data", 3), ("fsdp", 1), ("tensor", 1))
  cfg = star_experiment_from_config(c)
  for entry in (star.make_base_model, lambda cfg, w: star.run(cfg, w, None)):
    with pytest.raises(ValueError, match=rf"config.mesh.axes=.*cannot be built: .* needs 3 devices, found {jax.device_count()}"):
      entry(cfg, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w") and not os.path.exists(tmp_path / "data")
  fault_table("mesh that cannot be built", "config.mesh.axes (data=3 on 8 devices)",
              "ValueError naming config.mesh.axes; workdir not created")


def test_the_base_model_check_names_the_field_and_writes_nothing(tmp_path, monkeypatch):
  """A STaR workdir stopped while the base model trains: a changed base field is refused (library path)."""
  cfg = star_experiment_from_config(star_arithmetic.get_config("tiny"))
  workdir = str(tmp_path / "w")
  config.check_resumable(os.path.join(workdir, "base", "base_config.json"), cfg, ("model", "data", "train", "star"))
  before = snapshot(workdir)
  c = star_arithmetic.get_config("tiny")
  c.train.lr = 1e-4
  with pytest.raises(ValueError, match=r"holds a base model with a different config.*config.train.lr: 0.002 -> 0.0001"):
    star.make_base_model(star_experiment_from_config(c), workdir)
  c = star_arithmetic.get_config("tiny")
  c.star.temperature = 0.5  # not a field of the base model: accepted by its check (star_config.json holds it)
  star.loop.check_base(star_experiment_from_config(c), workdir)
  assert snapshot(workdir) == before


# ---- command lines ----

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return runs.cache_dir(tmp_path_factory)


@pytest.mark.e2e
def test_an_override_of_a_missing_key_names_it(tmp_path, cache, fault_table):
  for override, key in (("--config.foo.bar=1", "config.foo"), ("--config.train.foo=1", "config.train.foo")):
    out = runs.launch(["star_jax.main", f"--config={arithmetic_config.__file__}:tiny", f"--workdir={tmp_path / 'w'}",
                       override], cache, timeout=120)
    assert out.returncode == 1 and f"{override}: the config has no key {key}" in out.stdout
    assert "KeyError" not in out.stdout and "Traceback" not in out.stdout
    fault_table("override of a missing key", override, f"usage error naming {key}; nothing written")
  assert not os.path.exists(tmp_path / "w")


def _star(workdir, data, *overrides):
  return ["star_jax.main", f"--config={STAR_CONFIG}:tiny", f"--workdir={workdir}", f"--config.data.data_dir={data}",
          *overrides]


def _assert_refused(out, workdir, before, field):
  assert out.returncode != 0 and "with a different config" in out.stdout and field in out.stdout, out.stdout[-3000:]
  assert snapshot(workdir) == before  # nothing written: not even config.json


@pytest.mark.e2e
def test_the_nan_run_names_a_true_clean_step_and_a_changed_rerun_is_refused(tmp_path, cache, fault_table):
  """The issue's case: `--config.train.lr=1e6 --config.checkpoint.every_steps=1` on the tiny STaR config
  diverges while the base model trains."""
  workdir, data = tmp_path / "w", tmp_path / "data"
  out = runs.launch(_star(workdir, data, "--config.train.lr=1e6", "--config.checkpoint.every_steps=1",
                          "--config.checkpoint.keep=100"), cache)
  assert out.returncode != 0 and ("NonFiniteStateError" in out.stdout or "NonFiniteLossError" in out.stdout)
  message = [line for line in out.stdout.splitlines() if "NonFinite" in line and "newest checkpoint" in line][-1]
  directory = str(workdir / "base" / "checkpoints")
  with checkpoint.Checkpointer(directory, keep=100) as ckpt:
    steps = ckpt.all_steps()
  assert steps and f"the newest checkpoint, step {steps[-1]} in {directory}" in message  # the message is true
  for step in steps:  # and every checkpoint on disk is finite
    state = runs.state_at(directory, step)
    assert all(math.isfinite(float(v.min())) and math.isfinite(float(v.max())) for v in state.values() if v.dtype.kind == "f")
  fault_table("lr = 1e6, checkpoint every step (tiny STaR)", "base-model training",
              f"stops naming checkpoint {steps[-1]}, the newest on disk; all {len(steps)} checkpoints finite")
  before = snapshot(workdir)
  out = runs.launch(_star(workdir, data, "--config.checkpoint.every_steps=1", "--config.checkpoint.keep=100"), cache)
  _assert_refused(out, workdir, before, "config.train.lr: 1000000.0 -> 0.002")
  fault_table("re-run with another train.lr", "STaR workdir stopped during base-model training",
              "refused naming config.train.lr; no file written or changed (config.json included)")
