"""Classic STaR vs policy-gradient STaR at equal sampled tokens (experiments/pg_star_arithmetic/).

    python -m experiments.pg_star_arithmetic.compare --config=experiments/configs/pg_star_arithmetic.py:demo \\
        --star_workdir=runs/star_demo --rl=none=runs/pg/none,rloo=runs/pg/rloo --out=experiments/pg_star_arithmetic

Both loops start from the same base model M (the PG runs' rl.base_workdir is the STaR workdir) and spend
their samples differently: STaR (star_jax/star/) greedily generates a rationale for a fraction of D, rationalizes
the failures and fine-tunes M on what was kept; PG-STaR (star_jax/pg/) samples K responses per question and takes
a gradient step on the indicator reward. The axis is sampled tokens: for STaR the cumulative
`sampled_tokens` of star_metrics.jsonl (generation + rationalization), for PG-STaR the `sampled_tokens` of
rl_eval.jsonl. The y values are greedy held-out accuracy on the training lengths (acc_train_lengths) and
KL(π‖M) per response, measured for every STaR iteration here with the RL loop's own meter (pg.loop.kl_meter:
the same held-out prompts, sampling keys and estimator), so the two are comparable.

Writes `comparison.md` (table + notes), `comparison.csv`, `comparison.json` (every point) and
`comparison.png` (accuracy and KL vs sampled tokens) under --out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from absl import app, flags
from matplotlib.figure import Figure
from ml_collections import config_flags

from star_jax import host_malloc, io, pg, star


def define_flags() -> None:
  """The command line's flags, defined only when this module runs as a script (experiments.sweep imports it)."""
  config_flags.DEFINE_config_file("config", None, "experiments/configs/pg_star_arithmetic.py[:arg]", lock_config=True)
  flags.DEFINE_string("star_workdir", None, "The STaR run's workdir (its base/ is the PG runs' base).")
  flags.DEFINE_list("rl", [], "name=workdir of each PG-STaR run, comma-separated.")
  flags.DEFINE_string("out", None, "Directory for comparison.{md,csv,json,png}.")
  flags.mark_flags_as_required(["config", "star_workdir", "out"])


def star_points(records: Sequence[Mapping], kl: Sequence[float]) -> list[dict]:
  """One point per STaR iteration (0 = the base model): cumulative sampled tokens and wall time."""
  points, tokens, seconds = [], 0, 0.0
  for record, kl_n in zip(records, kl):
    if record["iteration"] > 0 and "sampled_tokens" not in record:
      raise ValueError(f"STaR iteration {record['iteration']} has no sampled_tokens (a run made before star_jax "
                       "recorded them): no token axis to compare on; use a run made with this version")
    tokens += record.get("sampled_tokens", 0)
    seconds += sum(record.get(k) or 0.0 for k in ("seconds_generated", "seconds_rationalized", "seconds_train",
                                                 "seconds_eval"))
    points.append({"step": record["iteration"], "sampled_tokens": tokens, "seconds": seconds, "kl_to_base": kl_n,
                   **{k: v for k, v in record.items() if k.startswith("acc_")}})
  return points


def rl_points(records: Sequence[Mapping]) -> list[dict]:
  """The RL loop's evaluation records, in the same keys as star_points."""
  return [{"step": r["step"], "sampled_tokens": r["sampled_tokens"], "seconds": r["seconds"],
           "kl_to_base": r["kl_to_base"], **{k: v for k, v in r.items() if k.startswith("acc_")}} for r in records]


def summary_rows(runs: Mapping[str, Sequence[Mapping]], max_train_digits: int) -> list[dict]:
  """One row per run: its last point (the token budget reached), plus its best accuracy on the way."""
  rows = []
  for name, points in runs.items():
    last = points[-1]
    row = {"run": name, "sampled_tokens": last["sampled_tokens"], "acc_train_lengths": last["acc_train_lengths"],
           "best_acc_train_lengths": max(p["acc_train_lengths"] for p in points),
           "base_acc_train_lengths": points[0]["acc_train_lengths"], "kl_to_base": last["kl_to_base"],
           "seconds": last["seconds"]}
    row.update({f"acc_{n}digit": last[f"acc_{n}digit"] for n in range(1, max_train_digits + 1)})
    rows.append(row)
  return rows


def markdown_table(rows: Sequence[Mapping], max_train_digits: int) -> str:
  lengths = range(1, max_train_digits + 1)
  head = (["run", "sampled tokens", "held-out acc (base → end)", "best"] + [f"{n}d" for n in lengths]
          + ["KL to base (nats)", "wall time"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["run"], f"{r['sampled_tokens']:,}",
             f"{100 * r['base_acc_train_lengths']:.1f}% → {100 * r['acc_train_lengths']:.1f}%",
             f"{100 * r['best_acc_train_lengths']:.1f}%"]
    cells += [f"{100 * r[f'acc_{n}digit']:.0f}%" for n in lengths]
    cells += [f"{r['kl_to_base']:.2f}", f"{r['seconds'] / 60:.1f} min"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(runs: Mapping[str, Sequence[Mapping]], path: str) -> None:
  fig = Figure(figsize=(11, 4))
  (ax_acc, ax_kl) = fig.subplots(1, 2)
  for name, points in runs.items():
    tokens = [p["sampled_tokens"] / 1e6 for p in points]
    style = "o-" if name == "STaR" else ".-"
    ax_acc.plot(tokens, [100 * p["acc_train_lengths"] for p in points], style, label=name)
    ax_kl.plot(tokens, [p["kl_to_base"] for p in points], style, label=name)
  ax_acc.set(xlabel="sampled tokens (millions)", ylabel="held-out greedy accuracy, training lengths (%)")
  ax_kl.set(xlabel="sampled tokens (millions)", ylabel="KL(π ‖ base) per response (nats)")
  ax_acc.legend()
  ax_acc.grid(alpha=0.3)
  ax_kl.grid(alpha=0.3)
  fig.tight_layout()
  io.save_figure(fig, path)


def compare(cfg, star_workdir: str, rl_workdirs: Mapping[str, str], out: str) -> list[dict]:
  """Collect the runs, measure STaR's KL to base, write the outputs under `out`; returns the table rows."""
  rl_paths = {name: os.path.join(workdir, pg.loop.EVAL_FILE) for name, workdir in rl_workdirs.items()}
  for name, path in rl_paths.items():  # before the STaR KL measurement, which takes minutes
    if not os.path.exists(path):
      raise FileNotFoundError(f"PG run {name!r}: {path} not found (not an RL workdir, or the run has not started)")
  star_records = io.read_jsonl(os.path.join(star_workdir, "star_metrics.jsonl"))
  base = star.load_iteration_params(cfg, star_workdir, "base")
  measure = pg.loop.kl_meter(cfg, star_workdir, base)
  kl = [0.0] + [measure(star.load_iteration_params(cfg, star_workdir, r["iteration"]), r["iteration"])["kl_to_base"]
                for r in star_records[1:]]
  runs = {"STaR": star_points(star_records, kl)}
  for name, path in rl_paths.items():
    runs[f"PG {name}"] = rl_points(io.read_jsonl(path))
  rows = summary_rows(runs, cfg.data.max_train_digits)
  io.write_text(os.path.join(out, "comparison.md"), markdown_table(rows, cfg.data.max_train_digits) + "\n")
  io.write_json(os.path.join(out, "comparison.json"), runs)
  io.write_csv(os.path.join(out, "comparison.csv"), rows)
  plot(runs, os.path.join(out, "comparison.png"))
  return rows


def main(argv) -> None:
  del argv
  host_malloc.reuse_freed_memory()  # before any JAX computation; STAR_JAX_SYSTEM_MALLOC=1 opts out
  f = flags.FLAGS
  cfg = pg.rl_experiment_from_config(f.config)
  rl_workdirs = {}
  for item in f.rl:
    name, sep, workdir = item.partition("=")
    if not sep or not name or not workdir:
      raise app.UsageError(f"--rl: expected name=workdir, got {item!r}")
    rl_workdirs[name] = workdir
  rows = compare(cfg, f.star_workdir, rl_workdirs, f.out)
  print(markdown_table(rows, cfg.data.max_train_digits))
  print(f"\nwritten: {os.path.join(f.out, 'comparison.md')}, comparison.csv, comparison.json, comparison.png")


if __name__ == "__main__":
  define_flags()
  app.run(main)
