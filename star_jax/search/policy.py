"""The thought generator of the search: the policy's KV-cache sampler, n continuations of many prefixes at once.

`ModelStepSampler(prefixes, n)` decodes n continuations of every prefix in ONE jitted sampler call (rows =
prefixes × n, prefix i's continuations in rows i·n .. i·n + n − 1), stopping each row at the step delimiter
(a newline) or EOS.

What is reused: with `grouped=True` (the default) the call is `sampling.sample_grouped`, which prefills each
state's prefix once and keeps its KV cache once for its n children (cascade attention over the shared prefix
and each child's own suffix); `grouped=False` calls `sampling.sample` on the prefixes repeated n times (n
prefills and n copies of the prefix cache per state). Both give the same tokens (same rng, same row layout;
log-probs to float rounding). Measured on the 2-core CPU (a random d_model 128, 4-layer model; 40 Game-of-24
prompts, BFS b = 5, n = 5, T = 3, 32-token steps and answers: 4 calls, 1,337 rows, 32,375 generated tokens per
search; interleaved warm rounds under a load average of ~15): 14.3-18.5 s per search grouped against 27.0-32.9 s
repeated, 1.7-1.8x, prefill slots 29,696 against 123,904; the same outputs.

Shapes are kept to few buckets, so the sampler compiles a handful of times per search rather than once per
call (DESIGN.md §5; with dedup the number of states differs from call to call): the number of prefixes is
padded (with copies of the first, whose rows are dropped) to `prefix_bucket` (a multiple of `prefix_multiple`
and of the mesh's batch divisor, at most 4 sizes per octave: ≤ 25% padding), prefixes are left-padded to a
multiple of `prompt_multiple` tokens, and the static token buffer is `max_new_tokens` for every call, the step
and answer caps being passed as the traced limit. With partitionable threefry (JAX's default) a row's random draws depend
on its index, not on the padded batch size, so the padding changes no real row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from star_jax import sampling, sharding
from star_jax.models import ModelConfig
from star_jax.search.tot import Continuation


def prefix_bucket(count: int, multiple: int) -> int:
  """The padded number of prefixes: q = ceil(count / multiple) rounded up to a multiple of 2^(⌊log2 q⌋ − 2)
  (exact up to q = 7, then 4 sizes per doubling: at most 25% padding), times `multiple`. E.g. multiple 16:
  1..16 → 16, 100 → 112, 130 → 160, 300 → 320, 1000 → 1024."""
  if count < 1 or multiple < 1:
    raise ValueError(f"prefix_bucket: count={count} and multiple={multiple} must be >= 1")
  q = -(-count // multiple)
  step = max(1, 2 ** (q.bit_length() - 3))
  return -(-q // step) * step * multiple


class ModelStepSampler:
  """The policy p_θ as a `tot.StepSampler` (see the module docstring).

  Counters: `calls` (sampler calls), `rows` (rows decoded, padding included), `real_rows` (rows returned),
  `prefill_tokens` (prompt slots prefilled, left padding included: G·P grouped, G·n·P not).
  """

  def __init__(self, model_config: ModelConfig, params, tokenizer, mesh: Mesh, *, max_new_tokens: int,
               delimiter: str = "\n", top_k: int = 0, top_p: float = 1.0, grouped: bool = True,
               prefix_multiple: int = 16, prompt_multiple: int = 64):
    if prefix_multiple < 1 or prompt_multiple < 1 or max_new_tokens < 1:
      raise ValueError(f"ModelStepSampler: prefix_multiple={prefix_multiple}, prompt_multiple={prompt_multiple} and "
                       f"max_new_tokens={max_new_tokens} must be >= 1")
    stop = tuple(tokenizer.encode(delimiter))
    if not stop:
      raise ValueError(f"ModelStepSampler: the step delimiter {delimiter!r} encodes to no tokens")
    self.model_config, self.params, self.tokenizer, self.mesh = model_config, params, tokenizer, mesh
    self.max_new_tokens, self.stop, self.top_k, self.top_p, self.grouped = max_new_tokens, stop, top_k, top_p, grouped
    self.prefix_multiple = math.lcm(prefix_multiple, sharding.batch_divisor(mesh))
    self.prompt_multiple = prompt_multiple
    self.calls = self.rows = self.real_rows = self.prefill_tokens = 0

  def __call__(self, prefixes: Sequence[Sequence[int]], n: int, *, max_new_tokens: int, temperature: float,
               rng: jax.Array) -> list[Continuation]:
    """n continuations of each prefix (token ids, BOS included), grouped by prefix; one sampler call."""
    if not 1 <= max_new_tokens <= self.max_new_tokens:
      raise ValueError(f"ModelStepSampler: a cap of {max_new_tokens} tokens is outside its buffer [1, "
                       f"{self.max_new_tokens}]; set max_new_tokens to the larger of search.step_tokens and answer_tokens")
    if not prefixes or n < 1:
      raise ValueError(f"ModelStepSampler: needs prefixes and n >= 1, got {len(prefixes)} prefixes, n={n}")
    g = prefix_bucket(len(prefixes), self.prefix_multiple)
    tokens_GxP, lengths_G = sampling.left_pad(list(prefixes) + [prefixes[0]] * (g - len(prefixes)),
                                              self.tokenizer.pad_id, multiple=self.prompt_multiple)
    cfg = sampling.SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=temperature, top_k=self.top_k,
                                  top_p=self.top_p, stop_sequences=(self.stop,))
    common = dict(cfg=cfg, eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id,
                  max_new_tokens=jnp.int32(max_new_tokens))
    if self.grouped:
      out = sampling.sample_grouped(self.model_config, self.params, sharding.shard_global_batch(tokens_GxP, self.mesh),
                                    sharding.shard_global_batch(lengths_G, self.mesh), rng, n_per_prompt=n, **common)
      self.prefill_tokens += tokens_GxP.size
    else:
      tokens_BxP, lengths_B = np.repeat(tokens_GxP, n, axis=0), np.repeat(lengths_G, n)
      out = sampling.sample(self.model_config, self.params, sharding.shard_global_batch(tokens_BxP, self.mesh),
                            sharding.shard_global_batch(lengths_B, self.mesh), rng, **common)
      self.prefill_tokens += tokens_BxP.size
    tokens_BxN, lengths_B, logps_BxN = sharding.to_host((out.tokens_BxN, out.lengths_B, out.logps_BxN))
    real = len(prefixes) * n
    self.calls += 1
    self.rows += g * n
    self.real_rows += real
    return [Continuation(tuple(int(t) for t in tokens_BxN[i, :lengths_B[i]]),
                         tuple(float(x) for x in logps_BxN[i, :lengths_B[i]])) for i in range(real)]
