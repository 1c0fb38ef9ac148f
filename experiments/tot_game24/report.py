"""The Game of 24 study's results (experiments/tot_game24/study.py runs the phases): base competence, CoT
best-of-k with the exact checker, every ToT setting against CoT at equal generated tokens, the issue's targets,
and report.md / success_vs_tokens.png.

ToT's success is counted two ways: `correct_any` (one of the b answered final states passes the exact checker,
the ToT paper's evaluation) and `correct` (the top-valued state alone); differences with CoT are paired by puzzle
(experiments/stats.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from experiments import stats
from star_jax import io


def competence(records: Sequence[Mapping]) -> dict:
  """Base competence of a set of outputs: fraction of step lines `correct` (all, integer-only, with fractions),
  correct answers, `left: 24` reached with every step right, mean generated tokens."""
  steps = np.asarray([c for r in records for c in r["steps_correct"]], bool)
  frac = np.asarray([f for r in records for f in r["steps_fraction"]], bool)
  mean = lambda x: float(np.mean(x)) if len(x) else None  # noqa: E731
  return {"outputs": len(records), "steps": int(steps.size), "step_correct": mean(steps),
          "step_correct_integer": mean(steps[~frac]), "step_correct_fraction": mean(steps[frac]),
          "fraction_steps": mean(frac), "steps_per_output": steps.size / max(len(records), 1),
          "pass@1": mean([r["correct"] for r in records]), "reached24": mean([r["reached24"] for r in records]),
          "tokens_per_output": mean([r["tokens"] for r in records])}


def pass_at_k(correct_PxK: np.ndarray, k: float) -> float:
  """Best-of-k with the exact checker (Yao et al.'s "best of k"): P(at least one of k samples is correct),
  the unbiased estimator 1 - C(K - c, k) / C(K, k) per puzzle (Chen et al. 2021, arXiv 2107.03374), averaged;
  a fractional k interpolates linearly between floor(k) and ceil(k)."""
  return float(np.mean(pass_at_k_P(correct_PxK, k)))


def pass_at_k_P(correct_PxK: np.ndarray, k: float) -> np.ndarray:
  """[P] per-puzzle best-of-k probabilities of `pass_at_k` (before the mean)."""
  big_k = correct_PxK.shape[1]
  if not 0 <= k <= big_k:
    raise ValueError(f"pass_at_k: k={k} outside [0, {big_k}]")
  if k != int(k):
    lo, hi = int(k), int(k) + 1
    return (hi - k) * pass_at_k_P(correct_PxK, lo) + (k - lo) * pass_at_k_P(correct_PxK, hi)
  k = int(k)
  if k == 0:
    return np.zeros(correct_PxK.shape[0])
  c = correct_PxK.sum(axis=1)
  return 1.0 - np.asarray([math.comb(big_k - int(ci), k) / math.comb(big_k, k) for ci in c])



def summarize(cfg, cot: Mapping, reward_records: Sequence[Mapping], prm_auc: Mapping,
              tot: Mapping[str, Sequence[Mapping]]) -> dict:
  """results.json (cfg: the study's ToTStudyConfig): base competence, the PRM, CoT best-of-k and every ToT setting against CoT at equal tokens."""
  s = cfg.study
  n_puzzles = len(cot["greedy"])
  sampled = cot["sampled"]
  correct_PxK = np.asarray([r["correct"] for r in sampled], bool).reshape(n_puzzles, s.cot_samples)
  reached_PxK = np.asarray([r["reached24"] for r in sampled], bool).reshape(n_puzzles, s.cot_samples)
  tokens_per_sample = float(np.mean([r["tokens"] for r in sampled]))
  ks = sorted({k for k in (1, 2, 3, 5, 10, 20, 30, 50, 100) if k <= s.cot_samples} | {s.cot_samples})
  best_of_k = [{"k": k, "tokens": k * tokens_per_sample, "success": pass_at_k(correct_PxK, k),
                "reached24": pass_at_k(reached_PxK, k)} for k in ks]
  rows = []
  for name, records in tot.items():
    value, b, n = name.rsplit("_", 2)
    tokens = float(np.mean([r["tokens"] for r in records]))
    k_equal = tokens / tokens_per_sample
    top_P = np.asarray([r["correct"] for r in records], float)
    # `correct_any` is absent from runs cached before it was recorded: those report the top-valued output only
    any_P = np.asarray([r.get("correct_any", r["correct"]) for r in records], float)
    cot_P = pass_at_k_P(correct_PxK, k_equal) if k_equal <= s.cot_samples else None
    row = {"name": name, "value": value, "breadth": int(b[1:]), "samples": int(n[1:]), "puzzles": len(records),
           "success": float(top_P.mean()), "success_ci95": stats.proportion_half_width(float(top_P.mean()), len(records)),
           "success_any": float(any_P.mean()), "success_any_ci95": stats.proportion_half_width(float(any_P.mean()), len(records)),
           "reached24": float(np.mean([r["reached24"] for r in records])), "tokens": tokens,
           "reward_model_tokens": float(np.mean([r["model_tokens"] for r in records])),
           "sampler_calls": float(np.mean([r["sampler_calls"] for r in records])),
           "cot_k_equal_tokens": k_equal,
           "cot_success_equal_tokens": None if cot_P is None else float(cot_P.mean()),
           "cot_reached24_equal_tokens": pass_at_k(reached_PxK, k_equal) if cot_P is not None else None}
    if cot_P is not None:  # ToT - CoT at equal tokens, paired by puzzle
      row["any_minus_cot"], row["any_minus_cot_ci95"] = stats.paired_difference(any_P, cot_P)
      row["top_minus_cot"], row["top_minus_cot_ci95"] = stats.paired_difference(top_P, cot_P)
    rows.append(row)
  greedy = competence(cot["greedy"])
  base = {"sampled": competence(sampled), "greedy": greedy, "temperature": s.temperature}
  met = targets(rows)
  train_reward = [r for r in reward_records if not r["validation"]]
  labels = np.asarray([g for r in train_reward for g in r["steps_good"]], float)
  return {"puzzles": n_puzzles, "cot_samples": s.cot_samples, "base": base,
          "cot": {"greedy": greedy["pass@1"], "tokens_per_sample": tokens_per_sample, "best_of_k": best_of_k},
          "reward_data": {"samples": len(train_reward), "validation_samples": len(reward_records) - len(train_reward),
                          "steps": int(labels.size), "good_fraction": float(labels.mean()) if labels.size else None,
                          "sample_correct": float(np.mean([r["correct"] for r in train_reward])) if train_reward else None},
          "prm": dict(prm_auc), "tot": rows, "targets": met}


def targets(rows: Sequence[Mapping]) -> dict:
  """The issue's targets, checked on the measured rows: (1) ToT+PRM beats CoT best-of-k at equal tokens for every
  PRM setting whose cost is at least ToT b=5's (the cheapest b=5 PRM run), judged both ways ToT's success is
  counted (`any`: among the b final states with the exact checker, the ToT paper's evaluation; `top`: the
  top-valued output alone), and whether each lead is beyond its paired 95% interval; (2) ToT+PRM b=5 beats b=1
  at equal n."""
  prm = [r for r in rows if r["value"] == "prm"]
  b5 = [r for r in prm if r["breadth"] == 5]
  if not b5:
    return {"prm_beats_cot_from_b5_cost": None, "b5_beats_b1": None}
  floor = min(r["tokens"] for r in b5)
  compared = [r for r in prm if r["tokens"] >= floor and r["cot_success_equal_tokens"] is not None]
  pairs = [(r5, r1) for r5 in b5 for r1 in prm if r1["breadth"] == 1 and r1["samples"] == r5["samples"]]
  out = {"compared": [r["name"] for r in compared],
         "b5_beats_b1": bool(pairs) and all(r5["success_any"] > r1["success_any"] for r5, r1 in pairs),
         "b5_beats_b1_top": bool(pairs) and all(r5["success"] > r1["success"] for r5, r1 in pairs),
         "b5_b1_pairs": [[r5["name"], r1["name"]] for r5, r1 in pairs]}
  for way in ("any", "top"):
    out[f"prm_beats_cot_from_b5_cost_{way}"] = bool(compared) and all(r[f"{way}_minus_cot"] > 0 for r in compared)
    out[f"prm_beats_cot_beyond_ci_{way}"] = bool(compared) and all(
        r[f"{way}_minus_cot"] - r[f"{way}_minus_cot_ci95"] > 0 for r in compared)
  out["prm_beats_cot_from_b5_cost"] = out["prm_beats_cot_from_b5_cost_any"]  # the paper's way of counting
  return out


def _pct(x) -> str:
  return "–" if x is None else f"{100 * x:.1f}%"


_VALUE_LABELS = {"prm": "PRM (learned)", "logprob": "policy log-prob", "oracle": "exact oracle (upper bound)"}


def write_report(results: Mapping, directory: str) -> None:
  """report.md (tables) and success_vs_tokens.png from `results` (see `run`)."""
  base, cot, prm = results["base"], results["cot"], results["prm"]
  sb, gb = base["sampled"], base["greedy"]
  lines = ["# Tree-of-Thoughts vs chain-of-thought on the Game of 24", "",
           f"{results['puzzles']} held-out test puzzles; CoT: {results['cot_samples']} samples per puzzle at temperature "
           f"{base['temperature']} and one greedy output.", "",
           "## Base model competence", "",
           "| outputs | steps correct | integer steps | steps with fractions | correct answer (pass@1) | reached `left: 24` | tokens/output |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for label, c in (("sampled", sb), ("greedy", gb)):
    lines.append(f"| {label} | {_pct(c['step_correct'])} | {_pct(c['step_correct_integer'])} | "
                 f"{_pct(c['step_correct_fraction'])} | {_pct(c['pass@1'])} | {_pct(c['reached24'])} | "
                 f"{c['tokens_per_output']:.0f} |")
  rd = results["reward_data"]
  lines += ["", "## Process reward model", "",
            f"Trained on {rd['samples']} policy samples ({rd['steps']} steps, {_pct(rd['good_fraction'])} `good`) from "
            f"train puzzles, from the policy's weights. Against the exact labels (`check_steps(...).good`):", "",
            "| held-out samples | steps | good | step AUC | accuracy at 0.5 | AUC among arithmetically correct steps |",
            "|---|---:|---:|---:|---:|---:|"]
  for split in ("test", "validation"):
    a = prm.get(split)
    if a:
      auc = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
      lines.append(f"| {split} | {a['steps']} | {_pct(a['positive_fraction'])} | {auc(a['auc'])} | {_pct(a['accuracy'])} | "
                   f"{auc(a['auc_correct_steps'])} |")
  lines += ["", "## Success against generated tokens per puzzle", "",
            "CoT best-of-k with the exact checker (success if any of k samples is correct; k samples cost k times "
            f"the mean sample, {cot['tokens_per_sample']:.0f} tokens): " + ", ".join(
                f"k={r['k']} {_pct(r['success'])}" for r in cot["best_of_k"]) + f"; CoT greedy {_pct(cot['greedy'])}.", "",
            "ToT success is counted two ways: **any of b** (a final state among the b answered ones passes the exact "
            "checker: the ToT paper's evaluation, as CoT best-of-k picks among k samples with it) and **top-valued** (the "
            "output of highest value alone). Differences with CoT are paired by puzzle, with their 95% intervals.", "",
            "| ToT-BFS value | b | n | any of b (±95%) | top-valued (±95%) | reached `left: 24` | gen. tokens/puzzle | "
            "RM tokens/puzzle | CoT best-of-k at equal tokens (k) | any − CoT | top − CoT |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  diff = lambda r, way: ("–" if r.get(f"{way}_minus_cot") is None else  # noqa: E731
                         f"{100 * r[f'{way}_minus_cot']:+.1f} ± {100 * r[f'{way}_minus_cot_ci95']:.1f}")
  for r in sorted(results["tot"], key=lambda r: (list(_VALUE_LABELS).index(r["value"]), r["breadth"], r["samples"])):
    lines.append(f"| {_VALUE_LABELS[r['value']]} | {r['breadth']} | {r['samples']} | {_pct(r['success_any'])} "
                 f"(±{100 * r['success_any_ci95']:.1f}) | {_pct(r['success'])} (±{100 * r['success_ci95']:.1f}) | "
                 f"{_pct(r['reached24'])} | {r['tokens']:.0f} | {r['reward_model_tokens']:.0f} | "
                 f"{_pct(r['cot_success_equal_tokens'])} ({r['cot_k_equal_tokens']:.1f}) | {diff(r, 'any')} | {diff(r, 'top')} |")
  t = results["targets"]
  lines += ["", "Targets (measured, not assumed). ToT+PRM beats CoT best-of-k at equal tokens at every PRM setting from "
            f"ToT b=5's cost upward ({', '.join(t.get('compared', [])) or 'none'}): any of b "
            f"**{t.get('prm_beats_cot_from_b5_cost_any')}** (beyond the 95% interval: {t.get('prm_beats_cot_beyond_ci_any')}), "
            f"top-valued **{t.get('prm_beats_cot_from_b5_cost_top')}** (beyond: {t.get('prm_beats_cot_beyond_ci_top')}). "
            f"ToT+PRM b=5 beats b=1 at equal n: **{t['b5_beats_b1']}** (top-valued: {t.get('b5_beats_b1_top')}).", ""]
  if "timings_seconds" in results:
    lines += ["Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["timings_seconds"].items()), ""]
  lines += ["![success vs tokens](success_vs_tokens.png)"]
  io.write_text(os.path.join(directory, "report.md"), "\n".join(lines) + "\n")

  fig = Figure(figsize=(6.5, 4.2))
  ax = fig.subplots()
  ax.plot([r["tokens"] for r in cot["best_of_k"]], [100 * r["success"] for r in cot["best_of_k"]], "k-", marker=".",
          label="CoT best-of-k (exact checker)")
  markers, colors = {1: "o", 5: "s"}, {"prm": "tab:blue", "logprob": "tab:orange", "oracle": "tab:green"}
  for r in results["tot"]:  # any of b: the marker; top-valued: a small x below it on the same vertical line
    ax.scatter([r["tokens"]], [100 * r["success_any"]], marker=markers.get(r["breadth"], "^"), color=colors[r["value"]],
               facecolors="none" if r["value"] == "oracle" else colors[r["value"]])
    if r["success"] != r["success_any"]:
      ax.plot([r["tokens"]] * 2, [100 * r["success"], 100 * r["success_any"]], ":", color=colors[r["value"]], lw=0.8)
      ax.scatter([r["tokens"]], [100 * r["success"]], marker="x", s=12, color=colors[r["value"]])
    ax.annotate(f"b{r['breadth']}n{r['samples']}", (r["tokens"], 100 * r["success_any"]), fontsize=6,
                textcoords="offset points", xytext=(3, 3))
  for value, color in colors.items():
    if any(r["value"] == value for r in results["tot"]):
      ax.scatter([], [], color=color, label=f"ToT-BFS, {_VALUE_LABELS[value]} (any of b; x: top-valued)")
  ax.set_xscale("log")
  ax.set_xlabel("generated tokens per puzzle")
  ax.set_ylabel("% test puzzles with a correct answer")
  ax.set_title("Game of 24: ToT vs CoT at equal generated tokens")
  ax.legend(fontsize=7)
  fig.tight_layout()
  io.save_figure(fig, os.path.join(directory, "success_vs_tokens.png"))
