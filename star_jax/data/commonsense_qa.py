"""CommonsenseQA (Talmor et al. 2019, arXiv 1811.00937) for STaR: the task's texts and a TFDS builder over
local files.

Input: the user's own copy of CommonsenseQA as JSON lines (train_rand_split.jsonl, dev_rand_split.jsonl,
test_rand_split_no_answers.jsonl), one question per line:

    {"id": "075e483d21c29a511267ef62bedc0461", "answerKey": "A",
     "question": {"stem": "The sanctions against the school were ...?",
                  "choices": [{"label": "A", "text": "ignore"}, {"label": "B", "text": "enforce"}, ...]}}

Other keys (question_concept, ...) are ignored. Labels must be single letters or digits, distinct
ignoring case; they are stored upper-case. `answerKey` must be one of the labels.

Unlabeled data, explicitly: the official test split has no answerKey. The train and validation files
must be labeled on every line; the test file may be unlabeled, but then on every line (a file that mixes
both is an error at the first line that differs). Unlabeled examples get `answer=None`: they can be
prompted (e.g. to write predictions) but `is_correct` and `hinted_prompt` refuse them.

Gold rationales (an extension for seed / few-shot exemplars; CommonsenseQA has none): a line may carry
`"rationale": "<reasoning>"` without the conclusion, which `target` appends (its whitespace, newlines
included, collapses to single spaces: the answer must end the rationale's only line). The official STaR code
prompted with 10 hand-written exemplars; write yours in this format and build them as any split.

Texts, in the format of the official STaR code (ezelikman/STaR, commonsenseqa/prompts*.txt,
device_inference.py): choices are shown with lower-case labels, the hint marks the correct one:

    prompt         'Q: Where do you put your grapes just before checking out?\\nAnswer Choices:\\n(a) mouth\\n'
                   '(b) grocery cart\\n(c) super market\\n(d) fruit basket\\n(e) fruit market\\nA:'
    hinted prompt  the same with '(b) grocery cart (CORRECT)'
    target         ' <rationale> Therefore, the answer is grocery cart (b).\\n'

The answer of a generation is the label in parentheses at the end of its first line, after 'answer is'
('... Therefore, the answer is grocery cart (b).' -> 'B'); the rationale is one line, so the sampler stops
at the first newline.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import tensorflow_datasets as tfds

from star_jax.data.jsonl import DataFormatError, Record, read_jsonl
from star_jax.data.local_builder import LocalFilesBuilder, LocalFilesConfig, prepare
from star_jax.data.tasks import Example, Task, as_str, require_answer, require_rationale

CORRECT_MARK = " (CORRECT)"
_LABEL_RE = re.compile(r"[A-Za-z0-9]")
# The answer is '(x)' at the end of the first line (then optional whitespace, one '.', whitespace), after the
# words 'answer is'. Matched in two linear steps instead of one regex: '\banswer is\b.*\(x\)\s*\.?\s*\Z'
# backtracks quadratically over a long run of spaces (8.9 s on 40k spaces).
_ANSWER_IS_RE = re.compile(r"\banswer is\b", re.IGNORECASE)
_LABEL_PARENS_RE = re.compile(r"\(([A-Za-z0-9])\)", re.IGNORECASE)


def gold_label(example: Example) -> str:
  """The gold label, upper-case; ValueError if unlabeled or not among the example's choices."""
  label = require_answer(example).upper()
  if label not in dict(example.choices):
    raise ValueError(f"example {example.id!r}: answer {example.answer!r} is not among the choice labels "
                     f"{[c[0] for c in example.choices]}")
  return label


def conclusion(example: Example) -> str:
  """'Therefore, the answer is grocery cart (b).'"""
  label = gold_label(example)
  return f"Therefore, the answer is {dict(example.choices)[label]} ({label.lower()})."


def answer_label(generation: str) -> str | None:
  """The upper-case label of '... answer is ... (x).' ending the first line of `generation`, else None.

  Linear time in the text's length (str.find / rstrip and two regexes without nested quantifiers); never
  raises (None for a non-string).
  """
  if not isinstance(generation, str):
    return None
  end = generation.find("\n")
  line = (generation if end < 0 else generation[:end]).rstrip()
  if line.endswith("."):
    line = line[:-1].rstrip()
  m = _LABEL_PARENS_RE.fullmatch(line, len(line) - 3) if len(line) >= 3 else None
  if m is None or _ANSWER_IS_RE.search(line, 0, len(line) - 3) is None:
    return None
  return m.group(1).upper()


class CommonsenseQaTask(Task):
  """Five-way multiple-choice commonsense questions; group 0 for every example."""

  name = "commonsense_qa"
  stop_strings = ("\n",)  # the rationale and the answer are one line

  def _prompt(self, example: Example, hint_label: str | None) -> str:
    lines = [f"Q: {example.question}", "Answer Choices:"]
    for label, text in example.choices:
      lines.append(f"({label.lower()}) {text}{CORRECT_MARK if label == hint_label else ''}")
    return "\n".join(lines) + "\nA:"

  def prompt(self, example: Example) -> str:
    return self._prompt(example, None)

  def hinted_prompt(self, example: Example) -> str:
    return self._prompt(example, gold_label(example))

  def target(self, example: Example) -> str:
    rationale = require_rationale(example)
    return f" {rationale} {conclusion(example)}\n" if rationale else f" {conclusion(example)}\n"

  def extract_answer(self, generation: str) -> str | None:
    if not isinstance(generation, str):
      return None
    return answer_label(generation)

  def is_correct(self, example: Example, generation: str) -> bool:
    """1(ŷ = y) on the choice label, ignoring case."""
    return self.extract_answer(generation) == require_answer(example).upper()

  def trim(self, generation: str) -> str:
    if self.extract_answer(generation) is None:
      return generation
    return generation.split("\n", 1)[0] + "\n"

  def from_features(self, features: Mapping[str, Any]) -> Example:
    labels = [as_str(x) for x in features["choice_labels"]]
    texts = [as_str(x) for x in features["choice_texts"]]
    answer, rationale = as_str(features["answer"]), as_str(features["rationale"])
    return Example(question=as_str(features["question"]), answer=answer or None, rationale=rationale or None,
                   group=0, choices=tuple(zip(labels, texts)), id=as_str(features["id"]))


def example_from_record(record: Record, *, labeled: bool = True) -> Example:
  """The Example of one CommonsenseQA JSONL line; DataFormatError naming the file and line if malformed.

  labeled=False: the line must NOT have an answerKey (or a rationale); answer is None.
  """
  stem = record.get("question.stem", str).strip()
  if not stem:
    raise record.error("empty question.stem")
  raw_choices = record.get("question.choices", list)
  if len(raw_choices) < 2:
    raise record.error(f"question.choices must have at least 2 choices, got {len(raw_choices)}")
  choices = []
  for i, choice in enumerate(raw_choices):
    if not isinstance(choice, dict) or not isinstance(choice.get("label"), str) or not isinstance(
        choice.get("text"), str):
      raise record.error(f"question.choices[{i}] must be an object with string 'label' and 'text', got {choice!r:.80}")
    if not _LABEL_RE.fullmatch(choice["label"]):
      raise record.error(f"question.choices[{i}].label must be one letter or digit, got {choice['label']!r}")
    choices.append((choice["label"].upper(), choice["text"].strip()))
  labels = [label for label, _ in choices]
  if len(set(labels)) != len(labels):
    raise record.error(f"question.choices labels must be distinct (ignoring case), got {labels}")
  key = record.get("answerKey", str, optional=True)
  rationale = record.get("rationale", str, optional=True)
  if rationale is not None and not rationale.strip():
    raise record.error("empty rationale (leave the key out instead)")
  if not labeled:
    if key is not None or rationale is not None:
      raise record.error("this file's first question has no answerKey, so it is read as unlabeled, but this "
                         "line has an answerKey/rationale: label every line or none")
    answer = None
  else:
    if key is None:
      raise record.error("missing key 'answerKey' (only a test file may be unlabeled, and then on every line)")
    answer = key.upper()
    if answer not in labels:
      raise record.error(f"answerKey {key!r} is not among the choice labels {labels}")
  example = Example(question=stem, answer=answer, rationale=None if rationale is None else " ".join(rationale.split()),
                    group=0, choices=tuple(choices), id=record.get("id", str, optional=True) or
                    f"{os.path.basename(record.path)}:{record.line}")
  if example.rationale is not None and CommonsenseQaTask().extract_answer(example.rationale) is not None:
    raise record.error("the rationale must not state the answer ('... the answer is X (x).'): the conclusion "
                       "is appended from answerKey")
  return example


def read_examples(path: str | os.PathLike, *, allow_unlabeled: bool = False,
                  need_rationale: bool = False) -> list[Example]:
  """Every line of a CommonsenseQA JSONL file, parsed and validated (the whole file, before any write).

  allow_unlabeled: the file may lack answerKey, decided by its first question and then required of every
  line; without it every line needs an answerKey. need_rationale: every line needs a "rationale".
  """
  records = list(read_jsonl(path))
  if not records:
    raise DataFormatError(os.fspath(path), 0, "no questions in the file")
  labeled = not allow_unlabeled or records[0].get("answerKey", str, optional=True) is not None
  examples = []
  for record in records:
    example = example_from_record(record, labeled=labeled)
    if need_rationale and example.rationale is None:
      raise record.error("missing key 'rationale' (every few-shot exemplar needs one)")
    examples.append(example)
  return examples


# ---- TFDS builder ----

@dataclasses.dataclass(eq=False)
class CommonsenseQaBuilderConfig(LocalFilesConfig):
  """Local CommonsenseQA files; `name` defaults to a fingerprint of their contents (see LocalFilesConfig)."""

  DATASET = "CommonsenseQA"
  SPLITS = ("train", "validation", "test", "few_shot")

  train_path: str = ""  # required, labeled: STaR's D
  validation_path: str = ""  # optional, labeled: held-out evaluation (the paper reports the dev set)
  test_path: str = ""  # optional, may be unlabeled (then on every line)
  few_shot_path: str = ""  # optional, labeled, with "rationale" on every line: seed / few-shot exemplars


class CommonsenseQa(LocalFilesBuilder, skip_registration=True):
  """CommonsenseQA read from local JSONL files (no download); text features come back as bytes."""

  name = "star_commonsense_qa"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "question": tfds.features.Text(),  # question.stem
            "choice_labels": tfds.features.Sequence(tfds.features.Text()),  # upper-case
            "choice_texts": tfds.features.Sequence(tfds.features.Text()),
            "answer": tfds.features.Text(),  # the answerKey label; '' in an unlabeled test split
            "rationale": tfds.features.Text(),  # '' unless the line had one (few-shot exemplars)
        }),
        disable_shuffling=True,  # keep the files' order
        homepage="https://arxiv.org/abs/1811.00937",
    )

  def _read_split(self, split: str, path: str) -> list[Example]:
    return read_examples(path, allow_unlabeled=(split == "test"), need_rationale=(split == "few_shot"))

  def _generate_examples(self, examples: list[Example]):
    for i, ex in enumerate(examples):
      yield i, {"id": ex.id, "question": ex.question, "choice_labels": [label for label, _ in ex.choices],
                "choice_texts": [text for _, text in ex.choices], "answer": ex.answer or "",
                "rationale": ex.rationale or ""}


def build_commonsense_qa(data_dir: str | os.PathLike, train_path: str | os.PathLike, *,
                         validation_path: str | os.PathLike = "", test_path: str | os.PathLike = "",
                         few_shot_path: str | os.PathLike = "") -> CommonsenseQa:
  """Parses the files and writes the dataset under `data_dir` if needed (idempotent, no network).

  Splits: train, and validation / test / few_shot when given. Read with `builder.as_data_source(split)`
  and `CommonsenseQaTask().examples(source)`.
  """
  config = CommonsenseQaBuilderConfig(train_path=os.fspath(train_path), validation_path=os.fspath(validation_path),
                                      test_path=os.fspath(test_path), few_shot_path=os.fspath(few_shot_path))
  return prepare(CommonsenseQa(data_dir=os.fspath(data_dir), config=config))
