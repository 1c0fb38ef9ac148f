"""Per-token credit assignment from step rewards (rl.credit): reward-to-go with per-step leave-one-out
baselines, and GAE with a learned value. Pure functions of [B, T] arrays, usable inside the jitted step.

A response y_b (its tokens marked by mask_BxT) is cut into steps by the task (data.tasks.Task.steps); step k
(k = 0..m_b − 1) earns a reward r_k at the token that closes it (step_rewards_BxT, step_ends_BxT counts the
steps closing at each token), and the outcome R_b = 1(ŷ = y) is earned at the response's last token. So the
per-token reward is

  r_bt = Σ_{k closing at t} r_bk + R_b · 1(t = last response token)          (`token_rewards`)

and token t belongs to segment s_bt = #{steps closing strictly before t} ∈ {0..m_b}: segment k < m_b is step
k (its closing token included), segment m_b is the tail after the last step (an answer line, EOS); it may
be empty. s_bt depends only on y_<t, so any baseline that is a function of s_bt and of the OTHER samples
keeps the estimator unbiased (E[∇log π(y_t | y_<t) | y_<t] = 0).

  sequence      A_bt = A_b, the sequence-level estimator of pg/advantages.py (today's behaviour)
  reward_to_go  A_bt = G_bt − b_{b, s_bt},  G_bt = Σ_{t' ≥ t} r_bt' = Σ_{j ≥ k} r_bj + R_b  (token t in step k)
                b_{b,k} = mean over the other valid samples j of the same question of G_{j,k}, the return-to-go
                of sample j from its segment k: G_{j,k} = G_{j,t_jk} at the first token t_jk of that
                segment; a sample with no token in segment k (fewer steps, or an empty tail) has
                G_{j,k} = R_j — its step rewards are all behind it, only the outcome remains
                (rl.advantage = "rloo"; "none": b = 0, plain reward-to-go, Williams 1992's REINFORCE
                with causality). PRIME's RLOO on implicit process rewards (Cui et al. 2025,
                arXiv 2502.01456, §3.3) is one instance.
  gae           A_bt = Σ_l (γλ)^l δ_{b,t+l},  δ_bt = r_bt + γ V(s_{b,t+1}) − V(s_bt),  V = 0 after the
                last token (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
                Advantage Estimation", arXiv 1506.02438, eq. 16), with V a value head on the policy trunk
                fitted to the λ-returns A_bt + V(s_bt) (Math-Shepherd's step-level PPO, Wang et al. 2023,
                arXiv 2312.08935, §3.4). γ = λ = 1 and V = 0 give A = G: reward-to-go without a baseline.

E[Σ_t A_bt ∇log π(y_bt | y_b<t)] = ∇ E[Σ_k r_k + R] holds for "reward_to_go" exactly when each step reward
is a function of the response up to its closing token (a causal step reward: exact step checks and a
causal PRM are); tests/pg/test_credit.py checks it by enumeration.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CREDITS = ("sequence", "reward_to_go", "gae")


def last_token(mask_BxT: jax.Array) -> jax.Array:
  """1.0 at each row's last response token (mask_t = 1, mask_{t+1} = 0), else 0; rows with no token: all 0."""
  on_BxT = jnp.asarray(mask_BxT) > 0
  next_BxT = jnp.pad(on_BxT[:, 1:], ((0, 0), (0, 1)), constant_values=False)
  return (on_BxT & ~next_BxT).astype(jnp.float32)


def token_rewards(step_rewards_BxT: jax.Array, outcome_B: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """r_bt = (step rewards closing at t) + R_b at the last response token; 0 off the mask."""
  on_BxT = jnp.asarray(mask_BxT) > 0
  r_BxT = jnp.asarray(step_rewards_BxT, jnp.float32) + last_token(mask_BxT) * jnp.asarray(outcome_B, jnp.float32)[:, None]
  return jnp.where(on_BxT, r_BxT, 0.0)


def segments(step_ends_BxT: jax.Array) -> jax.Array:
  """s_bt = the number of steps closing strictly before t (int32): token t's step (or the tail) index."""
  ends_BxT = jnp.round(jnp.asarray(step_ends_BxT, jnp.float32)).astype(jnp.int32)
  return jnp.cumsum(ends_BxT, axis=1) - ends_BxT


def returns_to_go(rewards_BxT: jax.Array, mask_BxT: jax.Array, gamma: float = 1.0) -> jax.Array:
  """G_bt = Σ_{t' ≥ t} γ^(t'−t) r_bt' over response tokens (0 off the mask)."""
  on_BxT = jnp.asarray(mask_BxT) > 0
  r_BxT = jnp.where(on_BxT, jnp.asarray(rewards_BxT, jnp.float32), 0.0)
  if gamma == 1.0:
    return jnp.where(on_BxT, jnp.flip(jnp.cumsum(jnp.flip(r_BxT, 1), axis=1), 1), 0.0)
  return gae(r_BxT, jnp.zeros_like(r_BxT), mask_BxT, gamma=gamma, lam=1.0)[0]


def segment_returns(returns_BxT: jax.Array, segments_BxT: jax.Array, mask_BxT: jax.Array, outcome_B: jax.Array
                    ) -> jax.Array:
  """G_BxS: G_{b,k} = the return-to-go at the first token of segment k of row b, or R_b where row b has no
  token in segment k (k = 0..T: S = T + 1 slots, enough for any row)."""
  b, t = returns_BxT.shape
  on_BxT = jnp.asarray(mask_BxT) > 0
  previous_BxT = jnp.pad(segments_BxT[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  previous_on_BxT = jnp.pad(on_BxT[:, :-1], ((0, 0), (1, 0)), constant_values=False)
  first_BxT = on_BxT & ((segments_BxT != previous_BxT) | ~previous_on_BxT)
  outcome_B = jnp.asarray(outcome_B, jnp.float32)
  delta_BxT = jnp.where(first_BxT, returns_BxT - outcome_B[:, None], 0.0)
  rows_BxT = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
  index_BxT = jnp.clip(segments_BxT, 0, t)
  return jnp.broadcast_to(outcome_B[:, None], (b, t + 1)).at[rows_BxT, index_BxT].add(delta_BxT)


def leave_one_out_baselines(values_BxS: jax.Array, valid_B: jax.Array, group_size: int) -> jax.Array:
  """b_{b,k} = mean of values_{j,k} over the other valid rows j of b's group (rows g·K .. g·K + K − 1);
  0 where the group has no other valid row (as pg.advantages.leave_one_out)."""
  b, s = values_BxS.shape
  valid_GxK = jnp.asarray(valid_B, jnp.bool_).reshape(b // group_size, group_size)
  v_GxKxS = jnp.where(valid_GxK[:, :, None], values_BxS.reshape(b // group_size, group_size, s), 0.0)
  total_Gx1xS = jnp.sum(v_GxKxS, axis=1, keepdims=True)
  others_Gx1x1 = jnp.sum(valid_GxK, axis=1).astype(jnp.float32)[:, None, None] - 1.0
  base_GxKxS = jnp.where(others_Gx1x1 > 0, (total_Gx1xS - v_GxKxS) / jnp.maximum(others_Gx1x1, 1.0), 0.0)
  return base_GxKxS.reshape(b, s)


def reward_to_go_advantages(rewards_BxT: jax.Array, step_ends_BxT: jax.Array, outcome_B: jax.Array,
                            mask_BxT: jax.Array, valid_B: jax.Array, *, group_size: int,
                            baseline: bool = True) -> jax.Array:
  """A_bt = G_bt − b_{b, s_bt} (module docstring): reward-to-go with per-step leave-one-out baselines over
  groups of `group_size` rows (baseline=False: A = G). `rewards_BxT` are the per-token rewards
  (`token_rewards`, possibly with a per-token KL penalty), `outcome_B` the R_b of segments a row lacks.
  0 off the mask and on invalid rows."""
  on_BxT = (jnp.asarray(mask_BxT) > 0) & jnp.asarray(valid_B, jnp.bool_)[:, None]
  g_BxT = returns_to_go(rewards_BxT, on_BxT)
  if baseline:
    s_BxT = segments(step_ends_BxT)
    g_BxS = segment_returns(g_BxT, s_BxT, on_BxT, outcome_B)
    b_BxS = leave_one_out_baselines(g_BxS, valid_B, group_size)
    g_BxT = g_BxT - jnp.take_along_axis(b_BxS, jnp.clip(s_BxT, 0, b_BxS.shape[1] - 1), axis=1)
  return jnp.where(on_BxT, g_BxT, 0.0)


def gae(rewards_BxT: jax.Array, values_BxT: jax.Array, mask_BxT: jax.Array, *, gamma: float, lam: float
        ) -> tuple[jax.Array, jax.Array]:
  """(A_BxT, λ-returns A + V) of Generalized Advantage Estimation (Schulman et al. 2016, arXiv 1506.02438):

    δ_t = r_t + γ V_{t+1} m_{t+1} − V_t,   A_t = δ_t + γλ m_{t+1} A_{t+1}

  over each row's response tokens (m = mask; the value after the last response token is 0: the episode
  ends). 0 off the mask.
  """
  on_BxT = jnp.asarray(mask_BxT) > 0
  r_BxT = jnp.where(on_BxT, jnp.asarray(rewards_BxT, jnp.float32), 0.0)
  v_BxT = jnp.where(on_BxT, jnp.asarray(values_BxT, jnp.float32), 0.0)
  next_on_BxT = jnp.pad(on_BxT[:, 1:], ((0, 0), (0, 1)), constant_values=False).astype(jnp.float32)
  next_v_BxT = jnp.pad(v_BxT[:, 1:], ((0, 0), (0, 1))) * next_on_BxT
  delta_BxT = r_BxT + gamma * next_v_BxT - v_BxT

  def back(carry_B, xs):
    delta_B, next_on_B = xs
    a_B = delta_B + gamma * lam * next_on_B * carry_B
    return a_B, a_B

  _, a_TxB = jax.lax.scan(back, jnp.zeros(r_BxT.shape[:1], jnp.float32), (delta_BxT.T, next_on_BxT.T), reverse=True)
  a_BxT = jnp.where(on_BxT, a_TxB.T, 0.0)
  return a_BxT, jnp.where(on_BxT, a_BxT + v_BxT, 0.0)
