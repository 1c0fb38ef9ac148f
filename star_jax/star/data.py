"""The data side of the STaR loop: seed examples, generation → filter → rationalization, atomic phase files.

Everything here is plain Python over task `Example`s (star_jax.data.tasks) and text; the model enters only
through a `Generate` callable `(prompts, max_new_tokens, rng) -> texts`, so the filtering and
rationalization steps are tested with hand-made generations (tests/test_star*.py) and run in star.py with
the KV-cache sampler.

Saved generation records (`iter_<n>/generated.jsonl`, `iter_<n>/rationalized.jsonl`), one per question.
Arithmetic (the format every arithmetic workdir has; `generate_records` over `Problem`s):

    {"a": 152, "b": 702, "n_digits": 3, "prompt": "Input:\\n1 5 2 + 7 0 2\\nTarget:\\n",
     "target": "<scratch>\\n...\\n</scratch>\\n8 5 4\\n", "correct": true, "source": "generated"}

Any other task (`generate_task_records`): the Example itself (Example.to_json) and the answer extracted:

    {"group": 0, "example": {"question": ..., "answer": "72", ...}, "prompt": "Q: ...\\nA:",
     "target": " ... #### 72\\n", "predicted": "72", "correct": true, "source": "generated"}

`prompt` is always the plain zero-shot `task.prompt(x)`: a generation was prompted behind few-shot
exemplars (if any) and a rationalization with the hint, and both are removed before saving, as in the paper.
`target` is the generation cut after its answer line (`task.trim`, as the official code keeps
`output[:answer_line + 1]`); records with `correct` are the training examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import numpy as np

from star_jax.data import arithmetic
from star_jax.data.arithmetic import Problem
from star_jax.data.tasks import ArithmeticTask, Example, Task, cut_at_stop

# (prompts, max_new_tokens, rng) -> one generated continuation per prompt (special tokens stripped).
Generate = Callable[[Sequence[str], int, jax.Array], list[str]]

# Phase ids: every rng of the loop is derived from (config seed, iteration, phase) (star_jax.io.phase_key).
SUBSAMPLE, GENERATE, RATIONALIZE, TRAIN_DATA, TRAIN_INIT, SEARCH, EVAL_EXTRA = range(7)



def steps_for_iteration(base_steps: int, growth: float, iteration: int) -> int:
  """ceil(base_steps * growth^(iteration - 1)): 100 -> 100, 120, 144, 173 for growth 1.2.

  The 1e-9 slack keeps float noise (100 * 1.2**2 = 144.00000000000003 on some platforms) from adding a step.
  (The official code floors: int(start_steps * grow_steps ** (iter - 1)).)
  """
  if iteration < 1:
    raise ValueError(f"iterations count from 1, got {iteration}")
  return max(1, math.ceil(base_steps * growth ** (iteration - 1) - 1e-9))


# ---- the questions, the test sets and the seed examples ----

def problems_from_source(source) -> list[Problem]:
  return [Problem(int(source[i]["a"]), int(source[i]["b"])) for i in range(len(source))]


def seed_problems(rationales: Sequence[Problem], max_train_digits: int, per_digit: int, seed: int,
                  exclude: Iterable[Problem]) -> list[Problem]:
  """All 81 one-digit problems, plus the first `per_digit` rationales-split problems of each length 2..max.

  Problems in `exclude` (D and the test sets) are never taken for lengths >= 2; for one digit only 81
  problems exist, so those necessarily overlap D and the 1-digit test set (as in the dataset itself).
  """
  exclude = frozenset(exclude)
  out = arithmetic.sample_problems(1, 81, seed)
  for n in range(2, max_train_digits + 1):
    pool = [p for p in rationales if p.n_digits == n and p not in exclude]
    if len(pool) < per_digit:
      raise ValueError(f"only {len(pool)} {n}-digit problems in the rationales split outside D and the test sets; "
                       f"star.seed_per_digit={per_digit} (raise data.rationales_per_digit)")
    out += pool[:per_digit]
  return out


def addition_facts(p: Problem) -> set[tuple[int, int, int]]:
  """The single-digit facts (x, y, carry_in) that p's scratchpad works through, one per digit pair."""
  facts, carry = set(), 0
  for i in range(p.n_digits):
    x, y = p.a // 10**i % 10, p.b // 10**i % 10
    facts.add((x, y, carry))
    carry = (x + y + carry) // 10
  return facts


def carry_fact_problems(rationales: Sequence[Problem], max_digits: int, exclude: Iterable[Problem]) -> list[Problem]:
  """Few rationales-split problems of 2..max_digits digits whose scratchpads show every fact x + y + c.

  The 81 one-digit problems teach x + y with no carry in; a scratchpad line of a longer problem also adds
  the carry of the pair before. Greedy set cover over the pool (most new facts first, shorter problems
  and pool order breaking ties) until all 200 facts (x, y in 0..9, c in {0, 1}) that the pool can show
  are shown: about a hundred 2-3 digit problems, disjoint from `exclude` (D and the test sets).
  """
  exclude = frozenset(exclude)
  pool = [p for p in rationales if 2 <= p.n_digits <= max_digits and p not in exclude]
  facts = [addition_facts(p) for p in pool]
  missing = set().union(*facts) if facts else set()
  chosen: list[Problem] = []
  while missing:
    best = max(range(len(pool)), key=lambda i: (len(facts[i] & missing), -pool[i].n_digits, -i))
    chosen.append(pool[best])
    missing -= facts[best]
  return chosen


def seed_examples(problems: Sequence[Problem], hinted: bool = True) -> list[dict]:
  """Full-scratchpad training records; with `hinted`, each problem also in the rationalization format."""
  out = [{"prompt": arithmetic.prompt_text(p), "target": arithmetic.target_text(p)} for p in problems]
  if hinted:
    out += [{"prompt": arithmetic.hinted_prompt_text(p), "target": arithmetic.target_text(p)} for p in problems]
  return out


def subsample(problems: Sequence[Problem], fraction: float, seed: int, iteration: int) -> list[Problem]:
  """The questions of one iteration: a reproducible random `fraction` of D, in D's order."""
  if fraction >= 1:
    return list(problems)
  count = max(1, round(fraction * len(problems)))
  rng = np.random.default_rng([seed, iteration, SUBSAMPLE])
  return [problems[i] for i in sorted(rng.choice(len(problems), size=count, replace=False).tolist())]


# ---- generate → filter → rationalize ----

def trim_after_answer(text: str) -> str:
  """Arithmetic: the generation up to and including its answer line (the first non-empty line after
  '</scratch>'); unchanged when there is none. Whatever the model wrote after the answer is never trained on.
  """
  return ArithmeticTask().trim(text)


def generation_cap(problems: Sequence[Problem], max_new_tokens: int, seq_len: int) -> int:
  """Arithmetic: `ArithmeticTask.generation_cap` of Problems (the longest true target + a margin)."""
  task = ArithmeticTask()
  return task.generation_cap([task.example(p) for p in problems], max_new_tokens, seq_len)


def generate_records(problems: Sequence[Problem], generate: Generate, rng: jax.Array, *, hint: bool,
                     max_new_tokens: int, seq_len: int) -> list[dict]:
  """Arithmetic: `generate_task_records` over Problems, one generation cap per digit length
  (`generation_cap`); the records keep the arithmetic format (a, b, n_digits, ...)."""
  task = ArithmeticTask()
  return generate_task_records(task, [task.example(p) for p in problems], generate, rng, hint=hint,
                               cap=lambda group: generation_cap([task.problem(e) for e in group], max_new_tokens,
                                                                seq_len))


def record_key(task: Task, example: Example) -> dict:
  """The fields that identify a record's question: a, b, n_digits (arithmetic) or group + the Example."""
  return task.record_key(example)


def record_example(task: Task, record: Mapping) -> Example:
  """The Example a saved record was generated for (inverse of `record_key`)."""
  return task.example_from_record(record)


def record_group(record: Mapping) -> int:
  return int(record["n_digits"] if "n_digits" in record else record["group"])


def generate_task_records(task: Task, examples: Sequence[Example], generate: Generate, rng: jax.Array, *,
                          hint: bool, cap: Callable[[list[Example]], int],
                          exemplars: Sequence[Example] = ()) -> list[dict]:
  """Generate once per example, judge with 1(ŷ = y), save with the plain prompt (Algorithm 1, steps 1-3).

  Prompts: `task.few_shot_prompt(x, exemplars, hint=hint)` (the plain or hinted prompt without
  exemplars). Examples go to `generate` grouped by `Example.group` (similar prompt and output lengths;
  the group's generation cap is `cap(group's examples)`, its rng fold_in(rng, group)). Each text is cut at
  the task's stop strings (`cut_at_stop`), judged with `task.is_correct` and saved as `task.trim` of it.
  Records come back in `examples`' order.
  """
  by_group: dict[int, list[int]] = {}
  for i, e in enumerate(examples):
    by_group.setdefault(e.group, []).append(i)
  records: list[dict | None] = [None] * len(examples)
  for group_id in sorted(by_group):
    group = [examples[i] for i in by_group[group_id]]
    texts = generate([task.few_shot_prompt(e, exemplars, hint=hint) for e in group], cap(group),
                     jax.random.fold_in(rng, group_id))
    if len(texts) != len(group):
      raise ValueError(f"generator returned {len(texts)} texts for {len(group)} prompts")
    for i, e, text in zip(by_group[group_id], group, texts):
      records[i] = task_record(task, e, text, "rationalized" if hint else "generated")
  return records  # type: ignore[return-value]


def task_record(task: Task, example: Example, text: str, source: str) -> dict:
  """The saved record of one generation for `example` (module docstring): the text cut at the task's stop
  strings, judged with `task.is_correct`, saved as `task.trim` of it with the plain prompt."""
  text = cut_at_stop(text, task.stop_strings)
  return {**task.record_key(example), "prompt": task.prompt(example), "target": task.trim(text),
          **task.record_extra(text), "correct": bool(task.is_correct(example, text)), "source": source}


def record_problem(record: Mapping) -> Problem:
  return Problem(int(record["a"]), int(record["b"]))


def failures(records: Iterable[Mapping]) -> list[Problem]:
  """Arithmetic: the problems whose generation was wrong: what rationalization retries with a hint."""
  return [record_problem(r) for r in records if not r["correct"]]


def failed_examples(task: Task, records: Iterable[Mapping]) -> list[Example]:
  """The examples whose generation was wrong: what rationalization retries with a hint."""
  return [record_example(task, r) for r in records if not r["correct"]]


def training_examples(records: Iterable[Mapping]) -> list[dict]:
  """{"prompt", "target"} of the correct records: the examples kept for fine-tuning."""
  return [{"prompt": r["prompt"], "target": r["target"]} for r in records if r["correct"]]


def kept_by_digits(records: Sequence[Mapping], digit_lengths: Iterable[int]) -> dict[int, int]:
  return kept_by_group(records, digit_lengths)


def kept_by_group(records: Sequence[Mapping], groups: Iterable[int]) -> dict[int, int]:
  """Correct records per group (arithmetic: per digit length)."""
  return {g: sum(1 for r in records if r["correct"] and record_group(r) == g) for g in groups}
