"""The tiny runs the kill tests interrupt, as command lines (run through tests.reliability.faults).

  star   the STaR loop on the tiny arithmetic config with the oracle generator of tests/star/test_loop.py
         (so every iteration fine-tunes: a barely trained model keeps nothing), constant steps, checked
         against the workdir's config first as star_jax.main does:
         python -m tests.reliability.runs star <workdir> <data_dir> [star.<key>=<value> ...]
  pg     policy-gradient STaR through star_jax.main (base model training, then the RL loop)
  prm    the PRM study through its own entry point (policy, samples, MC labels, PRM/ORM, scores, report)
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAR_CONFIG = os.path.join(REPO, "experiments", "configs", "star_arithmetic.py")
PG_CONFIG = os.path.join(REPO, "experiments", "configs", "pg_star_arithmetic.py")
PRM_CONFIG = os.path.join(REPO, "experiments", "configs", "prm_arithmetic.py")


def cache_dir(tmp_path_factory):
  """One compilation cache per test session (per xdist worker)."""
  return tmp_path_factory.getbasetemp() / "jax_cache"


def command(loop: str, workdir, data_dir) -> list[str]:
  """The argument list after `python -m tests.reliability.faults` for one run of `loop` in `workdir`;
  overrides (`--config.<key>=<value>`) may be appended."""
  if loop == "star":
    return ["tests.reliability.runs", "star", str(workdir), str(data_dir)]
  if loop == "pg":
    return ["star_jax.main", f"--config={PG_CONFIG}:tiny", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]
  if loop == "prm":
    return ["experiments.prm_arithmetic.study", f"--config={PRM_CONFIG}:tiny", f"--workdir={workdir}"]
  raise ValueError(f"unknown loop {loop!r}")


def environment(cache_dir) -> dict[str, str]:
  """One CPU device (as a user's laptop; no 8-device XLA_FLAGS) and a compilation cache shared by the runs
  of a test module, so a restarted run does not spend its time compiling again (results are the same)."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "FAULT_KILL", "FAULT_ENOSPC")}
  env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=REPO)
  return env


def launch(args: list[str], cache_dir, *, kill: str | None = None, enospc: str | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
  """Run `python -m tests.reliability.faults <args>` with the faults asked for; stdout+stderr as text."""
  env = environment(cache_dir)
  if kill:
    env["FAULT_KILL"] = kill
  if enospc:
    env["FAULT_ENOSPC"] = enospc
  return subprocess.run([sys.executable, "-m", "tests.reliability.faults", *args], env=env, cwd=REPO, text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


def _star(workdir: str, data_dir: str, overrides: list[str]) -> None:
  import ast  # noqa: PLC0415 (after the fault hooks are installed by the caller)

  from star_jax import star  # noqa: PLC0415
  from star_jax.star import loop  # noqa: PLC0415
  from tests.star import test_loop  # noqa: PLC0415
  star_overrides = dict(test_loop.CONSTANT_STEPS)
  for override in overrides:  # --config.star.<key>=<value>
    key, _, value = override.removeprefix("--config.star.").partition("=")
    star_overrides[key] = ast.literal_eval(value)
  cfg = test_loop.tiny_config(data_dir, **star_overrides)
  loop.check_workdir(cfg, workdir)  # as star_jax.main: a workdir of another config is refused before any write
  star.run(cfg, workdir, star.make_base_model(cfg, workdir), generator=test_loop.oracle_generator)
  print("done", flush=True)


if __name__ == "__main__":
  if sys.argv[1] != "star":
    raise SystemExit(f"usage: python -m tests.reliability.runs star <workdir> <data_dir> [overrides], got {sys.argv[1:]}")
  _star(sys.argv[2], sys.argv[3], sys.argv[4:])


def newest_state(checkpoints_dir) -> dict[str, "object"]:
  """{key path: numpy array} of the newest step's state in a Checkpointer directory (no target tree needed)."""
  steps = sorted(int(p) for p in os.listdir(checkpoints_dir) if p.isdigit())
  return state_at(checkpoints_dir, steps[-1])


def state_at(checkpoints_dir, step: int) -> dict[str, "object"]:
  """{key path: numpy array} of the state of `step` in a Checkpointer directory."""
  import warnings  # noqa: PLC0415 (test helper; keeps the module's import light for the subprocess)

  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  import orbax.checkpoint as ocp  # noqa: PLC0415
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # (restoring without a target tree warns that shardings are guessed)
    tree = ocp.PyTreeCheckpointer().restore(os.path.join(str(checkpoints_dir), str(step), "state"))
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}
