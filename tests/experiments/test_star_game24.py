"""STaR on the Game of 24 with the search phase (experiments/configs/star_game24.py, experiments/star_game24/):
config validation, and tiny end-to-end sweeps from a tiny tot_game24 base model and PRM."""

import os

import pytest

from experiments import sweep
from experiments.configs import star_game24, tot_game24
from experiments.star_game24 import compare
from experiments.tot_game24 import study as tot_study
from star_jax import io
from star_jax.data import game24
from star_jax.star import config as star_config
from star_jax.star import data as star_data
from star_jax.star import loop, search_phase


def _config(variant="tiny", **star):
  c = star_game24.get_config(variant)
  for key, value in star.items():
    c.star[key] = value
  return c


def test_every_variant_validates_and_game24_needs_a_base_dir():
  for variant in ("", "tiny"):
    cfg = star_config.star_experiment_from_config(_config(variant))
    assert cfg.data.task == "game24" and cfg.star.base_dir
  with pytest.raises(ValueError, match="config.star.base_dir"):
    star_config.star_experiment_from_config(_config(base_dir=""))
  bad = _config(search=True)
  bad.value.reward_model_dir = ""
  with pytest.raises(ValueError, match="config.value.reward_model_dir"):
    star_config.star_experiment_from_config(bad)
  with pytest.raises(ValueError, match="unknown config variant"):
    star_game24.get_config("huge")


def test_a_workdir_refuses_a_changed_search_recipe(tmp_path):
  cfg = star_config.star_experiment_from_config(_config(search=True))
  loop.check_workdir(cfg, str(tmp_path))  # the first run writes star_config.json
  loop.check_workdir(cfg, str(tmp_path))
  changed = _config(search=True)
  changed.value.kind = "oracle"
  with pytest.raises(ValueError, match="config.value.kind: 'prm' -> 'oracle'"):
    loop.check_workdir(star_config.star_experiment_from_config(changed), str(tmp_path))


def test_compare_targets_hand_values():
  def records(accs, tokens):
    return [{"iteration": i, "acc_overall": a, "sampled_tokens": t} for i, (a, t) in enumerate(zip(accs, tokens))]
  members = [{"label": compare.LABELS[(True, False, None)], "records": records([0.0, 0.1, 0.2], [0, 100, 100])},
             {"label": compare.LABELS[(True, True, "prm")], "records": records([0.0, 0.2, 0.3], [0, 150, 150])}]
  t = compare.targets(members, test_size=100)
  assert t["search_beats_star_final"] and t["star_final_tokens"] == 200
  assert t["search_tokens_to_reach_star_final"] == 150 and t["search_reaches_star_final_in_fewer_tokens"]
  # 0.3 - 0.2 over 100 each: half-width 1.96 * sqrt((0.21 + 0.16) / 100) = 0.1192: not significant
  d = t["search_vs_star_final"]
  assert abs(d["difference"] - 0.1) < 1e-12 and abs(d["ci95"] - 0.11922) < 1e-4 and not d["significant"]
  assert compare.difference(0.5, 0.2, 400)["significant"]
  assert compare.cumulative_tokens([{"sampled_tokens": 5, "search_tokens": 7}, {"sampled_tokens": 1}]) == [12, 13]


@pytest.fixture(scope="module")
def tot_base(tmp_path_factory):
  """A tiny tot_game24 study's workdir: its policy/ is the base model, its prm/ the PRM."""
  workdir = str(tmp_path_factory.mktemp("tot"))
  tot_study.run(tot_study.study_from_config(tot_game24.get_config("tiny")), workdir)
  return workdir


def _members(tot_base, workdir, sweep_list):
  c = _config()
  c.star.base_dir, c.value.reward_model_dir = os.path.join(tot_base, "policy"), os.path.join(tot_base, "prm")
  return sweep.plan(c, sweep_list, workdir)


@pytest.mark.e2e
def test_search_sweep_end_to_end_tiny(tot_base, tmp_path):
  members = _members(tot_base, str(tmp_path), [{"star.search": True, "value.kind": "prm"},
                                               {"star.rationalize": False}])
  sweep.run_sweep(members, str(tmp_path))
  searching = members[0]
  records = sweep.read_records(searching)
  assert [r["iteration"] for r in records] == [0, 1, 2]
  for r in records:
    assert {"acc_overall", "sampled_pass1", "sampled_pass2", "sampled_steps_solved_3", "search_correct"} <= set(r)
  for n, r in enumerate(records[1:], start=1):
    iter_dir = os.path.join(searching.workdir, f"iter_{n}")
    rationalized = io.read_jsonl(os.path.join(iter_dir, "rationalized.jsonl"))
    searched = io.read_jsonl(os.path.join(iter_dir, "searched.jsonl"))
    assert [s["puzzle"] for s in searched] == [x["puzzle"] for x in rationalized if not x["correct"]]
    assert r["searched"] == len(searched) and r["kept_searched"] == sum(s["correct"] for s in searched)
    assert r["search_tokens"] == sum(s["generated_tokens"] for s in searched) > 0
    assert r["search_reward_model_tokens"] > 0  # valued by the PRM
  assert "kept_searched" not in sweep.read_records(members[1])[1]
  result = compare.write(str(tmp_path), str(tmp_path / "out"))
  assert {os.path.basename(p) for p in os.listdir(tmp_path / "out")} == {"comparison.md", "comparison.json",
                                                                          "comparison.png"}
  assert result["targets"]["search_beats_star_final"] is None  # no STaR-alone member with rationalization here
  assert "search_instead_of_rationalization_final" not in result["targets"]  # no member searching without it


@pytest.mark.e2e
def test_searched_examples_are_trained_on(tot_base, tmp_path, monkeypatch):
  """A found trajectory is kept as an ordinary example: the fine-tuning set is generated + rationalized +
  searched (the search itself is replaced by one that solves the first question it is given)."""
  def solve_first(task, examples, *args, **kwargs):
    out = []
    for i, e in enumerate(examples):
      text = game24.solution_outputs(game24.puzzle_numbers(e.question))[0] + "\n" if i == 0 else "nothing\n"
      out.append({**star_data.task_record(task, e, text, "searched"), "generated_tokens": 10, "reward_model_tokens": 0,
                  "sampler_calls": 1})
    return out
  monkeypatch.setattr(search_phase, "search_records", solve_first)
  members = _members(tot_base, str(tmp_path), [{"star.search": True, "value.kind": "oracle", "star.iterations": 1}])
  sweep.run_sweep(members, str(tmp_path))
  r = sweep.read_records(members[0])[1]
  assert r["kept_searched"] == 1 and r["search_tokens"] == 10 * r["searched"]
  assert r["train_examples"] == r["kept_generated"] + r["kept_rationalized"] + 1
