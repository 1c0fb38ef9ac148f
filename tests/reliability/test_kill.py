"""SIGKILL a tiny STaR run, a tiny PG run and a tiny PRM study in every phase, during checkpoint commits and
report writes too; re-running the same command each time, the last run ends with exactly the results of an
uninterrupted run (records, samples, evaluations, and final parameters to float rounding).

Kill points are events counted inside the killed process (tests/reliability/faults.py): `ckpt:<dir>:<n>`
kills during the n-th commit of a checkpoint in <dir> (all arrays written, the commit rename not done),
`write:<file>:<n>` during the n-th atomic write of <file> (its temporary file complete, not renamed yet),
`time:<s>` after s seconds. One chain per loop: kill, re-run, kill at the next point, ..., run to the end.
The fast tier kills 6 times; the slow tier (--run-slow) at 21 event points plus seeded random moments.
After the first kill of the fast tier, a re-run with a changed config is refused naming the field, and
writes nothing (config.json included), before the chain goes on.
"""

import json
import os
import random
import time

import numpy as np
import pytest

from star_jax import io
from tests.reliability import runs

PG_TIMING = ("seconds", "eval_seconds", "tokens_per_sec", "sample_tokens_per_sec", "sample_seconds", "host_seconds",
             "update_seconds")

# kill points per loop, in the order the run reaches them (workdirs are named run/)
FAST = {
    "star": ["ckpt:base/checkpoints/4:1", "ckpt:iter_1/checkpoints/4:1", "write:run/star_report.md:2"],
    "pg": ["write:run/rl_eval.jsonl:1", "ckpt:run/checkpoints/2:1"],
    "prm": ["ckpt:prm/checkpoints/2:1"],
}
CHANGED = {"star": ("--config.star.temperature=0.7", "config.star.temperature: 0.0 -> 0.7"),
           "pg": ("--config.rl.lr=0.01", "config.rl.lr: 0.001 -> 0.01"),
           "prm": ("--config.study.temperature=0.5", "config.study.temperature: 1.0 -> 0.5")}
SLOW = {
    "star": ["write:base/seed.jsonl:1", "ckpt:base/checkpoints/4:1", "ckpt:base/checkpoints/6:1",
             "write:iter_0/eval.json:1", "write:iter_1/generated.jsonl:1", "write:iter_1/rationalized.jsonl:1",
             "ckpt:iter_1/checkpoints/6:1", "write:run/star_metrics.jsonl:2", "write:run/star_accuracy.png:2",
             "write:iter_2/eval.json:1"],
    "pg": ["ckpt:base/checkpoints/2:1", "write:run/rl_eval.jsonl:1", "ckpt:run/checkpoints/2:1",
           "write:run/rl_report.md:2", "ckpt:run/checkpoints/4:1"],
    "prm": ["ckpt:policy/checkpoints/4:1", "write:run/reward_samples.jsonl:1", "write:run/mc_agreement.json:1",
            "ckpt:orm/checkpoints/2:1", "write:run/test_scores.json:1", "write:run/report.md:1"],
}
RANDOM_KILLS = {"star": 3, "pg": 2, "prm": 2}  # slow tier: at seeded random fractions of a warm run's wall time


def describe(point: str) -> str:
  kind, _, rest = point.partition(":")
  if kind == "time":
    return f"after {float(rest):.1f} s (seeded random)"
  where, _, n = rest.rpartition(":")
  what = "checkpoint commit" if kind == "ckpt" else "atomic write"
  return f"{what} of {where.removeprefix('run/')}" + (f" (#{n})" if n != "1" else "")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """The compilation cache and TFDS data dir of this module's runs, and the uninterrupted reference runs."""
  root = tmp_path_factory.mktemp("kill")
  state = {"cache": runs.cache_dir(tmp_path_factory), "data": root / "data", "references": {}}

  def reference(loop: str) -> dict:
    if loop not in state["references"]:
      workdir = root / f"reference_{loop}" / "run"
      t0 = time.perf_counter()
      out = runs.launch(runs.command(loop, workdir, state["data"]), state["cache"])
      assert out.returncode == 0, out.stdout[-3000:]
      state["references"][loop] = {"workdir": workdir, "seconds": time.perf_counter() - t0}
    return state["references"][loop]

  state["reference"] = reference
  return state


def snapshot(directory) -> dict[str, tuple[int, int]]:
  """{path: (size, mtime_ns)} of every file under `directory` (what a refused run must leave unchanged)."""
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      st = os.stat(os.path.join(root, f))
      out[os.path.relpath(os.path.join(root, f), directory)] = (st.st_size, st.st_mtime_ns)
  return out


def kill_chain(loop: str, points: list[str], workdir, shared, fault_table=None) -> list[str]:
  """Run `loop` in `workdir`, SIGKILLed at each point in turn, then to the end; the points that killed it.

  With `fault_table`, after the first kill a re-run with a changed config (CHANGED) must be refused naming
  the field and leave every file as it was."""
  killed = []
  for point in points:
    out = runs.launch(runs.command(loop, workdir, shared["data"]), shared["cache"], kill=point)
    if out.returncode == 0 and point.startswith("time:"):
      continue  # the run finished before the random moment: nothing to resume
    assert out.returncode == -9, f"kill point {point} was never reached (rc {out.returncode}):\n{out.stdout[-3000:]}"
    killed.append(point)
    if fault_table is not None and len(killed) == 1:
      before = snapshot(workdir)
      override, field = CHANGED[loop]
      out = runs.launch(runs.command(loop, workdir, shared["data"]) + [override], shared["cache"])
      assert out.returncode != 0 and "with a different config" in out.stdout and field in out.stdout, out.stdout[-3000:]
      assert snapshot(workdir) == before  # nothing written: not even config.json
      fault_table(f"re-run with a changed config ({loop})", f"workdir killed at the {describe(point)}",
                  f"refused naming {field.split(':')[0]}; no file written or changed")
  out = runs.launch(runs.command(loop, workdir, shared["data"]), shared["cache"])
  assert out.returncode == 0, out.stdout[-3000:]
  return killed


def _jsonl(path, drop=()):
  return [{k: v for k, v in r.items() if k not in drop and not k.startswith("seconds")} for r in io.read_jsonl(path)]


def _assert_records_equal(got: list[dict], expected: list[dict]):
  """Equal records: every count, accuracy and text exactly; float metrics to float rounding (a fresh process
  may round XLA:CPU's last bit differently, and KL(π‖π_base) ~ 3e-5 is a difference of nearly equal log-probs)."""
  assert [sorted(r) for r in got] == [sorted(r) for r in expected]
  for g, e in zip(got, expected):
    for key, value in e.items():
      if isinstance(value, float) and not key.startswith("acc_"):
        assert g[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (g.get("step", g.get("iteration")), key)
      else:
        assert g[key] == value, (g.get("step", g.get("iteration")), key)


def _assert_states_close(a_dir, b_dir):
  a, b = runs.newest_state(a_dir), runs.newest_state(b_dir)
  assert sorted(a) == sorted(b)
  for key in a:
    # to float rounding: XLA:CPU may round the last bit differently in a fresh process
    np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=f"{b_dir}: {key}")


def assert_same_results(loop: str, workdir, reference):
  if loop == "star":
    _assert_records_equal(_jsonl(workdir / "star_metrics.jsonl"), _jsonl(reference / "star_metrics.jsonl"))
    for n in (1, 2):
      for name in ("generated.jsonl", "rationalized.jsonl"):
        assert (workdir / f"iter_{n}" / name).read_text() == (reference / f"iter_{n}" / name).read_text()
    for phase in ("base", "iter_1", "iter_2"):
      _assert_states_close(reference / phase / "checkpoints", workdir / phase / "checkpoints")
  elif loop == "pg":
    for name in ("rl_eval.jsonl", "rl_metrics.jsonl"):
      _assert_records_equal(_jsonl(workdir / name, PG_TIMING), _jsonl(reference / name, PG_TIMING))
    for phase in ("base", ""):
      _assert_states_close(reference / phase / "checkpoints", workdir / phase / "checkpoints")
  else:
    results = [json.loads((w / "results.json").read_text()) for w in (workdir, reference)]
    for r in results:
      del r["timings_seconds"]
    assert results[0] == results[1]
    for name in ("reward_samples.jsonl", "test_samples.jsonl"):
      assert (workdir / name).read_text() == (reference / name).read_text()
    for phase in ("policy", "prm", "orm"):
      _assert_states_close(reference / phase / "checkpoints", workdir / phase / "checkpoints")


def _record(fault_table, loop, killed):
  for point in killed:
    fault_table(f"SIGKILL ({loop})", describe(point),
                "re-run of the same command resumes; final results identical to an uninterrupted run")


@pytest.mark.e2e
@pytest.mark.parametrize("loop", ["star", "pg", "prm"])
def test_killed_in_every_phase_resumes_to_the_uninterrupted_result(loop, shared, tmp_path, fault_table):
  reference = shared["reference"](loop)
  workdir = tmp_path / "run"
  killed = kill_chain(loop, FAST[loop], workdir, shared, fault_table)
  assert killed == FAST[loop]
  assert_same_results(loop, workdir, reference["workdir"])
  _record(fault_table, loop, killed)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["star", "pg", "prm"])
def test_kill_sweep_at_every_event_and_seeded_random_moments(loop, shared, tmp_path, fault_table):
  """Every event point of SLOW in one chain; then, in a second workdir, RANDOM_KILLS[loop] kills at seeded
  random fractions (5-60%) of the wall time of an uninterrupted run with a warm compilation cache (each
  counted from its process's start; a run that finishes first is not counted)."""
  reference = shared["reference"](loop)
  killed = kill_chain(loop, SLOW[loop], tmp_path / "events" / "run", shared)
  assert killed == SLOW[loop]
  assert_same_results(loop, tmp_path / "events" / "run", reference["workdir"])
  t0 = time.perf_counter()
  out = runs.launch(runs.command(loop, tmp_path / "warm" / "run", shared["data"]), shared["cache"])
  assert out.returncode == 0, out.stdout[-3000:]
  warm_seconds = time.perf_counter() - t0
  rng = random.Random(f"kill-sweep-{loop}")
  moments = [f"time:{rng.uniform(0.05, 0.6) * warm_seconds:.2f}" for _ in range(RANDOM_KILLS[loop])]
  at_random = kill_chain(loop, moments, tmp_path / "random" / "run", shared)
  assert at_random, f"no random moment ({moments}) came before its run finished"
  assert_same_results(loop, tmp_path / "random" / "run", reference["workdir"])
  killed += at_random
  _record(fault_table, loop, killed)
