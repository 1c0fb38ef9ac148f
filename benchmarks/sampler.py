"""Sampler throughput: star_jax KV-cache sampler vs transformers `generate` vs no-cache, in one run.

Same weights (a random Llama-style model: 4 layers, d_model 256, 4 heads, vocab 1000), same prompts
(batch 32, 32-token prompts), 128 new tokens, greedy, no EOS. The weights are created with transformers,
saved as safetensors and loaded with `star_jax.models.load_hf`, and the three paths must produce the
same tokens (checked). Prints generated tokens/s for each and, last,
`sampler_speedup_vs_transformers: <ratio>`.

  python benchmarks/sampler.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
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


def _best(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return min(times), out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
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

  star_jax_cached(), star_jax_no_cache()  # compile
  results = {}
  for name, fn in (("star_jax (KV cache)", star_jax_cached), ("star_jax (no cache)", star_jax_no_cache),
                   ("transformers generate", hf_generate)):
    seconds, tokens = _best(fn, args.repeats)
    results[name] = (BATCH * NEW / seconds, tokens)
    print(f"{name:24s} {seconds:7.2f} s  {BATCH * NEW / seconds:9,.0f} tokens/s")
  reference = results["star_jax (KV cache)"][1]
  for name, (_, tokens) in results.items():
    agree = float(np.mean(tokens == reference))
    print(f"  {name}: {100 * agree:.1f}% of tokens equal to the KV-cache sampler's")
  cached = results["star_jax (KV cache)"][0]
  print(f"torch threads: {torch.get_num_threads()}  jax devices: {jax.device_count()}")
  print(f"sampler_speedup_vs_no_cache: {cached / results['star_jax (no cache)'][0]:.2f}")
  print(f"sampler_speedup_vs_transformers: {cached / results['transformers generate'][0]:.2f}")


if __name__ == "__main__":
  main()
