"""Bad dataset files (issue 17, item 4): every loader names the file and line, and refuses before writing.

GSM8K and CommonsenseQA read through data/jsonl.py; PRM800K reads its own record format but shares the line
decoding (strict UTF-8) and JSON checks. Files are written here; nothing is downloaded.
"""

import json
import os
import re

import pytest

from star_jax.data import commonsense_qa, gsm8k, prm800k
from star_jax.data.jsonl import DataFormatError

GSM = {"question": "How many?", "answer": "Two and two.\n#### 4"}
CQA = {"id": "q1", "answerKey": "A", "question": {"stem": "Pick one?", "choices": [
    {"label": "A", "text": "this"}, {"label": "B", "text": "that"}]}}


def _prm_record(rating=1, problem="P"):
  return {"question": {"problem": problem, "ground_truth_answer": "4"},
          "label": {"finish_reason": "solution", "steps": [
              {"completions": [{"text": "two plus two is four", "rating": rating}], "chosen_completion": 0}]}}


def _write_lines(path, lines):
  path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
  return path


def _files_under(directory):
  return sorted(os.path.relpath(os.path.join(root, f), directory) for root, _, fs in os.walk(directory) for f in fs)


# ---- empty files ----

@pytest.mark.parametrize("content", ["", "\n  \n\t\n"])
def test_empty_gsm8k_file_names_the_file(tmp_path, content, fault_table):
  train = tmp_path / "train.jsonl"
  train.write_text(content)
  with pytest.raises(DataFormatError, match="^" + re.escape(f"{train}:0: no questions in the file")):
    gsm8k.read_examples(train)
  with pytest.raises(DataFormatError, match=re.escape(f"{train}:0: no questions")):
    gsm8k.build_gsm8k(tmp_path / "tfds", train)
  assert not [f for f in _files_under(tmp_path / "tfds") if f.endswith((".array_record", "dataset_info.json"))]
  fault_table(f"empty GSM8K file ({len(content)} bytes)", "train.jsonl",
              "DataFormatError 'train.jsonl:0: no questions in the file', no dataset written")


@pytest.mark.parametrize("lines, message", [
    ([], "no records in the file"),
    (["", "   "], "no records in the file"),
    ([_prm_record(rating=None)], "none of its 1 records has a rated step"),
])
def test_empty_prm800k_file_names_the_file(tmp_path, lines, message, fault_table):
  manual = tmp_path / "manual"
  manual.mkdir()
  path = _write_lines(manual / "phase2_train.jsonl", lines)
  with pytest.raises(prm800k.MalformedRecordError, match="^" + re.escape(f"{path}:0: {message}")):
    list(prm800k.read_jsonl(path))
  with pytest.raises(prm800k.MalformedRecordError, match=re.escape(f"{path}:0: {message}")):
    prm800k.build_prm800k(tmp_path / "tfds", manual)
  assert not [f for f in _files_under(tmp_path / "tfds") if f.endswith((".array_record", "dataset_info.json"))]
  fault_table(f"PRM800K file with {message.split(' (')[0].replace('none of its 1 records', 'no record')}",
              "phase2_train.jsonl", f"MalformedRecordError 'phase2_train.jsonl:0: {message}', no dataset written")


# ---- encodings ----

@pytest.mark.parametrize("encoding, message", [
    ("utf-16", "not UTF-8: starts with a UTF-16/32 byte-order mark"),
    ("utf-16-le", "contains NUL bytes"),
    ("utf-32", "not UTF-8: starts with a UTF-16/32 byte-order mark"),
    ("latin-1", r"not UTF-8 \(byte 0xe9 at column \d+\)"),
])
def test_prm800k_refuses_non_utf8_naming_file_and_line(tmp_path, encoding, message, fault_table):
  path = tmp_path / "phase1_train.jsonl"
  good = json.dumps(_prm_record()) + "\n"
  bad = json.dumps(_prm_record(problem="caf\u00e9"), ensure_ascii=False) + "\n"
  if encoding == "latin-1":
    path.write_bytes(good.encode("utf-8") + bad.encode(encoding))
    line = 2
  else:
    path.write_bytes((good + bad).encode(encoding))
    line = 1
  with pytest.raises(prm800k.MalformedRecordError, match="^" + re.escape(f"{path}:{line}: ") + message):
    list(prm800k.read_jsonl(path))
  fault_table(f"PRM800K file in {encoding}", "phase1_train.jsonl", f"MalformedRecordError names file:{line} and the encoding problem")


def test_prm800k_utf8_text_still_reads(tmp_path):
  path = tmp_path / "phase1_train.jsonl"
  path.write_bytes((json.dumps(_prm_record(problem="caf\u00e9 \u2211"), ensure_ascii=False) + "\n").encode("utf-8"))
  (example,) = prm800k.read_jsonl(path)
  assert example.problem == "caf\u00e9 \u2211"


# ---- JSON that Python or TFDS cannot hold, in every JSONL loader ----

HAZARDS = {
    "nesting 100k deep": ('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    "a 5000-digit integer": ('{"x": ' + "7" * 5000 + "}", "4300 digits"),
    "a lone surrogate": ('{"question": "a\\ud800b", "x": 1}', "lone UTF-16 surrogate"),
}


def _read_gsm8k(path):
  return gsm8k.read_examples(path)


def _read_cqa(path):
  return commonsense_qa.read_examples(path)


def _read_prm(path):
  return list(prm800k.read_jsonl(path))


LOADERS = {"GSM8K": (_read_gsm8k, GSM, DataFormatError), "CommonsenseQA": (_read_cqa, CQA, DataFormatError),
           "PRM800K": (_read_prm, _prm_record(), prm800k.MalformedRecordError)}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("hazard", sorted(HAZARDS))
def test_json_hazards_name_file_and_line(tmp_path, loader, hazard, fault_table):
  read, good, error = LOADERS[loader]
  line, message = HAZARDS[hazard]
  path = _write_lines(tmp_path / "phase1_train.jsonl", [good, "", line])
  with pytest.raises(error, match="^" + re.escape(f"{path}:3: ") + ".*" + message):
    read(path)
  fault_table(f"{loader} line with {hazard}", "line 3 of the file", f"{error.__name__} names file:3")


def test_lone_surrogate_no_longer_crashes_the_gsm8k_build(tmp_path):
  """TFDS used to fail deep in serialisation ('surrogates not allowed') naming no file."""
  train = _write_lines(tmp_path / "train.jsonl", [GSM, '{"question": "x\\udc00", "answer": "#### 1"}'])
  with pytest.raises(DataFormatError, match=re.escape(f"{train}:2: ")):
    gsm8k.build_gsm8k(tmp_path / "tfds", train)


def test_valid_surrogate_pairs_are_fine(tmp_path):
  train = _write_lines(tmp_path / "train.jsonl", ['{"question": "smile \\ud83d\\ude00", "answer": "#### 1"}'])
  assert gsm8k.read_examples(train)[0].question == "smile \U0001F600"


# ---- GSM8K messages, normalize_number ----

def test_gsm8k_missing_field_names_the_path_once(tmp_path, fault_table):
  path = _write_lines(tmp_path / "train.jsonl", [{"question": "q"}])
  with pytest.raises(DataFormatError) as info:
    gsm8k.read_examples(path)
  assert str(info.value) == f"{path}:1: missing key 'answer'"
  fault_table("GSM8K line without 'answer'", "train.jsonl:1", "DataFormatError names file:line once")


@pytest.mark.parametrize("value", [None, 72, 7.5, b"72", ["72"], {"a": 1}])
def test_normalize_number_of_a_non_string_is_none(value):
  assert gsm8k.normalize_number(value) is None


# ---- PRM800K cache keyed by content ----

def test_prm800k_rebuilds_after_its_file_changes(tmp_path, fault_table):
  manual = tmp_path / "manual"
  manual.mkdir()
  _write_lines(manual / "phase1_train.jsonl", [_prm_record(rating=1)])
  first = prm800k.build_prm800k(tmp_path / "tfds", manual)
  assert first.as_data_source("phase1_train")[0]["ratings"].tolist() == [1]
  _write_lines(manual / "phase1_train.jsonl", [_prm_record(rating=-1), _prm_record(rating=0)])
  second = prm800k.build_prm800k(tmp_path / "tfds", manual)
  source = second.as_data_source("phase1_train")
  assert [source[i]["ratings"].tolist() for i in range(len(source))] == [[-1], [0]]
  assert first.data_dir != second.data_dir
  again = prm800k.build_prm800k(tmp_path / "tfds", manual)  # unchanged files: the same dataset, reused
  assert again.data_dir == second.data_dir
  fault_table("PRM800K source file edited after a build", "phase1_train.jsonl",
              "rebuilt under a new content fingerprint; the stale dataset is not reused")
