"""Pure objectives of process (PRM) and outcome (ORM) reward heads.

Like star_jax/losses.py, every loss returns (Σ weighted per-position loss, Σ weight), so that sharding and
micro-batching give exactly the full-batch mean. Labels live only where their mask is 1: the last token
of each labelled step for a PRM (star_jax/prm/steps.py places them), the solution's tokens for an ORM.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def binary_step_loss_sums(logits_BxT: jax.Array, targets_BxT: jax.Array,
                          mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Binary cross-entropy with hard or soft targets y ∈ [0, 1] at the masked positions.

    ℓ(z, y) = −[y log σ(z) + (1 − y) log(1 − σ(z))] = softplus(z) − y·z
    returns (Σ_t m_t ℓ(z_t, y_t), Σ_t m_t)

  Hard targets are exact or PRM800K-binarised step labels; soft targets are Monte-Carlo estimates of the
  probability that a step prefix still reaches the right answer (Wang et al. 2023, Math-Shepherd,
  arXiv 2312.08935, "soft estimation").
  """
  z = logits_BxT.astype(jnp.float32)
  y = targets_BxT.astype(jnp.float32)
  m = mask_BxT.astype(jnp.float32)
  return jnp.sum(m * (jax.nn.softplus(z) - y * z)), jnp.sum(m)


def multiclass_step_loss_sums(logits_BxTxC: jax.Array, classes_BxT: jax.Array,
                              mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Softmax cross-entropy over step ratings at the masked positions (Lightman et al. 2023, arXiv 2305.20050).

    ℓ = −log softmax(z)_c with c = rating + 1 ∈ {0, 1, 2} for PRM800K's −1 / 0 / +1
    returns (Σ_t m_t ℓ_t, Σ_t m_t)

  Classes at unmasked positions are ignored (any value, clipped into range).
  """
  z = logits_BxTxC.astype(jnp.float32)
  c = jnp.clip(classes_BxT.astype(jnp.int32), 0, z.shape[-1] - 1)
  logp_BxT = jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), c[..., None], axis=-1)[..., 0]
  m = mask_BxT.astype(jnp.float32)
  return jnp.sum(-m * logp_BxT), jnp.sum(m)


def step_loss_sums(logits_BxTxC: jax.Array, targets_BxT: jax.Array,
                   mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The PRM loss for a head of C outputs: binary (C = 1, targets in [0, 1]) or ratings (C = 3, class ids)."""
  c = logits_BxTxC.shape[-1]
  if c == 1:
    return binary_step_loss_sums(logits_BxTxC[..., 0], targets_BxT, mask_BxT)
  if c == 3:
    return multiclass_step_loss_sums(logits_BxTxC, jnp.round(targets_BxT).astype(jnp.int32), mask_BxT)
  raise ValueError(f"step_loss_sums: prm logits need 1 or 3 classes, got shape {logits_BxTxC.shape}")


def orm_loss_sums(logits_BxT: jax.Array, targets_BxT: jax.Array,
                  mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Outcome-reward loss: binary cross-entropy of 1(ŷ = y) at every masked solution token.

  Cobbe et al. 2021 (arXiv 2110.14168) train the verifier at every token of the solution with the
  solution's final correctness (their "token-level" verifier) and score with the last token's
  prediction; the mask chooses every solution token or only the last one. targets_BxT holds the
  solution's 1(ŷ = y) at its tokens.
  """
  return binary_step_loss_sums(logits_BxT, targets_BxT, mask_BxT)


def binary_accuracy_sums(logits_BxT: jax.Array, targets_BxT: jax.Array,
                         mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Σ m · 1[(z > 0) = (y ≥ 1/2)], Σ m): thresholded accuracy against (possibly soft) targets."""
  hit = (logits_BxT > 0) == (targets_BxT >= 0.5)
  m = mask_BxT.astype(jnp.float32)
  return jnp.sum(m * hit.astype(jnp.float32)), jnp.sum(m)
