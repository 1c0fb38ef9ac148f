"""Language-model maths: token log-probs, masked NLL, entropy (pure functions of logits, targets, masks).

Every loss returns a sum and the weight it should be normalised by, so that gradient accumulation over
micro-batches and sharding over devices give exactly the full-batch mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """log p(target_t | prefix) for every position: logsumexp-stable log-softmax gathered at the targets."""
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  log_z_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_logits_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return target_logits_BxT - log_z_BxT


def masked_nll_sum(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                   loss_mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(Σ_t m_t · −log p(y_t | y_<t), Σ_t m_t): the numerator and denominator of the masked mean NLL."""
  nll_BxT = -token_logprobs(logits_BxTxV, targets_BxT)
  mask_BxT = loss_mask_BxT.astype(jnp.float32)
  return jnp.sum(nll_BxT * mask_BxT), jnp.sum(mask_BxT)


def masked_nll(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
               loss_mask_BxT: jax.Array) -> jax.Array:
  """Masked mean token NLL: Σ m·nll / max(Σ m, 1)."""
  total, weight = masked_nll_sum(logits_BxTxV, targets_BxT, loss_mask_BxT)
  return total / jnp.maximum(weight, 1.0)


def token_entropy(logits_BxTxV: jax.Array, temperature: float = 1.0) -> jax.Array:
  """H_t = −Σ_v p_v log p_v of softmax(logits / temperature) at every position."""
  logps_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32) / temperature, axis=-1)
  return -jnp.sum(jnp.exp(logps_BxTxV) * logps_BxTxV, axis=-1)
