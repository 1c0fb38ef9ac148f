"""The Game of 24 oracle adapter (an upper bound) and the search on game24 with a model-free policy: the
uniformly random legal mover (each child a random legal move of the numbers left; the Answer line composed
from the steps), so BFS with the exact oracle can be checked against `is_correct` and `check_steps`."""

import zlib

import jax
import numpy as np
import pytest

from star_jax.data import CharTokenizer, game24
from star_jax.data.tasks import get_task
from star_jax.search import Continuation, LogProbValue, SearchConfig, State, ValueConfig, bfs, make_value, search, summarize

TOK = CharTokenizer()
TASK = get_task("game24")
PUZZLE = game24.puzzle_example([4, 9, 10, 13])


def state(text):
  return State(problem=0, node=0, parent=-1, tokens=tuple(TOK.encode(text)), text=text)


def test_the_game24_oracle_is_the_last_steps_good_label():
  oracle = make_value(ValueConfig(kind="oracle"), task=TASK)
  texts = ["13 - 10 = 3 (left: 3 4 9)\n",  # correct, 3 4 9 still makes 24
           "4 + 9 = 13 (left: 10 13 13)\n",  # correct; good iff 10 13 13 can make 24
           "13 - 10 = 4 (left: 4 4 9)\n",  # wrong arithmetic
           "13 - 10 = 3 (left: 3 4 9)\n9 - 3 = 6 (left: 4 6)\n",
           "13 - 10 = 3 (left: 3 4 9)\n9 - 3 = 7 (left: 4 7)\n4 * 7 = 28 (left: 28)\n",
           "13 - 1", ""]
  values = oracle([PUZZLE] * len(texts), [state(t) for t in texts]).values
  want = [bool(c) and c[-1].good for c in (game24.check_steps(PUZZLE.question, t) for t in texts)]
  assert values.tolist() == [float(w) for w in want]
  assert values[0] == 1.0 and values[1] == float(game24.solvable([10, 13, 13])) and values[2] == 0.0
  assert values[3] == 1.0 and values[4:].tolist() == [0.0, 0.0, 0.0]


class RandomMover:
  """A `StepSampler` with no model: child j of a prefix is a uniformly random legal move of its numbers left
  (seeded by the prefix and j); after 'Answer:' it writes the expression the steps compose."""

  tokenizer = TOK

  def __init__(self):
    self.calls = 0

  def __call__(self, prefixes, n, *, max_new_tokens, temperature, rng):
    del temperature, rng
    self.calls += 1
    out = []
    for prefix in prefixes:
      text = TOK.decode(prefix)
      puzzle = text.split("\n")[0][len("Input: "):]
      generated = text[text.index("Steps:\n") + len("Steps:\n"):]
      checks = game24.check_steps(puzzle, generated)
      numbers = checks[-1].left if checks else game24.puzzle_numbers(puzzle)
      for j in range(n):
        if generated.endswith("Answer:"):
          parsed = [game24.parse_step(c.text) for c in checks]
          expression, value = (None, None) if None in parsed else game24.compose_expression(
              game24.puzzle_numbers(puzzle), [p[0] for p in parsed])
          line = f" {expression} = {game24.format_number(value)}\n" if expression else " ?\n"  # (DFS gave up)
        else:
          moves = game24.legal_moves(numbers)
          (a, op, b, r), left = moves[np.random.default_rng([zlib.crc32(bytes(prefix)), j]).integers(len(moves))]
          line = game24.step_line(a, op, b, r, left) + "\n"
        ids = TOK.encode(line)[:max_new_tokens]
        out.append(Continuation(tuple(ids), (0.0,) * len(ids)))
    return out


@pytest.mark.parametrize("method", ["bfs", "dfs"])
def test_search_with_the_oracle_solves_what_random_moves_do_not(method):
  puzzles = [game24.puzzle_example(p) for p in game24.split()[1][:40]]
  prompts = [TASK.prompt(e) for e in puzzles]
  cfg = SearchConfig(method=method, depth=3, breadth=5, samples=5, step_tokens=64, answer_tokens=60,
                     answer_prefix="Answer:", max_expansions=10)
  oracle = make_value(ValueConfig(kind="oracle"), task=TASK)
  tot = search(RandomMover(), oracle, puzzles, prompts, cfg, jax.random.key(0))
  cot = bfs(RandomMover(), LogProbValue(), puzzles, prompts, SearchConfig(depth=3, breadth=1, samples=1, step_tokens=64,
                                                                          answer_tokens=60, answer_prefix="Answer:"),
            jax.random.key(0))
  solved = [TASK.is_correct(e, o.text) for e, o in zip(puzzles, tot.outcomes)]
  baseline = [TASK.is_correct(e, o.text) for e, o in zip(puzzles, cot.outcomes)]
  for e, o, ok in zip(puzzles, tot.outcomes, solved):  # the oracle's value 1 at depth 3 means "reached 24"
    checks = game24.check_steps(e.question, o.text)
    assert ok == (o.best.value == 1.0 and len(checks) == 3) == (o.reached_depth and all(c.good for c in checks))
  assert sum(solved) > 2 * sum(baseline)
  summary = summarize(TASK, puzzles, tot)
  assert summary["correct"] == sum(solved) / 40 <= summary["correct_any"] and summary["problems"] == 40
  assert summary["steps_correct"] == sum(all(TASK.step_correct(e, o.text)) for e, o in zip(puzzles, tot.outcomes)) / 40
  assert summary["generated_tokens"] == sum(o.budget.generated_tokens for o in tot.outcomes) / 40
