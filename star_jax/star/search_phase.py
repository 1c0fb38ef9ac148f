"""Search makes the data: the Tree-of-Thoughts phase of the STaR loop and the held-out evaluation by sampling
and search (the search issue; Zelikman et al. 2022, arXiv 2203.14465; Yao et al. 2023, arXiv 2305.10601).

Phase 3b (`star.search`). STaR keeps a question only when a generation (step 1) or a hinted rationalization
(step 3) reaches the right answer; on the Game of 24 sampling rarely finds a plan, so the loop stalls once the
questions it can solve are used up. For every question still failed after step 3, the search

    s* = search(p_{M_{n-1}}, V, x)     (ToT-BFS or DFS, the `search` config section; V from `value`)

expands states with M_{n-1}'s sampled next steps and keeps the best by V (a PRM, the policy's log-prob, or the
exact oracle: an upper bound, it knows which numbers can still make 24). A final state that the task's
outcome check 1(ŷ = y) accepts is kept as an ordinary rationale: the plain prompt x and the state's text cut
after its answer line (no hint, no search trace), record source "searched". Among a problem's final states
(BFS keeps b) the best-valued correct one is kept; with none correct the best-valued one is recorded as a
failure. Cost per question: every token the policy generated anywhere in its tree (steps, answer lines,
stop tokens) and the reward-model input tokens, recorded with the question.

Resumable: questions are searched in chunks of `star.search_chunk`, chunk k with rng fold_in(rng, k), each
written atomically to `<dir>/chunk_<k>.jsonl` before the next starts; a killed phase resumes at its first
unsaved chunk and ends with the records an uninterrupted run writes.

Held-out extras (`heldout_extras`): `star.eval_samples` samples per question at `star.eval_temperature`
(pass@1 = the mean sample's accuracy, pass@k by the unbiased estimator of Chen et al. 2021, and the fraction of
samples whose first t steps are all `good`, t = 1..T: "solved to step t"), and with `star.eval_search` the
same search with M_n (success and generated tokens per question).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from star_jax import evaluate, io, sampling, search
from star_jax.data.tasks import Example, Task, cut_at_stop
from star_jax.prm.steps import pass_at_n
from star_jax.star import data as sd


def make_policy(cfg, params, tokenizer, mesh) -> search.ModelStepSampler:
  """M as the search's thought generator: one (shared-prefix) sampler call per depth, steps end at newlines."""
  return search.ModelStepSampler(cfg.model, params, tokenizer, mesh,
                                 max_new_tokens=max(cfg.search.step_tokens, cfg.search.answer_tokens))


def make_value(cfg, task: Task, tokenizer, mesh) -> search.ValueFn:
  """The `value` section's state evaluator (a PRM is loaded from value.reward_model_dir)."""
  return search.make_value(cfg.value, task=task, tokenizer=tokenizer, mesh=mesh)


def outcome_record(task: Task, example: Example, outcome: search.Outcome) -> dict:
  """A searched question's record in the loop's format (star/data.py): the best-valued correct final state
  (or, with none correct, the best-valued one) trimmed after its answer line, with its cost."""
  texts = [cut_at_stop(s.text, task.stop_strings) for s in outcome.finals]
  correct = [bool(task.is_correct(example, t)) for t in texts]
  b = outcome.budget
  return {**sd.task_record(task, example, texts[correct.index(True)] if any(correct) else texts[0], "searched"),
          "generated_tokens": b.generated_tokens, "reward_model_tokens": b.reward_model_tokens,
          "sampler_calls": b.sampler_calls}


def search_records(task: Task, examples: Sequence[Example], policy: search.StepSampler, value_fn: search.ValueFn,
                   search_config: search.SearchConfig, rng: jax.Array, directory: str, chunk: int) -> list[dict]:
  """Search every example (in `examples`' order), chunk by chunk, saving each chunk under `directory` (above)."""
  records: list[dict] = []
  for k, start in enumerate(range(0, len(examples), chunk)):
    path = os.path.join(directory, f"chunk_{k:05d}.jsonl")
    if os.path.exists(path):
      records += io.read_jsonl(path)
      continue
    part = list(examples[start:start + chunk])
    result = search.search(policy, value_fn, part, [task.prompt(e) for e in part], search_config,
                           jax.random.fold_in(rng, k))
    out = [outcome_record(task, e, o) for e, o in zip(part, result.outcomes)]
    if jax.process_index() == 0:
      io.write_jsonl(path, out)
    records += out
  return records


def steps_solved(task: Task, example: Example, text: str, depth: int) -> list[bool]:
  """[first t steps all `good`] for t = 1..depth (the task's exact step labels)."""
  good = task.step_good(example, text)[:depth]
  prefix = np.cumprod(np.asarray(good + [False] * (depth - len(good)), bool))
  return [bool(x) for x in prefix]


def heldout_extras(cfg, params, tokenizer, mesh, task: Task, tests: Mapping[int, Sequence[Example]], stops,
                   rng: jax.Array) -> dict:
  """Sampled pass@1 / pass@k, steps solved by depth and (star.eval_search) the search's success, on the
  held-out questions with M_n (module docstring); {} when neither is configured."""
  star, out = cfg.star, {}
  examples = [e for g in sorted(tests) for e in tests[g]]
  if not examples:
    return out
  depth = cfg.search.depth
  if star.eval_samples:
    k = star.eval_samples
    prompts = [task.prompt(e) for e in examples for _ in range(k)]
    sampling_config = sampling.SamplingConfig(max_new_tokens=cfg.eval.max_new_tokens, temperature=star.eval_temperature,
                                              stop_sequences=stops)
    texts = evaluate.generate_texts(cfg.model, params, tokenizer, prompts, mesh=mesh, sampling_config=sampling_config,
                                    batch_size=cfg.eval.batch_size, rng=jax.random.fold_in(rng, 0),
                                    max_new_tokens=task.eval_cap(examples, cfg.eval.max_new_tokens))
    texts = [cut_at_stop(t, task.stop_strings) for t in texts]
    correct_QxK = np.asarray([task.is_correct(examples[i // k], t) for i, t in enumerate(texts)]).reshape(-1, k)
    out["sampled_pass1"] = float(correct_QxK.mean())
    out[f"sampled_pass{k}"] = pass_at_n(correct_QxK, k)
    solved_SxT = np.asarray([steps_solved(task, examples[i // k], t, depth) for i, t in enumerate(texts)], bool)
    out.update({f"sampled_steps_solved_{t + 1}": float(solved_SxT[:, t].mean()) for t in range(depth)})
    out["sampled_tokens_per_sample"] = float(np.mean([len(tokenizer.encode(t)) for t in texts]))
  if star.eval_search:
    result = search.search(make_policy(cfg, params, tokenizer, mesh), make_value(cfg, task, tokenizer, mesh), examples,
                           [task.prompt(e) for e in examples], cfg.search, jax.random.fold_in(rng, 1))
    summary = search.summarize(task, examples, result)
    out.update({"search_correct": summary["correct"], "search_correct_any": summary["correct_any"],
                "search_tokens_per_question": summary["generated_tokens"]})
  return out

