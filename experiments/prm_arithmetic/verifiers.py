"""Verifiers that see where an error happens, beside the hidden-state PRM head (issue #14 part 1).

Runs experiments/prm_arithmetic/study.py's phases (cached in the workdir: policy, reward-pool and test
samples, the hidden-state PRM and the ORM), then, on the same samples and exact labels, the variants of
`config.study.verifiers`:

  min_logprob       untrained: P̂(prefix k good) = exp(min_{t ≤ end_k} log π(y_t | y_<t)) under the policy
                    (star_jax/prm/logprob.py)
  logprob_head      a logistic head on the policy's per-step log-prob features (min / sum over the step and the
                    prefix, count of non-argmax tokens), fitted on the reward-pool training samples' exact labels
  implicit_outcome  implicit PRM (PRIME, Cui et al. 2025; Yuan et al. 2024; star_jax/prm/implicit.py) trained on
                    BCE(σ(Σ_t r_t), 1(ŷ = y)); step score σ(q_{end_k}) ("prefix") and σ(Σ_{t ∈ step k} r_t) ("step")
  implicit_step     the same parametrisation trained on BCE(σ(q_{end_k}), exact label_k)

Every variant is measured like the hidden-state head: step AUC against the exact labels, solution AUC of
1(ŷ = y) for the aggregations product / min / last, within-problem "correct text ranked first" over
distinct texts (with what random scores give), and best-of-N for N = 1..K. The top-level keys of
results.json (`step_level`, `solution_auc`, `best_of_n.prm_*`) hold the variant with the best
*validation* step AUC (named in `best_prm`); every variant, the hidden-state head included, is under
`variants`.

  python -m experiments.prm_arithmetic.verifiers --config=experiments/configs/prm_arithmetic.py \
      --workdir=runs/prm_arithmetic --results_dir=experiments/prm_arithmetic
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from experiments.prm_arithmetic import study
from star_jax import checkpoint, host_malloc, io, sharding, train
from star_jax.data import CharTokenizer, arithmetic
from star_jax.data.arithmetic import Problem
from star_jax.prm import implicit, logprob
from star_jax.prm import steps as prm

VARIANTS = ("min_logprob", "logprob_head", "implicit_outcome", "implicit_step")
SPLITS = ("train", "validation", "test")
AGGREGATIONS = ("min", "product", "last")


def encode(record: Mapping) -> dict[str, np.ndarray]:
  """A sample with its exact step labels at step ends and 1(ŷ = y) at its last position (the EOS target)."""
  p = Problem(record["a"], record["b"])
  steps = prm.split_steps(record["target"], "\n", start_after=arithmetic.SCRATCH_OPEN)
  return prm.encode_labelled_text(CharTokenizer(), arithmetic.prompt_text(p), record["target"], [s.end for s in steps],
                                  record["labels"], outcome=float(record["correct"]), orm_all_tokens=False)


def evaluate(records: Sequence[Mapping], step_scores: Sequence[Sequence[float]], k: int,
             extra_solution_scores: Mapping[str, Sequence[float]] | None = None) -> dict:
  """Step AUC, solution AUC, text ranked first and best-of-N (N = 1, 2, 4, .., k) of one verifier's step scores."""
  labels = np.concatenate([np.asarray(r["labels"], np.float32) for r in records] + [np.zeros(0, np.float32)])
  flat = np.concatenate([np.asarray(s, np.float64) for s in step_scores] + [np.zeros(0)])
  if flat.shape != labels.shape:
    raise ValueError(f"evaluate: {flat.size} step scores for {labels.size} labelled steps")
  padded, mask = prm.pad_steps(step_scores)
  solution = {name: np.asarray(prm.aggregate(name, padded, mask), np.float64) for name in AGGREGATIONS}
  solution.update({name: np.asarray(v, np.float64) for name, v in (extra_solution_scores or {}).items()})
  correct = np.asarray([r["correct"] for r in records], bool)
  p = len(records) // k
  texts_PxK = [[r["target"] for r in records[i * k:(i + 1) * k]] for i in range(p)]
  ns = [n for n in (2 ** j for j in range(k.bit_length())) if n <= k]
  return {
      "step_auc": logprob.roc_auc(flat, labels),
      "step_mean_score": {"good": float(flat[labels > 0.5].mean()) if np.any(labels > 0.5) else None,
                          "bad": float(flat[labels < 0.5].mean()) if np.any(labels < 0.5) else None},
      "solution_auc": {name: logprob.roc_auc(s, correct) for name, s in solution.items()},
      "text_ranked_first": {name: logprob.text_ranked_first(s.reshape(p, k), correct.reshape(p, k), texts_PxK)
                            for name, s in solution.items()},
      "best_of_n": {"n": ns, **{name: [prm.best_of_n_accuracy(s.reshape(p, k), correct.reshape(p, k), n) for n in ns]
                                for name, s in solution.items()}},
  }


def _save_stats(path: str, stats: Sequence[Mapping[str, np.ndarray]]) -> None:
  lengths = np.asarray([len(s["logps"]) for s in stats], np.int64)
  cat = lambda key, dtype: np.concatenate([np.asarray(s[key], dtype) for s in stats] + [np.zeros(0, dtype)])  # noqa: E731
  tmp = path + ".tmp.npz"
  np.savez(tmp, lengths=lengths, logps=cat("logps", np.float32), is_argmax=cat("is_argmax", bool))
  os.replace(tmp, path)


def _load_stats(path: str) -> list[dict[str, np.ndarray]]:
  with np.load(path) as f:
    offsets = np.concatenate([[0], np.cumsum(f["lengths"])])
    logps, is_argmax = f["logps"], f["is_argmax"]
  return [{"logps": logps[a:b], "is_argmax": is_argmax[a:b]} for a, b in zip(offsets[:-1], offsets[1:])]


def train_implicit(cfg: study.PRMStudyConfig, mesh, directory: str, examples, policy, objective: str):
  """Train (or resume / load) an implicit PRM π_φ from the policy on examples with ref_logps; returns its params."""
  s = cfg.study
  rc = dataclasses.replace(cfg.reward_train, lr=s.implicit_lr, steps=s.implicit_steps or cfg.reward_train.steps)
  obj = implicit.ImplicitObjective(beta=s.implicit_beta, objective=objective)
  tx = train.make_optimizer(rc)
  abstract, _ = train.state_shardings(cfg.model, tx, mesh)
  last = {}
  with checkpoint.Checkpointer(os.path.join(directory, "checkpoints"), keep=cfg.checkpoint.keep) as ckpt:
    batches = iter(implicit.make_dataset(examples, batch_size=rc.batch_size // jax.process_count(),
                                         seq_len=rc.seq_len, seed=rc.seed))
    if ckpt.latest_step() is not None:
      state, data_state = ckpt.restore(abstract)
      batches.set_state(data_state)
    else:  # a copy: the train loop donates the state, and the policy is still needed
      state = train.create_train_state(cfg.model, tx, mesh, rc.seed, params=jax.tree.map(jnp.copy, policy))
    if int(state.step) < rc.steps:
      step_fn = implicit.compile_implicit_train_step(cfg.model, rc, obj, mesh, tx)
      state = train.train_loop(state, step_fn, batches, mesh, num_steps=rc.steps, checkpointer=ckpt,
                               checkpoint_config=cfg.checkpoint, log_every=rc.log_every,
                               description=os.path.basename(directory), on_log=lambda step, m: last.update(m))
      io.write_json(os.path.join(directory, "train.json"), {"steps": rc.steps, "lr": rc.lr, "beta": obj.beta,
                                                            "objective": objective, "final": last})
  return state.params


def run(cfg: study.PRMStudyConfig, workdir: str, results_dir: str | None = None) -> dict:
  """study.run's phases, then every variant of config.study.verifiers; writes results.json, report.md and plots."""
  workdir = os.path.abspath(workdir)
  s = cfg.study
  results = study.run(cfg, workdir)
  mesh = sharding.make_mesh(cfg.mesh.axes, name="config.mesh.axes")
  pools = study.problem_pools(s)
  policy = study._policy(cfg, workdir, mesh, pools)  # the finished phase: loads the policy
  reward_records = io.read_jsonl(os.path.join(workdir, "reward_samples.jsonl"))
  held_out = set(pools["reward"][::s.validation_every]) if s.validation_every else set()
  records = {"train": [r for r in reward_records if Problem(r["a"], r["b"]) not in held_out],
             "validation": [r for r in reward_records if Problem(r["a"], r["b"]) in held_out],
             "test": io.read_jsonl(os.path.join(workdir, "test_samples.jsonl"))}
  samples_per = {"validation": s.reward_samples_per_question, "test": s.test_samples}
  vdir = os.path.join(workdir, "verifiers")
  os.makedirs(vdir, exist_ok=True)
  timings_path = os.path.join(vdir, "timings.json")
  timed = io.phase_timer(timings_path)

  examples = {split: [encode(r) for r in rs] for split, rs in records.items() if rs}
  seq_len = -(-max(len(e["inputs"]) for exs in examples.values() for e in exs) // 16) * 16

  def policy_stats(split):
    path = os.path.join(vdir, f"policy_logps_{split}.npz")
    if not os.path.exists(path):
      _save_stats(path, logprob.token_logprobs(cfg.model, policy, examples[split], mesh=mesh,
                                               batch_size=s.score_batch_size, seq_len=seq_len))
    return _load_stats(path)

  stats = {split: timed(f"policy_logps_{split}", lambda split=split: policy_stats(split)) for split in examples}
  features = {split: [logprob.step_features(st["logps"], st["is_argmax"], ex["loss_mask"], ex["step_mask"])
                      for st, ex in zip(stats[split], examples[split])] for split in examples}
  # step scores per variant and split (lists of per-sample step scores), and extra solution scores
  step_scores: dict[str, dict[str, list]] = {}
  extra: dict[str, dict[str, dict[str, list]]] = {}
  hidden = {split: io.read_json(os.path.join(workdir, f"{split}_scores.json")) for split in ("validation", "test")
            if split in examples}
  step_scores["hidden_state"] = {split: h["prm_steps"] for split, h in hidden.items()}
  if "min_logprob" in s.verifiers:
    step_scores["min_logprob"] = {split: [logprob.min_prefix_scores(f).tolist() for f in features[split]]
                                  for split in ("validation", "test") if split in examples}
  fitted = {}
  x = np.concatenate(features["train"] + [np.zeros((0, len(logprob.FEATURES)), np.float32)])
  y = np.concatenate([np.asarray(r["labels"], np.float32) for r in records["train"]] + [np.zeros(0, np.float32)])
  if "logprob_head" in s.verifiers and not y.size:
    fitted["logprob_head"] = "skipped: the training samples hold no labelled steps"
  elif "logprob_head" in s.verifiers:
    head, head_losses = timed("logprob_head", lambda: logprob.fit_logistic(x, y, steps=s.logprob_head_steps))
    fitted["logprob_head"] = {**head.to_json(), "features": list(logprob.FEATURES),
                              "loss_first_last": [float(head_losses[0]), float(head_losses[-1])]}
    step_scores["logprob_head"] = {split: [head.predict(f).tolist() if len(f) else [] for f in features[split]]
                                   for split in ("validation", "test") if split in examples}
  implicit_objectives = [v.split("_", 1)[1] for v in s.verifiers if v.startswith("implicit_")]
  if implicit_objectives:
    with_ref = {split: [{**ex, "ref_logps": st["logps"]} for ex, st in zip(examples[split], stats[split])]
                for split in examples}
    for objective in implicit_objectives:
      name = f"implicit_{objective}"
      path = os.path.join(vdir, f"{name}_scores.json")
      if not os.path.exists(path):
        params = timed(f"train_{name}", lambda objective=objective, name=name: train_implicit(
            cfg, mesh, os.path.join(vdir, name), with_ref["train"], policy, objective))
        scored = timed(f"score_{name}", lambda params=params: {
            split: implicit.score_examples(cfg.model, params, with_ref[split], beta=s.implicit_beta, mesh=mesh,
                                           batch_size=s.score_batch_size, seq_len=seq_len)
            for split in ("validation", "test") if split in examples})
        io.write_json(path, scored)
      scored = io.read_json(path)
      for reading in ("prefix", "step"):
        step_scores[f"{name}_{reading}"] = {split: [d[reading] for d in v] for split, v in scored.items()}
        extra[f"{name}_{reading}"] = {split: {"outcome": [d["outcome"] for d in v]} for split, v in scored.items()}
      train_json = os.path.join(vdir, name, "train.json")
      fitted[name] = io.read_json(train_json) if os.path.exists(train_json) else None

  variants = {}
  for name, by_split in step_scores.items():
    variants[name] = {split: evaluate(records[split], scores, samples_per[split],
                                      extra.get(name, {}).get(split))
                      for split, scores in by_split.items()}
  ranked = sorted(variants, key=lambda v: -(variants[v].get("validation", variants[v]["test"])["step_auc"] or 0))
  best = ranked[0]
  out = dict(results)
  out["best_prm"] = best
  out["hidden_state_summary"] = {k: results[k] for k in ("step_level", "solution_auc")}
  bt = variants[best]["test"]
  out["step_level"] = {**results["step_level"], "prm_auc": bt["step_auc"], "prm_accuracy": None,
                       "prm": best}
  out["solution_auc"] = {**{f"prm_{a}": bt["solution_auc"][a] for a in AGGREGATIONS}, "orm": results["solution_auc"]["orm"]}
  out["best_of_n"] = {**results["best_of_n"], **{f"prm_{a}": bt["best_of_n"][a] for a in AGGREGATIONS}}
  out["variants"] = variants
  out["orm_text_ranked_first"] = _orm_ranked_first(workdir, records["test"], s.test_samples)
  out["fitted"] = fitted
  out["verifier_timings_seconds"] = timed.timings
  io.write_json(os.path.join(workdir, "results.json"), out)
  study.write_report(out, workdir)
  write_section(out, workdir)
  if results_dir:
    os.makedirs(results_dir, exist_ok=True)
    for name in ("results.json", "report.md", "best_of_n.png", "mc_agreement.png", "verifiers_best_of_n.png"):
      if os.path.exists(os.path.join(workdir, name)):
        shutil.copy(os.path.join(workdir, name), os.path.join(results_dir, name))
  return out


def _orm_ranked_first(workdir: str, test_records: Sequence[Mapping], k: int) -> dict:
  orm = np.asarray(io.read_json(os.path.join(workdir, "test_scores.json"))["orm"], np.float64)
  p = len(test_records) // k
  correct = np.asarray([r["correct"] for r in test_records], bool).reshape(p, k)
  return logprob.text_ranked_first(orm.reshape(p, k), correct, [[r["target"] for r in test_records[i * k:(i + 1) * k]]
                                                                for i in range(p)])


def _fmt(x, digits=3) -> str:
  return "–" if x is None else f"{x:.{digits}f}"


def write_section(results: Mapping, directory: str) -> None:
  """Append the verifier comparison to report.md and draw verifiers_best_of_n.png (min aggregation)."""
  variants, curves = results["variants"], results["best_of_n"]
  lines = ["", "## Verifiers compared (experiments/prm_arithmetic/verifiers.py)", "",
           f"Best by validation step AUC: **{results['best_prm']}** (its numbers are the top-level PRM keys above).",
           "", "| verifier | step AUC (val) | step AUC (test) | solution AUC (min) | text ranked first (min) | random scores | "
           + " | ".join(f"best-of-{n}" for n in curves["n"]) + " |", "|---|---:|---:|---:|---:|---:|" + "---:|" * len(curves["n"])]
  for name, v in variants.items():
    t, val = v["test"], v.get("validation", {})
    rf = t["text_ranked_first"]["min"]
    lines.append(f"| {name} | {_fmt(val.get('step_auc'))} | {_fmt(t['step_auc'])} | {_fmt(t['solution_auc']['min'])} | "
                 f"{study._pct(rf['ranked_first'])} | {study._pct(rf['random_scores'])} | "
                 + " | ".join(study._pct(x) for x in t["best_of_n"]["min"]) + " |")
  orm_rf = results["orm_text_ranked_first"]
  lines.append(f"| ORM | – | – | {_fmt(results['solution_auc']['orm'])} | {study._pct(orm_rf['ranked_first'])} | "
               f"{study._pct(orm_rf['random_scores'])} | " + " | ".join(study._pct(x) for x in curves["orm"]) + " |")
  for key, label in (("majority", "majority voting"), ("pass@n", "pass@N")):
    lines.append(f"| {label} | | | | | | " + " | ".join(study._pct(x) for x in curves[key]) + " |")
  lines += ["", f"Text ranked first: over the {orm_rf['problems']} test problems with both a correct and a wrong "
            "distinct sampled text, how often the verifier's top-scored distinct text is correct; random scores: "
            "the fraction of correct distinct texts.", "",
            "Wall time of the verifier phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                              results["verifier_timings_seconds"].items()),
            "", "![verifiers best-of-N](verifiers_best_of_n.png)"]
  with open(os.path.join(directory, "report.md"), "a", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  plot_variants(results, directory)


_VARIANT_COLORS = ("tab:blue", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def plot_variants(results: Mapping, directory: str) -> None:
  """verifiers_best_of_n.png: best-of-N (min aggregation) of every verifier beside ORM, majority and pass@N."""
  variants, curves = results["variants"], results["best_of_n"]
  fig = Figure(figsize=(6.5, 4.2))
  ax = fig.subplots()
  ax.plot(curves["n"], [100 * x for x in curves["pass@n"]], "k:", label="pass@N (ceiling)")
  ax.plot(curves["n"], [100 * x for x in curves["majority"]], color="tab:green", marker="o", markersize=3,
          label="majority voting")
  ax.plot(curves["n"], [100 * x for x in curves["orm"]], color="tab:orange", marker="o", markersize=3, label="ORM")
  for i, (name, v) in enumerate(variants.items()):
    ax.plot(v["test"]["best_of_n"]["n"], [100 * x for x in v["test"]["best_of_n"]["min"]], marker="s", markersize=3,
            color=_VARIANT_COLORS[i % len(_VARIANT_COLORS)], linestyle="-" if i < len(_VARIANT_COLORS) else "--",
            label=f"{name} (min)")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("N (samples per problem)")
  ax.set_ylabel("% problems solved")
  ax.set_title("best-of-N by verifier, held-out 3-digit arithmetic")
  ax.legend(fontsize=7)
  fig.tight_layout()
  io.save_figure(fig, os.path.join(directory, "verifiers_best_of_n.png"))


def main(argv):
  del argv
  host_malloc.reuse_freed_memory()  # before any JAX computation; STAR_JAX_SYSTEM_MALLOC=1 opts out
  from absl import flags  # noqa: PLC0415 (flags are defined under __main__)
  run(study.study_from_config(flags.FLAGS.config), flags.FLAGS.workdir, flags.FLAGS.results_dir or None)


if __name__ == "__main__":
  from absl import app, flags, logging
  from ml_collections import config_flags

  from star_jax import config as config_lib
  config_flags.DEFINE_config_file("config", None, "experiments/configs/prm_arithmetic.py[:variant]", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and the report (shared with study.py).")
  flags.DEFINE_string("results_dir", "", "Also copy results.json, report.md and the plots here.")
  flags.mark_flags_as_required(["config", "workdir"])
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=config_lib.parse_flags)
