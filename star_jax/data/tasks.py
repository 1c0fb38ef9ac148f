"""What the STaR loop needs to know about a task, as plain Python over `Example` records.

STaR (Zelikman et al. 2022, arXiv 2203.14465, Algorithm 1) only ever touches a task through text:

  prompt(x)            the question as the model sees it (ends where the rationale starts)
  hinted_prompt(x)     the rationalization prompt: the same question with the correct answer as a hint
                       (arithmetic: the answer after 'Target:'; GSM8K: '(72)' after the question;
                       CommonsenseQA: '(CORRECT)' after the right choice, as in the paper's Figure 2)
  target(x)            gold rationale + answer, ending with a newline (seed / few-shot examples)
  extract_answer(g)    the answer ŷ a generation states, canonicalised, or None
  is_correct(x, g)     the indicator 1(ŷ = y)
  trim(g)              the generation cut after its answer: what gets trained on
  stop_strings         where the sampler may stop early (an efficiency hint only: trim and extract_answer
                       give the same result whether or not the sampler stopped there)
  few_shot_prompt(x, exemplars, hint=...)   the prompt behind `len(exemplars)` solved examples

A generation g is the text after the prompt, special tokens stripped; `prompt(x) + trim(g)` is a training
example whenever is_correct(x, g). A rationalization is generated from hinted_prompt(x) but saved with
prompt(x): the hint is removed, as in the paper.

Tasks by name: `get_task("arithmetic" | "gsm8k" | "commonsense_qa")`. The GSM8K and CommonsenseQA modules
(which also hold their TFDS builders) are imported on first use.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from star_jax.data import arithmetic, verifiers


@dataclasses.dataclass(frozen=True)
class Example:
  """One question of any task. Frozen and hashable (sets of examples work, e.g. to exclude test items)."""

  question: str  # the task's question text (arithmetic: '1 5 2 + 7 0 2'; CSQA: the stem)
  answer: str | None  # gold answer, canonical (arithmetic '854', GSM8K '72', CSQA 'E'); None: unlabeled
  rationale: str | None = None  # gold rationale without the answer, when the data has one
  group: int = 0  # batches generations of similar length; accuracy is reported per group
  choices: tuple[tuple[str, str], ...] = ()  # multiple choice: (label, text) pairs, e.g. ('A', 'ignore')
  id: str = ""  # provenance, e.g. 'train.jsonl:12' or the dataset's own id

  def __post_init__(self):
    for key in ("question", "id"):
      if not isinstance(getattr(self, key), str):
        raise TypeError(f"Example.{key} must be a str, got {getattr(self, key)!r}")
    for key in ("answer", "rationale"):
      if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
        raise TypeError(f"Example.{key} must be a str or None, got {getattr(self, key)!r}")
    if isinstance(self.group, bool) or not isinstance(self.group, int):
      raise TypeError(f"Example.group must be an int, got {self.group!r}")
    choices = tuple(tuple(c) for c in self.choices)
    if not all(len(c) == 2 and all(isinstance(s, str) for s in c) for c in choices):
      raise TypeError(f"Example.choices must be (label, text) string pairs, got {self.choices!r}")
    object.__setattr__(self, "choices", choices)

  def to_json(self) -> dict:
    """A JSON-serialisable dict; `Example.from_json` inverts it exactly."""
    return {**dataclasses.asdict(self), "choices": [list(c) for c in self.choices]}

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> Example:
    return cls(**{**data, "choices": tuple(tuple(c) for c in data.get("choices", ()))})


def as_str(value: Any) -> str:
  """TFDS text features come back as bytes; everything the tasks read goes through here."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Task(abc.ABC):
  """A STaR task: prompts, hints, answer extraction and trimming over `Example`s (see module docstring)."""

  name: ClassVar[str]
  stop_strings: ClassVar[tuple[str, ...]] = ()
  shot_separator: ClassVar[str] = "\n"  # between few-shot blocks (targets end with '\n': one blank line)

  @abc.abstractmethod
  def prompt(self, example: Example) -> str:
    """The question as the model sees it; the rationale follows directly."""

  @abc.abstractmethod
  def hinted_prompt(self, example: Example) -> str:
    """The rationalization prompt: prompt(example) with the gold answer given as a hint."""

  @abc.abstractmethod
  def target(self, example: Example) -> str:
    """Gold rationale + answer after the prompt, ending with '\\n'; ValueError without a gold rationale."""

  @abc.abstractmethod
  def extract_answer(self, generation: str) -> str | None:
    """The canonical answer a generation states (comparable to Example.answer), or None. Never raises."""

  @abc.abstractmethod
  def trim(self, generation: str) -> str:
    """The generation up to and including its answer line (ending with '\\n'); unchanged if it has none."""

  @abc.abstractmethod
  def from_features(self, features: Mapping[str, Any]) -> Example:
    """The Example of one record of the task's TFDS builder (`builder.as_data_source(split)[i]`)."""

  def is_correct(self, example: Example, generation: str) -> bool:
    """The STaR indicator 1(ŷ = y): the extracted answer equals the gold answer (both canonical)."""
    gold = require_answer(example)
    predicted = self.extract_answer(generation)
    return predicted is not None and predicted == gold

  def few_shot_prompt(self, example: Example, exemplars: Sequence[Example], *, hint: bool = False) -> str:
    """Solved exemplars (prompt + target each, hinted like the question if `hint`), then the question.

    The official STaR code rationalizes with a few-shot prompt whose exemplars carry the hint too
    (prompts_answer_key.txt), so the model sees the format it should follow. No exemplars: the plain
    (hinted_)prompt.
    """
    make_prompt = self.hinted_prompt if hint else self.prompt
    blocks = [make_prompt(e) + self.target(e) for e in exemplars]
    return self.shot_separator.join([*blocks, make_prompt(example)])

  def examples(self, source) -> list[Example]:
    """Every record of a TFDS data source as an Example, in order."""
    return [self.from_features(source[i]) for i in range(len(source))]


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
  """`text` up to and including the earliest of `stop_strings` (unchanged if none occurs).

  The sampler may stop at a stop string's tokens, or may not (another tokenization of it, or none given):
  cutting the text here makes the result the same either way, since nothing before the stop depends on
  what comes after it.
  """
  ends = [i + len(s) for s in stop_strings if (i := text.find(s)) >= 0]
  return text[:min(ends)] if ends else text


def require_answer(example: Example) -> str:
  if example.answer is None:
    raise ValueError(f"example {example.id or example.question[:60]!r} has no gold answer (an unlabeled split); "
                     "it can be prompted but not judged, hinted or trained on")
  return example.answer


def require_rationale(example: Example) -> str:
  if example.rationale is None:
    raise ValueError(f"example {example.id or example.question[:60]!r} has no gold rationale; "
                     "only examples with one can be seed or few-shot examples")
  return example.rationale


# ---- arithmetic: an adaptor over arithmetic.py + verifiers.py (no behaviour change) ----

class ArithmeticTask(Task):
  """n-digit addition with a scratchpad (arithmetic.py has the format); group = number of digits.

  Every text is the one arithmetic.py / verifiers.py produce; `target` is always the true scratchpad
  (the task is deterministic, so it exists even for questions of D), and `trim` is the rule the STaR
  loop has used so far (star_data.trim_after_answer): cut after the first non-empty line after
  '</scratch>'. The sampler stops at EOS and the loop's per-length caps, so there are no stop strings.
  """

  name = "arithmetic"

  @staticmethod
  def problem(example: Example) -> arithmetic.Problem:
    p = arithmetic.parse_question(example.question)
    if p is None:
      raise ValueError(f"not an arithmetic question: {example.question!r} (expected e.g. '1 5 2 + 7 0 2')")
    return p

  @staticmethod
  def example(p: arithmetic.Problem, *, with_rationale: bool = False) -> Example:
    """The Example of a Problem; with_rationale: the scratchpad block '<scratch>...</scratch>'."""
    rationale = None
    if with_rationale:
      rationale = "\n".join([arithmetic.SCRATCH_OPEN, *arithmetic.scratchpad_lines(p), arithmetic.SCRATCH_CLOSE])
    return Example(question=arithmetic.question_text(p), answer=str(p.answer), rationale=rationale,
                   group=p.n_digits, id=f"{p.a}+{p.b}")

  def prompt(self, example: Example) -> str:
    return arithmetic.prompt_text(self.problem(example))

  def hinted_prompt(self, example: Example) -> str:
    return arithmetic.hinted_prompt_text(self.problem(example))

  def target(self, example: Example) -> str:
    return arithmetic.target_text(self.problem(example))

  def extract_answer(self, generation: str) -> str | None:
    value = verifiers.extract_answer(generation)
    return None if value is None else str(value)

  def trim(self, generation: str) -> str:
    close = generation.find(arithmetic.SCRATCH_CLOSE)
    if close < 0:
      return generation
    start = close + len(arithmetic.SCRATCH_CLOSE)
    for line in generation[start:].split("\n"):
      if line.strip():
        return generation[:start + len(line)] + "\n"
      start += len(line) + 1
    return generation

  def from_features(self, features: Mapping[str, Any]) -> Example:
    """A record of arithmetic_tfds.Arithmetic: a, b (+ target, non-empty in the rationales/test splits)."""
    p = arithmetic.Problem(int(features["a"]), int(features["b"]))
    return self.example(p, with_rationale=bool(as_str(features.get("target", ""))))


# ---- registry ----

_TASKS: dict[str, str | type[Task]] = {
    "arithmetic": ArithmeticTask,
    "gsm8k": "star_jax.data.gsm8k:Gsm8kTask",
    "commonsense_qa": "star_jax.data.commonsense_qa:CommonsenseQaTask",
}


def task_names() -> list[str]:
  return sorted(_TASKS)


def get_task(name: str) -> Task:
  """A Task by config string (config.data.task)."""
  if name not in _TASKS:
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
  cls = _TASKS[name]
  if isinstance(cls, str):
    module, attr = cls.split(":")
    cls = getattr(importlib.import_module(module), attr)
  return cls()
