"""Advantage estimators A_ik for K sampled responses per question, in a registry chosen by config string.

Inputs are rewards_GxK (G questions, K samples each; row-major, so the flat batch row is g·K + k) and
valid_GxK (False for slots holding no sample). Every estimator returns advantages_GxK that are exactly 0
on invalid slots, finite for any input (empty groups, one sample, all-equal rewards) and a pure function,
usable on the host (numpy in, jax out) and inside the jitted step.

  none          A = r                                   REINFORCE, the STaR estimator (Zelikman et al. 2022)
  batch_mean    A = r − mean over the whole batch       a constant baseline (Williams 1992)
  group_mean    A = r − mean over the question's group  Dr. GRPO (Liu et al. 2025, arXiv 2503.20783)
  rloo          A = r − mean over the OTHER samples     leave-one-out (Kool et al. 2019; Ahmadian et al.
                    of the question                     2024, arXiv 2402.14740)
  grpo          A = (r − mean_g) / (std_g + eps)        group-normalised (Shao et al. 2024, DeepSeekMath,
                                                        arXiv 2402.03300)

Only `none` and `rloo` keep E[A ∇log π] = ∇J exactly: a baseline that includes the sample's own reward
scales the expected gradient by (1 − 1/n) (n samples in the mean), and dividing by the group std changes
the objective itself (tests/test_pg_losses.py checks these by enumeration).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Estimator = Callable[[jax.Array, jax.Array], jax.Array]


def _prepare(rewards_GxK, valid_GxK) -> tuple[jax.Array, jax.Array]:
  rewards_GxK = jnp.asarray(rewards_GxK, jnp.float32)
  if rewards_GxK.ndim != 2:
    raise ValueError(f"rewards must be [groups, samples], got shape {rewards_GxK.shape}")
  valid_GxK = jnp.ones(rewards_GxK.shape, jnp.bool_) if valid_GxK is None else jnp.asarray(valid_GxK, jnp.bool_)
  if valid_GxK.shape != rewards_GxK.shape:
    raise ValueError(f"valid shape {valid_GxK.shape} != rewards shape {rewards_GxK.shape}")
  valid_GxK = valid_GxK & jnp.isfinite(rewards_GxK)  # a non-finite reward marks its slot invalid
  return jnp.where(valid_GxK, rewards_GxK, 0.0), valid_GxK


def no_baseline(rewards_GxK, valid_GxK=None) -> jax.Array:
  """A_ik = r_ik: the STaR policy gradient ∇J = E[1(ŷ = y) ∇ log p(r̂, ŷ | x)] (Zelikman et al. 2022)."""
  rewards_GxK, _ = _prepare(rewards_GxK, valid_GxK)
  return rewards_GxK


def batch_mean_baseline(rewards_GxK, valid_GxK=None) -> jax.Array:
  """A_ik = r_ik − b with b = (1/N) Σ_valid r over the whole batch (N valid samples; Williams 1992)."""
  rewards_GxK, valid_GxK = _prepare(rewards_GxK, valid_GxK)
  count = jnp.sum(valid_GxK)
  baseline = jnp.sum(rewards_GxK) / jnp.maximum(count, 1)
  return jnp.where(valid_GxK, rewards_GxK - baseline, 0.0)


def _group_sums(rewards_GxK, valid_GxK) -> tuple[jax.Array, jax.Array]:
  return jnp.sum(rewards_GxK, axis=1, keepdims=True), jnp.sum(valid_GxK, axis=1, keepdims=True).astype(jnp.float32)


def group_mean_baseline(rewards_GxK, valid_GxK=None) -> jax.Array:
  """A_ik = r_ik − (1/n_i) Σ_j r_ij over the question's n_i valid samples (Dr. GRPO, arXiv 2503.20783)."""
  rewards_GxK, valid_GxK = _prepare(rewards_GxK, valid_GxK)
  total_Gx1, n_Gx1 = _group_sums(rewards_GxK, valid_GxK)
  return jnp.where(valid_GxK, rewards_GxK - total_Gx1 / jnp.maximum(n_Gx1, 1.0), 0.0)


def leave_one_out(rewards_GxK, valid_GxK=None) -> jax.Array:
  """RLOO: A_ik = r_ik − (1/(n_i − 1)) Σ_{j≠k} r_ij (Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a
  Baseline for Free!"; Ahmadian et al. 2024, arXiv 2402.14740). Equal to n_i/(n_i − 1) · (r_ik − mean_i).

  The baseline uses only the other samples, so E[A ∇log π] = ∇J stays exact. A question with a single
  valid sample has no other sample to form a baseline from: its baseline is 0 (A = r, plain REINFORCE).
  """
  rewards_GxK, valid_GxK = _prepare(rewards_GxK, valid_GxK)
  total_Gx1, n_Gx1 = _group_sums(rewards_GxK, valid_GxK)
  others_GxK = n_Gx1 - 1.0
  baseline_GxK = jnp.where(others_GxK > 0, (total_Gx1 - rewards_GxK) / jnp.maximum(others_GxK, 1.0), 0.0)
  return jnp.where(valid_GxK, rewards_GxK - baseline_GxK, 0.0)


def group_normalised(rewards_GxK, valid_GxK=None, eps: float = 1e-6) -> jax.Array:
  """GRPO: A_ik = (r_ik − mean_i) / (std_i + eps), mean and (population, ddof = 0) std over the
  question's valid samples (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, §4.1.2).

  All-equal rewards in a group give A = 0 there (std = 0, numerator 0), never 0/0.
  """
  rewards_GxK, valid_GxK = _prepare(rewards_GxK, valid_GxK)
  total_Gx1, n_Gx1 = _group_sums(rewards_GxK, valid_GxK)
  mean_Gx1 = total_Gx1 / jnp.maximum(n_Gx1, 1.0)
  centred_GxK = jnp.where(valid_GxK, rewards_GxK - mean_Gx1, 0.0)
  std_Gx1 = jnp.sqrt(jnp.sum(jnp.square(centred_GxK), axis=1, keepdims=True) / jnp.maximum(n_Gx1, 1.0))
  return centred_GxK / (std_Gx1 + eps)


ADVANTAGES: dict[str, Estimator] = {
    "none": no_baseline,
    "batch_mean": batch_mean_baseline,
    "group_mean": group_mean_baseline,
    "rloo": leave_one_out,
    "grpo": group_normalised,
}


def get_estimator(name: str) -> Estimator:
  """The advantage estimator registered as `name`."""
  if name not in ADVANTAGES:
    raise ValueError(f"unknown advantage estimator {name!r}; known: {sorted(ADVANTAGES)}")
  return ADVANTAGES[name]


def compute(name: str, rewards_GxK, valid_GxK=None) -> jax.Array:
  """advantages_GxK of estimator `name`."""
  return get_estimator(name)(rewards_GxK, valid_GxK)
