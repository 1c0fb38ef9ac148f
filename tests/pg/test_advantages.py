"""Advantage estimators against hand-computed values; guardrails (empty groups, one sample, NaN rewards)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from star_jax.pg import advantages

REWARDS = [[1.0, 0.0, 0.0, 1.0],  # half right
           [1.0, 1.0, 1.0, 1.0],  # all right: nothing to learn relative to the group
           [0.0, 0.0, 0.0, 0.0]]  # all wrong

EXPECTED = {
    "none": REWARDS,
    "batch_mean": [[0.5, -0.5, -0.5, 0.5], [0.5] * 4, [-0.5] * 4],  # batch mean 6/12
    "group_mean": [[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [0.0] * 4],
    # r = 1: the others (0, 0, 1) average 1/3; r = 0: the others (1, 0, 1) average 2/3
    "rloo": [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [0.0] * 4, [0.0] * 4],
    "grpo": [[1.0, -1.0, -1.0, 1.0], [0.0] * 4, [0.0] * 4],  # mean 0.5, population std 0.5
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hand_computed(name):
  got = np.asarray(advantages.compute(name, jnp.asarray(REWARDS)))
  np.testing.assert_allclose(got, EXPECTED[name], rtol=1e-5, atol=1e-6)


# One group of 3 valid samples + 1 empty slot (holding garbage), one group with one valid sample.
MASKED_REWARDS = [[1.0, 0.0, 1.0, 5.0], [1.0, 7.0, 7.0, 7.0]]
VALID = [[True, True, True, False], [True, False, False, False]]
STD = math.sqrt(2 / 9)  # rewards (1, 0, 1): mean 2/3, deviations (1/3, -2/3, 1/3)
MASKED_EXPECTED = {
    "none": [[1, 0, 1, 0], [1, 0, 0, 0]],
    "batch_mean": [[0.25, -0.75, 0.25, 0], [0.25, 0, 0, 0]],  # 3 of 4 valid samples right
    "group_mean": [[1 / 3, -2 / 3, 1 / 3, 0], [0, 0, 0, 0]],
    "rloo": [[0.5, -1.0, 0.5, 0], [1.0, 0, 0, 0]],  # a lone sample has no baseline: A = r
    "grpo": [[1 / 3 / STD, -2 / 3 / STD, 1 / 3 / STD, 0], [0, 0, 0, 0]],
}


@pytest.mark.parametrize("name", sorted(MASKED_EXPECTED))
def test_invalid_slots_are_ignored_and_zero(name):
  got = np.asarray(advantages.compute(name, jnp.asarray(MASKED_REWARDS), jnp.asarray(VALID)))
  np.testing.assert_allclose(got, MASKED_EXPECTED[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(advantages.ADVANTAGES))
def test_empty_groups_and_nan_rewards_give_zero_not_nan(name):
  rewards = jnp.asarray([[1.0, 0.0], [jnp.nan, 1.0], [0.5, 0.5]])
  valid = jnp.asarray([[False, False], [True, True], [True, True]])
  got = np.asarray(advantages.compute(name, rewards, valid))
  assert np.all(np.isfinite(got))
  np.testing.assert_array_equal(got[0], [0.0, 0.0])  # an empty group
  assert got[1, 0] == 0.0  # a NaN reward marks its slot invalid
  everything_empty = advantages.compute(name, rewards, jnp.zeros((3, 2), bool))
  np.testing.assert_array_equal(np.asarray(everything_empty), np.zeros((3, 2)))


@pytest.mark.parametrize("name", ["group_mean", "rloo", "grpo"])
def test_all_equal_rewards_give_zero_advantage(name):
  for value in (0.0, 1.0, 0.3):
    got = np.asarray(advantages.compute(name, jnp.full((2, 5), value)))
    np.testing.assert_array_equal(got, np.zeros((2, 5)))


def test_rloo_is_scaled_group_mean():
  rng = np.random.default_rng(0)
  rewards = rng.integers(0, 2, (6, 5)).astype(np.float32)
  rloo = np.asarray(advantages.compute("rloo", rewards))
  centred = np.asarray(advantages.compute("group_mean", rewards))
  np.testing.assert_allclose(rloo, 5 / 4 * centred, rtol=1e-5, atol=1e-6)  # n / (n - 1) (r - mean)


def test_registry_errors_name_the_options():
  with pytest.raises(ValueError, match=r"unknown advantage estimator 'ppo'.*'rloo'"):
    advantages.get_estimator("ppo")
  with pytest.raises(ValueError, match=r"\[groups, samples\]"):
    advantages.compute("rloo", jnp.ones(4))
