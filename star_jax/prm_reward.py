"""Dense process rewards from a *learned* process reward model, for the policy-gradient loop (rl.py).

Lightman et al. 2023 ("Let's Verify Step by Step", arXiv 2305.20050) score every reasoning step with a PRM;
Math-Shepherd (Wang et al. 2023, arXiv 2312.08935, §3.3) uses such step scores as the reward of PPO. Here the
PRM's P(step k good), read at the token that ends step k, takes the place of the exact verifier's step labels
of `rl.step_rewarded`, through the same return (`prm.dense_return`):

  R = 1(ŷ = y) + w · Σ_{k=1}^{min(m, S)} p_k / S

m = the steps of the response (its scratchpad lines after "<scratch>", as the PRM was trained on them), S = the
steps of the true scratchpad. A perfect PRM (p_k = 1 up to the first wrong step, 0 after) gives exactly
`rl.step_rewarded`'s reward. The reward model is a separate network (its own trunk and head, e.g. the
`prm/` directory of `python -m star_jax.prm_experiment`); it is frozen and scores each sampled batch in one
jitted forward pass of fixed shape [batch, seq_len].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from jax.sharding import Mesh

from star_jax import prm, prm_train
from star_jax.data import CharTokenizer, arithmetic, verifiers
from star_jax.data.arithmetic import Problem

BatchRewardFn = Callable[[Sequence[Problem], Sequence[str]], np.ndarray]


def scoring_example(tokenizer, problem: Problem, text: str) -> dict[str, np.ndarray]:
  """The response as a reward-model input with every step end marked for reading (targets unused)."""
  steps = prm.split_steps(text, "\n", start_after=arithmetic.SCRATCH_OPEN)
  return prm.encode_labelled_text(tokenizer, arithmetic.prompt_text(problem), text, [s.end for s in steps],
                                  [0.0] * len(steps))


def learned_step_reward(directory: str, weight: float, mesh: Mesh, *, batch_size: int,
                        seq_len: int) -> BatchRewardFn:
  """reward(problems, texts) -> R_B from the reward model saved in `directory` (prm_train.load_reward_model).

  Batches of exactly `batch_size` rows of `seq_len` tokens (the RL step's sizes), so the scorer compiles once.
  """
  model_config, head_config, params = prm_train.load_reward_model(directory, mesh)
  if not head_config.prm_classes:
    raise ValueError(f"{directory}: the reward model has no process head (prm_classes = 0); a dense process "
                     "reward needs one")
  tokenizer = CharTokenizer()

  def reward(problems: Sequence[Problem], texts: Sequence[str]) -> np.ndarray:
    if len(problems) != len(texts):
      raise ValueError(f"learned_step_reward: {len(problems)} problems but {len(texts)} texts")
    examples = [scoring_example(tokenizer, p, t) for p, t in zip(problems, texts)]
    step_probs, _ = prm_train.score_examples(model_config, params, examples, mesh=mesh, batch_size=batch_size,
                                             seq_len=seq_len)
    return np.asarray([prm.dense_return(float(verifiers.is_correct(p, t)), probs, verifiers.expected_num_steps(p),
                                        weight)
                       for p, t, probs in zip(problems, texts, step_probs)], np.float32)
  return reward
