"""Shared-prefix sampling: `sampling.sample_grouped` vs independent rows (`sampling.sample`), in one run.

Two workloads of the arithmetic model (experiments/configs/arithmetic.py: 4 layers, d_model 128, 4 heads,
vocab 100; random weights, as only the shapes matter), same weights, same rng, temperature 1, no EOS
(every row generates all its tokens, so both samplers do the same work):

  mc  Monte-Carlo step labels (prm.steps.rollout_outcomes): 32 step prefixes of 130-170 tokens (prompt +
      scratchpad up to a step's newline, 5-6 digit problems), 16 rollouts each, 64 new tokens.
  rl  policy-gradient groups (pg_star_arithmetic): 16 questions (1-5 digits) x K=4 samples, 128 new tokens.

The independent sampler gets every prompt repeated R times (what rl / mc_labels do today); the grouped one
each prompt once with n_per_prompt=R. Their tokens must agree (checked and printed). Each contender runs
once untimed (compilation), then --repeats rounds time both, alternating which goes first; the figures are
medians over rounds (the machine is shared: other jobs come and go). Last line:
`grouped_sampler_speedup: <independent / grouped median time on mc>`.

  python benchmarks/grouped_sampler.py [--repeats 5] [--workloads mc,rl] [--breakdown] [--cpu-devices N]
                                       [--system-malloc]

`--breakdown` also times both samplers stopped after one token (prefill + the first decode step; same
compilation, max_new_tokens=1) in the same rounds: what the shared prefill saves, apart from the decode steps.

`--cpu-devices N` re-runs the process with N JAX CPU devices (one per core) and splits the prompts (grouped)
and rows (independent) over a data mesh, as benchmarks/sampler.py does; the default is one device, whose
rows both samplers split into row groups instead.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from star_jax import host_malloc, models, sampling, sharding
from star_jax.data import arithmetic
from star_jax.data.tokenizer import CharTokenizer
from star_jax.models import ModelConfig

MODEL = ModelConfig(vocab_size=100, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=512)
MC_PREFIXES, MC_ROLLOUTS, MC_NEW = 32, 16, 64
RL_QUESTIONS, RL_SAMPLES, RL_NEW = 16, 4, 128


def mc_prompts(tok: CharTokenizer) -> list[list[int]]:
  """32 step prefixes of 130-170 tokens: prompt + scratchpad up to (and including) a step's newline."""
  prefixes = []
  for digits in (5, 6):
    for problem in arithmetic.sample_problems(digits, 64, seed=1):
      text = arithmetic.prompt_text(problem) + arithmetic.target_text(problem)
      ends = [i + 1 for i, ch in enumerate(text) if ch == "\n" and 130 <= i + 2 <= 170]  # +1 for BOS
      if ends:
        prefixes.append(tok.encode(text[:ends[len(prefixes) % len(ends)]], add_bos=True))
  if len(prefixes) < MC_PREFIXES:
    raise RuntimeError(f"grouped_sampler.py: only {len(prefixes)} step prefixes of 130-170 tokens")
  return prefixes[:MC_PREFIXES]


def rl_prompts(tok: CharTokenizer) -> list[list[int]]:
  """16 questions of 1-5 digits, as the RL loop prompts them."""
  problems = [p for digits in range(1, 6) for p in arithmetic.sample_problems(digits, 4, seed=2)][:RL_QUESTIONS]
  return [tok.encode(arithmetic.prompt_text(p), add_bos=True) for p in problems]


def _run(fn) -> tuple[float, np.ndarray]:
  start = time.perf_counter()
  tokens = np.asarray(fn().tokens_BxN)
  return time.perf_counter() - start, tokens


def bench(name: str, params, prompts: list[list[int]], per_prompt: int, new_tokens: int, repeats: int,
          pad_id: int, mesh, breakdown: bool) -> float:
  """Times both samplers on one workload; prints the figures and returns the median-time ratio."""
  tokens_GxP, lengths_G = sampling.left_pad(prompts, pad_id)
  cfg = sampling.SamplingConfig(max_new_tokens=new_tokens, temperature=1.0)
  rng = jax.random.key(0)
  repeated_BxP, repeated_B = np.repeat(tokens_GxP, per_prompt, axis=0), np.repeat(lengths_G, per_prompt)
  if mesh is not None:
    tokens_GxP, lengths_G, repeated_BxP, repeated_B = (sharding.shard_global_batch(x, mesh) for x in
                                                       (tokens_GxP, lengths_G, repeated_BxP, repeated_B))
  contenders = {
      "independent": lambda limit=jnp.int32(new_tokens): sampling.sample(MODEL, params, repeated_BxP, repeated_B, rng, cfg=cfg, eos_id=-1,
                                                        pad_id=pad_id, max_new_tokens=limit),
      "grouped": lambda limit=jnp.int32(new_tokens): sampling.sample_grouped(MODEL, params, tokens_GxP, lengths_G, rng,
                                                            n_per_prompt=per_prompt, cfg=cfg, eos_id=-1, pad_id=pad_id,
                                                            max_new_tokens=limit),
  }
  if breakdown:  # the same compiled samplers stopped after one token: prefill + first decode step
    contenders.update({f"{label}, 1 token": functools.partial(contenders[label], jnp.int32(1))
                       for label in list(contenders)})
  b = len(prompts) * per_prompt
  print(f"[{name}] {len(prompts)} prompts x {per_prompt} = {b} rows, prompt tokens {min(map(len, prompts))}-{max(map(len, prompts))} "
        f"(padded to {tokens_GxP.shape[1]}), {new_tokens} new tokens; row groups: independent "
        f"{sampling.row_groups_for(b)}, grouped {sampling.grouped_row_groups(len(prompts), per_prompt)}")
  tokens = {}
  for label, fn in contenders.items():
    seconds, tokens[label] = _run(fn)  # untimed: compilation (the 1-token runs reuse it)
    print(f"  first call (compile + run) {label}: {seconds:.2f} s")
  agree = float(np.mean(tokens["independent"] == tokens["grouped"]))
  print(f"  tokens equal to the independent rows': {100 * agree:.2f}%")
  times = {label: [] for label in contenders}
  for round_ in range(repeats):
    order = list(contenders) if round_ % 2 == 0 else list(contenders)[::-1]
    for label in order:
      times[label].append(_run(contenders[label])[0])
  for label, runs in times.items():
    median = statistics.median(runs)
    generated = b * (1 if label.endswith("1 token") else new_tokens)
    print(f"  {label:20s} median {median:6.3f} s  {generated / median:9,.0f} tokens/s   "
          f"(runs: {', '.join(f'{t:.3f}' for t in runs)})")
  ratios = [i / g for i, g in zip(times["independent"], times["grouped"])]
  ratio = statistics.median(times["independent"]) / statistics.median(times["grouped"])
  print(f"  speed-up {ratio:.2f}x (ratio of medians; per-round ratios {min(ratios):.2f}-{max(ratios):.2f}, "
        f"median {statistics.median(ratios):.2f})")
  if breakdown:
    first = {label: statistics.median(times[f"{label}, 1 token"]) for label in ("independent", "grouped")}
    rest = {label: statistics.median(times[label]) - first[label] for label in first}
    print(f"  prefill + first step {first['independent']:.3f} vs {first['grouped']:.3f} s "
          f"({first['independent'] / first['grouped']:.2f}x); the other {new_tokens - 1} steps (difference of medians) "
          f"{rest['independent']:.3f} vs {rest['grouped']:.3f} s ({rest['independent'] / rest['grouped']:.2f}x)")
  return ratio


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each times both samplers)")
  parser.add_argument("--workloads", default="mc,rl", help="comma-separated: mc, rl")
  parser.add_argument("--breakdown", action="store_true", help="also time each sampler stopped after 1 token")
  parser.add_argument("--cpu-devices", type=int, default=1, help="JAX CPU devices (one per core), batch split")
  parser.add_argument("--system-malloc", action="store_true", help="skip host_malloc.reuse_freed_memory()")
  args = parser.parse_args()
  device_flag = f"--xla_force_host_platform_device_count={args.cpu_devices}"
  if args.cpu_devices > 1 and device_flag not in os.environ.get("XLA_FLAGS", ""):
    env = dict(os.environ, XLA_FLAGS=" ".join(filter(None, [os.environ.get("XLA_FLAGS"), device_flag])))
    os.execve(sys.executable, [sys.executable] + sys.argv, env)
  workloads = args.workloads.split(",")
  if unknown := set(workloads) - {"mc", "rl"}:
    parser.error(f"unknown workloads {sorted(unknown)}; use mc, rl")
  if not args.system_malloc:
    host_malloc.reuse_freed_memory()  # as the entry points do; see benchmarks/RESULTS.md
  print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.device_count()}")
  tok = CharTokenizer()
  params = jax.jit(models.init_params, static_argnums=0)(MODEL, jax.random.key(0))
  mesh = None
  if jax.device_count() > 1:  # a data mesh over the CPU devices: each runs its share of the prompts / rows
    mesh = sharding.make_mesh([("data", -1), ("fsdp", 1), ("tensor", 1)])
    params = jax.device_put(params, sharding.replicated(mesh))
  ratios = {}
  if "rl" in workloads:
    ratios["rl"] = bench("rl", params, rl_prompts(tok), RL_SAMPLES, RL_NEW, args.repeats, tok.pad_id, mesh, args.breakdown)
  if "mc" in workloads:
    ratios["mc"] = bench("mc", params, mc_prompts(tok), MC_ROLLOUTS, MC_NEW, args.repeats, tok.pad_id, mesh, args.breakdown)
  print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  if "rl" in ratios:
    print(f"grouped_sampler_speedup_rl: {ratios['rl']:.2f}")
  if "mc" in ratios:
    print(f"grouped_sampler_speedup: {ratios['mc']:.2f}")


if __name__ == "__main__":
  main()
