"""Process vs outcome supervision on held-out arithmetic (issue #6), end to end:

  1. policy     a mid-quality scratchpad policy, fine-tuned briefly on 1..policy_max_digits problems;
  2. reward     K samples (temperature T) per reward-pool question, labelled exactly by the scratchpad
                verifier (step k good iff steps 0..k are correct; outcome 1(ŷ = y));
  3. mc         Monte-Carlo step labels (Math-Shepherd) for a subset of them: agreement with the exact
                labels as a function of the number of rollouts N;
  4. prm / orm  two reward models from the policy's weights, same data and steps: a process head trained on
                the step labels, an outcome head on 1(ŷ = y) at every solution token (Cobbe et al. 2021);
  5. test       K samples per held-out problem, scored by both; best-of-N accuracy for N = 1..K by PRM
                (product / min / last), ORM and majority voting, with pass@N as the ceiling;
                step-level accuracy / AUC of the PRM against the exact labels.

Problem pools are disjoint: test problems, policy training problems and reward-pool questions. Every phase
writes its output atomically under the workdir and is skipped when it exists, so a killed run resumes to
the same results; the first run writes `study_config.json`, and a later run with a different config is
refused before it writes anything.

  python -m experiments.prm_arithmetic.study --config=experiments/configs/prm_arithmetic.py --workdir=runs/prm
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from matplotlib.figure import Figure

from star_jax import config as config_lib
from star_jax import evaluate, host_malloc, io, sampling, sharding, train
from star_jax.data import CharTokenizer, arithmetic, verifiers
from star_jax.data.arithmetic import Problem
from star_jax.data.tasks import ArithmeticTask
from star_jax.models import HeadConfig, ModelConfig
from star_jax.prm import steps as prm
from star_jax.prm import train as prm_train

CONFIG_FILE = "study_config.json"  # in the workdir: the config the study was started with


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  seed: int = 0  # problem pools, sampling and init all derive from it
  policy_max_digits: int = 3  # policy trained on 1..this many digits
  policy_examples_per_digit: int = 3000  # scratchpads per length (1 digit: all 81)
  reward_digits: tuple[int, ...] = (3,)  # digit lengths of the reward-pool questions
  reward_questions_per_digit: int = 1000
  reward_samples_per_question: int = 16
  validation_every: int = 10  # every n-th reward-pool question only validates the reward models (0: none)
  test_digits: int = 3  # held-out problems of this length
  test_problems: int = 200
  test_samples: int = 64  # K samples per test problem (best-of-N for N <= K)
  temperature: float = 1.0
  mc_solutions: int = 120  # reward-pool samples labelled by Monte-Carlo rollouts
  mc_rollouts: int = 16  # rollouts per step prefix (agreement reported for N = 1, 2, 4, ... up to this)
  generate_batch_size: int = 256
  score_batch_size: int = 128
  majority_subsets: int = 256  # random subsets per problem and N for majority voting
  # verifiers beside the hidden-state head, run by experiments/prm_arithmetic/verifiers.py (this module alone: none)
  verifiers: tuple[str, ...] = ("min_logprob", "logprob_head", "implicit_outcome", "implicit_step")
  implicit_beta: float = 0.05  # r_t = β log π_φ/π_ref (PRIME's value)
  implicit_lr: float = 1e-3  # peak lr of π_φ (the rest of its recipe: reward_train)
  implicit_steps: int = 0  # updates of each implicit PRM (0: reward_train.steps)
  logprob_head_steps: int = 500  # full-batch Adam steps of the logistic head on log-prob features

  def __post_init__(self):
    for key in ("policy_max_digits", "policy_examples_per_digit", "reward_questions_per_digit",
                "reward_samples_per_question", "test_digits", "test_problems", "test_samples", "mc_rollouts",
                "generate_batch_size", "score_batch_size", "majority_subsets"):
      if getattr(self, key) <= 0:
        raise ValueError(f"config.study.{key} must be > 0, got {getattr(self, key)}")
    if self.temperature <= 0:
      raise ValueError(f"config.study.temperature must be > 0 (sampling), got {self.temperature}")
    if not self.reward_digits or min(self.reward_digits) < 2 or self.test_digits < 2:
      raise ValueError("config.study.reward_digits and test_digits must be >= 2 (only 81 one-digit problems exist)")
    for key in ("mc_solutions", "validation_every"):
      if getattr(self, key) < 0:
        raise ValueError(f"config.study.{key} must be >= 0, got {getattr(self, key)}")
    known = ("min_logprob", "logprob_head", "implicit_outcome", "implicit_step")  # verifiers.VARIANTS
    if set(self.verifiers) - set(known) or self.implicit_beta <= 0 or self.implicit_lr <= 0 or self.implicit_steps < 0:
      raise ValueError(f"config.study: verifiers must be among {known} (got {self.verifiers}); implicit_beta, "
                       f"implicit_lr > 0 and implicit_steps >= 0 (got {self.implicit_beta}, {self.implicit_lr}, "
                       f"{self.implicit_steps})")


@dataclasses.dataclass(frozen=True)
class PRMStudyConfig:
  model: ModelConfig
  policy_train: config_lib.TrainConfig  # fine-tuning of the policy (steps = its length)
  reward_train: config_lib.TrainConfig  # each reward model (PRM and ORM alike)
  checkpoint: config_lib.CheckpointConfig
  mesh: config_lib.MeshConfig
  study: StudyConfig


def study_from_config(config: Mapping) -> PRMStudyConfig:
  """Validate the ConfigDict of experiments/configs/prm_arithmetic.py (unknown keys are errors)."""
  return config_lib.from_mapping(PRMStudyConfig, config)


def problem_pools(s: StudyConfig) -> dict[str, list[Problem]]:
  """Disjoint pools: test first (fixed whatever the train sizes), then policy, then reward questions."""
  test = arithmetic.sample_problems(s.test_digits, s.test_problems, s.seed * 3)
  taken = set(test)
  policy = []
  for n in range(1, s.policy_max_digits + 1):
    chosen = arithmetic.sample_problems(n, s.policy_examples_per_digit, s.seed * 3 + 1,
                                        exclude=frozenset(taken) if n >= 2 else frozenset())
    policy += chosen
    taken |= set(chosen) if n >= 2 else set()
  reward = []
  for n in s.reward_digits:
    reward += arithmetic.sample_problems(n, s.reward_questions_per_digit, s.seed * 3 + 2, exclude=frozenset(taken))
  return {"test": test, "policy": policy, "reward": reward}


# ---- sampling, labelling, encoding ----

def sample_solutions(cfg: PRMStudyConfig, mesh, params, problems: Sequence[Problem], k: int,
                     rng: jax.Array) -> list[dict]:
  """k samples per problem at the study temperature, grouped by length, each cut after its answer line."""
  tokenizer = CharTokenizer()
  longest = max(len(arithmetic.target_text(p)) for p in problems) + 16
  sampling_config = sampling.SamplingConfig(max_new_tokens=longest, temperature=cfg.study.temperature)
  records = []
  for n in sorted({p.n_digits for p in problems}):
    group = [p for p in problems if p.n_digits == n]
    cap = max(len(arithmetic.target_text(p)) for p in group) + 16
    texts = evaluate.generate_texts(cfg.model, params, tokenizer, [arithmetic.prompt_text(p) for p in group
                                                                   for _ in range(k)],
                                    mesh=mesh, sampling_config=sampling_config,
                                    batch_size=cfg.study.generate_batch_size, rng=jax.random.fold_in(rng, n),
                                    max_new_tokens=cap)
    for i, text in enumerate(texts):
      p = group[i // k]
      target = ArithmeticTask().trim(text)
      answer = verifiers.extract_answer(target)
      records.append({"a": p.a, "b": p.b, "sample": i % k, "target": target, "answer": answer,
                      "correct": answer == p.answer, "labels": prm.arithmetic_step_labels(p, target)})
  return records


def encode_record(record: Mapping, *, outcome: bool) -> dict[str, np.ndarray]:
  """A sample as a reward example: exact step labels at step ends, or (outcome) 1(ŷ = y) at every token."""
  p = Problem(record["a"], record["b"])
  steps = prm.split_steps(record["target"], "\n", start_after=arithmetic.SCRATCH_OPEN)
  targets = [None] * len(steps) if outcome else record["labels"]
  return prm.encode_labelled_text(CharTokenizer(), arithmetic.prompt_text(p), record["target"],
                                  [s.end for s in steps], targets,
                                  outcome=float(record["correct"]) if outcome else None)


def scoring_example(record: Mapping) -> dict[str, np.ndarray]:
  """A sample with every step end marked (targets 0), for reading the PRM at each step."""
  return encode_record({**record, "labels": [0.0] * len(record["labels"])}, outcome=False)


# ---- phases ----

def _policy(cfg: PRMStudyConfig, workdir: str, mesh, pools) -> object:
  """train.fine_tune on the policy pool's full scratchpads (resumes; re-running a finished phase loads it)."""
  examples = [{"prompt": arithmetic.prompt_text(p), "target": arithmetic.target_text(p)} for p in pools["policy"]]
  params, _ = train.fine_tune(cfg.model, cfg.policy_train, cfg.checkpoint, mesh, CharTokenizer(), examples, None,
                              cfg.policy_train.steps, os.path.join(workdir, "policy"), pack=True,
                              data_seed=cfg.study.seed, init_seed=cfg.policy_train.seed, description="policy")
  return params


def train_reward_model(cfg: PRMStudyConfig, mesh, directory: str, examples, head_config: HeadConfig, trunk_params):
  """Train (or resume / load) a reward model from `trunk_params` on encoded examples; returns params."""
  return prm_train.fine_tune_reward_model(cfg.model, head_config, cfg.reward_train, cfg.checkpoint, mesh, directory,
                                          examples, trunk_params, description=os.path.basename(directory))


def _cached_jsonl(path: str, make) -> list[dict]:
  if os.path.exists(path):
    return io.read_jsonl(path)
  records = make()
  io.write_jsonl(path, records)
  return records


def mc_agreement(cfg: PRMStudyConfig, mesh, params, records: Sequence[Mapping], rng: jax.Array) -> dict:
  """Monte-Carlo labels of `records` and their agreement with the exact labels for N = 1, 2, 4, ..."""
  tokenizer = CharTokenizer()
  problems = [Problem(r["a"], r["b"]) for r in records]
  cap = max(len(arithmetic.target_text(p)) for p in problems) + 16
  sampling_config = sampling.SamplingConfig(max_new_tokens=cap, temperature=cfg.study.temperature)

  def complete(prompts, n, key):  # n rollouts of each step prefix, each prefix prefilled once (prm.sample_rollouts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # batches of similar lengths
    texts = prm.sample_rollouts(cfg.model, params, tokenizer, [prompts[i] for i in order], n, mesh=mesh,
                                sampling_config=sampling_config, batch_size=cfg.study.generate_batch_size, rng=key)
    out = [""] * (len(prompts) * n)
    for rank, i in enumerate(order):
      out[i * n:(i + 1) * n] = [ArithmeticTask().trim(t) for t in texts[rank * n:(rank + 1) * n]]
    return out

  prefixes = [prm.step_prefixes(r["target"], prm.split_steps(r["target"], "\n", arithmetic.SCRATCH_OPEN))
              for r in records]
  verify = [lambda text, p=p: verifiers.is_correct(p, text) for p in problems]
  outcomes = prm.rollout_outcomes([arithmetic.prompt_text(p) for p in problems], prefixes, verify, complete,
                                  cfg.study.mc_rollouts, rng)
  exact = np.concatenate([np.asarray(r["labels"], np.float32) for r in records] + [np.zeros(0, np.float32)])
  rows = []
  n = 1
  while n <= cfg.study.mc_rollouts and exact.size:
    hard, soft = zip(*(prm.mc_labels(o, n) for o in outcomes))
    hard, soft = np.concatenate(hard), np.concatenate(soft)
    rows.append({"rollouts": n, "hard_agreement": float(np.mean(hard == exact)),
                 "soft_agreement": float(np.mean((soft >= 0.5) == (exact > 0.5))),
                 "hard_false_negative": float(np.mean(hard[exact > 0.5] == 0)) if np.any(exact > 0.5) else None,
                 "hard_false_positive": float(np.mean(hard[exact < 0.5] == 1)) if np.any(exact < 0.5) else None,
                 "soft_mse": float(np.mean((soft - exact) ** 2))})
    n *= 2
  return {"solutions": len(records), "steps": int(exact.size),
          "exact_positive": float(exact.mean()) if exact.size else None,
          "by_rollouts": rows}


def auc(scores, labels) -> float | None:
  """P(score of a random positive > score of a random negative), ties counted half (Mann-Whitney)."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels) > 0.5
  if labels.all() or not labels.any():
    return None
  ranks = np.empty(len(scores))
  order = np.argsort(scores, kind="stable")
  sorted_scores = scores[order]
  ranks[order] = np.arange(1, len(scores) + 1)
  for value in np.unique(sorted_scores):  # average ranks of ties
    tie = scores == value
    ranks[tie] = ranks[tie].mean()
  n_pos, n_neg = labels.sum(), (~labels).sum()
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def summarize(records: Sequence[Mapping], step_probs: Sequence[Sequence[float]], orm_probs: Sequence[float],
              k: int, *, majority_subsets: int = 256, seed: int = 0) -> dict:
  """Step-level PRM quality and best-of-N curves of test samples (records in problem-major order, k each)."""
  labels = np.concatenate([np.asarray(r["labels"], np.float32) for r in records] + [np.zeros(0, np.float32)])
  probs = np.concatenate([np.asarray(p, np.float32) for p in step_probs] + [np.zeros(0, np.float32)])
  correct = np.asarray([r["correct"] for r in records], bool)
  padded, mask = prm.pad_steps(step_probs)
  scores = {f"prm_{name}": np.asarray(prm.aggregate(name, padded, mask)) for name in prm.AGGREGATIONS}
  scores["orm"] = np.asarray(orm_probs, np.float64)
  p = len(records) // k
  correct_PxK = correct.reshape(p, k)
  answers = [[r["answer"] for r in records[i * k:(i + 1) * k]] for i in range(p)]
  truths = [records[i * k]["a"] + records[i * k]["b"] for i in range(p)]
  ns = [n for n in (2 ** j for j in range(k.bit_length())) if n <= k]
  curves = {"n": ns, "pass@n": [prm.pass_at_n(correct_PxK, n) for n in ns],
            "majority": [prm.majority_vote_accuracy(answers, truths, n, num_subsets=majority_subsets, seed=seed)
                         for n in ns]}
  for name, s in scores.items():
    curves[name] = [prm.best_of_n_accuracy(s.reshape(p, k), correct_PxK, n) for n in ns]
  return {
      "samples": len(records), "problems": p, "sample_accuracy": float(correct.mean()),
      "step_level": {"steps": int(labels.size), "positive_fraction": float(labels.mean()) if labels.size else None,
                     "prm_accuracy": float(np.mean((probs > 0.5) == (labels > 0.5))) if labels.size else None,
                     "prm_auc": auc(probs, labels)},
      "solution_auc": {name: auc(s, correct) for name, s in scores.items()},
      "best_of_n": curves,
  }


def run(cfg: PRMStudyConfig, workdir: str, results_dir: str | None = None) -> dict:
  """All phases (cached under workdir); writes results.json, report.md and plots to workdir (+ results_dir)."""
  workdir = os.path.abspath(workdir)
  s = cfg.study
  mesh = sharding.make_mesh(cfg.mesh.axes, name="config.mesh.axes")
  # checkpoint and mesh settings may change between runs of one workdir; nothing else
  config_lib.check_resumable(os.path.join(workdir, CONFIG_FILE), cfg, ("model", "policy_train", "reward_train", "study"),
                             what="PRM study")
  os.makedirs(workdir, exist_ok=True)
  pools = problem_pools(s)
  timings_path = os.path.join(workdir, "timings.json")
  timed = io.phase_timer(timings_path)

  key = jax.random.key(s.seed)
  policy = timed("policy", lambda: _policy(cfg, workdir, mesh, pools))
  reward_records = timed("sample_reward", lambda: _cached_jsonl(
      os.path.join(workdir, "reward_samples.jsonl"),
      lambda: sample_solutions(cfg, mesh, policy, pools["reward"], s.reward_samples_per_question,
                               jax.random.fold_in(key, 1))))
  mc_path = os.path.join(workdir, "mc_agreement.json")
  if s.mc_solutions and not os.path.exists(mc_path):
    chosen = np.random.default_rng(s.seed).permutation(len(reward_records))[:s.mc_solutions]
    io.write_json(mc_path, timed("mc", lambda: mc_agreement(cfg, mesh, policy, [reward_records[i] for i in chosen],
                                                         jax.random.fold_in(key, 2))))
  held_out = set(pools["reward"][::s.validation_every]) if s.validation_every else set()
  train_records = [r for r in reward_records if Problem(r["a"], r["b"]) not in held_out]
  val_records = [r for r in reward_records if Problem(r["a"], r["b"]) in held_out]
  models = {}
  for name, head, outcome in (("prm", HeadConfig(prm_classes=1), False), ("orm", HeadConfig(prm_classes=0, orm=True), True)):
    examples = [encode_record(r, outcome=outcome) for r in train_records]
    models[name] = (head, timed(f"train_{name}", lambda: train_reward_model(
        cfg, mesh, os.path.join(workdir, name), examples, head, policy)))
  test_records = timed("sample_test", lambda: _cached_jsonl(
      os.path.join(workdir, "test_samples.jsonl"),
      lambda: sample_solutions(cfg, mesh, policy, pools["test"], s.test_samples, jax.random.fold_in(key, 3))))
  def score(records):
    examples = [scoring_example(r) for r in records]
    seq_len = -(-max(len(e["inputs"]) for e in examples) // 16) * 16
    prm_steps, _ = prm_train.score_examples(cfg.model, models["prm"][1], examples, mesh=mesh,
                                            batch_size=s.score_batch_size, seq_len=seq_len)
    _, orm = prm_train.score_examples(cfg.model, models["orm"][1], examples, mesh=mesh,
                                      batch_size=s.score_batch_size, seq_len=seq_len)
    return {"prm_steps": prm_steps, "orm": orm}

  scores = {}
  for split, records in (("validation", val_records), ("test", test_records)):
    path = os.path.join(workdir, f"{split}_scores.json")
    if records and not os.path.exists(path):
      io.write_json(path, timed(f"score_{split}", lambda: score(records)))
    scores[split] = io.read_json(path) if records else None
  results = summarize(test_records, scores["test"]["prm_steps"], scores["test"]["orm"], s.test_samples,
                      majority_subsets=s.majority_subsets, seed=s.seed)
  if scores["validation"]:
    results["validation"] = summarize(val_records, scores["validation"]["prm_steps"], scores["validation"]["orm"],
                                      s.reward_samples_per_question, majority_subsets=s.majority_subsets, seed=s.seed)
  reward_labels = np.concatenate([np.asarray(r["labels"]) for r in train_records] + [np.zeros(0)])
  results["reward_data"] = {"samples": len(train_records), "questions": len(pools["reward"]) - len(held_out),
                            "validation_samples": len(val_records),
                            "sample_accuracy": float(np.mean([r["correct"] for r in train_records])),
                            "steps": int(reward_labels.size),
                            "positive_step_fraction": float(reward_labels.mean()) if reward_labels.size else None}
  results["mc_agreement"] = io.read_json(mc_path) if os.path.exists(mc_path) else None
  results["timings_seconds"] = timed.timings
  results["config"] = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
  io.write_json(os.path.join(workdir, "results.json"), results)
  write_report(results, workdir)
  if results_dir:
    os.makedirs(results_dir, exist_ok=True)
    for name in ("results.json", "report.md", "best_of_n.png", "mc_agreement.png"):
      if os.path.exists(os.path.join(workdir, name)):
        shutil.copy(os.path.join(workdir, name), os.path.join(results_dir, name))
  return results


# ---- report ----

_CURVES = (("pass@n", "pass@N (ceiling)", "k:"), ("prm_product", "PRM, product", "tab:blue"),
           ("prm_min", "PRM, min", "tab:cyan"), ("prm_last", "PRM, last step", "tab:purple"),
           ("orm", "ORM", "tab:orange"), ("majority", "majority voting", "tab:green"))


def _pct(x) -> str:
  return "–" if x is None else f"{100 * x:.1f}%"


def write_report(results: Mapping, directory: str) -> None:
  """report.md (tables), best_of_n.png and mc_agreement.png from `results` (see `run`)."""
  curves = results["best_of_n"]
  lines = ["# Process vs outcome supervision on held-out arithmetic", "",
           f"{results['problems']} held-out problems x {results['samples'] // results['problems']} samples; "
           f"single-sample accuracy {_pct(results['sample_accuracy'])}.", "",
           "## Best-of-N accuracy", "", "| N | " + " | ".join(label for _, label, _ in _CURVES) + " |",
           "|---:|" + "---:|" * len(_CURVES)]
  for i, n in enumerate(curves["n"]):
    lines.append(f"| {n} | " + " | ".join(_pct(curves[key][i]) for key, _, _ in _CURVES) + " |")
  step = results["step_level"]
  lines += ["", "## PRM against the exact step labels (test samples)", "",
            f"{step['steps']} steps, {_pct(step['positive_fraction'])} good; PRM accuracy at 0.5: "
            f"{_pct(step['prm_accuracy'])}; step AUC: {step['prm_auc'] if step['prm_auc'] is None else round(step['prm_auc'], 4)}.",
            "", "Solution-level AUC for 1(ŷ = y): " + ", ".join(
                f"{k} {v:.4f}" for k, v in results["solution_auc"].items() if v is not None) + "."]
  val = results.get("validation")
  if val:
    vstep, vcurves = val["step_level"], val["best_of_n"]
    lines += ["", "## Reward models on held-out reward-pool questions (validation, not test)", "",
              f"{val['problems']} questions x {val['samples'] // val['problems']} samples; step AUC "
              f"{vstep['prm_auc'] if vstep['prm_auc'] is None else round(vstep['prm_auc'], 4)}; solution AUC: "
              + ", ".join(f"{k} {v:.4f}" for k, v in val["solution_auc"].items() if v is not None)
              + f"; best-of-{vcurves['n'][-1]}: " + ", ".join(f"{label} {_pct(vcurves[key][-1])}"
                                                             for key, label, _ in _CURVES) + "."]
  mc = results.get("mc_agreement")
  if mc:
    lines += ["", "## Monte-Carlo step labels vs exact labels", "",
              f"{mc['solutions']} reward-pool samples, {mc['steps']} steps ({_pct(mc['exact_positive'])} good).", "",
              "| rollouts N | hard label agrees | soft ≥ 0.5 agrees | hard false negative | hard false positive | soft MSE |",
              "|---:|---:|---:|---:|---:|---:|"]
    for row in mc["by_rollouts"]:
      lines.append(f"| {row['rollouts']} | {_pct(row['hard_agreement'])} | {_pct(row['soft_agreement'])} | "
                   f"{_pct(row['hard_false_negative'])} | {_pct(row['hard_false_positive'])} | {row['soft_mse']:.4f} |")
  lines += ["", "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["timings_seconds"].items()), "",
            "![best-of-N](best_of_n.png)"] + (["", "![MC agreement](mc_agreement.png)"] if mc else [])
  io.write_text(os.path.join(directory, "report.md"), "\n".join(lines) + "\n")

  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  for key, label, style in _CURVES:
    kwargs = {"linestyle": ":", "color": "k"} if style == "k:" else {"color": style}
    ax.plot(curves["n"], [100 * v for v in curves[key]], marker="o", markersize=3, label=label, **kwargs)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("N (samples per problem)")
  ax.set_ylabel("% problems solved")
  ax.set_title("best-of-N on held-out arithmetic")
  ax.legend(fontsize=8)
  fig.tight_layout()
  io.save_figure(fig, os.path.join(directory, "best_of_n.png"))
  if mc:
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ns = [r["rollouts"] for r in mc["by_rollouts"]]
    ax.plot(ns, [100 * r["hard_agreement"] for r in mc["by_rollouts"]], marker="o", label="hard (any success)")
    ax.plot(ns, [100 * r["soft_agreement"] for r in mc["by_rollouts"]], marker="s", label="soft ≥ 0.5")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rollouts per step prefix N")
    ax.set_ylabel("% steps agreeing with exact labels")
    ax.legend()
    fig.tight_layout()
    io.save_figure(fig, os.path.join(directory, "mc_agreement.png"))


def main(argv):
  del argv
  host_malloc.reuse_freed_memory()  # before any JAX computation; STAR_JAX_SYSTEM_MALLOC=1 opts out
  from absl import flags  # noqa: PLC0415
  cfg = study_from_config(flags.FLAGS.config)
  run(cfg, flags.FLAGS.workdir, flags.FLAGS.results_dir or None)


if __name__ == "__main__":
  from absl import app, flags, logging
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "experiments/configs/prm_arithmetic.py[:variant]", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and the report.")
  flags.DEFINE_string("results_dir", "", "Also copy results.json, report.md and the plots here.")
  flags.mark_flags_as_required(["config", "workdir"])
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=config_lib.parse_flags)
