"""The STaR outer loop: filtering, rationalization without the hint, restart from base, the step
schedule, files and report, and a killed run that resumes to the uninterrupted result."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments.configs import star_arithmetic
from star_jax import checkpoint, io, star, train
from star_jax.data import arithmetic, verifiers
from star_jax.data.arithmetic import Problem
from star_jax.star import data as star_data
from star_jax.star import tasks as star_tasks
from star_jax.star.config import star_experiment_from_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# The end-to-end runs fine-tune a constant number of steps: one train-step compilation serves the base
# model and both iterations (the 20% growth is tested on its own and through the loop with a fake trainer).
CONSTANT_STEPS = {"growth": 1.0}


def tiny_config(data_dir, **star_overrides):
  c = star_arithmetic.get_config("tiny")
  c.data.data_dir = str(data_dir)
  c.star.fraction_of_D = 1.0  # all of D every iteration (whatever the experiment's default)
  for k, v in star_overrides.items():
    c.star[k] = v
  return star_experiment_from_config(c)


def oracle_generator(params):
  """A deterministic stand-in for the model (params ignored): the true target when the answer is not a
  multiple of 3; otherwise a wrong one, unless hinted and a is even. Some outputs carry junk after the
  answer line, which must not be saved."""
  del params

  def generate(prompts, max_new_tokens, rng):
    del rng
    out = []
    for prompt in prompts:
      lines = prompt.split("\n")  # ["Input:", question, "Target:", hint or "", ...]
      p = arithmetic.parse_question(lines[1])
      hinted = lines[3] != ""
      ok = p.answer % 3 != 0 or (hinted and p.a % 2 == 0)
      text = arithmetic.target_text(p if ok else Problem(p.a, p.b + 1))
      out.append((text + ("Input:\n" if p.b % 2 else ""))[:max_new_tokens])
    return out
  return generate


def _no_seconds(record):
  return {k: v for k, v in record.items() if not k.startswith("seconds")}


def _assert_trees_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    # to float rounding: XLA:CPU kernels may round the last bit differently in a fresh process
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)


# ---- pure pieces ----

def test_hinted_prompt_format():
  p = Problem(152, 702)
  assert arithmetic.hinted_prompt_text(p) == "Input:\n1 5 2 + 7 0 2\nTarget:\n8 5 4\n"
  # the seed trains hinted prompt + usual target, so the model learns to justify a given answer
  assert verifiers.is_correct(p, arithmetic.target_text(p))


def test_step_schedule_grows_20_percent():
  assert [star_data.steps_for_iteration(100, 1.2, n) for n in (1, 2, 3, 4)] == [100, 120, 144, 173]
  assert [star_data.steps_for_iteration(7, 1.0, n) for n in (1, 5)] == [7, 7]
  with pytest.raises(ValueError):
    star_data.steps_for_iteration(100, 1.2, 0)


def test_kept_examples_are_exactly_the_correct_ones():
  problems = [Problem(12, 34), Problem(5, 7), Problem(99, 1), Problem(40, 40), Problem(3, 3)]
  texts = {
      Problem(12, 34): arithmetic.target_text(Problem(12, 34)) + "Input:\ngarbage",  # right, junk after
      Problem(5, 7): arithmetic.target_text(Problem(5, 8)),  # wrong answer
      Problem(99, 1): arithmetic.target_text(Problem(99, 1)),  # right
      Problem(40, 40): "<scratch>\n4 0 + 4 0 , C: 0\n",  # no answer
      Problem(3, 3): "</scratch>\n0 6\n",  # leading zero: not an answer
  }
  asked = []

  def generate(prompts, max_new_tokens, rng):
    asked.extend(prompts)
    return [texts[arithmetic.parse_question(p.split("\n")[1])] for p in prompts]

  records = star_data.generate_records(problems, generate, jax.random.key(0), hint=False, max_new_tokens=128,
                                       seq_len=256)
  assert [star_data.record_problem(r) for r in records] == problems  # input order, though grouped by length
  assert sorted(asked) == sorted(arithmetic.prompt_text(p) for p in problems)
  assert [r["correct"] for r in records] == [verifiers.is_correct(p, texts[p]) for p in problems]
  assert [r["correct"] for r in records] == [True, False, True, False, False]
  kept = star_data.training_examples(records)
  assert kept == [{"prompt": arithmetic.prompt_text(p), "target": arithmetic.target_text(p)}
                  for p in (Problem(12, 34), Problem(99, 1))]  # junk after the answer line trimmed
  assert star_data.failures(records) == [Problem(5, 7), Problem(40, 40), Problem(3, 3)]
  assert star_data.kept_by_digits(records, (1, 2)) == {1: 0, 2: 2}


def test_rationalization_prompts_with_the_hint_and_saves_without_it():
  failed = [Problem(5, 7), Problem(40, 40), Problem(31, 26)]
  asked = []

  def generate(prompts, max_new_tokens, rng):
    asked.extend(prompts)
    out = []
    for prompt in prompts:  # justify the hinted answer for all but (40, 40)
      p = arithmetic.parse_question(prompt.split("\n")[1])
      out.append(arithmetic.target_text(p if p != Problem(40, 40) else Problem(40, 41)))
    return out

  records = star_data.generate_records(failed, generate, jax.random.key(0), hint=True, max_new_tokens=128,
                                       seq_len=256)
  assert sorted(asked) == sorted(arithmetic.hinted_prompt_text(p) for p in failed)
  for p, r in zip(failed, records):
    assert r["prompt"] == arithmetic.prompt_text(p)  # the hint is gone
    assert r["prompt"].split("Target:\n")[1] == ""
    assert r["source"] == "rationalized"
  assert [r["correct"] for r in records] == [True, False, True]
  assert all(e["prompt"] in {arithmetic.prompt_text(p) for p in failed} for e in star_data.training_examples(records))


def test_subsample_is_reproducible_per_iteration():
  problems = [Problem(a, 1) for a in range(10, 60)]
  one = star_data.subsample(problems, 0.3, seed=0, iteration=1)
  assert len(one) == 15 and one == star_data.subsample(problems, 0.3, seed=0, iteration=1)
  assert one != star_data.subsample(problems, 0.3, seed=0, iteration=2)
  assert star_data.subsample(problems, 1.0, seed=0, iteration=1) == problems


def test_config_validation_names_the_key(tmp_path):
  c = star_arithmetic.get_config("tiny")
  c.star.rationalise = True
  with pytest.raises(ValueError, match="config.star.rationalise"):
    star_experiment_from_config(c)
  c = star_arithmetic.get_config("tiny")
  c.star.growth = -1.0
  with pytest.raises(ValueError, match="config.star.growth must be > 0"):
    star_experiment_from_config(c)
  c = star_arithmetic.get_config("tiny")
  c.star.seed_per_digit = c.data.rationales_per_digit + 1
  with pytest.raises(ValueError, match="config.star.seed_per_digit"):
    star_experiment_from_config(c)
  star_experiment_from_config(star_arithmetic.get_config())  # the default validates


# ---- the loop, end to end on the tiny config ----

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("star_data")


class _Spy:
  """Wraps train.fine_tune (what the loop fine-tunes with), recording the params each fine-tuning starts from."""

  def __init__(self):
    self.entering, self.real = [], train.fine_tune

  def __call__(self, model_config, train_config, checkpoint_config, mesh, tokenizer, examples, init_params, *args,
               **kwargs):
    self.entering.append(jax.device_get(init_params))
    return self.real(model_config, train_config, checkpoint_config, mesh, tokenizer, examples, init_params, *args,
                     **kwargs)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
  """The uninterrupted reference run (oracle generator, real fine-tuning and evaluation)."""
  workdir = tmp_path_factory.mktemp("straight")
  cfg = tiny_config(data_dir, **CONSTANT_STEPS)
  base = star.make_base_model(cfg, str(workdir))
  spy = _Spy()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "fine_tune", spy)
    records = star.run(cfg, str(workdir), base, generator=oracle_generator)
  return {"workdir": workdir, "cfg": cfg, "base": base, "records": records, "entering": spy.entering}


@pytest.mark.e2e
def test_seed_examples_avoid_d_and_the_test_sets(straight, data_dir):
  cfg, workdir = straight["cfg"], straight["workdir"]
  examples = io.read_jsonl(os.path.join(workdir, "base", "seed.jsonl"))
  plain = [e for e in examples if e["prompt"].endswith("Target:\n")]
  hinted = [e for e in examples if not e["prompt"].endswith("Target:\n")]
  problems = [arithmetic.parse_question(e["prompt"].split("\n")[1]) for e in plain]
  assert len(plain) == len(hinted) == 81 + cfg.star.seed_per_digit * (cfg.data.max_train_digits - 1)
  assert {p for p in problems if p.n_digits == 1} == {Problem(a, b) for a in range(1, 10) for b in range(1, 10)}
  data = star_tasks.load_task_data(cfg, str(workdir))  # what the loop reads: D and the held-out sets
  held_out = {data.task.problem(e) for e in data.questions + [e for t in data.tests.values() for e in t]}
  assert len(data.questions) == 16 and sorted(data.tests) == [1, 2, 3]  # D (1-2 digits), test sets (1-3 digits)
  assert not [p for p in problems if p.n_digits >= 2 and p in held_out]
  assert all(e["target"] == arithmetic.target_text(p) for e, p in zip(plain, problems))
  assert [e["prompt"] for e in hinted] == [arithmetic.hinted_prompt_text(p) for p in problems]


@pytest.mark.e2e
def test_one_digit_repeats_oversample_the_one_digit_seeds(straight, tmp_path):
  cfg = straight["cfg"]
  once = star.base_examples(cfg, str(tmp_path / "once"))
  thrice = star.base_examples(dataclasses.replace(cfg, star=dataclasses.replace(cfg.star, one_digit_repeats=3)),
                              str(tmp_path / "thrice"))

  def count(examples, n_digits):
    return sum(arithmetic.parse_question(e["prompt"].split("\n")[1]).n_digits == n_digits for e in examples)
  assert count(once, 1) == 2 * 81 and count(thrice, 1) == 3 * 2 * 81  # plain + hinted, each 81 problems
  assert count(thrice, 2) == count(once, 2) > 0
  assert sorted(map(json.dumps, thrice)) == sorted(map(json.dumps, once + [e for e in once if count([e], 1)] * 2))


@pytest.mark.e2e
def test_records_report_and_plot(straight):
  records, workdir, cfg = straight["records"], straight["workdir"], straight["cfg"]
  assert [r["iteration"] for r in records] == [0, 1, 2]
  for r in records[1:]:
    n = r["iteration"]
    generated = io.read_jsonl(os.path.join(workdir, f"iter_{n}", "generated.jsonl"))
    rationalized = io.read_jsonl(os.path.join(workdir, f"iter_{n}", "rationalized.jsonl"))
    assert r["questions"] == len(generated) == 8 + 8  # fraction_of_D = 1: all of D, both lengths
    assert r["kept_generated"] == sum(g["correct"] for g in generated) > 0
    assert r["kept_rationalized"] == sum(g["correct"] for g in rationalized) > 0
    assert len(rationalized) == len(generated) - r["kept_generated"]
    assert all(g["prompt"] == arithmetic.prompt_text(star_data.record_problem(g)) for g in generated + rationalized)
    assert r["train_examples"] == r["kept_generated"] + r["kept_rationalized"]
    assert r["sampled_tokens"] == sum(len(g["target"]) for g in generated + rationalized)  # 1 char = 1 token
    assert r["train_steps"] == cfg.star.base_steps  # growth 1 here (CONSTANT_STEPS)
    assert sum(r[f"kept_rationalized_{k}digit"] for k in (1, 2)) == r["kept_rationalized"]
    assert 0 <= r["acc_overall"] <= 1 and set(r) >= {"acc_1digit", "acc_3digit", "seconds_train", "seconds_eval"}
  assert io.read_jsonl(os.path.join(workdir, "star_metrics.jsonl")) == records
  assert os.path.getsize(os.path.join(workdir, "star_accuracy.png")) > 1000
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "logs")))
  report = open(os.path.join(workdir, "star_report.md"), encoding="utf-8").read()
  table = report.split("\n\n")[2].splitlines()
  assert table[0].startswith("| iter |") and [row.split("|")[1].strip() for row in table[2:]] == ["0", "1", "2"]


@pytest.mark.e2e
def test_resuming_with_another_config_is_refused(straight, data_dir):
  cfg = tiny_config(data_dir, **CONSTANT_STEPS, temperature=0.7)
  with pytest.raises(ValueError, match=r"config.star.temperature: 0.0 -> 0.7"):
    star.run(cfg, str(straight["workdir"]), straight["base"])


@pytest.mark.e2e
def test_fine_tuning_restarts_from_the_base_model(straight):
  assert len(straight["entering"]) == 2
  for params in straight["entering"]:
    _assert_trees_equal(params, straight["base"])


class _FakeFineTune:
  """Stands in for train.fine_tune: records what it is given and returns params + 1 (M_n != M_{n-1})."""

  def __init__(self):
    self.entering, self.steps = [], []

  def __call__(self, model_config, train_config, checkpoint_config, mesh, tokenizer, examples, init_params, num_steps,
               directory, **kwargs):
    self.entering.append(jax.device_get(init_params))
    self.steps.append(num_steps)
    params = jax.tree.map(lambda x: x + 1.0, init_params)
    return params, {"steps": num_steps, "examples": len(examples), "final_loss": None, "seconds": 0.0}


@pytest.mark.e2e
def test_without_restart_fine_tuning_continues_from_the_previous_iteration(straight, data_dir, tmp_path):
  cfg = tiny_config(data_dir, restart_from_base=False)
  fake = _FakeFineTune()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "fine_tune", fake)
    records = star.run(cfg, str(tmp_path), straight["base"], generator=oracle_generator)
  _assert_trees_equal(fake.entering[0], straight["base"])
  _assert_trees_equal(fake.entering[1], jax.tree.map(lambda x: x + 1.0, straight["base"]))  # = M_1
  # and the steps grow 20% per iteration: ceil(6 * 1.2) = 8
  assert fake.steps == [r["train_steps"] for r in records[1:]] == [6, 8]


@pytest.mark.e2e
def test_sampler_generation_and_nothing_kept(straight, data_dir, tmp_path):
  """The real KV-cache generator end to end; the barely-trained base model gets (almost) nothing right."""
  cfg = tiny_config(data_dir, iterations=1)
  records = star.run(cfg, str(tmp_path), straight["base"])
  generated = io.read_jsonl(os.path.join(tmp_path, "iter_1", "generated.jsonl"))
  assert len(generated) == records[1]["questions"]
  assert all(g["prompt"] == arithmetic.prompt_text(star_data.record_problem(g)) for g in generated)
  assert records[1]["train_steps"] == (0 if records[1]["train_examples"] == 0 else cfg.star.base_steps)
  if records[1]["train_steps"] == 0:  # nothing to train on: M_1 = M
    _assert_trees_equal(star.load_iteration_params(cfg, str(tmp_path), 1), straight["base"])


_SUBPROCESS = """
import sys
sys.path[:0] = [{repo!r}]
from tests.star import test_loop
from star_jax import star
cfg = test_loop.tiny_config({data_dir!r}, **test_loop.CONSTANT_STEPS)
star.run(cfg, {workdir!r}, star.make_base_model(cfg, {workdir!r}), generator=test_loop.oracle_generator)
"""


class _Crash(Exception):
  pass


@pytest.mark.e2e
def test_killed_run_resumes_to_the_uninterrupted_result(straight, data_dir, tmp_path):
  """SIGKILL a run between phases, crash the re-run mid-way through fine-tuning, re-run again: the final
  parameters, files and records equal the uninterrupted run's."""
  cfg, reference = straight["cfg"], straight["workdir"]
  workdir = tmp_path / "killed"
  shutil.copytree(reference / "base", workdir / "base")  # the cached base model (make_base_model loads it)
  code = _SUBPROCESS.format(repo=REPO, data_dir=str(data_dir), workdir=str(workdir))
  log = open(tmp_path / "log.txt", "w")
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
  marker = workdir / "iter_1" / "rationalized.jsonl"  # iteration 1's data exists; its fine-tuning starts
  deadline = time.time() + 240
  while not marker.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  log.close()
  assert marker.exists(), (tmp_path / "log.txt").read_text()[-3000:]
  assert not (workdir / "iter_1" / "train.json").exists(), "iteration 1 finished before the kill; it proves nothing"

  # The re-run dies right after the step-4 checkpoint of iteration 1's fine-tuning (of 6 steps) ...
  real_save = checkpoint.Checkpointer.save

  def save_then_crash(self, step, state, data_state=None):
    real_save(self, step, state, data_state)
    if step == 4 and self.directory.endswith(os.path.join("iter_1", "checkpoints")):
      raise _Crash

  with pytest.MonkeyPatch.context() as mp, pytest.raises(_Crash):
    mp.setattr(checkpoint.Checkpointer, "save", save_then_crash)
    star.run(cfg, str(workdir), star.make_base_model(cfg, str(workdir)), generator=oracle_generator)
  assert (workdir / "iter_1" / "checkpoints" / "4").exists() and not (workdir / "iter_1" / "train.json").exists()

  # ... and the next re-run resumes mid-training (state, rng and data position) and finishes.
  records = star.run(cfg, str(workdir), star.make_base_model(cfg, str(workdir)), generator=oracle_generator)
  assert [_no_seconds(r) for r in records] == [_no_seconds(r) for r in straight["records"]]
  for n in (1, 2):
    for name in ("generated.jsonl", "rationalized.jsonl"):
      assert (workdir / f"iter_{n}" / name).read_text() == (reference / f"iter_{n}" / name).read_text()
    evals = [json.loads((w / f"iter_{n}" / "eval.json").read_text())["accuracy"] for w in (workdir, reference)]
    assert evals[0] == evals[1]
  _assert_trees_equal(star.load_iteration_params(cfg, str(workdir), 2),  # the final M_N, bit for bit
                      star.load_iteration_params(cfg, str(reference), 2))

  # Once everything exists, a re-run only reads it back: no fine-tuning, the same records.
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "fine_tune", None)
    again = star.run(cfg, str(workdir), None, generator=None)
  assert [_no_seconds(r) for r in again] == [_no_seconds(r) for r in records]


# ---- workdirs written before the loop became task-generic ----

OLD_RECORD_KEYS = ["a", "b", "n_digits", "prompt", "target", "correct", "source"]  # in this order
NEW_CONFIG_FIELDS = {"data": ("train_path", "validation_path", "test_path", "few_shot_path"),
                     "eval": ("split", "num_shots"), "star": ("num_shots",)}


def _as_old_workdir(reference, workdir):
  """A copy of the reference workdir as the arithmetic-only code wrote it: star_config.json without the
  fields added since (the records and eval files had exactly today's arithmetic format, checked here)."""
  shutil.copytree(reference, workdir)
  saved = json.loads((workdir / "star_config.json").read_text())
  for section, keys in NEW_CONFIG_FIELDS.items():
    for key in keys:
      del saved[section][key]
  del saved["hf_path"]
  (workdir / "star_config.json").write_text(json.dumps(saved, indent=1))
  for n in (1, 2):
    for name in ("generated.jsonl", "rationalized.jsonl"):
      assert all(list(r) == OLD_RECORD_KEYS for r in io.read_jsonl(workdir / f"iter_{n}" / name))
    accuracy = json.loads((workdir / f"iter_{n}" / "eval.json").read_text())["accuracy"]
    assert list(accuracy) == ["acc_1digit", "acc_2digit", "acc_3digit", "acc_overall", "acc_train_lengths"]


@pytest.mark.e2e
def test_an_old_arithmetic_workdir_resumes_to_the_same_result(straight, data_dir, tmp_path):
  """Iteration 2 of an old-format workdir is redone from its iteration-1 files: the same records and
  files as the uninterrupted run (so a run started with the arithmetic-only loop resumes with this one)."""
  cfg, reference = straight["cfg"], straight["workdir"]
  workdir = tmp_path / "old"
  _as_old_workdir(reference, workdir)
  shutil.rmtree(workdir / "iter_2")
  records = star.run(cfg, str(workdir), straight["base"], generator=oracle_generator)
  assert [_no_seconds(r) for r in records] == [_no_seconds(r) for r in straight["records"]]
  for name in ("generated.jsonl", "rationalized.jsonl"):
    assert (workdir / "iter_2" / name).read_text() == (reference / "iter_2" / name).read_text()
  assert json.loads((workdir / "iter_2" / "eval.json").read_text())["accuracy"] == \
      json.loads((reference / "iter_2" / "eval.json").read_text())["accuracy"]
  _assert_trees_equal(star.load_iteration_params(cfg, str(workdir), 2),
                      star.load_iteration_params(cfg, str(reference), 2))
  assert "num_shots" not in json.loads((workdir / "star_config.json").read_text())["star"]  # left as it was


@pytest.mark.e2e
def test_an_old_config_file_differs_only_where_a_value_changed(straight, data_dir, tmp_path):
  """A field missing from an old star_config.json counts as its default: resuming works while the new
  value is the default, and a changed value is still refused."""
  workdir = tmp_path / "old"
  _as_old_workdir(straight["workdir"], workdir)
  saved = json.loads((workdir / "star_config.json").read_text())
  del saved["star"]["temperature"]  # as if temperature had been added after this run started
  (workdir / "star_config.json").write_text(json.dumps(saved))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "fine_tune", None)  # everything exists: nothing is trained
    records = star.run(straight["cfg"], str(workdir), straight["base"], generator=oracle_generator)
  assert [_no_seconds(r) for r in records] == [_no_seconds(r) for r in straight["records"]]
  with pytest.raises(ValueError, match=r"config.star.temperature: 0.0 -> 0.7"):
    star.run(tiny_config(data_dir, **CONSTANT_STEPS, temperature=0.7), str(workdir), straight["base"])


def test_addition_facts_follow_the_scratchpad_carries():
  # 47 + 85: 7 + 5 (carry in 0) = 12, then 4 + 8 + 1.
  assert star_data.addition_facts(Problem(47, 85)) == {(7, 5, 0), (4, 8, 1)}
  assert star_data.addition_facts(Problem(152, 702)) == {(2, 2, 0), (5, 0, 0), (1, 7, 0)}
  assert star_data.addition_facts(Problem(995, 16)) == {(5, 6, 0), (9, 1, 1), (9, 0, 1)}


def test_carry_fact_problems_cover_every_fact_the_pool_shows_and_skip_held_out():
  pool = arithmetic.sample_problems(2, 1000, seed=3) + arithmetic.sample_problems(3, 1000, seed=4)
  held_out = set(pool[:50])
  chosen = star_data.carry_fact_problems(pool, 2, held_out)
  shown = set().union(*(star_data.addition_facts(p) for p in pool[50:1000]))
  assert set().union(*(star_data.addition_facts(p) for p in chosen)) == shown
  assert {(x, y, 0) for x in range(10) for y in range(10)} <= shown and len(shown) > 170  # 181 at most
  assert all(p.n_digits == 2 and p not in held_out for p in chosen)
  assert len(chosen) == len(set(chosen)) < len(shown)  # every chosen problem added a new fact
  with_3 = star_data.carry_fact_problems(pool, 3, held_out)
  shown_3 = set().union(*(star_data.addition_facts(p) for p in pool[50:]))
  assert set().union(*(star_data.addition_facts(p) for p in with_3)) == shown_3
  assert (0, 5, 1) in shown_3 - shown  # a middle digit can be 0 under a carry
