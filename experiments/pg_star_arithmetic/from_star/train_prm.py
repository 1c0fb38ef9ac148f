"""Fit the learned PRM of issue #14 part 3 on the PG start model's own samples: a log-prob PRM (prm/logprob.py).

Part 1 (star_jax/prm/logprob.py, experiments/prm_arithmetic/verifiers.py) found that on arithmetic scratchpads
a small logistic head on the policy's own per-token log-prob features verifies steps, where a head on hidden
states does not. This script makes that verifier for the PG runs of this folder. With M_N the start model of
the PG config (the STaR run rl.base_workdir's iteration rl.base_iteration, as pg.loop.start_params loads it):

  1. Q questions of D per length (a seeded choice, --questions_per_length), K samples of each from M_N
     (--samples) at the PG loop's temperature rl.temperature and cap rl.max_new_tokens (lowered per length to
     the longest true target + a margin, task.generation_cap), with prm.steps.sample_rollouts (each prompt
     prefilled once, its K samples decoded over the shared prefix);
  2. exact step labels (prm.steps.task_step_labels: step k is good iff steps 1..k are all correct by the
     task's step checker, as experiments/prm_arithmetic labels them) and the outcome 1(ŷ = y);
  3. the features f_k of every step under M_N (prm.logprob.step_features of the response encoded exactly as
     the PG reward encodes it, prm.reward.scoring_example) and a logistic head fitted on 9 of every 10 chosen
     questions of each length (prm.logprob.fit_logistic):

       P̂(step k good) = σ(w · f_k + b)

  4. on the held-out tenth: step AUC against the exact labels, solution AUC of 1(ŷ = y) (min / product /
     last aggregation of the step scores), within-problem "text ranked first" and best-of-N
     (experiments.prm_arithmetic.verifiers.evaluate), for the head and for the untrained min-prefix score
     exp(min_{t ≤ end_k} ℓ_t); the fit split's step AUC beside them;
  5. the PRM directory --out: logprob_prm.json (prm.logprob.save_logprob_prm: the head, where M_N is, what it
     was fitted on), report.json and samples.jsonl, built in `<out>.tmp` and renamed: --out appears complete
     or not at all. A re-run with the same settings returns the saved report; other settings are refused.

As the PG reward (rl.process_reward_model = --out, pg/rewards.py `logprob_step_scores`):
R = 1(ŷ = y) + w Σ_{k ≤ S} P̂(step k good) / S, with a FROZEN copy of M_N computing the features of every
sampled batch. Issue #14 asks for "the learned PRM of part 1, retrained on the current policy's samples":
here it is fitted on the START policy's samples, once, before PG; it is not refitted while the policy moves
away from M_N. References: Kadavath et al. 2022 (arXiv 2207.05221), token confidence as a correctness signal;
Math-Shepherd (Wang et al. 2023, arXiv 2312.08935), step scores as PPO rewards; Lightman et al. 2023
(arXiv 2305.20050), process supervision.

  python -m experiments.pg_star_arithmetic.from_star.train_prm \\
      --config=experiments/configs/pg_star_arithmetic.py:demo --out=runs/from_star_2/learned_prm_model \\
      --config.data.data_dir=runs/from_star_2/data --config.rl.base_workdir=runs/star_demo \\
      --config.rl.base_iteration=2
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from experiments.prm_arithmetic import verifiers
from star_jax import host_malloc, io, sampling
from star_jax.data.tasks import Example, Task
from star_jax.pg import loop as pg_loop
from star_jax.pg.config import RLExperimentConfig, rl_experiment_from_config
from star_jax.prm import logprob
from star_jax.prm import reward as prm_reward
from star_jax.prm import steps as prm_steps
from star_jax.star import loop as star_loop
from star_jax.star import tasks as star_tasks

QUESTIONS_PER_LENGTH, SAMPLES, VALIDATION_EVERY, HEAD_STEPS = 300, 4, 10, 500  # the defaults of the flags
REPORT_FILE, SAMPLES_FILE = "report.json", "samples.jsonl"  # in --out, beside logprob.SPEC_FILE


def frozen_model_directory(cfg: RLExperimentConfig) -> str:
  """The finished fine-tuning directory of the PG start model: `<rl.base_workdir>/iter_<N>` (rl.base_iteration
  = N > 0, checked by pg.loop.check_start) or `<rl.base_workdir>/base` (N = 0)."""
  if not cfg.rl.base_workdir:
    raise ValueError("config.rl.base_workdir must name the STaR run the PG runs start from (its iter_<N>/ or "
                     "base/ is the frozen model of the PRM)")
  if cfg.rl.base_iteration:
    pg_loop.check_start(cfg)
    return pg_loop.start_directory(cfg)
  directory = os.path.join(os.path.abspath(cfg.rl.base_workdir), "base")
  if not os.path.exists(os.path.join(directory, "train.json")):
    raise ValueError(f"config.rl.base_iteration=0: {directory} holds no finished base model "
                     f"({os.path.join(directory, 'train.json')} not found)")
  return directory


def choose_questions(questions: Sequence[Example], per_length: int, seed: int) -> dict[int, list[Example]]:
  """Up to `per_length` questions of each group (length) of D: the first of a permutation seeded by (seed, group)."""
  by_group: dict[int, list[Example]] = {}
  for e in questions:
    by_group.setdefault(e.group, []).append(e)
  out = {}
  for g in sorted(by_group):
    order = np.random.default_rng([seed, g]).permutation(len(by_group[g]))
    out[g] = [by_group[g][i] for i in order[:per_length]]
  return out


def split_questions(chosen: Mapping[int, Sequence[Example]], every: int) -> tuple[dict, dict]:
  """(fit, validation) questions per group: every `every`-th chosen question (the 0th first) validates."""
  return ({g: [e for i, e in enumerate(v) if i % every] for g, v in chosen.items()},
          {g: list(v[::every]) for g, v in chosen.items()})


def sample_records(cfg: RLExperimentConfig, params, tokenizer, mesh, task: Task, chosen: Mapping[int, Sequence[Example]],
                   *, samples: int, batch_size: int, rng: jax.Array) -> tuple[list[dict], list[Example]]:
  """(records, their examples): K = `samples` responses to each chosen question from `params` at rl.temperature,
  question-major within each group; a record holds the text ("target"), its exact step labels and 1(ŷ = y)."""
  rl = cfg.rl
  sampling_config = sampling.SamplingConfig(max_new_tokens=rl.max_new_tokens, temperature=rl.temperature)
  records, examples = [], []
  for g, group in chosen.items():
    if not group:
      continue
    cap = task.generation_cap(list(group), rl.max_new_tokens, cfg.train.seq_len, tokenizer)
    texts = prm_steps.sample_rollouts(cfg.model, params, tokenizer, [task.prompt(e) for e in group], samples,
                                      mesh=mesh, sampling_config=sampling_config, batch_size=batch_size,
                                      rng=jax.random.fold_in(rng, g), max_new_tokens=cap)
    for i, e in enumerate(group):
      for j in range(samples):
        text = texts[i * samples + j]
        records.append({"id": e.id, "group": g, **task.record_key(e), "target": text,
                        "labels": prm_steps.task_step_labels(task, e, text), "correct": bool(task.is_correct(e, text))})
        examples.append(e)
  return records, examples


def record_features(cfg: RLExperimentConfig, params, tokenizer, mesh, task: Task, records: Sequence[Mapping],
                    examples: Sequence[Example], batch_size: int) -> list[np.ndarray]:
  """`logprob.step_features` [S, F] of every record under `params`, each response encoded as the PG reward encodes
  it (prm.reward.scoring_example, rows of train.seq_len + 1 tokens); checks one feature row per labelled step."""
  inputs = [prm_reward.scoring_example(tokenizer, task, e, r["target"]) for r, e in zip(records, examples)]
  features = logprob.examples_step_features(cfg.model, params, inputs, mesh=mesh, batch_size=batch_size,
                                            seq_len=cfg.train.seq_len + 1)
  for r, f in zip(records, features):
    if len(f) != len(r["labels"]):
      raise ValueError(f"{r['id']}: {len(f)} scored steps but {len(r['labels'])} labels in {r['target']!r}")
  return features


def _stack(features: Sequence[np.ndarray], records: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
  x = np.concatenate(list(features) + [np.zeros((0, len(logprob.FEATURES)), np.float32)])
  y = np.concatenate([np.asarray(r["labels"], np.float32) for r in records] + [np.zeros(0, np.float32)])
  return x, y


def _sample_stats(records: Sequence[Mapping]) -> dict:
  """Per group and overall: samples, accuracy 1(ŷ = y), labelled steps and the fraction of good ones."""
  def stats(rs):
    labels = [x for r in rs for x in r["labels"]]
    return {"samples": len(rs), "accuracy": float(np.mean([r["correct"] for r in rs])) if rs else None,
            "steps": len(labels), "good_steps": float(np.mean(labels)) if labels else None}
  groups = sorted({r["group"] for r in records})
  return {"all": stats(records), **{str(g): stats([r for r in records if r["group"] == g]) for g in groups}}


def settings_of(cfg: RLExperimentConfig, *, questions_per_length: int, samples: int, validation_every: int,
                head_steps: int, seed: int) -> dict:
  """What a PRM directory is fitted with (a re-run with other settings is refused)."""
  return {"frozen_model": frozen_model_directory(cfg), "questions_per_length": questions_per_length,
          "samples": samples, "validation_every": validation_every, "head_steps": head_steps, "seed": seed,
          "temperature": cfg.rl.temperature, "max_new_tokens": cfg.rl.max_new_tokens, "task": cfg.data.task}


def train_prm(cfg: RLExperimentConfig, out: str, *, questions_per_length: int = QUESTIONS_PER_LENGTH,
              samples: int = SAMPLES, validation_every: int = VALIDATION_EVERY, head_steps: int = HEAD_STEPS,
              seed: int = 0, batch_size: int | None = None) -> dict:
  """Steps 1-5 of the module docstring; returns the report (also `<out>/report.json`). The task data is
  `config.data.data_dir`'s (default: `<parent of out>/data`)."""
  if questions_per_length < 1 or samples < 1 or validation_every < 2 or head_steps < 1:
    raise ValueError(f"train_prm: need questions_per_length >= 1, samples >= 1, validation_every >= 2 and "
                     f"head_steps >= 1, got {questions_per_length}, {samples}, {validation_every}, {head_steps}")
  out = os.path.abspath(out)
  settings = settings_of(cfg, questions_per_length=questions_per_length, samples=samples,
                         validation_every=validation_every, head_steps=head_steps, seed=seed)
  if logprob.is_logprob_prm(out):
    saved = io.read_json(os.path.join(out, logprob.SPEC_FILE)).get("fitted_on", {}).get("settings")
    if saved != settings:
      changed = sorted(k for k in set(settings) | set(saved or {}) if (saved or {}).get(k) != settings.get(k))
      raise ValueError(f"{out} holds a log-prob PRM fitted with other settings ({', '.join(changed)}: "
                       f"{ {k: (saved or {}).get(k) for k in changed} } -> { {k: settings.get(k) for k in changed} }); "
                       "give another --out")
    print(f"{out}: already fitted with these settings")
    return io.read_json(os.path.join(out, REPORT_FILE))
  if os.path.isdir(out) and os.listdir(out):
    raise ValueError(f"{out} exists and is not a log-prob PRM directory (no {logprob.SPEC_FILE}); give another --out")

  t0 = time.perf_counter()
  task_workdir = os.path.dirname(out)
  tokenizer, mesh = star_tasks.tokenizer_and_mesh(cfg)
  data = star_tasks.load_task_data(cfg, task_workdir)
  task = data.task
  if not task.has_step_checks:
    raise ValueError(f"the {task.name} task has no exact step checks (Task.step_correct): nothing to fit the head on")
  directory = settings["frozen_model"]
  params = star_loop.load_iteration_params(cfg, cfg.rl.base_workdir, cfg.rl.base_iteration or "base", mesh)
  batch_size = batch_size or cfg.eval.batch_size
  chosen = choose_questions(data.questions, questions_per_length, seed)
  fit_q, val_q = split_questions(chosen, validation_every)
  rng = jax.random.key(seed)
  timings = {}

  t = time.perf_counter()
  split_records = {}
  for split, questions, key in (("fit", fit_q, 0), ("validation", val_q, 1)):
    split_records[split] = sample_records(cfg, params, tokenizer, mesh, task, questions, samples=samples,
                                          batch_size=batch_size, rng=jax.random.fold_in(rng, key))
  timings["sample"] = time.perf_counter() - t
  t = time.perf_counter()
  features = {split: record_features(cfg, params, tokenizer, mesh, task, rs, exs, batch_size)
              for split, (rs, exs) in split_records.items()}
  timings["features"] = time.perf_counter() - t
  records = {split: rs for split, (rs, _) in split_records.items()}
  x, y = _stack(features["fit"], records["fit"])
  if not y.size:
    raise ValueError("the fit samples hold no labelled steps: nothing to fit the head on")
  t = time.perf_counter()
  head, losses = logprob.fit_logistic(x, y, steps=head_steps)
  timings["fit"] = time.perf_counter() - t

  def scores(name, feats):
    if name == "logprob_head":
      return [head.predict(f).tolist() if len(f) else [] for f in feats]
    return [logprob.min_prefix_scores(f).tolist() for f in feats]

  verifiers_report = {}
  for name in ("logprob_head", "min_logprob"):
    v = {"fit_step_auc": logprob.roc_auc(np.concatenate([np.asarray(s, np.float64) for s in scores(name, features["fit"])]
                                                        + [np.zeros(0)]), y)}
    if records["validation"]:
      v["validation"] = verifiers.evaluate(records["validation"], scores(name, features["validation"]), samples)
    verifiers_report[name] = v
  report = {
      "settings": settings,
      "questions": {split: {str(g): len(v) for g, v in qs.items()} for split, qs in (("fit", fit_q), ("validation", val_q))},
      "samples": {split: _sample_stats(rs) for split, rs in records.items()},
      "head": {**head.to_json(), "features": list(logprob.FEATURES),
               "loss_first_last": [float(losses[0]), float(losses[-1])]},
      "verifiers": verifiers_report,
      "seconds": {**timings, "total": time.perf_counter() - t0},
  }
  if jax.process_index() == 0:
    tmp = out + ".tmp"
    if os.path.isdir(tmp):
      shutil.rmtree(tmp)  # a crashed earlier attempt of this script
    io.write_jsonl(os.path.join(tmp, SAMPLES_FILE), [{**r, "split": split} for split, rs in records.items() for r in rs])
    io.write_json(os.path.join(tmp, REPORT_FILE), report)
    logprob.save_logprob_prm(tmp, head, model_config=cfg.model, train_config=cfg.train, params_directory=directory,
                             keep=cfg.checkpoint.keep, params=params,
                             extra={"fitted_on": {"settings": settings, "report": REPORT_FILE,
                                                  "samples": SAMPLES_FILE}})
    if os.path.isdir(out):
      os.rmdir(out)  # empty (checked above)
    os.rename(tmp, out)
  return report


def summary_lines(report: Mapping) -> list[str]:
  lines = [f"samples: {report['samples']['fit']['all']['samples']} fit, {report['samples']['validation']['all']['samples']} "
           f"validation; sample accuracy {report['samples']['fit']['all']['accuracy']:.3f}; good steps "
           f"{report['samples']['fit']['all']['good_steps']:.3f}"]
  for name, v in report["verifiers"].items():
    val = v.get("validation", {})
    fmt = lambda a: "–" if a is None else f"{a:.3f}"  # noqa: E731
    lines.append(f"{name}: step AUC fit {fmt(v['fit_step_auc'])}, validation {fmt(val.get('step_auc'))}; "
                 f"solution AUC (min) validation {fmt(val.get('solution_auc', {}).get('min'))}")
  return lines


def main(argv):
  del argv
  host_malloc.reuse_freed_memory()  # before any JAX computation; STAR_JAX_SYSTEM_MALLOC=1 opts out
  from absl import flags  # noqa: PLC0415 (flags are defined under __main__)
  f = flags.FLAGS
  report = train_prm(rl_experiment_from_config(f.config), f.out, questions_per_length=f.questions_per_length,
                     samples=f.samples, validation_every=f.validation_every, head_steps=f.head_steps, seed=f.seed,
                     batch_size=f.batch_size)
  print("\n".join(summary_lines(report)) + f"\nPRM: {os.path.abspath(f.out)}")


if __name__ == "__main__":
  from absl import app, flags, logging
  from ml_collections import config_flags

  from star_jax import config as config_lib
  config_flags.DEFINE_config_file("config", None, "experiments/configs/pg_star_arithmetic.py[:variant] (the PG runs' config)",
                                  lock_config=True)
  flags.DEFINE_string("out", None, "The PRM directory to write (rl.process_reward_model of the PG run).")
  flags.DEFINE_integer("questions_per_length", QUESTIONS_PER_LENGTH, "Questions of D per length (at most).")
  flags.DEFINE_integer("samples", SAMPLES, "Samples per question from the start model at rl.temperature.")
  flags.DEFINE_integer("validation_every", VALIDATION_EVERY, "Every n-th chosen question of a length validates.")
  flags.DEFINE_integer("head_steps", HEAD_STEPS, "Full-batch Adam steps of the logistic head.")
  flags.DEFINE_integer("seed", 0, "Question choice and sampling rng.")
  flags.DEFINE_integer("batch_size", None, "Rows per sampler / feature call (default config.eval.batch_size).")
  flags.mark_flags_as_required(["config", "out"])
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=config_lib.parse_flags)
