"""Dense process rewards for policy gradients: the return with step scores, per-token step rewards, and a
*learned* process reward model as the step scorer of the policy-gradient loop (star_jax/pg/loop.py).

Lightman et al. 2023 ("Let's Verify Step by Step", arXiv 2305.20050) score every reasoning step with a PRM;
Math-Shepherd (Wang et al. 2023, arXiv 2312.08935, §3.3) uses such step scores as the reward of PPO. Here the
PRM's P(step k good), read at the token that ends step k, takes the place of the exact verifier's step labels
of `pg.rewards.step_rewarded`, through the same return (`dense_return`):

  R = 1(ŷ = y) + w · Σ_{k=1}^{min(m, S)} p_k / S

m = the steps of the response (`task.steps`: for arithmetic its scratchpad lines after "<scratch>", as the PRM
was trained on them), S = the steps of a correct solution (`task.expected_steps`). A perfect PRM (p_k = 1 up
to the first wrong step, 0 after) gives exactly `pg.rewards.step_rewarded`'s reward. The reward model is a
separate network (its own trunk and head, e.g. the `prm/` directory of `python -m experiments.prm_arithmetic.study`);
it is frozen and scores each sampled batch in one jitted forward pass of fixed shape [batch, seq_len].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from star_jax.data.tasks import Example, Task
from star_jax.prm import steps as prm_steps
from star_jax.prm import train as prm_train

BatchRewardFn = Callable[[Sequence[Example], Sequence[str]], np.ndarray]


def scoring_example(tokenizer, task: Task, example: Example, text: str) -> dict[str, np.ndarray]:
  """The response as a reward-model input with every step end (`task.steps`) marked for reading (targets unused)."""
  steps = task.steps(text)
  return prm_steps.encode_labelled_text(tokenizer, task.prompt(example), text, [s.end for s in steps],
                                        [0.0] * len(steps))


def learned_step_reward(directory: str, weight: float, mesh: Mesh, task: Task, tokenizer, *, batch_size: int,
                        seq_len: int) -> BatchRewardFn:
  """reward(examples, texts) -> R_B from the reward model saved in `directory` (prm.train.load_reward_model).

  Batches of exactly `batch_size` rows of `seq_len` tokens (the RL step's sizes), so the scorer compiles once.
  S is `task.expected_steps(x)` (a task that does not know it: the response's own step count).
  """
  model_config, head_config, params = prm_train.load_reward_model(directory, mesh)
  if not head_config.prm_classes:
    raise ValueError(f"{directory}: the reward model has no process head (prm_classes = 0); a dense process "
                     "reward needs one")

  def reward(examples: Sequence[Example], texts: Sequence[str]) -> np.ndarray:
    if len(examples) != len(texts):
      raise ValueError(f"learned_step_reward: {len(examples)} examples but {len(texts)} texts")
    inputs = [scoring_example(tokenizer, task, e, t) for e, t in zip(examples, texts)]
    step_probs, _ = prm_train.score_examples(model_config, params, inputs, mesh=mesh, batch_size=batch_size,
                                             seq_len=seq_len)
    return np.asarray([dense_return(float(task.is_correct(e, t)), probs,
                                    task.expected_steps(e) or max(len(probs), 1), weight)
                       for e, t, probs in zip(examples, texts, step_probs)], np.float32)
  return reward


# ---- returns and per-token rewards from step scores ----

def dense_return(outcome: float, step_scores: Sequence[float], expected_steps: int, weight: float) -> float:
  """A solution's return with per-step process rewards r_k = p_k / S (Lightman et al. 2023's step scores as
  rewards, as Math-Shepherd's PPO does) added to the outcome indicator:

    R = 1(ŷ = y) + w · Σ_{k=1}^{min(m, S)} p_k / S

  p_k ∈ [0, 1] is step k's score (an exact label, or a PRM's P(step good)), m the steps the solution has,
  S the steps a correct solution has. Counting at most S steps bounds R by 1 + w, so a policy cannot farm
  the reward by writing extra steps. Example: outcome 1, scores (1, 1, 0.5), S = 4, w = 2 → 1 + 2·2.5/4 = 2.25.
  """
  if expected_steps <= 0:
    raise ValueError(f"dense_return: expected_steps must be > 0, got {expected_steps}")
  return float(outcome) + weight * float(sum(step_scores[:expected_steps])) / expected_steps


def process_rewards(step_probs_BxT: jax.Array, step_mask_BxT: jax.Array, *, mode: str = "score",
                    outcome_B: jax.Array | None = None, last_index_B: jax.Array | None = None,
                    outcome_weight: float = 1.0) -> jax.Array:
  """Per-token rewards_BxT from PRM step scores: nonzero only at step-end tokens (and the last token).

    "score":  r_t = p_t at every step end t (the PRM's P(step good), Lightman et al. 2023)
    "delta":  r_t = p_t − p_{t'} with t' the previous step end in the row (p = 0 before the first), a
              potential-based shaping (Ng et al. 1999) whose sum over a solution is the last step's score
    plus, with outcome_B, outcome_weight · outcome_B at last_index_B (the final indicator 1(ŷ = y)).
  """
  p_BxT = jnp.asarray(step_probs_BxT, jnp.float32)
  m_BxT = jnp.asarray(step_mask_BxT).astype(bool)
  if mode == "score":
    r_BxT = jnp.where(m_BxT, p_BxT, 0.0)
  elif mode == "delta":
    t = p_BxT.shape[1]
    index_BxT = jnp.where(m_BxT, jnp.arange(t)[None, :], -1)
    previous_BxT = jnp.pad(jax.lax.cummax(index_BxT, axis=1)[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    p_prev_BxT = jnp.where(previous_BxT >= 0,
                           jnp.take_along_axis(p_BxT, jnp.maximum(previous_BxT, 0), axis=1), 0.0)
    r_BxT = jnp.where(m_BxT, p_BxT - p_prev_BxT, 0.0)
  else:
    raise ValueError(f"process_rewards: unknown mode {mode!r}; choose 'score' or 'delta'")
  if outcome_B is not None:
    if last_index_B is None:
      raise ValueError("process_rewards: outcome_B needs last_index_B (the index of each row's last token)")
    onehot_BxT = jnp.arange(r_BxT.shape[1])[None, :] == jnp.asarray(last_index_B)[:, None]
    r_BxT = r_BxT + outcome_weight * jnp.where(onehot_BxT, jnp.asarray(outcome_B, jnp.float32)[:, None], 0.0)
  return r_BxT

