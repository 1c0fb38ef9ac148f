"""experiments/tot_game24/study.py and report.py: config, judging, best-of-k, reward examples, the summary's
targets, and the tiny study end to end."""

import json
import math
import os

import numpy as np
import pytest

from experiments.configs import tot_game24
from experiments.tot_game24 import report, study
from star_jax.data import CharTokenizer, game24


def _cfg(variant="tiny"):
  return study.study_from_config(tot_game24.get_config(variant))


def test_every_variant_validates_and_bad_keys_are_named():
  for variant in ("", "demo", "tiny"):
    cfg = _cfg(variant)
    pools = study.puzzles(cfg.study)
    assert len(pools["test"]) == cfg.study.test_puzzles and not set(pools["test"]) & set(pools["train"])
  bad = tot_game24.get_config("tiny")
  bad.study.unknown_key = 1
  with pytest.raises(ValueError, match="config.study.unknown_key"):
    study.study_from_config(bad)
  for key, value, match in (("tot", ((0, 5),), "study.tot"), ("values", ("mc",), "study.values"),
                            ("auc_samples", 99, "auc_samples")):
    bad = tot_game24.get_config("tiny")
    bad.study[key] = value
    with pytest.raises(ValueError, match=match):
      study.study_from_config(bad)
  with pytest.raises(ValueError, match="unknown config variant"):
    tot_game24.get_config("huge")


def test_tot_settings_run_widest_and_prm_first():
  cfg = _cfg("")
  settings = study.tot_settings(cfg.study)
  widths = list(cfg.study.tot)
  assert widths[:2] == [(5, 5), (1, 5)]
  assert settings[:len(widths) + 1] == [("prm", b, n) for b, n in widths] + [("oracle", 5, 5)]
  assert len(settings) == len(cfg.study.values) * len(cfg.study.tot)


def test_judge_solution_and_wrong_step():
  output = "13 - 10 = 3 (left: 3 4 9)\n9 - 3 = 6 (left: 4 6)\n4 * 6 = 24 (left: 24)\nAnswer: 4 * (9 - (13 - 10)) = 24\n"
  r = study.judge((4, 9, 10, 13), output, 91)
  assert r["correct"] and r["reached24"] and r["steps_correct"] == [True] * 3 and r["steps_good"] == [True] * 3
  assert r["tokens"] == 91 and r["steps_fraction"] == [False] * 3
  wrong = output.replace("9 - 3 = 6", "9 - 3 = 7")
  r = study.judge((4, 9, 10, 13), wrong, 91)
  assert not r["reached24"] and r["steps_correct"] == [True, False, True] and r["steps_good"] == [True, False, False]
  r = study.judge((1, 2, 3, 4), "1 / 2 = 1/2 (left: 1/2 3 4)\n", 20)
  assert r["steps_fraction"] == [True] and r["steps_correct"] == [True] and not r["correct"]


def test_competence_counts_step_lines():
  records = [{"steps_correct": [True, False], "steps_fraction": [False, True], "correct": False, "reached24": False,
              "tokens": 10},
             {"steps_correct": [True, True, True], "steps_fraction": [False, False, True], "correct": True,
              "reached24": True, "tokens": 30}]
  c = report.competence(records)
  assert c["steps"] == 5 and c["step_correct"] == 4 / 5 and c["step_correct_integer"] == 1.0
  assert c["step_correct_fraction"] == 1 / 2 and c["pass@1"] == 0.5 and c["tokens_per_output"] == 20


def test_pass_at_k_hand_values():
  correct = np.asarray([[1, 0, 0, 0], [0, 0, 0, 0]], bool)
  assert math.isclose(report.pass_at_k(correct, 1), 0.25 / 2)
  assert math.isclose(report.pass_at_k(correct, 2), (1 - 3 / 6) / 2)  # 1 - C(3,2)/C(4,2) for the first puzzle
  assert math.isclose(report.pass_at_k(correct, 4), 0.5)
  assert math.isclose(report.pass_at_k(correct, 1.5), (0.125 + 0.25) / 2)
  assert report.pass_at_k(correct, 0) == 0.0
  with pytest.raises(ValueError, match="outside"):
    report.pass_at_k(correct, 5)


def test_reward_examples_put_the_exact_labels_at_step_ends():
  output = "13 - 10 = 3 (left: 3 4 9)\n9 + 3 = 12 (left: 4 12)\n4 * 12 = 48 (left: 48)\nAnswer: 4 * (9 + (13 - 10)) = 48\n"
  record = study.judge((4, 9, 10, 13), output, 90)
  (ex,) = study.reward_examples([record])
  assert ex["step_mask"].sum() == 3
  labels = ex["step_targets"][ex["step_mask"] > 0].tolist()
  assert labels == [float(g) for g in record["steps_good"]] == [1.0, 0.0, 0.0]  # 4, 12 cannot make 24
  (newline,) = CharTokenizer().encode("\n")  # labels sit on each step line's newline
  assert ex["inputs"][ex["step_mask"] > 0].tolist() == [newline] * 3
  assert not record["correct"] and not game24.is_correct("4 9 10 13", output)


def test_per_puzzle_pass_at_k():
  correct = np.asarray([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
  np.testing.assert_allclose(report.pass_at_k_P(correct, 2), [1 - 3 / 6, 0.0, 1.0])
  np.testing.assert_allclose(report.pass_at_k_P(correct, 1.5), [(0.25 + 0.5) / 2, 0.0, 1.0])
  assert math.isclose(report.pass_at_k(correct, 2), np.mean([0.5, 0.0, 1.0]))


def _row(name, success, tokens, cot, success_any=None, half=0.01):
  value, b, n = name.rsplit("_", 2)
  success_any = success if success_any is None else success_any
  return {"name": name, "value": value, "breadth": int(b[1:]), "samples": int(n[1:]), "success": success,
          "success_any": success_any, "tokens": tokens, "cot_success_equal_tokens": cot,
          "any_minus_cot": success_any - cot, "any_minus_cot_ci95": half, "top_minus_cot": success - cot,
          "top_minus_cot_ci95": half}


def test_targets_are_read_from_the_rows():
  rows = [_row("prm_b5_n5", 0.3, 1000, 0.2), _row("prm_b1_n5", 0.2, 300, 0.1), _row("oracle_b5_n5", 0.5, 1000, 0.2)]
  t = report.targets(rows)
  assert t["prm_beats_cot_from_b5_cost"] and t["b5_beats_b1"] and t["compared"] == ["prm_b5_n5"]
  assert t["prm_beats_cot_beyond_ci_any"] and t["prm_beats_cot_from_b5_cost_top"]
  rows[0] = _row("prm_b5_n5", 0.3, 1000, 0.2, half=0.2)  # ahead, but inside the interval
  t = report.targets(rows)
  assert t["prm_beats_cot_from_b5_cost_any"] and not t["prm_beats_cot_beyond_ci_any"]
  rows[0] = _row("prm_b5_n5", 0.3, 1000, 0.35, success_any=0.4)  # counted among the b finals it wins, alone not
  t = report.targets(rows)
  assert t["prm_beats_cot_from_b5_cost"] and not t["prm_beats_cot_from_b5_cost_top"]
  rows.append(_row("prm_b5_n10", 0.5, 2000, 0.6))  # every setting from b=5's cost up must win
  assert not report.targets(rows)["prm_beats_cot_from_b5_cost"]
  rows[1]["success_any"] = 0.45
  assert not report.targets(rows)["b5_beats_b1"]
  assert report.targets(rows[1:2])["b5_beats_b1"] is None


@pytest.mark.e2e
def test_study_end_to_end_tiny(tmp_path):
  """Every phase on the tiny config (the model-free searches first, as a second process would run them); a second
  run reuses the cached phases and gives the same results."""
  cfg = _cfg("tiny")
  assert study.run(cfg, str(tmp_path / "work"), search_values=("oracle", "logprob")) is None
  searched = sorted(p.name for p in (tmp_path / "work").glob("tot_*.json"))
  assert searched == sorted(f"tot_{v}_b{b}_n{n}.json" for v in ("oracle", "logprob") for b, n in cfg.study.tot)
  assert not (tmp_path / "work" / "cot.json").exists()
  results = study.run(cfg, str(tmp_path / "work"), results_dir=str(tmp_path / "results"))
  for name in ("results.json", "report.md", "success_vs_tokens.png"):
    assert os.path.exists(tmp_path / "results" / name), name
  s = cfg.study
  assert results["puzzles"] == s.test_puzzles and results["base"]["sampled"]["outputs"] == s.test_puzzles * s.cot_samples
  assert results["cot"]["best_of_k"][-1]["k"] == s.cot_samples
  assert len(results["tot"]) == len(s.values) * len(s.tot)
  assert os.path.exists(tmp_path / "work" / "policy_polish" / "train.json")  # the tiny config polishes 2 steps
  for r in results["tot"]:
    assert 0 <= r["success"] <= r["success_any"] <= 1 and r["tokens"] > 0 and r["puzzles"] == s.test_puzzles
    if r["breadth"] == 1:  # one final state: the two ways of counting agree
      assert r["success_any"] == r["success"]
    assert (r["reward_model_tokens"] > 0) == (r["value"] == "prm")
  cot = json.loads((tmp_path / "work" / "cot.json").read_text())
  assert all(0 < r["tokens"] <= s.cot_tokens for r in cot["sampled"])
  report = (tmp_path / "results" / "report.md").read_text()
  assert "exact oracle (upper bound)" in report and "step AUC" in report
  again = study.run(cfg, str(tmp_path / "work"))
  strip = lambda r: json.dumps({k: v for k, v in r.items() if k != "timings_seconds"}, sort_keys=True)  # noqa: E731
  assert strip(again) == strip(results)
  for key, value in (("policy_train.steps", 5), ("study.polish_steps", 3)):
    changed = tot_game24.get_config("tiny")
    section, field = key.split(".")
    changed[section][field] = value
    with pytest.raises(ValueError, match="another base model"):
      study.run(study.study_from_config(changed), str(tmp_path / "work"))


@pytest.mark.e2e
def test_polishing_continues_the_first_stage(tmp_path):
  """study.polish_steps > 0: the first stage is the same as without polishing; the polished model starts from it,
  differs from it, and a finished polish is loaded."""
  import dataclasses  # noqa: PLC0415

  import jax  # noqa: PLC0415

  from star_jax import sharding  # noqa: PLC0415
  cfg = _cfg("tiny")
  mesh = sharding.make_mesh(cfg.mesh.axes, name="config.mesh.axes")
  plain = study.base_model(dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, polish_steps=0)),
                           str(tmp_path / "plain"), mesh)
  polished = study.base_model(cfg, str(tmp_path / "polished"), mesh)
  first = study._first_stage(cfg, str(tmp_path / "polished" / "policy"), mesh)
  assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(first)))
  assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(polished)))
  info = json.loads((tmp_path / "polished" / "policy_polish" / "train.json").read_text())
  assert info["steps"] == cfg.study.polish_steps
  again = study.base_model(cfg, str(tmp_path / "polished"), mesh)
  assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(polished), jax.tree.leaves(again)))


@pytest.mark.e2e
def test_policy_stop_step_is_the_schedules_checkpoint(tmp_path):
  """study.policy_stop_step = S gives the parameters fine_tune's run of the whole schedule had at step S."""
  import dataclasses  # noqa: PLC0415 (only this test replaces config sections)

  import jax  # noqa: PLC0415

  from star_jax import checkpoint, sharding, train  # noqa: PLC0415
  cfg = _cfg("tiny")
  cfg = dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=2, keep=2),
                            study=dataclasses.replace(cfg.study, polish_steps=0))
  mesh = sharding.make_mesh(cfg.mesh.axes, name="config.mesh.axes")
  study.base_model(cfg, str(tmp_path / "full"), mesh)  # 4 steps, checkpoints at 2 and 4
  tx = train.make_optimizer(cfg.policy_train)
  with checkpoint.Checkpointer(str(tmp_path / "full" / "policy" / "checkpoints"), keep=2) as ckpt:
    at_two, _ = ckpt.restore(train.state_shardings(cfg.model, tx, mesh)[0], step=2)
  stopped_cfg = dataclasses.replace(cfg, study=dataclasses.replace(cfg.study, policy_stop_step=2))
  stopped = study.base_model(stopped_cfg, str(tmp_path / "stopped"), mesh)
  for a, b in zip(jax.tree.leaves(at_two.params), jax.tree.leaves(stopped)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  info = json.loads((tmp_path / "stopped" / "policy" / "train.json").read_text())
  assert info["steps"] == 2 and info["schedule_steps"] == cfg.policy_train.steps
  again = study.base_model(stopped_cfg, str(tmp_path / "stopped"), mesh)  # a finished phase is loaded
  assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(stopped), jax.tree.leaves(again)))
