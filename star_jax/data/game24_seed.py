"""The seed set of the Game of 24 base model (issue 15, "The base model"): no pretrained model is used, so the
base learns legal steps from scratch and is meant to be unable to plan.

Three kinds of Example (all in the ToT CoT format of data/game24.py, each ending with its Answer line; the
trainer adds EOS, so every example teaches the model to stop after its Answer line):

  (a) facts   `fact_examples`: single steps. A state of two numbers (drawn from the states random legal
              walks pass through: integers, fractions, negatives, in the proportions a walk meets them), one
              uniformly random legal move on it with its exact result, the `left:` bookkeeping and the Answer
              line: 'Input: 3/2 16' -> '3/2 * 16 = 24 (left: 24)' / 'Answer: (3/2) * 16 = 24'.
  (b) walks   `walk_examples`: random legal 3-step walks (`game24.random_walk`: a uniformly random legal move
              at each state) from 4-number multisets, ending with the Answer line their steps compose and the
              value they reach ('= 7' when that is where the walk ends): the model learns bookkeeping and
              composing the Answer expression, not which moves lead to 24.
  (c) solved  `solved_examples`: solver solutions (steps + Answer) for a seeded subset of at most
              `solved_fraction` (default 5%) of the train puzzles.

Honesty rules, checked by the tests: no test puzzle is ever a question in the seed set (walks start from
train puzzles and from the 458 multisets that cannot make 24); and the train puzzles whose solution appears
anywhere in the seed set are exactly the solved subset: a walk from any other train puzzle that happens to
reach 24 is drawn again, so that at most 5% of the train puzzles are given away.

Mixture (`SEED_MIXTURE`, fractions of `seed_set(size=...)`): 30% facts, 60% walks, 10% solved. The solved
examples cycle over the subset's distinct solutions (5% of the default 1,000 train puzzles: 50 puzzles with
~600 distinct solutions), so a large seed set repeats them; that is the point: the model sees few solved puzzles.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from star_jax.data import game24
from star_jax.data.tasks import Example

SEED_MIXTURE: Mapping[str, float] = {"facts": 0.3, "walks": 0.6, "solved": 0.1}
SOLVED_FRACTION = 0.05  # at most this fraction of the train puzzles appear solved in the seed set
_MAX_REDRAWS = 1000  # walks redrawn because they solved a puzzle outside the solved subset (never reached)

Puzzle = tuple[int, ...]


def solved_subset(train: Sequence[Puzzle], seed: int, fraction: float = SOLVED_FRACTION) -> list[Puzzle]:
  """floor(fraction * len(train)) train puzzles chosen by `seed`, sorted: the only ones shown solved."""
  if not 0 <= fraction <= 1:
    raise ValueError(f"game24_seed: solved_fraction must be in [0, 1], got {fraction}")
  train = sorted(set(map(tuple, train)))
  k = int(fraction * len(train))
  order = np.random.default_rng([seed, 5]).permutation(len(train)).tolist()
  return sorted(train[i] for i in order[:k])


def walk_starts(train: Iterable[Puzzle]) -> list[Puzzle]:
  """The multisets walks start from: the train puzzles and every multiset of 4 numbers from 1..13 that cannot
  make 24 (never a test puzzle)."""
  puzzles = set(game24.all_puzzles())
  unsolvable = [c for c in itertools.combinations_with_replacement(game24.NUMBER_RANGE, game24.PUZZLE_SIZE)
                if c not in puzzles]
  return sorted({*map(tuple, train), *unsolvable})


def _example(kind: str, numbers, output: str, k: int) -> Example:
  question = game24.format_numbers(numbers)
  return game24.puzzle_example(numbers, rationale=output, id=f"{kind}:{question}:{k}")


def walk_examples(train: Sequence[Puzzle], count: int, seed: int, solved: Iterable[Puzzle] = ()) -> list[Example]:
  """`count` random legal walks from uniformly chosen `walk_starts(train)`, each ending with its Answer line.

  A walk that reaches 24 from a train puzzle outside `solved` is drawn again (module docstring).
  """
  starts, train_set, solved = walk_starts(train), set(map(tuple, train)), set(map(tuple, solved))
  rng = np.random.default_rng([seed, 1])
  out = []
  for k in range(count):
    start = starts[int(rng.integers(len(starts)))]
    for _ in range(_MAX_REDRAWS):
      moves = game24.random_walk(start, rng)
      if moves[-1][3] != game24.TARGET or start not in train_set or start in solved:
        break
    else:
      raise RuntimeError(f"walk_examples: {_MAX_REDRAWS} walks from {start} all reached 24")
    out.append(_example("walk", start, game24.walk_output(start, moves), k))
  return out


def fact_examples(train: Sequence[Puzzle], count: int, seed: int) -> list[Example]:
  """`count` single-step facts: two numbers from a state at a uniformly random depth (0, 1, 2) of a random
  walk from `walk_starts(train)`, one uniformly random legal move on them, `left:` and the Answer line."""
  starts = walk_starts(train)
  rng = np.random.default_rng([seed, 2])
  out = []
  for k in range(count):
    start = starts[int(rng.integers(len(starts)))]
    state = list(game24.exact(x) for x in start)
    for a, _, b, r in game24.random_walk(start, rng)[:int(rng.integers(3))]:
      state.remove(a)
      state.remove(b)
      state.append(r)
    i, j = sorted(rng.choice(len(state), size=2, replace=False).tolist())
    pair = (state[i], state[j])
    move = game24.random_walk(pair, rng)
    out.append(_example("fact", pair, game24.walk_output(pair, move), k))
  return out


def solved_examples(puzzles: Sequence[Puzzle], count: int, seed: int) -> list[Example]:
  """`count` solver outputs for `puzzles` (each distinct solution once before any repeats), shuffled."""
  pool = [(p, output) for p in puzzles for output in game24.solution_outputs(p)]
  if count and not pool:
    raise ValueError("solved_examples: no puzzles to solve (solved_fraction * len(train) < 1?)")
  rng = np.random.default_rng([seed, 3])
  order = [i for _ in range(-(-count // max(len(pool), 1))) for i in rng.permutation(len(pool)).tolist()][:count]
  return [_example("solved", pool[i][0], pool[i][1], k) for k, i in enumerate(order)]


def seed_set(train: Sequence[Puzzle], size: int, seed: int, mixture: Mapping[str, float] = SEED_MIXTURE,
             solved_fraction: float = SOLVED_FRACTION) -> list[Example]:
  """The base model's training examples: `size` examples mixed as `mixture` (facts / walks / solved), shuffled.

  Solved examples come from `solved_subset(train, seed, solved_fraction)` only; nothing is drawn from test.
  """
  if set(mixture) != set(SEED_MIXTURE) or any(v < 0 for v in mixture.values()) or abs(sum(mixture.values()) - 1) > 1e-9:
    raise ValueError(f"game24_seed: mixture must give non-negative fractions of {sorted(SEED_MIXTURE)} summing to 1, "
                     f"got {dict(mixture)}")
  counts = {kind: int(round(mixture[kind] * size)) for kind in ("solved", "facts")}
  counts["walks"] = size - counts["solved"] - counts["facts"]
  solved = solved_subset(train, seed, solved_fraction)
  examples = [*fact_examples(train, counts["facts"], seed), *walk_examples(train, counts["walks"], seed, solved),
              *solved_examples(solved, counts["solved"], seed)]
  order = np.random.default_rng([seed, 4]).permutation(len(examples)).tolist()
  return [examples[i] for i in order]


def training_pairs(examples: Iterable[Example], hinted_fraction: float = 0.0, seed: int = 0) -> list[dict]:
  """{"prompt", "target"} per example (the records STaR trains on): `Game24Task().prompt` and `.target`.

  With `hinted_fraction` > 0, that fraction of the walks and solved examples (chosen by `seed`) get the hinted
  prompt of STaR's rationalization step instead, with the example's OWN Answer expression as the hint
  (`game24.hint_prompt`: 'Input: 3 4 9 13' / 'Hint: (13 - 9) * 3 + 4' / 'Steps:'): the base model learns to turn
  a given expression into legal steps, so that rationalization has a format to follow (as the arithmetic base
  model sees hinted scratchpads). A walk's hint is its own expression, 24 or not: no puzzle's solution is given
  away beyond the solved subset.
  """
  if not 0 <= hinted_fraction <= 1:
    raise ValueError(f"game24_seed: hinted_fraction must be in [0, 1], got {hinted_fraction}")
  task = game24.Game24Task()
  rng = np.random.default_rng([seed, 6])
  out = []
  for e in examples:
    prompt = task.prompt(e)
    hintable = e.id.startswith(("walk:", "solved:"))
    if hintable and rng.random() < hinted_fraction:
      prompt = game24.hint_prompt(e.question, game24.answer_expression(e.rationale))
    out.append({"prompt": prompt, "target": task.target(e)})
  return out
