"""Decoder-only causal LM in Flax (Llama 2/3 and Qwen2 family).

Token embedding -> n_layers x [RMSNorm -> grouped-query attention with rotary positions -> residual,
RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> vocabulary projection (optionally tied).

Shapes: B batch, T query length, S key length (T, or the KV-cache length), D d_model, H query heads,
K key/value heads, G = H // K queries per kv head, Dh head_dim, F d_ff, V vocab.

Parameters carry logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`) and
activations are constrained with logical names (`batch`, `length`, `act_embed`, ...); sharding.py maps
both onto mesh axes. The module contains no mesh code.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from star_jax import sharding
from star_jax.models.config import ModelConfig

_NEG_INF = -1e30  # finite, so fully masked rows give a uniform (not NaN) softmax


class LayerCache(NamedTuple):
  """One layer's key/value cache: [B, S, K, Dh] each."""

  k_BxSxKxDh: jax.Array
  v_BxSxKxDh: jax.Array


def _dtype(name: str):
  return jnp.dtype(name)


def _param(module: nn.Module, name: str, init, shape, axes, cfg: ModelConfig):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, _dtype(cfg.param_dtype))


@jax.custom_vjp
def dense(x_MxK: jax.Array, w_KxN: jax.Array) -> jax.Array:
  """x @ w for 2-D operands, with a backward pass laid out for XLA:CPU.

  The weight gradient x^T dy contracts over the M = B*T rows. Left to autodiff, XLA:CPU materialises
  that contraction by transposing the *wide* operand (e.g. the [M, d_ff] SwiGLU gradient) inside a slow
  strided loop fusion. Here the narrower operand is transposed explicitly, behind an optimization
  barrier so XLA cannot fold the transpose back into the dot, and dW is a plain row-major GEMM.
  """
  return jnp.dot(x_MxK, w_KxN)


def _dense_fwd(x_MxK, w_KxN):
  return jnp.dot(x_MxK, w_KxN), (x_MxK, w_KxN)


def _dense_bwd(residuals, dy_MxN):
  x_MxK, w_KxN = residuals
  dx_MxK = jnp.dot(dy_MxN, w_KxN.T)
  if x_MxK.shape[1] <= dy_MxN.shape[1]:
    dw_KxN = jnp.dot(jax.lax.optimization_barrier(x_MxK.T), dy_MxN)
  else:
    dw_KxN = jnp.dot(jax.lax.optimization_barrier(dy_MxN.T), x_MxK).T
  return dx_MxK, dw_KxN


dense.defvjp(_dense_fwd, _dense_bwd)


def rotary_embedding(x_BxTxNxDh: jax.Array, positions_BxT: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding (Su et al. 2021, arXiv 2104.09864), HF "rotate_half" layout.

  x' = x * cos(p * w) + rotate_half(x) * sin(p * w), with w_i = theta^(-2i / Dh) for i < Dh/2 and the
  two halves of the head dimension forming the rotated pairs (matches Llama/Qwen2 in transformers).
  """
  head_dim = x_BxTxNxDh.shape[-1]
  inv_freq_F = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_BxTxF = positions_BxT.astype(jnp.float32)[:, :, None] * inv_freq_F[None, None, :]
  angles_BxTx1xDh = jnp.concatenate([angles_BxTxF, angles_BxTxF], axis=-1)[:, :, None, :]
  x = x_BxTxNxDh.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  out = x * jnp.cos(angles_BxTx1xDh) + rotated * jnp.sin(angles_BxTx1xDh)
  return out.astype(x_BxTxNxDh.dtype)


class RMSNorm(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    scale_D = _param(self, "scale", nn.initializers.ones, (self.cfg.d_model,), ("embed",), self.cfg)
    x = x_BxTxD.astype(jnp.float32)
    normed = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.cfg.norm_eps)
    return (normed * scale_D.astype(jnp.float32)[None, None, :]).astype(x_BxTxD.dtype)


class Attention(nn.Module):
  """Grouped-query self-attention (Ainslie et al. 2023) with an optional KV cache."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, cache: LayerCache | None = None,
               cache_index: jax.Array | None = None):
    cfg = self.cfg
    d, h, k, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    init = nn.initializers.normal(stddev=d ** -0.5)
    wq_DxHxDh = _param(self, "q", init, (d, h, dh), ("embed", "heads", "head_dim"), cfg)
    wk_DxKxDh = _param(self, "k", init, (d, k, dh), ("embed", "kv_heads", "head_dim"), cfg)
    wv_DxKxDh = _param(self, "v", init, (d, k, dh), ("embed", "kv_heads", "head_dim"), cfg)
    wo_HxDhxD = _param(self, "o", nn.initializers.normal(stddev=(h * dh) ** -0.5 / (2 * cfg.n_layers) ** 0.5),
                       (h, dh, d), ("heads", "head_dim", "embed"), cfg)
    dtype = _dtype(cfg.dtype)
    b, t = x_BxTxD.shape[:2]
    x_MxD = x_BxTxD.reshape(b * t, d).astype(dtype)
    q_BxTxHxDh = dense(x_MxD, wq_DxHxDh.reshape(d, h * dh).astype(dtype)).reshape(b, t, h, dh)
    k_BxTxKxDh = dense(x_MxD, wk_DxKxDh.reshape(d, k * dh).astype(dtype)).reshape(b, t, k, dh)
    v_BxTxKxDh = dense(x_MxD, wv_DxKxDh.reshape(d, k * dh).astype(dtype)).reshape(b, t, k, dh)
    if cfg.qkv_bias:
      zeros = nn.initializers.zeros
      q_BxTxHxDh += _param(self, "q_bias", zeros, (h, dh), ("heads", "head_dim"), cfg).astype(dtype)[None, None]
      k_BxTxKxDh += _param(self, "k_bias", zeros, (k, dh), ("kv_heads", "head_dim"), cfg).astype(dtype)[None, None]
      v_BxTxKxDh += _param(self, "v_bias", zeros, (k, dh), ("kv_heads", "head_dim"), cfg).astype(dtype)[None, None]
    q_BxTxHxDh = rotary_embedding(q_BxTxHxDh, positions_BxT, cfg.rope_theta)
    k_BxTxKxDh = rotary_embedding(k_BxTxKxDh, positions_BxT, cfg.rope_theta)

    new_cache = None
    if cache is not None:
      start = (0, cache_index, 0, 0)
      keys_BxSxKxDh = jax.lax.dynamic_update_slice(cache.k_BxSxKxDh, k_BxTxKxDh.astype(cache.k_BxSxKxDh.dtype), start)
      values_BxSxKxDh = jax.lax.dynamic_update_slice(cache.v_BxSxKxDh, v_BxTxKxDh.astype(cache.v_BxSxKxDh.dtype), start)
      new_cache = LayerCache(keys_BxSxKxDh, values_BxSxKxDh)
      keys_BxSxKxDh, values_BxSxKxDh = keys_BxSxKxDh.astype(dtype), values_BxSxKxDh.astype(dtype)
    else:
      keys_BxSxKxDh, values_BxSxKxDh = k_BxTxKxDh, v_BxTxKxDh

    q_BxTxKxGxDh = q_BxTxHxDh.reshape(b, t, k, h // k, dh) * (dh ** -0.5)
    logits_BxKxGxTxS = jnp.einsum("BTKGE,BSKE->BKGTS", q_BxTxKxGxDh, keys_BxSxKxDh).astype(jnp.float32)
    logits_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None, :, :], logits_BxKxGxTxS, _NEG_INF)
    probs_BxKxGxTxS = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).astype(dtype)
    out_BxTxKxGxDh = jnp.einsum("BKGTS,BSKE->BTKGE", probs_BxKxGxTxS, values_BxSxKxDh)
    out_MxHDh = out_BxTxKxGxDh.reshape(b * t, h * dh)
    out_BxTxD = dense(out_MxHDh, wo_HxDhxD.reshape(h * dh, d).astype(dtype)).reshape(b, t, d)
    return out_BxTxD, new_cache


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x)) (Shazeer 2020, arXiv 2002.05202)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD):
    cfg = self.cfg
    d, f = cfg.d_model, cfg.d_ff
    w_gate_DxF = _param(self, "gate", nn.initializers.normal(stddev=d ** -0.5), (d, f), ("embed", "mlp"), cfg)
    w_up_DxF = _param(self, "up", nn.initializers.normal(stddev=d ** -0.5), (d, f), ("embed", "mlp"), cfg)
    w_down_FxD = _param(self, "down", nn.initializers.normal(stddev=f ** -0.5 / (2 * cfg.n_layers) ** 0.5),
                        (f, d), ("mlp", "embed"), cfg)
    dtype = _dtype(cfg.dtype)
    b, t = x_BxTxD.shape[:2]
    x_MxD = x_BxTxD.reshape(b * t, d).astype(dtype)
    gate_MxF = dense(x_MxD, w_gate_DxF.astype(dtype))
    up_MxF = dense(x_MxD, w_up_DxF.astype(dtype))
    hidden_BxTxF = sharding.constrain((jax.nn.silu(gate_MxF) * up_MxF).reshape(b, t, f), ("batch", "length", "act_mlp"))
    return dense(hidden_BxTxF.reshape(b * t, f), w_down_FxD.astype(dtype)).reshape(b, t, d)


class Block(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, cache=None, cache_index=None):
    attn_out_BxTxD, new_cache = Attention(self.cfg, name="attn")(
        RMSNorm(self.cfg, name="attn_norm")(x_BxTxD), positions_BxT, mask_BxTxS, cache, cache_index)
    x_BxTxD = x_BxTxD + attn_out_BxTxD
    x_BxTxD = x_BxTxD + SwiGLU(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x_BxTxD))
    return sharding.constrain(x_BxTxD, ("batch", "length", "act_embed")), new_cache


class Transformer(nn.Module):
  """Returns (logits_BxTxV float32, final hidden states_BxTxD, new per-layer caches or None)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxT, positions_BxT, mask_BxTxS, caches=None, cache_index=None):
    cfg = self.cfg
    embedding_VxD = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                           (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg)
    x_BxTxD = jnp.take(embedding_VxD, tokens_BxT, axis=0).astype(_dtype(cfg.dtype))
    x_BxTxD = sharding.constrain(x_BxTxD, ("batch", "length", "act_embed"))
    new_caches = []
    for i in range(cfg.n_layers):
      layer_cache = None if caches is None else caches[i]
      x_BxTxD, new_cache = Block(cfg, name=f"layer_{i}")(x_BxTxD, positions_BxT, mask_BxTxS, layer_cache, cache_index)
      new_caches.append(new_cache)
    hidden_BxTxD = RMSNorm(cfg, name="final_norm")(x_BxTxD)
    if cfg.tie_embeddings:
      w_out_DxV = embedding_VxD.T
    else:
      w_out_DxV = _param(self, "lm_head", nn.initializers.normal(stddev=cfg.d_model ** -0.5),
                         (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg)
    logits_BxTxV = jnp.einsum("BTD,DV->BTV", hidden_BxTxD, w_out_DxV.astype(hidden_BxTxD.dtype))
    logits_BxTxV = sharding.constrain(logits_BxTxV.astype(jnp.float32), ("batch", "length", "act_vocab"))
    return logits_BxTxV, hidden_BxTxD, (None if caches is None else tuple(new_caches))
