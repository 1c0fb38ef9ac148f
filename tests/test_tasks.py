"""Tests for star_jax.data.tasks: the Example record, the registry, and ArithmeticTask == arithmetic.py +
verifiers.py exactly (and trim == the STaR loop's star_data.trim_after_answer)."""

import dataclasses

import numpy as np
import pytest

from experiments.configs import star_commonsense_qa, star_gsm8k
from star_jax.data import arithmetic, verifiers
from star_jax.data.arithmetic import Problem
from star_jax.data.arithmetic_tfds import build_arithmetic
from star_jax.data.tasks import ArithmeticTask, Example, Task, get_task, task_names
from star_jax.star import data as star_data

TASK = ArithmeticTask()


def _problems():
  return [p for n in range(1, 7) for p in arithmetic.sample_problems(n, 6, seed=3)] + [Problem(5, 95), Problem(0, 0)]


def _generations(p: Problem) -> list[str]:
  """The true target and many near misses, in the shapes a model produces."""
  good = arithmetic.target_text(p)
  body, answer = good.rsplit(arithmetic.SCRATCH_CLOSE, 1)
  wrong = arithmetic.answer_text(Problem(p.a + 1, p.b))
  return [
      good,
      good + "Input:\n1 + 1\nTarget:\n",  # runs on after the answer
      good.rstrip("\n"),  # no final newline
      f"{body}{arithmetic.SCRATCH_CLOSE}\n\n  {arithmetic.answer_text(p)}  \nmore",  # blank line, spaces
      f"{body}{arithmetic.SCRATCH_CLOSE}\n{wrong}\n",
      f"{body}{arithmetic.SCRATCH_CLOSE}\n0 {arithmetic.answer_text(p)}\n",  # leading zero: no answer
      f"{body}{arithmetic.SCRATCH_CLOSE}\n",  # no answer line
      f"{body}{arithmetic.SCRATCH_CLOSE}{answer}",  # answer on the tag's line
      body,  # cut before </scratch>
      "", "\n\n", "8 5 4\n", f"{arithmetic.SCRATCH_CLOSE}\n8 x 4\n",
  ]


# ---- Example ----

def test_example_json_round_trip_and_hashable():
  ex = Example(question="q?", answer="B", rationale="r", group=3, choices=[["A", "x"], ("B", "y")], id="f:1")
  assert ex.choices == (("A", "x"), ("B", "y"))  # lists become tuples
  assert Example.from_json(ex.to_json()) == ex
  assert ex.to_json()["choices"] == [["A", "x"], ["B", "y"]]
  assert len({ex, Example.from_json(ex.to_json()), dataclasses.replace(ex, group=4)}) == 2
  unlabeled = Example(question="q", answer=None)
  assert Example.from_json(unlabeled.to_json()) == unlabeled


@pytest.mark.parametrize("kwargs", [dict(question=1, answer="1"), dict(question="q", answer=1),
                                    dict(question="q", answer="1", group=True),
                                    dict(question="q", answer="1", group=1.0),
                                    dict(question="q", answer="1", choices=(("A",),)),
                                    dict(question="q", answer="1", rationale=b"r")])
def test_example_rejects_wrong_types(kwargs):
  with pytest.raises(TypeError, match="Example"):
    Example(**kwargs)


# ---- registry ----

def test_registry_returns_each_task():
  assert task_names() == ["arithmetic", "commonsense_qa", "game24", "gsm8k"]
  for name in task_names():
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name
  assert type(get_task("gsm8k")).__name__ == "Gsm8kTask"
  assert type(get_task("commonsense_qa")).__name__ == "CommonsenseQaTask"


def test_registry_unknown_name_lists_the_known_ones():
  with pytest.raises(ValueError, match="unknown task 'gsm9k'; known tasks: arithmetic, commonsense_qa, game24, gsm8k"):
    get_task("gsm9k")


# ---- ArithmeticTask == arithmetic.py + verifiers.py ----

def test_arithmetic_texts_are_exactly_the_modules():
  for p in _problems():
    ex = TASK.example(p)
    assert ex == Example(question=arithmetic.question_text(p), answer=str(p.a + p.b), group=p.n_digits,
                         id=f"{p.a}+{p.b}")
    assert TASK.problem(ex) == p
    assert TASK.prompt(ex) == arithmetic.prompt_text(p)
    assert TASK.hinted_prompt(ex) == arithmetic.hinted_prompt_text(p)
    assert TASK.target(ex) == arithmetic.target_text(p)
    # the rationale is the scratchpad block; target = rationale + answer line
    with_r = TASK.example(p, with_rationale=True)
    assert with_r.rationale + "\n" + arithmetic.answer_text(p) + "\n" == arithmetic.target_text(p)
    assert TASK.target(with_r) == TASK.target(ex)


def test_arithmetic_judging_and_trimming_are_exactly_the_modules():
  checked = 0
  for p in _problems():
    ex = TASK.example(p)
    for g in _generations(p):
      want = verifiers.extract_answer(g)
      assert TASK.extract_answer(g) == (None if want is None else str(want)), g
      assert TASK.is_correct(ex, g) == verifiers.is_correct(p, g), g
      assert TASK.trim(g) == star_data.trim_after_answer(g), g
      checked += 1
  assert checked == 38 * 13
  p = Problem(152, 702)  # hand-checked cases
  good = arithmetic.target_text(p)
  assert TASK.extract_answer(good) == "854" and TASK.is_correct(TASK.example(p), good)
  assert TASK.trim(good + "junk\n") == good
  assert TASK.extract_answer(good.replace("\n8 5 4\n", "\n0 8 5 4\n")) is None


def test_arithmetic_trim_is_stable_under_any_suffix():
  """What the sampler writes after the answer line never changes the trimmed text or the answer."""
  rng = np.random.default_rng(0)
  for p in _problems():
    for g in _generations(p):
      t = TASK.trim(g)
      if TASK.extract_answer(t) is None:
        continue
      suffix = "".join(rng.choice(list("0123456789 \n</scratch>+"), size=12))
      assert TASK.trim(t + suffix) == t and TASK.extract_answer(t + suffix) == TASK.extract_answer(g)


def test_arithmetic_few_shot_prompt():
  a, b, q = (TASK.example(Problem(x, y)) for x, y in ((1, 2), (3, 4), (5, 6)))
  tgt = arithmetic.target_text
  assert TASK.few_shot_prompt(q, []) == arithmetic.prompt_text(Problem(5, 6))
  assert TASK.few_shot_prompt(q, [a, b]) == (
      arithmetic.prompt_text(Problem(1, 2)) + tgt(Problem(1, 2)) + "\n"
      + arithmetic.prompt_text(Problem(3, 4)) + tgt(Problem(3, 4)) + "\n" + arithmetic.prompt_text(Problem(5, 6)))
  assert TASK.few_shot_prompt(q, [a], hint=True) == (
      "Input:\n1 + 2\nTarget:\n3\n" + tgt(Problem(1, 2)) + "\nInput:\n5 + 6\nTarget:\n1 1\n")


def test_arithmetic_rejects_non_arithmetic_question():
  with pytest.raises(ValueError, match="not an arithmetic question: 'what\\?'"):
    TASK.prompt(Example(question="what?", answer="1"))


def test_unlabeled_example_cannot_be_judged():
  with pytest.raises(ValueError, match="no gold answer"):
    TASK.is_correct(Example(question="1 + 2", answer=None, id="x"), "</scratch>\n3\n")


def test_arithmetic_from_tfds_features(tmp_path):
  builder = build_arithmetic(tmp_path, max_train_digits=2, max_test_digits=2, rationales_per_digit=3,
                             questions_per_digit=3, test_per_digit=2)
  questions = TASK.examples(builder.as_data_source("questions"))
  rationales = TASK.examples(builder.as_data_source("rationales"))
  assert [q.group for q in questions] == [1, 1, 1, 2, 2, 2]
  assert all(q.rationale is None for q in questions) and all(r.rationale is not None for r in rationales)
  src = builder.as_data_source("rationales")
  for i, ex in enumerate(rationales):
    p = Problem(int(src[i]["a"]), int(src[i]["b"]))
    assert ex == TASK.example(p, with_rationale=True)
    assert TASK.prompt(ex) == src[i]["prompt"].decode() and TASK.target(ex) == src[i]["target"].decode()
    assert ex.answer == src[i]["answer"].decode().replace(" ", "")


# ---- the STaR configs for pretrained checkpoints ----

@pytest.mark.parametrize("module,task", [(star_gsm8k, "gsm8k"), (star_commonsense_qa, "commonsense_qa")],
                         ids=["star_gsm8k", "star_commonsense_qa"])
def test_pretrained_star_configs(module, task):
  for arg in ("", "tiny"):
    c = module.get_config(arg)
    assert c.data.task == task and get_task(c.data.task).name == task
    assert c.model.hf_path == "" and c.data.train_path == ""  # local paths come from the command line
  c = module.get_config()  # the paper's schedule: 40 steps, +20% per iteration
  assert [star_data.steps_for_iteration(c.star.base_steps, c.star.growth, n) for n in (1, 2, 3)] == [40, 48, 58]
  with pytest.raises(ValueError, match="unknown config variant"):
    module.get_config("huge")
  # every field is commented (the repo's rule for configs)
  with open(module.__file__, encoding="utf-8") as f:
    fields = [line for line in f if line.strip().startswith("c.") and " = " in line and "ConfigDict()" not in line
              and not line.startswith("    ")]
  assert fields and all("#" in line for line in fields), [line for line in fields if "#" not in line]
