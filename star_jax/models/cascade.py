"""Cascade ("Hydragen") attention for decoding many continuations of a shared prefix.

G prompts, each continued by R rows (row b = g R + r belongs to group g = b // R). The keys and values of
a group's prompt are stored once, in a [G, K, P, Dh] prefix cache, and each row's generated tokens in
its own [B, K, S, Dh] suffix cache. A decode step's attention for the query q of row b splits the key
set into the two blocks and merges their partial softmaxes exactly (Juravsky et al. 2024, "Hydragen:
High-Throughput LLM Inference with Shared Prefixes", arXiv 2402.05099, Sec. 3; the same log-sum-exp
merge as FlashAttention's blockwise softmax):

    for block c in {prefix of g, suffix of b}:  m_c = max_s z_s,  l_c = sum_s e^{z_s - m_c},
                                                o_c = sum_s e^{z_s - m_c} v_s          (z_s = q.k_s + bias_s)
    m = max(m_p, m_s),  attn(q) = (e^{m_p - m} o_p + e^{m_s - m} o_s) / (e^{m_p - m} l_p + e^{m_s - m} l_s)

which equals softmax over the concatenated keys. The prefix block is computed for all R rows of a group
at once: their R x (query heads per kv head) queries stack into one matrix against the group's prefix
keys, so each prefix entry is read once per group per step (not once per row) and the product is a
matrix-matrix one. Everything else is `functional.decode_layers`, the body of `functional.decode_step`
(the same column layout and weights).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from star_jax.models.config import ModelConfig
from star_jax.models.functional import decode_layers
from star_jax.models.transformer import _NEG_INF, LayerCache


def _partial_softmax(logits_XxKxQxS: jax.Array, values_XxKxSxDh: jax.Array):
  """One block's (m, l, o): row max, sum of exp(z - m), and the unnormalised exp(z - m) @ v."""
  m_XxKxQx1 = jnp.max(logits_XxKxQxS, axis=-1, keepdims=True)
  e_XxKxQxS = jnp.exp(logits_XxKxQxS - m_XxKxQx1)
  l_XxKxQx1 = jnp.sum(e_XxKxQxS, axis=-1, keepdims=True)
  o_XxKxQxDh = jnp.einsum("XKQS,XKSE->XKQE", e_XxKxQxS.astype(values_XxKxSxDh.dtype), values_XxKxSxDh)
  return m_XxKxQx1, l_XxKxQx1, o_XxKxQxDh.astype(jnp.float32)


def cascade_attention(q_BxKxGxDh: jax.Array, prefix: LayerCache, prefix_bias_Gx1x1xP: jax.Array, suffix: LayerCache,
                      suffix_bias_1x1x1xS: jax.Array) -> jax.Array:
  """softmax over [prefix of the row's group; the row's suffix] of q k^T + bias, times v (see the module doc).

  q_BxKxGxDh: the G query heads of each of K kv heads, rows grouped (row b in group b // R); prefix:
  [n_groups, K, P, Dh] keys/values with prefix_bias (0 or -1e30 for padding); suffix: [B, K, S, Dh] with
  suffix_bias shared by all rows (0 for written slots). Both blocks must hold a visible key for every
  row. Returns out_BxKxGxDh in q's dtype.
  """
  b, k, gq, dh = q_BxKxGxDh.shape
  n_groups = prefix.k_BxKxSxDh.shape[0]
  r = b // n_groups
  # Prefix block: the R rows of a group stacked as R * gq query rows against the group's prefix keys.
  q_GxKxRQxDh = q_BxKxGxDh.reshape(n_groups, r, k, gq, dh).transpose(0, 2, 1, 3, 4).reshape(n_groups, k, r * gq, dh)
  logits_GxKxRQxP = jnp.einsum("GKQE,GKPE->GKQP", q_GxKxRQxDh, prefix.k_BxKxSxDh.astype(q_BxKxGxDh.dtype))
  logits_GxKxRQxP = logits_GxKxRQxP.astype(jnp.float32) + prefix_bias_Gx1x1xP
  m_p, l_p, o_p = _partial_softmax(logits_GxKxRQxP, prefix.v_BxKxSxDh.astype(q_BxKxGxDh.dtype))

  def per_row(x_GxKxRQxE):  # back to [B, K, gq, E]
    e = x_GxKxRQxE.shape[-1]
    return x_GxKxRQxE.reshape(n_groups, k, r, gq, e).transpose(0, 2, 1, 3, 4).reshape(b, k, gq, e)

  m_p, l_p, o_p = per_row(m_p), per_row(l_p), per_row(o_p)
  # Suffix block: each row against its own generated tokens.
  logits_BxKxGxS = jnp.einsum("BKQE,BKSE->BKQS", q_BxKxGxDh, suffix.k_BxKxSxDh.astype(q_BxKxGxDh.dtype))
  logits_BxKxGxS = logits_BxKxGxS.astype(jnp.float32) + suffix_bias_1x1x1xS
  m_s, l_s, o_s = _partial_softmax(logits_BxKxGxS, suffix.v_BxKxSxDh.astype(q_BxKxGxDh.dtype))
  m = jnp.maximum(m_p, m_s)
  scale_p, scale_s = jnp.exp(m_p - m), jnp.exp(m_s - m)
  return ((o_p * scale_p + o_s * scale_s) / (l_p * scale_p + l_s * scale_s)).astype(q_BxKxGxDh.dtype)


def decode_step_grouped(config: ModelConfig, dparams: dict, tokens_B: jax.Array, positions_B: jax.Array,
                        prefix_valid_GxP: jax.Array, prefix_caches: tuple[LayerCache, ...],
                        suffix_caches: tuple[LayerCache, ...], suffix_index: jax.Array):
  """`functional.decode_step` with the cache split into a shared prefix and per-row suffixes.

  Row b continues prompt b // R (R = B / G). Its new token is written at suffix slot `suffix_index`
  and attends to the valid slots of its group's prefix (prefix_valid_GxP) and to suffix slots
  0..suffix_index, merged by `cascade_attention`. dparams: from `functional.decode_params`.
  Returns (logits_BxV float32, new suffix caches); the prefix caches are only read.
  """
  b = tokens_B.shape[0]
  n_groups = prefix_valid_GxP.shape[0]
  if b % n_groups:
    raise ValueError(f"cascade.decode_step_grouped: {b} rows do not split into {n_groups} equal groups")
  s = suffix_caches[0].k_BxKxSxDh.shape[2]
  prefix_bias_Gx1x1xP = jnp.where(prefix_valid_GxP, 0.0, _NEG_INF).astype(jnp.float32)[:, None, None, :]
  suffix_bias_1x1x1xS = jnp.where(jnp.arange(s) <= suffix_index, 0.0, _NEG_INF).astype(jnp.float32)[None, None, None, :]

  def attend(i, q_BxKxGxDh, suffix):
    return cascade_attention(q_BxKxGxDh, prefix_caches[i], prefix_bias_Gx1x1xP, suffix, suffix_bias_1x1x1xS)

  return decode_layers(config, dparams, tokens_B, positions_B, suffix_caches, suffix_index, attend)
