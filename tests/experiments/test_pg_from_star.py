"""experiments/pg_star_arithmetic/from_star/summarize.py on synthetic run files, against hand-computed numbers;
run.sh's STaR stopping rule; the driver's shell syntax."""

import json
import math
import os
import subprocess

import pytest

from experiments.pg_star_arithmetic.from_star import summarize

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = {"per_length": 100, "samples": 4, "temperature": 1.0, "seed": 0, "max_new_tokens": 144,
            "heldout_stream": 1_000_003}


def _eval(greedy, sampled, kind="pg"):
  """An evaluate.py result with one length '2digit' of len(greedy) problems."""
  n = len(greedy)
  return {"model": {"workdir": "/w", "kind": kind}, "settings": dict(SETTINGS), "seconds": 1.0, "lengths": {"2digit": {
      "n": n, "from_test_split": 50, "in_training_set": 0, "problems": [f"{10 + i}+10" for i in range(n)],
      "greedy": {"correct": sum(greedy), "accuracy": sum(greedy) / n, "ci95": [0.0, 1.0]},
      "sampled": {"correct": sum(sampled), "samples": 4 * n, "accuracy": sum(sampled) / (4 * n), "ci95": [0.0, 1.0],
                  "tokens_per_sample": 50.0},
      "greedy_correct": greedy, "sampled_correct": sampled}}}


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    if path.endswith(".jsonl"):
      f.write("".join(json.dumps(r) + "\n" for r in obj))
    else:
      json.dump(obj, f)


@pytest.fixture
def root(tmp_path):
  # start: 50 of 100 greedy right; end: the same 50 plus 10 more (pairs: 50 (1,1), 10 (0,1), 40 (0,0))
  start_greedy = [1] * 50 + [0] * 50
  end_greedy = [1] * 60 + [0] * 40
  # sampled (4 per problem): start 2/4 everywhere (rate 0.5); end 3/4 on the first 20 problems, 2/4 elsewhere
  _write(str(tmp_path / "start" / "heldout_eval.json"), _eval(start_greedy, [2] * 100, kind="star"))
  _write(str(tmp_path / "outcome" / "heldout_eval.json"), _eval(end_greedy, [3] * 20 + [2] * 80))
  # 12 updates: all-equal fraction 1.0 for the first 2, 0.5 for the next 8, 0.0 for the last 2
  metrics = [{"step": s, "groups_all_equal": 1.0 if s <= 2 else (0.5 if s <= 10 else 0.0), "reward": s / 10,
              "accuracy": s / 100, "sampled_tokens": 1000 * s} for s in range(1, 13)]
  _write(str(tmp_path / "outcome" / "rl_metrics.jsonl"), metrics)
  _write(str(tmp_path / "outcome" / "rl_eval.jsonl"), [{"step": 0, "kl_to_base": 0.0, "kl_to_base_k3": 0.0},
                                                       {"step": 12, "kl_to_base": 0.25, "kl_to_base_k3": 0.2}])
  _write(str(tmp_path / "star" / "heldout_eval.json"), _eval(start_greedy, [2] * 100, kind="star"))
  _write(str(tmp_path / "star" / "star_metrics.jsonl"), [{"iteration": 0}, {"iteration": 1, "sampled_tokens": 7000},
                                                         {"iteration": 2, "sampled_tokens": 6000}])
  os.makedirs(tmp_path / "data")  # not a run: ignored
  return tmp_path


def test_summary_by_hand(root, tmp_path):
  results = summarize.summarize(str(root), str(tmp_path / "out"))
  assert list(results["variants"]) == ["outcome", "star"]
  outcome = results["variants"]["outcome"]
  t = outcome["training"]
  assert t["updates"] == 12 and t["sampled_tokens"] == 12_000
  # all-equal groups: first 10 updates (2 x 1.0 + 8 x 0.5) / 10, last 10 (8 x 0.5 + 2 x 0) / 10, all 12: 6 / 12
  assert t["groups_all_equal"] == pytest.approx({"first": 0.6, "last": 0.4, "overall": 0.5})
  assert t["reward"]["first"] == pytest.approx(0.55) and t["reward"]["last"] == pytest.approx(0.75)
  assert t["kl_to_start"] == 0.25 and t["kl_to_start_k3"] == 0.2
  g = outcome["lengths"]["2digit"]["greedy"]
  assert (g["start"], g["end"], g["change"]) == pytest.approx((0.5, 0.6, 0.1))
  # independent proportions: se = √(0.6·0.4/100 + 0.5·0.5/100) = √0.0049 = 0.07; 0.1 ± 1.96·0.07
  assert g["change_ci95"] == pytest.approx([0.1 - 0.1372, 0.1 + 0.1372])
  # paired: d = 1 on 10 problems, 0 on 90: mean 0.1, s_d = √((10·0.81 + 90·0.01)/99) = √(9/99); half 1.96 s_d / 10
  half = 1.96 * math.sqrt(9 / 99) / 10
  assert g["change_ci95_paired"] == pytest.approx([0.1 - half, 0.1 + half])
  s = outcome["lengths"]["2digit"]["sampled"]
  assert (s["start"], s["end"]) == pytest.approx((0.5, 0.55))  # (20·3 + 80·2) / 400
  # per-problem rates differ by 0.25 on 20 problems: mean 0.05, s_d = √((20·0.04 + 80·0.0025)/99) = √(1/99)
  half = 1.96 * math.sqrt(1 / 99) / 10
  assert s["change_ci95_paired"] == pytest.approx([0.05 - half, 0.05 + half])
  assert s["change_ci95"] == pytest.approx([0.05 - 1.96 * math.sqrt((0.55 * 0.45 + 0.25) / 100),
                                            0.05 + 1.96 * math.sqrt((0.55 * 0.45 + 0.25) / 100)])
  star = results["variants"]["star"]
  assert star["training"] == {"kind": "star", "iterations": 2, "sampled_tokens": 13_000,
                              "tokens_per_iteration": [7000, 6000]}
  assert star["lengths"]["2digit"]["greedy"]["change"] == 0.0
  out = tmp_path / "out"
  assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
  md = (out / "results.md").read_text()
  assert "| outcome | 12,000 | 12 | 60.0 → 40.0 (50.0) |" in md and "| star | 13,000 | 2 iterations |" in md
  assert "| outcome | 60.0 (" in md and "+10.0 (" in md
  assert os.path.getsize(out / "accuracy.png") > 1000


def test_mismatched_evaluations_are_refused(root):
  other = _eval([1] * 100, [2] * 100)
  other["lengths"]["2digit"]["problems"][0] = "99+99"
  _write(str(root / "outcome" / "heldout_eval.json"), other)
  with pytest.raises(ValueError, match="2digit: the start and end evaluations are not on the same problems"):
    summarize.collect(str(root))
  other = _eval([1] * 100, [2] * 100)
  other["settings"]["samples"] = 8
  _write(str(root / "outcome" / "heldout_eval.json"), other)
  with pytest.raises(ValueError, match="outcome: evaluated with"):
    summarize.collect(str(root))


def test_star_stops_within_half_an_iteration_of_the_budget(tmp_path):
  assert summarize.star_should_continue(str(tmp_path), 100)  # no iteration yet
  _write(str(tmp_path / "star_metrics.jsonl"), [{"iteration": 0}, {"iteration": 1, "sampled_tokens": 100},
                                               {"iteration": 2, "sampled_tokens": 100}])
  assert summarize.star_should_continue(str(tmp_path), 260)  # 200 + 50 < 260: a third lands at 300 (40 over < 60 short)
  assert not summarize.star_should_continue(str(tmp_path), 250)  # 200 is as close as 300 would be
  assert not summarize.star_should_continue(str(tmp_path), 150)


@pytest.mark.parametrize("name", ["run.sh", "learned_prm.sh"])
def test_driver_syntax_usage_and_missing_iteration(name, tmp_path):
  """Both drivers source common.sh: usage without arguments, a clear error for an unfinished iteration."""
  script = os.path.join(REPO, "experiments", "pg_star_arithmetic", "from_star", name)
  subprocess.run(["bash", "-n", script], check=True)
  out = subprocess.run(["bash", script], capture_output=True, text=True, check=False)
  assert out.returncode == 2 and f"{name} STAR_WORKDIR ITER TOKENS ROOT" in out.stderr
  (tmp_path / "star").mkdir()
  out = subprocess.run(["bash", script, str(tmp_path / "star"), "3", "1000", str(tmp_path / "root")],
                       capture_output=True, text=True, check=False)
  assert out.returncode == 1 and f"{name}: " in out.stderr and "iter_3/train.json not found" in out.stderr


def test_plot_survives_a_wilson_bound_a_rounding_error_inside_p(root, tmp_path):
  """An accuracy of 1.0 whose Wilson upper bound is 1 - 1e-16 (as wilson(1.0, 81) computes) must not make a
  negative error bar (matplotlib refuses those)."""
  path = root / "outcome" / "heldout_eval.json"
  ev = json.loads(path.read_text())
  ev["lengths"]["2digit"]["greedy"].update(accuracy=1.0, ci95=[0.95, 1.0 - 1e-16])
  path.write_text(json.dumps(ev))
  summarize.summarize(str(root), str(tmp_path / "out"))
  assert os.path.getsize(tmp_path / "out" / "accuracy.png") > 0
