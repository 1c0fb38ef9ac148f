"""Pure-functional entry points to the decoder LM: params in, arrays out.

    logits_BxTxV = forward(config, params, tokens_BxT)

`params` is a plain nested dict of arrays (no Flax boxes), so it can be sharded, checkpointed, imported
from Hugging Face and differentiated like any pytree.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from star_jax.models.config import ModelConfig
from star_jax.models.transformer import LayerCache, Transformer

Params = dict


def positions_from_segments(segment_ids_BxT: jax.Array) -> jax.Array:
  """Positions restarting at 0 at every new segment (packed rows); padding gets 0-based junk positions."""
  t = segment_ids_BxT.shape[1]
  index_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None, :], segment_ids_BxT.shape)
  previous_BxT = jnp.pad(segment_ids_BxT[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  is_start_BxT = segment_ids_BxT != previous_BxT
  start_BxT = jax.lax.cummax(jnp.where(is_start_BxT, index_BxT, 0), axis=1)
  return index_BxT - start_BxT


def segment_causal_mask(segment_ids_BxT: jax.Array) -> jax.Array:
  """mask[b, i, j] = j <= i and seg[b, i] == seg[b, j] != 0: causal within each packed example."""
  t = segment_ids_BxT.shape[1]
  causal_TxT = jnp.tril(jnp.ones((t, t), dtype=jnp.bool_))
  same_BxTxT = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  real_BxT = segment_ids_BxT != 0
  return causal_TxT[None] & same_BxTxT & real_BxT[:, None, :]


def _inputs(tokens_BxT, segment_ids_BxT, positions_BxT):
  if tokens_BxT.ndim != 2:
    raise ValueError(f"tokens must be int [batch, seq], got shape {tokens_BxT.shape}")
  if segment_ids_BxT is None:
    segment_ids_BxT = jnp.ones(tokens_BxT.shape, jnp.int32)
  if positions_BxT is None:
    positions_BxT = positions_from_segments(segment_ids_BxT)
  return positions_BxT, segment_causal_mask(segment_ids_BxT)


def forward_with_hidden(config: ModelConfig, params: Params, tokens_BxT: jax.Array, *,
                        segment_ids_BxT: jax.Array | None = None,
                        positions_BxT: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(logits_BxTxV float32, final-norm hidden states_BxTxD) — the hidden states feed reward heads.

  segment_ids_BxT: 0 marks padding, 1, 2, ... the examples packed into a row (default: one example).
  positions_BxT: rotary positions (default: restart at 0 for each segment).
  """
  positions_BxT, mask_BxTxT = _inputs(tokens_BxT, segment_ids_BxT, positions_BxT)
  logits, hidden, _ = Transformer(config).apply({"params": params}, tokens_BxT, positions_BxT, mask_BxTxT)
  return logits, hidden


def forward(config: ModelConfig, params: Params, tokens_BxT: jax.Array, *,
            segment_ids_BxT: jax.Array | None = None,
            positions_BxT: jax.Array | None = None) -> jax.Array:
  """tokens int32 [batch, seq] -> float32 logits [batch, seq, vocab]."""
  return forward_with_hidden(config, params, tokens_BxT, segment_ids_BxT=segment_ids_BxT,
                             positions_BxT=positions_BxT)[0]


def init_cache(config: ModelConfig, batch_size: int, max_len: int, dtype=None) -> tuple[LayerCache, ...]:
  """Zeroed per-layer key/value caches of shape [batch, max_len, n_kv_heads, head_dim]."""
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (batch_size, max_len, config.n_kv_heads, config.head_dim)
  return tuple(LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.n_layers))


def forward_cached(config: ModelConfig, params: Params, tokens_BxT: jax.Array, positions_BxT: jax.Array,
                   key_valid_BxS: jax.Array, caches: tuple[LayerCache, ...], cache_index: jax.Array):
  """Run T new tokens written at cache slots [cache_index, cache_index + T).

  Query t attends to cache slot s iff s <= cache_index + t and key_valid_BxS[b, s] (False for the
  padding slots of shorter, left-padded prompts). Returns (logits_BxTxV, hidden_BxTxD, new caches).
  """
  t, s = tokens_BxT.shape[1], key_valid_BxS.shape[1]
  query_slot_T = cache_index + jnp.arange(t)
  causal_TxS = jnp.arange(s)[None, :] <= query_slot_T[:, None]
  mask_BxTxS = causal_TxS[None] & key_valid_BxS[:, None, :]
  return Transformer(config).apply({"params": params}, tokens_BxT, positions_BxT, mask_BxTxS, caches,
                                   cache_index)


def init_boxed_params(config: ModelConfig, rng: jax.Array):
  """Initial parameters wrapped in flax `Partitioned` boxes that carry their logical axis names."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  positions = jnp.zeros((1, 1), jnp.int32)
  mask = jnp.ones((1, 1, 1), jnp.bool_)
  return Transformer(config).init(rng, tokens, positions, mask)["params"]


def init_params(config: ModelConfig, rng: jax.Array) -> Params:
  """Randomly initialised parameters as a plain nested dict."""
  return nn.unbox(init_boxed_params(config, rng))


@functools.lru_cache(maxsize=32)
def logical_axes(config: ModelConfig):
  """Pytree (same structure as params) of PartitionSpecs over logical axis names."""
  boxed = jax.eval_shape(functools.partial(init_boxed_params, config), jax.random.key(0))
  return nn.get_partition_spec(boxed)


def abstract_params(config: ModelConfig):
  """ShapeDtypeStructs of the parameters, without allocating them."""
  return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))


def count_params(params: Params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
