"""The search algorithms on a toy tree with a known value function (no model: a deterministic step sampler).

The toy policy writes one digit line per step ("7\\n", "88\\n", "999\\n": the digit d repeated 1 + d mod 3
times): the n children of a prefix are the first n digits of a permutation seeded by the prefix's tokens (so
siblings differ and a prefix always has the same subtree), each token with log-prob −(d + 1)/10. After
"Answer:" it writes " <sum of the digits>\\n". A leaf's reward is R = Σ_t (t + 1)² d_t mod 17; the exact
value of a state is V*(s) = max R over the leaves below it, found by enumerating the tree.
"""

import functools
import zlib

import jax
import numpy as np
import pytest

from star_jax.data import CharTokenizer
from star_jax.data.tasks import Example
from star_jax.search import Continuation, LogProbValue, SearchConfig, State, StateValues, bfs, dfs, search

TOK = CharTokenizer()
N_PROBLEMS = 12
EXAMPLES = [Example(question=str(i), answer=None, id=f"walk{i}") for i in range(N_PROBLEMS)]
PROMPTS = [f"Walk {i}:\n" for i in range(N_PROBLEMS)]
RNG = jax.random.key(0)


def child_digits(prefix_ids, n):
  return [int(d) for d in np.random.default_rng(zlib.crc32(bytes(list(prefix_ids)))).permutation(10)[:n]]


def step_text(d):
  return str(d) * (1 + d % 3) + "\n"


class ToySampler:
  """A deterministic `StepSampler`: children are a fixed function of the prefix (see the module docstring)."""

  tokenizer = TOK

  def __init__(self):
    self.calls, self.prefixes = 0, []

  def __call__(self, prefixes, n, *, max_new_tokens, temperature, rng):
    del temperature, rng
    self.calls += 1
    self.prefixes.append(len(prefixes))
    out = []
    for prefix in prefixes:
      text = TOK.decode(prefix)
      if text.endswith("Answer:"):
        ids = TOK.encode(f" {sum(digits(text))}\n")[:max_new_tokens]
        out += [Continuation(tuple(ids), (0.0,) * len(ids))] * n
        continue
      for d in child_digits(prefix, n):
        ids = TOK.encode(step_text(d))[:max_new_tokens]
        out.append(Continuation(tuple(ids), (-(d + 1) / 10,) * len(ids)))
    return out


def digits(text):
  """The step digits of a generated text (the prompt's line and an answer line excluded)."""
  lines = text.split("\n")
  return [int(line[0]) for line in lines if line and line[0].isdigit() and set(line) == {line[0]}]


def reward(ds):
  return sum((t + 1) ** 2 * d for t, d in enumerate(ds)) % 17


@functools.lru_cache(maxsize=None)
def exact_value(prefix_ids: tuple, steps_left: int, n: int) -> int:
  """V*(s): the best leaf reward below the state whose full token ids (prompt included) are `prefix_ids`."""
  if steps_left == 0:
    return reward(digits(TOK.decode(prefix_ids)))
  return max(exact_value(prefix_ids + tuple(TOK.encode(step_text(d))), steps_left - 1, n)
             for d in child_digits(prefix_ids, n))


class ExactValue:
  """V*(s), known by enumeration (the toy's "known value function")."""

  def __init__(self, depth, n):
    self.depth, self.n, self.calls, self.sizes = depth, n, 0, []

  def __call__(self, examples, states):
    self.calls += 1
    self.sizes.append(len(states))
    values = [exact_value(tuple(TOK.encode(PROMPTS[int(e.question)], add_bos=True)) + s.tokens,
                          self.depth - s.depth, self.n) for e, s in zip(examples, states)]
    return StateValues(np.asarray(values, np.float64), np.zeros(len(states), np.int64))


class LeafValue:
  """Uninformative until the last step: 0 for inner states, the reward R at depth T."""

  def __init__(self, depth, ones_inside=False):
    self.depth, self.inside = depth, 1.0 if ones_inside else 0.0

  def __call__(self, examples, states):
    del examples
    values = [reward(digits(s.text)) if s.depth == self.depth else self.inside for s in states]
    return StateValues(np.asarray(values, np.float64), np.zeros(len(states), np.int64))


def optimum(i, depth, n):
  return exact_value(tuple(TOK.encode(PROMPTS[i], add_bos=True)), depth, n)


def config(**kw):
  return SearchConfig(**{"depth": 3, "breadth": 3, "samples": 3, "step_tokens": 8, "answer_tokens": 8,
                         "answer_prefix": "Answer:", **kw})


@pytest.mark.parametrize("breadth", [1, 3])
def test_bfs_with_exact_values_finds_the_optimum(breadth):
  cfg = config(breadth=breadth)
  sampler, value = ToySampler(), ExactValue(cfg.depth, cfg.samples)
  result = bfs(sampler, value, EXAMPLES, PROMPTS, cfg, RNG)
  for i, out in enumerate(result.outcomes):
    assert reward(digits(out.text)) == out.best.value == optimum(i, cfg.depth, cfg.samples)
    assert out.text.endswith(f"Answer: {sum(digits(out.text))}\n") and out.reached_depth
    assert len(out.finals) == breadth and out.best.depth == cfg.depth
  # one sampler call per depth + one for the answers, one value call per depth, for all problems together
  assert result.sampler_calls == sampler.calls == cfg.depth + 1 and result.value_calls == value.calls == cfg.depth
  frontier = [min(breadth, cfg.samples ** t) for t in range(cfg.depth)]  # states expanded per problem at depth t+1
  assert sampler.prefixes == [N_PROBLEMS * f for f in frontier] + [N_PROBLEMS * breadth]
  assert value.sizes == [N_PROBLEMS * f * cfg.samples for f in frontier]


def test_breadth_matters_and_keeping_every_state_finds_the_optimum_without_inner_values():
  cfg = config(samples=3)
  everything = bfs(ToySampler(), LeafValue(cfg.depth), EXAMPLES, PROMPTS, config(breadth=9), RNG)
  assert [reward(digits(o.text)) for o in everything.outcomes] == [optimum(i, 3, 3) for i in range(N_PROBLEMS)]
  # b = 1 with a myopic value (the policy's own log-prob, which prefers small digits) misses some optima
  greedy = bfs(ToySampler(), LogProbValue("sum"), EXAMPLES, PROMPTS, config(breadth=1), RNG)
  found = [reward(digits(o.text)) for o in greedy.outcomes]
  assert all(f <= optimum(i, 3, 3) for i, f in enumerate(found)) and found != [optimum(i, 3, 3) for i in range(12)]


def greedy_step_selection(sampler, value_fn, example, prompt, cfg):
  """The reference for b = 1: per problem, keep the best-valued (first on ties) of n sampled next steps."""
  tokens = tuple(TOK.encode(prompt, add_bos=True))
  generated = 0
  state = State(problem=0, node=0, parent=-1)
  for _ in range(cfg.depth):
    kids = []
    for cont in sampler([tokens + state.tokens], cfg.samples, max_new_tokens=cfg.step_tokens, temperature=1.0,
                        rng=None):
      generated += len(cont.tokens)
      kids.append(State(problem=0, node=0, parent=-1, tokens=state.tokens + cont.tokens, logps=state.logps + cont.logps,
                        step_lengths=state.step_lengths + (len(cont.tokens),), text=TOK.decode(state.tokens + cont.tokens)))
    values = value_fn([example] * len(kids), kids).values
    state = kids[int(np.argmax(values))]
  answer = sampler([tokens + state.tokens + tuple(TOK.encode(cfg.answer_prefix))], 1, max_new_tokens=cfg.answer_tokens,
                   temperature=0.0, rng=None)[0]
  return state.text + cfg.answer_prefix + TOK.decode(answer.tokens), generated + len(answer.tokens)


@pytest.mark.parametrize("value_fn", [LogProbValue("sum"), LogProbValue("min"), ExactValue(3, 3)],
                         ids=["logprob_sum", "logprob_min", "exact"])
def test_breadth_one_equals_greedy_step_selection(value_fn):
  cfg = config(breadth=1)
  result = bfs(ToySampler(), value_fn, EXAMPLES, PROMPTS, cfg, RNG)
  for example, prompt, out in zip(EXAMPLES, PROMPTS, result.outcomes):
    text, generated = greedy_step_selection(ToySampler(), value_fn, example, prompt, cfg)
    assert out.text == text and out.budget.generated_tokens == generated


def test_token_counts_are_exact():
  cfg = config(breadth=2, samples=3)
  result = bfs(ToySampler(), LogProbValue("mean"), EXAMPLES, PROMPTS, cfg, RNG)
  nodes = result.nodes
  for i, out in enumerate(result.outcomes):
    mine = [s for s in nodes if s.problem == i and s.parent >= 0]
    # each node's new tokens, summed over the tree, are what was generated; by hand: per problem the
    # depth-1 root expansion (3 children), 2 states x 3 children at depths 2 and 3, 2 answer lines
    new_tokens = [len(s.tokens) - len(nodes[s.parent].tokens) - (len(cfg.answer_prefix) if s.answered else 0)
                  for s in mine]
    steps = [len(step_text(d)) for s in mine if not s.answered for d in digits(s.text)[-1:]]
    answers = [len(f" {sum(digits(s.text))}\n") for s in mine if s.answered]
    assert out.budget.generated_tokens == sum(new_tokens) == sum(steps) + sum(answers)
    assert len(steps) == 3 + 2 * 3 + 2 * 3 and len(answers) == 2
    assert out.budget.sampler_calls == 4 and out.budget.sampled_rows == 3 + 6 + 6 + 2 and out.budget.expansions == 5
    assert out.budget.valued_states == 15 and out.budget.reward_model_tokens == 0
    for s in mine:  # tokens, text and step lengths agree
      assert TOK.decode(s.tokens) == s.text and sum(s.step_lengths) == len(s.tokens) == len(s.logps)


def test_dedup_keeps_and_values_a_repeated_child_once():
  class Repeating(ToySampler):  # every prefix's n children are the same line
    def __call__(self, prefixes, n, **kw):
      return [c for c in super().__call__(prefixes, 1, **kw) for _ in range(n)]

  value = ExactValue(2, 1)
  result = bfs(Repeating(), value, EXAMPLES[:2], PROMPTS[:2], config(depth=2, breadth=3, samples=4), RNG)
  assert value.sizes == [2, 2]  # one distinct child per problem and depth is valued
  dups = [s for s in result.nodes if s.duplicate_of >= 0]
  assert len(dups) == 2 * 2 * 3 and all(s.value == result.nodes[s.duplicate_of].value for s in dups)
  assert all(len(o.finals) == 1 for o in result.outcomes)
  assert result.outcomes[0].budget.generated_tokens == sum(
      len(s.tokens) - len(result.nodes[s.parent].tokens) for s in result.nodes if s.problem == 0 and s.parent >= 0) - len(
      "Answer:")
  again = bfs(Repeating(), ExactValue(2, 1), EXAMPLES[:2], PROMPTS[:2], config(depth=2, breadth=3, samples=4,
                                                                               dedup=False), RNG)
  assert all(len(o.finals) == 3 for o in again.outcomes)


def reference_dfs(sampler, value_fn, example, prompt, cfg):
  """Recursive ToT-DFS (Yao et al. 2023, Algorithm 2) for one problem: (leaf text or None, expansions)."""
  prompt_ids = tuple(TOK.encode(prompt, add_bos=True))
  expansions = 0

  def visit(state):
    nonlocal expansions
    if state.depth == cfg.depth:
      return state
    if expansions >= cfg.max_expansions:
      return None
    expansions += 1
    kids = [State(problem=0, node=0, parent=-1, tokens=state.tokens + c.tokens, logps=state.logps + c.logps,
                  step_lengths=state.step_lengths + (len(c.tokens),), text=TOK.decode(state.tokens + c.tokens))
            for c in sampler([prompt_ids + state.tokens], cfg.samples, max_new_tokens=cfg.step_tokens,
                             temperature=1.0, rng=None)]
    values = value_fn([example] * len(kids), kids).values
    for k in sorted(range(len(kids)), key=lambda k: -values[k]):
      if values[k] >= cfg.threshold and (found := visit(kids[k])) is not None:
        return found
    return None

  found = visit(State(problem=0, node=0, parent=-1))
  return (found.text if found else None), expansions


def test_dfs_backtracks_to_the_optimum_like_the_recursive_algorithm():
  # inner states all pass the threshold; a leaf passes only if it is optimal: DFS must backtrack to find it
  class OptimalLeaf(LeafValue):
    def __call__(self, examples, states):
      values = super().__call__(examples, states).values
      best = [optimum(int(e.question), self.depth, 3) for e in examples]
      return StateValues(np.where([s.depth == self.depth for s in states], values == best, 1.0), np.zeros(len(states)))

  cfg = config(method="dfs", samples=3, threshold=0.5, max_expansions=13)
  sampler = ToySampler()
  result = search(sampler, OptimalLeaf(3, ones_inside=True), EXAMPLES, PROMPTS, cfg, RNG)
  expansions = []
  for i, out in enumerate(result.outcomes):
    text, count = reference_dfs(ToySampler(), OptimalLeaf(3, ones_inside=True), EXAMPLES[i], PROMPTS[i], cfg)
    assert out.reached_depth and reward(digits(out.text)) == optimum(i, 3, 3)
    assert out.text == text + "Answer: " + f"{sum(digits(text))}\n" and out.budget.expansions == count
    expansions.append(count)
  assert max(expansions) > cfg.depth  # some problems needed backtracking
  # one sampler call per round (every unfinished problem's top state) and one for the answers
  assert result.sampler_calls == sampler.calls == max(expansions) + 1 == result.value_calls + 1


def test_dfs_with_exact_values_goes_straight_down_and_gives_up_when_everything_is_pruned():
  class AtLeastOptimum(ExactValue):  # 1 iff the optimum is still reachable
    def __call__(self, examples, states):
      v = super().__call__(examples, states).values
      best = [optimum(int(e.question), self.depth, self.n) for e in examples]
      return StateValues((v >= best).astype(np.float64), np.zeros(len(states)))

  cfg = config(method="dfs", samples=3)
  result = dfs(ToySampler(), AtLeastOptimum(3, 3), EXAMPLES, PROMPTS, cfg, RNG)
  assert all(o.budget.expansions == 3 and reward(digits(o.text)) == optimum(i, 3, 3)
             for i, o in enumerate(result.outcomes))
  pruned = dfs(ToySampler(), LeafValue(3), EXAMPLES[:3], PROMPTS[:3], config(method="dfs", threshold=0.5), RNG)
  for i, out in enumerate(pruned.outcomes):  # every child of the root valued 0 < v_th: the deepest state seen
    first = step_text(child_digits(TOK.encode(PROMPTS[i], add_bos=True), 3)[0])  # (the first of equal values)
    assert not out.reached_depth and out.budget.expansions == 1 and out.best.depth == 1
    assert out.text == first + f"Answer: {int(first[0])}\n"


def test_eos_finishes_a_state_it_is_kept_but_not_expanded_or_answered():
  class Stops(ToySampler):  # digit 0 ends with EOS instead of a newline
    def __call__(self, prefixes, n, **kw):
      out = super().__call__(prefixes, n, **kw)
      return [Continuation(c.tokens[:-1] + (TOK.eos_id,), c.logps) if TOK.decode(c.tokens) == "0\n" else c for c in out]

  cfg = config(breadth=30, samples=10, depth=2)
  result = bfs(Stops(), LogProbValue("sum"), EXAMPLES[:2], PROMPTS[:2], cfg, RNG)
  for out in result.outcomes:
    stopped = [s for s in out.finals if s.finished]
    assert stopped and all(not s.answered and s.tokens[-1] == TOK.eos_id and s.text.endswith("0") for s in stopped)
    assert out.finals[0].text == "0" and out.finals[0].depth == 1  # log-prob −0.2: the best, carried to the end
    assert all(s.answered for s in out.finals if not s.finished)
  assert not any(result.nodes[s.parent].finished for s in result.nodes if s.parent >= 0)


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "mcts"}, "search.method"), ({"breadth": 0}, "search.breadth"), ({"depth": -1}, "search.depth"),
    ({"temperature": -1.0}, "temperatures"), ({"max_expansions": 0}, "search.max_expansions")])
def test_search_config_validation(kwargs, message):
  with pytest.raises(ValueError, match=message):
    SearchConfig(**kwargs)


def test_search_rejects_mismatched_problems_and_bad_samplers():
  with pytest.raises(ValueError, match="2 examples but 1 prompts"):
    bfs(ToySampler(), LogProbValue(), EXAMPLES[:2], PROMPTS[:1], config(), RNG)

  class Short(ToySampler):
    def __call__(self, prefixes, n, **kw):
      return super().__call__(prefixes, n, **kw)[:-1]
  with pytest.raises(ValueError, match="returned 2 continuations for 1 x 3"):
    bfs(Short(), LogProbValue(), EXAMPLES[:1], PROMPTS[:1], config(), RNG)

  class Empty(ToySampler):
    def __call__(self, prefixes, n, **kw):
      return [Continuation((), ())] + super().__call__(prefixes, n, **kw)[1:]
  with pytest.raises(ValueError, match=r"\(1 empty\)"):
    bfs(Empty(), LogProbValue(), EXAMPLES[:1], PROMPTS[:1], config(), RNG)
