"""GSM8K (Cobbe et al. 2021, arXiv 2110.14168) for STaR: the task's texts and a TFDS builder over local files.

Input: the user's own copy of GSM8K as JSON lines, one `{"question": ..., "answer": ...}` per line, where
`answer` is the worked solution, then a line `#### <final answer>`. Nothing is downloaded: the builder
reads the paths it is given (`build_gsm8k(data_dir, train_path=..., test_path=...)`).

Normalisation at build time (documented because it changes the text the model sees):
  * the calculator annotations `<<48/2=24>>` are removed from rationales ('48/2 = <<48/2=24>>24' becomes
    '48/2 = 24'): they were a tool-use channel for the original verifier models, and a model that
    imitates them spends tokens on a format it cannot execute. Only balanced `<<...>>` spans are removed;
  * each rationale line is stripped and empty lines are dropped (a blank line is the sampler's stop);
  * the final answer is canonicalised by `normalize_number` ('1,000' -> '1000', '72.0' -> '72').
Malformed lines (invalid JSON, a missing or non-string key, no `####` or more than one, a final answer that
is not a number) raise `DataFormatError` naming the file and line, before anything is written; TFDS writes
into a temporary directory that is renamed only when complete, so a failed build leaves no dataset.

Texts, in the format of the official STaR code (ezelikman/STaR, gsm/prompts.txt and device_inference.py):

    prompt         'Q: Natalia sold clips to 48 of her friends ... in April and May?\\nA:'
    hinted prompt  'Q: Natalia sold clips to 48 of her friends ... in April and May? (72)\\nA:'
    target         ' Natalia sold 48/2 = 24 clips in May.\\nNatalia sold 48+24 = 72 clips ...\\n#### 72\\n'

The answer of a generation is what follows `####` on the first line that contains it, compared as a
number: commas between digit groups, a leading '$', a trailing '.' and trailing decimal zeros are
ignored ('#### $1,000.00' == 1000); anything else on that line ('#### 72 clips') is no answer.
"""

from __future__ import annotations

import dataclasses
import decimal
import os
import re
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds

from star_jax.data.jsonl import DataFormatError, Record, read_jsonl
from star_jax.data.local_builder import LocalFilesBuilder, LocalFilesConfig, prepare
from star_jax.data.tasks import Example, Task, as_str, require_answer, require_rationale

ANSWER_MARK = "####"
MAX_NUMBER_CHARS = 100  # longer "numbers" are garbage (and Decimal stays cheap)
_EXACT = decimal.Context(prec=MAX_NUMBER_CHARS + 1)  # normalize() must never round

_ANNOTATION_RE = re.compile(r"<<[^<>\n]*>>")
_NUMBER_RE = re.compile(r"-?\$?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|-?\$?\.[0-9]+")


def strip_calculator_annotations(text: str) -> str:
  """'48/2 = <<48/2=24>>24 clips' -> '48/2 = 24 clips' (balanced `<<...>>` spans on one line only)."""
  return _ANNOTATION_RE.sub("", text)


def normalize_number(text: str | None) -> str | None:
  """A canonical decimal string of `text`, or None if it is not one number (or not a string at all).

  Accepts an optional '-', an optional '$', digits with or without ',' thousands separators (groups of
  three), an optional fraction and one trailing '.'; surrounding whitespace is ignored.
  '1,000' -> '1000', '$72.50' -> '72.5', '72.0' -> '72', '-0' -> '0', '1,00' -> None, '72 clips' -> None.
  Never raises; the regex runs on at most MAX_NUMBER_CHARS characters.
  """
  if not isinstance(text, str):
    return None
  text = text.strip()
  if text.endswith(".") and not text.endswith(".."):
    text = text[:-1]
  if not text or len(text) > MAX_NUMBER_CHARS or not _NUMBER_RE.fullmatch(text):
    return None
  value = decimal.Decimal(text.replace(",", "").replace("$", ""))
  out = format(value.normalize(_EXACT), "f")
  return "0" if out in ("-0", "0") else out


def parse_solution(answer: str) -> tuple[str, str]:
  """GSM8K's `answer` field -> (rationale, raw final answer); ValueError unless exactly one '####'."""
  count = answer.count(ANSWER_MARK)
  if count != 1:
    raise ValueError(f"expected exactly one {ANSWER_MARK!r} before the final answer, found {count}")
  rationale, final = answer.split(ANSWER_MARK)
  lines = (line.strip() for line in strip_calculator_annotations(rationale).split("\n"))
  return "\n".join(line for line in lines if line), final.strip()


class Gsm8kTask(Task):
  """Grade-school math word problems; group 0 for every example."""

  name = "gsm8k"
  stop_strings = ("\n\n",)  # a blank line: the end of a few-shot block

  def prompt(self, example: Example) -> str:
    return f"Q: {example.question}\nA:"

  def hinted_prompt(self, example: Example) -> str:
    return f"Q: {example.question} ({require_answer(example)})\nA:"

  def target(self, example: Example) -> str:
    rationale = require_rationale(example)
    body = f"{rationale}\n" if rationale else ""  # '' (hand-made): ' #### 72\n'
    return f" {body}{ANSWER_MARK} {require_answer(example)}\n"

  @staticmethod
  def _answer_line(generation: str) -> tuple[int, int] | None:
    """(index of the first '####', end of its line: the index of the next newline, or len)."""
    mark = generation.find(ANSWER_MARK)
    if mark < 0:
      return None
    end = generation.find("\n", mark)
    return mark, len(generation) if end < 0 else end

  def extract_answer(self, generation: str) -> str | None:
    if not isinstance(generation, str):
      return None
    span = self._answer_line(generation)
    if span is None:
      return None
    return normalize_number(generation[span[0] + len(ANSWER_MARK):span[1]])

  def is_correct(self, example: Example, generation: str) -> bool:
    """1(ŷ = y) with both sides as numbers (a hand-made Example may hold '1,000' or '72.0')."""
    gold = require_answer(example)
    predicted = self.extract_answer(generation)
    return predicted is not None and predicted == (normalize_number(gold) or gold)

  def trim(self, generation: str) -> str:
    span = self._answer_line(generation)
    return generation if span is None else generation[:span[1]] + "\n"

  def from_features(self, features: Mapping[str, Any]) -> Example:
    rationale = as_str(features["rationale"])
    return Example(question=as_str(features["question"]), answer=as_str(features["answer"]),
                   rationale=rationale or None, group=0, id=as_str(features["id"]))


def example_from_record(record: Record) -> Example:
  """The Example of one GSM8K JSONL line; DataFormatError naming the file and line if malformed."""
  question = record.get("question", str).strip()
  if not question:
    raise record.error("empty question")
  solution = record.get("answer", str)  # (its own DataFormatError names the file once)
  try:
    rationale, final = parse_solution(solution)
  except ValueError as e:
    raise record.error(f"key 'answer': {e}") from None
  answer = normalize_number(final)
  if answer is None:
    raise record.error(f"the final answer after {ANSWER_MARK!r} is not a number: {final!r:.80}")
  return Example(question=question, answer=answer, rationale=rationale or None, group=0,
                 id=f"{os.path.basename(record.path)}:{record.line}")


def read_examples(path: str | os.PathLike) -> list[Example]:
  """Every line of a GSM8K JSONL file, parsed and validated (the whole file, before anything is written).

  A file without any question is an error (`<path>:0: no questions in the file`), not an empty split.
  """
  examples = [example_from_record(r) for r in read_jsonl(path)]
  if not examples:
    raise DataFormatError(os.fspath(path), 0, "no questions in the file")
  return examples


# ---- TFDS builder ----

@dataclasses.dataclass(eq=False)
class Gsm8kBuilderConfig(LocalFilesConfig):
  """Local GSM8K files; `name` defaults to a fingerprint of their contents (see LocalFilesConfig)."""

  DATASET = "GSM8K"
  TRAIN_FILE = "train.jsonl"
  SPLITS = ("train", "test")

  train_path: str = ""  # required: the train split (STaR's D, and the few-shot / seed rationales)
  test_path: str = ""  # optional: the held-out split ("" = no test split)


class Gsm8k(LocalFilesBuilder, skip_registration=True):
  """GSM8K read from local JSONL files (no download); text features come back as bytes."""

  name = "star_gsm8k"  # not TFDS's own `gsm8k` (which downloads)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),  # '<file name>:<line>'
            "question": tfds.features.Text(),
            "answer": tfds.features.Text(),  # canonical final answer (normalize_number)
            "rationale": tfds.features.Text(),  # annotations stripped; '' when the solution had none
        }),
        disable_shuffling=True,  # keep the files' order
        homepage="https://arxiv.org/abs/2110.14168",
    )

  def _read_split(self, split: str, path: str) -> list[Example]:
    del split  # every split is read alike
    return read_examples(path)

  def _generate_examples(self, examples: list[Example]):
    for i, ex in enumerate(examples):
      yield i, {"id": ex.id, "question": ex.question, "answer": ex.answer, "rationale": ex.rationale or ""}


def build_gsm8k(data_dir: str | os.PathLike, train_path: str | os.PathLike,
                test_path: str | os.PathLike = "") -> Gsm8k:
  """Parses the files and writes the dataset under `data_dir` if needed (idempotent, no network).

  Read with `builder.as_data_source("train" | "test")` and `Gsm8kTask().examples(source)`.
  """
  config = Gsm8kBuilderConfig(train_path=os.fspath(train_path), test_path=os.fspath(test_path))
  return prepare(Gsm8k(data_dir=os.fspath(data_dir), config=config))
