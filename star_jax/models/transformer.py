"""Decoder-only causal LM in Flax (Llama 2/3 and Qwen2 family).

Token embedding -> n_layers x [RMSNorm -> grouped-query attention with rotary positions -> residual,
RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> vocabulary projection (optionally tied).

Shapes: B batch, T query length, S key length (T, or the KV-cache length), D d_model, H query heads,
K key/value heads, G = H // K queries per kv head, Dh head_dim, F d_ff, V vocab, M = B*T flattened rows.

Parameters carry logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `mlp`) and
activations are constrained with logical names (`batch`, `length`, `act_embed`, ...); sharding.py maps
both onto mesh axes. The module contains no mesh code.

Performance (XLA:CPU, see benchmarks/RESULTS.md): projections run as 2-D matmuls on [M, D] rows; the
SwiGLU MLP and the attention core have hand-written backward passes (`swiglu`, `attention_core`) that
save only what they need and lay out every weight-gradient contraction as a plain row-major GEMM.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from star_jax import sharding
from star_jax.models.config import ModelConfig

_NEG_INF = -1e30  # finite, so fully masked rows give a uniform (not NaN) softmax


class LayerCache(NamedTuple):
  """One layer's key/value cache: [B, K, S, Dh] each, the layout the attention matmuls read directly."""

  k_BxKxSxDh: jax.Array
  v_BxKxSxDh: jax.Array


def _dtype(name: str):
  return jnp.dtype(name)


def _param(module: nn.Module, name: str, init, shape, axes, cfg: ModelConfig):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, _dtype(cfg.param_dtype))


# ---- matmuls with XLA:CPU-friendly backward passes ----

def _after(x_MxK: jax.Array, cotangent_MxN: jax.Array) -> jax.Array:
  """x, made data-dependent on the backward pass's cotangent (row by row, so no collective is needed).

  XLA:CPU hoists backward-pass work that depends only on forward values (recomputed activations,
  transposed inputs) into the forward pass, where it stays alive as extra residuals in the step's
  temporary buffer, which is freshly page-faulted every step. The dependency keeps that work in the
  backward pass; optimization barriers do not, as XLA:CPU removes them before scheduling. Exact for
  finite cotangents: XLA does not fold x * 0 for floats.
  """
  return x_MxK + 0.0 * cotangent_MxN[..., :1].astype(x_MxK.dtype)


def _matmul_tn(a_MxK: jax.Array, b_MxN: jax.Array) -> jax.Array:
  """a^T b ([K, N]), contracting the M rows of both operands.

  Left to itself XLA:CPU transposes the *wider* operand for this contraction, inside a slow strided loop
  fusion (e.g. the [M, d_ff] SwiGLU gradient: ~90 ms of a 1.7 s step per layer). Here the narrower
  operand is transposed explicitly, behind an optimization barrier so XLA cannot fold the transpose back
  into the dot, which leaves a plain row-major GEMM.
  """
  if a_MxK.shape[1] <= b_MxN.shape[1]:
    return jnp.dot(jax.lax.optimization_barrier(_after(a_MxK, b_MxN).T), b_MxN)
  return jax.lax.optimization_barrier(jnp.dot(jax.lax.optimization_barrier(b_MxN.T), _after(a_MxK, b_MxN))).T


@jax.custom_vjp
def dense(x_MxK: jax.Array, w_KxN: jax.Array) -> jax.Array:
  """x @ w on flattened rows; the weight gradient uses `_matmul_tn`."""
  return jnp.dot(x_MxK, w_KxN)


dense.defvjp(lambda x_MxK, w_KxN: (jnp.dot(x_MxK, w_KxN), (x_MxK, w_KxN)),
             lambda res, dy_MxN: (jnp.dot(dy_MxN, res[1].T), _matmul_tn(res[0], dy_MxN)))


@jax.custom_vjp
def swiglu(x_MxD, w_gate_DxF, w_up_DxF, w_down_FxD):
  """down(silu(x gate) * (x up)) (Shazeer 2020, arXiv 2002.05202) on flattened rows.

  The backward pass saves only x, gate and up (silu and the hidden product are recomputed in the same
  elementwise pass that forms their gradients), which keeps the step's temporary memory, and with it
  the per-step page faults of XLA:CPU's freshly mapped temp buffer, small.
  """
  return _swiglu_fwd(x_MxD, w_gate_DxF, w_up_DxF, w_down_FxD)[0]


def _swiglu_fwd(x_MxD, w_gate_DxF, w_up_DxF, w_down_FxD):
  gate_MxF, up_MxF = jnp.dot(x_MxD, w_gate_DxF), jnp.dot(x_MxD, w_up_DxF)
  hidden_MxF = sharding.constrain(jax.nn.silu(gate_MxF) * up_MxF, ("batch", "act_mlp"))
  return jnp.dot(hidden_MxF, w_down_FxD), (x_MxD, gate_MxF, up_MxF, w_gate_DxF, w_up_DxF, w_down_FxD)


def _swiglu_bwd(residuals, dout_MxD):
  x_MxD, gate_MxF, up_MxF, w_gate_DxF, w_up_DxF, w_down_FxD = residuals
  x_MxD, gate_MxF, up_MxF = (_after(a, dout_MxD) for a in (x_MxD, gate_MxF, up_MxF))
  # sigmoid via tanh: a different expression from the forward's jax.nn.silu, so that XLA does not CSE
  # the two and keep the forward's sigmoid and silu alive (as extra [M, F] buffers) until here.
  sigmoid_MxF = 0.5 * jnp.tanh(0.5 * gate_MxF) + 0.5
  silu_MxF = gate_MxF * sigmoid_MxF
  dhidden_MxF = jnp.dot(dout_MxD, w_down_FxD.T)
  dgate_MxF = dhidden_MxF * up_MxF * (sigmoid_MxF + silu_MxF * (1 - sigmoid_MxF))
  dup_MxF = dhidden_MxF * silu_MxF
  dx_MxD = jnp.dot(dgate_MxF, w_gate_DxF.T) + jnp.dot(dup_MxF, w_up_DxF.T)
  x_DxM = jax.lax.optimization_barrier(x_MxD.T)  # shared by both weight gradients, see _matmul_tn
  return (dx_MxD, jnp.dot(x_DxM, dgate_MxF), jnp.dot(x_DxM, dup_MxF), _matmul_tn(silu_MxF * up_MxF, dout_MxD))


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


@jax.custom_vjp
def attention_core(q_BxKxQxDh, k_BxKxSxDh, v_BxKxSxDh, bias_Bx1xTxS):
  """softmax(q k^T + bias) v per kv head, the G query heads of a kv head stacked as Q = G*T rows.

  4-D batched matmuls, float32 softmax; the backward pass saves the probabilities (not the masked
  logits) and forms dS = P * (dP - rowsum(P * dP)) in one elementwise pass."""
  return _attention_fwd(q_BxKxQxDh, k_BxKxSxDh, v_BxKxSxDh, bias_Bx1xTxS)[0]


def _attention_fwd(q_BxKxQxDh, k_BxKxSxDh, v_BxKxSxDh, bias_Bx1xTxS):
  b, k, q_len, s = *q_BxKxQxDh.shape[:3], k_BxKxSxDh.shape[2]
  logits_BxKxQxS = jnp.einsum("BKQE,BKSE->BKQS", q_BxKxQxDh, k_BxKxSxDh).astype(jnp.float32)
  logits_BxKxGxTxS = logits_BxKxQxS.reshape(b, k, -1, bias_Bx1xTxS.shape[2], s) + bias_Bx1xTxS[:, :, None]
  probs_BxKxQxS = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).reshape(b, k, q_len, s).astype(v_BxKxSxDh.dtype)
  out_BxKxQxDh = jnp.einsum("BKQS,BKSE->BKQE", probs_BxKxQxS, v_BxKxSxDh)
  return out_BxKxQxDh, (q_BxKxQxDh, k_BxKxSxDh, v_BxKxSxDh, probs_BxKxQxS, bias_Bx1xTxS)


def _attention_bwd(residuals, dout_BxKxQxDh):
  q_BxKxQxDh, k_BxKxSxDh, v_BxKxSxDh, probs_BxKxQxS, bias_Bx1xTxS = residuals
  dprobs_BxKxQxS = jnp.einsum("BKQE,BKSE->BKQS", dout_BxKxQxDh, v_BxKxSxDh).astype(jnp.float32)
  probs = probs_BxKxQxS.astype(jnp.float32)
  dlogits_BxKxQxS = (probs * (dprobs_BxKxQxS - jnp.sum(probs * dprobs_BxKxQxS, -1, keepdims=True))
                     ).astype(q_BxKxQxDh.dtype)
  dq_BxKxQxDh = jnp.einsum("BKQS,BKSE->BKQE", dlogits_BxKxQxS, k_BxKxSxDh)
  dk_BxKxSxDh = jnp.einsum("BKQS,BKQE->BKSE", dlogits_BxKxQxS, q_BxKxQxDh)
  dv_BxKxSxDh = jnp.einsum("BKQS,BKQE->BKSE", probs_BxKxQxS, dout_BxKxQxDh)
  return dq_BxKxQxDh, dk_BxKxSxDh, dv_BxKxSxDh, jnp.zeros_like(bias_Bx1xTxS)


attention_core.defvjp(_attention_fwd, _attention_bwd)


# ---- attention over packed rows of short examples: a band of key blocks ----
#
# A packed row holds several examples (segment ids 1, 2, ..; 0 = padding) and a token attends only to the
# earlier tokens of its own example. The dense path above forms all [T, T] scores of a row, most of them
# masked when the examples are short. `band_attention_core` cuts the row into query blocks of C tokens and
# lets query block n attend to key blocks n - m + 1 .. n only: T * m * C scores instead of T * T. That is
# exact whenever every example fits in the band, which the model checks at run time from the segment ids
# (`band_fits`); `functional.cond_band_attention` then runs a whole computation (e.g. a loss and its
# gradient) with the band, and otherwise with the dense path: one `lax.cond` around the computation, so no
# residual crosses it (a per-layer cond would make each branch write zeros for the other's saved scores).
# The softmax sums over the band instead of the
# row; the entries left out are masked (exp(-1e30 - max) = 0), so results match the dense path up to float
# summation order. Only padding queries (segment 0, which see no key) differ: their uniform average runs
# over the band. Nothing reads those (no real query attends to a padding key and the loss masks padding),
# so losses and gradients are unchanged.
#
# On XLA:CPU a batched dot contracting a non-minor dimension of either operand (q k^T, dS^T q, ...) runs
# 1.5-2x slower than a plain row-major one for these small tiles (32 x 32 x 96, measured), so every dot
# here is [.., M, K] x [.., K, N]: k and v are also kept transposed ([Dh, C] per block) and q / dO are
# transposed in the backward pass; those transposes touch T * Dh values, the scores T * m * C.


def segment_offsets(segment_ids_BxT: jax.Array) -> jax.Array:
  """i - (first index of i's segment): positions restarting at 0 at every new segment of a packed row."""
  t = segment_ids_BxT.shape[1]
  index_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None, :], segment_ids_BxT.shape)
  previous_BxT = jnp.pad(segment_ids_BxT[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  is_start_BxT = segment_ids_BxT != previous_BxT
  start_BxT = jax.lax.cummax(jnp.where(is_start_BxT, index_BxT, 0), axis=1)
  return index_BxT - start_BxT


class Band(NamedTuple):
  """Static band shape: query/key blocks of `block` tokens, each query block sees `blocks` key blocks."""

  block: int
  blocks: int


def band_for(t: int, block: int, window: int) -> Band | None:
  """The band for rows of t tokens (window = blocks * block tokens per query block), or None where it saves nothing."""
  if block <= 0 or t % block or window % block or window >= t:
    return None
  return Band(block, window // block)


def band_fits(segment_ids_BxT: jax.Array, band: Band) -> jax.Array:
  """True iff every real token's example lies in its band: offset_i <= (i mod C) + (m - 1) C."""
  slack_T = jnp.arange(segment_ids_BxT.shape[1], dtype=jnp.int32) % band.block
  reach_BxT = slack_T[None, :] + (band.blocks - 1) * band.block
  return jnp.all((segment_ids_BxT == 0) | (segment_offsets(segment_ids_BxT) <= reach_BxT))


def band_bias(segment_ids_BxT: jax.Array, band: Band) -> jax.Array:
  """Additive float32 mask [B, N, 1, C, m C]: 0 where key j (block n - m + 1 + j // C) is visible to query i
  (same nonzero segment, j <= i), else -1e30. Key blocks before the row's start are padding (segment 0)."""
  b, t = segment_ids_BxT.shape
  c, m = band
  nq = t // c
  query_NxCx1 = np.arange(nq)[:, None, None] * c + np.arange(c)[None, :, None]
  key_Nx1xS = ((np.arange(nq)[:, None] - m + 1) * c + np.arange(m * c)[None, :])[:, None, :]
  padded_BxP = jnp.pad(segment_ids_BxT, ((0, 0), ((m - 1) * c, 0)))
  key_seg_BxNxS = jnp.stack([padded_BxP[:, n * c:n * c + m * c] for n in range(nq)], axis=1)
  query_seg_BxNxCx1 = segment_ids_BxT.reshape(b, nq, c)[:, :, :, None]
  visible = (jnp.asarray(key_Nx1xS <= query_NxCx1)[None] & (key_seg_BxNxS[:, :, None, :] == query_seg_BxNxCx1)
             & (key_seg_BxNxS[:, :, None, :] != 0))
  return jnp.where(visible, 0.0, _NEG_INF).astype(jnp.float32)[:, :, None]


def _band_windows(x_BxNxKxExC: jax.Array, m: int) -> jax.Array:
  """[B, N, K, E, m C]: for each block n, blocks n - m + 1 .. n side by side along the last axis (zeros before 0)."""
  padded = jnp.pad(x_BxNxKxExC, ((0, 0), (m - 1, 0), (0, 0), (0, 0), (0, 0)))
  n = x_BxNxKxExC.shape[1]
  return jnp.concatenate([padded[:, j:j + n] for j in range(m)], axis=-1)


def _band_unwindow(x_BxNxKxExS: jax.Array, m: int) -> jax.Array:
  """Adjoint of `_band_windows`: window slot j of block n adds into block n - m + 1 + j."""
  n, c = x_BxNxKxExS.shape[1], x_BxNxKxExS.shape[-1] // m
  out = jnp.zeros(x_BxNxKxExS.shape[:1] + (n + m - 1,) + x_BxNxKxExS.shape[2:-1] + (c,), x_BxNxKxExS.dtype)
  for j in range(m):
    out = out.at[:, j:j + n].add(x_BxNxKxExS[..., j * c:(j + 1) * c])
  return out[:, m - 1:]


def _transposed(x):  # [.., A, B] -> [.., B, A] as a real copy: XLA may not fold it back into a dot
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def band_attention_core(q_BxNxKxQxDh, kt_BxNxKxDhxC, vt_BxNxKxDhxC, bias_BxNx1xCxS, m):
  """softmax(q k^T + bias) v where query block n sees key blocks n - m + 1 .. n (S = m C keys).

  The G query heads of a kv head are stacked as Q = G*C rows per block; keys and values come transposed
  ([Dh, C] per block). Saves the probabilities; dS = P * (dP - rowsum(P * dP)) as in `attention_core`.
  """
  return _band_fwd(q_BxNxKxQxDh, kt_BxNxKxDhxC, vt_BxNxKxDhxC, bias_BxNx1xCxS, m)[0]


def _band_fwd(q_BxNxKxQxDh, kt_BxNxKxDhxC, vt_BxNxKxDhxC, bias_BxNx1xCxS, m):
  b, n, kh, q_len, _ = q_BxNxKxQxDh.shape
  c = kt_BxNxKxDhxC.shape[-1]
  logits = jnp.einsum("BNKQE,BNKES->BNKQS", q_BxNxKxQxDh, _band_windows(kt_BxNxKxDhxC, m)).astype(jnp.float32)
  logits_BxNxKxGxCxS = logits.reshape(b, n, kh, q_len // c, c, m * c) + bias_BxNx1xCxS[:, :, :, None]
  probs_BxNxKxQxS = jax.nn.softmax(logits_BxNxKxGxCxS, axis=-1).reshape(b, n, kh, q_len, m * c).astype(vt_BxNxKxDhxC.dtype)
  values_BxNxKxSxDh = _transposed(_band_windows(vt_BxNxKxDhxC, m))
  out_BxNxKxQxDh = jnp.einsum("BNKQS,BNKSE->BNKQE", probs_BxNxKxQxS, values_BxNxKxSxDh)
  return out_BxNxKxQxDh, (q_BxNxKxQxDh, kt_BxNxKxDhxC, vt_BxNxKxDhxC, probs_BxNxKxQxS)


def _band_bwd(m, residuals, dout_BxNxKxQxDh):
  q_BxNxKxQxDh, kt_BxNxKxDhxC, vt_BxNxKxDhxC, probs_BxNxKxQxS = residuals
  # see `_after`: one cotangent value per [B, N, K] tile keeps this work in the backward pass
  q_BxNxKxQxDh, kt_BxNxKxDhxC, vt_BxNxKxDhxC = (x + 0.0 * dout_BxNxKxQxDh[..., :1, :1] for x in (
      q_BxNxKxQxDh, kt_BxNxKxDhxC, vt_BxNxKxDhxC))
  dprobs = jnp.einsum("BNKQE,BNKES->BNKQS", dout_BxNxKxQxDh, _band_windows(vt_BxNxKxDhxC, m)).astype(jnp.float32)
  probs = probs_BxNxKxQxS.astype(jnp.float32)
  dlogits_BxNxKxQxS = (probs * (dprobs - jnp.sum(probs * dprobs, -1, keepdims=True))).astype(q_BxNxKxQxDh.dtype)
  keys_BxNxKxSxDh = _transposed(_band_windows(kt_BxNxKxDhxC, m))
  dq_BxNxKxQxDh = jnp.einsum("BNKQS,BNKSE->BNKQE", dlogits_BxNxKxQxS, keys_BxNxKxSxDh)
  dkt_BxNxKxDhxS = jnp.einsum("BNKEQ,BNKQS->BNKES", _transposed(q_BxNxKxQxDh), dlogits_BxNxKxQxS)
  dvt_BxNxKxDhxS = jnp.einsum("BNKEQ,BNKQS->BNKES", _transposed(dout_BxNxKxQxDh), probs_BxNxKxQxS)
  return dq_BxNxKxQxDh, _band_unwindow(dkt_BxNxKxDhxS, m), _band_unwindow(dvt_BxNxKxDhxS, m), None


band_attention_core.defvjp(_band_fwd, _band_bwd)


class PackedSpec(NamedTuple):
  """Computed once per forward from the segment ids, shared by the layers."""

  band: Band
  band_bias_BxNx1xCxS: jax.Array


# ---- layers ----

def rotary_angles(positions_BxT: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """(cos, sin) [B, T, 1, Dh] of the rotary angles p * w, w_i = theta^(-2i / Dh), both halves repeated."""
  inv_freq_F = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_BxTxF = positions_BxT.astype(jnp.float32)[:, :, None] * inv_freq_F[None, None, :]
  angles_BxTx1xDh = jnp.concatenate([angles_BxTxF, angles_BxTxF], axis=-1)[:, :, None, :]
  return jnp.cos(angles_BxTx1xDh), jnp.sin(angles_BxTx1xDh)


def apply_rotary(x_BxTxNxDh: jax.Array, cos_BxTx1xDh: jax.Array, sin_BxTx1xDh: jax.Array) -> jax.Array:
  x = x_BxTxNxDh.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos_BxTx1xDh + rotated * sin_BxTx1xDh).astype(x_BxTxNxDh.dtype)


def rotary_embedding(x_BxTxNxDh: jax.Array, positions_BxT: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding (Su et al. 2021, arXiv 2104.09864), HF "rotate_half" layout.

  x' = x * cos(p * w) + rotate_half(x) * sin(p * w), with w_i = theta^(-2i / Dh) for i < Dh/2 and the
  two halves of the head dimension forming the rotated pairs (matches Llama/Qwen2 in transformers).
  """
  return apply_rotary(x_BxTxNxDh, *rotary_angles(positions_BxT, x_BxTxNxDh.shape[-1], theta))


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
  def __call__(self, x_BxTxD, rotary, bias_Bx1xTxS, cache: LayerCache | None = None,
               cache_index: jax.Array | None = None, packed: PackedSpec | None = None):
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
    w_qkv_DxN = jnp.concatenate([w.reshape(d, -1) for w in (wq_DxHxDh, wk_DxKxDh, wv_DxKxDh)], axis=1)
    qkv_MxN = dense(x_MxD, w_qkv_DxN.astype(dtype))
    q_MxHDh, k_MxKDh, v_MxKDh = jnp.split(qkv_MxN, [h * dh, (h + k) * dh], axis=1)  # backward: one concatenate
    q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh = (q_MxHDh.reshape(b, t, h, dh), k_MxKDh.reshape(b, t, k, dh),
                                          v_MxKDh.reshape(b, t, k, dh))
    if cfg.qkv_bias:
      zeros = nn.initializers.zeros
      q_BxTxHxDh += _param(self, "q_bias", zeros, (h, dh), ("heads", "head_dim"), cfg).astype(dtype)[None, None]
      k_BxTxKxDh += _param(self, "k_bias", zeros, (k, dh), ("kv_heads", "head_dim"), cfg).astype(dtype)[None, None]
      v_BxTxKxDh += _param(self, "v_bias", zeros, (k, dh), ("kv_heads", "head_dim"), cfg).astype(dtype)[None, None]
    q_BxTxHxDh = apply_rotary(q_BxTxHxDh, *rotary) * jnp.asarray(dh ** -0.5, dtype)
    k_BxTxKxDh = apply_rotary(k_BxTxKxDh, *rotary)

    k_BxKxTxDh, v_BxKxTxDh = k_BxTxKxDh.transpose(0, 2, 1, 3), v_BxTxKxDh.transpose(0, 2, 1, 3)
    new_cache = None
    if cache is not None:
      # Written in place (the caches are while-loop carries); T new slots at cache_index.
      start = (0, 0, cache_index, 0)
      keys_BxKxSxDh = jax.lax.dynamic_update_slice(cache.k_BxKxSxDh, k_BxKxTxDh.astype(cache.k_BxKxSxDh.dtype), start)
      values_BxKxSxDh = jax.lax.dynamic_update_slice(cache.v_BxKxSxDh, v_BxKxTxDh.astype(cache.v_BxKxSxDh.dtype), start)
      new_cache = LayerCache(keys_BxKxSxDh, values_BxKxSxDh)
      keys_BxKxSxDh, values_BxKxSxDh = keys_BxKxSxDh.astype(dtype), values_BxKxSxDh.astype(dtype)
    else:
      keys_BxKxSxDh, values_BxKxSxDh = k_BxKxTxDh, v_BxKxTxDh

    def dense_attention(q_BxTxHxDh, keys_BxKxSxDh, values_BxKxSxDh):
      q_BxKxQxDh = q_BxTxHxDh.reshape(b, t, k, h // k, dh).transpose(0, 2, 3, 1, 4).reshape(b, k, h // k * t, dh)
      out_BxKxQxDh = attention_core(q_BxKxQxDh, keys_BxKxSxDh, values_BxKxSxDh, bias_Bx1xTxS)
      return out_BxKxQxDh.reshape(b, k, h // k, t, dh).transpose(0, 3, 1, 2, 4).reshape(b * t, h * dh)

    def band_attention(q_BxTxHxDh, keys_BxKxSxDh, values_BxKxSxDh):
      c, m = packed.band
      nq = t // c
      q_BxNxKxQxDh = q_BxTxHxDh.reshape(b, nq, c, k, h // k, dh).transpose(0, 1, 3, 4, 2, 5).reshape(b, nq, k, -1, dh)
      kt_BxNxKxDhxC, vt_BxNxKxDhxC = (x.reshape(b, k, nq, c, dh).transpose(0, 2, 1, 4, 3)
                                      for x in (keys_BxKxSxDh, values_BxKxSxDh))
      out_BxNxKxQxDh = band_attention_core(q_BxNxKxQxDh, kt_BxNxKxDhxC, vt_BxNxKxDhxC, packed.band_bias_BxNx1xCxS, m)
      return out_BxNxKxQxDh.reshape(b, nq, k, h // k, c, dh).transpose(0, 1, 4, 2, 3, 5).reshape(b * t, h * dh)

    attention = dense_attention if packed is None else band_attention
    out_MxHDh = attention(q_BxTxHxDh, keys_BxKxSxDh, values_BxKxSxDh)
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
    out_MxD = swiglu(x_BxTxD.reshape(b * t, d).astype(dtype), w_gate_DxF.astype(dtype), w_up_DxF.astype(dtype),
                     w_down_FxD.astype(dtype))
    return out_MxD.reshape(b, t, d)


class Block(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, rotary, bias_Bx1xTxS, cache=None, cache_index=None, packed=None):
    attn_out_BxTxD, new_cache = Attention(self.cfg, name="attn")(
        RMSNorm(self.cfg, name="attn_norm")(x_BxTxD), rotary, bias_Bx1xTxS, cache, cache_index, packed)
    x_BxTxD = x_BxTxD + attn_out_BxTxD
    x_BxTxD = x_BxTxD + SwiGLU(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x_BxTxD))
    return sharding.constrain(x_BxTxD, ("batch", "length", "act_embed")), new_cache


class Transformer(nn.Module):
  """Returns (logits_BxTxV float32, final hidden states_BxTxD, new per-layer caches or None).

  With last_logits_only the logits are those of the last position only, [B, 1, V]. mask_BxTxS masks the
  dense scores. With a `Band` and segment_ids_BxT (packed rows, no caches; mask_BxTxS is then unused and
  may be None), attention runs on the band instead (`band_attention_core`), which is exact only where
  `band_fits(segment_ids_BxT, band)`: the caller checks (functional.cond_band_attention).
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxT, positions_BxT, mask_BxTxS, caches=None, cache_index=None,
               last_logits_only: bool = False, segment_ids_BxT=None, band: Band | None = None):
    cfg = self.cfg
    embedding_VxD = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                           (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), cfg)
    x_BxTxD = jnp.take(embedding_VxD, tokens_BxT, axis=0).astype(_dtype(cfg.dtype))
    x_BxTxD = sharding.constrain(x_BxTxD, ("batch", "length", "act_embed"))
    # Shared by every layer: rotary cos/sin and the mask as an additive float32 bias (0 or -1e30).
    rotary = rotary_angles(positions_BxT, cfg.head_dim, cfg.rope_theta)
    if band is not None and caches is None:
      bias_Bx1xTxS, packed = None, PackedSpec(band, band_bias(segment_ids_BxT, band))
    else:
      bias_Bx1xTxS, packed = jnp.where(mask_BxTxS, 0.0, _NEG_INF).astype(jnp.float32)[:, None], None
    new_caches = []
    for i in range(cfg.n_layers):
      layer_cache = None if caches is None else caches[i]
      x_BxTxD, new_cache = Block(cfg, name=f"layer_{i}")(x_BxTxD, rotary, bias_Bx1xTxS, layer_cache, cache_index,
                                                         packed)
      new_caches.append(new_cache)
    hidden_BxTxD = RMSNorm(cfg, name="final_norm")(x_BxTxD)
    if cfg.tie_embeddings:
      w_out_DxV = embedding_VxD.T
    else:
      w_out_DxV = _param(self, "lm_head", nn.initializers.normal(stddev=cfg.d_model ** -0.5),
                         (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), cfg)
    # last_logits_only (a sampler's prefill): project only the last position, T becomes 1 in the logits.
    projected_BxTxD = hidden_BxTxD[:, -1:] if last_logits_only else hidden_BxTxD
    b, t, d = projected_BxTxD.shape
    logits_MxV = dense(projected_BxTxD.reshape(b * t, d), w_out_DxV.astype(hidden_BxTxD.dtype))
    logits_BxTxV = sharding.constrain(logits_MxV.reshape(b, t, -1).astype(jnp.float32), ("batch", "length", "act_vocab"))
    return logits_BxTxV, hidden_BxTxD, (None if caches is None else tuple(new_caches))
