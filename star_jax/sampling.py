"""Batched autoregressive sampling with a KV cache, the whole decode loop inside one jit.

Prompts of different lengths are left-padded into one [B, P] block; pad slots are masked out of attention
and every row's positions start at 0 at its first real token, so each row decodes exactly as it would
alone. The prompt is prefilled in one forward pass that fills the cache; then a `lax.while_loop` decodes
one token per iteration (each a [B, 1] forward over the cache) until `max_new_tokens` or until every row
has produced EOS or a stop sequence.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from star_jax import models
from star_jax.models import ModelConfig


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 128  # static buffer size and upper bound on generated tokens
  temperature: float = 0.0  # 0 = greedy (argmax)
  top_k: int = 0  # keep the k most likely tokens (0 = off)
  top_p: float = 1.0  # nucleus sampling: smallest set with cumulative probability >= top_p (1 = off)
  stop_sequences: tuple[tuple[int, ...], ...] = ()  # token sequences that end a row (kept in the output)

  def __post_init__(self):
    if self.max_new_tokens <= 0:
      raise ValueError(f"sampling max_new_tokens must be > 0, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"sampling temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0 or not 0 < self.top_p <= 1:
      raise ValueError(f"sampling top_k must be >= 0 and top_p in (0, 1], got {self.top_k}, {self.top_p}")
    if any(len(s) == 0 for s in self.stop_sequences):
      raise ValueError("sampling stop_sequences must not contain an empty sequence")


class SampleOutput(NamedTuple):
  tokens_BxN: jax.Array  # generated ids; pad_id after a row stopped
  lengths_B: jax.Array  # generated tokens per row, including the EOS / stop sequence
  logps_BxN: jax.Array  # log-prob of each generated token under the sampling distribution; 0 after stop


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """Left-pad token lists into [B, P] (P rounded up to `multiple` to limit recompilation) + lengths."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  width = -(-max(len(p) for p in prompts) // multiple) * multiple
  tokens_BxP = np.full((len(prompts), width), pad_id, np.int32)
  for row, prompt in enumerate(prompts):
    tokens_BxP[row, width - len(prompt):] = prompt
  return tokens_BxP, np.asarray([len(p) for p in prompts], np.int32)


def _sampling_logprobs(logits_BxV: jax.Array, cfg: SamplingConfig) -> jax.Array:
  """log of the distribution tokens are drawn from: temperature, then top-k, then top-p truncation."""
  if cfg.temperature == 0:
    return jax.nn.log_softmax(logits_BxV, axis=-1)
  logits_BxV = logits_BxV / cfg.temperature
  if cfg.top_k:
    kth_B1 = jax.lax.top_k(logits_BxV, cfg.top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_B1, -jnp.inf, logits_BxV)
  if cfg.top_p < 1:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    cumulative_BxV = jnp.cumsum(jax.nn.softmax(sorted_BxV, axis=-1), axis=-1)
    # the threshold logit: the smallest kept one (always keep the most likely token)
    keep_count_B1 = jnp.sum(cumulative_BxV - jax.nn.softmax(sorted_BxV, axis=-1) < cfg.top_p, axis=-1,
                            keepdims=True)
    threshold_B1 = jnp.take_along_axis(sorted_BxV, keep_count_B1 - 1, axis=-1)
    logits_BxV = jnp.where(logits_BxV < threshold_B1, -jnp.inf, logits_BxV)
  return jax.nn.log_softmax(logits_BxV, axis=-1)


def _choose(logits_BxV, rng, cfg: SamplingConfig):
  logps_BxV = _sampling_logprobs(logits_BxV.astype(jnp.float32), cfg)
  if cfg.temperature == 0:
    token_B = jnp.argmax(logps_BxV, axis=-1).astype(jnp.int32)
  else:
    token_B = jax.random.categorical(rng, logps_BxV, axis=-1).astype(jnp.int32)
  return token_B, jnp.take_along_axis(logps_BxV, token_B[:, None], axis=-1)[:, 0]


class _LoopState(NamedTuple):
  i: jax.Array
  logits_BxV: jax.Array
  caches: tuple
  key_valid_BxS: jax.Array
  done_B: jax.Array
  tokens_BxN: jax.Array
  logps_BxN: jax.Array
  lengths_B: jax.Array
  recent_BxL: jax.Array  # the last L generated tokens (for stop sequences)


@functools.partial(jax.jit, static_argnames=("model_config", "cfg", "eos_id", "pad_id"))
def sample(model_config: ModelConfig, params, prompt_tokens_BxP: jax.Array, prompt_lengths_B: jax.Array,
           rng: jax.Array, *, cfg: SamplingConfig, eos_id: int, pad_id: int,
           max_new_tokens: jax.Array | None = None) -> SampleOutput:
  """Generate continuations of left-padded prompts. Deterministic for a given rng.

  max_new_tokens (traced, optional) lowers the limit below cfg.max_new_tokens without recompiling.
  """
  b, p = prompt_tokens_BxP.shape
  n = cfg.max_new_tokens
  limit = jnp.asarray(n if max_new_tokens is None else jnp.minimum(max_new_tokens, n), jnp.int32)
  offset_B = p - prompt_lengths_B  # first real slot of each row
  slots_P = jnp.arange(p, dtype=jnp.int32)
  key_valid_BxS = jnp.concatenate(
      [slots_P[None, :] >= offset_B[:, None], jnp.zeros((b, n), jnp.bool_)], axis=1)
  positions_BxP = jnp.maximum(slots_P[None, :] - offset_B[:, None], 0)
  caches = models.init_cache(model_config, b, p + n)
  logits_BxPxV, _, caches = models.forward_cached(model_config, params, prompt_tokens_BxP, positions_BxP,
                                                  key_valid_BxS, caches, jnp.int32(0))
  stop_len = max((len(s) for s in cfg.stop_sequences), default=1)
  state = _LoopState(
      i=jnp.int32(0), logits_BxV=logits_BxPxV[:, -1], caches=caches, key_valid_BxS=key_valid_BxS,
      done_B=jnp.zeros((b,), jnp.bool_), tokens_BxN=jnp.full((b, n), pad_id, jnp.int32),
      logps_BxN=jnp.zeros((b, n), jnp.float32), lengths_B=jnp.zeros((b,), jnp.int32),
      recent_BxL=jnp.full((b, stop_len), -1, jnp.int32))

  def cond(s: _LoopState):
    return (s.i < limit) & ~jnp.all(s.done_B)

  def body(s: _LoopState):
    token_B, logp_B = _choose(s.logits_BxV, jax.random.fold_in(rng, s.i), cfg)
    active_B = ~s.done_B
    token_B = jnp.where(active_B, token_B, pad_id)
    tokens_BxN = jax.lax.dynamic_update_slice(s.tokens_BxN, token_B[:, None], (0, s.i))
    logps_BxN = jax.lax.dynamic_update_slice(s.logps_BxN, jnp.where(active_B, logp_B, 0.0)[:, None], (0, s.i))
    recent_BxL = jnp.concatenate([s.recent_BxL[:, 1:], token_B[:, None]], axis=1)
    stopped_B = token_B == eos_id
    for seq in cfg.stop_sequences:
      seq_L = jnp.asarray(seq, jnp.int32)
      stopped_B |= jnp.all(recent_BxL[:, stop_len - len(seq):] == seq_L[None, :], axis=1)
    lengths_B = s.lengths_B + active_B.astype(jnp.int32)
    done_B = s.done_B | (active_B & stopped_B)
    slot = p + s.i
    key_valid_BxS = jax.lax.dynamic_update_slice(s.key_valid_BxS, jnp.ones((b, 1), jnp.bool_), (0, slot))
    position_Bx1 = (prompt_lengths_B + s.i)[:, None]
    logits_Bx1xV, _, caches = models.forward_cached(model_config, params, token_B[:, None], position_Bx1,
                                                    key_valid_BxS, s.caches, slot)
    return _LoopState(s.i + 1, logits_Bx1xV[:, 0], caches, key_valid_BxS, done_B, tokens_BxN, logps_BxN,
                      lengths_B, recent_BxL)

  final = jax.lax.while_loop(cond, body, state)
  return SampleOutput(final.tokens_BxN, final.lengths_B, final.logps_BxN)
