"""experiments/stats.py: the shared intervals, against hand-computed values."""

import math

import numpy as np
import pytest

from experiments import stats


def test_proportion_half_width_and_wilson_hand_values():
  assert math.isclose(stats.proportion_half_width(0.5, 100), 1.96 * 0.05)
  assert stats.proportion_half_width(0.0, 10) == pytest.approx(0.0, abs=1e-5)  # floored, not 0/0
  low, high = stats.wilson(0.5, 100)  # centre 0.5; half = 1.96 sqrt(0.0025 + 1.96^2 / 40000) / (1 + 1.96^2 / 100)
  half = 1.96 * math.sqrt(0.0025 + 1.96 ** 2 / 40000) / (1 + 1.96 ** 2 / 100)
  assert math.isclose(low, 0.5 - half) and math.isclose(high, 0.5 + half)
  low, high = stats.wilson(0.0, 20)  # stays inside [0, 1] where the normal approximation collapses to a point
  assert low == pytest.approx(0.0, abs=1e-12) and 0.15 < high < 0.17


def test_difference_intervals_independent_and_paired():
  low, high = stats.difference_interval(0.6, 0.5, 100)
  se = math.sqrt(0.6 * 0.4 / 100 + 0.5 * 0.5 / 100)
  assert math.isclose(low, 0.1 - 1.96 * se) and math.isclose(high, 0.1 + 1.96 * se)
  mean, half = stats.paired_difference([1.0, 1.0, 0.0, 1.0], [0.5, 0.0, 0.0, 1.0])
  d = np.asarray([0.5, 1.0, 0.0, 0.0])
  assert math.isclose(mean, 0.375) and math.isclose(half, 1.96 * math.sqrt(np.sum((d - 0.375) ** 2) / 3) / 2)
  assert stats.paired_difference(np.ones(3), np.ones(3)) == (0.0, 0.0)
  assert stats.paired_difference([1.0], [0.0]) == (1.0, math.inf)
