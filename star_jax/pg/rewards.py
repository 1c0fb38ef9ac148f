"""Rewards of policy-gradient STaR over any task: the outcome indicator, and dense step rewards.

STaR's reward is the indicator 1(ŷ = y) (Zelikman et al. 2022, §3.2). A task that checks its steps exactly
(`Task.step_correct`, e.g. arithmetic's scratchpad verifier) also gives a dense process reward; a learned
PRM gives one for any task (star_jax/prm/reward.py). A reward sees a task only through data.tasks.Task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from star_jax.data.tasks import Example, Task
from star_jax.prm import reward as prm_reward
from star_jax.prm import steps as prm_steps

RewardFn = Callable[[Example, str], float]  # one response
BatchRewardFn = Callable[[Sequence[Example], Sequence[str]], np.ndarray]  # a sampled batch -> rewards_B


def outcome_reward(task: Task) -> RewardFn:
  """STaR's reward: the indicator 1(ŷ = y) of the final answer (`task.is_correct`)."""
  return lambda example, text: float(task.is_correct(example, text))


def step_rewarded(task: Task, weight: float) -> RewardFn:
  """A dense process reward from the task's exact step checks, plus the outcome indicator:

    R = 1(ŷ = y) + w · Σ_k r_k,   r_k = 1/S if steps 1..k are all correct (else 0),

  S = the number of steps a correct solution has (`task.expected_steps`; prm.steps.task_step_labels: the
  ideal PRM of Lightman et al. 2023 / Math-Shepherd's hard labels, with no learned-model error). The
  per-step rewards enter the loss through their sum R: without a critic, Σ_k r_k as every token's return is
  an unbiased (higher-variance) estimate of ∇ E[Σ_k r_k], since a step's reward does not depend on later tokens.
  """
  outcome = outcome_reward(task)

  def reward(example: Example, text: str) -> float:
    return prm_reward.dense_return(outcome(example, text), prm_steps.task_step_labels(task, example, text),
                                   task.expected_steps(example), weight)
  return reward


def per_sample(fn: RewardFn) -> BatchRewardFn:
  """A batch reward that calls `fn(example, text)` on each response."""
  return lambda examples, texts: np.asarray([fn(e, t) for e, t in zip(examples, texts)], np.float32)


def default_reward(rl, task: Task, mesh, tokenizer, seq_len: int) -> BatchRewardFn:
  """The `rl` section's reward: 1(ŷ = y), + w · exact step rewards (rl.process_reward = w > 0), or + w · a
  learned PRM's step scores (rl.process_reward_model = its directory). `seq_len` is the update's row length."""
  if rl.process_reward_model:
    return prm_reward.learned_step_reward(rl.process_reward_model, rl.process_reward, mesh, task, tokenizer,
                                          batch_size=rl.batch_size, seq_len=seq_len)
  if rl.process_reward > 0:
    if not task.has_step_checks:
      raise ValueError(f"config.rl.process_reward={rl.process_reward} needs exact step checks, which the {task.name} "
                       "task does not have (Task.step_correct); give a trained PRM as config.rl.process_reward_model")
    return per_sample(step_rewarded(task, rl.process_reward))
  return per_sample(outcome_reward(task))
