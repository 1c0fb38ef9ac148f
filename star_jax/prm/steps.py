"""Process supervision: step segmentation, label placement, automatic step labels, solution scores, best-of-N.

Lightman et al. 2023 ("Let's Verify Step by Step", arXiv 2305.20050) train a process reward model (PRM) to
rate every reasoning step and score a solution by aggregating the step ratings; Wang et al. 2023
(Math-Shepherd, arXiv 2312.08935) label steps automatically by Monte-Carlo rollouts from each step prefix.

* Steps are the non-empty pieces of a solution between delimiters (newline for arithmetic scratchpad lines
  and PRM800K steps). A step's label sits at its *end token*: the token holding the delimiter that closes
  it (the step's last token when unterminated). Nothing else is labelled (`encode_labelled_text`).
* Labels: exact ones for any task that checks its steps (`task_step_labels`: a step is good iff it and
  every step before it are correct; arithmetic's scratchpad verifier), Monte-Carlo ones for any task with a
  final-answer verifier (`rollout_outcomes`, the policy's rollouts from `sample_rollouts`: each step prefix
  prefilled once, its N rollouts decoded over the shared prefix). Segmentation: data/steps.py (`Task.steps`).
* Scores: the registry `AGGREGATIONS` ("product", "min", "last") turns step probabilities into a solution
  score; `best_of_n_accuracy`, `majority_vote_accuracy` and `pass_at_n` measure reranking.
* Dense rewards for policy gradients live in star_jax/prm/reward.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from star_jax import evaluate, sampling
from star_jax.data import prm800k
from star_jax.data.arithmetic import Problem
from star_jax.data.steps import Step, prefix_correct_labels, split_steps  # noqa: F401 (re-exported)
from star_jax.data.tasks import ArithmeticTask, Example, Task
from star_jax.models import ModelConfig

# ---- segmentation and label placement ----

def encode_labelled_text(tokenizer, prompt: str, text: str, step_ends: Sequence[int],
                         step_targets: Sequence[float | None], *, outcome: float | None = None,
                         orm_all_tokens: bool = True) -> dict[str, np.ndarray]:
  """[BOS] + prompt + text as model inputs, with step labels placed only at step-end tokens.

  The text is cut after every step end (after the delimiter character at offset `end`, or at the end of
  the text) and each piece is tokenized on its own, so the piece's last token is the step's end token
  for any tokenizer (for the character tokenizer this equals tokenizing the whole text at once).
  step_targets[k] is the label of step k (binary / soft in [0, 1], or a class id for rating heads), None
  for an unlabelled step. With `outcome` (1(ŷ = y)), the ORM targets cover every text token
  (orm_all_tokens) or only the last one.

  Returns int32 inputs/targets [L] (next tokens, the last one EOS), float32 loss_mask (the text's tokens
  and EOS, as data.pipeline.encode_example), step_mask/step_targets, orm_mask/orm_targets.
  """
  if len(step_ends) != len(step_targets):
    raise ValueError(f"encode_labelled_text: {len(step_ends)} step ends but {len(step_targets)} step targets")
  if any(b <= a for a, b in zip(step_ends, step_ends[1:])) or any(not 0 <= e <= len(text) for e in step_ends):
    raise ValueError(f"encode_labelled_text: step ends must increase within [0, {len(text)}], got {list(step_ends)}")
  prompt_ids = tokenizer.encode(prompt, add_bos=True)
  ids, label_at = list(prompt_ids), {}
  start = 0
  for k, end in enumerate(step_ends):
    stop = min(end + 1, len(text))
    piece = tokenizer.encode(text[start:stop])
    if not piece:
      raise ValueError(f"encode_labelled_text: step {k} (ending at offset {end}) encodes to no tokens")
    ids += piece
    if step_targets[k] is not None:
      label_at[len(ids) - 1] = float(step_targets[k])
    start = stop
  ids += tokenizer.encode(text[start:])
  n = len(ids)
  inputs = np.asarray(ids, np.int32)
  targets = np.asarray(ids[1:] + [tokenizer.eos_id], np.int32)
  loss_mask = np.zeros(n, np.float32)
  loss_mask[len(prompt_ids) - 1:] = 1.0
  step_mask, step_targets_arr = np.zeros(n, np.float32), np.zeros(n, np.float32)
  for position, value in label_at.items():
    step_mask[position], step_targets_arr[position] = 1.0, value
  orm_mask, orm_targets = np.zeros(n, np.float32), np.zeros(n, np.float32)
  if outcome is not None and n > len(prompt_ids):
    if orm_all_tokens:
      orm_mask[len(prompt_ids):] = 1.0
    else:
      orm_mask[n - 1] = 1.0
    orm_targets[:] = float(outcome) * orm_mask
  return {"inputs": inputs, "targets": targets, "loss_mask": loss_mask, "step_mask": step_mask,
          "step_targets": step_targets_arr, "orm_mask": orm_mask, "orm_targets": orm_targets}


def encode_steps(tokenizer, prompt: str, steps: Sequence[str], step_targets: Sequence[float | None], *,
                 delimiter: str = "\n", outcome: float | None = None,
                 orm_all_tokens: bool = True) -> dict[str, np.ndarray]:
  """A solution given as a list of steps (PRM800K): text = step_0 + delim + step_1 + delim + ...."""
  text, ends = "", []
  for step in steps:
    text += step
    ends.append(len(text))
    text += delimiter
  return encode_labelled_text(tokenizer, prompt, text, ends, step_targets, outcome=outcome,
                              orm_all_tokens=orm_all_tokens)


def encode_prm800k_record(tokenizer, record: Mapping, *, three_class: bool = False,
                          delimiter: str = "\n") -> dict[str, np.ndarray]:
  """A PRM800K data-source record (data/prm800k.py) -> `encode_steps` arrays: prompt = problem + delimiter,
  one step per line, the human ratings as binary (or, three_class, class) targets."""
  text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)  # noqa: E731
  ratings = np.asarray(record["ratings"]).tolist()
  targets = (prm800k.class_targets if three_class else prm800k.binary_targets)(ratings)
  return encode_steps(tokenizer, text(record["problem"]) + delimiter, [text(s) for s in record["steps"]], targets,
                      delimiter=delimiter)


# ---- automatic labels ----

def task_step_labels(task: Task, example: Example, text: str) -> list[float]:
  """Exact process labels of a generated solution: `prefix_correct_labels` of the task's step checks
  (`Task.step_correct`); ValueError for a task without exact step checks."""
  correct = task.step_correct(example, text)
  if correct is None:
    raise ValueError(f"the {task.name} task has no exact step checks (Task.step_correct); label its steps with "
                     "Monte-Carlo rollouts (rollout_outcomes) or a trained PRM instead")
  return prefix_correct_labels(correct)


def arithmetic_step_labels(problem: Problem, target: str) -> list[float]:
  """Exact process labels of a generated scratchpad: `task_step_labels` of the arithmetic task."""
  task = ArithmeticTask()
  return task_step_labels(task, task.example(problem), target)


def step_prefixes(text: str, steps: Sequence[Step]) -> list[str]:
  """The solution up to and including each step's delimiter (what a rollout continues from)."""
  return [text[:min(s.end + 1, len(text))] for s in steps]


def rollout_outcomes(prompts: Sequence[str], prefixes: Sequence[Sequence[str]],
                     verify: Sequence[Callable[[str], bool]], complete: Callable[[list[str], int, jax.Array], list[str]],
                     n_rollouts: int, rng: jax.Array) -> list[np.ndarray]:
  """Monte-Carlo step labels (Math-Shepherd, Wang et al. 2023, arXiv 2312.08935): outcomes of N rollouts.

  For solution i with step prefixes x_{i,1..S}, sample N completions c ~ π(· | prompt_i + x_{i,k}) and
  record 1[verify_i(x_{i,k} + c)]; returns one bool array [S_i, N] per solution. The hard label of step k
  is max_j (any rollout reaches the right answer), the soft label the mean (`mc_labels`).

  `complete(contexts, n, rng)` returns n continuations of each context, context-major (text c n + j is
  rollout j of contexts[c]), in one call for every step prefix of every solution: `sample_rollouts` with
  the policy (each context prefilled once, its n rollouts decoded over the shared prefix), or a script.
  """
  contexts, owners = [], []
  for i, (prompt, pre) in enumerate(zip(prompts, prefixes)):
    for k, prefix in enumerate(pre):
      contexts.append(prompt + prefix)
      owners.append((i, k, prefix))
  completions = complete(contexts, n_rollouts, rng) if contexts else []
  if len(completions) != len(contexts) * n_rollouts:
    raise ValueError(f"rollout_outcomes: complete returned {len(completions)} texts for {len(contexts)} contexts "
                     f"x {n_rollouts} rollouts")
  out = [np.zeros((len(pre), n_rollouts), bool) for pre in prefixes]
  for c, (i, k, prefix) in enumerate(owners):
    for j in range(n_rollouts):
      out[i][k, j] = bool(verify[i](prefix + completions[c * n_rollouts + j]))
  return out


def sample_rollouts(model_config: ModelConfig, params, tokenizer, prompts: Sequence[str], n: int, *, mesh: Mesh,
                    sampling_config: sampling.SamplingConfig, batch_size: int, rng: jax.Array,
                    max_new_tokens: int | None = None, grouped: bool = True) -> list[str]:
  """n sampled continuations of each prompt ([BOS] + prompt; EOS and padding stripped), prompt-major: text
  i n + j is continuation j of prompts[i] (a `rollout_outcomes` completer): the texts of
  `evaluate.sample_continuations` (calls of ~batch_size rows, grouped sampling, call keys at the row offset), which
  are those of `evaluate.generate_texts` on the repeated prompts (`[p for p in prompts for _ in range(n)]`)
  with the same rng and a batch_size of P n rows (tests/prm/test_rollouts.py).
  """
  return evaluate.sample_continuations(model_config, params, tokenizer, prompts, n, mesh=mesh,
                                      sampling_config=sampling_config, batch_size=batch_size, rng=rng,
                                      max_new_tokens=max_new_tokens, grouped=grouped)[0]


def mc_labels(outcomes_SxN: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(hard, soft) labels per step from the first n rollouts: hard = any success, soft = success rate."""
  used = outcomes_SxN[:, :n] if n is not None else outcomes_SxN
  if used.shape[1] == 0:
    raise ValueError("mc_labels needs at least one rollout")
  return used.any(axis=1).astype(np.float32), used.mean(axis=1).astype(np.float32)


# ---- aggregation registry: step probabilities -> solution score ----

def _product(p_BxS, m_BxS):
  """Π_k p_k: the probability that every step is good (Lightman et al. 2023, Sec. 3)."""
  return jnp.exp(jnp.sum(jnp.where(m_BxS, jnp.log(jnp.maximum(p_BxS, 1e-30)), 0.0), axis=-1))


def _minimum(p_BxS, m_BxS):
  """min_k p_k: the weakest step (Math-Shepherd, Wang et al. 2023)."""
  return jnp.min(jnp.where(m_BxS, p_BxS, 1.0), axis=-1)


def _last(p_BxS, m_BxS):
  """p of the last step."""
  s = p_BxS.shape[-1]
  last_B = jnp.max(jnp.where(m_BxS, jnp.arange(s)[None, :], -1), axis=-1)
  return jnp.take_along_axis(p_BxS, jnp.maximum(last_B, 0)[:, None], axis=-1)[:, 0]


AGGREGATIONS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "product": _product, "min": _minimum, "last": _last}


def aggregate(name: str, step_probs_BxS, step_mask_BxS) -> jax.Array:
  """Solution scores_B from per-step P(good) (padded to S steps; mask marks real steps).

  product: Π_k p_k; min: min_k p_k; last: p_K. A solution without steps scores 0.
  """
  if name not in AGGREGATIONS:
    raise ValueError(f"unknown PRM aggregation {name!r}; choose one of {sorted(AGGREGATIONS)}")
  p_BxS = jnp.asarray(step_probs_BxS, jnp.float32)
  m_BxS = jnp.asarray(step_mask_BxS).astype(bool)
  return jnp.where(jnp.any(m_BxS, axis=-1), AGGREGATIONS[name](p_BxS, m_BxS), 0.0)


def pad_steps(step_probs: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
  """Ragged per-solution step probabilities -> (probs_BxS, mask_BxS), S = the most steps (at least 1)."""
  s = max([len(p) for p in step_probs] + [1])
  probs, mask = np.zeros((len(step_probs), s), np.float32), np.zeros((len(step_probs), s), bool)
  for i, p in enumerate(step_probs):
    probs[i, :len(p)], mask[i, :len(p)] = p, True
  return probs, mask


# ---- best-of-N ----

def best_of_n_accuracy(scores_PxK: np.ndarray, correct_PxK: np.ndarray, n: int) -> float:
  """Expected accuracy of picking the top-scored of n samples drawn without replacement from K.

  Exact over all C(K, n) subsets: rank the K samples by score (ties: lower index first, as argmax does);
  the sample of rank r (0 = best) is chosen iff it is in the subset and none ranked above it is, which
  has probability C(K − 1 − r, n − 1) / C(K, n). (Lightman et al. 2023 estimate the same curve by
  bootstrap resampling; this is its exact value.)
  """
  scores_PxK, correct_PxK = np.asarray(scores_PxK, np.float64), np.asarray(correct_PxK, np.float64)
  k = scores_PxK.shape[1]
  if not 1 <= n <= k:
    raise ValueError(f"best_of_n_accuracy: n must be in [1, {k}], got {n}")
  weight_K = np.asarray([math.comb(k - 1 - r, n - 1) for r in range(k)], np.float64) / math.comb(k, n)
  order_PxK = np.argsort(-scores_PxK, axis=1, kind="stable")
  ranked_PxK = np.take_along_axis(correct_PxK, order_PxK, axis=1)
  return float(np.mean(ranked_PxK @ weight_K))


def pass_at_n(correct_PxK: np.ndarray, n: int) -> float:
  """Unbiased pass@n (Chen et al. 2021, arXiv 2107.03374): mean over problems of 1 − C(K−c, n) / C(K, n)."""
  correct_PxK = np.asarray(correct_PxK, bool)
  k = correct_PxK.shape[1]
  if not 1 <= n <= k:
    raise ValueError(f"pass_at_n: n must be in [1, {k}], got {n}")
  c_P = correct_PxK.sum(axis=1)
  return float(np.mean([1.0 - math.comb(k - int(c), n) / math.comb(k, n) for c in c_P]))


def majority_vote_accuracy(answers: Sequence[Sequence[object]], truths: Sequence[object], n: int, *,
                           num_subsets: int = 256, seed: int = 0) -> float:
  """Accuracy of majority voting (self-consistency, Wang et al. 2022, arXiv 2203.11171) over n samples.

  For each problem, `num_subsets` random subsets of n of its K samples (the one subset when n = K); the
  most frequent answer among those with an answer (None = no answer) wins, ties broken uniformly at
  random (counted by their expectation: 1/t when the truth is one of t tied answers); a subset with no
  answer at all is wrong. Returns the mean over problems and subsets.
  """
  rng = np.random.default_rng(seed)
  per_problem = []
  for sample_answers, truth in zip(answers, truths):
    k = len(sample_answers)
    if not 1 <= n <= k:
      raise ValueError(f"majority_vote_accuracy: n must be in [1, {k}], got {n}")
    vocab = {a: i for i, a in enumerate(dict.fromkeys(a for a in sample_answers if a is not None))}
    if not vocab:
      per_problem.append(0.0)
      continue
    ids_K = np.asarray([vocab.get(a, -1) for a in sample_answers])
    truth_id = vocab.get(truth, -2)
    subsets = 1 if n == k else num_subsets
    picks_SxN = (np.tile(np.arange(k), (1, 1)) if n == k else
                 np.argsort(rng.random((subsets, k)), axis=1)[:, :n])
    ids_SxN = ids_K[picks_SxN]
    counts_SxA = np.stack([(ids_SxN == a).sum(axis=1) for a in range(len(vocab))], axis=1)
    best_S = counts_SxA.max(axis=1)
    tied_SxA = (counts_SxA == best_S[:, None]) & (best_S[:, None] > 0)
    truth_tied_S = tied_SxA[:, truth_id] if truth_id >= 0 else np.zeros(len(best_S), bool)
    per_problem.append(float(np.mean(truth_tied_S / np.maximum(tied_SxA.sum(axis=1), 1))))
  return float(np.mean(per_problem)) if per_problem else 0.0
