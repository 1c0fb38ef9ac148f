"""Sampler throughput: star_jax KV-cache sampler vs transformers `generate` vs no-cache, in one run.

Same weights (a random Llama-style model: 4 layers, d_model 256, 4 heads, vocab 1000), same prompts
(batch 32, 32-token prompts), 128 new tokens, greedy, no EOS. The weights are created with transformers,
saved as safetensors and loaded with `star_jax.models.load_hf`, and the three paths must produce the
same tokens (checked). Prints generated tokens/s for each and, last,
`sampler_speedup_vs_transformers: <ratio>`.

  python benchmarks/sampler.py [--repeats 3] [--no-cache-repeats 1] [--cpu-devices N] [--profile] [--hlo PATH]

Every contender runs once untimed first (compilation, torch warm-up), then timed runs (the KV-cache
sampler and transformers alternating); each contender's best run counts. The load average is printed
before and after: on a shared machine torch's OpenMP threads degrade far more than XLA's under
contention (transformers took 25 s instead of ~2 s at a load average of 4 on 2 cores), so the ratio is
only meaningful from a run that had the cores to itself.
`--cpu-devices N` re-runs the process with XLA_FLAGS=--xla_force_host_platform_device_count=N (one JAX
CPU device per core) and splits the batch over a data mesh of the N devices; the default is one device,
whose rows the sampler splits into row groups instead (`sampling.row_groups_for`).
The script also prints a measured floor (benchmarks/decode_floor.py): the decode steps' weight matmuls
alone plus the KV-cache bytes an exact sampler must read at the machine's streaming bandwidth, and the
speed-up over transformers that a sampler running at that floor would reach.
Like the library's entry points, the script calls `star_jax.host_malloc.reuse_freed_memory()` first
(`--system-malloc` skips it); it applies to the torch contender too, as both run in this process.
`--profile` traces one more sampler run with `jax.profiler` and prints the XLA ops that took the most
time (summed per op kind) and how busy each XLA worker thread was; `--hlo PATH` writes the compiled
sampler's optimised HLO.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import os
import re
import sys
import tempfile
import time

import decode_floor  # benchmarks/decode_floor.py, beside this script
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from star_jax import host_malloc, models, sampling, sharding

BATCH, PROMPT, NEW = 32, 32, 128


@functools.partial(jax.jit, static_argnames=("config", "new_tokens"))
def greedy_without_cache(config, params, prompt_BxP, new_tokens: int):
  """The no-cache baseline: every step re-runs the full forward over a fixed [B, P + N] buffer."""
  b, p = prompt_BxP.shape
  buffer_BxL = jnp.concatenate([prompt_BxP, jnp.zeros((b, new_tokens), jnp.int32)], axis=1)

  def step(i, buffer_BxL):
    logits_BxLxV = models.forward(config, params, buffer_BxL)
    next_B = jnp.argmax(jax.lax.dynamic_index_in_dim(logits_BxLxV, p + i - 1, axis=1, keepdims=False), -1)
    return jax.lax.dynamic_update_slice(buffer_BxL, next_B.astype(jnp.int32)[:, None], (0, p + i))

  return jax.lax.fori_loop(0, new_tokens, step, buffer_BxL)[:, p:]


def _timed(fn, outputs: dict, name: str) -> float:
  start = time.perf_counter()
  outputs[name] = fn()
  return time.perf_counter() - start


def _profile(fn):
  """Trace one call of fn; print the XLA ops (by kind) that took the most time and the threads' busy time."""
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      fn()
    data = jax.profiler.ProfileData.from_file(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0])
  by_kind, busy = collections.Counter(), collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if "XLAEigen" not in line.name:
        continue
      for event in line.events:
        if event.name.startswith(("ThunkExecutor", "end:", "ThreadpoolListener", "while")):
          continue
        by_kind[re.sub(r"\.\d+$", "", event.name)] += event.duration_ns
        busy[line.name] += event.duration_ns
  print("profile (one sampler run): time per XLA op kind")
  for kind, ns in by_kind.most_common(12):
    print(f"  {ns / 1e6:9.1f} ms  {kind}")
  for i, ns in enumerate(sorted(busy.values(), reverse=True)):
    print(f"  XLA worker thread {i}: busy {ns / 1e6:.1f} ms")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=3, help="timed runs of the sampler and of transformers")
  parser.add_argument("--no-cache-repeats", type=int, default=1, help="timed runs of the no-cache path")
  parser.add_argument("--cpu-devices", type=int, default=1, help="JAX CPU devices (one per core), batch split")
  parser.add_argument("--system-malloc", action="store_true", help="skip host_malloc.reuse_freed_memory()")
  parser.add_argument("--profile", action="store_true", help="trace one extra sampler run, print the top ops")
  parser.add_argument("--hlo", help="write the compiled sampler's optimised HLO text to this path")
  args = parser.parse_args()
  device_flag = f"--xla_force_host_platform_device_count={args.cpu_devices}"
  if args.cpu_devices > 1 and device_flag not in os.environ.get("XLA_FLAGS", ""):
    env = dict(os.environ, XLA_FLAGS=" ".join(filter(None, [os.environ.get("XLA_FLAGS"), device_flag])))
    os.execve(sys.executable, [sys.executable] + sys.argv, env)
  reused = not args.system_malloc and host_malloc.reuse_freed_memory()  # as the entry points do; see train_step.py
  print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  torch.manual_seed(0)
  hf_config = transformers.LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=1024,
                                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                       max_position_embeddings=512)
  hf_model = transformers.LlamaForCausalLM(hf_config).eval()
  with tempfile.TemporaryDirectory() as path:
    hf_model.save_pretrained(path, safe_serialization=True)
    config, params = models.load_hf(path)
  prompts = np.random.default_rng(0).integers(3, 1000, (BATCH, PROMPT)).astype(np.int32)
  lengths = np.full((BATCH,), PROMPT, np.int32)
  batch_columns = None
  if jax.device_count() > 1:  # a data mesh over the CPU devices: each runs its share of the rows
    mesh = sharding.make_mesh([("data", -1), ("fsdp", 1), ("tensor", 1)])
    prompts_in, lengths_in = sharding.shard_global_batch(prompts, mesh), sharding.shard_global_batch(lengths, mesh)
    params = jax.device_put(params, sharding.replicated(mesh))
    batch_columns = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
  else:
    prompts_in, lengths_in = prompts, lengths
  cfg = sampling.SamplingConfig(max_new_tokens=NEW)
  rng = jax.random.key(0)

  def star_jax_cached():
    out = sampling.sample(config, params, prompts_in, lengths_in, rng, cfg=cfg, eos_id=-1, pad_id=0)
    return np.asarray(out.tokens_BxN)

  def star_jax_no_cache():
    return np.asarray(greedy_without_cache(config, params, jnp.asarray(prompts), NEW))

  def hf_generate():
    with torch.no_grad():
      out = hf_model.generate(torch.tensor(prompts, dtype=torch.long), max_new_tokens=NEW, min_new_tokens=NEW,
                              do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, PROMPT:].numpy()

  if args.hlo:
    lowered = sampling.sample.lower(config, params, prompts_in, lengths_in, rng, cfg=cfg, eos_id=-1, pad_id=0)
    with open(args.hlo, "w") as f:
      f.write(lowered.compile().as_text())
  groups = sampling.row_groups_for(BATCH)
  print(f"jax devices: {jax.device_count()}  sampler row groups: {groups}")
  contenders = {"star_jax (KV cache)": star_jax_cached, "star_jax (no cache)": star_jax_no_cache,
                "transformers generate": hf_generate}
  for fn in contenders.values():
    fn()  # untimed: compilation (jax), first-call allocations (torch)
  # The KV-cache sampler and transformers alternate, so that a change in the machine's load over the
  # run affects both alike; the (36x slower) no-cache path runs --no-cache-repeats times on its own.
  times = {name: [] for name in contenders}
  tokens = {}
  for _ in range(args.repeats):
    for name in ("star_jax (KV cache)", "transformers generate"):
      times[name].append(_timed(contenders[name], tokens, name))
  for _ in range(args.no_cache_repeats):
    times["star_jax (no cache)"].append(_timed(star_jax_no_cache, tokens, "star_jax (no cache)"))
  results = {}
  for name, runs in times.items():
    seconds = min(runs)
    results[name] = (BATCH * NEW / seconds, tokens[name])
    print(f"{name:24s} {seconds:7.2f} s  {BATCH * NEW / seconds:9,.0f} tokens/s   (runs: "
          f"{', '.join(f'{t:.2f}' for t in runs)} s)")
  reference = results["star_jax (KV cache)"][1]
  for name, (_, tokens) in results.items():
    agree = float(np.mean(tokens == reference))
    print(f"  {name}: {100 * agree:.1f}% of tokens equal to the KV-cache sampler's")
  if args.profile:
    _profile(star_jax_cached)
  matmul_s, matmul_flops = decode_floor.matmul_floor_seconds(config, params, BATCH, NEW, groups, batch_columns)
  bandwidth = decode_floor.read_bandwidth()
  cache_bytes = decode_floor.cache_bytes_read(config, BATCH, PROMPT, NEW)
  cache_s = cache_bytes / bandwidth
  floor_s = matmul_s + cache_s
  hf_s = min(times["transformers generate"])
  print(f"floor: decode matmuls alone {matmul_s:.3f} s ({matmul_flops / matmul_s / 1e9:.1f} GFLOP/s) + KV-cache reads "
        f"{cache_s:.3f} s ({cache_bytes / 1e9:.2f} GB at "
        f"{bandwidth / 1e9:.1f} GB/s) = {floor_s:.3f} s; a sampler at the floor: {hf_s / floor_s:.2f}x transformers")
  cached = results["star_jax (KV cache)"][0]
  print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print(f"torch threads: {torch.get_num_threads()}  jax devices: {jax.device_count()}  row groups: {groups}  "
        f"malloc: {'host_malloc.reuse_freed_memory()' if reused else 'system defaults'}")
  print(f"sampler_speedup_vs_no_cache: {cached / results['star_jax (no cache)'][0]:.2f}")
  print(f"sampler_speedup_vs_transformers: {cached / results['transformers generate'][0]:.2f}")


if __name__ == "__main__":
  main()
