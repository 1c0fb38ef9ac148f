"""Train-step throughput vs. the machine's matmul ceiling, measured in one run.

Reference config (issue #2): 4 layers, d_model 256, 4 heads, char vocab (100), batch 32 x 128 tokens,
fp32, AdamW. FLOPs per step come from XLA's cost analysis of the compiled step; the ceiling is a jitted
2048 x 2048 fp32 matmul on the same devices. Prints `train_step_mfu_vs_matmul: <ratio>` last.

  python benchmarks/train_step.py [--steps 20] [--packed]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from star_jax import models, sharding, train
from star_jax.config import TrainConfig


def _best_of(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def matmul_flops_per_second(n: int = 2048, repeats: int = 10) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  return 2 * n ** 3 / _best_of(lambda: matmul(a, b).block_until_ready(), repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
  parser.add_argument("--packed", action="store_true", help="4 examples per row with segment ids")
  args = parser.parse_args()

  model_config = models.ModelConfig(vocab_size=100, d_model=256, n_layers=4, n_heads=4)
  train_config = TrainConfig(batch_size=32, seq_len=128, steps=1000, warmup_steps=10)
  mesh = sharding.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
  rng = np.random.default_rng(0)
  b, t = train_config.batch_size, train_config.seq_len
  segments = np.repeat(np.arange(1, 5), t // 4)[None].repeat(b, 0) if args.packed else np.ones((b, t))
  batch = {
      "inputs_BxT": rng.integers(4, 100, (b, t)).astype(np.int32),
      "targets_BxT": rng.integers(4, 100, (b, t)).astype(np.int32),
      "loss_mask_BxT": np.ones((b, t), np.float32),
      "segment_ids_BxT": segments.astype(np.int32),
      "positions_BxT": (np.arange(t)[None] % (t // 4 if args.packed else t)).repeat(b, 0).astype(np.int32),
  }
  global_batch = sharding.host_batch_to_global(batch, mesh)
  tx = train.make_optimizer(train_config)
  state = train.create_train_state(model_config, tx, mesh, seed=0)
  step_fn = train.compile_train_step(model_config, train_config, mesh, tx)
  compiled = step_fn.lower(state, global_batch, state.rng).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost["flops"])

  for _ in range(3):
    state, metrics = step_fn(state, global_batch, state.rng)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step_fn(state, global_batch, state.rng)
  jax.block_until_ready(metrics)
  step_seconds = (time.perf_counter() - start) / args.steps

  ceiling = matmul_flops_per_second()
  achieved = flops / step_seconds
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(f"params: {model_config.num_params():,}  batch: {b} x {t}  packed: {args.packed}")
  print(f"step: {1000 * step_seconds:.1f} ms  tokens/s: {b * t / step_seconds:,.0f}")
  print(f"step FLOPs (XLA cost analysis): {flops / 1e9:.2f} GFLOP  achieved: {achieved / 1e9:.1f} GFLOP/s")
  print(f"fp32 2048^2 matmul: {ceiling / 1e9:.1f} GFLOP/s")
  print(f"train_step_mfu_vs_matmul: {achieved / ceiling:.3f}")


if __name__ == "__main__":
  main()
