"""The Game of 24's text format and its judge: numbers written and parsed exactly, the texts a sequence of moves
writes, and the checks of a model's output (`is_correct`, the step lines and their arithmetic).

Dependencies: this module imports nothing from `game24`; `game24` (the puzzle set, the exact solver, the
process labels `check_steps`, the STaR task) imports it and re-exports its public names, so callers use
`game24.is_correct`, `game24.format_number`, ... and never need this module. The only part of the judge that
needs the solver, `check_steps`'s `good` label, therefore lives in `game24`.

Texts follow the official ToT chain-of-thought format (Yao et al. 2023, arXiv 2305.10601)::

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
  * the step lines (`step_spans`, `parse_step`; checked by `game24.check_steps`): the non-empty lines before
    the first Answer line, after a `Steps:` header line if one comes first (only `Input:`/`Hint:` lines may
    precede it). A step line is `a op b = r (left: x y ...)`, spaces optional, numbers as integers, `p/q`
    (any, not only reduced: `18/9` is 2) or finite decimals (`1.5` is 3/2; `1.666` is 1666/1000, not 5/3).
    A step is `correct` iff a and b are among the numbers remaining before it (two copies when a == b),
    r = a op b exactly (b != 0 for /), and `left:` is the remaining multiset afterwards in any order. The
    numbers remaining before step k are the puzzle's for k = 0 and otherwise the `left:` list the last parsed
    step line wrote, so that one error is counted once, not again in every later step. A step is `good`
    iff it and every step before it are correct and its remaining numbers can still make 24 (`solvable`):
    the exact process label.
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
import re
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

from star_jax.data.steps import Step, split_steps

TARGET = Fraction(24)
MAX_PUZZLE_NUMBERS = 4  # `puzzle_numbers` refuses longer puzzles (the solver is exponential in the count)
MAX_OUTPUT_CHARS = 4096  # only this prefix of an output is read (a solution is ~100 characters)
MAX_ANSWER_CHARS = 256  # longer Answer expressions are malformed
MAX_STEP_CHARS = 200  # longer step lines are malformed
MAX_STEP_LINES = 6  # step lines examined (only 3 are legal)
MAX_DEPTH = 32  # parentheses and unary signs nested deeper: malformed
ANSWER_PREFIX = "Answer:"

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


# ---- the step lines ----

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
