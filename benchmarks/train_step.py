"""Train-step throughput vs. the machine's matmul ceiling, measured in one run.

Reference config (issue #2, `--config ref`): 4 layers, d_model 256, 4 heads, char vocab (100), batch 32 x 128
tokens, fp32, AdamW. `--config demo` is the arithmetic demo's shape: 4 layers, d_model 128, 4 heads, batch
32 x 256 tokens packed with several examples per row (segment ids, positions restarting per example).
FLOPs per step come from XLA's cost analysis of the compiled step; the ceiling is a jitted 2048 x 2048
fp32 matmul on the same devices. Prints `train_step_mfu_vs_matmul: <ratio>` last.

  python benchmarks/train_step.py [--config ref|demo] [--rounds 7] [--steps 4] [--matmuls 8] [--packed]
                                  [--system-malloc]

Timing: after 3 warm-up steps, `--rounds` interleaved rounds each time `--steps` dispatched train steps and
then `--matmuls` dispatched matmuls; each round gives one ratio (achieved FLOP/s of the steps / FLOP/s of
the matmuls), measured back to back under the same machine load. The headline is the median round ratio.
The strict ratio (mean step over all rounds vs the single fastest matmul) is printed too, for comparison
with the first version of this script (mean of 20 steps vs best of 10 matmuls).

Like the library's entry points, the script first calls `star_jax.host_malloc.reuse_freed_memory()`, so
that XLA:CPU reuses the step's 359 MiB temporary buffer instead of page-faulting it in afresh on every
step (~96k faults, 0.22-0.24 s of kernel time per step); `--system-malloc` keeps glibc's defaults to measure
the difference. See benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from star_jax import host_malloc, models, sharding, train
from star_jax.config import TrainConfig


class MatmulCeiling:
  """A jitted n x n fp32 matmul on the default device: the machine's practical FLOP/s ceiling."""

  def __init__(self, n: int = 2048):
    self.flops = 2 * n ** 3
    self.a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    self.b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    self.matmul = jax.jit(lambda x, y: x @ y)
    self.matmul(self.a, self.b).block_until_ready()

  def mean_rate(self, repeats: int) -> float:
    """FLOP/s over `repeats` back-to-back matmuls (dispatched like the train steps, one sync at the end)."""
    start = time.perf_counter()
    for _ in range(repeats):
      out = self.matmul(self.a, self.b)
    out.block_until_ready()
    return self.flops * repeats / (time.perf_counter() - start)

  def best_rate(self, repeats: int) -> float:
    """FLOP/s of the fastest of `repeats` single matmuls."""
    return max(self.mean_rate(1) for _ in range(repeats))


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
  parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of train steps and matmuls")
  parser.add_argument("--steps", type=int, default=4, help="timed train steps per round (after 3 warm-up steps)")
  parser.add_argument("--matmuls", type=int, default=8, help="timed 2048^2 matmuls per round")
  parser.add_argument("--packed", action="store_true", help="ref config: 4 examples per row with segment ids")
  parser.add_argument("--system-malloc", action="store_true", help="skip host_malloc.reuse_freed_memory()")
  args = parser.parse_args()
  reused = not args.system_malloc and host_malloc.reuse_freed_memory()  # before the first JAX computation

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
  matmul = MatmulCeiling()
  # Interleaved rounds: each round times a few dispatched train steps and then a few matmuls, so both sides
  # of a round's ratio see the same machine load; the headline is the median of the rounds' ratios.
  step_seconds, matmul_rates, ratios = [], [], []
  for _ in range(args.rounds):
    start = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = step_fn(state, global_batch, state.rng)
    jax.block_until_ready(metrics)
    step_seconds.append((time.perf_counter() - start) / args.steps)
    matmul_rates.append(matmul.mean_rate(args.matmuls))
    ratios.append(flops / step_seconds[-1] / matmul_rates[-1])
  step_times = []  # one at a time too, to show the spread on a shared machine (not used in the ratio)
  for _ in range(10):
    start = time.perf_counter()
    state, metrics = step_fn(state, global_batch, state.rng)
    jax.block_until_ready(metrics)
    step_times.append(time.perf_counter() - start)
  best_matmul = matmul.best_rate(10)
  real_tokens = int(np.sum(batch["segment_ids_BxT"] != 0))
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}  malloc: "
        f"{'host_malloc.reuse_freed_memory()' if reused else 'system defaults'}  "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
  print(f"config: {args.config}  params: {model_config.num_params():,}  batch: {b} x {t}  "
        f"packed: {args.packed or args.config == 'demo'}  non-padding tokens: {real_tokens}")
  step_mean = float(np.mean(step_seconds))
  print(f"step: {1000 * step_mean:.1f} ms (mean of {args.rounds} x {args.steps})  tokens/s: {b * t / step_mean:,.0f} "
        f"(non-padding {real_tokens / step_mean:,.0f})  [single steps: min {1000 * min(step_times):.1f}, "
        f"median {1000 * float(np.median(step_times)):.1f} ms]")
  if memory is not None:
    print(f"step temporary buffer (XLA memory analysis): {memory.temp_size_in_bytes / 2 ** 20:.0f} MiB")
  print(f"step FLOPs (XLA cost analysis): {flops / 1e9:.2f} GFLOP  achieved: {flops / step_mean / 1e9:.1f} GFLOP/s")
  print(f"fp32 2048^2 matmul: {np.mean(matmul_rates) / 1e9:.1f} GFLOP/s (mean of {args.rounds} x {args.matmuls}), "
        f"best single {best_matmul / 1e9:.1f} GFLOP/s")
  print("per-round ratios: " + " ".join(f"{r:.3f}" for r in ratios))
  print(f"strict ratio (mean step vs best single matmul): {flops / step_mean / best_matmul:.3f}")
  print(f"train_step_mfu_vs_matmul: {float(np.median(ratios)):.3f}")


if __name__ == "__main__":
  main()
