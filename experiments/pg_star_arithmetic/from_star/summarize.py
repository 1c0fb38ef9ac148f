"""Tabulate the part-3 experiment (run.sh): every variant started from one STaR model M_N, at equal sampled tokens.

Reads `<root>/start/heldout_eval.json` (M_N, evaluate.py) and, for every variant directory of `<root>` with a
`heldout_eval.json` (its end model): a PG run's `rl_metrics.jsonl` / `rl_eval.jsonl`, or a STaR run's
`star_metrics.jsonl`. Writes `results.json`, `results.md` and `accuracy.png` to --out (default: the root):

  held-out accuracy per length, greedy and mean of S samples at T = 1, start and end with 95% Wilson
  intervals; the change end − start with two 95% intervals: `stats.difference_interval` (two independent proportions,
  Newcombe's Wald form: p1 − p0 ± 1.96 √(p1(1−p1)/n + p0(1−p0)/n), what the brief asks for, conservative
  here) and a paired one (the start and end models are evaluated on the same problems:
  d̄ ± 1.96 s_d/√n over the per-problem differences d_i, greedy in {−1, 0, 1}, sampled the difference of
  per-problem sample rates);
  training (PG): sampled tokens, updates, the fraction of K-sample groups whose rewards are all equal (no
  gradient from RLOO/GRPO: the first and last 10 updates and overall), the sample reward and accuracy (first
  / last 10 updates), the KL to the start model per response (the loop's last evaluation, k1 and k3);
  STaR: sampled tokens (generated + rationalized, star_metrics.jsonl) and iterations.

  python -m experiments.pg_star_arithmetic.from_star.summarize --root=runs/from_star_2 \\
      [--out=experiments/pg_star_arithmetic/from_star/iter2]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from experiments import stats
from star_jax import io

START = "start"  # <root>/start/heldout_eval.json: the start model M_N
EVAL_FILE = "heldout_eval.json"  # (evaluate.EVAL_FILE; not imported: the summarizer needs no JAX model code)
VARIANTS = {  # run.sh's directories, in table order; other directories with an evaluation follow, sorted
    "outcome": "PG outcome-only (RLOO)",
    "process_sequence": "PG + exact step reward, summed per sequence",
    "process_reward_to_go": "PG + exact step reward, per-step credit (reward-to-go)",
    "process_gae": "PG + exact step reward, GAE (value head)",
    "learned_prm_reward_to_go": "PG + learned log-prob PRM (fitted on M_N's samples), per-step credit",
    "star": "classic STaR from M_N",
}
WINDOW = 10  # updates averaged at the start and at the end of a PG run
MEASURES = ("greedy", "sampled")


def _paired(x1: Sequence[float], x0: Sequence[float]) -> list[float]:
  """[lower, upper] of the paired change d̄ ± 1.96 s_d / √n (stats.paired_difference)."""
  mean, half = stats.paired_difference(x1, x0)
  return [mean - half, mean + half]


def _mean(values: Sequence[float]) -> float | None:
  return float(np.mean(values)) if len(values) else None


def windows(records: Sequence[dict], key: str, window: int = WINDOW) -> dict:
  """{"first", "last", "overall"}: the mean of `key` over the first / last `window` records and over all."""
  values = [r[key] for r in records if key in r]
  return {"first": _mean(values[:window]), "last": _mean(values[-window:]), "overall": _mean(values)}


def pg_training(workdir: str) -> dict:
  """The training diagnostics of a PG run (module docstring) from its rl_metrics.jsonl and rl_eval.jsonl."""
  metrics = io.read_jsonl(os.path.join(workdir, "rl_metrics.jsonl"))
  evals = io.read_jsonl_if_exists(os.path.join(workdir, "rl_eval.jsonl"))
  last_eval = evals[-1] if evals else {}
  return {"kind": "pg", "updates": metrics[-1]["step"] if metrics else 0,
          "sampled_tokens": int(metrics[-1]["sampled_tokens"]) if metrics else 0,
          "groups_all_equal": windows(metrics, "groups_all_equal"), "reward": windows(metrics, "reward"),
          "sample_accuracy": windows(metrics, "accuracy"),
          "kl_to_start": last_eval.get("kl_to_base"), "kl_to_start_k3": last_eval.get("kl_to_base_k3")}


def star_tokens(workdir: str) -> list[int]:
  """Sampled tokens of each finished iteration n >= 1 of a STaR run (star_metrics.jsonl), in order."""
  records = io.read_jsonl_if_exists(os.path.join(workdir, "star_metrics.jsonl"))
  return [int(r["sampled_tokens"]) for r in sorted(records, key=lambda r: r["iteration"]) if r["iteration"] >= 1]


def star_should_continue(workdir: str, budget: int) -> bool:
  """Whether run.sh adds a STaR iteration: until the total is within half an iteration of `budget` (the next
  iteration, estimated by the last one, would overshoot by more than the total now falls short)."""
  tokens = star_tokens(workdir)
  return not tokens or sum(tokens) + tokens[-1] / 2 < budget


def star_training(workdir: str) -> dict:
  tokens = star_tokens(workdir)
  return {"kind": "star", "iterations": len(tokens), "sampled_tokens": sum(tokens), "tokens_per_iteration": tokens}


def _rates(result: dict, measure: str) -> list[float]:
  if measure == "greedy":
    return [float(c) for c in result["greedy_correct"]]
  s = result["sampled"]["samples"] // result["n"]
  return [c / s for c in result["sampled_correct"]]


def compare(start: dict, end: dict) -> dict:
  """Per length: start and end {accuracy, ci95} and the change with both intervals, for greedy and sampled.
  The two evaluations must hold the same problems (same data config, per_length, evaluator)."""
  out = {}
  for name, e in end["lengths"].items():
    s = start["lengths"].get(name)
    if s is None or s["problems"] != e["problems"]:
      raise ValueError(f"{name}: the start and end evaluations are not on the same problems (same data config "
                       "and --per_length needed)")
    row = {"n": e["n"], "from_test_split": e["from_test_split"], "in_training_set": e["in_training_set"]}
    for measure in MEASURES:
      if measure not in e or measure not in s:
        continue
      p1, p0, n = e[measure]["accuracy"], s[measure]["accuracy"], e["n"]
      row[measure] = {"start": p0, "start_ci95": s[measure]["ci95"], "end": p1, "end_ci95": e[measure]["ci95"],
                      "change": p1 - p0, "change_ci95": list(stats.difference_interval(p1, p0, n)),
                      "change_ci95_paired": _paired(_rates(e, measure), _rates(s, measure))}
    out[name] = row
  return out


def variants(root: str) -> list[str]:
  """The variant directories of `root` that hold an evaluation, run.sh's first (VARIANTS), the rest sorted."""
  found = {d for d in os.listdir(root) if d != START and os.path.exists(os.path.join(root, d, EVAL_FILE))}
  return [v for v in VARIANTS if v in found] + sorted(found - set(VARIANTS))


def collect(root: str) -> dict:
  """{"start": {model, lengths (accuracy + CI)}, "variants": {name: {label, training, lengths (compare)}}}."""
  start = io.read_json(os.path.join(root, START, EVAL_FILE))
  out = {"start": {"model": start["model"], "settings": start["settings"],
                   "lengths": {k: {m: v[m] for m in ("n", "from_test_split", "in_training_set", *MEASURES) if m in v}
                               for k, v in start["lengths"].items()}},
         "variants": {}}
  for name in variants(root):
    workdir = os.path.join(root, name)
    end = io.read_json(os.path.join(workdir, EVAL_FILE))
    if end["settings"] != start["settings"]:
      raise ValueError(f"{name}: evaluated with {end['settings']}, the start model with {start['settings']}")
    if os.path.exists(os.path.join(workdir, "rl_metrics.jsonl")):
      training = pg_training(workdir)
    elif os.path.exists(os.path.join(workdir, "star_metrics.jsonl")):
      training = star_training(workdir)
    else:
      training = {}
    out["variants"][name] = {"label": VARIANTS.get(name, name), "model": end["model"], "training": training,
                             "lengths": compare(start, end)}
  return out


def _pct(p: float | None) -> str:
  return "—" if p is None else f"{100 * p:.1f}"


def _ci(ci: Sequence[float]) -> str:
  return f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}"


def _signed_ci(ci: Sequence[float]) -> str:
  return f"{100 * ci[0]:+.1f}…{100 * ci[1]:+.1f}"


def markdown(results: dict) -> str:
  start, runs = results["start"], results["variants"]
  names = list(start["lengths"])
  settings = start["settings"]
  lines = [f"# PG-STaR and STaR from {start['model'].get('directory', start['model']['workdir'])}", "",
           f"Held-out sets: up to {settings['per_length']} problems per length; greedy and the mean of "
           f"{settings['samples']} samples at T = {settings['temperature']}. Percentages; 95% Wilson intervals; "
           "changes end − start with the independent-proportions interval and the paired one (same problems).", "",
           "| length | problems | from test split | in training set |", "|---|---|---|---|"]
  lines += [f"| {k} | {v['n']} | {v['from_test_split']} | {v['in_training_set']} |" for k, v in start["lengths"].items()]
  for measure in MEASURES:
    if measure not in next(iter(start["lengths"].values())):
      continue
    lines += ["", f"## {measure} accuracy", "",
              "| run | " + " | ".join(f"{k} end (CI) | {k} change (CI; paired CI)" for k in names) + " |",
              "|---|" + "---|---|" * len(names)]
    lines.append("| start | " + " | ".join(
        f"{_pct(start['lengths'][k][measure]['accuracy'])} ({_ci(start['lengths'][k][measure]['ci95'])}) | —"
        for k in names) + " |")
    for name, r in runs.items():
      cells = []
      for k in names:
        c = r["lengths"].get(k, {}).get(measure)
        cells.append("— | —" if c is None else
                     f"{_pct(c['end'])} ({_ci(c['end_ci95'])}) | {100 * c['change']:+.1f} "
                     f"({_signed_ci(c['change_ci95'])}; {_signed_ci(c['change_ci95_paired'])})")
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "## training", "",
            f"| run | sampled tokens | updates / iterations | all-equal groups first → last {WINDOW} (all) | "
            f"reward first → last {WINDOW} | sample accuracy first → last {WINDOW} | KL to start k1 (k3) |",
            "|---|---|---|---|---|---|---|"]
  for name, r in runs.items():
    t = r["training"]
    if t.get("kind") == "pg":
      g, rw, acc = t["groups_all_equal"], t["reward"], t["sample_accuracy"]
      kl = "—" if t["kl_to_start"] is None else f"{t['kl_to_start']:.3f} ({t['kl_to_start_k3']:.3f})"
      lines.append(f"| {name} | {t['sampled_tokens']:,} | {t['updates']} | {_pct(g['first'])} → {_pct(g['last'])} "
                   f"({_pct(g['overall'])}) | {rw['first']:.3f} → {rw['last']:.3f} | {_pct(acc['first'])} → "
                   f"{_pct(acc['last'])} | {kl} |")
    elif t.get("kind") == "star":
      its = f"{t['iterations']} iteration{'' if t['iterations'] == 1 else 's'}"
      lines.append(f"| {name} | {t['sampled_tokens']:,} | {its} | — | — | — | — |")
    else:
      lines.append(f"| {name} | — | — | — | — | — | — |")
  lines += ["", "| run | description |", "|---|---|"] + [f"| {n} | {r['label']} |" for n, r in runs.items()]
  return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
  """Accuracy per length (x) for the start model and every variant (bars), 95% Wilson intervals as error bars;
  one panel per measure (greedy, sampled)."""
  start, runs = results["start"], results["variants"]
  names = list(start["lengths"])
  measures = [m for m in MEASURES if m in next(iter(start["lengths"].values()))]
  fig = Figure(figsize=(5 + 1.2 * len(names) * (1 + len(runs)) / 3, 3.6 * len(measures)))
  x = np.arange(len(names))
  width = 0.8 / (1 + len(runs))
  for row, measure in enumerate(measures):
    ax = fig.add_subplot(len(measures), 1, row + 1)
    bars = [("start", [start["lengths"][k][measure] for k in names])]
    bars += [(name, [{"accuracy": r["lengths"][k][measure]["end"], "ci95": r["lengths"][k][measure]["end_ci95"]}
                     for k in names]) for name, r in runs.items()]
    for i, (label, values) in enumerate(bars):
      p = np.asarray([v["accuracy"] for v in values])
      lo, hi = np.asarray([v["ci95"][0] for v in values]), np.asarray([v["ci95"][1] for v in values])
      # (clipped: a Wilson bound at p = 0 or 1 can sit a rounding error inside p)
      yerr = np.clip(np.stack([p - lo, hi - p]), 0.0, None)
      ax.bar(x + (i - (len(bars) - 1) / 2) * width, p, width, yerr=yerr, capsize=2, label=label)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{measure} accuracy")
    ax.grid(axis="y", alpha=0.3)
    if row == 0:
      ax.legend(fontsize=7, ncol=min(3, len(bars)))
  model = start["model"]
  fig.suptitle(f"from {os.path.basename(model.get('directory', model['workdir']))}: held-out accuracy (95% Wilson)",
               fontsize=9)
  fig.tight_layout()
  io.save_figure(fig, path)


def summarize(root: str, out: str | None = None) -> dict:
  """Write results.json, results.md and accuracy.png for the runs under `root` to `out` (default `root`)."""
  out = out or root
  results = collect(root)
  io.write_json(os.path.join(out, "results.json"), results)
  io.write_text(os.path.join(out, "results.md"), markdown(results))
  plot(results, os.path.join(out, "accuracy.png"))
  return results


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", required=True, help="run.sh's ROOT (start/ and one directory per variant)")
  parser.add_argument("--out", default=None, help="where results.{json,md} and accuracy.png go (default: the root)")
  args = parser.parse_args(argv)
  results = summarize(args.root, args.out)
  print(markdown(results))


if __name__ == "__main__":
  main()
