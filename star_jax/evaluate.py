"""Held-out evaluation: greedy generation with the KV-cache sampler, scored by the task's verifier; n sampled
continuations per prompt (`sample_continuations`: pass@k, Monte-Carlo rollouts, best-of-k)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from star_jax import sampling, sharding
from star_jax.data import CharTokenizer, Problem, tasks
from star_jax.data.tasks import cut_at_stop
from star_jax.models import ModelConfig


def generate_texts(model_config: ModelConfig, params, tokenizer: CharTokenizer, prompts: Sequence[str], *,
                   mesh: Mesh, sampling_config: sampling.SamplingConfig, batch_size: int,
                   rng: jax.Array | None = None, max_new_tokens: int | None = None) -> list[str]:
  """Decode a continuation of every prompt ([BOS] + prompt); EOS and padding are stripped.

  Prompts go through in batches of `batch_size` (the last one padded with repeats of its first prompt,
  so every call has the same shape and the sampler compiles once per prompt-length bucket).
  """
  rng = jax.random.key(0) if rng is None else rng
  batch_size = -(-batch_size // sharding.batch_divisor(mesh)) * sharding.batch_divisor(mesh)
  encoded = [tokenizer.encode(p, add_bos=True) for p in prompts]
  texts: list[str] = []
  for start in range(0, len(encoded), batch_size):
    chunk = encoded[start:start + batch_size]
    padded_chunk = chunk + [chunk[0]] * (batch_size - len(chunk))
    tokens_BxP, lengths_B = sampling.left_pad(padded_chunk, tokenizer.pad_id)
    out = sampling.sample(model_config, params, sharding.shard_global_batch(tokens_BxP, mesh),
                          sharding.shard_global_batch(lengths_B, mesh), jax.random.fold_in(rng, start),
                          cfg=sampling_config, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                          max_new_tokens=max_new_tokens)
    tokens_BxN, gen_lengths_B = sharding.to_host((out.tokens_BxN, out.lengths_B))
    for row in range(len(chunk)):
      texts.append(tokenizer.decode(tokens_BxN[row, :gen_lengths_B[row]]))
  return texts


def sample_continuations(model_config: ModelConfig, params, tokenizer, prompts: Sequence[str], n: int, *, mesh: Mesh,
                         sampling_config: sampling.SamplingConfig, batch_size: int, rng: jax.Array,
                         max_new_tokens: int | None = None, grouped: bool = True, prompt_multiple: int = 16,
                         key_stride: int | None = None,
                         on_chunk: Callable[[int], None] | None = None) -> tuple[list[str], np.ndarray]:
  """(texts, generated_R): n sampled continuations of each prompt ([BOS] + prompt; EOS and padding stripped from
  the texts), prompt-major: row i n + j is continuation j of prompts[i]; generated_R[r] is the number of tokens
  the sampler generated for row r (EOS included).

  Calls of about `batch_size` rows: P = max(1, batch_size // n) prompts, rounded up to a multiple of the mesh's
  data x fsdp size (the last call padded with copies of its first prompt, prompts left-padded to a multiple of
  `prompt_multiple`: few compiled shapes). Call c, starting at prompt s, uses the key fold_in(rng, s ·
  key_stride) (default key_stride = n: the row offset, as `generate_texts` folds it on the repeated prompts).
  With `grouped` (the default) each call is `sampling.sample_grouped` (a prompt prefilled once, its n rows
  decoded over the shared prefix with cascade attention), otherwise `sampling.sample` on the prompts repeated n
  times: the same tokens (tests/prm/test_rollouts.py). `on_chunk(prompts_done)` after every call (progress).
  """
  if n < 1 or batch_size < 1:
    raise ValueError(f"sample_continuations: n={n} and batch_size={batch_size} must be >= 1")
  divisor = sharding.batch_divisor(mesh)
  per_call = -(-max(1, batch_size // n) // divisor) * divisor
  stride = n if key_stride is None else key_stride
  encoded = [tokenizer.encode(p, add_bos=True) for p in prompts]
  common = dict(cfg=sampling_config, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                max_new_tokens=None if max_new_tokens is None else jnp.int32(max_new_tokens))
  texts: list[str] = []
  generated: list[int] = []
  for start in range(0, len(encoded), per_call):
    chunk = encoded[start:start + per_call]
    tokens_GxP, lengths_G = sampling.left_pad(chunk + [chunk[0]] * (per_call - len(chunk)), tokenizer.pad_id,
                                              multiple=prompt_multiple)
    key = jax.random.fold_in(rng, start * stride)
    if grouped:
      out = sampling.sample_grouped(model_config, params, sharding.shard_global_batch(tokens_GxP, mesh),
                                    sharding.shard_global_batch(lengths_G, mesh), key, n_per_prompt=n, **common)
    else:
      out = sampling.sample(model_config, params, sharding.shard_global_batch(np.repeat(tokens_GxP, n, axis=0), mesh),
                            sharding.shard_global_batch(np.repeat(lengths_G, n), mesh), key, **common)
    tokens_BxN, lengths_B = sharding.to_host((out.tokens_BxN, out.lengths_B))
    texts += [tokenizer.decode(tokens_BxN[row, :lengths_B[row]]) for row in range(len(chunk) * n)]
    generated += [int(x) for x in lengths_B[:len(chunk) * n]]
    if on_chunk is not None:
      on_chunk(len(chunk))
  return texts, np.asarray(generated, np.int64)


def arithmetic_accuracy(model_config: ModelConfig, params, tokenizer: CharTokenizer,
                        problems_by_digits: Mapping[int, Sequence[Problem]], *, mesh: Mesh,
                        batch_size: int, max_new_tokens: int) -> dict[str, float]:
  """Greedy accuracy 1(ŷ = y) per digit length ("acc_<n>digit") and over all problems ("acc_overall").

  Each length gets a generation cap of its full scratchpad length + 17 tokens (<= max_new_tokens,
  ArithmeticTask.eval_cap), so runaway generations stop early.
  """
  task = tasks.ArithmeticTask()
  return task_accuracy(model_config, params, tokenizer, task,
                       {n: [task.example(p) for p in problems] for n, problems in problems_by_digits.items()},
                       mesh=mesh, batch_size=batch_size, max_new_tokens=max_new_tokens)


def task_accuracy(model_config: ModelConfig, params, tokenizer, task: tasks.Task,
                  examples_by_group: Mapping[int, Sequence[tasks.Example]], *, mesh: Mesh, batch_size: int,
                  max_new_tokens: int, cap: Callable[[list[tasks.Example]], int] | None = None,
                  exemplars: Sequence[tasks.Example] = (), stop_sequences: tuple[tuple[int, ...], ...] = (),
                  group_name: Callable[[int], str] = lambda g: f"group{g}") -> dict[str, float]:
  """Greedy accuracy 1(ŷ = y) (`task.is_correct`) per group ("acc_<group_name(g)>") and overall ("acc_overall").

  Prompts are `task.few_shot_prompt(x, exemplars)`; generations stop at EOS, at `stop_sequences`
  (token ids) or after `cap(group)` tokens (default: max_new_tokens) and are cut at the task's stop
  strings before judging (tasks.cut_at_stop), so the sampler's stop is only a speed-up.
  """
  cfg = sampling.SamplingConfig(max_new_tokens=max_new_tokens, stop_sequences=stop_sequences)
  results: dict[str, float] = {}
  correct_total = count_total = 0
  for group in sorted(examples_by_group):
    examples = list(examples_by_group[group])
    texts = generate_texts(model_config, params, tokenizer, [task.few_shot_prompt(e, exemplars) for e in examples],
                           mesh=mesh, sampling_config=cfg, batch_size=batch_size,
                           max_new_tokens=task.eval_cap(examples, max_new_tokens))
    correct = int(np.sum([task.is_correct(e, cut_at_stop(t, task.stop_strings)) for e, t in zip(examples, texts)]))
    results[f"acc_{task.group_name(group)}"] = correct / len(examples)
    correct_total += correct
    count_total += len(examples)
  results["acc_overall"] = correct_total / max(count_total, 1)
  return results


def pooled_accuracy(accuracy: Mapping[str, float], sizes: Mapping[int, int],
                    group_name: Callable[[int], str] = lambda n: f"{n}digit") -> float:
  """The accuracy over several groups together: Σ_g acc_g · n_g / Σ_g n_g (n_g = `sizes[g]` questions);
  e.g. "acc_train_lengths", arithmetic's accuracy over the digit lengths it trains on."""
  return sum(accuracy[f"acc_{group_name(g)}"] * n for g, n in sizes.items()) / sum(sizes.values())
