"""Tests for sampling.sample_grouped (shared-prefix / cascade decoding) and models.cascade.

The reference is the independent-row sampler on the same prompts repeated R times, with the same rng:
tokens and lengths must be identical, log-probs equal to float rounding. Eight prompts of different
lengths (left-padded to one width), R = 3 continuations each.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax import models, sampling, sharding
from star_jax.models import ModelConfig, cascade
from star_jax.models.transformer import _NEG_INF, LayerCache
from star_jax.sampling import SamplingConfig, left_pad, sample, sample_grouped

MODEL = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
PAD = 0
NO_EOS = -1
N = 10  # max_new_tokens
R = 3  # continuations per prompt
LENGTHS = [3, 8, 1, 5, 2, 7, 4, 6]
PROMPTS = [[int(t) for t in np.random.default_rng(i).integers(1, MODEL.vocab_size, n)] for i, n in enumerate(LENGTHS)]
GREEDY = SamplingConfig(max_new_tokens=N)
# Temperature with both truncations, a stop sequence and (below) an EOS id, so rows end at different steps.
SAMPLED = SamplingConfig(max_new_tokens=N, temperature=0.9, top_k=30, top_p=0.97, stop_sequences=((11, 12), (5,)))
EOS = 7
_STATIC = ("model_config", "n_per_prompt", "cfg", "eos_id", "pad_id", "row_groups", "check_every")


@pytest.fixture(scope="module")
def params():
  return jax.jit(models.init_params, static_argnums=0)(MODEL, jax.random.key(0, impl="rbg"))


@pytest.fixture(scope="module")
def prompts():
  return left_pad(PROMPTS, PAD, multiple=8)


def _independent(params, prompts, cfg, eos_id, rng):
  """The reference: `sample` with every prompt repeated R times (rows g R .. g R + R - 1 continue prompt g)."""
  tokens_GxP, lengths_G = prompts
  out = sample(MODEL, params, np.repeat(tokens_GxP, R, axis=0), np.repeat(lengths_G, R), rng, cfg=cfg, eos_id=eos_id,
               pad_id=PAD)
  return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def independent_greedy(params, prompts):
  return _independent(params, prompts, GREEDY, NO_EOS, jax.random.key(0))


@pytest.fixture(scope="module")
def independent_sampled(params, prompts):
  return _independent(params, prompts, SAMPLED, EOS, jax.random.key(5))


def _assert_same(out, reference):
  out = jax.tree.map(np.asarray, out)
  np.testing.assert_array_equal(out.tokens_BxN, reference.tokens_BxN)
  np.testing.assert_array_equal(out.lengths_B, reference.lengths_B)
  np.testing.assert_allclose(out.logps_BxN, reference.logps_BxN, rtol=1e-5, atol=1e-5)


def test_greedy_equals_independent_rows(params, prompts, independent_greedy):
  out = sample_grouped(MODEL, params, *prompts, jax.random.key(0), n_per_prompt=R, cfg=GREEDY, eos_id=NO_EOS,
                       pad_id=PAD, max_new_tokens=jnp.int32(N))  # traced limit: the next test reuses the compilation
  assert out.tokens_BxN.shape == (len(PROMPTS) * R, N)
  _assert_same(out, independent_greedy)
  tokens_GxRxN = np.asarray(out.tokens_BxN).reshape(len(PROMPTS), R, N)
  assert (tokens_GxRxN == tokens_GxRxN[:, :1]).all()  # greedy: a group's rows agree
  assert len({tuple(t) for t in tokens_GxRxN[:, 0]}) > 4  # and the prompts' continuations differ


def test_sampled_with_stops_equals_independent_rows(params, prompts, independent_sampled):
  # temperature + top-k + top-p, per-row EOS and stop sequences: the same draws as the independent rows
  out = sample_grouped(MODEL, params, *prompts, jax.random.key(5), n_per_prompt=R, cfg=SAMPLED, eos_id=EOS, pad_id=PAD)
  _assert_same(out, independent_sampled)
  lengths_B = independent_sampled.lengths_B
  assert lengths_B.min() < N and (lengths_B == N).any()  # some rows stopped early, some ran to the limit
  tokens_GxRxN = independent_sampled.tokens_BxN.reshape(len(PROMPTS), R, N)
  assert (tokens_GxRxN != tokens_GxRxN[:, :1]).any(axis=(1, 2)).mean() > 0.5  # a group's rows differ


def test_sharded_over_8_devices_equals_single_device(params, prompts, independent_sampled):
  mesh = sharding.make_mesh([("data", 8), ("fsdp", 1), ("tensor", 1)])
  tokens_GxP = sharding.shard_global_batch(prompts[0], mesh)
  lengths_G = sharding.shard_global_batch(prompts[1], mesh)
  assert len(tokens_GxP.sharding.device_set) == 8
  replicated = jax.device_put(params, sharding.replicated(mesh))
  out = sample_grouped(MODEL, replicated, tokens_GxP, lengths_G, jax.random.key(5), n_per_prompt=R, cfg=SAMPLED,
                       eos_id=EOS, pad_id=PAD, check_every=4)
  _assert_same(out, independent_sampled)


def test_row_groups_and_cache_chunks_change_nothing(params, prompts, independent_sampled, monkeypatch):
  # Two row groups (what a 2-core CPU gets) and the suffix cache grown in 3 chunks (4, 4, 2 steps), with
  # early-exit checks every 3 steps straddling the chunk ends.
  monkeypatch.setattr(sampling, "_MIN_DECODE_CHUNK", 3)
  assert sampling._chunk_ends(N) == (4, 8, 10)
  fresh = jax.jit(sample_grouped.__wrapped__, static_argnames=_STATIC)
  out = fresh(MODEL, params, *prompts, jax.random.key(5), n_per_prompt=R, cfg=SAMPLED, eos_id=EOS, pad_id=PAD,
              row_groups=2, check_every=3)
  _assert_same(out, independent_sampled)


def test_max_new_tokens_argument_and_single_continuation(params, prompts, independent_greedy):
  out = sample_grouped(MODEL, params, *prompts, jax.random.key(0), n_per_prompt=R, cfg=GREEDY, eos_id=NO_EOS,
                       pad_id=PAD, max_new_tokens=jnp.int32(4))
  np.testing.assert_array_equal(np.asarray(out.lengths_B), 4)
  np.testing.assert_array_equal(np.asarray(out.tokens_BxN)[:, :4], independent_greedy.tokens_BxN[:, :4])
  assert (np.asarray(out.tokens_BxN)[:, 4:] == PAD).all()
  compiled = sample_grouped._cache_size()
  # another limit reuses that compilation; one above cfg.max_new_tokens is capped at it
  out = sample_grouped(MODEL, params, *prompts, jax.random.key(0), n_per_prompt=R, cfg=GREEDY, eos_id=NO_EOS,
                       pad_id=PAD, max_new_tokens=jnp.int32(100))
  np.testing.assert_array_equal(np.asarray(out.tokens_BxN), independent_greedy.tokens_BxN)
  assert sample_grouped._cache_size() == compiled
  # R = 1: one row per prompt, the independent sampler's row g R
  one = sample_grouped(MODEL, params, *prompts, jax.random.key(0), n_per_prompt=1, cfg=GREEDY, eos_id=NO_EOS,
                       pad_id=PAD)
  np.testing.assert_array_equal(np.asarray(one.tokens_BxN), independent_greedy.tokens_BxN[::R])


def test_invalid_arguments(params, prompts):
  with pytest.raises(ValueError, match="row_groups=3 must be >= 1 and divide the number of prompts 8"):
    sample_grouped(MODEL, params, *prompts, jax.random.key(0), n_per_prompt=R, cfg=GREEDY, eos_id=NO_EOS, pad_id=PAD,
                   row_groups=3)
  with pytest.raises(ValueError, match="n_per_prompt=0 must be >= 1"):
    sample_grouped(MODEL, params, *prompts, jax.random.key(0), n_per_prompt=0, cfg=GREEDY, eos_id=NO_EOS, pad_id=PAD)


@pytest.mark.parametrize("cpus, prompts_n, per_prompt, expected", [
    (2, 32, 16, 2), (2, 1, 16, 1), (2, 3, 16, 1), (16, 6, 8, 6), (16, 9, 4, 3), (16, 32, 1, 4),
])
def test_grouped_row_groups_hand_computed(monkeypatch, cpus, prompts_n, per_prompt, expected):
  # row_groups_for(G R) (one per core, >= 8 rows each), lowered until it divides G
  monkeypatch.setattr(sampling, "_cpu_cores", lambda: cpus)
  monkeypatch.setattr(sampling.jax, "device_count", lambda: 1)
  assert sampling.grouped_row_groups(prompts_n, per_prompt) == expected


def test_cascade_attention_equals_softmax_over_concatenated_keys():
  # 2 groups x 3 rows, 2 kv heads x 2 query heads; prefix of 5 slots (group 1: first 2 are padding),
  # suffix of 4 slots of which 3 are written. Reference: one softmax over [prefix; suffix] per row, in float64.
  rng = np.random.default_rng(0)
  groups, rows, k, gq, dh, p, s = 2, 3, 2, 2, 4, 5, 4
  b = groups * rows
  q = rng.normal(size=(b, k, gq, dh)).astype(np.float32)
  prefix = LayerCache(*(rng.normal(size=(groups, k, p, dh)).astype(np.float32) * 3 for _ in range(2)))
  suffix = LayerCache(*(rng.normal(size=(b, k, s, dh)).astype(np.float32) * 3 for _ in range(2)))
  prefix_valid = np.ones((groups, p), bool)
  prefix_valid[1, :2] = False
  suffix_valid = np.arange(s) < 3
  out = cascade.cascade_attention(
      jnp.asarray(q), prefix, jnp.where(prefix_valid, 0.0, _NEG_INF)[:, None, None, :], suffix,
      jnp.where(suffix_valid, 0.0, _NEG_INF)[None, None, None, :])
  for row in range(b):
    g = row // rows
    keys = np.concatenate([prefix.k_BxKxSxDh[g][:, prefix_valid[g]], suffix.k_BxKxSxDh[row][:, suffix_valid]], axis=1)
    values = np.concatenate([prefix.v_BxKxSxDh[g][:, prefix_valid[g]], suffix.v_BxKxSxDh[row][:, suffix_valid]], axis=1)
    z = np.einsum("kqe,kse->kqs", q[row].astype(np.float64), keys)
    weights = np.exp(z - z.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out)[row], np.einsum("kqs,kse->kqe", weights, values), rtol=1e-5, atol=1e-5)
