"""Tests for star_jax.models: the decoder LM's invariants with a tiny config, and hand-computed maths."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from star_jax import models, sharding
from star_jax.models import ModelConfig, functional
from star_jax.models.transformer import RMSNorm, rotary_embedding

# Grouped-query attention (2 query heads per kv head) and q/k/v biases, so both paths are exercised.
CONFIG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, qkv_bias=True)
B, T = 2, 12


@pytest.fixture(scope="module")
def params():
    # An rbg key: the same init_params code, but far faster to compile on CPU than the default threefry.
    params = jax.jit(models.init_params, static_argnums=0)(CONFIG, jax.random.key(0, impl="rbg"))
    # The biases initialise to zero; give them values so that a mistake in how they are applied shows.
    rng = np.random.default_rng(1)
    for i in range(CONFIG.n_layers):
        attn = params[f"layer_{i}"]["attn"]
        for name in ("q_bias", "k_bias", "v_bias"):
            attn[name] = jnp.asarray(0.5 * rng.normal(size=attn[name].shape), jnp.float32)
    return params


@pytest.fixture(scope="module")
def fwd():
    """forward jitted once for CONFIG (recompiles only for new shapes / optional-argument patterns)."""
    return jax.jit(functools.partial(models.forward, CONFIG))


@pytest.fixture(scope="module")
def tokens_BxT():
    return jnp.asarray(np.random.default_rng(2).integers(0, CONFIG.vocab_size, (B, T)), jnp.int32)


# ---------------------------------------------------------------------------------------------------
# forward: shapes, finiteness, causality, jit, padding and packing invariance


def test_shapes_dtype_and_finite(params, fwd, tokens_BxT):
    logits_BxTxV = fwd(params, tokens_BxT)
    assert logits_BxTxV.shape == (B, T, CONFIG.vocab_size)
    assert logits_BxTxV.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits_BxTxV)).all()
    # not degenerate: different positions give different distributions
    assert np.asarray(logits_BxTxV).std(axis=-1).min() > 1e-3
    assert not np.allclose(np.asarray(logits_BxTxV[:, 0]), np.asarray(logits_BxTxV[:, 1]))


def test_forward_with_hidden_projects_through_lm_head(params, tokens_BxT):
    logits_BxTxV, hidden_BxTxD = jax.jit(functools.partial(models.forward_with_hidden, CONFIG))(params, tokens_BxT)
    assert hidden_BxTxD.shape == (B, T, CONFIG.d_model)
    np.testing.assert_allclose(np.asarray(logits_BxTxV),
                               np.einsum("btd,dv->btv", np.asarray(hidden_BxTxD), np.asarray(params["lm_head"])),
                               rtol=1e-5, atol=1e-5)


def test_causal_future_tokens_do_not_change_earlier_logits(params, fwd, tokens_BxT):
    changed_BxT = tokens_BxT.at[:, 6].set((tokens_BxT[:, 6] + 1) % CONFIG.vocab_size)
    before = np.asarray(fwd(params, tokens_BxT))
    after = np.asarray(fwd(params, changed_BxT))
    np.testing.assert_array_equal(after[:, :6], before[:, :6])  # exactly
    assert np.abs(after[:, 6:] - before[:, 6:]).max(axis=-1).min() > 1e-4  # every later position moves


def test_jit_equals_no_jit(params, fwd, tokens_BxT):
    eager = models.forward(CONFIG, params, tokens_BxT)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(fwd(params, tokens_BxT)), rtol=1e-5, atol=1e-5)


def test_explicit_single_segment_equals_default(params, fwd, tokens_BxT):
    default = fwd(params, tokens_BxT)
    ones = fwd(params, tokens_BxT, segment_ids_BxT=jnp.ones((B, T), jnp.int32),
               positions_BxT=jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T)))
    np.testing.assert_allclose(np.asarray(ones), np.asarray(default), rtol=1e-6, atol=1e-6)


def test_right_padding_and_packing_leave_each_example_unchanged(params, fwd):
    rng = np.random.default_rng(0)
    a = rng.integers(0, CONFIG.vocab_size, 7).astype(np.int32)
    b = rng.integers(0, CONFIG.vocab_size, 5).astype(np.int32)
    alone_a = np.asarray(fwd(params, jnp.asarray(a[None])))[0]
    alone_b = np.asarray(fwd(params, jnp.asarray(b[None])))[0]

    # row 0: `a` then 5 padding slots (segment 0, junk tokens); row 1: `a` and `b` packed (segments 1, 2)
    pad = rng.integers(0, CONFIG.vocab_size, 5).astype(np.int32)
    tokens = np.stack([np.concatenate([a, pad]), np.concatenate([a, b])])
    segments = np.asarray([[1] * 7 + [0] * 5, [1] * 7 + [2] * 5], np.int32)
    logits = np.asarray(fwd(params, jnp.asarray(tokens), segment_ids_BxT=jnp.asarray(segments)))
    assert np.isfinite(logits).all()  # fully masked padding queries are finite, too
    np.testing.assert_allclose(logits[0, :7], alone_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[1, :7], alone_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[1, 7:], alone_b, rtol=1e-5, atol=1e-5)

    # Rotary attention only sees relative positions, so not restarting them (b at 7..11) changes nothing,
    # while positions that break the order (all 0) do: the positions argument is really used.
    index_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))
    shifted = np.asarray(fwd(params, jnp.asarray(tokens), segment_ids_BxT=jnp.asarray(segments),
                             positions_BxT=index_BxT))
    np.testing.assert_allclose(shifted[1, 7:], alone_b, rtol=1e-5, atol=1e-5)
    flat = np.asarray(fwd(params, jnp.asarray(tokens), segment_ids_BxT=jnp.asarray(segments),
                          positions_BxT=jnp.zeros_like(index_BxT)))
    assert np.abs(flat[1, 7:] - alone_b).max() > 1e-3


def test_bfloat16_compute_is_finite_and_close(params, fwd, tokens_BxT):
    config = dataclasses.replace(CONFIG, dtype="bfloat16")  # float32 parameters, bfloat16 activations
    low = jax.jit(functools.partial(models.forward, config))(params, tokens_BxT)
    high = fwd(params, tokens_BxT)
    assert low.dtype == jnp.float32
    assert np.isfinite(np.asarray(low)).all()
    scale = np.abs(np.asarray(high)).max()
    np.testing.assert_allclose(np.asarray(low), np.asarray(high), atol=0.1 * scale)


def test_gqa_equals_multi_head_with_repeated_kv_heads(params, fwd, tokens_BxT):
    # Query head h uses kv head h // G, so repeating each kv head G times gives an equivalent MHA model.
    group = CONFIG.n_heads // CONFIG.n_kv_heads
    mha_config = dataclasses.replace(CONFIG, n_kv_heads=CONFIG.n_heads)
    mha_params = jax.tree.map(lambda x: x, params)
    for i in range(CONFIG.n_layers):
        attn = dict(params[f"layer_{i}"]["attn"])
        for name in ("k", "v"):
            attn[name] = jnp.repeat(attn[name], group, axis=1)  # [D, K, Dh] -> [D, H, Dh]
            attn[name + "_bias"] = jnp.repeat(attn[name + "_bias"], group, axis=0)  # [K, Dh] -> [H, Dh]
        mha_params[f"layer_{i}"] = {**params[f"layer_{i}"], "attn": attn}
    assert models.count_params(mha_params) == mha_config.num_params()
    mha = jax.jit(functools.partial(models.forward, mha_config))(mha_params, tokens_BxT)
    np.testing.assert_allclose(np.asarray(mha), np.asarray(fwd(params, tokens_BxT)), rtol=1e-5, atol=1e-5)


def test_tied_embeddings_project_with_the_embedding(params, tokens_BxT):
    config = dataclasses.replace(CONFIG, tie_embeddings=True)
    assert "lm_head" not in models.abstract_params(config)
    params = {k: v for k, v in params.items() if k != "lm_head"}
    assert models.count_params(params) == config.num_params()
    logits_BxTxV, hidden_BxTxD = jax.jit(functools.partial(models.forward_with_hidden, config))(params, tokens_BxT)
    np.testing.assert_allclose(np.asarray(logits_BxTxV),
                               np.asarray(hidden_BxTxD) @ np.asarray(params["embedding"]).T, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# KV cache


def test_kv_cache_prefill_then_token_by_token_equals_full_forward(params, fwd, tokens_BxT):
    """Row 0 fills the whole cache; row 1 is left-padded by 3 slots (masked out, positions from 0)."""
    pad = 3
    prefill = 5
    step = jax.jit(functools.partial(models.forward_cached, CONFIG))
    key_valid_BxS = jnp.asarray([[True] * T, [False] * pad + [True] * (T - pad)])
    positions_BxT = jnp.asarray([list(range(T)), [0] * pad + list(range(T - pad))], jnp.int32)
    caches = models.init_cache(CONFIG, B, T)
    assert caches[0].k_BxKxSxDh.shape == (B, CONFIG.n_kv_heads, T, CONFIG.head_dim)

    logits_BxPxV, _, caches = step(params, tokens_BxT[:, :prefill], positions_BxT[:, :prefill], key_valid_BxS,
                                   caches, jnp.int32(0))
    pieces = [np.asarray(logits_BxPxV)]
    for i in range(prefill, T):
        logits_Bx1xV, _, caches = step(params, tokens_BxT[:, i:i + 1], positions_BxT[:, i:i + 1], key_valid_BxS,
                                       caches, jnp.int32(i))
        pieces.append(np.asarray(logits_Bx1xV))
    cached_BxTxV = np.concatenate(pieces, axis=1)
    assert cached_BxTxV.shape == (B, T, CONFIG.vocab_size)

    full_0 = np.asarray(fwd(params, tokens_BxT))[0]
    full_1 = np.asarray(fwd(params, tokens_BxT[1:, pad:]))[0]  # row 1's real tokens alone
    np.testing.assert_allclose(cached_BxTxV[0], full_0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cached_BxTxV[1, pad:], full_1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True], ids=["lm_head", "tied"])
def test_decode_step_equals_forward_cached_and_full_forward(params, tokens_BxT, tied):
    """The sampler's path: prefill (last logits only) with forward_cached, then decode_step per token.

    Same rows as above (row 1 left-padded by 3 slots); GQA with q/k/v biases; the tied config projects
    with the embedding. Logits match the full forward, and the caches match forward_cached's."""
    config = dataclasses.replace(CONFIG, tie_embeddings=tied)
    if tied:
        params = {k: v for k, v in params.items() if k != "lm_head"}
    pad, prefill = 3, 5
    key_valid_BxS = jnp.asarray([[True] * T, [False] * pad + [True] * (T - pad)])
    positions_BxT = jnp.asarray([list(range(T)), [0] * pad + list(range(T - pad))], jnp.int32)
    cached_step = jax.jit(functools.partial(models.forward_cached, config), static_argnames="last_logits_only")
    decode = jax.jit(functools.partial(functional.decode_step, config))
    dparams = functional.decode_params(config, params)
    assert dparams["layers"][0]["w_qkv"].shape == ((CONFIG.n_heads + 2 * CONFIG.n_kv_heads) * CONFIG.head_dim,
                                                   CONFIG.d_model)

    last_Bx1xV, _, caches = cached_step(params, tokens_BxT[:, :prefill], positions_BxT[:, :prefill],
                                        key_valid_BxS, models.init_cache(config, B, T), jnp.int32(0),
                                        last_logits_only=True)
    reference_caches = caches
    pieces = []
    for i in range(prefill, T):
        logits_BxV, caches = decode(dparams, tokens_BxT[:, i], positions_BxT[:, i], key_valid_BxS, caches,
                                    jnp.int32(i))
        _, _, reference_caches = cached_step(params, tokens_BxT[:, i:i + 1], positions_BxT[:, i:i + 1],
                                             key_valid_BxS, reference_caches, jnp.int32(i))
        pieces.append(np.asarray(logits_BxV))
    decoded_BxNxV = np.stack(pieces, axis=1)

    full = jax.jit(functools.partial(models.forward, config))
    full_0 = np.asarray(full(params, tokens_BxT))[0]
    full_1 = np.asarray(full(params, tokens_BxT[1:, pad:]))[0]  # row 1's real tokens alone
    assert last_Bx1xV.shape == (B, 1, config.vocab_size)
    np.testing.assert_allclose(np.asarray(last_Bx1xV)[0, 0], full_0[prefill - 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(last_Bx1xV)[1, 0], full_1[prefill - 1 - pad], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(decoded_BxNxV[0], full_0[prefill:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(decoded_BxNxV[1], full_1[prefill - pad:], rtol=1e-5, atol=1e-5)
    for layer, reference in zip(caches, reference_caches):
        for x, ref in zip(layer, reference):
            np.testing.assert_allclose(np.asarray(x), np.asarray(ref), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# parameters: count formula, logical axes


def test_num_params_formula_matches_init_params(params):
    assert models.count_params(params) == CONFIG.num_params()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("config", [
    ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4),
    ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=1, qkv_bias=True),
    ModelConfig(vocab_size=60, d_model=48, n_layers=1, n_heads=6, n_kv_heads=2, head_dim=10, d_ff=40,
                tie_embeddings=True),
    ModelConfig(vocab_size=70, d_model=32, n_layers=3, n_heads=2, d_ff=24, qkv_bias=True, tie_embeddings=True),
], ids=["mha", "gqa_bias", "gqa_headdim_dff_tied", "bias_tied"])
def test_num_params_formula_matches_initialised_tree(config):
    # abstract_params is jax.eval_shape(init_params): the tree init_params builds, without the (slow on
    # CPU) random-number compilation; the `params` fixture checks a real init_params tree for CONFIG.
    assert models.count_params(models.abstract_params(config)) == config.num_params()


def test_num_params_hand_computed():
    # V=10 D=8 L=1 H=2 K=1 Dh=4 F=16 with q/k/v bias, untied:
    # attention 8*2*4 + 2*8*1*4 + 2*4*8 = 192, biases 2*4 + 2*1*4 = 16, two norms 16, MLP 3*8*16 = 384
    # -> block 608; embedding + lm_head 2*10*8 = 160; final norm 8. Total 776.
    config = ModelConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=16, qkv_bias=True)
    assert config.head_dim == 4
    assert config.num_params() == 776
    assert models.count_params(models.abstract_params(config)) == 776


def test_logical_axes_match_params(params):
    axes = models.logical_axes(CONFIG)
    is_spec = lambda x: isinstance(x, P)  # noqa: E731
    assert jax.tree.structure(axes, is_leaf=is_spec) == jax.tree.structure(params)
    for (path, spec), leaf in zip(jax.tree_util.tree_leaves_with_path(axes, is_leaf=is_spec),
                                  jax.tree.leaves(params)):
        assert isinstance(spec, P), path
        assert len(spec) == leaf.ndim, (path, spec, leaf.shape)
    assert axes["embedding"] == P("vocab", "embed")
    assert axes["lm_head"] == P("embed", "vocab")
    assert axes["layer_0"]["attn"]["q"] == P("embed", "heads", "head_dim")
    assert axes["layer_0"]["attn"]["k"] == P("embed", "kv_heads", "head_dim")
    assert axes["layer_0"]["attn"]["o"] == P("heads", "head_dim", "embed")
    assert axes["layer_0"]["mlp"]["down"] == P("mlp", "embed")
    assert axes["final_norm"]["scale"] == P("embed")


def test_params_sharded_over_fsdp_and_tensor_give_the_same_logits(params, tokens_BxT):
    mesh = sharding.make_mesh([("data", 1), ("fsdp", 2), ("tensor", 4)])
    shardings = sharding.tree_shardings(models.logical_axes(CONFIG), params, mesh)
    assert shardings["layer_0"]["attn"]["q"].spec == P("fsdp", "tensor", None)
    assert shardings["layer_0"]["attn"]["k"].spec == P("fsdp", None, None)  # 2 kv heads: not split 4 ways
    assert shardings["embedding"].spec == P("tensor", "fsdp")
    sharded = jax.device_put(params, shardings)
    tokens = sharding.shard_global_batch(np.asarray(tokens_BxT), mesh)
    fwd = jax.jit(sharding.under_mesh(functools.partial(models.forward, CONFIG), mesh))
    logits = fwd(sharded, tokens)
    single = models.forward(CONFIG, params, tokens_BxT)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(single), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# building blocks, hand-computed


def test_rotary_hand_computed():
    # Dh=4, theta=1e4: frequencies w = [1, 1e4^(-1/2)] = [1, 0.01]; pairs are (x0, x2) and (x1, x3).
    x_BxTxNxDh = jnp.asarray([[[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]]]])
    at0 = rotary_embedding(x_BxTxNxDh, jnp.zeros((1, 1), jnp.int32), 10_000.0)
    np.testing.assert_array_equal(np.asarray(at0), np.asarray(x_BxTxNxDh))  # position 0 is the identity

    at1 = np.asarray(rotary_embedding(x_BxTxNxDh, jnp.ones((1, 1), jnp.int32), 10_000.0))[0, 0]
    c, s, c2, s2 = math.cos(1.0), math.sin(1.0), math.cos(0.01), math.sin(0.01)
    np.testing.assert_allclose(at1[0], [c, 0.0, s, 0.0], atol=1e-6)
    np.testing.assert_allclose(at1[1], [0.0, c2, 0.0, s2], atol=1e-6)
    # [x0 cos - x2 sin, x1 cos' - x3 sin', x2 cos + x0 sin, x3 cos' + x1 sin']
    np.testing.assert_allclose(at1[2], [c - 3 * s, 2 * c2 - 4 * s2, 3 * c + s, 4 * c2 + 2 * s2], atol=1e-6)

    at100 = np.asarray(rotary_embedding(x_BxTxNxDh, jnp.full((1, 1), 100, jnp.int32), 10_000.0))[0, 0]
    np.testing.assert_allclose(at100[1], [0.0, c, 0.0, s], atol=1e-5)  # 100 * 0.01 = 1 radian


def test_rotary_relative_positions_and_norm():
    q_Dh, k_Dh = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16)), jnp.float32)
    positions = [(3, 0), (10, 7), (40, 37), (0, 3), (7, 10)]  # m - n = +3 three times, -3 twice
    q_BxTx1xDh = jnp.broadcast_to(q_Dh, (1, len(positions), 1, 16))
    k_BxTx1xDh = jnp.broadcast_to(k_Dh, (1, len(positions), 1, 16))
    rq = rotary_embedding(q_BxTx1xDh, jnp.asarray([[m for m, _ in positions]], jnp.int32), 10_000.0)
    rk = rotary_embedding(k_BxTx1xDh, jnp.asarray([[n for _, n in positions]], jnp.int32), 10_000.0)
    dots = np.asarray(jnp.sum(rq * rk, axis=-1))[0, :, 0]
    np.testing.assert_allclose(dots[:3], dots[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dots[3:], dots[3], rtol=1e-5, atol=1e-5)
    assert abs(dots[0] - dots[3]) > 1e-3  # +3 and -3 differ: the dependence is on m - n, not |m - n|
    np.testing.assert_allclose(np.linalg.norm(np.asarray(rq), axis=-1), np.linalg.norm(np.asarray(q_Dh)), rtol=1e-5)


def test_rmsnorm_hand_computed():
    config = ModelConfig(d_model=2, n_heads=1, norm_eps=1e-6)
    norm = RMSNorm(config)
    # x = [3, 4]: rms = sqrt((9 + 16) / 2) = sqrt(12.5); scale [2, 0.5]
    out = norm.apply({"params": {"scale": jnp.asarray([2.0, 0.5])}}, jnp.asarray([[[3.0, 4.0]]]))
    rms = math.sqrt(12.5 + 1e-6)
    np.testing.assert_allclose(np.asarray(out)[0, 0], [2 * 3 / rms, 0.5 * 4 / rms], rtol=1e-6)
    # eps sits inside the square root: x = [1, 1], eps = 1 -> x / sqrt(2)
    norm_eps1 = RMSNorm(ModelConfig(d_model=2, n_heads=1, norm_eps=1.0))
    out = norm_eps1.apply({"params": {"scale": jnp.ones(2)}}, jnp.asarray([[[1.0, 1.0]]]))
    np.testing.assert_allclose(np.asarray(out)[0, 0], [2 ** -0.5, 2 ** -0.5], rtol=1e-6)
    # initial scale is ones
    init = norm.init(jax.random.key(0), jnp.ones((1, 1, 2)))
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(init)[0]), [1.0, 1.0])


def test_positions_from_segments_hand_computed():
    segments_BxT = jnp.asarray([[1, 1, 1, 2, 2, 0, 0],
                                [1, 2, 2, 2, 3, 3, 3],
                                [1, 1, 1, 1, 1, 1, 1]], jnp.int32)
    expected = [[0, 1, 2, 0, 1, 0, 1],  # padding at the end counts from 0 again (junk, masked out)
                [0, 0, 1, 2, 0, 1, 2],
                [0, 1, 2, 3, 4, 5, 6]]
    np.testing.assert_array_equal(np.asarray(models.positions_from_segments(segments_BxT)), expected)


def test_segment_causal_mask_hand_computed():
    mask_BxTxT = np.asarray(models.segment_causal_mask(jnp.asarray([[1, 1, 2, 2, 0]], jnp.int32)))
    expected = np.asarray([[1, 0, 0, 0, 0],
                           [1, 1, 0, 0, 0],
                           [0, 0, 1, 0, 0],
                           [0, 0, 1, 1, 0],
                           [0, 0, 0, 0, 0]], bool)  # the padding query sees nothing, nothing sees it
    assert mask_BxTxT.dtype == bool
    np.testing.assert_array_equal(mask_BxTxT[0], expected)


# ---------------------------------------------------------------------------------------------------
# bad inputs


def test_rank_one_tokens_rejected(params):
    with pytest.raises(ValueError, match="tokens"):
        models.forward(CONFIG, params, jnp.zeros((5,), jnp.int32))


@pytest.mark.parametrize("kwargs, field", [
    (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),
    (dict(d_model=30, n_heads=2, head_dim=5), "head_dim"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(n_layers=0), "n_layers"),
    (dict(dtype="float64"), "dtype"),
])
def test_bad_model_config_rejected_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"model.{field}"):
        ModelConfig(**kwargs)


def test_model_config_defaults_filled():
    config = ModelConfig(d_model=64, n_heads=4)
    assert (config.n_kv_heads, config.head_dim, config.d_ff) == (4, 16, 256)
    hash(config)  # frozen: usable as a static jit argument
