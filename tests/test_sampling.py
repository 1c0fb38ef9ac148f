"""Tests for star_jax.sampling: the KV-cache decode loop against full forward passes, stopping, sharding.

The sampler compiles once per (SamplingConfig, eos_id, shapes), so the tests share a few configs and one
batch of 8 left-padded prompts of different lengths.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax import models, sampling, sharding
from star_jax.models import ModelConfig, functional
from star_jax.sampling import SamplingConfig, left_pad, sample

MODEL = ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
PAD = 0
NO_EOS = -1  # never produced: rows run to max_new_tokens
N = 8  # max_new_tokens
LENGTHS = [3, 8, 1, 5, 2, 7, 4, 6]
PROMPTS = [[int(t) for t in np.random.default_rng(i).integers(1, MODEL.vocab_size, n)] for i, n in enumerate(LENGTHS)]
GREEDY = SamplingConfig(max_new_tokens=N)
WIDTH = max(LENGTHS) + N  # teacher-forcing reference width


@pytest.fixture(scope="module")
def params():
    # rbg keys: the same init_params code, but far faster to compile on CPU than threefry.
    return jax.jit(models.init_params, static_argnums=0)(MODEL, jax.random.key(0, impl="rbg"))


@pytest.fixture(scope="module")
def prompts():
    tokens_BxP, lengths_B = left_pad(PROMPTS, PAD, multiple=8)
    assert tokens_BxP.shape == (8, 8)
    return tokens_BxP, lengths_B


@pytest.fixture(scope="module")
def greedy(params, prompts):
    out = sample(MODEL, params, *prompts, jax.random.key(0), cfg=GREEDY, eos_id=NO_EOS, pad_id=PAD)
    return jax.tree.map(np.asarray, out)


_forward = jax.jit(functools.partial(models.forward, MODEL))


def reference_logits(params, generated_BxN, lengths_B):
    """Full-forward (no cache) logits that predicted each generated token: [B, N, V], rows alone.

    Each row is prompt + generated tokens, right-padded (segment id 0) to WIDTH; padding does not change
    a row's logits (tests/test_models.py), and causality makes one pass equal to re-running per step.
    """
    tokens_BxW = np.full((len(PROMPTS), WIDTH), PAD, np.int32)
    segments_BxW = np.zeros((len(PROMPTS), WIDTH), np.int32)
    for row, prompt in enumerate(PROMPTS):
        seq = list(prompt) + list(generated_BxN[row, :lengths_B[row]])
        tokens_BxW[row, :len(seq)] = seq
        segments_BxW[row, :len(seq)] = 1
    logits_BxWxV = np.asarray(_forward(params, jnp.asarray(tokens_BxW), segment_ids_BxT=jnp.asarray(segments_BxW)))
    index_BxN = np.asarray(LENGTHS)[:, None] - 1 + np.arange(N)[None, :]
    return np.take_along_axis(logits_BxWxV, index_BxN[:, :, None], axis=1)


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def truncated_logprobs(logits_V, temperature, top_k, top_p):
    """log of the renormalised distribution: temperature; the k largest; the smallest nucleus with mass >= p."""
    z = logits_V.astype(np.float64) / temperature
    if top_k:
        z = np.where(z < np.sort(z)[-top_k], -np.inf, z)
    if top_p < 1:
        probs = np.exp(log_softmax(z))
        order = np.argsort(-z, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = int(np.searchsorted(cumulative, top_p)) + 1  # first index with cumulative >= top_p, inclusive
        z = np.where(z < z[order[keep - 1]], -np.inf, z)
    return log_softmax(z)


def gathered(logps_BxNxV, tokens_BxN):
    return np.take_along_axis(logps_BxNxV, tokens_BxN[:, :, None], axis=-1)[:, :, 0]


# ---------------------------------------------------------------------------------------------------
# greedy


def test_greedy_equals_full_forward_argmax(params, greedy):
    assert greedy.tokens_BxN.shape == (8, N) and greedy.logps_BxN.shape == (8, N)
    np.testing.assert_array_equal(greedy.lengths_B, [N] * 8)
    ref_BxNxV = reference_logits(params, greedy.tokens_BxN, greedy.lengths_B)
    np.testing.assert_array_equal(greedy.tokens_BxN, ref_BxNxV.argmax(axis=-1))
    np.testing.assert_allclose(greedy.logps_BxN, gathered(log_softmax(ref_BxNxV), greedy.tokens_BxN),
                               rtol=1e-5, atol=1e-5)
    assert (greedy.logps_BxN < 0).all()
    assert len({tuple(r) for r in greedy.tokens_BxN}) > 4  # the rows really differ


def test_row_alone_equals_row_in_mixed_batch(params, greedy):
    # Prompt 0 (3 tokens) alone, unpadded, batch 1 — in the batch it had 5 left-padding slots.
    tokens_BxP, lengths_B = left_pad([PROMPTS[0]], PAD, multiple=1)
    assert tokens_BxP.shape == (1, 3)
    alone = sample(MODEL, params, tokens_BxP, lengths_B, jax.random.key(0), cfg=GREEDY, eos_id=NO_EOS, pad_id=PAD)
    np.testing.assert_array_equal(np.asarray(alone.tokens_BxN)[0], greedy.tokens_BxN[0])
    np.testing.assert_allclose(np.asarray(alone.logps_BxN)[0], greedy.logps_BxN[0], rtol=1e-5, atol=1e-5)


def test_max_new_tokens_argument_lowers_the_limit_without_recompiling(params, prompts, greedy):
    before = sample._cache_size()
    out = sample(MODEL, params, *prompts, jax.random.key(0), cfg=GREEDY, eos_id=NO_EOS, pad_id=PAD,
                 max_new_tokens=jnp.int32(3))
    np.testing.assert_array_equal(np.asarray(out.lengths_B), [3] * 8)
    np.testing.assert_array_equal(np.asarray(out.tokens_BxN)[:, :3], greedy.tokens_BxN[:, :3])
    assert (np.asarray(out.tokens_BxN)[:, 3:] == PAD).all()
    assert (np.asarray(out.logps_BxN)[:, 3:] == 0).all()
    compiled = sample._cache_size()
    # a different limit reuses the compilation; one above cfg.max_new_tokens is capped at it
    out = sample(MODEL, params, *prompts, jax.random.key(0), cfg=GREEDY, eos_id=NO_EOS, pad_id=PAD,
                 max_new_tokens=jnp.int32(100))
    np.testing.assert_array_equal(np.asarray(out.tokens_BxN), greedy.tokens_BxN)
    np.testing.assert_array_equal(np.asarray(out.lengths_B), [N] * 8)
    assert sample._cache_size() == compiled <= before + 1


@pytest.mark.parametrize("check_every", [1, 4])  # 4: early-exit all-reduces only every 4 steps
def test_sharded_over_8_devices_equals_single_device(params, prompts, greedy, check_every):
    mesh = sharding.make_mesh([("data", 8), ("fsdp", 1), ("tensor", 1)])
    tokens_BxP = sharding.shard_global_batch(prompts[0], mesh)
    lengths_B = sharding.shard_global_batch(prompts[1], mesh)
    assert len(tokens_BxP.sharding.device_set) == 8
    replicated = jax.device_put(params, sharding.replicated(mesh))
    out = sample(MODEL, replicated, tokens_BxP, lengths_B, jax.random.key(0), cfg=GREEDY, eos_id=NO_EOS,
                 pad_id=PAD, check_every=check_every)
    np.testing.assert_array_equal(np.asarray(out.tokens_BxN), greedy.tokens_BxN)
    np.testing.assert_array_equal(np.asarray(out.lengths_B), greedy.lengths_B)
    np.testing.assert_allclose(np.asarray(out.logps_BxN), greedy.logps_BxN, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("row_groups", [2, 4])
def test_row_groups_change_nothing(params, prompts, greedy, row_groups):
    # The rows decoded as independent groups (what a multi-core CPU gets): same tokens, lengths, logps.
    out = sample(MODEL, params, *prompts, jax.random.key(0), cfg=GREEDY, eos_id=NO_EOS, pad_id=PAD,
                 row_groups=row_groups)
    np.testing.assert_array_equal(np.asarray(out.tokens_BxN), greedy.tokens_BxN)
    np.testing.assert_array_equal(np.asarray(out.lengths_B), greedy.lengths_B)
    np.testing.assert_allclose(np.asarray(out.logps_BxN), greedy.logps_BxN, rtol=1e-5, atol=1e-5)


def test_row_groups_must_divide_the_batch(params, prompts):
    with pytest.raises(ValueError, match="row_groups=3 must be >= 1 and divide the batch size 8"):
        sample(MODEL, params, *prompts, jax.random.key(0), cfg=GREEDY, eos_id=NO_EOS, pad_id=PAD, row_groups=3)


def test_check_every_must_be_positive(params, prompts):
    with pytest.raises(ValueError, match="check_every=0 must be >= 1"):
        sample(MODEL, params, *prompts, jax.random.key(0), cfg=GREEDY, eos_id=NO_EOS, pad_id=PAD, check_every=0)


@pytest.mark.parametrize("cpus, devices, batch, expected", [
    (2, 1, 32, 2), (2, 1, 8, 1), (2, 1, 12, 1), (16, 1, 32, 4), (16, 1, 24, 3), (6, 1, 40, 5), (1, 1, 32, 1),
    (2, 8, 32, 1),  # a multi-device mesh already splits the batch
])
def test_row_groups_for_hand_computed(monkeypatch, cpus, devices, batch, expected):
    monkeypatch.setattr(sampling, "_cpu_cores", lambda: cpus)
    monkeypatch.setattr(sampling.jax, "device_count", lambda: devices)
    assert sampling.row_groups_for(batch) == expected


@pytest.mark.parametrize("n, ends", [(8, (8,)), (64, (64,)), (127, (127,)), (128, (64, 128)), (130, (65, 130)),
                                     (200, (67, 134, 200)), (288, (72, 144, 216, 288)), (1000, (250, 500, 750, 1000))])
def test_chunk_ends_hand_computed(n, ends):
    # At most 4 near-equal chunks of at least 64 steps, the last one ending at n.
    assert sampling._chunk_ends(n) == ends


@pytest.mark.parametrize("check_every", [1, 3])
def test_cache_grown_in_chunks_equals_one_chunk(params, prompts, greedy, monkeypatch, check_every):
    # Chunks of 2 steps (the cache grows three times within N = 8 steps), with 2 row groups and a stop
    # sequence that ends row 0 inside the third chunk: the same as the one-chunk, one-group run. With
    # check_every=3 the early-exit blocks straddle the chunk ends.
    assert sampling._chunk_ends(N) == (N,)
    monkeypatch.setattr(sampling, "_MIN_DECODE_CHUNK", 2)
    assert sampling._chunk_ends(N) == (2, 4, 6, 8)
    stop = tuple(int(t) for t in greedy.tokens_BxN[0, 3:5])
    cfg = SamplingConfig(max_new_tokens=N, stop_sequences=(stop,))
    chunked = jax.jit(sample.__wrapped__, static_argnames=("model_config", "cfg", "eos_id", "pad_id", "row_groups",
                                                           "check_every"))
    out = chunked(MODEL, params, *prompts, jax.random.key(0), cfg=cfg, eos_id=NO_EOS, pad_id=PAD, row_groups=2,
                  check_every=check_every)
    reference = sample(MODEL, params, *prompts, jax.random.key(0), cfg=cfg, eos_id=NO_EOS, pad_id=PAD, row_groups=1)
    lengths = _check_truncated(out, greedy, cfg.stop_sequences)
    assert lengths[0] == 5  # its stop sequence is generated at steps 3 and 4
    for x, ref in zip(out, reference):
        np.testing.assert_allclose(np.asarray(x), np.asarray(ref), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# stopping


def _first_stop(row, stop_sequences):
    """Index of the token that ends `row` (the last token of the first completed stop sequence), or None."""
    for i in range(len(row)):
        for seq in stop_sequences:
            if i + 1 >= len(seq) and tuple(row[i + 1 - len(seq):i + 1]) == tuple(seq):
                return i
    return None


def _check_truncated(out, greedy, stop_sequences):
    """Each row is the greedy row up to and including its stop, then padding; returns the lengths."""
    tokens_BxN, lengths_B, logps_BxN = (np.asarray(x) for x in out)
    expected_lengths = []
    for row in range(8):
        stop = _first_stop(greedy.tokens_BxN[row], stop_sequences)
        length = N if stop is None else stop + 1
        expected_lengths.append(length)
        np.testing.assert_array_equal(tokens_BxN[row, :length], greedy.tokens_BxN[row, :length])
        assert (tokens_BxN[row, length:] == PAD).all()
        np.testing.assert_allclose(logps_BxN[row, :length], greedy.logps_BxN[row, :length], rtol=1e-5, atol=1e-5)
        assert (logps_BxN[row, length:] == 0).all()
    np.testing.assert_array_equal(lengths_B, expected_lengths)
    return expected_lengths


def test_eos_ends_a_row(params, prompts, greedy):
    # EOS := the token row 0 produces first at step j >= 2, so row 0 stops after j + 1 tokens.
    row0 = list(greedy.tokens_BxN[0])
    j = next(i for i in range(2, N) if row0[i] not in row0[:i] and row0[i] != PAD)
    eos = int(row0[j])
    out = sample(MODEL, params, *prompts, jax.random.key(0), cfg=GREEDY, eos_id=eos, pad_id=PAD)
    lengths = _check_truncated(out, greedy, [(eos,)])
    assert lengths[0] == j + 1 and int(np.asarray(out.tokens_BxN)[0, j]) == eos  # EOS is kept
    assert min(lengths) < N


@pytest.mark.parametrize("check_every", [1, 3])
def test_stop_sequences_end_rows_and_the_loop_exits_early(params, prompts, greedy, monkeypatch, check_every):
    # Row r gets the stop sequence (its tokens 1, 2); row 0 instead a 3-token one (tokens 1..3), so every
    # row stops by step 3 (earlier where another row's sequence matches first) and the loop can exit:
    # after the step that stops the last row (check_every=1), or at the next multiple of 3 steps.
    stops = [tuple(int(t) for t in greedy.tokens_BxN[0, 1:4])]
    stops += [tuple(int(t) for t in greedy.tokens_BxN[r, 1:3]) for r in range(1, 8)]
    cfg = SamplingConfig(max_new_tokens=N, stop_sequences=tuple(dict.fromkeys(stops)))

    # Count decode-loop iterations: decode_step runs once per iteration (the prefill is forward_cached).
    calls = []
    original = functional.decode_step

    def counting_decode_step(*args):
        jax.debug.callback(lambda: calls.append(1))
        return original(*args)

    monkeypatch.setattr(functional, "decode_step", counting_decode_step)
    fresh_sample = jax.jit(sample.__wrapped__, static_argnames=("model_config", "cfg", "eos_id", "pad_id",
                                                                "check_every"))
    out = fresh_sample(MODEL, params, *prompts, jax.random.key(0), cfg=cfg, eos_id=NO_EOS, pad_id=PAD,
                       check_every=check_every)
    jax.block_until_ready(out)
    jax.effects_barrier()

    lengths = _check_truncated(out, greedy, cfg.stop_sequences)
    assert max(lengths) <= 4 < N
    tokens_BxN = np.asarray(out.tokens_BxN)
    for row, length in enumerate(lengths):  # every row ends with one of the stop sequences, kept in the output
        assert any(tuple(tokens_BxN[row, length - len(seq):length]) == seq for seq in cfg.stop_sequences)
    # no iterations after every row stopped, beyond the rest of a check_every block
    assert len(calls) == min(N, -(-max(lengths) // check_every) * check_every)


# ---------------------------------------------------------------------------------------------------
# sampling with temperature, top-k, top-p


def test_temperature_sampling_deterministic_per_rng_and_logps(params, prompts, greedy):
    cfg = SamplingConfig(max_new_tokens=N, temperature=0.8)
    run = functools.partial(sample, MODEL, params, *prompts, cfg=cfg, eos_id=NO_EOS, pad_id=PAD)
    first, again, other = (jax.tree.map(np.asarray, run(rng))
                           for rng in (jax.random.key(1), jax.random.key(1), jax.random.key(2)))
    np.testing.assert_array_equal(first.tokens_BxN, again.tokens_BxN)
    np.testing.assert_array_equal(first.logps_BxN, again.logps_BxN)
    assert (first.tokens_BxN != other.tokens_BxN).mean() > 0.3
    assert (first.tokens_BxN != greedy.tokens_BxN).mean() > 0.3
    for out in (first, other):
        ref_BxNxV = reference_logits(params, out.tokens_BxN, out.lengths_B)
        np.testing.assert_allclose(out.logps_BxN, gathered(log_softmax(ref_BxNxV / 0.8), out.tokens_BxN),
                                   rtol=1e-4, atol=1e-4)


def test_top_k_top_p_logps_are_the_renormalised_distribution(params, prompts):
    cfg = SamplingConfig(max_new_tokens=N, temperature=0.7, top_k=8, top_p=0.6)
    out = jax.tree.map(np.asarray, sample(MODEL, params, *prompts, jax.random.key(3), cfg=cfg, eos_id=NO_EOS,
                                          pad_id=PAD))
    ref_BxNxV = reference_logits(params, out.tokens_BxN, out.lengths_B)
    expected_BxNxV = np.stack([np.stack([truncated_logprobs(v, 0.7, 8, 0.6) for v in row]) for row in ref_BxNxV])
    kept_BxN = np.isfinite(expected_BxNxV).sum(axis=-1)
    assert (kept_BxN >= 1).all() and (kept_BxN <= 8).all() and (kept_BxN > 1).any()
    np.testing.assert_allclose(out.logps_BxN, gathered(expected_BxNxV, out.tokens_BxN), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cfg", [SamplingConfig(max_new_tokens=N, temperature=1.5, top_k=1),
                                 SamplingConfig(max_new_tokens=N, temperature=1.5, top_p=1e-6)],
                         ids=["top_k_1", "tiny_top_p"])
def test_single_token_truncation_is_greedy(params, prompts, greedy, cfg):
    out = sample(MODEL, params, *prompts, jax.random.key(4), cfg=cfg, eos_id=NO_EOS, pad_id=PAD)
    np.testing.assert_array_equal(np.asarray(out.tokens_BxN), greedy.tokens_BxN)
    np.testing.assert_array_equal(np.asarray(out.logps_BxN), 0.0)  # log 1: the only token left


LOG_1234 = np.log([0.1, 0.2, 0.3, 0.4]).astype(np.float32)


@pytest.mark.parametrize("cfg, probs", [
    (SamplingConfig(temperature=0.0), [0.1, 0.2, 0.3, 0.4]),
    (SamplingConfig(temperature=1.0), [0.1, 0.2, 0.3, 0.4]),
    (SamplingConfig(temperature=0.5), [0.01 / 0.3, 0.04 / 0.3, 0.09 / 0.3, 0.16 / 0.3]),  # p^2 renormalised
    (SamplingConfig(temperature=1.0, top_k=2), [0.0, 0.0, 3 / 7, 4 / 7]),
    (SamplingConfig(temperature=1.0, top_p=0.65), [0.0, 0.0, 3 / 7, 4 / 7]),  # .4 < .65 <= .4 + .3
    (SamplingConfig(temperature=1.0, top_p=0.35), [0.0, 0.0, 0.0, 1.0]),  # .4 alone already covers .35
    (SamplingConfig(temperature=1.0, top_p=0.85), [0.0, 0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9]),  # .7 < .85 <= .9
    (SamplingConfig(temperature=1.0, top_p=0.95), [0.1, 0.2, 0.3, 0.4]),  # needs all four: .9 < .95
    (SamplingConfig(temperature=1.0, top_k=3, top_p=0.5), [0.0, 0.0, 3 / 7, 4 / 7]),  # nucleus of the top 3
], ids=["greedy", "t1", "t05", "k2", "p065", "p035", "p085", "p095", "k3p05"])
def test_sampling_distribution_hand_computed(cfg, probs):
    logps_BxV = sampling._sampling_logprobs(jnp.asarray(LOG_1234[None]), cfg)
    np.testing.assert_allclose(np.exp(np.asarray(logps_BxV))[0], probs, rtol=1e-5, atol=1e-6)


def test_sampled_frequencies_follow_the_truncated_distribution():
    # 20000 draws from top-2 of [.1 .2 .3 .4]: frequencies 3/7 and 4/7 (4-sigma tolerance ~0.014).
    logits_BxV = jnp.broadcast_to(jnp.asarray(LOG_1234), (20_000, 4))
    token_B, logp_B = sampling._choose(logits_BxV, jax.random.key(0), SamplingConfig(temperature=1.0, top_k=2))
    counts = np.bincount(np.asarray(token_B), minlength=4) / 20_000
    np.testing.assert_allclose(counts, [0.0, 0.0, 3 / 7, 4 / 7], atol=0.015)
    expected_logp_V = np.log([1.0, 1.0, 3 / 7, 4 / 7])  # tokens 0 and 1 never drawn (checked above)
    np.testing.assert_allclose(np.asarray(logp_B), expected_logp_V[np.asarray(token_B)], rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# inputs and validation


def test_left_pad_hand_computed():
    tokens_BxP, lengths_B = left_pad([[5, 6, 7], [8], [1, 2, 3, 4, 5]], pad_id=0, multiple=4)
    np.testing.assert_array_equal(tokens_BxP, [[0, 0, 0, 0, 0, 5, 6, 7],
                                               [0, 0, 0, 0, 0, 0, 0, 8],
                                               [0, 0, 0, 1, 2, 3, 4, 5]])
    assert tokens_BxP.dtype == np.int32
    np.testing.assert_array_equal(lengths_B, [3, 1, 5])
    tokens_BxP, _ = left_pad([[5, 6, 7, 9]], pad_id=1, multiple=4)
    np.testing.assert_array_equal(tokens_BxP, [[5, 6, 7, 9]])  # already a multiple: no padding


@pytest.mark.parametrize("prompts", [[], [[1, 2], []]])
def test_left_pad_rejects_empty(prompts):
    with pytest.raises(ValueError, match="at least one token"):
        left_pad(prompts, pad_id=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(stop_sequences=((1, 2), ())), "stop_sequences"),
])
def test_sampling_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)
