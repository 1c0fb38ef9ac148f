"""Rewards of policy-gradient STaR over any task: the outcome indicator, and dense step rewards.

STaR's reward is the indicator 1(ŷ = y) (Zelikman et al. 2022, §3.2). A task that checks its steps exactly
(`Task.step_correct`, e.g. arithmetic's scratchpad verifier) also gives a dense process reward; a learned
PRM gives one for any task (star_jax/prm/reward.py). A reward sees a task only through data.tasks.Task.

With rl.credit = "sequence" a batch reward returns rewards_B, one return per response. With per-step credit
(rl.credit = "reward_to_go" | "gae", pg/credit.py) it returns one `StepScores` per response instead (the
outcome, and each step's reward with the character offset where the step closes); `step_fields` turns
them into the per-token arrays of the update step (r_k at the token that closes step k).

rl.process_reward_model names one of two kinds of learned PRM directory, told apart by their spec file:
a hidden-state reward model (`reward_model.json` + checkpoints/, prm/train.py) or a log-prob PRM
(`logprob_prm.json`, prm/logprob.py: a frozen copy of the start model computes per-token log-prob features
of each response, a logistic head fitted on its own samples' exact step labels scores them).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np

from star_jax.data.tasks import Example, Task
from star_jax.prm import logprob as prm_logprob
from star_jax.prm import reward as prm_reward
from star_jax.prm import steps as prm_steps
from star_jax.prm import train as prm_train

RewardFn = Callable[[Example, str], float]  # one response
BatchRewardFn = Callable[[Sequence[Example], Sequence[str]], np.ndarray]  # a sampled batch -> rewards_B


@dataclasses.dataclass(frozen=True)
class StepScores:
  """One response's reward split for per-step credit: R = outcome + Σ_k step_rewards[k] (= `total`)."""
  outcome: float  # 1(ŷ = y), earned at the response's last token
  step_ends: tuple[int, ...]  # per step (task.steps): character offset of its closing delimiter (data.steps.Step.end)
  step_rewards: tuple[float, ...]  # r_k, earned at the token holding step_ends[k] (the last token if past the text)
  total: float  # the sequence-level return (what rl.credit = "sequence" would use)

  def __post_init__(self):
    if len(self.step_ends) != len(self.step_rewards):
      raise ValueError(f"StepScores: {len(self.step_ends)} step ends but {len(self.step_rewards)} step rewards")


StepRewardFn = Callable[[Sequence[Example], Sequence[str]], list[StepScores]]  # a sampled batch -> per-step scores


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


def step_scores_from_probs(outcome: float, step_ends: Sequence[int], step_scores: Sequence[float],
                           expected_steps: int, weight: float) -> StepScores:
  """`prm.reward.dense_return`'s reward split by step: r_k = w · p_k / S for k < S, 0 for steps past S (they
  still bound segments of the per-step baselines); total = dense_return(outcome, p, S, w)."""
  if expected_steps <= 0:
    raise ValueError(f"step_scores_from_probs: expected_steps must be > 0, got {expected_steps}")
  rewards = tuple(weight * float(p) / expected_steps if k < expected_steps else 0.0 for k, p in enumerate(step_scores))
  return StepScores(float(outcome), tuple(int(e) for e in step_ends), rewards,
                    prm_reward.dense_return(outcome, step_scores, expected_steps, weight))


def step_rewarded_scores(task: Task, weight: float) -> Callable[[Example, str], StepScores]:
  """`step_rewarded`'s reward, split by step for per-step credit: r_k = w / S while steps 1..k are all
  correct (exact labels, prm.steps.task_step_labels), 0 after the first error; the outcome 1(ŷ = y)."""
  outcome = outcome_reward(task)

  def scores(example: Example, text: str) -> StepScores:
    labels = prm_steps.task_step_labels(task, example, text)
    steps = task.steps(text)
    if len(labels) != len(steps):
      raise ValueError(f"the {task.name} task labels {len(labels)} steps but segments {len(steps)} in {text!r}")
    return step_scores_from_probs(outcome(example, text), [s.end for s in steps], labels,
                                  task.expected_steps(example), weight)
  return scores


def check_prm_directory(directory: str) -> str:
  """The kind of learned PRM in `directory`: "logprob" (prm/logprob.py's SPEC_FILE) or "hidden_state"
  (prm/train.py's SPEC_FILE); FileNotFoundError naming both files when it holds neither."""
  if prm_logprob.is_logprob_prm(directory):
    return "logprob"
  if os.path.exists(os.path.join(directory, prm_train.SPEC_FILE)):
    return "hidden_state"
  raise FileNotFoundError(
      f"config.rl.process_reward_model={directory!r}: neither {prm_logprob.SPEC_FILE} (a log-prob PRM: "
      f"experiments/pg_star_arithmetic/from_star/train_prm.py) nor {prm_train.SPEC_FILE} (a hidden-state reward "
      "model: experiments/prm_arithmetic/study.py) found there")


def logprob_step_scores(directory: str, weight: float, mesh, task: Task, tokenizer, *, batch_size: int,
                        seq_len: int) -> StepRewardFn:
  """The learned process reward of a log-prob PRM (prm.logprob.load_logprob_prm), split by step:

    R = 1(ŷ = y) + w Σ_{k=1}^{min(m, S)} P̂(step k good) / S,   P̂(step k good) = σ(w_h · f_k + b_h),

  r_k = w P̂_k / S earned at the token closing step k (0 for steps past S), f_k the `prm.logprob.step_features`
  (min / sum of log π_0(y_t | y_<t) over the step and over the prefix, non-argmax counts) of the response under
  the PRM's FROZEN model π_0 (the PG start model M_N), (w_h, b_h) its logistic head. S = task.expected_steps (a
  task that does not know it: the response's own step count). The head was fitted once on π_0's own samples
  with exact step labels: it is not refitted as the policy moves away from π_0. Token confidence as a
  correctness signal: Kadavath et al. 2022 (arXiv 2207.05221); step scores as PPO rewards: Math-Shepherd
  (Wang et al. 2023, arXiv 2312.08935), after Lightman et al. 2023 (arXiv 2305.20050).

  Each batch costs one jitted forward of π_0 over `batch_size` rows of `seq_len` tokens (one compilation).
  """
  prm = prm_logprob.load_logprob_prm(directory, mesh)

  def reward(examples: Sequence[Example], texts: Sequence[str]) -> list[StepScores]:
    if len(examples) != len(texts):
      raise ValueError(f"logprob_step_scores: {len(examples)} examples but {len(texts)} texts")
    inputs = [prm_reward.scoring_example(tokenizer, task, e, t) for e, t in zip(examples, texts)]
    step_probs = prm.step_probs(inputs, mesh=mesh, batch_size=batch_size, seq_len=seq_len)
    return [step_scores_from_probs(float(task.is_correct(e, t)), [s.end for s in task.steps(t)], probs.tolist(),
                                   task.expected_steps(e) or max(len(probs), 1), weight)
            for e, t, probs in zip(examples, texts, step_probs)]
  return reward


def learned_step_scores(directory: str, weight: float, mesh, task: Task, tokenizer, *, batch_size: int,
                        seq_len: int) -> StepRewardFn:
  """`prm.reward.learned_step_reward` split by step: r_k = w · p_k / S with p_k the saved PRM's P(step k good)
  at the token closing step k (S = task.expected_steps, or the response's own step count). A log-prob PRM
  directory (`check_prm_directory`) is scored by `logprob_step_scores`."""
  if check_prm_directory(directory) == "logprob":
    return logprob_step_scores(directory, weight, mesh, task, tokenizer, batch_size=batch_size, seq_len=seq_len)
  model_config, head_config, params = prm_train.load_reward_model(directory, mesh)
  if not head_config.prm_classes:
    raise ValueError(f"{directory}: the reward model has no process head (prm_classes = 0); a dense process "
                     "reward needs one")

  def reward(examples: Sequence[Example], texts: Sequence[str]) -> list[StepScores]:
    if len(examples) != len(texts):
      raise ValueError(f"learned_step_scores: {len(examples)} examples but {len(texts)} texts")
    inputs = [prm_reward.scoring_example(tokenizer, task, e, t) for e, t in zip(examples, texts)]
    step_probs, _ = prm_train.score_examples(model_config, params, inputs, mesh=mesh, batch_size=batch_size,
                                             seq_len=seq_len)
    return [step_scores_from_probs(float(task.is_correct(e, t)), [s.end for s in task.steps(t)], probs,
                                   task.expected_steps(e) or max(len(probs), 1), weight)
            for e, t, probs in zip(examples, texts, step_probs)]
  return reward


def per_sample(fn: RewardFn) -> BatchRewardFn:
  """A batch reward that calls `fn(example, text)` on each response."""
  return lambda examples, texts: np.asarray([fn(e, t) for e, t in zip(examples, texts)], np.float32)


def default_reward(rl, task: Task, mesh, tokenizer, seq_len: int) -> BatchRewardFn | StepRewardFn:
  """The `rl` section's reward: 1(ŷ = y), + w · exact step rewards (rl.process_reward = w > 0), or + w · a
  learned PRM's step scores (rl.process_reward_model = its directory: a hidden-state or a log-prob PRM,
  `check_prm_directory`). `seq_len` is the update's row length. With rl.credit != "sequence" and step rewards,
  a StepRewardFn (per-step scores) instead of rewards_B."""
  if rl.credit != "sequence" and rl.process_reward_model:
    return learned_step_scores(rl.process_reward_model, rl.process_reward, mesh, task, tokenizer,
                               batch_size=rl.batch_size, seq_len=seq_len)
  if rl.credit != "sequence" and rl.process_reward > 0:
    if not task.has_step_checks:
      raise ValueError(f"config.rl.process_reward={rl.process_reward} needs exact step checks, which the {task.name} "
                       "task does not have (Task.step_correct); give a trained PRM as config.rl.process_reward_model")
    scores = step_rewarded_scores(task, rl.process_reward)
    return lambda examples, texts: [scores(e, t) for e, t in zip(examples, texts)]
  if rl.process_reward_model and check_prm_directory(rl.process_reward_model) == "logprob":
    scores = logprob_step_scores(rl.process_reward_model, rl.process_reward, mesh, task, tokenizer,
                                 batch_size=rl.batch_size, seq_len=seq_len)
    return lambda examples, texts: totals(scores(examples, texts))
  if rl.process_reward_model:
    return prm_reward.learned_step_reward(rl.process_reward_model, rl.process_reward, mesh, task, tokenizer,
                                          batch_size=rl.batch_size, seq_len=seq_len)
  if rl.process_reward > 0:
    if not task.has_step_checks:
      raise ValueError(f"config.rl.process_reward={rl.process_reward} needs exact step checks, which the {task.name} "
                       "task does not have (Task.step_correct); give a trained PRM as config.rl.process_reward_model")
    return per_sample(step_rewarded(task, rl.process_reward))
  return per_sample(outcome_reward(task))


# ---- per-step credit: host-side arrays of the update step ----

def _is_step_scores(scored) -> bool:
  return isinstance(scored, (list, tuple)) and len(scored) > 0 and isinstance(scored[0], StepScores)


def totals(scored) -> np.ndarray:
  """rewards_B of a batch reward's output: the array itself (float32), or each StepScores' total."""
  if _is_step_scores(scored):
    return np.asarray([s.total for s in scored], np.float32)
  return np.asarray(scored, np.float32)


def token_ends(tokenizer, tokens, text: str) -> np.ndarray:
  """Character offset (in `text` = tokenizer.decode(tokens)) just past each token: token i covers
  [ends[i-1], ends[i]). Special tokens (EOS) decode to nothing and cover an empty span at the end."""
  pieces = [len(tokenizer.decode([int(t)])) for t in tokens]
  ends = np.cumsum(pieces, dtype=np.int64)
  if len(tokens) and ends[-1] != len(text):  # a tokenizer whose pieces do not concatenate (byte-level BPE)
    ends = np.asarray([len(tokenizer.decode([int(t) for t in tokens[:i + 1]])) for i in range(len(tokens))], np.int64)
  return ends


def step_fields(scored, prompt_ids: Sequence[Sequence[int]], tokens_BxN: np.ndarray, lengths_B: np.ndarray,
                texts: Sequence[str], tokenizer, seq_len: int) -> dict[str, np.ndarray]:
  """The per-step credit arrays of pg.step (rows as loop.build_batch lays them out: target j = response token
  i with j = |prompt ids| − 1 + i):

    step_rewards_BxT  r_k at the token holding character step_ends[k] (the first token whose span passes it;
                      the last response token when it lies past the text, e.g. an unterminated last step)
    step_ends_BxT     the number of steps closing at each token
    outcome_B         R_b, earned at the last response token

  A plain rewards_B (a reward with no steps) gives outcome_B = rewards_B and no steps: per-step credit then
  equals the sequence-level estimator (pg/credit.py)."""
  b = len(prompt_ids)
  out = {"step_rewards_BxT": np.zeros((b, seq_len), np.float32), "step_ends_BxT": np.zeros((b, seq_len), np.float32)}
  if not _is_step_scores(scored):
    out["outcome_B"] = np.asarray(scored, np.float32)
    return out
  if len(scored) != b:
    raise ValueError(f"step_fields: {len(scored)} scored responses for {b} rows")
  out["outcome_B"] = np.asarray([s.outcome for s in scored], np.float32)
  for row, s in enumerate(scored):
    n = int(lengths_B[row])
    if not s.step_ends or n == 0:
      continue
    ends = token_ends(tokenizer, tokens_BxN[row, :n], texts[row])
    start = len(prompt_ids[row]) - 1
    for end, reward in zip(s.step_ends, s.step_rewards):
      i = min(int(np.searchsorted(ends, end, side="right")), n - 1)
      out["step_rewards_BxT"][row, start + i] += reward
      out["step_ends_BxT"][row, start + i] += 1.0
  return out
