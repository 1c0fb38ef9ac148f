"""Tests for star_jax.data.gsm8k: texts, number normalisation, answer extraction, and the TFDS builder over
fixture files written here (malformed lines name file:line; a failed build leaves no dataset)."""

import json
import os
import re

import pytest

from star_jax.data import gsm8k
from star_jax.data.gsm8k import Gsm8kTask, build_gsm8k, normalize_number, read_examples
from star_jax.data.jsonl import DataFormatError
from star_jax.data.tasks import Example, get_task

TASK = Gsm8kTask()
NATALIA = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                       "May. How many clips did Natalia sell altogether in April and May?",
           "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                     "altogether in April and May.\n#### 72"}
NATALIA_RATIONALE = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
BIG = {"question": "  A farm has 1,200 cows.\n", "answer": "  It has 1,200 cows.  \n\nThat is <<1200*1=1200>>1200.\n"
                                                          "#### 1,200"}
EX = Example(question="How many?", answer="72", rationale="Line one.\nLine two.", id="train.jsonl:1")


def _write(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    for line in lines:
      f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
  return str(path)


def _files_under(directory):
  return sorted(os.path.relpath(os.path.join(root, f), directory) for root, _, fs in os.walk(directory) for f in fs)


# ---- texts ----

def test_prompt_hint_and_target_texts():
  assert TASK.prompt(EX) == "Q: How many?\nA:"
  assert TASK.hinted_prompt(EX) == "Q: How many? (72)\nA:"  # the official STaR hint
  assert TASK.target(EX) == " Line one.\nLine two.\n#### 72\n"
  assert TASK.target(Example(question="q", answer="5", rationale="")) == " #### 5\n"
  assert TASK.stop_strings == ("\n\n",)
  assert get_task("gsm8k").target(EX) == TASK.target(EX)


def test_target_is_correct_and_trim_keeps_it():
  assert TASK.is_correct(EX, TASK.target(EX)) and TASK.trim(TASK.target(EX)) == TASK.target(EX)
  assert TASK.extract_answer(TASK.target(EX)) == "72"


def test_few_shot_prompt():
  q = Example(question="Next?", answer="5")
  shots = "Q: How many?\nA: Line one.\nLine two.\n#### 72\n\n"
  assert TASK.few_shot_prompt(q, [EX]) == shots + "Q: Next?\nA:"
  assert TASK.few_shot_prompt(q, [EX, EX]) == shots + shots + "Q: Next?\nA:"
  assert TASK.few_shot_prompt(q, [EX], hint=True) == (
      "Q: How many? (72)\nA: Line one.\nLine two.\n#### 72\n\nQ: Next? (5)\nA:")


def test_missing_rationale_or_answer_refused():
  with pytest.raises(ValueError, match="no gold rationale"):
    TASK.target(Example(question="q", answer="1", id="t:3"))
  with pytest.raises(ValueError, match="no gold answer"):
    TASK.hinted_prompt(Example(question="q", answer=None))


@pytest.mark.parametrize("text,want", [
    ("72", "72"), (" 72 ", "72"), ("72.", "72"), ("72.0", "72"), ("72.50", "72.5"), ("1,000", "1000"),
    ("$1,000.00", "1000"), ("-3", "-3"), ("-0", "0"), ("0.0", "0"), ("-$5", "-5"), (".5", "0.5"),
    ("1234567890123456789012345678901234", "1234567890123456789012345678901234"),  # never rounded
    ("1,00", None), ("72 clips", None), ("", None), ("seventy", None), ("7 2", None), ("72..", None),
    ("1e3", None), ("--1", None), ("1,000,00", None), ("1" * 101, None)])
def test_normalize_number(text, want):
  assert normalize_number(text) == want


@pytest.mark.parametrize("generation,want", [
    (" So 72.\n#### 72\n", "72"), (" #### 72", "72"), ("#### $1,000.00\nmore", "1000"),
    ("a\n#### 72\n#### 73\n", "72"),  # the first '####' line counts
    ("a #### 72\n", "72"), ("#### 72 clips\n", None), ("####\n72\n", None), ("72\n", None), ("", None),
    ("# 72\n", None)])
def test_extract_answer(generation, want):
  assert TASK.extract_answer(generation) == want


def test_is_correct_compares_numbers_not_strings():
  ex = Example(question="q", answer="1000")
  assert TASK.is_correct(ex, "x\n#### 1,000\n") and TASK.is_correct(ex, "#### 1000.0")
  assert not TASK.is_correct(ex, "#### 100\n") and not TASK.is_correct(ex, "no answer")
  assert TASK.is_correct(Example(question="q", answer="72"), "#### 72.\n\nQ: next")
  assert TASK.is_correct(Example(question="q", answer="1,000.0"), "#### 1000")  # a hand-made gold, normalised too


def test_trim():
  assert TASK.trim(" a\nb\n#### 72\n\nQ: more\n") == " a\nb\n#### 72\n"
  assert TASK.trim(" a\n#### 72") == " a\n#### 72\n"  # stopped at the cap: the answer line is closed
  assert TASK.trim(" no answer yet\n") == " no answer yet\n"  # unchanged


def test_trim_and_answer_are_stable_under_any_suffix():
  for g in (" a\n#### 72\n", " a\n#### 7 2\n", "#### 1,000"):
    t = TASK.trim(g)
    for suffix in ("", "\n", "Q: next\nA: 5\n#### 5\n", "#### 9", "0"):
      assert TASK.trim(t + suffix) == t and TASK.extract_answer(t + suffix) == TASK.extract_answer(g)


# ---- reading files ----

def test_read_examples(tmp_path):
  path = _write(tmp_path / "train.jsonl", [NATALIA, "", "   ", BIG, {"question": "Q?", "answer": "#### 5"}])
  a, b, c = read_examples(path)
  assert a == Example(question=NATALIA["question"], answer="72", rationale=NATALIA_RATIONALE, id="train.jsonl:1")
  assert b == Example(question="A farm has 1,200 cows.", answer="1200", rationale="It has 1,200 cows.\nThat is 1200.",
                      id="train.jsonl:4")  # blank lines skipped but counted; lines stripped, empty ones dropped
  assert c == Example(question="Q?", answer="5", rationale=None, id="train.jsonl:5")
  assert gsm8k.strip_calculator_annotations("x <<a<b>> y <<1+1=2>>2") == "x <<a<b>> y 2"  # balanced spans only


@pytest.mark.parametrize("bad,message", [
    ('{"question": "q", "answer": "#### 1"', "invalid JSON"),
    ('["q", "#### 1"]', "expected a JSON object, got list"),
    ({"answer": "#### 1"}, "missing key 'question'"),
    ({"question": "q"}, "missing key 'answer'"),
    ({"question": "q", "answer": 1}, "key 'answer' must be a str, got int"),
    ({"question": " ", "answer": "#### 1"}, "empty question"),
    ({"question": "q", "answer": "it is 1"}, "exactly one '####' before the final answer, found 0"),
    ({"question": "q", "answer": "#### 1 #### 2"}, "found 2"),
    ({"question": "q", "answer": "x\n#### one"}, "the final answer after '####' is not a number: 'one'")])
def test_malformed_line_names_file_and_line(tmp_path, bad, message):
  path = _write(tmp_path / "train.jsonl", [NATALIA, "", bad, NATALIA])
  with pytest.raises(DataFormatError, match=f"^{re.escape(path)}:3: .*{message}") as info:
    read_examples(path)
  assert info.value.path == path and info.value.line == 3


def test_invalid_utf8_names_the_line(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_bytes(json.dumps(NATALIA).encode() + b"\n\xff\xfe\n")
  with pytest.raises(DataFormatError, match=f"{re.escape(str(path))}:2: not UTF-8"):
    read_examples(path)


# ---- the TFDS builder ----

def test_builder_reads_back_what_the_files_say(tmp_path):
  train = _write(tmp_path / "train.jsonl", [NATALIA, BIG, {"question": "Q?", "answer": "#### 5"}])
  test = _write(tmp_path / "test.jsonl", [{"question": "Héllo? ✓", "answer": "x <<1+1=2>>2\n#### -2.50"}])
  builder = build_gsm8k(tmp_path / "data", train, test)
  assert set(builder.info.splits) == {"train", "test"}
  train_examples = TASK.examples(builder.as_data_source("train"))
  assert train_examples == read_examples(train)
  assert train_examples[2].rationale is None  # '' on disk reads back as None
  assert TASK.examples(builder.as_data_source("test")) == [
      Example(question="Héllo? ✓", answer="-2.5", rationale="x 2", id="test.jsonl:1")]
  # idempotent: the same files reuse the same directory; changed contents get a new one
  again = build_gsm8k(tmp_path / "data", train, test)
  assert again.data_dir == builder.data_dir
  _write(tmp_path / "train.jsonl", [NATALIA])
  changed = build_gsm8k(tmp_path / "data", train, test)
  assert changed.data_dir != builder.data_dir and len(changed.as_data_source("train")) == 1
  only_train = build_gsm8k(tmp_path / "data2", train)
  assert set(only_train.info.splits) == {"train"}


def test_failed_build_writes_nothing(tmp_path):
  train = _write(tmp_path / "train.jsonl", [NATALIA, BIG])
  test = _write(tmp_path / "test.jsonl", [NATALIA, {"question": "q", "answer": "no mark"}])  # train is fine
  data_dir = tmp_path / "data"
  with pytest.raises(DataFormatError, match=f"^{re.escape(test)}:2: "):
    build_gsm8k(data_dir, train, test)
  written = [f for f in _files_under(data_dir) if "array_record" in f or f.endswith("dataset_info.json")]
  assert written == []  # no split of either file, no dataset marked complete


def test_missing_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.jsonl: not found"):
    build_gsm8k(tmp_path / "data", tmp_path / "nope.jsonl")
