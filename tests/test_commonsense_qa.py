"""Tests for star_jax.data.commonsense_qa: texts with the '(CORRECT)' hint, answer extraction, unlabeled test
files, and the TFDS builder over fixture files written here (malformed lines name file:line)."""

import copy
import dataclasses
import json
import os
import re

import pytest

from star_jax.data.commonsense_qa import CommonsenseQaTask, build_commonsense_qa, read_examples
from star_jax.data.jsonl import DataFormatError
from star_jax.data.tasks import Example, get_task

TASK = CommonsenseQaTask()
CHOICES = (("A", "mouth"), ("B", "grocery cart"), ("C", "super market"), ("D", "fruit basket"), ("E", "fruit market"))
GRAPES = Example(question="Where do you put your grapes just before checking out?", answer="B",
                 rationale="The answer should be the place where grocery items are placed before checking out.",
                 choices=CHOICES, id="q1")
PROMPT = ("Q: Where do you put your grapes just before checking out?\nAnswer Choices:\n(a) mouth\n(b) grocery cart\n"
          "(c) super market\n(d) fruit basket\n(e) fruit market\nA:")


def _line(qid="q1", key="B", stem="Where do you put your grapes just before checking out?", **extra):
  line = {"id": qid, "question": {"question_concept": "grapes", "stem": stem,
                                  "choices": [{"label": label, "text": text} for label, text in CHOICES]},
          **({} if key is None else {"answerKey": key}), **extra}
  return line


def _write(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    for line in lines:
      f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
  return str(path)


# ---- texts ----

def test_prompt_hint_and_target_texts():
  assert TASK.prompt(GRAPES) == PROMPT
  assert TASK.hinted_prompt(GRAPES) == PROMPT.replace("(b) grocery cart\n", "(b) grocery cart (CORRECT)\n")
  assert TASK.target(GRAPES) == (" The answer should be the place where grocery items are placed before checking "
                                 "out. Therefore, the answer is grocery cart (b).\n")
  assert TASK.target(Example(question="q", answer="A", rationale="", choices=CHOICES)) == (
      " Therefore, the answer is mouth (a).\n")
  assert TASK.stop_strings == ("\n",)
  assert get_task("commonsense_qa").prompt(GRAPES) == PROMPT


def test_target_is_correct_and_trim_keeps_it():
  assert TASK.extract_answer(TASK.target(GRAPES)) == "B"
  assert TASK.is_correct(GRAPES, TASK.target(GRAPES)) and TASK.trim(TASK.target(GRAPES)) == TASK.target(GRAPES)


def test_few_shot_prompt():
  q = Example(question="Q2?", answer="A", choices=(("A", "x"), ("B", "y")))
  block = PROMPT + TASK.target(GRAPES)
  assert TASK.few_shot_prompt(q, [GRAPES]) == block + "\nQ: Q2?\nAnswer Choices:\n(a) x\n(b) y\nA:"
  assert TASK.few_shot_prompt(q, [GRAPES], hint=True) == (
      TASK.hinted_prompt(GRAPES) + TASK.target(GRAPES) + "\nQ: Q2?\nAnswer Choices:\n(a) x (CORRECT)\n(b) y\nA:")


@pytest.mark.parametrize("generation,want", [
    (" Carts hold groceries. Therefore, the answer is grocery cart (b).\n", "B"),
    (" Therefore, the answer is grocery cart (b).", "B"),  # unterminated (stopped at the cap)
    (" the ANSWER IS cart (B) \nQ: next", "B"),
    (" So the answer is (e).\n", "E"),
    (" The answer is mouth (a) or cart (b).\n", "B"),  # the label that ends the line
    (" Therefore, the answer is grocery cart (b). Also (c) works.\n", None),  # the line must end with it
    (" Therefore, grocery cart (b).\n", None),  # no 'answer is'
    ("\n Therefore, the answer is grocery cart (b).\n", None),  # the first line is the answer line
    (" Therefore, the answer is grocery cart.\n", None), ("", None), (" the answer is (bb).\n", None)])
def test_extract_answer(generation, want):
  assert TASK.extract_answer(generation) == want


def test_is_correct_compares_labels():
  assert TASK.is_correct(GRAPES, " x. Therefore, the answer is grocery cart (b).\nmore")
  assert not TASK.is_correct(GRAPES, " x. Therefore, the answer is mouth (a).")
  assert not TASK.is_correct(GRAPES, " I do not know.\n")
  lower = dataclasses.replace(GRAPES, answer="b")  # a hand-made Example: labels compared ignoring case
  assert TASK.is_correct(lower, " the answer is cart (B).")
  assert TASK.hinted_prompt(lower) == TASK.hinted_prompt(GRAPES) and TASK.target(lower) == TASK.target(GRAPES)
  with pytest.raises(ValueError, match=r"answer 'F' is not among the choice labels \['A', 'B', 'C', 'D', 'E'\]"):
    TASK.hinted_prompt(dataclasses.replace(GRAPES, answer="F"))
  with pytest.raises(ValueError, match="no gold answer"):
    TASK.is_correct(Example(question="q", answer=None, choices=CHOICES, id="t1"), "the answer is (a).")


def test_trim_and_answer_are_stable_under_any_suffix():
  assert TASK.trim(" x. Therefore, the answer is mouth (a).\nQ: next\n") == " x. Therefore, the answer is mouth (a).\n"
  assert TASK.trim(" no answer\nline 2\n") == " no answer\nline 2\n"  # unchanged without an answer
  for g in (" x. Therefore, the answer is mouth (a).\n", " the answer is (e)"):
    t = TASK.trim(g)
    for suffix in ("", "\n", "Q: next\nA: the answer is (c).\n", "x"):
      assert TASK.trim(t + suffix) == t and TASK.extract_answer(t + suffix) == TASK.extract_answer(g)


# ---- reading files ----

def test_read_examples_labeled_and_exemplars(tmp_path):
  lower = _line("q2", key="c")
  lower["question"]["choices"] = [{"label": x.lower(), "text": f" {t} "} for x, t in CHOICES]
  path = _write(tmp_path / "train.jsonl", [_line(), "", lower, _line("q3", rationale="  Carts\n hold  food. ")])
  a, b, c = read_examples(path)
  assert a == dataclasses.replace(GRAPES, rationale=None)
  assert b.answer == "C" and b.choices == CHOICES  # labels upper-cased, texts stripped
  assert c.rationale == "Carts hold food."  # one line: whitespace collapsed
  assert TASK.target(c) == " Carts hold food. Therefore, the answer is grocery cart (b).\n"


def test_unlabeled_test_file(tmp_path):
  path = _write(tmp_path / "test.jsonl", [_line("t1", key=None), _line("t2", key=None)])
  examples = read_examples(path, allow_unlabeled=True)
  assert [e.answer for e in examples] == [None, None] and TASK.prompt(examples[0]) == PROMPT
  with pytest.raises(DataFormatError, match=f"^{re.escape(path)}:1: missing key 'answerKey'"):
    read_examples(path)  # train / validation files must be labeled
  mixed = _write(tmp_path / "mixed.jsonl", [_line("t1", key=None), "", _line("t2")])
  with pytest.raises(DataFormatError, match=f"^{re.escape(mixed)}:3: .*label every line or none"):
    read_examples(mixed, allow_unlabeled=True)
  mixed2 = _write(tmp_path / "mixed2.jsonl", [_line("t1"), _line("t2", key=None)])
  with pytest.raises(DataFormatError, match=f"^{re.escape(mixed2)}:2: missing key 'answerKey'"):
    read_examples(mixed2, allow_unlabeled=True)


def _bad_choices(choices):
  line = _line()
  line["question"]["choices"] = choices
  return line


def _without(path_keys):
  line = copy.deepcopy(_line())
  obj = line
  for k in path_keys[:-1]:
    obj = obj[k]
  del obj[path_keys[-1]]
  return line


@pytest.mark.parametrize("bad,message", [
    ("{not json", "invalid JSON"),
    ("3", "expected a JSON object, got int"),
    (_without(["question"]), "missing key 'question'"),
    (_without(["question", "stem"]), "missing key 'question.stem'"),
    (_without(["question", "choices"]), "missing key 'question.choices'"),
    ({"id": "x", "question": "stem only", "answerKey": "A"}, "key 'question' must be an object"),
    (_line(key="F"), r"answerKey 'F' is not among the choice labels \['A', 'B', 'C', 'D', 'E'\]"),
    (_line(key=1), "key 'answerKey' must be a str, got int"),
    (_line(stem=""), "empty question.stem"),
    (_bad_choices([{"label": "A", "text": "x"}]), "at least 2 choices"),
    (_bad_choices([{"label": "A", "text": "x"}, {"label": "a", "text": "y"}]), "must be distinct"),
    (_bad_choices([{"label": "A", "text": "x"}, {"label": "B"}]), r"question.choices\[1\] must be an object"),
    (_bad_choices([{"label": "A", "text": "x"}, {"label": "BB", "text": "y"}]), "one letter or digit"),
    (_line(rationale=" "), "empty rationale"),
    (_line(rationale="Carts. Therefore, the answer is grocery cart (b)."), "must not state the answer")])
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
  path = _write(tmp_path / "train.jsonl", [_line(), "", bad])
  with pytest.raises(DataFormatError, match=f"^{re.escape(path)}:3: .*{message}") as info:
    read_examples(path)
  assert info.value.line == 3


# ---- the TFDS builder ----

def test_builder_reads_back_every_split(tmp_path):
  train = _write(tmp_path / "train.jsonl", [_line("q1"), _line("q2", key="E", stem="Ünïcode ✓?")])
  dev = _write(tmp_path / "dev.jsonl", [_line("d1", key="A")])
  test = _write(tmp_path / "test.jsonl", [_line("t1", key=None)])
  shots = _write(tmp_path / "shots.jsonl", [_line("s1", rationale="Carts hold groceries.")])
  builder = build_commonsense_qa(tmp_path / "data", train, validation_path=dev, test_path=test, few_shot_path=shots)
  assert set(builder.info.splits) == {"train", "validation", "test", "few_shot"}
  for split, path in (("train", train), ("validation", dev), ("test", test), ("few_shot", shots)):
    assert TASK.examples(builder.as_data_source(split)) == read_examples(path, allow_unlabeled=split == "test"), split
  (t,) = TASK.examples(builder.as_data_source("test"))
  assert t.answer is None and t.choices == CHOICES
  (s,) = TASK.examples(builder.as_data_source("few_shot"))
  assert TASK.target(s) == " Carts hold groceries. Therefore, the answer is grocery cart (b).\n"
  assert build_commonsense_qa(tmp_path / "data", train, validation_path=dev, test_path=test,
                              few_shot_path=shots).data_dir == builder.data_dir


def test_failed_build_writes_nothing(tmp_path):
  train = _write(tmp_path / "train.jsonl", [_line("q1"), _line("q2")])
  shots = _write(tmp_path / "shots.jsonl", [_line("s1", rationale="ok"), _line("s2")])  # s2 lacks a rationale
  data_dir = tmp_path / "data"
  with pytest.raises(DataFormatError, match=f"^{re.escape(shots)}:2: missing key 'rationale'"):
    build_commonsense_qa(data_dir, train, few_shot_path=shots)
  unlabeled_dev = _write(tmp_path / "dev.jsonl", [_line("d1", key=None)])
  with pytest.raises(DataFormatError, match=f"^{re.escape(unlabeled_dev)}:1: missing key 'answerKey'"):
    build_commonsense_qa(data_dir, train, validation_path=unlabeled_dev)
  written = [os.path.join(root, f) for root, _, fs in os.walk(data_dir) for f in fs
             if "array_record" in f or f == "dataset_info.json"]
  assert written == []
