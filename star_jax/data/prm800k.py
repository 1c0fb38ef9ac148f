"""PRM800K (Lightman et al. 2023, "Let's Verify Step by Step", arXiv 2305.20050) as a TFDS builder.

Reads the user's local copy of the released JSONL files (github.com/openai/prm800k, `data/`), never the
network: put any of phase1_train.jsonl, phase1_test.jsonl, phase2_train.jsonl, phase2_test.jsonl in one
directory and pass it as `manual_dir`; each file present becomes a split of the same name. Written as
array_record (readable without TensorFlow, `builder.as_data_source(split)`; text comes back as bytes).

Each line is one labelled solution: `question.problem`, `question.ground_truth_answer`, and
`label.steps[i].completions[j].{text, rating}` (rating −1 / 0 / +1, or null), `chosen_completion` (the
index continued from, or null), `human_completion` (phase 1: a labeller-written +1 step used when
`chosen_completion` is null), `label.finish_reason`. Every labelled prefix becomes training examples:

  * the chosen trajectory (steps 0..m−1 along the chosen / human completions), with their ratings;
  * for every step i and every other completion j at it: chosen steps 0..i−1 (unrated here), then
    completion j with its rating (unrated alternatives, and trajectories without a rating, are skipped).

So every rating in the file is used once (duplicate completions at a step once), each with exactly the
context the labeller saw. A malformed record, a line that is not UTF-8, or a file without examples stops
the build with an error naming the file and line (`path:line: ...`). The built dataset is keyed by a
fingerprint of the files' contents, so changed files are rebuilt, never served stale.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from star_jax.data import jsonl
from star_jax.data.local_builder import ArrayRecordBuilder, prepare

SPLIT_FILES = ("phase1_train", "phase1_test", "phase2_train", "phase2_test")
NO_RATING = -2  # stored for a step without a rating (null); never a training label
HUMAN_RATING = 1  # phase-1 human-written steps are +1 by construction (labelling instructions)


class MalformedRecordError(ValueError):
  """A PRM800K line that cannot be read; the message starts with `path:line:`."""


@dataclasses.dataclass(frozen=True)
class StepExample:
  problem: str
  ground_truth_answer: str
  steps: tuple[str, ...]
  ratings: tuple[int, ...]  # −1 / 0 / +1, NO_RATING for unrated
  finish_reason: str
  full_trajectory: bool  # True for the chosen trajectory, False for an alternative completion
  source: str  # "<file>:<line>"


def _get(obj, key: str, where: str, types, path: str):
  if not isinstance(obj, Mapping) or key not in obj:
    raise MalformedRecordError(f"{where}: missing key {path}")
  value = obj[key]
  if not isinstance(value, types):
    names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
    raise MalformedRecordError(f"{where}: {path} must be {names}, got {type(value).__name__}")
  return value


def _rating(value, where: str, path: str) -> int:
  if value is None:
    return NO_RATING
  if isinstance(value, bool) or not isinstance(value, int) or value not in (-1, 0, 1):
    raise MalformedRecordError(f"{where}: {path} must be -1, 0, 1 or null, got {value!r}")
  return value


def _human_text(value, where: str, path: str) -> str | None:
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, Mapping):
    return _get(value, "text", where, str, f"{path}.text")
  raise MalformedRecordError(f"{where}: {path} must be null, a string or an object with text")


def examples_from_record(record, where: str) -> list[StepExample]:
  """The step-labelled examples of one parsed JSONL record (see the module docstring)."""
  question = _get(record, "question", where, dict, "question")
  problem = _get(question, "problem", where, str, "question.problem")
  answer = question.get("ground_truth_answer")
  if answer is not None and not isinstance(answer, str):
    raise MalformedRecordError(f"{where}: question.ground_truth_answer must be a string or null")
  label = _get(record, "label", where, dict, "label")
  steps = _get(label, "steps", where, list, "label.steps")
  finish = label.get("finish_reason") or ""
  if not isinstance(finish, str):
    raise MalformedRecordError(f"{where}: label.finish_reason must be a string")

  def make(texts, ratings, full):
    return StepExample(problem, answer or "", tuple(texts), tuple(ratings), finish, full, where)

  out, prefix_texts, prefix_ratings = [], [], []
  for i, step in enumerate(steps):
    path = f"label.steps[{i}]"
    completions = _get(step, "completions", where, list, f"{path}.completions")
    rated = []
    for j, completion in enumerate(completions):
      text = _get(completion, "text", where, str, f"{path}.completions[{j}].text")
      rated.append((text, _rating(completion.get("rating"), where, f"{path}.completions[{j}].rating")))
    chosen = step.get("chosen_completion") if isinstance(step, Mapping) else None
    if chosen is not None and (isinstance(chosen, bool) or not isinstance(chosen, int)
                               or not 0 <= chosen < len(rated)):
      raise MalformedRecordError(f"{where}: {path}.chosen_completion must be null or an index into the "
                                 f"{len(rated)} completions, got {chosen!r}")
    human = _human_text(step.get("human_completion"), where, f"{path}.human_completion")
    seen = set()
    for j, (text, rating) in enumerate(rated):
      if j == chosen or rating == NO_RATING or (text, rating) in seen:
        continue
      seen.add((text, rating))
      out.append(make(prefix_texts + [text], [NO_RATING] * len(prefix_texts) + [rating], False))
    if chosen is not None:
      prefix_texts.append(rated[chosen][0])
      prefix_ratings.append(rated[chosen][1])
    elif human is not None:
      prefix_texts.append(human)
      prefix_ratings.append(HUMAN_RATING)
    else:
      break  # no continuation: the labeller stopped here (e.g. found_error)
  if any(r != NO_RATING for r in prefix_ratings):
    out.insert(0, make(prefix_texts, prefix_ratings, True))
  return out


def read_jsonl(path: str | os.PathLike) -> Iterator[StepExample]:
  """Every example of a PRM800K JSONL file; MalformedRecordError names `path:line` for a bad record.

  Lines are read as bytes and decoded as strict UTF-8 (a UTF-16 file, or any other encoding, is refused
  naming the line). A file without any example is an error too (`path:0: ...`): TFDS would otherwise
  fail later with "No examples were yielded" and no file named.
  """
  name = os.fspath(path)
  records = examples = 0
  with open(name, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      where = f"{name}:{line_no}"
      try:
        line = jsonl.decode_line(raw)
      except ValueError as e:
        raise MalformedRecordError(f"{where}: {e}") from None
      if not line.strip():
        continue
      try:
        record = jsonl.loads_json(line)
      except json.JSONDecodeError as e:
        raise MalformedRecordError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
      except ValueError as e:
        raise MalformedRecordError(f"{where}: {e}") from None
      if not isinstance(record, dict):
        raise MalformedRecordError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
      records += 1
      for example in examples_from_record(record, where):
        examples += 1
        yield example
  if not records:
    raise MalformedRecordError(f"{name}:0: no records in the file")
  if not examples:
    raise MalformedRecordError(f"{name}:0: none of its {records} records has a rated step (no examples)")


def binary_targets(ratings) -> list[float | None]:
  """PRM800K ratings as binary step labels, neutral counted as positive (Lightman et al. 2023): −1 -> 0."""
  return [None if int(r) == NO_RATING else float(int(r) >= 0) for r in ratings]


def class_targets(ratings) -> list[float | None]:
  """Ratings −1 / 0 / +1 as class ids 0 / 1 / 2 for a three-class head."""
  return [None if int(r) == NO_RATING else float(int(r) + 1) for r in ratings]


class PRM800K(ArrayRecordBuilder):
  """Step-labelled examples from the PRM800K JSONL files in `manual_dir` (no download)."""

  name = "prm800k"
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Clone github.com/openai/prm800k (with Git LFS) and pass its prm800k/data "
                                  "directory, holding phase{1,2}_{train,test}.jsonl, as manual_dir.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "problem": tfds.features.Text(),
            "ground_truth_answer": tfds.features.Text(),
            "steps": tfds.features.Sequence(tfds.features.Text()),
            "ratings": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "finish_reason": tfds.features.Text(),
            "full_trajectory": np.bool_,
            "source": tfds.features.Text(),
        }),
        disable_shuffling=True,
        homepage="https://github.com/openai/prm800k",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    return {name: self._generate_examples(path) for name, path in split_files(dl_manager.manual_dir).items()}

  def _generate_examples(self, path: str):
    for k, ex in enumerate(read_jsonl(path)):
      yield k, {"problem": ex.problem, "ground_truth_answer": ex.ground_truth_answer, "steps": list(ex.steps),
                "ratings": np.asarray(ex.ratings, np.int32), "finish_reason": ex.finish_reason,
                "full_trajectory": ex.full_trajectory, "source": ex.source}


def split_files(manual_dir: str | os.PathLike) -> dict[str, str]:
  """{split name: path} of the PRM800K files present in `manual_dir`; FileNotFoundError if none is."""
  directory = os.fspath(manual_dir)
  found = {name: os.path.join(directory, f"{name}.jsonl") for name in SPLIT_FILES
           if os.path.isfile(os.path.join(directory, f"{name}.jsonl"))}
  if not found:
    raise FileNotFoundError(f"no PRM800K file in {directory}: expected any of "
                            f"{', '.join(n + '.jsonl' for n in SPLIT_FILES)}")
  return found


def build_prm800k(data_dir: str | os.PathLike, manual_dir: str | os.PathLike) -> PRM800K:
  """Prepare (idempotent, no network) the builder from the JSONL files in `manual_dir`; returns it.

  The dataset is written under a config named after a fingerprint of the files' contents
  (`prm800k/files_<sha256[:12]>/1.0.0`), so an edited or added file is rebuilt instead of silently
  reusing the data built from its old contents.
  """
  files = split_files(manual_dir)  # a clear error before TFDS's own checks
  config = tfds.core.BuilderConfig(name=f"files_{jsonl.file_fingerprint(files)}",
                                   description=f"PRM800K files in {os.fspath(manual_dir)}")
  return prepare(PRM800K(data_dir=os.fspath(data_dir), config=config), manual_dir=manual_dir)
