"""The Game of 24 (Yao et al. 2023, Tree of Thoughts, arXiv 2305.10601): puzzles, an exact solver, the judge
and exact process labels, and the STaR task (registered as `game24`).

A puzzle is 4 numbers from 1..13; combine them with + - * / (exact rationals, every number used once) to
make 24. All 1,820 multisets that can make 24 (1,362 of them) form the puzzle set; `split(seed)` divides it by
puzzle into train and a held-out test set. Texts follow the official ToT chain-of-thought format::

    Input: 4 9 10 13
    Steps:
    13 - 10 = 3 (left: 3 4 9)
    9 - 3 = 6 (left: 4 6)
    4 * 6 = 24 (left: 24)
    Answer: 4 * (9 - (13 - 10)) = 24

What we write: integers or reduced fractions `p/q`, negatives with `-`, `left:` sorted ascending, the
operands of + and * smaller first, and the Answer expression composed from the steps with every non-leaf
operand in parentheses (`compose_expression`).

What we accept when judging (exact where the value is exact):
  * `is_correct(puzzle, output)`: the first line starting with `Answer:` (any case) holds an expression before
    its first '='; what follows the '=' is ignored, as in the official judge. The expression's integer
    literals are the puzzle's numbers as a multiset, and its value is exactly 24. Grammar: integers (no
    leading zeros), + - * /, unary +/-, parentheses, nesting at most MAX_DEPTH; anything else (`**`, `x`,
    decimals, `sqrt`) is malformed. Division by zero, no Answer line, anything malformed: False.
  * `check_steps(puzzle, output)`: the step lines are the non-empty lines before the first Answer line, after a
    `Steps:` header line if one comes first (only `Input:`/`Hint:` lines may precede it). A step line is
    `a op b = r (left: x y ...)`, spaces optional, numbers as integers, `p/q` (any, not only reduced: `18/9`
    is 2) or finite decimals (`1.5` is 3/2; `1.666` is 1666/1000, not 5/3). A step is `correct` iff a and b
    are among the numbers remaining before it (two copies when a == b), r = a op b exactly (b != 0 for /),
    and `left:` is the remaining multiset afterwards in any order. The numbers remaining before step k are
    the puzzle's for k = 0 and otherwise the `left:` list the last parsed step line wrote, so that one error
    is counted once, not again in every later step. A step is `good` iff it and every step before it are
    correct and its remaining numbers can still make 24 (`solvable`): the exact process label.
Bounded work on any input: only the first MAX_OUTPUT_CHARS characters of an output are read, the Answer
expression is at most MAX_ANSWER_CHARS, a step line at most MAX_STEP_CHARS, and at most MAX_STEP_LINES step
lines are examined (a 4th step is never correct). Never eval, never sympy on model text.

Differences from the official judge (ToT repository, tasks/game24.py: `sympy.simplify` of the last line's
expression plus a comparison of its digit strings with the puzzle's): we read the first Answer line (the
one `trim` keeps) and require the `Answer:` prefix; `**`, `^` and other sympy syntax are malformed here, so
only + - * / count, as the game's rules say.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from star_jax.data.steps import Step, split_steps
from star_jax.data.tasks import Example, Task, as_str, require_rationale

TARGET = Fraction(24)
NUMBER_RANGE = range(1, 14)  # puzzle numbers: 1..13
PUZZLE_SIZE = 4
NUM_PUZZLES = 1362  # multisets of 4 numbers from 1..13 that can make 24 (checked by the tests, not assumed)
TEST_SIZE = 362  # default held-out puzzles: train keeps 1,000
SPLIT_SEED = 0  # the default split (Game24Task.examples("train" | "test"))
MAX_PUZZLE_NUMBERS = 4  # `puzzle_numbers` refuses longer puzzles (the solver is exponential in the count)
MAX_OUTPUT_CHARS = 4096  # only this prefix of an output is read (a solution is ~100 characters)
MAX_ANSWER_CHARS = 256  # longer Answer expressions are malformed
MAX_STEP_CHARS = 200  # longer step lines are malformed
MAX_STEP_LINES = 6  # step lines examined (only 3 are legal)
MAX_DEPTH = 32  # parentheses and unary signs nested deeper: malformed
MAX_GENERATION_CHARS = 192  # generation/eval cap (characters): the longest solver output is shorter (tested)
ANSWER_PREFIX = "Answer:"
# The difficulty groups: the chance that a uniformly random legal mover solves the puzzle (`random_solve_rate`).
# Boundaries near the puzzle set's tertiles (rates 0.2% and 0.5%; the mean over puzzles is 0.59%).
GROUP_BOUNDS = (0.002, 0.005)
GROUP_NAMES = {0: "other", 1: "hard", 2: "medium", 3: "easy"}

_NUM = r"-?(?:\d{1,9}/\d{1,9}|\d{1,9}(?:\.\d{1,9})?)"  # an integer, p/q or a finite decimal (bounded digits)
_NUM_RE = re.compile(_NUM)
_STEP_RE = re.compile(rf"\s*({_NUM})\s*([-+*/])\s*({_NUM})\s*=\s*({_NUM})\s*\(\s*left:\s*((?:{_NUM}(?:\s+{_NUM})*)?)\s*\)\s*")
_ANSWER_RE = re.compile(r"^[ \t]*answer:", re.IGNORECASE | re.MULTILINE)
_HEADER_RE = re.compile(r"\s*steps:\s*", re.IGNORECASE)
_PREAMBLE_RE = re.compile(r"\s*(?:input|hint):", re.IGNORECASE)
_INT_LITERAL_RE = re.compile(r"\d+")

Numbers = tuple[Fraction, ...]
Move = tuple[Fraction, str, Fraction, Fraction]  # (a, op, b, a op b)


# ---- numbers ----

def format_number(x: Fraction | int) -> str:
  """3 -> '3', 3/2 -> '3/2', -3/2 -> '-3/2' (reduced: Fraction keeps lowest terms)."""
  x = Fraction(x)
  return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def format_numbers(numbers: Iterable[Fraction | int]) -> str:
  """The numbers sorted ascending by value, space-separated: a `left:` list or a question."""
  return " ".join(format_number(x) for x in sorted(Fraction(x) for x in numbers))


def parse_number(text: str) -> Fraction | None:
  """'3' -> 3, '18/9' -> 2, '1.5' -> 3/2, '-3/2' -> -3/2; None for anything else (incl. 'x/0', '1e5')."""
  if not _NUM_RE.fullmatch(text):
    return None
  try:
    return exact(Fraction(text))
  except ZeroDivisionError:
    return None


def puzzle_numbers(puzzle: str | Sequence[Fraction | int]) -> Numbers:
  """The numbers of a puzzle, sorted: '4 9 10 13' (or 'Input: 4 9 10 13', or a sequence of numbers).

  ValueError for anything else: puzzles come from our data, never from model text.
  """
  if isinstance(puzzle, str):
    text = puzzle.strip()
    text = text[len("Input:"):] if text.startswith("Input:") else text
    parts = text.split()
    values = [parse_number(p) for p in parts[:MAX_PUZZLE_NUMBERS + 1]]
    if any(v is None for v in values):
      raise ValueError(f"not a Game of 24 puzzle: {puzzle[:80]!r} (expected numbers such as '4 9 10 13')")
  else:
    values = [Fraction(x) for x in puzzle]
  if not 1 <= len(values) <= MAX_PUZZLE_NUMBERS:
    raise ValueError(f"a Game of 24 puzzle has 1..{MAX_PUZZLE_NUMBERS} numbers, got {str(puzzle)[:80]!r}")
  return tuple(sorted(exact(v) for v in values))


def exact(x: Fraction | int) -> Fraction | int:
  """A number in the solver's form: an int when integral, else a reduced Fraction (equal and hash-equal
  to Fraction(x), so either form works as a cache key; ints keep the solver ~3x faster)."""
  if isinstance(x, int):
    return int(x)
  x = Fraction(x)
  return x.numerator if x.denominator == 1 else x


def _state(numbers: Iterable[Fraction | int | str]) -> Numbers:
  return tuple(sorted(exact(Fraction(x)) for x in numbers))


def apply_op(a: Fraction | int, op: str, b: Fraction | int) -> Fraction | int | None:
  """a op b exactly (in `exact` form); None for division by zero or an unknown op."""
  if op == "+":
    return exact(a + b)
  if op == "-":
    return exact(a - b)
  if op == "*":
    return exact(a * b)
  if op != "/" or b == 0:
    return None
  if isinstance(a, int) and isinstance(b, int):
    q, r = divmod(a, b)
    return q if r == 0 else Fraction(a, b)
  return exact(Fraction(a) / b)


def step_line(a: Fraction, op: str, b: Fraction, result: Fraction, left: Iterable[Fraction]) -> str:
  """'13 - 10 = 3 (left: 3 4 9)'."""
  return f"{format_number(a)} {op} {format_number(b)} = {format_number(result)} (left: {format_numbers(left)})"


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


# ---- texts ----

def _operand(expression: str, is_leaf: bool) -> str:
  return expression if is_leaf else f"({expression})"


def _leaf(x: Fraction) -> str:
  """A starting number inside an expression: integers as they are, others in parentheses ('(3/2)', '(-2)')."""
  return format_number(x) if x.denominator == 1 and x >= 0 else f"({format_number(x)})"


def compose_expression(numbers: Iterable[Fraction], moves: Sequence[Move]) -> tuple[str, Fraction] | tuple[None, None]:
  """The expression a sequence of moves builds from `numbers`, and its value: '4 * (9 - (13 - 10))', 24.

  Every non-leaf operand is parenthesised. (None, None) if a move uses a number that is not there, its
  result is wrong, or more than one number is left.
  """
  pool = [(x, _leaf(x), True) for x in _state(numbers)]
  for a, op, b, r in moves:
    operands = []
    for x in (a, b):
      k = next((k for k, item in enumerate(pool) if item[0] == x), None)
      if k is None:
        return None, None
      operands.append(pool.pop(k))
    if apply_op(a, op, b) != r:
      return None, None
    (_, ea, leaf_a), (_, eb, leaf_b) = operands
    pool.append((r, f"{_operand(ea, leaf_a)} {op} {_operand(eb, leaf_b)}", False))
  if len(pool) != 1:
    return None, None
  return pool[0][1], pool[0][0]


def steps_text(numbers: Iterable[Fraction], moves: Sequence[Move]) -> list[str]:
  """The step lines of a sequence of legal moves from `numbers`."""
  state = list(_state(numbers))
  lines = []
  for a, op, b, r in moves:
    state.remove(a)
    state.remove(b)
    state.append(r)
    lines.append(step_line(a, op, b, r, state))
  return lines


def answer_line(expression: str, value: Fraction = TARGET) -> str:
  """'Answer: 4 * (9 - (13 - 10)) = 24'."""
  return f"{ANSWER_PREFIX} {expression} = {format_number(value)}"


def walk_output(numbers: Iterable[Fraction], moves: Sequence[Move]) -> str:
  """Step lines + the Answer line a complete sequence of legal moves writes (its final value, 24 or not)."""
  numbers = _state(numbers)
  expression, value = compose_expression(numbers, moves)
  if expression is None:
    raise ValueError(f"walk_output: the moves {moves} are not a complete legal walk from {format_numbers(numbers)}")
  return "\n".join([*steps_text(numbers, moves), answer_line(expression, value)])


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


# ---- the judge: the Answer line ----

def _capped(output: Any) -> str | None:
  return output[:MAX_OUTPUT_CHARS] if isinstance(output, str) else None


def _answer_span(text: str) -> tuple[int, int, int] | None:
  """(line start, expression start, line end) of the first Answer line of an already capped text."""
  m = _ANSWER_RE.search(text)
  if m is None:
    return None
  end = text.find("\n", m.end())
  return m.start(), m.end(), len(text) if end < 0 else end


def answer_expression(output: str) -> str | None:
  """The text of the first Answer line between 'Answer:' and its first '=' (stripped), or None. Never raises."""
  text = _capped(output)
  span = None if text is None else _answer_span(text)
  if span is None:
    return None
  return text[span[1]:span[2]].split("=", 1)[0].strip()


def _tokens(expression: str) -> list[str] | None:
  """Integers (no leading zeros, <= 9 digits) and the characters + - * / ( ); None on anything else."""
  out, i, n = [], 0, len(expression)
  while i < n:
    c = expression[i]
    if c in " \t\r":
      i += 1
    elif c in "+-*/()":
      out.append(c)
      i += 1
    elif "0" <= c <= "9":
      j = i
      while j < n and "0" <= expression[j] <= "9":
        j += 1
      if j - i > 9 or (expression[i] == "0" and j - i > 1):
        return None
      out.append(expression[i:j])
      i = j
    else:
      return None
  return out


class _Parser:
  """Recursive descent over `_tokens` with exact Fraction values:
     expr := term (('+' | '-') term)*;  term := unary (('*' | '/') unary)*;
     unary := ('+' | '-') unary | INT | '(' expr ')'.
  Raises _Malformed (caught by `evaluate_expression`) on a syntax error, nesting deeper than MAX_DEPTH, or
  division by zero."""

  def __init__(self, tokens: list[str]):
    self.tokens, self.pos, self.depth = tokens, 0, 0

  def peek(self) -> str | None:
    return self.tokens[self.pos] if self.pos < len(self.tokens) else None

  def take(self) -> str:
    token = self.peek()
    if token is None:
      raise _Malformed("unexpected end")
    self.pos += 1
    return token

  def expr(self) -> Fraction:
    value = self.term()
    while self.peek() in ("+", "-"):
      value = value + self.term() if self.take() == "+" else value - self.term()
    return value

  def term(self) -> Fraction:
    value = self.unary()
    while self.peek() in ("*", "/"):
      op = self.take()
      right = self.unary()
      if op == "/" and right == 0:
        raise _Malformed("division by zero")
      value = value * right if op == "*" else value / right
    return value

  def unary(self) -> Fraction:
    self.depth += 1
    if self.depth > MAX_DEPTH:
      raise _Malformed("nested too deeply")
    token = self.take()
    if token in ("+", "-"):
      value = self.unary()
      value = -value if token == "-" else value
    elif token == "(":
      value = self.expr()
      if self.take() != ")":
        raise _Malformed("expected ')'")
    elif token.isdigit():
      value = Fraction(int(token))
    else:
      raise _Malformed(f"unexpected {token!r}")
    self.depth -= 1
    return value


class _Malformed(Exception):
  pass


def evaluate_expression(expression: str) -> tuple[Fraction, list[int]] | None:
  """(exact value, integer literals in order) of an arithmetic expression (the grammar of `_Parser`), or
  None if it is malformed, too long (MAX_ANSWER_CHARS) or divides by zero. Never raises."""
  if not isinstance(expression, str) or len(expression) > MAX_ANSWER_CHARS:
    return None
  tokens = _tokens(expression)
  if not tokens:
    return None
  parser = _Parser(tokens)
  try:
    value = parser.expr()
  except _Malformed:
    return None
  if parser.pos != len(tokens):
    return None
  return value, [int(t) for t in tokens if t.isdigit()]


def is_correct(puzzle: str | Sequence[int], output: str) -> bool:
  """The outcome indicator: the first Answer line's expression uses exactly the puzzle's numbers (as a
  multiset) and equals 24 exactly. False for anything malformed; never raises on `output` (a malformed
  puzzle is a ValueError: puzzles are ours)."""
  numbers = puzzle_numbers(puzzle)
  expression = answer_expression(output)
  if expression is None:
    return False
  if len(_INT_LITERAL_RE.findall(expression[:MAX_ANSWER_CHARS + 1])) != len(numbers):
    return False  # (cheap early exit; evaluate_expression checks everything)
  result = evaluate_expression(expression)
  if result is None:
    return False
  value, literals = result
  return value == TARGET and collections.Counter(Fraction(x) for x in literals) == collections.Counter(numbers)



# ---- the process labels: step lines ----

@dataclasses.dataclass(frozen=True)
class StepCheck:
  """One step line of an output, checked exactly (see the module docstring for the rules)."""

  index: int  # 0-based among the output's step lines
  text: str  # the line
  valid: bool  # parsed as 'a op b = r (left: ...)'
  correct: bool  # a, b among the remaining numbers; r = a op b exactly; left: = the remaining multiset after
  good: bool  # this and every earlier step correct, and the remaining numbers can still make 24
  left: Numbers | None  # the `left:` numbers as written (sorted), None if the line did not parse


def step_spans(output: str) -> list[Step]:
  """The step lines of an output as `data.steps.Step`s (offsets into `output`): the non-empty lines before
  the first Answer line, after a leading `Steps:` header (see the module docstring), at most
  MAX_STEP_LINES, within the first MAX_OUTPUT_CHARS characters. Never raises."""
  text = _capped(output)
  if text is None:
    return []
  span = _answer_span(text)
  lines = split_steps(text[:span[0]] if span else text, "\n")
  first = 0
  for k, step in enumerate(lines):
    if _HEADER_RE.fullmatch(step.text):
      first = k + 1
      break
    if not _PREAMBLE_RE.match(step.text):
      break
  return lines[first:first + MAX_STEP_LINES]


def parse_step(line: str) -> tuple[Move, Numbers] | None:
  """((a, op, b, r as written), sorted left numbers) of a step line, or None if it does not parse."""
  if len(line) > MAX_STEP_CHARS:
    return None
  m = _STEP_RE.fullmatch(line)
  if m is None:
    return None
  a, b, r = (parse_number(m.group(k)) for k in (1, 3, 4))
  left = [parse_number(x) for x in m.group(5).split()]
  if a is None or b is None or r is None or any(x is None for x in left):
    return None
  return (a, m.group(2), b, r), tuple(sorted(left))


def _step_correct(state: Sequence[Fraction], move: Move, left: Numbers) -> bool:
  a, op, b, r = move
  remaining = list(state)
  for x in (a, b):
    if x not in remaining:
      return False
    remaining.remove(x)
  return apply_op(a, op, b) == r and tuple(sorted((*remaining, r))) == left


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


class Game24Task(Task):
  """The Game of 24 in the ToT CoT format (module docstring). Example.question is the puzzle ('4 9 10 13'),
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
    return f"Input: {example.question}\nHint: {found[0]}\nSteps:\n"

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

