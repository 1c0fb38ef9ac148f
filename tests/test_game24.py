"""Tests for star_jax.data.game24 (puzzles, solver, judge, exact step labels, the task) and game24_seed.

The judge is checked three ways: hand-written cases for every rule; solver outputs and random walks (property
tests); and agreement with a reference judge written here differently (Python's `ast` over Fractions, the
official ToT judge's digit-string check of the numbers) on thousands of generated right and wrong outputs.
Fuzzing checks that malformed text never raises and stays fast.
"""

import ast
import collections
import itertools
import random
import re
import string
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from star_jax.data import game24, game24_seed
from star_jax.data.game24 import Game24Task, check_steps, is_correct, solutions, solvable
from star_jax.data.steps import Step
from star_jax.data.tasks import Example, get_task

TASK = Game24Task()
PUZZLE = "4 9 10 13"
OFFICIAL = ("13 - 10 = 3 (left: 3 4 9)\n"
            "9 - 3 = 6 (left: 4 6)\n"
            "4 * 6 = 24 (left: 24)\n"
            "Answer: 4 * (9 - (13 - 10)) = 24\n")


def labels(puzzle, output):
  """(correct, good) per step line."""
  return [(c.correct, c.good) for c in check_steps(puzzle, output)]


# ---- the puzzle set and the solver ----

def test_puzzle_set_has_1362_puzzles_of_4_numbers_from_1_to_13():
  puzzles = game24.all_puzzles()
  assert len(puzzles) == 1362 == game24.NUM_PUZZLES
  assert len(set(puzzles)) == 1362 and all(len(p) == 4 and list(p) == sorted(p) and 1 <= p[0] and p[3] <= 13 for p in puzzles)
  everything = list(itertools.combinations_with_replacement(range(1, 14), 4))
  assert sum(solvable(c) for c in everything) == 1362 and len(everything) == 1820


def test_solver_known_puzzles():
  assert solvable([4, 9, 10, 13]) and "4 * (9 - (13 - 10))" in solutions([13, 10, 9, 4])
  assert not solvable([1, 1, 1, 1]) and solutions([1, 1, 1, 1]) == []
  assert solutions([3, 3, 8, 8]) == ["8 / (3 - (8 / 3))"]  # the famous one: only through 8/3
  assert solutions([1, 5, 5, 5]) == ["(5 - (1 / 5)) * 5"]
  assert solvable([Fraction(1, 3), 8]) and solvable(["1/3", 8]) and not solvable([10, 13, 13]) and solvable([24])
  assert not solvable([])


def test_split_is_disjoint_seeded_and_covers_the_puzzle_set():
  train, test = game24.split(seed=0, test_size=200)
  assert len(test) == 200 and len(train) == 1162 and not set(train) & set(test)
  assert set(train) | set(test) == set(game24.all_puzzles())
  assert game24.split(seed=0, test_size=200) == (train, test)  # deterministic
  assert game24.split(seed=1, test_size=200)[1] != test  # and seeded
  train_default, test_default = game24.split()
  assert len(test_default) == game24.TEST_SIZE >= 200 and len(train_default) == 1000
  for bad in (0, 1362):
    with pytest.raises(ValueError, match="test_size"):
      game24.split(0, bad)


def test_random_solve_rate_and_groups():
  assert game24.random_solve_rate([24]) == 1.0 and game24.random_solve_rate([1, 1, 1, 1]) == 0.0
  # two numbers: 6 moves (4 + 6, 4 * 6, 6 - 4, 4 - 6, 6 / 4, 4 / 6), one makes 24
  assert game24.random_solve_rate([4, 6]) == pytest.approx(1 / 6)
  assert game24.difficulty_group([1, 1, 1, 1]) == 0 and game24.difficulty_group([4, 6]) == 0
  groups = collections.Counter(game24.difficulty_group(p) for p in game24.all_puzzles())
  assert set(groups) == {1, 2, 3} and min(groups.values()) > 300  # near tertiles


# ---- is_correct: hand-written rules ----

@pytest.mark.parametrize("output", [
    OFFICIAL,
    "Answer: 4 * (9 - (13 - 10)) = 24",  # no steps needed, no final newline
    "Steps:\nanswer: (13 - 9) * (10 - 4) = 24\n",  # any case
    "Answer: (4 - 10) * (9 - 13) = 24",  # negative intermediates
    "Answer: 4*(9-(13-10))=24",  # spaces optional
    "Answer: 4 * (9 - (13 - 10)) = 25",  # what follows '=' is ignored (the official judge's split('=')[0])
    "Answer: 4 * (9 - (13 - 10))",  # no '='
    "Answer: -(4 * ((13 - 10) - 9))",  # unary minus (sympy accepts it too)
    "Answer: 4 * (9 - (13 - 10)) = 24\nAnswer: 1 + 1 = 2\n",  # the first Answer line counts
    "  Answer:   ((((4)))) * (9 - (13 - 10))  = 24 \n",
])
def test_is_correct_accepts(output):
  assert is_correct(PUZZLE, output)
  assert TASK.extract_answer(output) == "24"


@pytest.mark.parametrize("output", [
    "13 - 10 = 3 (left: 3 4 9)\n9 - 3 = 6 (left: 4 6)\n4 * 6 = 24 (left: 24)\n",  # missing Answer line
    "4 * (9 - (13 - 10)) = 24",  # no 'Answer:' prefix
    "Answer: 4 * (9 - (13 - 9)) = 24",  # 9 reused, 10 missing (value 4 * 5 = 20 anyway)
    "Answer: 4 * 6 = 24",  # missing numbers
    "Answer: 4 * (9 - (13 - 10)) * 1 = 24",  # an extra number
    "Answer: 4 * (9 - (13 - 10)) + 0 = 24",
    "Answer: 4 * (9 + (13 - 10)) = 24",  # right numbers, wrong value (48)
    "Answer: 4 * (9 - (13 - 10) = 24",  # unbalanced
    "Answer: 4 * 9 - 13 - 10 = 24",  # precedence matters: 36 - 23 = 13
    "Answer: 4 ** (9 - (13 - 10)) = 24",  # only + - * /
    "Answer: 4 x (9 - (13 - 10)) = 24",
    "Answer: 4.0 * (9 - (13 - 10)) = 24",  # decimals are not the puzzle's numbers
    "Answer: 04 * (9 - (13 - 10)) = 24",  # nor are leading zeros (the official judge compares digit strings)
    "Answer: 4 (9 - (13 - 10)) = 24",  # no implicit multiplication
    "Answer: = 24", "Answer:", "", "Answer: ()",
    "Answer: 4 * 9 / (13 - 13) = 24",  # division by zero (and 13 reused)
])
def test_is_correct_rejects(output):
  assert not is_correct(PUZZLE, output)


def test_is_correct_division_by_zero_and_fractions():
  assert is_correct("3 3 8 8", "Answer: 8 / (3 - 8 / 3) = 24")  # precedence: 8/3 first
  assert not is_correct("1 1 5 5", "Answer: (5 * 5) / (1 - 1) = 24")
  assert TASK.extract_answer("Answer: (5 * 5) / (1 - 1) = 24") is None
  assert is_correct("1 5 5 5", "Answer: 5 * (5 - 1 / 5) = 24")
  assert TASK.extract_answer("Answer: 5 * (5 - 1) / 5") == "4" and TASK.extract_answer("Answer: 1 / 5") == "1/5"


def test_is_correct_depth_limit_and_puzzle_errors():
  deep = "Answer: " + "(" * 40 + "4 * (9 - (13 - 10))" + ")" * 40
  assert not is_correct(PUZZLE, deep)
  shallow = "Answer: " + "(" * 20 + "4 * (9 - (13 - 10))" + ")" * 20
  assert is_correct(PUZZLE, shallow)
  assert not is_correct(PUZZLE, "Answer: " + "-" * 200 + "4 * (9 - (13 - 10))")
  assert is_correct("Input: 4 9 10 13", OFFICIAL) and is_correct((13, 10, 9, 4), OFFICIAL)
  for bad in ("4 9 ten 13", "", "1 2 3 4 5"):
    with pytest.raises(ValueError, match="puzzle"):
      is_correct(bad, OFFICIAL)
  assert not is_correct(PUZZLE, None) and not is_correct(PUZZLE, b"Answer: 4 * 6")  # not text: False


# ---- check_steps: hand-written rules ----

def test_check_steps_official_example_and_headers():
  want = [(True, True)] * 3
  assert labels(PUZZLE, OFFICIAL) == want
  assert labels(PUZZLE, "Steps:\n" + OFFICIAL) == want
  assert labels(PUZZLE, f"Input: {PUZZLE}\nSteps:\n" + OFFICIAL) == want  # a whole text: after 'Steps:'
  assert labels(PUZZLE, "\n\n" + OFFICIAL.replace("\n", "\n\n")) == want  # blank lines are not steps
  checks = check_steps(PUZZLE, OFFICIAL)
  assert [c.text for c in checks] == OFFICIAL.split("\n")[:3] and [c.index for c in checks] == [0, 1, 2]
  assert checks[0].left == (3, 4, 9) and checks[-1].left == (24,)
  assert check_steps(PUZZLE, "") == [] and check_steps(PUZZLE, "Answer: 4 * 6 = 24") == []


def test_check_steps_fractions_are_exact_and_lenient_in_form():
  fractions = ("8 / 3 = 8/3 (left: 3 8 8/3)\n3 - 8/3 = 1/3 (left: 1/3 8)\n8 / 1/3 = 24 (left: 24)\n"
               "Answer: 8 / (3 - (8 / 3)) = 24\n")
  assert labels("3 3 8 8", fractions) == [(True, True)] * 3 and is_correct("3 3 8 8", fractions)
  unreduced = "8 / 3 = 16/6 (left: 3 8 16/6)\n3 - 16/6 = 2/6 (left: 8 2/6)\n8 / 2/6 = 48/2 (left: 48/2)\n"
  assert labels("3 3 8 8", unreduced) == [(True, True)] * 3  # 18/9 is 2: the value is exact
  decimal = "3 / 2 = 1.5 (left: 1.5 4 4)\n1.5 * 4 = 6.0 (left: 4 6)\n4 * 6 = 24 (left: 24)\n"
  assert labels("2 3 4 4", decimal) == [(True, True)] * 3  # 1.5 is 3/2
  tenths = "1 / 5 = 0.2 (left: 0.2 5 5)\n5 - 0.2 = 4.8 (left: 4.8 5)\n4.8 * 5 = 24 (left: 24)\n"
  assert labels("1 5 5 5", tenths) == [(True, True)] * 3
  assert labels("1 3 5 5", "5 / 3 = 1.666 (left: 1 1.666 5)\n") == [(False, False)]  # 1.666 is not 5/3
  assert labels("1 3 5 5", "5 / 3 = 1.6666666667 (left: 1 1.6666666667 5)\n") == [(False, False)]
  assert labels("1 3 5 5", "5 / 3 = 5/3 (left: 1 5/3 5)\n")[0][0] is True


def test_check_steps_negative_intermediates():
  out = "4 - 10 = -6 (left: -6 9 13)\n9 - 13 = -4 (left: -6 -4)\n-6 * -4 = 24 (left: 24)\nAnswer: (4 - 10) * (9 - 13) = 24"
  assert labels(PUZZLE, out) == [(True, True)] * 3 and is_correct(PUZZLE, out)


def test_check_steps_division_by_zero():
  out = "1 - 1 = 0 (left: 0 5 5)\n5 / 0 = 0 (left: 0 5)\n"
  checks = check_steps("1 1 5 5", out)
  assert checks[0].correct and not checks[0].good  # legal, but 0 5 5 cannot make 24
  assert checks[1].valid and not checks[1].correct


def test_check_steps_reused_numbers_and_wrong_arithmetic():
  assert labels(PUZZLE, "4 * 4 = 16 (left: 9 10 13 16)\n")[0] == (False, False)  # only one 4
  assert labels("4 4 6 8", "4 * 4 = 16 (left: 6 8 16)\n")[0][0] is True  # two 4s: fine
  assert labels(PUZZLE, "13 - 10 = 4 (left: 4 4 9)\n")[0] == (False, False)  # wrong arithmetic
  assert labels(PUZZLE, "12 - 10 = 2 (left: 2 4 9 13)\n")[0] == (False, False)  # 12 is not there


@pytest.mark.parametrize("left,correct", [
    ("3 4 9", True), ("9 3 4", True),  # any order
    ("4 9", False), ("3 4 9 13", False), ("3 4 10", False), ("3 3 4 9", False), ("", False),
])
def test_check_steps_left_lists(left, correct):
  assert check_steps(PUZZLE, f"13 - 10 = 3 (left: {left})\n")[0].correct is correct


def test_check_steps_format_errors_are_invalid():
  for line in ("13 - 10 = 3", "13 - 10 = 3 (left 3 4 9)", "13 ^ 10 = 3 (left: 3 4 9)", "thirteen minus ten",
               "13 - 10 = 3/0 (left: 3 4 9)", "13 - 10 = 3 (left: 3 4 9) and more", "13 - 10 = 3 (left: 3 4 9" + " 1" * 200 + ")"):
    (check,) = check_steps(PUZZLE, line + "\n")
    assert not check.valid and not check.correct and not check.good and check.left is None, line
  assert check_steps(PUZZLE, "13-10=3 (left:3 4 9)\n")[0].correct  # spacing is lenient


def test_good_is_prefix_correct_and_solvable():
  wrong_first = "13 - 10 = 4 (left: 4 4 9)\n4 * 4 = 16 (left: 9 16)\n"
  # the second step is judged against the left list the first one wrote (one error counts once) but is not good
  assert labels(PUZZLE, wrong_first) == [(False, False), (True, False)]
  dead_end = "4 + 9 = 13 (left: 10 13 13)\n13 - 13 = 0 (left: 0 10)\n10 * 0 = 0 (left: 0)\n"
  assert not solvable([10, 13, 13])
  assert labels(PUZZLE, dead_end) == [(True, False)] * 3
  fourth = OFFICIAL.replace("Answer", "24 * 1 = 24 (left: 24)\nAnswer")
  assert labels(PUZZLE, fourth) == [(True, True)] * 3 + [(False, False)]  # a 4th step is never correct
  many = "garbage\n" * 100
  assert len(check_steps(PUZZLE, many)) == game24.MAX_STEP_LINES  # bounded


# ---- the reference judge (a different implementation) and agreement ----

def reference_is_correct(puzzle: tuple[int, ...], output: str) -> bool:
  """The official ToT judge's rules on the first 'answer:' line (the one `trim` keeps): the digit strings of
  the expression before '=' equal the puzzle's, and Python's `ast` of it, restricted to integer constants,
  + - * / and unary +/-, evaluates to 24 over Fractions."""
  lines = [line for line in output.split("\n") if line.strip().lower().startswith("answer:")]
  if not lines:
    return False
  expression = lines[0].strip()[len("answer:"):].split("=")[0]
  if sorted(re.findall(r"\d+", expression)) != sorted(str(n) for n in puzzle):
    return False
  try:
    tree = ast.parse(expression.strip(), mode="eval")
  except SyntaxError:
    return False

  def value(node):
    if isinstance(node, ast.Constant) and type(node.value) is int:
      return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
      v = value(node.operand)
      return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
      a, b = value(node.left), value(node.right)
      if a is None or b is None or (isinstance(node.op, ast.Div) and b == 0):
        return None
      return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) if not isinstance(node.op, ast.Div) else a / b
    return None

  return value(tree.body) == 24


def _mutations(output: str, rng: random.Random) -> list[str]:
  """Wrong (and sometimes still right) variants of an output, in the shapes a model produces."""
  body, _, answer = output.rpartition("Answer: ")
  expression = answer.split(" = ")[0]
  numbers = re.findall(r"\d+", expression)
  ops = [m.start() for m in re.finditer(r" [-+*/] ", expression)]
  out = [output, body, output.replace("Answer: ", ""), output.lower(), output + "\nAnswer: 1 + 1 = 2"]
  out.append(body + "Answer: " + re.sub(r"\d+", lambda m: str(int(m.group()) + rng.choice([0, 1])), expression, count=1) + " = 24")
  out.append(body + "Answer: " + expression + " + " + rng.choice(numbers) + " = 24")  # extra number
  out.append(body + "Answer: " + expression.replace(rng.choice(numbers), rng.choice(numbers), 1) + " = 24")  # reused
  out.append(body + "Answer: " + expression.replace("(", "").replace(")", "") + " = 24")  # lost parentheses
  out.append(body + "Answer: -(" + expression + ") = 24")
  if ops:
    i = rng.choice(ops)
    out.append(body + "Answer: " + expression[:i + 1] + rng.choice("+-*/") + expression[i + 2:] + " = 24")
  i = rng.randrange(len(expression) + 1)
  out.append(body + "Answer: " + expression[:i] + rng.choice("()+-*/ 0123456789.x") + expression[i:] + " = 24")
  out.append(body + "Answer: " + expression[:i] + expression[i + 1:] + " = 24")
  return out


def _generated_outputs(count: int, seed: int) -> list[tuple[tuple[int, ...], str]]:
  rng, nprng = random.Random(seed), np.random.default_rng(seed)
  puzzles = game24.all_puzzles()
  everything = list(itertools.combinations_with_replacement(range(1, 14), 4))
  out = []
  while len(out) < count:
    if rng.random() < 0.5:
      p = rng.choice(puzzles)
      base = rng.choice(game24.solution_outputs(p))
    else:
      p = rng.choice(everything)
      base = game24.walk_output(p, game24.random_walk(p, nprng))
    out.extend((p, text) for text in _mutations(base, rng))
  return out[:count]


def test_agrees_with_the_reference_judge_on_generated_outputs():
  outputs = _generated_outputs(3000, seed=0)
  verdicts = [(is_correct(p, o), reference_is_correct(p, o)) for p, o in outputs]
  disagreements = [(p, o) for (p, o), (a, b) in zip(outputs, verdicts) if a != b]
  assert not disagreements, disagreements[:5]
  right = sum(a for a, _ in verdicts)
  assert 300 < right < 2700  # both right and wrong outputs were tested


# ---- property tests ----

@settings(max_examples=60, deadline=None)
@given(st.sampled_from(game24.all_puzzles()), st.integers(0, 10**6))
def test_every_solver_solution_is_correct_and_all_its_steps_good(puzzle, pick):
  outputs = game24.solution_outputs(puzzle)
  assert outputs and len(outputs) == len(solutions(puzzle))
  for output in outputs[pick % len(outputs):][:20]:
    assert is_correct(puzzle, output), output
    checks = check_steps(puzzle, output)
    assert len(checks) == 3 and all(c.correct and c.good for c in checks), output
    assert TASK.trim(output) == output + "\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 13), min_size=4, max_size=4), st.integers(0, 2**32 - 1))
def test_random_walks_are_correct_and_good_iff_still_solvable(numbers, seed):
  moves = game24.random_walk(numbers, np.random.default_rng(seed))
  output = game24.walk_output(numbers, moves)
  checks = check_steps(" ".join(map(str, numbers)), output)
  assert [c.correct for c in checks] == [True] * 3
  assert [c.good for c in checks] == [solvable(c.left) for c in checks]
  assert is_correct(numbers, output) == (moves[-1][3] == 24) == checks[-1].good
  assert TASK.extract_answer(output) == game24.format_number(moves[-1][3])


# ---- fuzz: never raises, bounded time ----

def _fuzz_inputs(count: int, seed: int) -> list[str]:
  rng = random.Random(seed)
  alphabet = string.printable + "×÷−"
  pieces = ["Answer:", "Steps:", "(left:", ")", " = ", "/", "-", "\n", "((", "24", "1/0", "1.5", "=", "Input:"]
  out = []
  for k in range(count):
    if k % 3 == 0:
      out.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(200))))
    elif k % 3 == 1:
      out.append("".join(rng.choice(pieces + list("0123456789 ")) for _ in range(rng.randrange(80))))
    else:
      text = list(OFFICIAL)
      for _ in range(rng.randrange(1, 6)):
        i = rng.randrange(len(text) + 1)
        text[i:i + rng.randrange(3)] = rng.choice(pieces + list("0123456789 -+*/()"))
      out.append("".join(text))
  return out


def _fuzz(count: int, seed: int, seconds_per_1000: float):
  inputs = _fuzz_inputs(count, seed)
  start = time.perf_counter()
  for text in inputs:
    assert isinstance(is_correct(PUZZLE, text), bool)
    checks = check_steps(PUZZLE, text)
    assert len(checks) <= game24.MAX_STEP_LINES and all(c.good <= c.correct <= c.valid for c in checks)
    assert len(TASK.steps(text)) == len(checks)
    TASK.extract_answer(text), TASK.trim(text), TASK.record_extra(text)
  elapsed = time.perf_counter() - start
  assert elapsed < seconds_per_1000 * count / 1000, elapsed


def test_fuzz_2000_inputs_never_raise():
  _fuzz(2000, seed=0, seconds_per_1000=2.0)


@pytest.mark.slow
def test_fuzz_20000_inputs_never_raise():
  _fuzz(20000, seed=1, seconds_per_1000=2.0)


def test_a_1mb_input_is_judged_quickly():
  huge = ["(" * 1_000_000, "1" * 1_000_000, "Answer: " + "(" * 1_000_000, "13 - 10 = 3 (left: " + "3 " * 500_000 + ")",
          "\n" * 1_000_000, OFFICIAL + "x" * 1_000_000, "x" * 1_000_000 + OFFICIAL, "Answer: " + "-" * 1_000_000 + "1"]
  start = time.perf_counter()
  for text in huge:
    assert is_correct(PUZZLE, text) == text.startswith(OFFICIAL)
    assert len(check_steps(PUZZLE, text)) <= game24.MAX_STEP_LINES
    TASK.trim(text), TASK.extract_answer(text), TASK.steps(text)
  assert time.perf_counter() - start < 2.0


# ---- the task ----

def test_task_texts_and_hint():
  e = game24.puzzle_example((13, 10, 9, 4))
  assert e == Example(question=PUZZLE, answer="24", group=e.group, id="game24:4 9 10 13") and e.group in (1, 2, 3)
  assert TASK.prompt(e) == "Input: 4 9 10 13\nSteps:\n"
  hinted = TASK.hinted_prompt(e)
  hint = hinted.split("\n")[1]
  assert hinted == f"Input: 4 9 10 13\n{hint}\nSteps:\n" and hint.startswith("Hint: ")
  assert is_correct(PUZZLE, "Answer: " + hint[len("Hint: "):])  # the hint is a solution
  with pytest.raises(ValueError, match="no hint"):
    TASK.hinted_prompt(game24.puzzle_example((1, 1, 1, 1)))
  with pytest.raises(ValueError, match="rationale"):
    TASK.target(e)
  solved = game24.puzzle_example((4, 9, 10, 13), rationale=OFFICIAL.rstrip("\n"))
  assert TASK.target(solved) == OFFICIAL and TASK.is_correct(solved, TASK.target(solved))
  assert TASK.few_shot_prompt(e, [solved]) == "Input: 4 9 10 13\nSteps:\n" + OFFICIAL + "\nInput: 4 9 10 13\nSteps:\n"


def test_task_trim_extract_and_records():
  assert TASK.trim(OFFICIAL + "Input: 1 2 3 4\n") == OFFICIAL and TASK.trim(OFFICIAL.rstrip("\n")) == OFFICIAL
  assert TASK.trim("13 - 10 = 3 (left: 3 4 9)\n") == "13 - 10 = 3 (left: 3 4 9)\n"  # no Answer line: unchanged
  assert TASK.extract_answer("no answer") is None and TASK.extract_answer("Answer: 2 * 3 = 24") == "6"
  e = game24.puzzle_example((4, 9, 10, 13))
  key = TASK.record_key(e)
  assert key == {"puzzle": PUZZLE, "group": e.group} and TASK.example_from_record(key) == e
  assert TASK.record_extra(OFFICIAL) == {"predicted": "24", "expression": "4 * (9 - (13 - 10))"}
  assert TASK.from_features({"puzzle": b"4 9 10 13", "rationale": b""}) == e


def test_task_steps_labels_and_caps():
  e = game24.puzzle_example((4, 9, 10, 13))
  text = "Steps:\n" + OFFICIAL.replace("9 - 3 = 6", "9 - 3 = 7")
  steps = TASK.steps(text)
  assert [s.text for s in steps] == [c.text for c in check_steps(PUZZLE, text)]
  assert all(isinstance(s, Step) and text[s.start:s.end] == s.text for s in steps)
  assert TASK.step_correct(e, text) == [True, False, True]  # the 3rd step is judged against 'left: 4 6'
  assert TASK.step_correct(e, OFFICIAL) == [True, True, True] and TASK.step_good(e, text) == [True, False, False]
  assert TASK.expected_steps(e) == 3 and TASK.has_step_checks
  assert TASK.group_name(1) == "hard" and TASK.group_name(3) == "easy" and TASK.group_name(7) == "group7"
  longest = max(len(o) for p in game24.all_puzzles()[::10] for o in game24.solution_outputs(p))
  assert longest + 1 < game24.MAX_GENERATION_CHARS == TASK.eval_cap([e], 10_000) and TASK.eval_cap([e], 50) == 50


def test_task_examples_and_registry():
  assert type(get_task("game24")) is Game24Task and get_task("game24").name == "game24"
  train, test = TASK.examples("train"), TASK.examples("test")
  assert len(train) == 1000 and len(test) == game24.TEST_SIZE
  assert not {e.question for e in train} & {e.question for e in test}
  assert {e.question for e in test} == {game24.format_numbers(p) for p in game24.split()[1]}
  with pytest.raises(ValueError, match="unknown split"):
    TASK.examples("validation")


# ---- the seed set ----

def test_seed_set_mixture_honesty_and_format():
  train, test = game24.split(seed=0, test_size=300)
  examples = game24_seed.seed_set(train, size=1000, seed=3)
  assert game24_seed.seed_set(train, size=1000, seed=3) == examples  # deterministic
  kinds = collections.Counter(e.id.split(":")[0] for e in examples)
  assert kinds == {"fact": 300, "walk": 600, "solved": 100}
  questions = {e.question for e in examples}
  assert not questions & {game24.format_numbers(p) for p in test}  # no test puzzle, ever
  solved_subset = game24_seed.solved_subset(train, seed=3)
  assert len(solved_subset) == int(0.05 * len(train)) and set(solved_subset) <= set(train)
  reached = {e.question for e in examples if e.rationale.endswith("= 24") and len(e.question.split()) == 4}
  assert reached <= {game24.format_numbers(p) for p in solved_subset}  # <= 5% of train shown solved
  for e in examples:
    target = TASK.target(e)
    lines = target.rstrip("\n").split("\n")
    assert target.endswith("\n") and lines[-1].startswith("Answer: ") and len(lines) == len(e.question.split())
    checks = check_steps(e.question, target)
    assert all(c.correct for c in checks) and len(checks) == len(lines) - 1, target
    final = checks[-1].left[0]
    assert TASK.extract_answer(target) == game24.format_number(final) and lines[-1].endswith(f"= {game24.format_number(final)}")
  facts = [e for e in examples if e.id.startswith("fact")]
  assert any("/" in e.question for e in facts) and any("-" in e.question for e in facts)  # fractions, negatives
  assert game24_seed.training_pairs(examples[:1]) == [{"prompt": TASK.prompt(examples[0]), "target": TASK.target(examples[0])}]
  with pytest.raises(ValueError, match="mixture"):
    game24_seed.seed_set(train, 10, 0, mixture={"facts": 1.0})
