"""Pure-functional entry points to the decoder LM: params in, arrays out.

    logits_BxTxV = forward(config, params, tokens_BxT)

`params` is a plain nested dict of arrays (no Flax boxes), so it can be sharded, checkpointed, imported
from Hugging Face and differentiated like any pytree.
"""

from __future__ import annotations

import contextvars
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from star_jax.models.config import ModelConfig
from star_jax.models.transformer import _NEG_INF, LayerCache, Transformer, attention_core, band_fits, band_for, segment_offsets

# Packed rows: blocks of 32 queries attend to the 96 keys ending with their block when every example fits
# (examples of up to 65 tokens always do); see transformer.band_attention_core and benchmarks/RESULTS.md.
BAND_BLOCK, BAND_WINDOW = 32, 96
_ATTENTION = contextvars.ContextVar("star_jax_attention", default="dense")  # set while tracing, see cond_band_attention

Params = dict


def positions_from_segments(segment_ids_BxT: jax.Array) -> jax.Array:
  """Positions restarting at 0 at every new segment (packed rows); padding gets 0-based junk positions."""
  return segment_offsets(segment_ids_BxT)


def segment_causal_mask(segment_ids_BxT: jax.Array) -> jax.Array:
  """mask[b, i, j] = j <= i and seg[b, i] == seg[b, j] != 0: causal within each packed example."""
  t = segment_ids_BxT.shape[1]
  causal_TxT = jnp.tril(jnp.ones((t, t), dtype=jnp.bool_))
  same_BxTxT = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  real_BxT = segment_ids_BxT != 0
  return causal_TxT[None] & same_BxTxT & real_BxT[:, None, :]


def forward_with_hidden(config: ModelConfig, params: Params, tokens_BxT: jax.Array, *,
                        segment_ids_BxT: jax.Array | None = None,
                        positions_BxT: jax.Array | None = None,
                        attention: str | None = None) -> tuple[jax.Array, jax.Array]:
  """(logits_BxTxV float32, final-norm hidden states_BxTxD) — the hidden states feed reward heads.

  segment_ids_BxT: 0 marks padding, 1, 2, ... the examples packed into a row (default: one example).
  positions_BxT: rotary positions (default: restart at 0 for each segment).
  attention: "dense" (full masked [T, T] scores) or "band" (blocks of BAND_BLOCK queries see the
  BAND_WINDOW keys ending with their block: exact only where every example fits, so run it through
  `cond_band_attention`); default: "dense", or what an enclosing `cond_band_attention` traces.
  """
  if tokens_BxT.ndim != 2:
    raise ValueError(f"tokens must be int [batch, seq], got shape {tokens_BxT.shape}")
  attention = attention or _ATTENTION.get()
  if attention not in ("dense", "band"):
    raise ValueError(f"models.forward: attention must be 'dense' or 'band', got {attention!r}")
  if segment_ids_BxT is None:
    segment_ids_BxT = jnp.ones(tokens_BxT.shape, jnp.int32)
  if positions_BxT is None:
    positions_BxT = positions_from_segments(segment_ids_BxT)
  band = band_for(tokens_BxT.shape[1], BAND_BLOCK, BAND_WINDOW) if attention == "band" else None
  mask_BxTxT = None if band is not None else segment_causal_mask(segment_ids_BxT)
  logits, hidden, _ = Transformer(config).apply({"params": params}, tokens_BxT, positions_BxT, mask_BxTxT,
                                                segment_ids_BxT=segment_ids_BxT, band=band)
  return logits, hidden


def forward(config: ModelConfig, params: Params, tokens_BxT: jax.Array, *,
            segment_ids_BxT: jax.Array | None = None,
            positions_BxT: jax.Array | None = None,
            attention: str | None = None) -> jax.Array:
  """tokens int32 [batch, seq] -> float32 logits [batch, seq, vocab] (see `forward_with_hidden`)."""
  return forward_with_hidden(config, params, tokens_BxT, segment_ids_BxT=segment_ids_BxT,
                             positions_BxT=positions_BxT, attention=attention)[0]


def cond_band_attention(segment_ids_BxT: jax.Array | None, fn, *args):
  """fn(*args) with the model's attention on the band where every packed example fits in it, else dense.

  One `lax.cond` on `transformer.band_fits` around the whole of fn (e.g. a loss and its gradient, traced
  twice: once with attention="band", once "dense"), so nothing fn saves for its backward pass crosses
  the cond. Rows whose length the band does not divide, or no segment ids, run fn densely.
  """
  band = None if segment_ids_BxT is None else band_for(segment_ids_BxT.shape[1], BAND_BLOCK, BAND_WINDOW)
  if band is None:
    return fn(*args)

  def traced_with(attention):
    def run(*a):
      token = _ATTENTION.set(attention)
      try:
        return fn(*a)
      finally:
        _ATTENTION.reset(token)
    return run

  return jax.lax.cond(band_fits(segment_ids_BxT, band), traced_with("band"), traced_with("dense"), *args)


def init_cache(config: ModelConfig, batch_size: int, max_len: int, dtype=None) -> tuple[LayerCache, ...]:
  """Zeroed per-layer key/value caches of shape [batch, n_kv_heads, max_len, head_dim]."""
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (batch_size, config.n_kv_heads, max_len, config.head_dim)
  return tuple(LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.n_layers))


def forward_cached(config: ModelConfig, params: Params, tokens_BxT: jax.Array, positions_BxT: jax.Array,
                   key_valid_BxS: jax.Array, caches: tuple[LayerCache, ...], cache_index: jax.Array,
                   last_logits_only: bool = False):
  """Run T new tokens written at cache slots [cache_index, cache_index + T).

  Query t attends to cache slot s iff s <= cache_index + t and key_valid_BxS[b, s] (False for the
  padding slots of shorter, left-padded prompts). Returns (logits_BxTxV, hidden_BxTxD, new caches);
  with last_logits_only, logits_Bx1xV of the last position only (a sampler's prefill needs no more).
  """
  t, s = tokens_BxT.shape[1], key_valid_BxS.shape[1]
  query_slot_T = cache_index + jnp.arange(t)
  causal_TxS = jnp.arange(s)[None, :] <= query_slot_T[:, None]
  mask_BxTxS = causal_TxS[None] & key_valid_BxS[:, None, :]
  return Transformer(config).apply({"params": params}, tokens_BxT, positions_BxT, mask_BxTxS, caches,
                                   cache_index, last_logits_only)


# ---- one-token decode step (the sampler's inner loop) ----
#
# A [B, 1] step is a chain of matrix-vector-like products with only B rows. On XLA:CPU they run
# markedly faster as W [N, D] @ x [D, B] (the weights as the streamed left operand, the B activation
# columns as the small right operand) than as x [B, D] @ W [D, N]; see benchmarks/RESULTS.md. So the
# decode step keeps the residual stream as columns [D, B] and reads weights stored [out, in], prepared
# once by `decode_params` (outside the decode loop). Only attention works per row, on the shared
# [B, K, S, Dh] cache. Same maths as `forward_cached` for T = 1 (tests/test_models.py checks it).


def decode_params(config: ModelConfig, params: Params) -> dict:
  """The parameters rearranged for `decode_step`: matrices [out, in] in the compute dtype.

  Per layer: w_qkv [(H + 2K) Dh, D] (rows: q heads, then k heads, then v heads), optional b_qkv, w_o
  [D, H Dh], w_gate_up [2F, D] (gate rows, then up rows), w_down [D, F], and the two RMSNorm scales;
  plus the embedding [V, D], the final norm scale and w_out [V, D] (the embedding itself when tied).
  """
  dtype = jnp.dtype(config.dtype)
  d = config.d_model
  layers = []
  for i in range(config.n_layers):
    attn, mlp = params[f"layer_{i}"]["attn"], params[f"layer_{i}"]["mlp"]
    layer = {
        "attn_norm": params[f"layer_{i}"]["attn_norm"]["scale"],
        "mlp_norm": params[f"layer_{i}"]["mlp_norm"]["scale"],
        "w_qkv": jnp.concatenate([attn[n].reshape(d, -1) for n in ("q", "k", "v")], axis=1).T.astype(dtype),
        "w_o": attn["o"].reshape(-1, d).T.astype(dtype),
        "w_gate_up": jnp.concatenate([mlp["gate"], mlp["up"]], axis=1).T.astype(dtype),
        "w_down": mlp["down"].T.astype(dtype),
    }
    if config.qkv_bias:
      layer["b_qkv"] = jnp.concatenate([attn[n].reshape(-1) for n in ("q_bias", "k_bias", "v_bias")]).astype(dtype)
    layers.append(layer)
  w_out = params["embedding"] if config.tie_embeddings else params["lm_head"].T
  return {"embedding": params["embedding"], "layers": tuple(layers), "final_norm": params["final_norm"]["scale"],
          "w_out": w_out.astype(dtype)}


def _rms_norm_columns(x_DxB: jax.Array, scale_D: jax.Array, eps: float) -> jax.Array:
  """RMSNorm (Zhang & Sennrich 2019) of each column: x / sqrt(mean_d x_d^2 + eps) * scale, in float32."""
  x = x_DxB.astype(jnp.float32)
  normed = x * jax.lax.rsqrt(jnp.mean(x * x, axis=0, keepdims=True) + eps)
  return (normed * scale_D.astype(jnp.float32)[:, None]).astype(x_DxB.dtype)


def _rotary_columns(x_NxDhxB: jax.Array, cos_DhxB: jax.Array, sin_DhxB: jax.Array) -> jax.Array:
  """`transformer.apply_rotary` on column activations: x cos + rotate_half(x) sin along Dh."""
  x = x_NxDhxB.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=1)
  rotated = jnp.concatenate([-x2, x1], axis=1)
  return (x * cos_DhxB[None] + rotated * sin_DhxB[None]).astype(x_NxDhxB.dtype)


def decode_layers(config: ModelConfig, dparams: dict, tokens_B: jax.Array, positions_B: jax.Array,
                  caches: tuple[LayerCache, ...], cache_index: jax.Array, attend):
  """The one-token decode step with its attention left to `attend` (shared by `decode_step` and
  `cascade.decode_step_grouped`).

  Per layer i: RMSNorm, the fused qkv product, rotary q and k (q scaled by Dh^-1/2), this step's key and
  value written at slot `cache_index` of caches[i], then out_BxKxGxDh = attend(i, q_BxKxGxDh, new cache i)
  (the G query heads of each of K kv heads), the output projection and the SwiGLU MLP, both residual.
  dparams: from `decode_params`. Returns (logits_BxV float32, new caches).
  """
  dtype = jnp.dtype(config.dtype)
  h, k, dh = config.n_heads, config.n_kv_heads, config.head_dim
  b = tokens_B.shape[0]
  x_DxB = jnp.take(dparams["embedding"], tokens_B, axis=0).astype(dtype).T
  inv_freq_F = 1.0 / (config.rope_theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
  angles_FxB = inv_freq_F[:, None] * positions_B.astype(jnp.float32)[None, :]
  angles_DhxB = jnp.concatenate([angles_FxB, angles_FxB], axis=0)
  cos_DhxB, sin_DhxB = jnp.cos(angles_DhxB), jnp.sin(angles_DhxB)
  new_caches = []
  for i, (layer, cache) in enumerate(zip(dparams["layers"], caches)):
    normed_DxB = _rms_norm_columns(x_DxB, layer["attn_norm"], config.norm_eps)
    qkv_NxB = jnp.dot(layer["w_qkv"], normed_DxB)
    if "b_qkv" in layer:
      qkv_NxB = qkv_NxB + layer["b_qkv"][:, None]
    q_HxDhxB = qkv_NxB[:h * dh].reshape(h, dh, b)
    k_KxDhxB = qkv_NxB[h * dh:(h + k) * dh].reshape(k, dh, b)
    v_KxDhxB = qkv_NxB[(h + k) * dh:].reshape(k, dh, b)
    q_HxDhxB = _rotary_columns(q_HxDhxB, cos_DhxB, sin_DhxB) * jnp.asarray(dh ** -0.5, dtype)
    k_KxDhxB = _rotary_columns(k_KxDhxB, cos_DhxB, sin_DhxB)
    start = (0, 0, cache_index, 0)
    keys_BxKxSxDh = jax.lax.dynamic_update_slice(
        cache.k_BxKxSxDh, k_KxDhxB.transpose(2, 0, 1)[:, :, None, :].astype(cache.k_BxKxSxDh.dtype), start)
    values_BxKxSxDh = jax.lax.dynamic_update_slice(
        cache.v_BxKxSxDh, v_KxDhxB.transpose(2, 0, 1)[:, :, None, :].astype(cache.v_BxKxSxDh.dtype), start)
    new_caches.append(LayerCache(keys_BxKxSxDh, values_BxKxSxDh))
    q_BxKxGxDh = q_HxDhxB.reshape(k, h // k, dh, b).transpose(3, 0, 1, 2)
    out_BxKxGxDh = attend(i, q_BxKxGxDh, new_caches[-1])
    out_HDhxB = out_BxKxGxDh.transpose(1, 2, 3, 0).reshape(h * dh, b)
    x_DxB = x_DxB + jnp.dot(layer["w_o"], out_HDhxB)
    normed_DxB = _rms_norm_columns(x_DxB, layer["mlp_norm"], config.norm_eps)
    gate_up_2FxB = jnp.dot(layer["w_gate_up"], normed_DxB)
    gate_FxB, up_FxB = jnp.split(gate_up_2FxB, 2, axis=0)
    x_DxB = x_DxB + jnp.dot(layer["w_down"], jax.nn.silu(gate_FxB) * up_FxB)
  hidden_DxB = _rms_norm_columns(x_DxB, dparams["final_norm"], config.norm_eps)
  logits_VxB = jax.lax.optimization_barrier(jnp.dot(dparams["w_out"], hidden_DxB))  # keeps the dot un-transposed
  return logits_VxB.T.astype(jnp.float32), tuple(new_caches)


def decode_step(config: ModelConfig, dparams: dict, tokens_B: jax.Array, positions_B: jax.Array,
                key_valid_BxS: jax.Array, caches: tuple[LayerCache, ...], cache_index: jax.Array):
  """One new token per row, written at cache slot `cache_index`: `forward_cached` for T = 1.

  dparams: from `decode_params`. The token attends to slots s <= cache_index with key_valid_BxS[b, s].
  Returns (logits_BxV float32, new caches).
  """
  dtype = jnp.dtype(config.dtype)
  s = key_valid_BxS.shape[1]
  visible_BxS = key_valid_BxS & (jnp.arange(s) <= cache_index)[None, :]
  bias_Bx1x1xS = jnp.where(visible_BxS, 0.0, _NEG_INF).astype(jnp.float32)[:, None, None, :]

  def attend(_, q_BxKxGxDh, cache):
    return attention_core(q_BxKxGxDh, cache.k_BxKxSxDh.astype(dtype), cache.v_BxKxSxDh.astype(dtype), bias_Bx1x1xS)

  return decode_layers(config, dparams, tokens_B, positions_B, caches, cache_index, attend)


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
