"""Tree-of-Thoughts search over reasoning steps (Yao et al. 2023, "Tree of Thoughts", arXiv 2305.10601).

A state s = [x, z_1, ..., z_t] is the prompt x plus the steps written so far, one step per line. The thought
generator G(p_θ, s, n) samples n next steps i.i.d., z^(j) ~ p_θ(z | x, z_1..t) (the sampler stops at the
step delimiter, a newline); the state evaluator V(s) scores a state (values.py: a process reward model, the
exact oracle, or the policy's own log-probability).

BFS (the paper's Algorithm 1, ToT-BFS), with breadth b, n samples per state and T steps:

    S_0 = {x}
    for t = 1..T:
      S'_t = {[s, z] : s ∈ S_{t-1}, z ∈ G(p_θ, s, n)}                 (n children per state)
      S_t  = argmax_{S ⊂ S'_t, |S| = b} Σ_{s ∈ S} V(s)               (the b best, ties: first generated)
    for s ∈ S_T: s ← [s, answer],  answer ~ p_θ(· | s + answer_prefix)  (the `Answer:` line)
    output: the answered state of highest V

b = 1 is a step-level greedy beam ("greedy ToT": at every depth the best of n sampled steps). A child that
ends with EOS is finished: it stays a candidate (with its value) but is not expanded and gets no answer line.
With `dedup`, identical children of one problem at one depth are kept once (and valued once): the paper's
proposals are distinct lines, and n i.i.d. samples of a confident model repeat themselves.

DFS (Algorithm 2, ToT-DFS), with value threshold v_th:

    DFS(s, t):  if t = T: output [s, answer]; stop
                for s' ∈ G(p_θ, s, n) in order of decreasing V(s'):
                  if V(s') ≥ v_th: DFS(s', t + 1)        (children below v_th are pruned; returning backtracks)

run with an explicit stack per problem; it stops at the first state of depth T it reaches, or after
`max_expansions` expansions (then the deepest, best-valued state seen is answered).

Everything is batched over problems: BFS makes one sampler call per depth for all problems × frontier states ×
n (plus one for the answers) and one value call per depth for all new states; DFS makes one sampler call and
one value call per round, each round expanding the top of every unfinished problem's stack. `Budget` counts,
per problem, the tokens generated, the sampler calls, the states valued and the reward-model tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import jax
import numpy as np

from star_jax.data.tasks import Example, Task

METHODS = ("bfs", "dfs")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """ToT search settings (the `search` config section)."""

  method: str = "bfs"  # "bfs" (breadth 1 = greedy step beam) or "dfs"
  depth: int = 3  # T: steps before the answer line (Game of 24: 3)
  breadth: int = 5  # b: states kept per depth (BFS)
  samples: int = 5  # n: next steps sampled per expanded state
  step_tokens: int = 32  # generation cap per step (a step that hits it is continued by the next expansion)
  answer_tokens: int = 48  # generation cap of the answer line
  answer_prefix: str = ""  # appended to a state before its answer line is generated (e.g. "Answer:")
  temperature: float = 1.0  # step sampling temperature (> 0: n different samples)
  answer_temperature: float = 0.0  # answer line: 0 = greedy
  dedup: bool = True  # identical children of one problem at one depth are kept (and valued) once
  threshold: float = 0.5  # DFS: v_th, children valued below it are pruned
  max_expansions: int = 20  # DFS: expansions per problem before it gives up

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"search.method must be one of {METHODS}, got {self.method!r}")
    for key in ("breadth", "samples", "step_tokens", "answer_tokens", "max_expansions"):
      if getattr(self, key) < 1:
        raise ValueError(f"search.{key} must be >= 1, got {getattr(self, key)}")
    if self.depth < 0:
      raise ValueError(f"search.depth must be >= 0, got {self.depth}")
    if self.temperature < 0 or self.answer_temperature < 0:
      raise ValueError(f"search temperatures must be >= 0, got {self.temperature}, {self.answer_temperature}")


@dataclasses.dataclass(frozen=True)
class State:
  """A node of the search tree: the steps a problem's prompt has been extended with."""

  problem: int  # index of the problem in the search call
  node: int  # id in SearchResult.nodes (the root of problem p is node p)
  parent: int  # the parent's node id (-1 for a root)
  tokens: tuple[int, ...] = ()  # generated ids after the prompt (stop tokens and EOS included)
  logps: tuple[float, ...] = ()  # the sampler's log-prob of each generated token
  step_lengths: tuple[int, ...] = ()  # tokens of each step (and of the answer line, once answered)
  text: str = ""  # the generated text (tokenizer.decode(tokens): special tokens dropped)
  finished: bool = False  # the last token is EOS: not expanded further, no answer line
  answered: bool = False  # the answer line has been generated
  value: float = float("nan")  # V(s); nan until valued (roots and answered states keep their parent's value)
  duplicate_of: int = -1  # with dedup: the node this child repeats (it is not kept or valued)

  @property
  def depth(self) -> int:
    """t: the number of steps (the answer line not counted)."""
    return len(self.step_lengths) - int(self.answered)


class Continuation(NamedTuple):
  tokens: tuple[int, ...]  # generated ids, the stop sequence or EOS included
  logps: tuple[float, ...]  # log-prob of each under the sampling distribution


class StepSampler(Protocol):
  """The thought generator: `n` continuations of every prefix in ONE sampler call (policy.ModelStepSampler)."""

  tokenizer: object  # encode(text, add_bos=...) / decode(ids); eos_id

  def __call__(self, prefixes: Sequence[Sequence[int]], n: int, *, max_new_tokens: int, temperature: float,
               rng: jax.Array) -> list[Continuation]:
    """len(prefixes) * n continuations, grouped by prefix: row i * n + j is continuation j of prefix i."""


class StateValues(NamedTuple):
  values: np.ndarray  # [S] float: V(s) of each state
  model_tokens: np.ndarray  # [S] int: reward-model input tokens spent on each state (0 without a model)


ValueFn = Callable[[Sequence[Example], Sequence[State]], StateValues]  # (example of each state, states); values.py


@dataclasses.dataclass
class Budget:
  """What one problem's search cost."""

  generated_tokens: int = 0  # tokens the policy generated for it (steps + answer; stop tokens and EOS included)
  sampler_calls: int = 0  # sampler calls that had at least one of its rows
  sampled_rows: int = 0  # continuations sampled for it
  valued_states: int = 0  # states its value function scored
  reward_model_tokens: int = 0  # reward-model input tokens spent on its states
  expansions: int = 0  # states expanded (each: n sampled children)


@dataclasses.dataclass
class Outcome:
  """One problem's result: the answered states, best first (BFS: the final beam; DFS: the one it found)."""

  finals: list[State]
  budget: Budget
  reached_depth: bool  # the best final state has `depth` steps (or finished); DFS: False when it gave up

  @property
  def best(self) -> State:
    return self.finals[0]

  @property
  def text(self) -> str:
    """The output: the best final state's generated text (steps and answer line)."""
    return self.finals[0].text


@dataclasses.dataclass
class SearchResult:
  outcomes: list[Outcome]  # one per problem
  nodes: list[State]  # every node generated (the tree, duplicates included), indexed by State.node
  sampler_calls: int  # calls of the step sampler for all problems together
  value_calls: int  # calls of the value function for all problems together


class _Tree:
  """Node bookkeeping and the batched expansion shared by BFS and DFS."""

  def __init__(self, policy: StepSampler, value_fn: ValueFn, examples: Sequence[Example], prompts: Sequence[str],
               cfg: SearchConfig, rng: jax.Array):
    if len(examples) != len(prompts):
      raise ValueError(f"search: {len(examples)} examples but {len(prompts)} prompts")
    if not examples:
      raise ValueError("search: no problems")
    self.policy, self.value_fn, self.examples, self.cfg, self.rng = policy, value_fn, list(examples), cfg, rng
    tok = policy.tokenizer
    self.prompt_ids = [tuple(tok.encode(p, add_bos=True)) for p in prompts]
    self.answer_ids = tuple(tok.encode(cfg.answer_prefix)) if cfg.answer_prefix else ()
    self.nodes: list[State] = [State(problem=p, node=p, parent=-1) for p in range(len(examples))]
    self.budgets = [Budget() for _ in examples]
    self.sampler_calls = self.value_calls = 0

  def _new(self, **fields) -> State:
    state = State(node=len(self.nodes), **fields)
    self.nodes.append(state)
    return state

  def _set(self, state: State, **fields) -> State:
    state = dataclasses.replace(state, **fields)
    self.nodes[state.node] = state
    return state

  def _sample(self, states: Sequence[State], n: int, *, answer: bool) -> list[Continuation]:
    """One sampler call: n continuations of every state (answer: of state + answer_prefix, one line)."""
    cfg, suffix = self.cfg, self.answer_ids if answer else ()
    prefixes = [self.prompt_ids[s.problem] + s.tokens + suffix for s in states]
    out = self.policy(prefixes, n, max_new_tokens=cfg.answer_tokens if answer else cfg.step_tokens,
                      temperature=cfg.answer_temperature if answer else cfg.temperature,
                      rng=jax.random.fold_in(self.rng, self.sampler_calls))
    if len(out) != len(states) * n or any(not c.tokens for c in out):
      raise ValueError(f"search: the step sampler returned {len(out)} continuations for {len(states)} x {n} "
                       f"({sum(not c.tokens for c in out)} empty); it must return n non-empty ones per prefix")
    self.sampler_calls += 1
    for p in {s.problem for s in states}:
      self.budgets[p].sampler_calls += 1
    for i, cont in enumerate(out):
      budget = self.budgets[states[i // n].problem]
      budget.sampled_rows += 1
      budget.generated_tokens += len(cont.tokens)
    return out

  def expand(self, states: Sequence[State]) -> list[list[State]]:
    """Sample n children of every state (one sampler call) and value the new, distinct ones (one value call).

    Returns each state's children in sampling order; with dedup a child equal to an earlier child of the same
    problem in this call is marked `duplicate_of` and copies its value.
    """
    n, eos = self.cfg.samples, self.policy.tokenizer.eos_id
    conts = self._sample(states, n, answer=False)
    children, fresh, seen = [], [], {}
    for i, parent in enumerate(states):
      self.budgets[parent.problem].expansions += 1
      kids = []
      for cont in conts[i * n:(i + 1) * n]:
        tokens = parent.tokens + cont.tokens
        child = self._new(problem=parent.problem, parent=parent.node, tokens=tokens, logps=parent.logps + cont.logps,
                          step_lengths=parent.step_lengths + (len(cont.tokens),),
                          text=self.policy.tokenizer.decode(tokens), finished=cont.tokens[-1] == eos)
        key = (parent.problem, tokens)
        if self.cfg.dedup and key in seen:
          child = self._set(child, duplicate_of=seen[key])
        else:
          seen[key] = child.node
          fresh.append(child)
        kids.append(child)
      children.append(kids)
    if fresh:
      values = self.value_fn([self.examples[s.problem] for s in fresh], fresh)
      self.value_calls += 1
      if len(values.values) != len(fresh) or len(values.model_tokens) != len(fresh):
        raise ValueError(f"search: the value function returned {len(values.values)} values for {len(fresh)} states")
      for s, v, t in zip(fresh, values.values, values.model_tokens):
        self._set(s, value=float(v))
        self.budgets[s.problem].valued_states += 1
        self.budgets[s.problem].reward_model_tokens += int(t)
    return [[self.nodes[c.node] if c.duplicate_of < 0 else
             self._set(c, value=self.nodes[c.duplicate_of].value) for c in kids] for kids in children]

  def answer(self, states: Sequence[State]) -> list[State]:
    """Generate the answer line of every unfinished state (one sampler call); finished states are final as is."""
    todo = [s for s in states if not s.finished]
    done = {}
    if todo:
      conts = self._sample(todo, 1, answer=True)
      for s, cont in zip(todo, conts):
        tokens = s.tokens + self.answer_ids + cont.tokens
        done[s.node] = self._new(problem=s.problem, parent=s.node, tokens=tokens, logps=s.logps + (0.0,) * len(
            self.answer_ids) + cont.logps, step_lengths=s.step_lengths + (len(self.answer_ids) + len(cont.tokens),),
            text=self.policy.tokenizer.decode(tokens), finished=cont.tokens[-1] == self.policy.tokenizer.eos_id,
            answered=True, value=s.value)
    return [done.get(s.node, s) for s in states]

  def result(self, finals: Sequence[list[State]], reached: Sequence[bool]) -> SearchResult:
    outcomes = [Outcome(f, b, r) for f, b, r in zip(finals, self.budgets, reached)]
    return SearchResult(outcomes, self.nodes, self.sampler_calls, self.value_calls)


def _best_first(states: Sequence[State]) -> list[State]:
  """Sorted by value, highest first; ties (and nan, last) keep their order (stable)."""
  return sorted(states, key=lambda s: -s.value if s.value == s.value else float("inf"))


def bfs(policy: StepSampler, value_fn: ValueFn, examples: Sequence[Example], prompts: Sequence[str],
        cfg: SearchConfig, rng: jax.Array) -> SearchResult:
  """ToT-BFS (Yao et al. 2023, Algorithm 1; see the module docstring): keep the b best of the n children of
  every frontier state for T depths, then answer the final b; breadth 1 is the greedy step beam.

  One sampler call per depth for every problem's frontier (|S_{t-1}| · n rows per problem), one value call per
  depth for all new distinct states, one sampler call for the answer lines. Deterministic for a given rng.
  """
  tree = _Tree(policy, value_fn, examples, prompts, cfg, rng)
  frontiers = [[tree.nodes[p]] for p in range(len(examples))]
  for _ in range(cfg.depth):
    open_states = [s for f in frontiers for s in f if not s.finished]
    if not open_states:
      break
    children = iter(tree.expand(open_states))
    for p, frontier in enumerate(frontiers):
      candidates = [s for s in frontier if s.finished]
      for s in frontier:
        if not s.finished:
          candidates += [c for c in next(children) if c.duplicate_of < 0]
      frontiers[p] = _best_first(candidates)[:cfg.breadth]
  answered = iter(tree.answer([s for f in frontiers for s in f]))
  finals = [_best_first([next(answered) for _ in f]) for f in frontiers]
  return tree.result(finals, [f[0].finished or f[0].depth == cfg.depth for f in finals])


def dfs(policy: StepSampler, value_fn: ValueFn, examples: Sequence[Example], prompts: Sequence[str],
        cfg: SearchConfig, rng: jax.Array) -> SearchResult:
  """ToT-DFS (Yao et al. 2023, Algorithm 2; see the module docstring): expand the most promising state first,
  prune children with V < v_th, backtrack when a state has no child left; stop at the first state of depth T.

  Each round expands the top of every unfinished problem's stack: one sampler call and one value call per
  round for all problems; then one sampler call answers every problem's final state.
  """
  tree = _Tree(policy, value_fn, examples, prompts, cfg, rng)
  num = len(examples)
  stacks = [[tree.nodes[p]] for p in range(num)]
  final: list[State | None] = [None] * num
  reached = [False] * num
  best_seen = [tree.nodes[p] for p in range(num)]  # the deepest, then best-valued, state so far
  while True:
    expand = []
    for p in range(num):
      if final[p] is not None:
        continue
      if stacks[p] and (stacks[p][-1].finished or stacks[p][-1].depth >= cfg.depth):
        final[p], reached[p] = stacks[p].pop(), True
      elif not stacks[p] or tree.budgets[p].expansions >= cfg.max_expansions:
        final[p] = best_seen[p]  # gave up: every branch pruned, or the expansion budget spent
      else:
        expand.append(stacks[p].pop())
    if not expand:
      break
    for parent, kids in zip(expand, tree.expand(expand)):
      kept = [c for c in _best_first([c for c in kids if c.duplicate_of < 0]) if c.value >= cfg.threshold]
      stacks[parent.problem] += kept[::-1]  # the best on top
      for c in kids:
        old = best_seen[c.problem]
        if c.duplicate_of < 0 and (c.depth, c.value) > (old.depth, old.value if old.value == old.value else -np.inf):
          best_seen[c.problem] = c
  answered = tree.answer(final)
  return tree.result([[s] for s in answered], reached)


SEARCHES: dict[str, Callable[..., SearchResult]] = {"bfs": bfs, "dfs": dfs}


def search(policy: StepSampler, value_fn: ValueFn, examples: Sequence[Example], prompts: Sequence[str],
           cfg: SearchConfig, rng: jax.Array) -> SearchResult:
  """The search named by cfg.method ("bfs" or "dfs") over every problem at once."""
  return SEARCHES[cfg.method](policy, value_fn, examples, prompts, cfg, rng)


def summarize(task: Task, examples: Sequence[Example], result: SearchResult) -> dict[str, float]:
  """Means over problems: `correct` (task.is_correct of the output, the best final state), `correct_any` (of any
  final state: an oracle picking among the beam), `steps_correct` (every step of the output exactly correct,
  tasks with step checks), and the budget per problem (generated_tokens, sampler_calls, valued_states,
  reward_model_tokens, expansions)."""
  if len(examples) != len(result.outcomes):
    raise ValueError(f"summarize: {len(examples)} examples but {len(result.outcomes)} outcomes")
  n = len(examples)
  out = {"problems": float(n),
         "correct": sum(task.is_correct(e, o.text) for e, o in zip(examples, result.outcomes)) / n,
         "correct_any": sum(any(task.is_correct(e, s.text) for s in o.finals)
                            for e, o in zip(examples, result.outcomes)) / n}
  if task.has_step_checks:
    out["steps_correct"] = sum(bool(c) and all(c) for c in (task.step_correct(e, o.text) for e, o in
                                                             zip(examples, result.outcomes))) / n
  for key in ("generated_tokens", "sampler_calls", "valued_states", "reward_model_tokens", "expansions"):
    out[key] = sum(getattr(o.budget, key) for o in result.outcomes) / n
  return out
