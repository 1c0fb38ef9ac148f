"""Train-step throughput vs. the machine's matmul ceiling, measured in one run.

Reference config (issue #2, `--config ref`): 4 layers, d_model 256, 4 heads, char vocab (100), batch 32 x 128
tokens, fp32, AdamW. `--config demo` is the arithmetic demo's shape: 4 layers, d_model 128, 4 heads, batch
32 x 256 tokens packed with several examples per row (segment ids, positions restarting per example).
FLOPs per step come from XLA's cost analysis of the compiled step; the ceiling is a jitted 2048 x 2048
fp32 matmul on the same devices. `--config star` is the full5 STaR recipe's fine-tuning rows
(experiments/configs/star_arithmetic.py: 3 layers, d_model 64, 4 heads, batch 16 x 256) and `--config star_demo`
its `demo` variant (16 x 160); both pack real scratchpad examples (1-5 resp. 1-3 digit addition, 73-201 tokens)
with the training pipeline's first-fit packer.

Two ratios, both against the same matmul rounds:
  train_step_mfu_vs_matmul           XLA's FLOP count of the compiled step (includes padding tokens and every
                                     masked entry of the score matrices the implementation computes);
  train_step_useful_mfu_vs_matmul    useful FLOPs only (printed last), see `useful_flops`:
      useful = 3 * ( 2 * N * P_mm  +  4 * n_layers * H * Dh * sum_e L_e (L_e + 1) / 2 )
    N = non-padding tokens, P_mm = matmul weights applied per token (q/k/v/o, SwiGLU, vocabulary projection),
    L_e = length of packed example e (causal query-key pairs within each example), H * Dh = query width;
    the 3 is forward + backward (gradients w.r.t. activations and weights: two matmuls per forward matmul).

  python benchmarks/train_step.py [--config ref|demo|star|star_demo] [--rounds 7] [--steps 4] [--matmuls 8]
                                  [--packed] [--system-malloc]

Timing: after 3 warm-up steps, `--rounds` interleaved rounds each time `--steps` dispatched train steps and
then `--matmuls` dispatched matmuls; each round gives one ratio (achieved FLOP/s of the steps / FLOP/s of
the matmuls), measured back to back under the same machine load. The headline is the median round ratio.
The strict ratio (mean step over all rounds vs the single fastest matmul) is printed too, for comparison
with the first version of this script (mean of 20 steps vs best of 10 matmuls). `--attention both` times the
dense reference step (full masked [T, T] scores: the path before the band) and the library's step (band
attention where every packed example fits, `models.cond_band_attention`) in the same rounds. Each round also
records process CPU time; useful FLOPs per CPU-second of the step over matmul FLOPs per CPU-second is printed
as a load-robust proxy (on a machine shared with other jobs the wall ratios swing by +-0.15 between rounds).

Like the library's entry points, the script first calls `star_jax.host_malloc.reuse_freed_memory()`, so
that XLA:CPU reuses the step's 359 MiB temporary buffer instead of page-faulting it in afresh on every
step (~96k faults, 0.22-0.24 s of kernel time per step); `--system-malloc` keeps glibc's defaults to measure
the difference. See benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from star_jax import host_malloc, models, sharding, train
from star_jax.config import TrainConfig
from star_jax.data import arithmetic, pipeline, tokenizer


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


def star_batch(b: int, t: int, max_digits: int) -> dict[str, np.ndarray]:
  """The first batch of the training pipeline over arithmetic scratchpads with 1..max_digits-digit operands.

  Digit counts are uniform (as in STaR's kept sets, whose questions are drawn uniformly over lengths);
  examples are packed first-fit into rows of t tokens exactly as in fine-tuning.
  """
  problems = [p for n in range(1, max_digits + 1) for p in arithmetic.sample_problems(n, 200, seed=0)]
  records = [{"prompt": arithmetic.prompt_text(p), "target": arithmetic.target_text(p)} for p in problems]
  dataset = pipeline.make_train_dataset(records, tokenizer.CharTokenizer(), batch_size=b, seq_len=t, seed=0,
                                        shard_by_process=False)
  return next(iter(dataset))


def example_lengths(segment_ids_BxT: np.ndarray) -> np.ndarray:
  """Lengths of every packed example (maximal runs of one nonzero segment id within a row)."""
  lengths = []
  for row in np.asarray(segment_ids_BxT):
    starts = np.flatnonzero(np.diff(row, prepend=-1) != 0)
    for start, end in zip(starts, list(starts[1:]) + [len(row)]):
      if row[start] != 0:
        lengths.append(end - start)
  return np.asarray(lengths, np.int64)


def useful_flops(model_config: models.ModelConfig, segment_ids_BxT: np.ndarray) -> float:
  """Training FLOPs of the work the batch needs: 3 * (2 N P_mm + 4 n_layers H Dh sum_e L_e (L_e + 1) / 2).

  Matmuls count only non-padding tokens (N), attention only the causal pairs within each example (lengths
  L_e); norms, softmax, rotary and the optimizer are left out (elementwise, < 1% of the FLOPs here).
  """
  c = model_config
  per_token_weights = c.n_layers * (c.d_model * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
                                    + c.n_heads * c.head_dim * c.d_model + 3 * c.d_model * c.d_ff) + c.d_model * c.vocab_size
  lengths = example_lengths(segment_ids_BxT)
  causal_pairs = float(np.sum(lengths * (lengths + 1) // 2))
  return 3.0 * (2.0 * float(lengths.sum()) * per_token_weights + 4.0 * c.n_layers * c.n_heads * c.head_dim * causal_pairs)


def make_batch(config: str, packed: bool, b: int, t: int, vocab: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  if config in ("star", "star_demo"):
    return star_batch(b, t, max_digits=5 if config == "star" else 3)
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
  parser.add_argument("--config", choices=("ref", "demo", "star", "star_demo"), default="ref", help="model and batch shape")
  parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of train steps and matmuls")
  parser.add_argument("--steps", type=int, default=4, help="timed train steps per round (after 3 warm-up steps)")
  parser.add_argument("--matmuls", type=int, default=8, help="timed 2048^2 matmuls per round")
  parser.add_argument("--packed", action="store_true", help="ref config: 4 examples per row with segment ids")
  parser.add_argument("--attention", choices=("packed", "dense", "both"), default="packed",
                      help="packed: the model's banded attention; dense: the reference (full masked scores); both: "
                           "interleaved in the same rounds")
  parser.add_argument("--system-malloc", action="store_true", help="skip host_malloc.reuse_freed_memory()")
  args = parser.parse_args()
  reused = not args.system_malloc and host_malloc.reuse_freed_memory()  # before the first JAX computation

  if args.config == "demo":
    model_config = models.ModelConfig(vocab_size=100, d_model=128, n_layers=4, n_heads=4)
    train_config = TrainConfig(batch_size=32, seq_len=256, steps=1000, warmup_steps=10)
  elif args.config in ("star", "star_demo"):  # experiments/configs/star_arithmetic.py (full5 / demo)
    model_config = models.ModelConfig(vocab_size=100, d_model=64, n_layers=3, n_heads=4)
    train_config = TrainConfig(batch_size=16, seq_len=256 if args.config == "star" else 160, steps=1000, warmup_steps=10)
  else:
    model_config = models.ModelConfig(vocab_size=100, d_model=256, n_layers=4, n_heads=4)
    train_config = TrainConfig(batch_size=32, seq_len=128, steps=1000, warmup_steps=10)
  mesh = sharding.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
  b, t = train_config.batch_size, train_config.seq_len
  batch = make_batch(args.config, args.packed, b, t, model_config.vocab_size)
  global_batch = sharding.host_batch_to_global(batch, mesh)
  tx = train.make_optimizer(train_config)
  useful = useful_flops(model_config, batch["segment_ids_BxT"])
  variants = ("dense", "packed") if args.attention == "both" else (args.attention,)
  runs = {}
  for name in variants:
    state = train.create_train_state(model_config, tx, mesh, seed=0)
    # train.attention = "band": block-band attention where every packed example fits (models.cond_band_attention);
    # "dense": the reference implementation (full masked [T, T] scores), today's default.
    variant_config = dataclasses.replace(train_config, attention="dense" if name == "dense" else "band")
    start = time.perf_counter()
    compiled = train.compile_train_step(model_config, variant_config, mesh, tx).lower(
        state, global_batch, state.rng).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    for _ in range(3):
      state, metrics = compiled(state, global_batch, state.rng)
    jax.block_until_ready(metrics)
    runs[name] = {"step": compiled, "state": state, "flops": float(cost["flops"]), "memory": compiled.memory_analysis(),
                  "compile": compile_seconds, "wall": [], "cpu": [], "loss": float(metrics["loss"])}
  matmul = MatmulCeiling()
  # Interleaved rounds: each round times a few dispatched train steps of every variant and then a few matmuls,
  # so all sides of a round's ratios see the same machine load; headlines are medians over rounds.
  matmul_rates, matmul_cpu_rates = [], []
  for _ in range(args.rounds):
    for run in runs.values():
      start, cpu_start = time.perf_counter(), time.process_time()
      for _ in range(args.steps):
        run["state"], metrics = run["step"](run["state"], global_batch, run["state"].rng)
      jax.block_until_ready(metrics)
      run["wall"].append((time.perf_counter() - start) / args.steps)
      run["cpu"].append((time.process_time() - cpu_start) / args.steps)
    cpu_start = time.process_time()
    matmul_rates.append(matmul.mean_rate(args.matmuls))
    matmul_cpu_rates.append(matmul.flops * args.matmuls / (time.process_time() - cpu_start))
  best_matmul = matmul.best_rate(10)
  real_tokens = int(np.sum(batch["segment_ids_BxT"] != 0))
  lengths = example_lengths(batch["segment_ids_BxT"])
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}  malloc: "
        f"{'host_malloc.reuse_freed_memory()' if reused else 'system defaults'}  "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}  load average: {os.getloadavg()[0]:.1f}")
  print(f"config: {args.config}  params: {model_config.num_params():,}  batch: {b} x {t}  "
        f"packed: {args.packed or args.config != 'ref'}  non-padding tokens: {real_tokens}  examples: {len(lengths)} "
        f"(length {lengths.min()}-{lengths.max()}, mean {lengths.mean():.1f})")
  print(f"useful FLOPs (formula above): {useful / 1e9:.2f} GFLOP")
  print(f"fp32 2048^2 matmul: {np.mean(matmul_rates) / 1e9:.1f} GFLOP/s (mean of {args.rounds} x {args.matmuls}), "
        f"best single {best_matmul / 1e9:.1f} GFLOP/s; per CPU-second {np.median(matmul_cpu_rates) / 1e9:.1f} GFLOP")
  medians = {}
  for name, run in runs.items():
    wall, cpu = np.asarray(run["wall"]), np.asarray(run["cpu"])
    ratios = run["flops"] / wall / np.asarray(matmul_rates)
    useful_ratios = useful / wall / np.asarray(matmul_rates)
    cpu_ratios = useful / cpu / np.asarray(matmul_cpu_rates)
    medians[name] = float(np.median(useful_ratios))
    memory = run["memory"]
    print(f"[{name} attention] loss {run['loss']:.4f}  compile {run['compile']:.1f} s  step {1000 * np.median(wall):.1f} ms "
          f"(median of {args.rounds} rounds x {args.steps}; min {1000 * wall.min():.1f}), CPU {1000 * np.median(cpu):.1f} ms  "
          f"non-padding tokens/s {real_tokens / np.median(wall):,.0f}"
          + (f"  temp buffer {memory.temp_size_in_bytes / 2 ** 20:.0f} MiB" if memory is not None else ""))
    print(f"  XLA cost analysis: {run['flops'] / 1e9:.2f} GFLOP (useful/XLA {useful / run['flops']:.3f}; a conditional's "
          f"branches may all be counted)  per-round ratio median {np.median(ratios):.3f}")
    print("  per-round useful ratios: " + " ".join(f"{r:.3f}" for r in useful_ratios)
          + f"  | CPU-time useful ratio (load-robust proxy) median {np.median(cpu_ratios):.3f}")
    print(f"  strict useful ratio (mean step vs best single matmul): {useful / wall.mean() / best_matmul:.3f}")
  if len(runs) == 2:
    speedups = np.asarray(runs["dense"]["wall"]) / np.asarray(runs["packed"]["wall"])
    cpu_speedups = np.asarray(runs["dense"]["cpu"]) / np.asarray(runs["packed"]["cpu"])
    print(f"packed vs dense step time: {np.median(speedups):.2f}x faster (median of per-round ratios "
          f"{' '.join(f'{x:.2f}' for x in speedups)}), CPU time {np.median(cpu_speedups):.2f}x")
  last = variants[-1]
  ratios = runs[last]["flops"] / np.asarray(runs[last]["wall"]) / np.asarray(matmul_rates)
  print(f"train_step_mfu_vs_matmul: {float(np.median(ratios)):.3f}")
  print(f"train_step_useful_mfu_vs_matmul: {medians[last]:.3f}")


if __name__ == "__main__":
  main()
