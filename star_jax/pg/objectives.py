"""Policy-gradient objectives of STaR as RL: the surrogate losses and their normalisations (pure maths).

Every loss returns a sum and the weight it should be normalised by, so that gradient accumulation over
micro-batches and sharding over devices give exactly the full-batch mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from star_jax.pg import kl

# ---- policy-gradient objectives (STaR as RL) ----
#
# Samples y_b ~ π_old(·|x_b), b = 1..B, with response tokens marked by mask_BxT. Per token t of row b:
#   ρ_bt = exp(log π_θ(y_bt) − log π_old(y_bt))                       importance ratio (1 when on-policy)
#   ℓ_bt = −min(ρ_bt A_b, clip(ρ_bt, 1 − ε, 1 + ε) A_b) + β k(log π_θ(y_bt) − log π_ref(y_bt))
# (without clipping, ε = 0: ℓ_bt = −ρ_bt A_b + β k). Normalisation turns ℓ into the batch loss:
#   sequence_sum    (1/B) Σ_b Σ_t m_bt ℓ_bt      the exact score-function estimator of −∇J (the paper's)
#   token_mean      Σ_b Σ_t m ℓ / Σ_b Σ_t m     every token weighs the same (DAPO, arXiv 2503.14476)
#   sequence_mean   (1/B) Σ_b (Σ_t m ℓ / Σ_t m)  every sequence weighs the same (GRPO, arXiv 2402.03300)
# Each is returned as (numerator, denominator) so micro-batches and devices sum to the full-batch value.

NORMALISATIONS = ("sequence_sum", "token_mean", "sequence_mean")


def star_policy_gradient_loss(logps_BxT: jax.Array, mask_BxT: jax.Array, rewards_B: jax.Array) -> jax.Array:
  """The STaR objective as a surrogate loss (Zelikman et al. 2022, arXiv 2203.14465, §3.2):

    J = Σ_i E_{(r̂, ŷ) ~ p(·|x_i)} 1(ŷ_i = y_i),   ∇J = Σ_i E[1(ŷ_i = y_i) ∇ log p(r̂_i, ŷ_i | x_i)]

    L = −(1/B) Σ_b R_b Σ_t m_bt log p(y_bt | y_b<t, x_b),   so E[∇L] = −∇J / (number of questions)

  REINFORCE with the raw indicator reward R_b and no baseline (rewards are constants: no gradient).
  """
  mask_BxT = mask_BxT.astype(jnp.float32)
  logp_B = jnp.sum(jnp.where(mask_BxT > 0, logps_BxT, 0.0), axis=1)
  return -jnp.mean(jax.lax.stop_gradient(rewards_B.astype(jnp.float32)) * logp_B)


def _finite_rows(mask_BxT, *logps) -> jax.Array:
  """True for rows whose masked-in log-probs (of every given array) are all finite."""
  finite_B = jnp.ones(mask_BxT.shape[:1], jnp.bool_)
  for x_BxT in logps:
    if x_BxT is not None:
      finite_B &= jnp.all(jnp.isfinite(x_BxT) | (mask_BxT <= 0), axis=1)
  return finite_B


def normalise(token_loss_BxT: jax.Array, mask_BxT: jax.Array, rows_B: jax.Array,
              normalisation: str) -> tuple[jax.Array, jax.Array]:
  """(numerator, denominator) of `normalisation` (see NORMALISATIONS) over rows with rows_B = 1."""
  masked_BxT = jnp.where(mask_BxT > 0, token_loss_BxT * mask_BxT, 0.0)
  rows_B = rows_B.astype(jnp.float32)
  if normalisation == "sequence_sum":
    return jnp.sum(masked_BxT), jnp.sum(rows_B)
  if normalisation == "token_mean":
    return jnp.sum(masked_BxT), jnp.sum(mask_BxT)
  if normalisation == "sequence_mean":
    per_row_B = jnp.sum(masked_BxT, axis=1) / jnp.maximum(jnp.sum(mask_BxT, axis=1), 1.0)
    return jnp.sum(per_row_B * rows_B), jnp.sum(rows_B)
  raise ValueError(f"unknown normalisation {normalisation!r}; known: {NORMALISATIONS}")


def policy_gradient_loss(logps_BxT: jax.Array, old_logps_BxT: jax.Array, mask_BxT: jax.Array,
                         advantages_B: jax.Array, *, clip_eps: float = 0.0, normalisation: str = "sequence_sum",
                         ref_logps_BxT: jax.Array | None = None, kl_coef: jax.Array | float = 0.0,
                         kl_estimator: str = "k3", valid_B: jax.Array | None = None
                         ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """The (PPO-clipped) policy-gradient loss with an optional KL penalty in the loss:

    ℓ_bt = −min(ρ_bt A_b, clip(ρ_bt, 1 − ε, 1 + ε) A_b) + β k(log π_θ(y_bt) − log π_ref(y_bt)),
    ρ_bt = exp(log π_θ(y_bt) − log π_old(y_bt))

  normalised as `normalisation` (module comment above). With ε = 0 there is no clipping: ℓ = −ρ A + β k,
  whose gradient at θ = θ_old is −A ∇log π_θ: REINFORCE, and with A = 1(ŷ = y) the STaR gradient.
  PPO: Schulman et al. 2017, arXiv 1707.06347. k1/k2/k3: star_jax/pg/kl.py.

  What the KL term's gradient estimates (sequence_sum; verified by enumeration in tests/test_pg_losses.py):
    k1  E[∇ Σ_t x_t] = E[∇ log π(y)] = 0 — no regularisation at all in expectation;
    k2  E[Σ_t x_t ∇log π(y_t)] = Σ_t E_{s_t}[∇ KL(π(·|s_t) ‖ π_ref(·|s_t))], the per-state KL gradient
        with the state distribution held fixed; exact ∇KL for one-token responses (bandits);
    k3  Σ_t E_{s_t}[∇ KL(π_ref(·|s_t) ‖ π(·|s_t))], the same for the reverse KL (GRPO's penalty).
  The exact gradient of J − β KL(π‖π_ref) comes from the penalty in the reward instead (k1 summed over
  the sequence and subtracted from the reward before the advantage; see pg_step.shaped_rewards).

  advantages_B is one advantage per row (A_b, every token of the row), or per token ([B, T]: A_bt, the
  per-step credit of pg/credit.py; ℓ_bt then uses A_bt).

  Rows with valid_B = False, or with a non-finite log-prob (policy, old or reference) under the mask,
  are dropped (weight 0, counted in aux["dropped_rows"]); zero-length responses contribute 0.
  Returns (loss numerator, denominator, aux sums: tokens, clipped, kl, approx_kl_old, dropped_rows).
  """
  mask_BxT = mask_BxT.astype(jnp.float32)
  valid_B = jnp.ones(mask_BxT.shape[:1], jnp.bool_) if valid_B is None else valid_B.astype(jnp.bool_)
  finite_B = _finite_rows(mask_BxT, logps_BxT, old_logps_BxT, ref_logps_BxT)
  rows_B = valid_B & finite_B
  mask_BxT = mask_BxT * rows_B[:, None]
  on_BxT = mask_BxT > 0
  logps_BxT = jnp.where(on_BxT, logps_BxT, 0.0)
  old_logps_BxT = jnp.where(on_BxT, jax.lax.stop_gradient(old_logps_BxT), 0.0)
  if advantages_B.ndim == 1:  # [B, 1]: one advantage per row, broadcast over its tokens
    advantages_BxT = jnp.where(rows_B, jax.lax.stop_gradient(advantages_B.astype(jnp.float32)), 0.0)[:, None]
  else:  # per-token advantages A_bt
    advantages_BxT = jnp.where(on_BxT, jax.lax.stop_gradient(advantages_B.astype(jnp.float32)), 0.0)

  log_ratio_BxT = logps_BxT - old_logps_BxT
  ratio_BxT = jnp.exp(jnp.clip(log_ratio_BxT, -kl.MAX_LOG_RATIO, kl.MAX_LOG_RATIO))
  surrogate_BxT = ratio_BxT * advantages_BxT
  clipped_BxT = jnp.zeros_like(mask_BxT)
  if clip_eps > 0:
    clipped_surrogate_BxT = jnp.clip(ratio_BxT, 1.0 - clip_eps, 1.0 + clip_eps) * advantages_BxT
    surrogate_BxT = jnp.minimum(surrogate_BxT, clipped_surrogate_BxT)
    clipped_BxT = (((advantages_BxT > 0) & (ratio_BxT > 1.0 + clip_eps)) |
                   ((advantages_BxT < 0) & (ratio_BxT < 1.0 - clip_eps))).astype(jnp.float32)
  token_loss_BxT = -surrogate_BxT

  kl_BxT = jnp.zeros_like(mask_BxT)
  if ref_logps_BxT is not None:
    ref_logps_BxT = jnp.where(on_BxT, jax.lax.stop_gradient(ref_logps_BxT), 0.0)
    kl_BxT = kl.get_estimator(kl_estimator)(logps_BxT, ref_logps_BxT)
    token_loss_BxT = token_loss_BxT + kl_coef * kl_BxT

  numerator, denominator = normalise(token_loss_BxT, mask_BxT, rows_B, normalisation)
  aux = {
      "tokens": jnp.sum(mask_BxT),
      "clipped": jnp.sum(clipped_BxT * mask_BxT),
      "kl": jax.lax.stop_gradient(jnp.sum(kl_BxT * mask_BxT)),
      "approx_kl_old": jax.lax.stop_gradient(jnp.sum(kl.k3(logps_BxT, old_logps_BxT) * mask_BxT)),
      "dropped_rows": jnp.sum(valid_B & ~finite_B).astype(jnp.float32),
  }
  return numerator, denominator, aux


def value_loss(values_BxT: jax.Array, returns_BxT: jax.Array, mask_BxT: jax.Array, valid_B: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
  """(Σ_bt m_bt ½ (V_bt − Ĝ_bt)², Σ_bt m_bt): the squared error of a value head against its targets Ĝ (the
  λ-returns of GAE, pg/credit.py; Schulman et al. 2017, arXiv 1707.06347, eq. 9's L^VF), a token mean once
  divided. Targets carry no gradient; rows with valid_B = False or a non-finite value or target are dropped."""
  mask_BxT = mask_BxT.astype(jnp.float32)
  valid_B = jnp.ones(mask_BxT.shape[:1], jnp.bool_) if valid_B is None else valid_B.astype(jnp.bool_)
  rows_B = valid_B & _finite_rows(mask_BxT, values_BxT, returns_BxT)
  on_BxT = (mask_BxT > 0) & rows_B[:, None]
  error_BxT = jnp.where(on_BxT, values_BxT - jax.lax.stop_gradient(returns_BxT), 0.0)
  return jnp.sum(0.5 * jnp.square(error_BxT)), jnp.sum(on_BxT.astype(jnp.float32))
