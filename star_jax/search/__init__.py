"""Tree-of-Thoughts search (Yao et al. 2023, arXiv 2305.10601): BFS / greedy step beam / DFS over reasoning steps.

  tot.py      states, the search config, budgets, BFS (breadth 1: greedy step beam) and DFS, batched over problems
  policy.py   the thought generator: the policy's sampler, n children per state in one (shared-prefix) call
  values.py   state evaluators: a process reward model, the exact oracle (an upper bound), the policy's log-prob
"""

from star_jax.search.policy import ModelStepSampler
from star_jax.search.tot import (
  METHODS,
  SEARCHES,
  Budget,
  Continuation,
  Outcome,
  SearchConfig,
  SearchResult,
  State,
  StateValues,
  StepSampler,
  ValueFn,
  bfs,
  dfs,
  search,
  summarize,
)
from star_jax.search.values import (
  KINDS,
  ORACLES,
  LogProbValue,
  OracleValue,
  PRMValue,
  ValueConfig,
  game24_oracle,
  make_value,
  oracle_for,
  task_oracle,
)

__all__ = ["KINDS", "METHODS", "ORACLES", "SEARCHES", "Budget", "Continuation", "LogProbValue", "ModelStepSampler",
           "OracleValue", "Outcome", "PRMValue", "SearchConfig", "SearchResult", "State", "StateValues", "StepSampler",
           "ValueConfig", "ValueFn", "bfs", "dfs", "game24_oracle", "make_value", "oracle_for", "search", "summarize", "task_oracle"]
