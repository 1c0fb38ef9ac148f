"""Tests for star_jax.losses: token log-probs and the masked NLL, against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax.losses import masked_nll, masked_nll_sum, token_logprobs

# softmax(log [1, 2, 3, 4]) = [0.1, 0.2, 0.3, 0.4] exactly (up to float rounding).
LOG_1234 = [math.log(1.0), math.log(2.0), math.log(3.0), math.log(4.0)]


def test_token_logprobs_hand_computed():
    # B=1, T=3, V=4; row t=0 has probabilities .1 .2 .3 .4, row t=1 is uniform, row t=2 is a shifted
    # copy of row 0 (log-softmax is shift invariant).
    logits_BxTxV = jnp.asarray([[LOG_1234, [0.0, 0.0, 0.0, 0.0], [v + 7.0 for v in LOG_1234]]], jnp.float32)
    targets_BxT = jnp.asarray([[3, 1, 0]], jnp.int32)
    logps_BxT = token_logprobs(logits_BxTxV, targets_BxT)
    assert logps_BxT.shape == (1, 3)
    assert logps_BxT.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logps_BxT), [[math.log(0.4), -math.log(4.0), math.log(0.1)]],
                               rtol=1e-6, atol=1e-6)


def test_token_logprobs_equals_log_softmax_gathered():
    rng = np.random.default_rng(0)
    logits_BxTxV = jnp.asarray(rng.normal(size=(2, 5, 7)) * 3.0, jnp.float32)
    targets_BxT = jnp.asarray(rng.integers(0, 7, (2, 5)), jnp.int32)
    expected_BxT = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits_BxTxV, axis=-1)),
                                      np.asarray(targets_BxT)[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(token_logprobs(logits_BxTxV, targets_BxT)), expected_BxT,
                               rtol=1e-6, atol=1e-6)


def test_token_logprobs_stable_for_huge_logits():
    # A naive log(softmax) would overflow exp(1e4); the logsumexp form stays finite and accurate up to
    # float32 resolution at 1e4 (one ulp is ~1e-3).
    logits_BxTxV = jnp.asarray([[[1e4, 1e4 - 1.0, -1e4]]], jnp.float32)
    logps_BxT = token_logprobs(logits_BxTxV, jnp.asarray([[0]], jnp.int32))
    # p(0) = 1 / (1 + e^-1).
    np.testing.assert_allclose(np.asarray(logps_BxT), [[-math.log1p(math.exp(-1.0))]], atol=2e-3)
    low_BxT = token_logprobs(logits_BxTxV, jnp.asarray([[2]], jnp.int32))
    assert np.isfinite(np.asarray(low_BxT)).all()
    np.testing.assert_allclose(np.asarray(low_BxT), [[-2e4 - math.log1p(math.exp(-1.0))]], rtol=1e-6)


def test_token_logprobs_bfloat16_logits_computed_in_float32():
    logits_BxTxV = jnp.asarray([[LOG_1234]], jnp.bfloat16)
    logps_BxT = token_logprobs(logits_BxTxV, jnp.asarray([[2]], jnp.int32))
    assert logps_BxT.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logps_BxT), [[math.log(0.3)]], atol=1e-2)


def test_masked_nll_sum_uniform_logits():
    # V=4 uniform logits: every token costs log 4; three of the six tokens are masked in.
    logits_BxTxV = jnp.zeros((2, 3, 4), jnp.float32)
    targets_BxT = jnp.asarray([[0, 1, 2], [3, 3, 0]], jnp.int32)
    mask_BxT = jnp.asarray([[1, 0, 1], [0, 0, 1]], jnp.int32)
    total, weight = masked_nll_sum(logits_BxTxV, targets_BxT, mask_BxT)
    np.testing.assert_allclose(float(total), 3 * math.log(4.0), rtol=1e-6)
    assert float(weight) == 3.0
    np.testing.assert_allclose(float(masked_nll(logits_BxTxV, targets_BxT, mask_BxT)), math.log(4.0), rtol=1e-6)


def test_masked_nll_hand_computed_and_mask_excludes_tokens():
    # Targets 0 and 3 under probabilities .1 .2 .3 .4: nll = -log .1 - log .4 = log 25, mean log 5.
    # The third token (p = .2) is masked out and must not count, whatever its value.
    logits_BxTxV = jnp.asarray([[LOG_1234, LOG_1234, LOG_1234]], jnp.float32)
    targets_BxT = jnp.asarray([[0, 3, 1]], jnp.int32)
    mask_BxT = jnp.asarray([[True, True, False]])
    total, weight = masked_nll_sum(logits_BxTxV, targets_BxT, mask_BxT)
    np.testing.assert_allclose(float(total), math.log(25.0), rtol=1e-6)
    assert float(weight) == 2.0
    np.testing.assert_allclose(float(masked_nll(logits_BxTxV, targets_BxT, mask_BxT)), math.log(5.0), rtol=1e-6)


def test_masked_nll_fractional_weights():
    # Float masks act as per-token weights: (0.5 * log 10 + 2 * log 2.5) / 2.5.
    logits_BxTxV = jnp.asarray([[LOG_1234, LOG_1234]], jnp.float32)
    targets_BxT = jnp.asarray([[0, 3]], jnp.int32)
    mask_BxT = jnp.asarray([[0.5, 2.0]], jnp.float32)
    total, weight = masked_nll_sum(logits_BxTxV, targets_BxT, mask_BxT)
    np.testing.assert_allclose(float(total), 0.5 * math.log(10.0) + 2.0 * math.log(2.5), rtol=1e-6)
    np.testing.assert_allclose(float(weight), 2.5)
    np.testing.assert_allclose(float(masked_nll(logits_BxTxV, targets_BxT, mask_BxT)),
                               (0.5 * math.log(10.0) + 2.0 * math.log(2.5)) / 2.5, rtol=1e-6)


def test_masked_nll_zero_mask_is_zero_with_finite_gradient():
    logits_BxTxV = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
    targets_BxT = jnp.zeros((2, 3), jnp.int32)
    mask_BxT = jnp.zeros((2, 3), jnp.float32)
    total, weight = masked_nll_sum(logits_BxTxV, targets_BxT, mask_BxT)
    assert float(total) == 0.0 and float(weight) == 0.0
    loss, grad_BxTxV = jax.value_and_grad(masked_nll)(logits_BxTxV, targets_BxT, mask_BxT)
    assert float(loss) == 0.0
    assert np.isfinite(np.asarray(grad_BxTxV)).all()
    assert not np.asarray(grad_BxTxV).any()


def test_masked_nll_gradient_hand_computed():
    # d nll / d logits = softmax - onehot(target), divided by the mask sum (2 here), 0 on masked tokens.
    logits_BxTxV = jnp.asarray([[LOG_1234, LOG_1234, LOG_1234]], jnp.float32)
    targets_BxT = jnp.asarray([[0, 3, 1]], jnp.int32)
    mask_BxT = jnp.asarray([[1.0, 1.0, 0.0]], jnp.float32)
    grad_BxTxV = jax.grad(masked_nll)(logits_BxTxV, targets_BxT, mask_BxT)
    expected = np.asarray([[[-0.9, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, -0.6], [0.0, 0.0, 0.0, 0.0]]]) / 2.0
    np.testing.assert_allclose(np.asarray(grad_BxTxV), expected, atol=1e-6)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_sums_over_micro_batches_give_the_full_batch_mean(split):
    # Normalisation is by the mask sum of the whole batch, not per micro-batch or per row.
    rng = np.random.default_rng(split)
    logits_BxTxV = jnp.asarray(rng.normal(size=(6, 4, 9)), jnp.float32)
    targets_BxT = jnp.asarray(rng.integers(0, 9, (6, 4)), jnp.int32)
    mask_BxT = jnp.asarray(rng.random((6, 4)) < 0.6, jnp.float32)
    full = float(masked_nll(logits_BxTxV, targets_BxT, mask_BxT))
    nll_BxT = -np.asarray(token_logprobs(logits_BxTxV, targets_BxT))
    np.testing.assert_allclose(full, (nll_BxT * np.asarray(mask_BxT)).sum() / np.asarray(mask_BxT).sum(),
                               rtol=1e-6)
    totals, weights = 0.0, 0.0
    for chunk in np.array_split(np.arange(6), split):
        total, weight = masked_nll_sum(logits_BxTxV[chunk], targets_BxT[chunk], mask_BxT[chunk])
        totals += float(total)
        weights += float(weight)
    np.testing.assert_allclose(totals / weights, full, rtol=1e-6)
