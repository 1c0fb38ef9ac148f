"""State evaluators V(s) for the Tree-of-Thoughts search (Yao et al. 2023, arXiv 2305.10601, §3 "evaluate").

A value function is called once per depth (per DFS round) on every new state of every problem at once:
`value_fn(examples, states) -> tot.StateValues(values [S], model_tokens [S])`, examples[i] being the problem
of states[i]. Three kinds, chosen by `ValueConfig.kind`:

  "prm"      a process reward model (Lightman et al. 2023, arXiv 2305.20050) scores every step of the state,
             P(step k good) = p_k read at the step's end token, in ONE forward of all states (fixed shape
             [rows, seq_len], rows padded to a multiple of `row_multiple`); the value aggregates them
             (prm.steps.AGGREGATIONS):  product  V = Π_k p_k;  min  V = min_k p_k;  last  V = p_t.
             Cost: the reward model's input tokens, [BOS] + prompt + steps, per state.
  "oracle"   the exact step checker: V(s) = 1 if every step so far is correct and (Game of 24) the numbers left
             can still make 24, else 0. It knows the answer, so it is an UPPER BOUND on what any learned value
             can do, not a method: report it as such. Cost: none.
  "logprob"  the policy's own log-probability of the state's generated tokens, from the sampler (no extra
             model):  sum  V = Σ_t log p_θ(y_t | x, y_<t)  (the path's log-probability);  mean  V = that / |y|;
             min  V = min_t log p_θ(y_t | ...);  last  V = Σ over the last step's tokens.
             The sampler reports log-probs of the distribution it samples from: the policy's own at
             temperature 1 without top-k / top-p. Cost: none.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
from jax.sharding import Mesh

from star_jax import sharding
from star_jax.data import game24
from star_jax.data.steps import prefix_correct_labels
from star_jax.data.tasks import Example, Task
from star_jax.models import ModelConfig
from star_jax.prm import reward as prm_reward
from star_jax.prm import steps as prm_steps
from star_jax.prm import train as prm_train
from star_jax.search.tot import State, StateValues

KINDS = ("prm", "oracle", "logprob")
LOGPROB_AGGREGATIONS = ("sum", "mean", "min", "last")


@dataclasses.dataclass(frozen=True)
class ValueConfig:
  """Which state evaluator the search uses (the `value` config section)."""

  kind: str = "prm"  # "prm", "oracle" (an upper bound: it knows the answer) or "logprob"
  aggregation: str = ""  # prm: product | min | last; logprob: sum | mean | min | last ("" = product / sum)
  reward_model_dir: str = ""  # prm: a reward-model directory (prm.train.load_reward_model)
  seq_len: int = 256  # prm: the scoring batch's width (prompt + steps must fit)
  row_multiple: int = 64  # prm: scoring rows are padded to a multiple of this (few compiled shapes)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"value.kind must be one of {KINDS}, got {self.kind!r}")
    if not self.aggregation and self.kind != "oracle":
      object.__setattr__(self, "aggregation", "sum" if self.kind == "logprob" else "product")
    allowed = LOGPROB_AGGREGATIONS if self.kind == "logprob" else tuple(prm_steps.AGGREGATIONS)
    if self.kind != "oracle" and self.aggregation not in allowed:
      raise ValueError(f"value.aggregation for kind {self.kind!r} must be one of {allowed}, got {self.aggregation!r}")
    if self.seq_len < 1 or self.row_multiple < 1:
      raise ValueError(f"value.seq_len and value.row_multiple must be >= 1, got {self.seq_len}, {self.row_multiple}")


class OracleValue:
  """UPPER BOUND, not a method: V(s) = 1.0 if `good(example, steps_text)` else 0.0 (the exact checker).

  `good` sees the state's generated text (the steps so far). Zero reward-model tokens.
  """

  name = "oracle"

  def __init__(self, good: Callable[[Example, str], bool]):
    self.good = good

  def __call__(self, examples: Sequence[Example], states: Sequence[State]) -> StateValues:
    values = np.asarray([1.0 if self.good(e, s.text) else 0.0 for e, s in zip(examples, states)], np.float32)
    return StateValues(values, np.zeros(len(states), np.int64))


def task_oracle(task: Task) -> OracleValue:
  """UPPER BOUND: the oracle of a task with exact step checks: V(s) = 1 iff s has a step and every step is
  correct (`Task.step_correct`; the last of `data.steps.prefix_correct_labels`). It does not know whether
  the remaining problem can still be solved; a task that does has its own oracle in `ORACLES`."""
  if not task.has_step_checks:
    raise ValueError(f"the {task.name} task has no exact step checks (Task.step_correct); it has no oracle value")

  def good(example: Example, text: str) -> bool:
    labels = prefix_correct_labels(task.step_correct(example, text) or [])
    return bool(labels) and labels[-1] == 1.0
  return OracleValue(good)


def game24_oracle(task: Task | None = None) -> OracleValue:
  """UPPER BOUND (Game of 24): V(s) = 1 iff the state's last step is `good` (`data.game24.check_steps`): every
  step so far correct and the numbers left can still make 24 (the exact solver). The prototype of DESIGN.md §5
  got 23.5% correct answers with it at b = 5, n = 5 against 10% for the policy's log-prob: the most a learned
  value can recover, not a result to compare methods with."""
  del task

  def good(example: Example, text: str) -> bool:
    checks = game24.check_steps(example.question, text)
    return bool(checks) and checks[-1].good
  return OracleValue(good)


ORACLES: dict[str, Callable[[Task], OracleValue]] = {  # task name -> its exact oracle (else task_oracle)
    "game24": game24_oracle,
}


def oracle_for(task: Task) -> OracleValue:
  """UPPER BOUND: the task's registered oracle (`ORACLES`), else `task_oracle(task)`."""
  return ORACLES.get(task.name, task_oracle)(task)


class LogProbValue:
  """V(s) from the sampler's token log-probs of the state (no extra model): sum | mean | min | last (above)."""

  name = "logprob"

  def __init__(self, aggregation: str = "sum"):
    if aggregation not in LOGPROB_AGGREGATIONS:
      raise ValueError(f"LogProbValue: aggregation must be one of {LOGPROB_AGGREGATIONS}, got {aggregation!r}")
    self.aggregation = aggregation

  def __call__(self, examples: Sequence[Example], states: Sequence[State]) -> StateValues:
    del examples
    return StateValues(np.asarray([self.one(s) for s in states], np.float64), np.zeros(len(states), np.int64))

  def one(self, state: State) -> float:
    logps = np.asarray(state.logps, np.float64)
    if not len(logps):
      return 0.0
    if self.aggregation == "sum":
      return float(logps.sum())
    if self.aggregation == "mean":
      return float(logps.mean())
    if self.aggregation == "min":
      return float(logps.min())
    return float(logps[len(logps) - state.step_lengths[-1]:].sum())


class PRMValue:
  """V(s) = aggregation of a process reward model's step scores, one forward per call for all states.

  Inputs are `prm.reward.scoring_example`: [BOS] + task.prompt(example) + steps, every step end (task.steps)
  read; rows go to `prm.train.score_examples` as ONE batch of ceil(S / row_multiple) · row_multiple rows of
  seq_len tokens. `calls` counts forwards, `rows` the rows scored (padding included).
  """

  name = "prm"

  def __init__(self, model_config: ModelConfig, params, tokenizer, task: Task, mesh: Mesh, *,
               aggregation: str = "product", seq_len: int = 256, row_multiple: int = 64):
    if aggregation not in prm_steps.AGGREGATIONS:
      raise ValueError(f"PRMValue: aggregation must be one of {sorted(prm_steps.AGGREGATIONS)}, got {aggregation!r}")
    self.model_config, self.params, self.tokenizer, self.task, self.mesh = model_config, params, tokenizer, task, mesh
    self.aggregation, self.seq_len, self.row_multiple = aggregation, seq_len, row_multiple
    self.calls = self.rows = 0

  @classmethod
  def load(cls, directory: str, tokenizer, task: Task, mesh: Mesh, **kwargs) -> PRMValue:
    """A PRMValue over the reward model saved in `directory` (checkpoints/ + reward_model.json)."""
    model_config, head_config, params = prm_train.load_reward_model(directory, mesh)
    if not head_config.prm_classes:
      raise ValueError(f"{directory}: the reward model has no process head (prm_classes = 0); a PRM value needs one")
    return cls(model_config, params, tokenizer, task, mesh, **kwargs)

  def inputs(self, example: Example, state: State) -> dict[str, np.ndarray]:
    """The reward model's input for a state: [BOS] + prompt + steps, every step end marked for reading."""
    return prm_reward.scoring_example(self.tokenizer, self.task, example, state.text)

  def __call__(self, examples: Sequence[Example], states: Sequence[State]) -> StateValues:
    inputs = [self.inputs(e, s) for e, s in zip(examples, states)]
    for e, x in zip(examples, inputs):
      if len(x["inputs"]) > self.seq_len:
        raise ValueError(f"PRMValue: a state of problem {e.id or e.question!r} has {len(x['inputs'])} tokens > "
                         f"value.seq_len={self.seq_len}; raise it")
    multiple = math.lcm(self.row_multiple, sharding.batch_divisor(self.mesh))
    rows = -(-len(inputs) // multiple) * multiple
    step_probs, _ = prm_train.score_examples(self.model_config, self.params, inputs, mesh=self.mesh, batch_size=rows,
                                             seq_len=self.seq_len)
    self.calls += 1
    self.rows += rows
    probs_SxK, mask_SxK = prm_steps.pad_steps(step_probs)
    values = np.asarray(prm_steps.aggregate(self.aggregation, probs_SxK, mask_SxK), np.float64)
    return StateValues(values, np.asarray([len(x["inputs"]) for x in inputs], np.int64))


def make_value(cfg: ValueConfig, *, task: Task, tokenizer=None, mesh: Mesh | None = None):
  """The value function a config names (a PRM is loaded from cfg.reward_model_dir onto `mesh`)."""
  if cfg.kind == "oracle":
    return oracle_for(task)
  if cfg.kind == "logprob":
    return LogProbValue(cfg.aggregation)
  if not cfg.reward_model_dir or tokenizer is None or mesh is None:
    raise ValueError("value.kind 'prm' needs value.reward_model_dir, a tokenizer and a mesh")
  return PRMValue.load(cfg.reward_model_dir, tokenizer, task, mesh, aggregation=cfg.aggregation, seq_len=cfg.seq_len,
                       row_multiple=cfg.row_multiple)
