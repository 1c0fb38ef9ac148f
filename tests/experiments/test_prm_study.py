"""experiments/prm_arithmetic/study.py: its config, disjoint problem pools, AUC, summary, and the tiny study end to end."""

import json
import math
import os

import numpy as np
import pytest

from experiments.configs import prm_arithmetic
from experiments.prm_arithmetic import study as prm_experiment


def _study_config(variant="tiny"):
  return prm_arithmetic.get_config(variant)


def test_study_config_and_disjoint_pools():
  for variant in ("", "tiny"):
    cfg = prm_experiment.study_from_config(_study_config(variant))
    pools = prm_experiment.problem_pools(cfg.study)
    test, policy, reward = (set(pools[k]) for k in ("test", "policy", "reward"))
    multi = {p for p in policy if p.n_digits >= 2}
    assert not (test & multi) and not (test & reward) and not (multi & reward)
    assert len(pools["test"]) == cfg.study.test_problems
  bad = _study_config("tiny")
  bad.study.unknown_key = 1
  with pytest.raises(ValueError, match="config.study.unknown_key"):
    prm_experiment.study_from_config(bad)


def test_auc_matches_pairwise_counting():
  rng = np.random.default_rng(0)
  scores, labels = rng.integers(0, 5, 40).astype(float), rng.random(40) < 0.4
  pos, neg = scores[labels], scores[~labels]
  pairwise = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
  assert math.isclose(prm_experiment.auc(scores, labels), pairwise)
  assert prm_experiment.auc([0.1, 0.2], [1, 1]) is None


def test_summarize_on_synthetic_samples():
  # 2 problems x 4 samples; the PRM's step probabilities rank the right samples first for problem 0 only
  records, step_probs, orm = [], [], []
  for i, (truth, correct) in enumerate([(7, [0, 1, 0, 1]), (9, [0, 0, 1, 0])]):
    for j, ok in enumerate(correct):
      records.append({"a": truth, "b": 0, "answer": truth if ok else 100 + j, "correct": bool(ok),
                      "labels": [1.0, float(ok)]})
      step_probs.append([0.9, 0.8 if (ok if i == 0 else not ok) else 0.1])
      orm.append(0.5)
  out = prm_experiment.summarize(records, step_probs, orm, 4, majority_subsets=2000)
  curves = out["best_of_n"]
  assert curves["n"] == [1, 2, 4] and out["sample_accuracy"] == 3 / 8
  for key in ("pass@n", "prm_product", "prm_min", "prm_last", "orm"):
    assert math.isclose(curves[key][0], 3 / 8), key  # N = 1: any selector is a random sample
  assert abs(curves["majority"][0] - 3 / 8) < 0.05  # (estimated from random subsets)
  assert curves["majority"][2] == 0.5 * 1 + 0.5 * (1 / 4)  # problem 1: four answers tie at N = K
  assert curves["prm_product"][2] == 0.5 and curves["pass@n"][2] == 1.0  # problem 0 right, problem 1 wrong
  assert curves["orm"][2] == 0.0  # constant scores: ties go to the first sample, wrong on both
  assert out["step_level"]["steps"] == 16 and out["step_level"]["prm_accuracy"] == 12 / 16


@pytest.mark.slow
def test_study_end_to_end_tiny(tmp_path):
  """Every phase of the study on the tiny config; a second run reuses the cached phases, same results."""
  cfg = prm_experiment.study_from_config(_study_config("tiny"))
  results = prm_experiment.run(cfg, str(tmp_path / "work"), results_dir=str(tmp_path / "results"))
  for name in ("results.json", "report.md", "best_of_n.png", "mc_agreement.png"):
    assert os.path.exists(tmp_path / "results" / name), name
  k = cfg.study.test_samples
  assert results["samples"] == cfg.study.test_problems * k and results["best_of_n"]["n"] == [1, 2, 4]
  curves = results["best_of_n"]
  assert all(curves["pass@n"][i] >= curves[key][i] for key in ("prm_product", "orm", "majority")
             for i in range(3))
  again = prm_experiment.run(cfg, str(tmp_path / "work"))
  strip = lambda r: json.dumps({k: v for k, v in r.items() if k != "timings_seconds"}, sort_keys=True)  # noqa: E731
  assert strip(again) == strip(results)
