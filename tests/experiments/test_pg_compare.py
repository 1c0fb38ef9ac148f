"""star_jax.pg_compare: STaR and PG-STaR runs from one base model, collected on one sampled-token axis."""

import csv
import json
import os

import numpy as np
import pytest

from experiments.pg_star_arithmetic import compare as pg_compare
from star_jax import star
from star_jax.pg import config as rl_config
from star_jax.pg import loop as rl
from tests.pg.test_loop import _final_params, pg_star_arithmetic


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("pg_compare")
  c = pg_star_arithmetic.get_config("tiny")
  c.data.data_dir = str(root / "data")
  c.rl.base_workdir = str(root / "star")
  cfg = rl_config.rl_experiment_from_config(c)
  base = star.make_base_model(cfg, str(root / "star"))
  star_records = star.run(cfg, str(root / "star"), base)
  rl_records = rl.run(cfg, str(root / "pg"), base)
  rows = pg_compare.compare(cfg, str(root / "star"), {"rloo": str(root / "pg")}, str(root / "out"))
  return {"cfg": cfg, "root": root, "base": base, "star": star_records, "rl": rl_records, "rows": rows}


def test_star_points_accumulate_tokens_and_time():
  records = [{"iteration": 0, "acc_train_lengths": 0.1, "seconds_eval": 2.0},
             {"iteration": 1, "acc_train_lengths": 0.3, "sampled_tokens": 100, "seconds_generated": 1.0,
              "seconds_rationalized": 1.0, "seconds_train": 5.0, "seconds_eval": 2.0},
             {"iteration": 2, "acc_train_lengths": 0.5, "sampled_tokens": 50, "seconds_generated": 1.0,
              "seconds_rationalized": None, "seconds_train": 6.0, "seconds_eval": 2.0}]
  points = pg_compare.star_points(records, [0.0, 0.5, 0.7])
  assert [p["sampled_tokens"] for p in points] == [0, 100, 150]
  assert [p["seconds"] for p in points] == [2.0, 11.0, 20.0]
  assert [p["kl_to_base"] for p in points] == [0.0, 0.5, 0.7]
  assert [p["acc_train_lengths"] for p in points] == [0.1, 0.3, 0.5]
  with pytest.raises(ValueError, match="STaR iteration 1 has no sampled_tokens"):
    pg_compare.star_points([records[0], {k: v for k, v in records[1].items() if k != "sampled_tokens"}], [0.0, 0.1])


@pytest.mark.e2e
def test_compare_writes_one_row_per_run_on_one_token_axis(runs):
  out, cfg = runs["root"] / "out", runs["cfg"]
  points = json.loads((out / "comparison.json").read_text())
  assert list(points) == ["STaR", "PG rloo"]
  assert points["STaR"][-1]["sampled_tokens"] == sum(r.get("sampled_tokens", 0) for r in runs["star"]) > 0
  assert points["STaR"][0]["kl_to_base"] == 0.0  # the base model itself
  assert points["PG rloo"][-1]["sampled_tokens"] == runs["rl"][-1]["sampled_tokens"] > 0
  assert [p["acc_train_lengths"] for p in points["STaR"]] == [r["acc_train_lengths"] for r in runs["star"]]
  with open(out / "comparison.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [r["run"] for r in rows] == ["STaR", "PG rloo"] == [r["run"] for r in runs["rows"]]
  table = (out / "comparison.md").read_text().splitlines()
  assert table[0].startswith("| run |") and len(table) == 2 + 2
  assert os.path.getsize(out / "comparison.png") > 1000
  assert cfg.data.max_train_digits == 2 and "acc_2digit" in rows[0]


@pytest.mark.e2e
def test_kl_meter_is_the_rl_loops_measurement(runs):
  """The meter gives the RL loop's own kl_to_base for its final params (same prompts, keys, estimator),
  and exactly 0 for the base model."""
  cfg, root = runs["cfg"], runs["root"]
  measure = rl.kl_meter(cfg, str(root / "star"), runs["base"])
  assert measure(runs["base"], 0) == {"kl_to_base": 0.0, "kl_to_base_k3": 0.0}
  state, _ = _final_params(cfg, str(root / "pg"))
  last = runs["rl"][-1]
  got = measure(state.train.params, last["step"])
  np.testing.assert_allclose(got["kl_to_base"], last["kl_to_base"], rtol=1e-5, atol=1e-6)
