"""experiments/prm_arithmetic/verifiers.py: encoding, the per-verifier evaluation on synthetic samples, and the tiny
study end to end (slow)."""

import json
import math
import os

import numpy as np
import pytest

from experiments.configs import prm_arithmetic
from experiments.prm_arithmetic import study, verifiers
from star_jax.data import arithmetic
from star_jax.data.arithmetic import Problem
from star_jax.prm import steps as prm


def test_encode_places_step_labels_and_the_outcome_at_the_last_position():
  p = Problem(123, 989)
  target = arithmetic.target_text(p)
  labels = prm.arithmetic_step_labels(p, target)
  ex = verifiers.encode({"a": 123, "b": 989, "target": target, "labels": labels, "correct": True})
  assert ex["step_mask"].sum() == len(labels) == 7
  assert ex["orm_mask"].sum() == 1 and ex["orm_mask"][-1] == 1 and ex["orm_targets"][-1] == 1
  assert ex["loss_mask"][-1] == 1  # the last position predicts EOS


def test_evaluate_on_synthetic_samples():
  # 2 problems x 4 samples; step scores rank the right samples first for problem 0 only
  records, scores = [], []
  for i, correct in enumerate([[0, 1, 0, 1], [0, 0, 1, 0]]):
    for j, ok in enumerate(correct):
      records.append({"target": f"text {i} {j if not ok else 'ok'}", "correct": bool(ok), "labels": [1.0, float(ok)]})
      scores.append([0.9, 0.8 if (ok if i == 0 else not ok) else 0.1])
  out = verifiers.evaluate(records, scores, 4, {"outcome": [0.5] * 8})
  assert out["best_of_n"]["n"] == [1, 2, 4]
  for name in ("min", "product", "last", "outcome"):
    assert math.isclose(out["best_of_n"][name][0], 3 / 8), name  # N = 1: a random sample
  assert out["best_of_n"]["min"][2] == 0.5  # problem 0 right, problem 1 wrong
  # problem 0's one correct text ranked first; problem 1's correct text last (random: 1/3 and 1/4)
  assert out["text_ranked_first"]["min"] == {"problems": 2, "ranked_first": 0.5, "random_scores": (1 / 3 + 1 / 4) / 2}
  assert out["solution_auc"]["outcome"] == 0.5
  labels = np.concatenate([r["labels"] for r in records])
  flat = np.concatenate(scores)
  pos, neg = flat[labels > 0.5], flat[labels < 0.5]
  assert math.isclose(out["step_auc"], np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))
  with pytest.raises(ValueError, match="step scores"):
    verifiers.evaluate(records, scores[:-1] + [[0.5]], 4)


@pytest.mark.slow
@pytest.mark.e2e
def test_tiny_study_with_every_verifier(tmp_path):
  cfg = study.study_from_config(prm_arithmetic.get_config("tiny"))
  out = verifiers.run(cfg, str(tmp_path / "work"), str(tmp_path / "results"))
  assert set(out["variants"]) >= {"hidden_state", "min_logprob", "implicit_outcome_prefix", "implicit_step_step"}
  assert out["best_prm"] in out["variants"]
  for name in ("results.json", "report.md", "verifiers_best_of_n.png"):
    assert os.path.exists(tmp_path / "results" / name)
  assert json.loads((tmp_path / "results" / "results.json").read_text())["variants"].keys() == out["variants"].keys()
