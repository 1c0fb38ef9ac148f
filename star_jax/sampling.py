"""Batched autoregressive sampling with a KV cache, the whole decode loop inside one jit.

Prompts of different lengths are left-padded into one [B, P] block; pad slots are masked out of attention
and every row's positions start at 0 at its first real token, so each row decodes exactly as it would
alone. The prompt is prefilled in one forward pass that fills the cache; then a `lax.while_loop` decodes
one token per iteration (each a [B, 1] forward over the cache) until `max_new_tokens` or until every row
has produced EOS or a stop sequence (checked after every step by default; see `sample`'s check_every).

Speed (XLA:CPU; benchmarks/sampler.py, benchmarks/RESULTS.md): the decode step is
`models.functional.decode_step`, which keeps activations as [D, B] columns against weights rearranged
once per call (`decode_params`) and writes the [B, K, S, Dh] cache in place; the cache grows in a few
chunks so that early steps read a shorter one; and on a multi-core CPU the rows are split into
independent groups (`row_groups_for`) that XLA runs on different cores.

Many continuations of one prompt (policy-gradient groups, Monte-Carlo step labels, Tree-of-Thoughts
children): `sample_grouped` prefills each prompt once and keeps its KV entries once per group, the rows
attending over the shared prefix and their own suffix with cascade attention (`models.cascade`); its
output equals `sample` on the repeated prompts.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from star_jax import models
from star_jax.models import ModelConfig, cascade, functional


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


_MAX_DECODE_CHUNKS = 4  # the cache grows in at most this many steps (each one more loop to compile)
_MIN_DECODE_CHUNK = 64  # decode steps per cache-length bucket, at least
_MIN_GROUP_ROWS = 8  # auto row groups keep at least this many rows each


def row_groups_for(batch_size: int) -> int:
  """Independent row groups per decode step: one per CPU core on a single-device CPU backend, else 1.

  A decode step's matmuls have only B rows, and XLA:CPU runs each of them on one thread; groups of rows
  with no data dependence between them are run concurrently by its thunk executor, one per core.
  Accelerators (and multi-device meshes, which already split the batch) get one group.
  """
  if jax.default_backend() != "cpu" or jax.device_count() > 1:
    return 1
  groups = max(1, min(_cpu_cores(), batch_size // _MIN_GROUP_ROWS))
  while batch_size % groups:
    groups -= 1
  return groups


def _cpu_cores() -> int:
  """CPU cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Rows(NamedTuple):
  """Per-row output bookkeeping, the same in both samplers."""
  done_B: jax.Array
  tokens_BxN: jax.Array
  logps_BxN: jax.Array
  lengths_B: jax.Array
  recent_BxL: jax.Array  # the last L generated tokens (for stop sequences)


def _init_rows(b: int, cfg: SamplingConfig, pad_id: int) -> _Rows:
  stop_len = max((len(s) for s in cfg.stop_sequences), default=1)
  n = cfg.max_new_tokens
  return _Rows(done_B=jnp.zeros((b,), jnp.bool_), tokens_BxN=jnp.full((b, n), pad_id, jnp.int32),
               logps_BxN=jnp.zeros((b, n), jnp.float32), lengths_B=jnp.zeros((b,), jnp.int32),
               recent_BxL=jnp.full((b, stop_len), -1, jnp.int32))


def _emit(rows: _Rows, i: jax.Array, logits_BxV: jax.Array, rng: jax.Array, cfg: SamplingConfig, eos_id: int,
          pad_id: int) -> tuple[jax.Array, _Rows]:
  """Step i: draw each row's token with fold_in(rng, i) over the whole [B, V] block, record it (pad_id and
  log-prob 0 for rows already stopped), and mark rows that produced EOS or completed a stop sequence."""
  token_B, logp_B = _choose(logits_BxV, jax.random.fold_in(rng, i), cfg)
  active_B = ~rows.done_B
  token_B = jnp.where(active_B, token_B, pad_id)
  tokens_BxN = jax.lax.dynamic_update_slice(rows.tokens_BxN, token_B[:, None], (0, i))
  logps_BxN = jax.lax.dynamic_update_slice(rows.logps_BxN, jnp.where(active_B, logp_B, 0.0)[:, None], (0, i))
  recent_BxL = jnp.concatenate([rows.recent_BxL[:, 1:], token_B[:, None]], axis=1)
  stop_len = recent_BxL.shape[1]
  stopped_B = token_B == eos_id
  for seq in cfg.stop_sequences:
    seq_L = jnp.asarray(seq, jnp.int32)
    stopped_B |= jnp.all(recent_BxL[:, stop_len - len(seq):] == seq_L[None, :], axis=1)
  lengths_B = rows.lengths_B + active_B.astype(jnp.int32)
  done_B = rows.done_B | (active_B & stopped_B)
  return token_B, _Rows(done_B, tokens_BxN, logps_BxN, lengths_B, recent_BxL)


class _LoopState(NamedTuple):
  i: jax.Array
  logits_BxV: jax.Array
  caches: tuple  # per row group, per layer: LayerCache of that group's rows
  key_valid_BxS: jax.Array  # empty [B, 0] in the grouped sampler (its suffix slots 0..i are all valid)
  rows: _Rows


@functools.partial(jax.jit, static_argnames=("model_config", "cfg", "eos_id", "pad_id", "row_groups",
                                             "check_every"))
def sample(model_config: ModelConfig, params, prompt_tokens_BxP: jax.Array, prompt_lengths_B: jax.Array,
           rng: jax.Array, *, cfg: SamplingConfig, eos_id: int, pad_id: int,
           max_new_tokens: jax.Array | None = None, row_groups: int | None = None,
           check_every: int = 1) -> SampleOutput:
  """Generate continuations of left-padded prompts. Deterministic for a given rng.

  max_new_tokens (traced, optional) lowers the limit below cfg.max_new_tokens without recompiling.
  row_groups: rows decoded as that many independent groups (default `row_groups_for(B)`); it changes
  the schedule, not the maths (results agree up to float rounding).
  check_every: decode steps between the early-exit checks ("has every row stopped?"); the output does not
  depend on it. With the batch split over devices each check is a cross-device all-reduce that every
  device waits at (across hosts on a multi-host mesh); checking every k steps does k times fewer, at the
  price of up to k - 1 wasted decode steps after the last row stops. On 2 CPU devices, with no early
  exit, k = 8 took benchmarks/sampler.py's shapes from 0.664 to 0.648 s (best of 8 interleaved runs),
  too little to pay for the wasted steps of a typical early-exiting batch, hence the default of 1.
  Many continuations of the same prompt: `sample_grouped` (same output, each prompt's cache held once).
  """
  b, p = prompt_tokens_BxP.shape
  n = cfg.max_new_tokens
  groups = row_groups_for(b) if row_groups is None else row_groups
  if groups < 1 or b % groups:
    raise ValueError(f"sample: row_groups={groups} must be >= 1 and divide the batch size {b}")
  if check_every < 1:
    raise ValueError(f"sample: check_every={check_every} must be >= 1")
  rows = b // groups
  offset_B = p - prompt_lengths_B  # first real slot of each row
  slots_P = jnp.arange(p, dtype=jnp.int32)
  chunk_ends = _chunk_ends(n)
  key_valid_BxS = jnp.concatenate(
      [slots_P[None, :] >= offset_B[:, None], jnp.zeros((b, chunk_ends[0]), jnp.bool_)], axis=1)
  positions_BxP = jnp.maximum(slots_P[None, :] - offset_B[:, None], 0)
  # Prefill each row group's prompts in one forward pass that fills its cache (the groups run concurrently).
  logits, caches = [], []
  for g in range(groups):
    rows_g = slice(g * rows, (g + 1) * rows)
    logits_Gx1xV, _, group_caches = models.forward_cached(
        model_config, params, prompt_tokens_BxP[rows_g], positions_BxP[rows_g], key_valid_BxS[rows_g],
        models.init_cache(model_config, rows, p + chunk_ends[0]), jnp.int32(0), last_logits_only=True)
    logits.append(logits_Gx1xV[:, 0])
    caches.append(group_caches)
  state = _LoopState(i=jnp.int32(0), logits_BxV=jnp.concatenate(logits, axis=0), caches=tuple(caches),
                     key_valid_BxS=key_valid_BxS, rows=_init_rows(b, cfg, pad_id))
  dparams = functional.decode_params(model_config, params)  # once, outside the loop

  def body(s: _LoopState):
    token_B, rows_out = _emit(s.rows, s.i, s.logits_BxV, rng, cfg, eos_id, pad_id)
    slot = p + s.i
    key_valid_BxS = jax.lax.dynamic_update_slice(s.key_valid_BxS, jnp.ones((b, 1), jnp.bool_), (0, slot))
    position_B = prompt_lengths_B + s.i
    logits, caches = [], []
    for g, group_caches in enumerate(s.caches):
      rows_g = slice(g * rows, (g + 1) * rows)
      logits_GxV, group_caches = functional.decode_step(model_config, dparams, token_B[rows_g], position_B[rows_g],
                                                        key_valid_BxS[rows_g], group_caches, slot)
      logits.append(logits_GxV)
      caches.append(group_caches)
    return _LoopState(s.i + 1, jnp.concatenate(logits, axis=0), tuple(caches), key_valid_BxS, rows_out)

  state = _decode_in_chunks(state, body, chunk_ends, max_new_tokens, n, check_every)
  return SampleOutput(state.rows.tokens_BxN, state.rows.lengths_B, state.rows.logps_BxN)


def _decode_in_chunks(state: _LoopState, body, chunk_ends: tuple[int, ...], max_new_tokens, n: int,
                      check_every: int) -> _LoopState:
  """Run `body` until step min(max_new_tokens, n) or every row is done, growing the caches chunk by chunk.

  The cache grows chunk by chunk, so early steps attend over (and read) a shorter cache: attention is
  bound by reading the cache, which a fixed [p + n] cache makes cost the same at every step. Each chunk
  is its own while_loop over the same body, traced at that chunk's cache length.
  """
  limit = jnp.asarray(n if max_new_tokens is None else jnp.minimum(max_new_tokens, n), jnp.int32)
  for start, end in zip((0,) + chunk_ends[:-1], chunk_ends):
    if start:
      grow = ((0, 0), (0, 0), (0, end - start), (0, 0))
      valid_grow = ((0, 0), (0, end - start)) if state.key_valid_BxS.shape[1] else ((0, 0), (0, 0))
      state = state._replace(caches=jax.tree.map(lambda x: jnp.pad(x, grow), state.caches),
                             key_valid_BxS=jnp.pad(state.key_valid_BxS, valid_grow))
    stop_at = jnp.minimum(limit, end)
    if check_every > 1:  # blocks of up to check_every steps; inside one, only replicated scalars are compared
      def block(s: _LoopState, stop_at=stop_at) -> _LoopState:
        block_end = jnp.minimum(s.i + check_every, stop_at)
        return jax.lax.while_loop(lambda t: t.i < block_end, body, s)
    else:
      block = body
    state = jax.lax.while_loop(lambda s, stop_at=stop_at: (s.i < stop_at) & ~jnp.all(s.rows.done_B), block, state)
  return state


def grouped_row_groups(n_prompts: int, n_per_prompt: int) -> int:
  """`row_groups_for(n_prompts * n_per_prompt)`, lowered until it divides n_prompts (a group's rows stay together)."""
  groups = row_groups_for(n_prompts * n_per_prompt)
  while n_prompts % groups:
    groups -= 1
  return groups


@functools.partial(jax.jit, static_argnames=("model_config", "n_per_prompt", "cfg", "eos_id", "pad_id",
                                             "row_groups", "check_every"))
def sample_grouped(model_config: ModelConfig, params, prompt_tokens_GxP: jax.Array, prompt_lengths_G: jax.Array,
                   rng: jax.Array, *, n_per_prompt: int, cfg: SamplingConfig, eos_id: int, pad_id: int,
                   max_new_tokens: jax.Array | None = None, row_groups: int | None = None,
                   check_every: int = 1) -> SampleOutput:
  """R = n_per_prompt continuations of each of G left-padded prompts, each prompt's KV cache held once.

  Output rows b = g R + r (r = 0..R-1) continue prompt g: `out.tokens_BxN.reshape(G, R, N)` groups them.
  The result is that of `sample` on the prompts repeated R times (`np.repeat(tokens_GxP, R, axis=0)`,
  `np.repeat(lengths_G, R)`) with the same rng: step i draws the [G R, V] block with fold_in(rng, i), so
  tokens agree exactly whenever the logits do, and logits and log-probs to float rounding. Same options
  (cfg: temperature, top_k, top_p, stop_sequences, max_new_tokens; per-row EOS / stop) and arguments.

  Shared-prefix ("cascade" / Hydragen) decoding, Juravsky et al. 2024, arXiv 2402.05099: each prompt is
  prefilled once ([G, P] tokens, not [G R, P]) into a [G, K, P, Dh] prefix cache; generated tokens go to
  a per-row [G R, K, n, Dh] suffix cache. Row b's attention at each step splits into the block of its
  group's prefix and the block of its own suffix, merged exactly (`models.cascade.cascade_attention`):

      attn(q) = (e^{m_p - m} o_p + e^{m_s - m} o_s) / (e^{m_p - m} l_p + e^{m_s - m} l_s),  m = max(m_p, m_s)

  with m_c, l_c, o_c a block's max logit, sum of exp(z - m_c) and exp(z - m_c) @ v. The R rows of a group
  read the prefix block together, as one [R H / K, Dh] x [Dh, P] product per kv head, so the prefix cache
  is read once per group per step. row_groups (default `grouped_row_groups(G, R)`) must divide G.
  """
  n_prompts, p = prompt_tokens_GxP.shape
  r = n_per_prompt
  if r < 1:
    raise ValueError(f"sample_grouped: n_per_prompt={r} must be >= 1")
  b = n_prompts * r
  n = cfg.max_new_tokens
  groups = grouped_row_groups(n_prompts, r) if row_groups is None else row_groups
  if groups < 1 or n_prompts % groups:
    raise ValueError(f"sample_grouped: row_groups={groups} must be >= 1 and divide the number of prompts {n_prompts}")
  if check_every < 1:
    raise ValueError(f"sample_grouped: check_every={check_every} must be >= 1")
  prompts_per_group, rows = n_prompts // groups, b // groups
  offset_G = p - prompt_lengths_G
  slots_P = jnp.arange(p, dtype=jnp.int32)
  prefix_valid_GxP = slots_P[None, :] >= offset_G[:, None]
  positions_GxP = jnp.maximum(slots_P[None, :] - offset_G[:, None], 0)
  chunk_ends = _chunk_ends(n)
  logits, prefixes, suffixes = [], [], []
  for g in range(groups):
    prompts_g = slice(g * prompts_per_group, (g + 1) * prompts_per_group)
    logits_Gx1xV, _, prefix_caches = models.forward_cached(
        model_config, params, prompt_tokens_GxP[prompts_g], positions_GxP[prompts_g], prefix_valid_GxP[prompts_g],
        models.init_cache(model_config, prompts_per_group, p), jnp.int32(0), last_logits_only=True)
    logits.append(jnp.repeat(logits_Gx1xV[:, 0], r, axis=0))
    prefixes.append(prefix_caches)
    suffixes.append(models.init_cache(model_config, rows, chunk_ends[0]))
  state = _LoopState(i=jnp.int32(0), logits_BxV=jnp.concatenate(logits, axis=0), caches=tuple(suffixes),
                     key_valid_BxS=jnp.zeros((b, 0), jnp.bool_), rows=_init_rows(b, cfg, pad_id))
  dparams = functional.decode_params(model_config, params)  # once, outside the loop
  prompt_lengths_B = jnp.repeat(prompt_lengths_G, r)

  def body(s: _LoopState):
    token_B, rows_out = _emit(s.rows, s.i, s.logits_BxV, rng, cfg, eos_id, pad_id)
    position_B = prompt_lengths_B + s.i
    logits, caches = [], []
    for g, (prefix_caches, suffix_caches) in enumerate(zip(prefixes, s.caches)):
      rows_g, prompts_g = slice(g * rows, (g + 1) * rows), slice(g * prompts_per_group, (g + 1) * prompts_per_group)
      logits_GxV, suffix_caches = cascade.decode_step_grouped(
          model_config, dparams, token_B[rows_g], position_B[rows_g], prefix_valid_GxP[prompts_g], prefix_caches,
          suffix_caches, s.i)
      logits.append(logits_GxV)
      caches.append(suffix_caches)
    return _LoopState(s.i + 1, jnp.concatenate(logits, axis=0), tuple(caches), s.key_valid_BxS, rows_out)

  state = _decode_in_chunks(state, body, chunk_ends, max_new_tokens, n, check_every)
  return SampleOutput(state.rows.tokens_BxN, state.rows.lengths_B, state.rows.logps_BxN)


def _chunk_ends(n: int) -> tuple[int, ...]:
  """Decode steps at which the cache grows: n split into near-equal chunks, at most _MAX_DECODE_CHUNKS
  of them and none shorter than _MIN_DECODE_CHUNK steps (one chunk when n is shorter)."""
  chunks = max(1, min(_MAX_DECODE_CHUNKS, n // _MIN_DECODE_CHUNK))
  chunk = -(-n // chunks)
  return tuple(range(chunk, n, chunk)) + (n,)
