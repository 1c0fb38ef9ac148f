"""The sweep runner: member names, override validation, one shared base model, skipping finished members,
--member / --collect / --base_only, and a collected table equal to the members' star_metrics.jsonl (STaR)
or rl_eval.jsonl (policy-gradient configs)."""

import csv
import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from absl import flags

from experiments import sweep
from experiments.configs import pg_star_arithmetic, star_arithmetic
from star_jax import io, models, star
from star_jax.data import arithmetic
from star_jax.data.arithmetic import Problem
from star_jax.pg import config as rl_config
from star_jax.pg import loop as rl

CONFIG = star_arithmetic.__file__
PG_CONFIG = pg_star_arithmetic.__file__


def _config(variant="tiny"):
  return star_arithmetic.get_config(variant)


def _flags(argv):
  fv = flags.FlagValues()
  sweep.define_flags(fv, ["sweep"] + argv)
  fv(["sweep"] + argv)
  return fv


# ---- naming, validation, the sweep file ----

def test_member_names():
  assert sweep.member_name({"star.rationalize": False}) == "star.rationalize=False"
  assert sweep.member_name({"star.temperature": 0.5, "train.lr": 1e-3}) == "star.temperature=0.5,train.lr=0.001"
  assert sweep.member_name({}) == "defaults"
  assert sweep.member_name({"data.data_dir": "/a b/c"}) == "data.data_dir=_a_b_c"  # path-safe


def test_every_sweep_of_the_config_file_validates(tmp_path):
  names = ["rationalization", "restart_from_base", "temperature", "fraction_of_D", "seed_per_digit", "carry_facts"]
  for name in names:
    members = sweep.plan(_config(""), sweep.load_sweep(CONFIG, name), str(tmp_path), name)
    assert len({m.workdir for m in members}) == len(members) >= 2
  members = sweep.plan(_config(""), sweep.load_sweep(CONFIG, "rationalization"), str(tmp_path))
  assert [m.name for m in members] == ["star.rationalize=True", "star.rationalize=False"]
  assert [m.cfg.star.rationalize for m in members] == [True, False]
  assert members[1].workdir == os.path.join(tmp_path, "star.rationalize=False")
  assert {m.cfg.data.data_dir for m in members} == {os.path.join(tmp_path, "data")}  # one copy of the data
  with pytest.raises(ValueError, match=r"no sweep 'nope'; its sweeps: \['carry_facts'"):
    sweep.load_sweep(CONFIG, "nope")


def test_overrides_are_validated_naming_the_key(tmp_path):
  c = _config()
  with pytest.raises(ValueError, match=r"member 1 \(star.rationalise=False\): unknown config key "
                                       r"config.star.rationalise; valid keys here: \[.*'rationalize'"):
    sweep.plan(c, [{"star.rationalize": True}, {"star.rationalise": False}], str(tmp_path))
  with pytest.raises(ValueError, match=r"unknown config key config.stars.iterations \(no section config.stars\)"):
    sweep.plan(c, [{"stars.iterations": 1}], str(tmp_path))
  with pytest.raises(ValueError, match=r"config.star.iterations = 'two'"):  # ConfigDict's type check
    sweep.plan(c, [{"star.iterations": "two"}], str(tmp_path))
  with pytest.raises(ValueError, match=r"member 0 \(star.growth=-1.0\): config.star.growth must be > 0"):
    sweep.plan(c, [{"star.growth": -1.0}], str(tmp_path))  # the typed config's validation
  with pytest.raises(ValueError, match="members 0 and 1 have the same name"):
    sweep.plan(c, [{"star.seed": 1}, {"star.seed": 1}], str(tmp_path))
  assert c.star.rationalize is True and c.data.data_dir == ""  # the caller's config is left alone


def test_base_sharing_follows_what_the_base_depends_on(tmp_path):
  c = _config()
  members = sweep.plan(c, [{"star.rationalize": False}, {"star.restart_from_base": False}, {"star.temperature": 0.5},
                           {"star.seed_per_digit": 2}, {"train.lr": 1e-3}, {"model.d_model": 64},
                           {"star.seed_per_digit": c.star.seed_per_digit}], str(tmp_path))
  assert [m.shares_base for m in members] == [True, True, True, False, False, False, True]


# ---- running and collecting, with a stand-in for the STaR loop ----

class FakeStar:
  """Stands in for star.make_base_model / star.run: records calls; run writes (or resumes)
  star_metrics.jsonl with records made from the config, one per iteration."""

  def __init__(self):
    self.bases, self.runs = [], []

  def make_base_model(self, cfg, workdir):
    self.bases.append(workdir)
    return {"base_of": workdir}

  def run(self, cfg, workdir, base_params, generator=None):
    self.runs.append((workdir, base_params))
    path = os.path.join(workdir, "star_metrics.jsonl")
    records = io.read_jsonl(path) if os.path.exists(path) else []
    for n in range(len(records), cfg.star.iterations + 1):
      acc = min(1.0, 0.1 + 0.2 * n + 0.05 * cfg.star.rationalize)
      record = {"iteration": n, "acc_1digit": acc, "acc_2digit": acc / 2, "acc_3digit": 0.0,
                "acc_overall": acc / 2, "acc_train_lengths": 0.75 * acc, "seconds_eval": 1.0}
      if n:
        record.update({"kept_generated": 10 * n, "kept_rationalized": 3 * n * cfg.star.rationalize,
                       "kept_generated_1digit": 6 * n, "kept_generated_2digit": 4 * n, "seconds_train": 2.0})
      records.append(record)
    io.write_jsonl(path, records)
    return records


@pytest.fixture
def fake(monkeypatch):
  f = FakeStar()
  monkeypatch.setattr(star, "make_base_model", f.make_base_model)
  monkeypatch.setattr(star, "run", f.run)
  return f


@pytest.mark.e2e
def test_shared_base_skip_finished_member_and_collect(tmp_path, fake):
  w = str(tmp_path)
  with pytest.raises(ValueError, match=r"member 0 \(star.seed_per_digit=5\): config.star.seed_per_digit must be <= "
                                       r"config.data.rationales_per_digit=4"):
    sweep.run_from_flags(_flags([f"--config={CONFIG}:tiny", "--sweep=seed_per_digit", f"--workdir={w}"]))
  args = [f"--config={CONFIG}:tiny", "--sweep=seed_per_digit", f"--workdir={w}",
          "--config.data.rationales_per_digit=50"]
  c = _config()
  c.data.rationales_per_digit = 50
  members = sweep.plan(c, sweep.load_sweep(CONFIG, "seed_per_digit"), w)
  assert [m.shares_base for m in members] == [False, False, False]  # (5, 10, 50; tiny has 4)

  # --member runs one member (its own base) and collects nothing
  sweep.run_from_flags(_flags(args + ["--member=1"]))
  assert fake.bases == [os.path.join(w, "star.seed_per_digit=10")]
  assert [r[0] for r in fake.runs] == [os.path.join(w, "star.seed_per_digit=10")]
  assert not os.path.exists(os.path.join(w, "sweep.md"))

  # --collect alone: every member listed, the missing ones as not started
  sweep.run_from_flags(_flags(args + ["--collect"]))
  rows = list(csv.DictReader(open(os.path.join(w, "sweep.csv"))))
  assert [(r["member"], r["finished"], r["iterations"]) for r in rows] == [
      ("star.seed_per_digit=5", "False", "0"), ("star.seed_per_digit=10", "True", "2"),
      ("star.seed_per_digit=50", "False", "0")]
  assert len(fake.runs) == 1

  # The rationalization sweep: one base model, made once in <workdir>/base, given to both members.
  fake.bases.clear(), fake.runs.clear()
  w2 = str(tmp_path / "rat")
  args = [f"--config={CONFIG}:tiny", "--sweep=rationalization", f"--workdir={w2}", "--config.star.iterations=3"]
  sweep.run_from_flags(_flags(args + ["--base_only"]))
  assert fake.bases == [w2] and not fake.runs
  assert json.load(open(os.path.join(w2, "base_config.json")))["star"]["seed_per_digit"] == 4
  fake.bases.clear()
  sweep.run_from_flags(_flags(args))
  assert fake.bases == [w2]
  assert [r[0] for r in fake.runs] == [os.path.join(w2, f"star.rationalize={v}") for v in (True, False)]
  assert fake.runs[0][1] is fake.runs[1][1] == {"base_of": w2}
  assert len(io.read_jsonl(os.path.join(w2, "star.rationalize=False", "star_metrics.jsonl"))) == 4  # CLI
  table = open(os.path.join(w2, "sweep.md")).read()
  assert "| `star.rationalize=True` | 3 | 56.3% | 3 | 56.3% | 37.5% | 75.0% | 37.5% | 0.0% | 30 | 9 | 10 |" in table
  assert "| `star.rationalize=False` | 3 | 52.5% |" in table
  assert os.path.getsize(os.path.join(w2, "sweep.png")) > 1000

  # A second invocation does no work (no base, no run) and rewrites the same table.
  fake.bases.clear(), fake.runs.clear()
  sweep.run_from_flags(_flags(args))
  assert fake.bases == [] and fake.runs == []
  assert open(os.path.join(w2, "sweep.md")).read() == table

  # One more iteration on the command line: both resume (star.run is resumable), with the same base.
  sweep.run_from_flags(_flags(args[:-1] + ["--config.star.iterations=4"]))
  assert fake.bases == [w2] and len(fake.runs) == 2
  # ... but a different base config in the same workdir is refused.
  with pytest.raises(ValueError, match=r"different base config.*config.train.lr: 0.002 -> 0.01"):
    sweep.run_from_flags(_flags(args[:-1] + ["--config.star.iterations=5", "--config.train.lr=0.01"]))


@pytest.mark.e2e
def test_list_and_bad_member(tmp_path, fake, capsys):
  args = [f"--config={CONFIG}:tiny", "--sweep=temperature", f"--workdir={tmp_path}"]
  sweep.run_from_flags(_flags(args + ["--list"]))
  lines = capsys.readouterr().out.splitlines()
  assert lines == [f'{i}\tstar.temperature={t}\t{{"star.temperature": {t}}}' for i, t in enumerate((0.0, 0.5, 1.0))]
  sweep.run_from_flags(_flags(args + ["--member=star.temperature=1.0"]))  # by name
  assert [r[0] for r in fake.runs] == [os.path.join(tmp_path, "star.temperature=1.0")]
  with pytest.raises(ValueError, match=r"--member='3': no such member; use 0..2"):
    sweep.run_from_flags(_flags(args + ["--member=3"]))


# ---- the real loop (tiny config, a stand-in generator) ----

def parity_generator(params):
  """Right for even a + b, and for every hinted prompt (so rationalization keeps the odd ones)."""
  del params

  def generate(prompts, max_new_tokens, rng):
    del rng
    out = []
    for prompt in prompts:
      lines = prompt.split("\n")
      p = arithmetic.parse_question(lines[1])
      ok = (p.a + p.b) % 2 == 0 or lines[3] != ""
      out.append(arithmetic.target_text(p if ok else Problem(p.a, p.b + 1))[:max_new_tokens])
    return out
  return generate


@pytest.mark.e2e
def test_real_loop_table_equals_the_members_metrics(tmp_path, monkeypatch):
  w = str(tmp_path)
  made, given = [], []
  real_make, real_run = star.make_base_model, star.run
  monkeypatch.setattr(star, "make_base_model", lambda cfg, d: made.append(d) or real_make(cfg, d))
  monkeypatch.setattr(star, "run", lambda cfg, d, base, generator=None: given.append(base) or
                      real_run(cfg, d, base, generator=generator))
  args = [f"--config={CONFIG}:tiny", "--sweep=rationalization", f"--workdir={w}", "--config.star.iterations=1",
          "--config.star.growth=1.0"]
  members = sweep.run_from_flags(_flags(args), generator=parity_generator)
  assert made == [w] and len(given) == 2 and given[0] is given[1]  # the same base M for both members
  base = star.load_iteration_params(members[0].cfg, w, "base")
  for a, b in zip(jax.tree.leaves(jax.device_get(base)), jax.tree.leaves(jax.device_get(given[0]))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  rows = list(csv.DictReader(open(os.path.join(w, "sweep.csv"))))
  assert [r["member"] for r in rows] == ["star.rationalize=True", "star.rationalize=False"]
  for m, row in zip(members, rows):
    records = io.read_jsonl(os.path.join(m.workdir, "star_metrics.jsonl"))
    assert [r["iteration"] for r in records] == [0, 1]
    final = records[-1]
    for key in ("acc_train_lengths", "acc_overall", "acc_1digit", "acc_2digit", "acc_3digit", "kept_generated",
                "kept_rationalized", "kept_generated_2digit", "kept_rationalized_2digit"):
      assert float(row[key]) == final[key], key
    best = max(records, key=lambda r: r["acc_train_lengths"])
    assert int(row["best_iteration"]) == best["iteration"]
    assert float(row["seconds_total"]) == pytest.approx(
        sum(v for r in records for k, v in r.items() if k.startswith("seconds_") and v is not None))
  kept = {r["member"]: (int(r["kept_generated"]), int(r["kept_rationalized"])) for r in rows}
  questions = io.read_jsonl(os.path.join(members[0].workdir, "iter_1", "generated.jsonl"))
  even = sum((q["a"] + q["b"]) % 2 == 0 for q in questions)
  assert kept == {"star.rationalize=True": (even, len(questions) - even), "star.rationalize=False": (even, 0)}
  assert os.path.exists(os.path.join(w, "data")) and not os.path.exists(os.path.join(members[0].workdir, "data"))

  # Finished: nothing is trained, loaded or evaluated again.
  monkeypatch.setattr(star, "make_base_model", None)
  monkeypatch.setattr(star, "run", None)
  sweep.run_from_flags(_flags(args), generator=parity_generator)


# ---- policy-gradient sweeps: a config with an `rl` section runs rl.run per member ----

def test_every_pg_sweep_validates_and_shares_one_base(tmp_path):
  for name in pg_star_arithmetic.SWEEPS:
    members = sweep.plan(pg_star_arithmetic.get_config(""), sweep.load_sweep(PG_CONFIG, name), str(tmp_path), name)
    assert len(members) >= 2 and all(m.is_rl and m.shares_base for m in members), name  # rl.* leaves the base alone
  members = sweep.plan(pg_star_arithmetic.get_config("tiny"), [{"rl.advantage": "none"}, {"rl.base_workdir": "/star"},
                                                               {"star.seed_steps": 3}], str(tmp_path))
  assert [m.shares_base for m in members] == [True, False, False]
  assert [sweep.base_workdir(m.cfg, "/w") for m in members] == ["/w", "/star", "/w"]
  assert not sweep.plan(_config(), [{}], str(tmp_path))[0].is_rl


def test_rl_member_is_finished_by_the_evaluation_where_the_loop_stops():
  cfg = rl_config.rl_experiment_from_config(pg_star_arithmetic.get_config("tiny")).rl  # 4 steps
  records = [{"step": s, "sampled_tokens": 100 * s} for s in (0, 2, 4)]
  assert sweep.rl_is_finished(cfg, records)
  assert not sweep.rl_is_finished(cfg, records[:2]) and not sweep.rl_is_finished(cfg, [])
  budget = dataclasses.replace(cfg, token_budget=150)  # rl.run stops (and evaluates) at step 2
  assert sweep.rl_is_finished(budget, records[:2]) and not sweep.rl_is_finished(budget, records[:1])
  assert not sweep.rl_is_finished(dataclasses.replace(cfg, steps=6), records)  # a raised rl.steps resumes
  assert sweep.rl_report([{"member": "m", "finished": False, "steps": 0}], 3)[1] == "Not started: `m`."


@pytest.mark.e2e
def test_rl_sweep_shares_one_base_collects_and_skips_finished_members(tmp_path, monkeypatch):
  """Two members of the tiny PG config (2 steps each) from one base model; sweep.csv holds each member's last
  evaluation; a second invocation trains, loads and evaluates nothing."""
  config_file = tmp_path / "pg_two.py"
  config_file.write_text("from experiments.configs.pg_star_arithmetic import get_config  # noqa: F401\n"
                         "SWEEPS = {'advantage': [{'rl.advantage': 'rloo'}, {'rl.advantage': 'none'}]}\n")
  w = str(tmp_path / "sweep")
  made, given = [], []
  real_run = rl.run
  init = jax.jit(models.init_params, static_argnums=0)  # a random base model: seed training is test_star's
  monkeypatch.setattr(star, "make_base_model", lambda cfg, d: made.append(d) or init(cfg.model, jax.random.key(0)))
  monkeypatch.setattr(rl, "run", lambda cfg, d, base: given.append(base) or real_run(cfg, d, base))
  args = [f"--config={config_file}:tiny", "--sweep=advantage", f"--workdir={w}", "--config.rl.steps=2"]
  members = sweep.run_from_flags(_flags(args))
  assert made == [w] and len(given) == 2 and given[0] is given[1]  # one base model for both members
  assert json.load(open(os.path.join(w, "base_config.json")))["rl"] == {"base_workdir": ""}

  rows = list(csv.DictReader(open(os.path.join(w, "sweep.csv"))))
  assert [r["member"] for r in rows] == ["rl.advantage=rloo", "rl.advantage=none"]
  for m, row in zip(members, rows):
    records = io.read_jsonl(os.path.join(m.workdir, "rl_eval.jsonl"))
    assert [r["step"] for r in records] == [0, 2] and row["finished"] == "True" and row["steps"] == "2"
    for key in ("acc_train_lengths", "acc_overall", "acc_1digit", "acc_3digit", "kl_to_base", "sampled_tokens",
                "seconds"):
      assert float(row[key]) == records[-1][key], key
    assert float(row["base_acc_train_lengths"]) == records[0]["acc_train_lengths"]
    assert float(row["best_acc_train_lengths"]) == max(r["acc_train_lengths"] for r in records)
  table = open(os.path.join(w, "sweep.md")).read()
  assert "| run | sampled tokens |" in table and "Shared base model (`base/`)" in table
  assert all(f"| `{m.name}` | {int(float(r['sampled_tokens'])):,} |" in table for m, r in zip(members, rows))
  assert os.path.getsize(os.path.join(w, "sweep.png")) > 1000

  # Finished: nothing is made, loaded or run again, and the table is the same.
  monkeypatch.setattr(star, "make_base_model", None)
  monkeypatch.setattr(rl, "run", None)
  sweep.run_from_flags(_flags(args))
  assert open(os.path.join(w, "sweep.md")).read() == table
  # More steps on the command line: both members are unfinished again (--collect alone runs nothing).
  sweep.run_from_flags(_flags(args[:-1] + ["--config.rl.steps=4", "--collect"]))
  assert "`rl.advantage=none` (unfinished: step 2)" in open(os.path.join(w, "sweep.md")).read()
