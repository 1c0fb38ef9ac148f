"""benchmarks/decode_floor.py: the work its sampler floor counts, by hand."""

import os
import sys

import jax
import pytest

from star_jax import models

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import decode_floor  # noqa: E402

CONFIG = models.ModelConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=32)


def test_cache_bytes_read_hand_computed():
  # Step i reads P + i + 1 slots: (5 + 6 + 7) slots x B 3 x K 2 x Dh 4 x (k, v) 2 x layers 2 x 4 bytes.
  assert decode_floor.cache_bytes_read(CONFIG, batch=3, prompt=4, steps=3) == 18 * 3 * 2 * 4 * 2 * 2 * 4


@pytest.mark.parametrize("groups", [1, 2])
def test_matmul_floor_flops_hand_computed(groups):
  # Per layer: q/k/v (16 x (16 + 2 * 8)), o (16 x 16), gate/up (16 x 64), down (32 x 16); plus the
  # vocabulary projection 16 x 50; 2 FLOPs per multiply-add, per row and step.
  params = models.init_params(CONFIG, jax.random.key(0))
  seconds, flops = decode_floor.matmul_floor_seconds(CONFIG, params, batch=4, steps=3, groups=groups, repeats=1)
  per_layer = 16 * 32 + 16 * 16 + 16 * 64 + 32 * 16
  assert flops == 2 * 4 * 3 * (2 * per_layer + 16 * 50)
  assert seconds > 0
