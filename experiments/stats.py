"""Confidence intervals shared by the study drivers (one place for the few formulas every table uses).

For a proportion p over n independent trials (held-out problems, puzzles):
  normal approximation   p ± z √(p(1 − p)/n)                                   `proportion_half_width`
  Wilson score interval  (p + z²/2n ± z √(p(1 − p)/n + z²/4n²)) / (1 + z²/n)    `wilson`
                         (Wilson 1927; stays inside [0, 1] and is honest near 0 and 1)
For a difference of two such proportions:
  independent sets       p₁ − p₀ ± z √(p₁(1 − p₁)/n + p₀(1 − p₀)/n)            `difference_interval`
  paired (same items)    d̄ ± z s_d / √n,  d_i = x1_i − x0_i, s_d with n − 1    `paired_difference`
                         (each item's shared difficulty cancels: tighter when the two methods agree on items)
z = 1.96 gives 95%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.96


def proportion_half_width(p: float, n: int, z: float = Z95) -> float:
  """Half-width of the normal-approximation interval of a proportion p over n trials (p(1 − p) floored at 1e-12)."""
  return z * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
  """The Wilson score interval (lower, upper) of a proportion p from n trials."""
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return centre - half, centre + half


def difference_interval(p1: float, p0: float, n: int, z: float = Z95) -> tuple[float, float]:
  """(lower, upper) of p1 − p0 for two independent proportions over n trials each (conservative when the trials
  are the same items: it ignores the pairing; `paired_difference` uses it)."""
  se = math.sqrt(p1 * (1 - p1) / n + p0 * (1 - p0) / n)
  return p1 - p0 - z * se, p1 - p0 + z * se


def paired_difference(x1: Sequence[float], x0: Sequence[float], z: float = Z95) -> tuple[float, float]:
  """(d̄, half-width z s_d / √n) of d_i = x1_i − x0_i over the same n items under two methods (each x a success
  indicator or probability); the half-width is inf with fewer than 2 items."""
  d = np.asarray(x1, np.float64) - np.asarray(x0, np.float64)
  if d.size < 2:
    return (float(d.mean()) if d.size else 0.0), math.inf
  return float(d.mean()), z * float(np.std(d, ddof=1)) / math.sqrt(d.size)
