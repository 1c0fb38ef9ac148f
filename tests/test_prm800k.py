"""The PRM800K builder on fixture files written here: trajectories and alternative completions become
step-labelled examples, ratings map to binary / three-class targets at step ends, and malformed records
stop the build with an error naming the file and line."""

import json

import numpy as np
import pytest

from star_jax.data import CharTokenizer, prm800k
from star_jax.prm import steps as prm_steps

NO = prm800k.NO_RATING


def _step(completions, chosen, human=None):
  return {"completions": [{"text": t, "rating": r, "flagged": None} for t, r in completions],
          "human_completion": human, "chosen_completion": chosen}


def _record(problem, steps, finish="solution", answer="42"):
  return {"labeler": "x", "timestamp": "t", "generation": None, "is_quality_control_question": False,
          "is_initial_screening_question": False,
          "question": {"problem": problem, "ground_truth_answer": answer},
          "label": {"steps": steps, "total_time": 1, "finish_reason": finish}}


# phase 1: alternatives at step 1 (one duplicated), a human step after an all-negative step 2
PHASE1 = _record("P1", [
    _step([("s0", 1)], 0),
    _step([("a", -1), ("b", 0), ("a", -1)], 1),
    _step([("c", -1)], None, human={"text": "h", "rating": None}),
    _step([("d", 1), ("e", None)], 0),
])
# phase 2: the labeller stops at the first error (no chosen completion)
PHASE2 = _record("P2", [_step([("t0", 0)], 0), _step([("x", -1), ("y", 1)], None)], finish="found_error")


def _write(path, lines):
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


def _as_tuples(examples):
  return [(ex.steps, ex.ratings, ex.full_trajectory) for ex in examples]


def test_examples_from_records():
  one = list(prm800k.examples_from_record(PHASE1, "f:1"))
  assert _as_tuples(one) == [
      (("s0", "b", "h", "d"), (1, 0, 1, 1), True),  # the chosen trajectory; the human step is +1
      (("s0", "a"), (NO, -1), False),  # alternatives carry only their own rating
      (("s0", "b", "c"), (NO, NO, -1), False),
  ]  # the unrated alternative "e" gives no example
  assert {ex.problem for ex in one} == {"P1"} and one[0].source == "f:1" and one[0].ground_truth_answer == "42"
  two = list(prm800k.examples_from_record(PHASE2, "g:3"))
  assert _as_tuples(two) == [(("t0",), (0,), True), (("t0", "x"), (NO, -1), False), (("t0", "y"), (NO, 1), False)]
  assert two[0].finish_reason == "found_error"
  # every rating of the file is used exactly once
  ratings = [r for ex in one + two for r in ex.ratings if r != NO]
  # (s0, b, h = human +1, d) + a + c + (t0) + x + y; the duplicate "a" and the unrated "e" are not used
  assert sorted(ratings) == sorted([1, 0, 1, 1, -1, -1, 0, -1, 1])


def test_targets():
  assert prm800k.binary_targets([1, 0, -1, NO]) == [1.0, 1.0, 0.0, None]
  assert prm800k.class_targets([1, 0, -1, NO]) == [2.0, 1.0, 0.0, None]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"question": {"problem": "p"}, "label": {}}), "missing key label.steps"),
    (json.dumps({"label": {"steps": []}}), "missing key question"),
    (json.dumps(_record("p", [_step([("a", 2)], 0)])), r"label.steps\[0\].completions\[0\].rating must be"),
    (json.dumps(_record("p", [_step([("a", 1)], 3)])), r"label.steps\[0\].chosen_completion must be"),
    (json.dumps(_record("p", [{"completions": [{"rating": 1}]}])), r"missing key label.steps\[0\].completions\[0\].text"),
])
def test_malformed_records_name_file_and_line(tmp_path, line, message):
  path = _write(tmp_path / "phase2_test.jsonl", [json.dumps(PHASE2), "", line])
  with pytest.raises(prm800k.MalformedRecordError, match=rf"phase2_test.jsonl:3: .*{message}"):
    list(prm800k.read_jsonl(path))


def test_builder_reads_local_files_and_encodes_step_labels(tmp_path):
  manual = tmp_path / "prm800k_data"
  manual.mkdir()
  _write(manual / "phase1_train.jsonl", [json.dumps(PHASE1), "", json.dumps(PHASE2)])
  _write(manual / "phase2_test.jsonl", [json.dumps(PHASE2)])
  builder = prm800k.build_prm800k(tmp_path / "tfds", manual)
  assert set(builder.info.splits) == {"phase1_train", "phase2_test"}
  train = builder.as_data_source("phase1_train")
  assert len(train) == 6 and len(builder.as_data_source("phase2_test")) == 3
  first = train[0]
  assert [s.decode() for s in first["steps"]] == ["s0", "b", "h", "d"]
  assert first["ratings"].tolist() == [1, 0, 1, 1] and bool(first["full_trajectory"])
  assert first["source"].decode().endswith("phase1_train.jsonl:1") and train[3]["source"].decode().endswith(":3")

  tok = CharTokenizer()
  ex = prm_steps.encode_prm800k_record(tok, train[2])  # ("s0", "b", "c") rated (-, -, -1)
  assert tok.decode(ex["inputs"]) == "P1\ns0\nb\nc\n"
  bos = 1  # positions count the BOS token; each label sits on the newline closing its step
  assert np.flatnonzero(ex["step_mask"]).tolist() == [bos + len("P1\ns0\nb\nc")]  # only the rated step's end
  assert ex["step_targets"][ex["step_mask"] > 0].tolist() == [0.0]
  full = prm_steps.encode_prm800k_record(tok, first, three_class=True)
  ends = [bos + len(t) for t in ("P1\ns0", "P1\ns0\nb", "P1\ns0\nb\nh", "P1\ns0\nb\nh\nd")]
  assert np.flatnonzero(full["step_mask"]).tolist() == ends
  assert full["step_targets"][ends].tolist() == [2.0, 1.0, 2.0, 2.0]


def test_builder_without_files_or_with_a_bad_line(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="phase1_train.jsonl"):
    prm800k.build_prm800k(tmp_path / "tfds_empty", empty)
  bad = tmp_path / "bad"
  bad.mkdir()
  _write(bad / "phase1_test.jsonl", [json.dumps(PHASE1), json.dumps({"question": {"problem": "p"}})])
  with pytest.raises(prm800k.MalformedRecordError, match=r"phase1_test.jsonl:2: missing key label"):
    prm800k.build_prm800k(tmp_path / "tfds_bad", bad)
