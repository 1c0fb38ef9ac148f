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

and, for the loops that need more than the indicator (defaults in `Task`, overridden where a task knows better):

  group_name(g)                    the suffix of per-group metrics ('3digit', 'group2')
  generation_cap(xs, n, seq_len, tokenizer) / eval_cap(xs, n)   token caps for a group of questions
  record_key(x) / example_from_record(r)    how a saved generation record names its question
  steps(g)                         the reasoning steps of a generation (data/steps.py: segmentation)
  step_correct(x, g)               exact per-step correctness, or None when the task cannot check steps
  expected_steps(x)                the number of steps a correct solution has (dense-reward normaliser)

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
from star_jax.data.steps import Step, split_steps

ANSWER_MARGIN = 16  # arithmetic: generation cap beyond the longest true target of a digit length


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

  # ---- what the loops need beyond the indicator (defaults; tasks override where they know better) ----

  def group_name(self, group: int) -> str:
    """The suffix of per-group metric keys (acc_<name>, kept_generated_<name>)."""
    return f"group{group}"

  def generation_cap(self, examples: Sequence[Example], max_new_tokens: int, seq_len: int, tokenizer) -> int:
    """Tokens allowed when generating for a group of examples: max_new_tokens, lowered so that [BOS] + plain
    prompt + generation + '\\n' + [EOS] fits seq_len (a saved example has the plain prompt)."""
    longest, example = max((len(tokenizer.encode(self.prompt(e))), e.id) for e in examples)
    out = min(max_new_tokens, seq_len - longest - 3)
    if out < 1:
      raise ValueError(f"config.train.seq_len={seq_len} leaves no room for a rationale after the {longest}-token "
                       f"prompt of example {example!r}; raise it")
    return out

  def eval_cap(self, examples: Sequence[Example], max_new_tokens: int) -> int:
    """Tokens allowed when decoding held-out examples of one group greedily."""
    del examples
    return max_new_tokens

  def record_key(self, example: Example) -> dict:
    """The fields of a saved generation record that identify its question (`example_from_record` inverts)."""
    return {"group": example.group, "example": example.to_json()}

  def example_from_record(self, record: Mapping[str, Any]) -> Example:
    return Example.from_json(record["example"])

  def record_extra(self, generation: str) -> dict:
    """Fields saved beside `correct` in a generation record: the answer the generation states."""
    return {"predicted": self.extract_answer(generation)}

  def steps(self, generation: str) -> list[Step]:
    """The reasoning steps of a generation: its non-empty lines (tasks with a preamble override this)."""
    return split_steps(generation, "\n")

  has_step_checks: ClassVar[bool] = False  # whether step_correct checks steps (True: override it)

  def step_correct(self, example: Example, generation: str) -> list[bool] | None:
    """Exact correctness of each of `steps(generation)`, or None: this task cannot check steps exactly."""
    del example, generation
    return None

  def expected_steps(self, example: Example) -> int | None:
    """The number of steps a correct solution has (normalises dense step rewards), or None if unknown."""
    del example
    return None


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
  loop has used so far (star.data.trim_after_answer): cut after the first non-empty line after
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

  def group_name(self, group: int) -> str:
    return f"{group}digit"

  def generation_cap(self, examples: Sequence[Example], max_new_tokens: int, seq_len: int, tokenizer=None) -> int:
    """The longest true target + ANSWER_MARGIN, at most `max_new_tokens`, and short enough that [BOS] + plain
    prompt + generation + '\\n' + [EOS] fits seq_len (characters are tokens here)."""
    del tokenizer
    longest_target = max(len(self.target(e)) for e in examples)
    longest_prompt = max(len(self.prompt(e)) for e in examples)
    cap = min(longest_target + ANSWER_MARGIN, max_new_tokens, seq_len - longest_prompt - 2)
    if cap < longest_target:
      raise ValueError(f"generation cap {cap} (max_new_tokens={max_new_tokens}; train.seq_len={seq_len} minus the "
                       f"prompt) is shorter than a {examples[0].group}-digit target ({longest_target}); raise them")
    return cap

  def eval_cap(self, examples: Sequence[Example], max_new_tokens: int) -> int:
    """The full scratchpad's length + 17, at most max_new_tokens: runaway generations stop early."""
    return min(max(len(self.target(e)) for e in examples) + 1 + ANSWER_MARGIN, max_new_tokens)

  def record_key(self, example: Example) -> dict:
    """a, b, n_digits: the format every arithmetic workdir has."""
    p = self.problem(example)
    return {"a": p.a, "b": p.b, "n_digits": p.n_digits}

  def example_from_record(self, record: Mapping[str, Any]) -> Example:
    return self.example(arithmetic.Problem(int(record["a"]), int(record["b"])))

  def record_extra(self, generation: str) -> dict:
    del generation
    return {}  # (the arithmetic record format predates the `predicted` field)

  def steps(self, generation: str) -> list[Step]:
    """The scratchpad's lines after '<scratch>' (at most verifiers.MAX_STEP_LINES): exactly the steps of
    verifiers.check_steps."""
    return split_steps(generation, "\n", start_after=arithmetic.SCRATCH_OPEN, max_steps=verifiers.MAX_STEP_LINES)

  has_step_checks = True

  def step_correct(self, example: Example, generation: str) -> list[bool]:
    return [c.correct for c in verifiers.check_steps(self.problem(example), generation)]

  def expected_steps(self, example: Example) -> int:
    return verifiers.expected_num_steps(self.problem(example))


# ---- registry ----

_TASKS: dict[str, str | type[Task]] = {
    "arithmetic": ArithmeticTask,
    "gsm8k": "star_jax.data.gsm8k:Gsm8kTask",
    "commonsense_qa": "star_jax.data.commonsense_qa:CommonsenseQaTask",
    "game24": "star_jax.data.game24:Game24Task",
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
