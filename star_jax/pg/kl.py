"""KL divergence to a frozen reference policy: per-token estimators and the adaptive coefficient.

With samples a ~ π(·|s) and the per-token log-ratio x = log π(a|s) − log π_ref(a|s) (Schulman 2020,
"Approximating KL Divergence", http://joschu.net/blog/kl-approx.html):

  k1 = x                       E_π[k1] = KL(π‖π_ref)                 unbiased, can be negative
  k2 = ½ x²                    E_π[k2] = ½ E_π[x²] = KL + O(x³)      biased, non-negative
  k3 = exp(−x) − 1 + x         E_π[k3] = KL(π‖π_ref)                 unbiased, non-negative

(E_π[exp(−x)] = Σ_a π_ref(a|s) = 1 gives E[k3] = E[k1].) Summed over the tokens of a sampled sequence,
k1 and k3 stay unbiased for the sequence-level KL(π(y|x)‖π_ref(y|x)): E[Σ_t x_t] = E[log π(y)/π_ref(y)].

How each one behaves as a *penalty* (which gradient it gives) is in losses.policy_gradient_loss.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# exp(−x) is evaluated with x clamped to ±MAX_LOG_RATIO (exp(20) ≈ 4.9e8): a token the policy has all but
# ruled out, but the reference has not, would otherwise overflow k3. The clamp (and its zero gradient) only
# acts beyond probability ratios of e^20.
MAX_LOG_RATIO = 20.0


def k1(logps_BxT: jax.Array, ref_logps_BxT: jax.Array) -> jax.Array:
  """k1 = log π − log π_ref per token (Schulman 2020)."""
  return logps_BxT - ref_logps_BxT


def k2(logps_BxT: jax.Array, ref_logps_BxT: jax.Array) -> jax.Array:
  """k2 = ½ (log π − log π_ref)² per token (Schulman 2020)."""
  return 0.5 * jnp.square(logps_BxT - ref_logps_BxT)


def k3(logps_BxT: jax.Array, ref_logps_BxT: jax.Array) -> jax.Array:
  """k3 = exp(−x) − 1 + x with x = log π − log π_ref, per token (Schulman 2020; the GRPO penalty)."""
  x_BxT = jnp.clip(logps_BxT - ref_logps_BxT, -MAX_LOG_RATIO, MAX_LOG_RATIO)
  return jnp.exp(-x_BxT) - 1.0 + x_BxT


KL_ESTIMATORS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {"k1": k1, "k2": k2, "k3": k3}


def get_estimator(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The per-token KL estimator registered as `name` (k1, k2, k3)."""
  if name not in KL_ESTIMATORS:
    raise ValueError(f"unknown KL estimator {name!r}; known: {sorted(KL_ESTIMATORS)}")
  return KL_ESTIMATORS[name]


def adaptive_kl_coef(kl_coef: jax.Array, observed_kl: jax.Array, *, target: float, horizon: float,
                     n_samples: int) -> jax.Array:
  """The proportional controller of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
  Preferences", arXiv 1909.08593, §2.2) that steers the KL toward a target:

    e = clip(KL / KL_target − 1, −0.2, 0.2),    β ← β · (1 + e · n_samples / horizon)

  `observed_kl` is the batch mean of the per-sequence KL estimate; `n_samples` the sequences it came from.
  """
  error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
  return kl_coef * (1.0 + error * (n_samples / horizon))
