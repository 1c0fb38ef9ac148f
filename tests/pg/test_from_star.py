"""PG-STaR from a STaR run's iteration-N model (rl.base_iteration) and the held-out evaluator of
experiments/pg_star_arithmetic/from_star/ on the models of a tiny STaR run and a tiny PG run started from its M_1."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from experiments.configs import star_arithmetic
from experiments.pg_star_arithmetic.from_star import evaluate as heldout
from star_jax import io, star
from star_jax.data import arithmetic
from star_jax.data.tasks import ArithmeticTask
from star_jax.pg import config as rl_config
from star_jax.pg import loop as rl
from star_jax.pg import rewards
from star_jax.star import loop as star_loop
from star_jax.star import tasks as star_tasks
from star_jax.star.config import star_experiment_from_config
from tests.pg.test_loop import parity_reward, pg_star_arithmetic


def star_cfg(data_dir):
  """star_arithmetic.py:tiny with one iteration and the PG tiny config's one-layer model (one compilation)."""
  c = star_arithmetic.get_config("tiny")
  c.data.data_dir = str(data_dir)
  c.model.n_layers = pg_star_arithmetic.get_config("tiny").model.n_layers
  c.star.iterations = 1
  return star_experiment_from_config(c)


def pg_cfg(data_dir, star_workdir, **rl_overrides):
  c = pg_star_arithmetic.get_config("tiny")
  c.data.data_dir = str(data_dir)
  c.rl.base_workdir = str(star_workdir)
  c.rl.base_iteration = 1
  for k, v in rl_overrides.items():
    c.rl[k] = v
  return rl_config.rl_experiment_from_config(c)


def true_targets(params):
  """A stand-in generator for the STaR run (params ignored): every generation is the true scratchpad, so every
  question is kept and M_1 is fine-tuned (the tiny base model itself solves nothing)."""
  del params
  return lambda prompts, max_new_tokens, rng: [arithmetic.target_text(arithmetic.parse_question(p.split("\n")[1]))
                                               for p in prompts]


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny STaR run (1 iteration) and a tiny PG run from its M_1 (the policy the loop starts with captured;
  a dense test reward, so that the policy moves away from its reference)."""
  root = tmp_path_factory.mktemp("from_star")
  scfg = star_cfg(root / "data")
  base = star.make_base_model(scfg, str(root / "star"))
  star.run(scfg, str(root / "star"), base, generator=true_targets)
  cfg = pg_cfg(root / "data", root / "star")
  created = {}
  original = rl.pg_step.create_state

  def spy(model_config, tx, mesh, seed, params, *args, **kwargs):
    created["params"] = jax.device_get(params)
    return original(model_config, tx, mesh, seed, params, *args, **kwargs)

  with pytest.MonkeyPatch.context() as m:
    m.setattr(rl.pg_step, "create_state", spy)
    # no base_params: the start model comes from rl.base_iteration
    records = rl.run(cfg, str(root / "pg"), reward=rewards.per_sample(parity_reward))
  return {"root": root, "star_cfg": scfg, "cfg": cfg, "base": base, "records": records, "initial": created["params"],
          "m1": star_loop.load_iteration_params(scfg, str(root / "star"), 1)}


def test_base_iteration_config():
  c = pg_star_arithmetic.get_config("tiny")
  c.rl.base_iteration = 1
  with pytest.raises(ValueError, match="config.rl.base_iteration needs rl.base_workdir"):
    rl_config.rl_experiment_from_config(c)
  c.rl.base_iteration, c.rl.base_workdir = -1, "/star"
  with pytest.raises(ValueError, match="config.rl.base_iteration must be >= 0, got -1"):
    rl_config.rl_experiment_from_config(c)


def test_missing_iteration_is_refused_before_any_write(tmp_path):
  (tmp_path / "star" / "iter_1").mkdir(parents=True)
  for iteration, what in ((2, "is missing"), (1, "holds no finished fine-tuning")):
    cfg = pg_cfg(tmp_path / "data", tmp_path / "star", base_iteration=iteration)
    with pytest.raises(ValueError, match=rf"config.rl.base_iteration={iteration}: .*iter_{iteration} {what} "
                                         rf"\(.*iter_{iteration}/train.json not found\)"):
      rl.run(cfg, str(tmp_path / "pg"))
    assert not (tmp_path / "pg").exists()


@pytest.mark.e2e
def test_the_loop_starts_from_m_n_and_measures_kl_to_it(runs):
  m1, base = _leaves(runs["m1"]), _leaves(runs["base"])
  assert any(not np.array_equal(a, b) for a, b in zip(m1, base))  # M_1 was fine-tuned: not the base model
  initial = _leaves(runs["initial"])
  assert len(initial) == len(m1) and all(np.array_equal(a, b) for a, b in zip(initial, m1))
  for a, b in zip(_leaves(rl.start_params(runs["cfg"], str(runs["root"] / "pg"))), m1):
    np.testing.assert_array_equal(a, b)
  first, last = runs["records"][0], runs["records"][-1]
  assert first["step"] == 0 and abs(first["kl_to_base"]) < 1e-6 and abs(first["kl_to_base_k3"]) < 1e-6
  assert last["kl_to_base"] > 0  # the reference stayed M_1 while the policy moved
  star_eval = io.read_json(str(runs["root"] / "star" / "iter_1" / "eval.json"))["accuracy"]
  for n in (1, 2, 3):  # the PG loop's step-0 evaluation is M_1's own (same held-out sets, greedy)
    assert first[f"acc_{n}digit"] == star_eval[f"acc_{n}digit"]
  assert "STaR's M_1" in (runs["root"] / "pg" / "rl_report.md").read_text()


@pytest.mark.e2e
def test_a_changed_base_iteration_is_refused_a_moved_base_workdir_is_not(runs):
  cfg, workdir = runs["cfg"], str(runs["root"] / "pg")
  with pytest.raises(ValueError, match=r"config.rl.base_iteration: 1 -> 0"):
    rl.check_workdir(dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, base_iteration=0)), workdir)
  moved = str(runs["root"] / "star_moved")
  os.symlink(runs["root"] / "star", moved)
  rl.check_workdir(dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, base_workdir=moved)), workdir)


# ---- the held-out evaluator (experiments/pg_star_arithmetic/from_star/evaluate.py) ----

@pytest.mark.e2e
def test_heldout_sets_top_up_the_test_split_with_untrained_problems(runs):
  scfg, workdir = runs["star_cfg"], str(runs["root"] / "star")
  sets, info = heldout.heldout_sets(scfg, workdir, per_length=12)
  data = star_tasks.load_task_data(scfg, workdir)
  trained = heldout.trained_problems(scfg, workdir, data)
  assert len(trained & {p for p in arithmetic.sample_problems(1, 81, 0)}) == 81  # the seed set holds every 1-digit problem
  assert info[1] == {"n": 8, "from_test_split": 8, "in_training_set": 8}  # 1-digit: only the test split's 8 (all seen)
  for n in (2, 3):
    assert info[n] == {"n": 12, "from_test_split": 8, "in_training_set": 0}
    problems = [data.task.problem(e) for e in sets[n]]
    assert problems[:8] == [data.task.problem(e) for e in data.tests[n]] and len(set(problems)) == 12
    assert not set(problems) & trained and all(p.n_digits == n for p in problems)
  _, everything = heldout.heldout_sets(scfg, workdir, per_length=100)  # 1-digit has 81 problems in all: every one
  assert everything[1] == {"n": 81, "from_test_split": 8, "in_training_set": 81}
  assert everything[2] == {"n": 100, "from_test_split": 8, "in_training_set": 0}
  again, _ = heldout.heldout_sets(scfg, workdir, per_length=12)
  assert {n: [e.id for e in v] for n, v in again.items()} == {n: [e.id for e in v] for n, v in sets.items()}


@pytest.mark.e2e
def test_evaluator_counts_intervals_and_greedy_determinism(runs, tmp_path, monkeypatch):
  workdir = str(runs["root"] / "star")
  out = str(tmp_path / "m1.json")
  with monkeypatch.context() as m:  # a judge that depends on the whole text (the tiny M_1 solves nothing): the
    # counts are not all 0, and equal greedy verdicts mean equal greedy texts
    m.setattr(ArithmeticTask, "is_correct", lambda self, example, text: sum(map(ord, text)) % 2 == 0)
    result = heldout.evaluate_workdir(workdir, 1, out, per_length=12, samples=4)
    again = heldout.evaluate_workdir(workdir, 1, str(tmp_path / "again.json"), per_length=12, samples=0)
  assert io.read_json(out) == result and result["model"]["kind"] == "star" and result["model"]["iteration"] == 1
  for name, r in result["lengths"].items():
    assert r["n"] == len(r["problems"]) == len(r["greedy_correct"]) == len(r["sampled_correct"])
    g, s = r["greedy"], r["sampled"]
    assert g["correct"] == sum(r["greedy_correct"]) and g["accuracy"] == g["correct"] / r["n"]
    assert s["samples"] == 4 * r["n"] and s["correct"] == sum(r["sampled_correct"])
    assert all(0 <= c <= 4 for c in r["sampled_correct"]) and s["accuracy"] == s["correct"] / s["samples"]
    for m in (g, s):
      assert 0 <= m["ci95"][0] <= m["accuracy"] <= m["ci95"][1] <= 1 and m["ci95"][0] < m["ci95"][1]
    assert s["tokens_per_sample"] > 0, name
  assert any(0 < r[m]["accuracy"] < 1 for r in result["lengths"].values() for m in ("greedy", "sampled"))
  for name, r in again["lengths"].items():  # greedy is deterministic; samples = 0 leaves them out
    assert r["greedy_correct"] == result["lengths"][name]["greedy_correct"] and "sampled" not in r
  loop_sets = heldout.evaluate_workdir(workdir, "last", str(tmp_path / "test_split.json"), per_length=8, samples=0)
  star_eval = io.read_json(os.path.join(workdir, "iter_1", "eval.json"))["accuracy"]
  for name, r in loop_sets["lengths"].items():  # on the loops' own test split it is the loops' greedy accuracy
    assert r["greedy"]["accuracy"] == star_eval[f"acc_{name}"]


@pytest.mark.e2e
def test_evaluator_reads_a_pg_runs_final_policy(runs, tmp_path):
  result = heldout.evaluate_workdir(str(runs["root"] / "pg"), None, str(tmp_path / "pg.json"), per_length=8, samples=0)
  last = runs["records"][-1]
  assert result["model"]["kind"] == "pg" and result["model"]["step"] == last["step"] == runs["cfg"].rl.steps
  assert result["model"]["sampled_tokens"] == last["sampled_tokens"] and result["model"]["start"].startswith("iter_1 of")
  for name, r in result["lengths"].items():  # the final policy's greedy accuracy is the loop's last evaluation
    assert r["greedy"]["accuracy"] == last[f"acc_{name}"]
  with pytest.raises(ValueError, match="is a STaR run: give the iteration"):
    heldout.load_model(runs["star_cfg"], str(runs["root"] / "star"))
