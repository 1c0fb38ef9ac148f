"""Sampler throughput: star_jax KV-cache sampler vs transformers `generate` vs no-cache, in one run.

Same weights (a random Llama-style model: 4 layers, d_model 256, 4 heads, vocab 1000), same prompts
(batch 32, 32-token prompts), 128 new tokens, greedy, no EOS. The weights are created with transformers,
saved as safetensors and loaded with `star_jax.models.load_hf`, and the three paths must produce the
same tokens (checked). Prints generated tokens/s for each and, last,
`sampler_speedup_vs_transformers: <ratio>`.

  python benchmarks/sampler.py [--repeats 3] [--no-cache-repeats 1] [--profile] [--hlo PATH]

Every contender runs once untimed first (compilation, torch warm-up), then timed runs (the KV-cache
sampler and transformers alternating); each contender's best run counts. The load average is printed
before and after: on a shared machine torch's OpenMP threads degrade far more than XLA's under
contention (transformers took 25 s instead of ~2 s at a load average of 4 on 2 cores), so the ratio is
only meaningful from a run that had the cores to itself.
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
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from star_jax import models, sampling

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
  parser.add_argument("--profile", action="store_true", help="trace one extra sampler run, print the top ops")
  parser.add_argument("--hlo", help="write the compiled sampler's optimised HLO text to this path")
  args = parser.parse_args()
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
  cfg = sampling.SamplingConfig(max_new_tokens=NEW)
  rng = jax.random.key(0)

  def star_jax_cached():
    return np.asarray(sampling.sample(config, params, prompts, lengths, rng, cfg=cfg, eos_id=-1, pad_id=0).tokens_BxN)

  def star_jax_no_cache():
    return np.asarray(greedy_without_cache(config, params, jnp.asarray(prompts), NEW))

  def hf_generate():
    with torch.no_grad():
      out = hf_model.generate(torch.tensor(prompts, dtype=torch.long), max_new_tokens=NEW, min_new_tokens=NEW,
                              do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, PROMPT:].numpy()

  if args.hlo:
    lowered = sampling.sample.lower(config, params, prompts, lengths, rng, cfg=cfg, eos_id=-1, pad_id=0)
    with open(args.hlo, "w") as f:
      f.write(lowered.compile().as_text())
  print(f"sampler row groups: {sampling.row_groups_for(BATCH)}")
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
  cached = results["star_jax (KV cache)"][0]
  print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print(f"torch threads: {torch.get_num_threads()}  jax devices: {jax.device_count()}")
  print(f"sampler_speedup_vs_no_cache: {cached / results['star_jax (no cache)'][0]:.2f}")
  print(f"sampler_speedup_vs_transformers: {cached / results['transformers generate'][0]:.2f}")


if __name__ == "__main__":
  main()
