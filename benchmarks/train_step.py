"""Train-step throughput vs. the machine's matmul ceiling, measured in one run.

Reference config (issue #2, `--config ref`): 4 layers, d_model 256, 4 heads, char vocab (100), batch 32 x 128
tokens, fp32, AdamW. `--config demo` is the arithmetic demo's shape: 4 layers, d_model 128, 4 heads, batch
32 x 256 tokens packed with several examples per row (segment ids, positions restarting per example).
FLOPs per step come from XLA's cost analysis of the compiled step; the ceiling is a jitted 2048 x 2048
fp32 matmul on the same devices. Prints `train_step_mfu_vs_matmul: <ratio>` last.

  python benchmarks/train_step.py [--config ref|demo] [--steps 20] [--packed] [--hugepages]

`--hugepages` re-runs the process with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge pages for
large malloc'd blocks): XLA:CPU maps the step's temporary buffer afresh on every step, and with 4 KiB
pages the kernel spends ~0.3 s of CPU per step in page faults. It changes no numerics and leaves the
matmul ceiling unchanged; see benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from star_jax import models, sharding, train
from star_jax.config import TrainConfig

_HUGEPAGES = "glibc.malloc.hugetlb=1"


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


def packed_segments(rng: np.random.Generator, b: int, t: int, min_len: int = 20, max_len: int = 60):
  """(segment_ids, positions) [b, t]: examples of random length packed into rows; row tails are padding (0)."""
  segment_ids = np.zeros((b, t), np.int32)
  positions = np.zeros((b, t), np.int32)
  for row in range(b):
    start, segment = 0, 1
    while start < t - min_len:
      length = min(int(rng.integers(min_len, max_len)), t - start)
      segment_ids[row, start:start + length] = segment
      positions[row, start:start + length] = np.arange(length)
      start, segment = start + length, segment + 1
  return segment_ids, positions


def make_batch(config: str, packed: bool, b: int, t: int, vocab: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  if config == "demo":
    segment_ids, positions = packed_segments(rng, b, t)
  elif packed:  # 4 equal examples per row
    segment_ids = np.repeat(np.arange(1, 5), t // 4)[None].repeat(b, 0).astype(np.int32)
    positions = (np.arange(t)[None] % (t // 4)).repeat(b, 0).astype(np.int32)
  else:
    segment_ids = np.ones((b, t), np.int32)
    positions = np.arange(t)[None].repeat(b, 0).astype(np.int32)
  return {
      "inputs_BxT": rng.integers(4, vocab, (b, t)).astype(np.int32),
      "targets_BxT": rng.integers(4, vocab, (b, t)).astype(np.int32),
      "loss_mask_BxT": (segment_ids != 0).astype(np.float32),
      "segment_ids_BxT": segment_ids,
      "positions_BxT": positions,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", choices=("ref", "demo"), default="ref", help="model and batch shape")
  parser.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
  parser.add_argument("--packed", action="store_true", help="ref config: 4 examples per row with segment ids")
  parser.add_argument("--hugepages", action="store_true", help="re-run with " + _HUGEPAGES + " (see above)")
  args = parser.parse_args()
  if args.hugepages and _HUGEPAGES not in os.environ.get("GLIBC_TUNABLES", ""):
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), _HUGEPAGES])))
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

  if args.config == "demo":
    model_config = models.ModelConfig(vocab_size=100, d_model=128, n_layers=4, n_heads=4)
    train_config = TrainConfig(batch_size=32, seq_len=256, steps=1000, warmup_steps=10)
  else:
    model_config = models.ModelConfig(vocab_size=100, d_model=256, n_layers=4, n_heads=4)
    train_config = TrainConfig(batch_size=32, seq_len=128, steps=1000, warmup_steps=10)
  mesh = sharding.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
  b, t = train_config.batch_size, train_config.seq_len
  batch = make_batch(args.config, args.packed, b, t, model_config.vocab_size)
  global_batch = sharding.host_batch_to_global(batch, mesh)
  tx = train.make_optimizer(train_config)
  state = train.create_train_state(model_config, tx, mesh, seed=0)
  step_fn = train.compile_train_step(model_config, train_config, mesh, tx)
  compiled = step_fn.lower(state, global_batch, state.rng).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost["flops"])
  memory = compiled.memory_analysis()

  for _ in range(3):
    state, metrics = step_fn(state, global_batch, state.rng)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step_fn(state, global_batch, state.rng)
  jax.block_until_ready(metrics)
  step_seconds = (time.perf_counter() - start) / args.steps
  step_times = []  # one at a time too, to show the spread on a shared machine (not used in the ratio)
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, global_batch, state.rng)
    jax.block_until_ready(metrics)
    step_times.append(time.perf_counter() - start)

  ceiling = matmul_flops_per_second()
  achieved = flops / step_seconds
  real_tokens = int(np.sum(batch["segment_ids_BxT"] != 0))
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}  "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  print(f"config: {args.config}  params: {model_config.num_params():,}  batch: {b} x {t}  "
        f"packed: {args.packed or args.config == 'demo'}  non-padding tokens: {real_tokens}")
  print(f"step: {1000 * step_seconds:.1f} ms (mean of {args.steps})  tokens/s: {b * t / step_seconds:,.0f} "
        f"(non-padding {real_tokens / step_seconds:,.0f})  [single steps: min {1000 * min(step_times):.1f}, "
        f"median {1000 * float(np.median(step_times)):.1f} ms]")
  if memory is not None:
    print(f"step temporary buffer (XLA memory analysis): {memory.temp_size_in_bytes / 2 ** 20:.0f} MiB")
  print(f"step FLOPs (XLA cost analysis): {flops / 1e9:.2f} GFLOP  achieved: {achieved / 1e9:.1f} GFLOP/s")
  print(f"fp32 2048^2 matmul: {ceiling / 1e9:.1f} GFLOP/s")
  print(f"train_step_mfu_vs_matmul: {achieved / ceiling:.3f}")


if __name__ == "__main__":
  main()
