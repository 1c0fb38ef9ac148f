"""The Game of 24 (Yao et al. 2023, Tree of Thoughts, arXiv 2305.10601): puzzles, an exact solver, the exact
process labels, and the STaR task (registered as `game24`).

A puzzle is 4 numbers from 1..13; combine them with + - * / (exact rationals, every number used once) to
make 24. All 1,820 multisets that can make 24 (1,362 of them) form the puzzle set; `split(seed)` divides it by
puzzle into train and a held-out test set. `solvable`/`solutions` search every move sequence exactly
(memoised on sorted tuples of exact numbers); `random_solve_rate` gives each puzzle its difficulty group.

`check_steps(puzzle, output)` checks every step line of an output (`StepCheck`): `correct` by the rules in
`game24_text`'s docstring, and `good` iff it and every step before it are correct and its remaining numbers
can still make 24 (`solvable`): the exact process label.

Dependencies: the text format and the judge (number formatting and parsing, the expression parser,
`is_correct`, step spans, the Answer line) live in `game24_text`, which imports nothing from here; this module
imports it and re-exports its public names, so `game24.is_correct`, `game24.answer_expression`,
`game24.format_number`, ... are the task's API.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from star_jax.data.game24_text import (  # noqa: F401 (re-exported: the judge's public names are game24's API)
  ANSWER_PREFIX,
  MAX_ANSWER_CHARS,
  MAX_DEPTH,
  MAX_OUTPUT_CHARS,
  MAX_PUZZLE_NUMBERS,
  MAX_STEP_CHARS,
  MAX_STEP_LINES,
  TARGET,
  Move,
  Numbers,
  _answer_span,
  _capped,
  _state,
  _step_correct,
  answer_expression,
  answer_line,
  apply_op,
  compose_expression,
  evaluate_expression,
  exact,
  format_number,
  format_numbers,
  is_correct,
  parse_number,
  parse_step,
  puzzle_numbers,
  step_line,
  step_spans,
  steps_text,
  walk_output,
)
from star_jax.data.steps import Step
from star_jax.data.tasks import Example, Task, as_str, require_rationale

NUMBER_RANGE = range(1, 14)  # puzzle numbers: 1..13
PUZZLE_SIZE = 4
NUM_PUZZLES = 1362  # multisets of 4 numbers from 1..13 that can make 24 (checked by the tests, not assumed)
TEST_SIZE = 362  # default held-out puzzles: train keeps 1,000
SPLIT_SEED = 0  # the default split (Game24Task.examples("train" | "test"))
MAX_GENERATION_CHARS = 192  # generation/eval cap (characters): the longest solver output is shorter (tested)
# The difficulty groups: the chance that a uniformly random legal mover solves the puzzle (`random_solve_rate`).
# Boundaries near the puzzle set's tertiles (rates 0.2% and 0.5%; the mean over puzzles is 0.59%).
GROUP_BOUNDS = (0.002, 0.005)
GROUP_NAMES = {0: "other", 1: "hard", 2: "medium", 3: "easy"}


# ---- legal moves ----

def _pair_moves(a, b):
  """The six moves of a pair a <= b: a + b, a * b, b - a, a - b, b / a, a / b (division by zero left out)."""
  for x, op, y in ((a, "+", b), (a, "*", b), (b, "-", a), (a, "-", b), (b, "/", a), (a, "/", b)):
    r = apply_op(x, op, y)
    if r is not None:
      yield (x, op, y, r)


def _moves(state: Numbers):
  """(move, sorted state after it) for every legal move, lazily (see `legal_moves`); the hot loop of the
  solver, so the arithmetic is inlined: int op int stays an int unless a division leaves a remainder."""
  n = len(state)
  for i in range(n):
    a = state[i]
    for j in range(i + 1, n):
      b = state[j]
      rest = state[:i] + state[i + 1:j] + state[j + 1:]
      if type(a) is int and type(b) is int:
        moves = [(a, "+", b, a + b), (a, "*", b, a * b), (b, "-", a, b - a), (a, "-", b, a - b)]
        if a:
          q, r = divmod(b, a)
          moves.append((b, "/", a, q if r == 0 else Fraction(b, a)))
        if b:
          q, r = divmod(a, b)
          moves.append((a, "/", b, q if r == 0 else Fraction(a, b)))
      else:
        moves = list(_pair_moves(a, b))
      for move in moves:
        yield move, tuple(sorted((*rest, move[3])))


def legal_moves(state: Iterable[Fraction | int]) -> list[tuple[Move, Numbers]]:
  """Every legal move of a state with the sorted state after it: for each pair of positions i < j of the
  sorted state (a <= b), a + b, a * b, b - a, a - b, b / a, a / b (no division by zero).

  A uniformly random choice among these is the random legal mover (`random_walk`, `random_solve_rate`).
  """
  return list(_moves(_state(state)))


# ---- the exact solver (memoised on sorted tuples of exact numbers) ----

@functools.lru_cache(maxsize=None)
def _solvable(state: Numbers) -> bool:
  if len(state) == 1:
    return state[0] == TARGET
  return any(_solvable(after) for _, after in _moves(state))


def solvable(numbers: Iterable[Fraction | int | str]) -> bool:
  """Whether the numbers can make 24 with + - * /, each used exactly once (exact rationals)."""
  state = _state(numbers)
  return bool(state) and _solvable(state)


@functools.lru_cache(maxsize=None)
def _winning_paths(state: Numbers) -> tuple[tuple[Move, ...], ...]:
  """Every move sequence from `state` that ends at 24 (the moves of `legal_moves`, duplicates removed)."""
  if len(state) == 1:
    return ((),) if state[0] == TARGET else ()
  out, seen = [], set()
  for move, after in _moves(state):
    if move in seen or not _solvable(after):
      continue
    seen.add(move)
    out.extend((move, *rest) for rest in _winning_paths(after))
  return tuple(out)


@functools.lru_cache(maxsize=4096)
def _solved(state: Numbers) -> tuple[tuple[str, tuple[str, ...]], ...]:
  """(expression, step lines) per distinct solution expression, in the solver's order."""
  out, seen = [], set()
  for path in _winning_paths(state):
    expression, _ = compose_expression(state, path)
    if expression not in seen:
      seen.add(expression)
      out.append((expression, tuple(steps_text(state, path))))
  return tuple(out)


def solutions(numbers: Iterable[Fraction | int | str]) -> list[str]:
  """Every distinct solution expression, e.g. '4 * (9 - (13 - 10))' (without '= 24'); [] if unsolvable."""
  return [expression for expression, _ in _solved(_state(numbers))]


def solution_outputs(numbers: Iterable[Fraction | int | str]) -> list[str]:
  """One output (step lines + Answer line, '\\n'-joined, no final newline) per distinct solution expression."""
  return ["\n".join([*steps, answer_line(expression)]) for expression, steps in _solved(_state(numbers))]


@functools.lru_cache(maxsize=None)
def _random_solve_rate(state: Numbers) -> float:
  if len(state) == 1:
    return float(state[0] == TARGET)
  total, count = 0.0, 0
  for _, after in _moves(state):
    total, count = total + _random_solve_rate(after), count + 1
  return total / count if count else 0.0


def random_solve_rate(numbers: Iterable[Fraction | int | str]) -> float:
  """P(a uniformly random legal mover reaches 24): the mean over `legal_moves` of the rate after each move."""
  return _random_solve_rate(_state(numbers))


def difficulty_group(numbers: Iterable[Fraction | int | str]) -> int:
  """1 hard / 2 medium / 3 easy by `random_solve_rate` (GROUP_BOUNDS); 0 for anything that is not a puzzle."""
  state = _state(numbers)
  if len(state) != PUZZLE_SIZE or not _solvable(state):
    return 0
  rate = _random_solve_rate(state)
  return 1 + sum(rate >= bound for bound in GROUP_BOUNDS)


# ---- the puzzle set and its split ----

@functools.lru_cache(maxsize=1)
def _puzzles() -> tuple[tuple[int, ...], ...]:
  return tuple(c for c in itertools.combinations_with_replacement(NUMBER_RANGE, PUZZLE_SIZE) if solvable(c))


def all_puzzles() -> list[tuple[int, ...]]:
  """Every multiset of 4 numbers from 1..13 that can make 24, as sorted int tuples, in lexicographic order."""
  return list(_puzzles())


def split(seed: int = SPLIT_SEED, test_size: int = TEST_SIZE) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
  """(train, test): a seeded permutation of `all_puzzles()`, the last `test_size` held out. Disjoint by
  puzzle; each list sorted. Deterministic in (seed, test_size)."""
  puzzles = _puzzles()
  if not 0 < test_size < len(puzzles):
    raise ValueError(f"game24.split: test_size must be in 1..{len(puzzles) - 1}, got {test_size}")
  order = np.random.default_rng([seed, 24]).permutation(len(puzzles)).tolist()
  return sorted(puzzles[i] for i in order[:-test_size]), sorted(puzzles[i] for i in order[-test_size:])


# ---- random walks ----

def random_walk(numbers: Iterable[Fraction], rng: np.random.Generator) -> list[Move]:
  """A uniformly random legal move (`legal_moves`) at each state until one number is left; the operands of
  + and * in a random order (both are legal text)."""
  state = _state(numbers)
  moves = []
  while len(state) > 1:
    options = list(_moves(state))
    (a, op, b, r), state = options[int(rng.integers(len(options)))]
    if op in "+*" and rng.random() < 0.5:
      a, b = b, a
    moves.append((a, op, b, r))
  return moves


# ---- the process labels: step lines ----

@dataclasses.dataclass(frozen=True)
class StepCheck:
  """One step line of an output, checked exactly (the rules: `game24_text`'s docstring and `check_steps`)."""

  index: int  # 0-based among the output's step lines
  text: str  # the line
  valid: bool  # parsed as 'a op b = r (left: ...)'
  correct: bool  # a, b among the remaining numbers; r = a op b exactly; left: = the remaining multiset after
  good: bool  # this and every earlier step correct, and the remaining numbers can still make 24
  left: Numbers | None  # the `left:` numbers as written (sorted), None if the line did not parse


def check_steps(puzzle: str | Sequence[int], output: str) -> list[StepCheck]:
  """Every step line of `output` (`step_spans`) checked against the puzzle: `correct` and `good` as in the
  module docstring. Never raises on `output`; linear in its length (and bounded by MAX_OUTPUT_CHARS)."""
  state: Sequence[Fraction] = puzzle_numbers(puzzle)
  out, ok = [], True
  for k, step in enumerate(step_spans(output)):
    parsed = parse_step(step.text)
    if parsed is None:
      ok = False
      out.append(StepCheck(k, step.text, False, False, False, None))
      continue
    move, left = parsed
    correct = _step_correct(state, move, left)
    ok = ok and correct
    out.append(StepCheck(k, step.text, True, correct, ok and _solvable(left), left))
    state = left
  return out


# ---- the STaR task ----

def puzzle_example(numbers: Iterable[Fraction | int], *, rationale: str | None = None, id: str = "") -> Example:
  """The Example of a puzzle (any state of numbers): question '4 9 10 13', answer '24', group by difficulty."""
  numbers = puzzle_numbers(tuple(numbers))
  question = format_numbers(numbers)
  return Example(question=question, answer=format_number(TARGET), rationale=rationale, group=difficulty_group(numbers),
                 id=id or f"game24:{question}")


def hint_prompt(question: str, expression: str) -> str:
  """The rationalization prompt of STaR step 3: the input, then an expression to follow ('Hint: 4 * (9 - (13 - 10))')."""
  return f"Input: {question}\nHint: {expression}\nSteps:\n"


class Game24Task(Task):
  """The Game of 24 in the ToT CoT format (`game24_text`'s docstring). Example.question is the puzzle ('4 9 10 13'),
  Example.answer is '24', Example.rationale (seed examples) is the step lines and the Answer line. Groups:
  difficulty by `random_solve_rate` (1 hard, 2 medium, 3 easy; 0 for states that are not puzzles)."""

  name = "game24"
  has_step_checks = True

  def prompt(self, example: Example) -> str:
    return f"Input: {example.question}\nSteps:\n"

  def hinted_prompt(self, example: Example) -> str:
    """The rationalization prompt: the first solver solution after the input ('Hint: 4 * (9 - (13 - 10))')."""
    found = solutions(puzzle_numbers(example.question))
    if not found:
      raise ValueError(f"game24 example {example.id or example.question!r} cannot make 24: it has no hint")
    return hint_prompt(example.question, found[0])

  def target(self, example: Example) -> str:
    return require_rationale(example) + "\n"

  def extract_answer(self, generation: str) -> str | None:
    """The exact value of the first Answer line's expression ('24', '23', '3/2'), or None. Never raises."""
    result = evaluate_expression(answer_expression(generation))
    return None if result is None else format_number(result[0])

  def is_correct(self, example: Example, generation: str) -> bool:
    return is_correct(example.question, generation)

  def trim(self, generation: str) -> str:
    text = _capped(generation)
    span = None if text is None else _answer_span(text)
    return generation if span is None else generation[:span[2]] + "\n"

  def from_features(self, features: Mapping[str, Any]) -> Example:
    """A record {'puzzle': '4 9 10 13', optional 'rationale', optional 'id'}."""
    rationale = as_str(features.get("rationale", ""))
    return puzzle_example(puzzle_numbers(as_str(features["puzzle"])), rationale=rationale or None,
                          id=as_str(features.get("id", "")))

  def examples(self, source) -> list[Example]:
    """'train' | 'test': the default split (`split(SPLIT_SEED, TEST_SIZE)`); otherwise records (`from_features`)."""
    if isinstance(source, str):
      if source not in ("train", "test"):
        raise ValueError(f"Game24Task.examples: unknown split {source!r}; use 'train', 'test' or a data source")
      return [puzzle_example(p) for p in split()[source == "test"]]
    return super().examples(source)

  def group_name(self, group: int) -> str:
    return GROUP_NAMES.get(group, f"group{group}")

  def generation_cap(self, examples: Sequence[Example], max_new_tokens: int, seq_len: int, tokenizer) -> int:
    return min(super().generation_cap(examples, max_new_tokens, seq_len, tokenizer), MAX_GENERATION_CHARS)

  def eval_cap(self, examples: Sequence[Example], max_new_tokens: int) -> int:
    del examples
    return min(max_new_tokens, MAX_GENERATION_CHARS)

  def record_key(self, example: Example) -> dict:
    return {"puzzle": example.question, "group": example.group}

  def example_from_record(self, record: Mapping[str, Any]) -> Example:
    return puzzle_example(puzzle_numbers(str(record["puzzle"])))

  def record_extra(self, generation: str) -> dict:
    return {"predicted": self.extract_answer(generation), "expression": answer_expression(generation)}

  def steps(self, generation: str) -> list[Step]:
    return step_spans(generation)

  def step_correct(self, example: Example, generation: str) -> list[bool]:
    return [c.correct for c in check_steps(example.question, generation)]

  def step_good(self, example: Example, generation: str) -> list[bool]:
    """The exact process labels (`StepCheck.good`): all steps so far correct and 24 still reachable."""
    return [c.good for c in check_steps(example.question, generation)]

  def expected_steps(self, example: Example) -> int:
    return len(puzzle_numbers(example.question)) - 1
