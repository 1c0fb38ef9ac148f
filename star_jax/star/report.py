"""STaR results for people: the per-iteration summary line, the markdown report and the accuracy plot.

Arithmetic records have acc_<n>digit / acc_train_lengths / kept_<source>_<n>digit (the paper's Figure 4
layout); any other task's have acc_overall (absent without a held-out split), acc_group<g> and
kept_<source>_group<g> (star.run).
"""

from __future__ import annotations

import os

from matplotlib.figure import Figure

from star_jax import io


def accuracy_lengths(record: dict) -> list[int]:
  """The digit lengths with an `acc_<n>digit` entry."""
  return sorted(int(k[len("acc_"):-len("digit")]) for k in record if k.startswith("acc_") and k.endswith("digit"))


def _pct(value) -> str:
  return "–" if value is None else f"{100 * value:.1f}%"


def _secs(value) -> str:
  return "–" if value is None else f"{value:.0f}"


def accuracy_groups(record: dict) -> list[int]:
  """The groups with an `acc_group<g>` entry (tasks other than arithmetic)."""
  return sorted(int(k[len("acc_group"):]) for k in record if k.startswith("acc_group"))


def _is_arithmetic(record: dict) -> bool:
  return "acc_train_lengths" in record


def summary_line(record: dict, max_train_digits: int) -> str:
  """`iter 2 | kept 612/1000 (+88 rationalized) | steps 120 | acc 1-5: 54.2% | 1d 100.0% 2d ... | 41 s`.

  Other tasks: `... | acc 31.0% | 41 s` (and `g0 ... g1 ...` with several groups).
  """
  if not _is_arithmetic(record):
    return _generic_summary_line(record)
  n = record["iteration"]
  parts = [f"iter {n}"]
  if n == 0:
    parts.append("base model")
  else:
    parts += [f"kept {record['kept_generated']}/{record['questions']} (+{record['kept_rationalized']} rationalized)",
              f"steps {record['train_steps']}"]
  parts.append(f"acc 1-{max_train_digits}: {_pct(record['acc_train_lengths'])}")
  parts.append(" ".join(f"{k}d {_pct(record[f'acc_{k}digit'])}" for k in accuracy_lengths(record)))
  seconds = [record.get(k) for k in ("seconds_generated", "seconds_rationalized", "seconds_searched", "seconds_train",
                                     "seconds_eval")]
  parts.append(f"{sum(s for s in seconds if s is not None):.0f} s")
  return " | ".join(parts)


def report_table(records: list[dict], max_train_digits: int) -> str:
  """Markdown: one row per iteration (0 = the base model)."""
  lengths = accuracy_lengths(records[0])
  head = (["iter", "steps", "questions", "kept", "+rationalized", f"acc 1–{max_train_digits}"]
          + [f"{k}d{'*' if k > max_train_digits else ''}" for k in lengths]
          + ["gen s", "rat s", "train s", "eval s"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
  for r in records:
    row = [str(r["iteration"]), str(r.get("train_steps", "–")), str(r.get("questions", "–")),
           str(r.get("kept_generated", "–")), str(r.get("kept_rationalized", "–")), _pct(r["acc_train_lengths"])]
    row += [_pct(r[f"acc_{k}digit"]) for k in lengths]
    row += [_secs(r.get(k)) for k in ("seconds_generated", "seconds_rationalized", "seconds_train", "seconds_eval")]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def kept_table(records: list[dict], max_train_digits: int) -> str:
  """Markdown: examples kept per digit length, generated + rationalized, per iteration."""
  lengths = range(1, max_train_digits + 1)
  lines = ["| iter | " + " | ".join(f"{k}d" for k in lengths) + " |", "|" + "---:|" * (len(lengths) + 1)]
  for r in records[1:]:
    cells = [f"{r[f'kept_generated_{k}digit']} + {r[f'kept_rationalized_{k}digit']}" for k in lengths]
    lines.append(f"| {r['iteration']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot_accuracy(records: list[dict], max_train_digits: int, path: str) -> None:
  """Held-out accuracy per digit length vs iteration (the paper's Figure 4); dashed: untrained lengths."""
  iterations = [r["iteration"] for r in records]
  fig = Figure(figsize=(7, 4))
  ax = fig.subplots()
  for k in accuracy_lengths(records[0]):
    ax.plot(iterations, [100 * r[f"acc_{k}digit"] for r in records], marker="o", markersize=3,
            linestyle="-" if k <= max_train_digits else "--", label=f"{k} digits")
  ax.set_xlabel("STaR iteration (0 = base model)")
  ax.set_ylabel("held-out greedy accuracy (%)")
  ax.set_ylim(-2, 102)
  ax.set_xticks(iterations)
  ax.legend(fontsize=7, ncol=2)
  ax.set_title("STaR on n-digit addition")
  fig.tight_layout()
  io.save_figure(fig, path)


# ---- tasks other than arithmetic ----

def _head(record: dict) -> list[str]:
  n = record["iteration"]
  if n == 0:
    return [f"iter {n}", "base model"]
  searched = f", +{record['kept_searched']}/{record['searched']} searched" if "kept_searched" in record else ""
  return [f"iter {n}", f"kept {record['kept_generated']}/{record['questions']} (+{record['kept_rationalized']} "
          f"rationalized{searched})", f"steps {record['train_steps']}"]


def _generic_summary_line(record: dict) -> str:
  parts = _head(record)
  parts.append(f"acc {_pct(record['acc_overall'])}" if "acc_overall" in record else "no held-out split")
  groups = accuracy_groups(record)
  if len(groups) > 1:
    parts.append(" ".join(f"g{g} {_pct(record[f'acc_group{g}'])}" for g in groups))
  seconds = [record.get(k) for k in ("seconds_generated", "seconds_rationalized", "seconds_searched", "seconds_train",
                                     "seconds_eval")]
  parts.append(f"{sum(s for s in seconds if s is not None):.0f} s")
  return " | ".join(parts)


def generic_report_table(records: list[dict]) -> str:
  """Markdown: one row per iteration (0 = the base model), accuracy overall and per group (if several)."""
  groups = accuracy_groups(records[0])
  groups = groups if len(groups) > 1 else []
  head = (["iter", "steps", "questions", "kept", "+rationalized", "+searched", "accuracy"]
          + [f"group {g}" for g in groups] + ["gen s", "rat s", "search s", "train s", "eval s"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
  for r in records:
    row = [str(r["iteration"]), str(r.get("train_steps", "–")), str(r.get("questions", "–")),
           str(r.get("kept_generated", "–")), str(r.get("kept_rationalized", "–")), str(r.get("kept_searched", "–")),
           _pct(r.get("acc_overall"))]
    row += [_pct(r.get(f"acc_group{g}")) for g in groups]
    row += [_secs(r.get(k)) for k in ("seconds_generated", "seconds_rationalized", "seconds_searched", "seconds_train",
                                      "seconds_eval")]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def plot_generic_accuracy(records: list[dict], path: str, title: str) -> None:
  """Held-out accuracy (overall, and per group if several) vs iteration."""
  iterations = [r["iteration"] for r in records]
  fig = Figure(figsize=(7, 4))
  ax = fig.subplots()
  groups = accuracy_groups(records[0])
  series = [("acc_overall", "overall")] + ([(f"acc_group{g}", f"group {g}") for g in groups] if len(groups) > 1 else [])
  for key, label in series:
    points = [(r["iteration"], 100 * r[key]) for r in records if key in r]
    if points:
      ax.plot(*zip(*points), marker="o", markersize=3, label=label)
  ax.set_xlabel("STaR iteration (0 = base model)")
  ax.set_ylabel("held-out greedy accuracy (%)")
  ax.set_ylim(-2, 102)
  ax.set_xticks(iterations)
  if ax.lines:
    ax.legend(fontsize=7)
  ax.set_title(title)
  fig.tight_layout()
  io.save_figure(fig, path)


def _write_generic_report(cfg, workdir: str, records: list[dict]) -> None:
  plot_generic_accuracy(records, os.path.join(workdir, "star_accuracy.png"), f"STaR on {cfg.data.task}")
  s = cfg.star
  evaluated = (f"Held-out greedy accuracy on the {cfg.eval.split} split"
               f"{f' ({cfg.eval.num_shots}-shot)' if cfg.eval.num_shots else ''}." if "acc_overall" in records[0]
               else f"No {cfg.eval.split} file was given: no held-out evaluation.")
  text = "\n\n".join([
      f"# STaR report: {cfg.data.task}",
      f"Base model: {cfg.hf_path or 'trained here'} ({cfg.model.n_layers} layers, d_model {cfg.model.d_model}). "
      f"{s.iterations} iterations; fine-tuning {s.base_steps} steps at iteration 1, ×{s.growth} per iteration, from "
      f"{'the base model every time' if s.restart_from_base else 'the previous iteration (ablation)'}; "
      f"rationalization {'on' if s.rationalize else 'off'}; {100 * s.fraction_of_D:.0f}% of D per iteration; "
      f"{s.num_shots}-shot generation prompts; sampling "
      f"{'greedy' if s.temperature == 0 else f'at temperature {s.temperature}'}. {evaluated}",
      generic_report_table(records),
      "![accuracy vs iteration](star_accuracy.png)",
  ])
  io.write_text(os.path.join(workdir, "star_report.md"), text + "\n")


def write_report(cfg, workdir: str, records: list[dict]) -> None:
  """`star_report.md` (config summary, per-iteration table, kept-per-length table) and `star_accuracy.png`."""
  if cfg.data.task != "arithmetic":
    _write_generic_report(cfg, workdir, records)
    return
  max_train = cfg.data.max_train_digits
  plot_accuracy(records, max_train, os.path.join(workdir, "star_accuracy.png"))
  s = cfg.star
  text = "\n\n".join([
      "# STaR report",
      f"Model: {cfg.model.n_layers} layers, d_model {cfg.model.d_model}. {s.iterations} iterations; fine-tuning "
      f"{s.base_steps} steps at iteration 1, ×{s.growth} per iteration, from "
      f"{'the base model every time' if s.restart_from_base else 'the previous iteration (ablation)'}; "
      f"rationalization {'on' if s.rationalize else 'off'}; {100 * s.fraction_of_D:.0f}% of D per iteration; "
      f"sampling {'greedy' if s.temperature == 0 else f'at temperature {s.temperature}'}. Held-out greedy accuracy "
      f"on {cfg.data.test_per_digit} problems per length (* = longer than any training question).",
      report_table(records, max_train),
      "Examples kept per digit length (generated + rationalized):",
      kept_table(records, max_train) if len(records) > 1 else "(no iteration finished yet)",
      "![accuracy per digit length vs iteration](star_accuracy.png)",
  ])
  io.write_text(os.path.join(workdir, "star_report.md"), text + "\n")
