"""The STaR-with-search comparison on the Game of 24 (experiments/configs/star_game24.py, sweep `comparison`):
table, plots and targets from the sweep members' star_metrics.jsonl.

    python -m experiments.star_game24.compare --workdir=runs/sweeps/star_game24 --out=experiments/star_game24

Per member and iteration: held-out greedy pass@1 (`acc_overall`), sampled pass@1 / pass@k, the ToT search's
success with M_n, examples kept by source (generated / rationalized / searched) and the tokens the iteration
generated: generation + rationalization (`sampled_tokens`, the kept texts' tokens as STaR counts them) + search
(`search_tokens`: every token generated in the search trees). Cumulative tokens are the x axis of the
accuracy-vs-tokens plot, so the search's cost is counted.

Targets (the search issue), measured on the final iteration: STaR + ToT data (PRM value) beats STaR with
rationalization alone in held-out greedy pass@1, and reaches STaR-alone's final accuracy in fewer cumulative
generated tokens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from absl import app, flags
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from experiments import stats
from star_jax import io

LABELS = {  # (rationalize, search, value kind) -> label, in the table's order
    (True, False, None): "STaR + rationalization",
    (True, True, "prm"): "STaR + rationalization + ToT data (PRM value)",
    (True, True, "oracle"): "STaR + rationalization + ToT data (oracle value, upper bound)",
    (True, True, "logprob"): "STaR + rationalization + ToT data (log-prob value)",
    (False, False, None): "STaR without rationalization",
    (False, True, "prm"): "STaR + ToT data (PRM value), no rationalization",
    (False, True, "oracle"): "STaR + ToT data (oracle value, upper bound), no rationalization",
}


def member_label(star_config: Mapping) -> tuple[int, str]:
  """(order, label) of a member from its saved star_config.json."""
  star, value = star_config["star"], star_config.get("value", {})
  key = (bool(star["rationalize"]), bool(star.get("search", False)), value.get("kind") if star.get("search") else None)
  labels = list(LABELS)
  return (labels.index(key), LABELS[key]) if key in LABELS else (len(labels), str(key))


def read_members(workdir: str) -> list[dict]:
  """Every member directory of the sweep with star_metrics.jsonl: {name, label, records}, in LABELS order."""
  members = []
  for name in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, name)
    metrics, config = os.path.join(path, "star_metrics.jsonl"), os.path.join(path, "star_config.json")
    if os.path.exists(metrics) and os.path.exists(config):
      order, label = member_label(io.read_json(config))
      members.append({"name": name, "label": label, "order": order, "records": io.read_jsonl(metrics)})
  return sorted(members, key=lambda m: m["order"])


def iteration_tokens(record: Mapping) -> int:
  """Tokens generated in one iteration: generation + rationalization + search (0 for the base model)."""
  return int(record.get("sampled_tokens", 0)) + int(record.get("search_tokens", 0))


def cumulative_tokens(records: Sequence[Mapping]) -> list[int]:
  out, total = [], 0
  for r in records:
    total += iteration_tokens(r)
    out.append(total)
  return out


def tokens_to_reach(records: Sequence[Mapping], accuracy: float) -> int | None:
  """Cumulative generated tokens at the first iteration whose greedy accuracy is >= `accuracy` (None: never)."""
  for r, tokens in zip(records, cumulative_tokens(records)):
    if r["iteration"] > 0 and r.get("acc_overall", -1) >= accuracy:
      return tokens
  return None


def difference(p: float, q: float, n: int) -> dict:
  """p - q over two held-out sets of n questions each, with the 95% half-width of the difference of two
  independent proportions (normal approximation): significant when |p - q| exceeds it."""
  low, high = stats.difference_interval(p, q, max(n, 1))
  half = (high - low) / 2
  return {"difference": p - q, "ci95": half, "significant": abs(p - q) > half}


def targets(members: Sequence[Mapping], test_size: int) -> dict:
  """The issue's two targets, measured, each with the difference and its 95% interval (None when a member is
  missing); plus search in place of rationalization (no rationalization, with vs without ToT data)."""
  by_label = {m["label"]: m["records"] for m in members}
  alone, prm = by_label.get(LABELS[(True, False, None)]), by_label.get(LABELS[(True, True, "prm")])
  out: dict = {"search_beats_star_final": None, "search_reaches_star_final_in_fewer_tokens": None}
  if alone and prm:
    final_alone = alone[-1]["acc_overall"]
    reach = tokens_to_reach(prm, final_alone)
    out.update({"star_final_acc": final_alone, "search_final_acc": prm[-1]["acc_overall"],
                "search_beats_star_final": prm[-1]["acc_overall"] > final_alone,
                "search_vs_star_final": difference(prm[-1]["acc_overall"], final_alone, test_size),
                "star_best_acc": max(r["acc_overall"] for r in alone),
                "search_best_acc": max(r["acc_overall"] for r in prm),
                "star_final_tokens": cumulative_tokens(alone)[-1], "search_tokens_to_reach_star_final": reach,
                "search_reaches_star_final_in_fewer_tokens": reach is not None and reach < cumulative_tokens(alone)[-1]})
  no_rat, no_rat_search = by_label.get(LABELS[(False, False, None)]), by_label.get(LABELS[(False, True, "prm")])
  if no_rat and no_rat_search:
    out["search_instead_of_rationalization_final"] = difference(no_rat_search[-1]["acc_overall"],
                                                                no_rat[-1]["acc_overall"], test_size)
  if alone and no_rat_search:
    reach = tokens_to_reach(no_rat_search, alone[-1]["acc_overall"])
    out["search_only_vs_star_final"] = difference(no_rat_search[-1]["acc_overall"], alone[-1]["acc_overall"], test_size)
    out["search_only_tokens_to_reach_star_final"] = reach
  return out


def _target_lines(t: Mapping) -> list[str]:
  def diff(d):
    return (f"{100 * d['difference']:+.1f} points (95% interval ±{100 * d['ci95']:.1f}: "
            f"{'significant' if d['significant'] else 'not significant'})")
  lines = []
  reach = "never" if t.get("search_tokens_to_reach_star_final") is None else f"{t['search_tokens_to_reach_star_final']:,}"
  if t.get("search_vs_star_final"):
    lines.append(f"* STaR + ToT data (PRM) beats STaR with rationalization alone at the final iteration: "
                 f"**{t['search_beats_star_final']}**, {diff(t['search_vs_star_final'])}.")
    lines.append(f"* It reaches STaR-alone's final accuracy ({_pct(t['star_final_acc'])}) in fewer cumulative tokens: "
                 f"**{t['search_reaches_star_final_in_fewer_tokens']}** ({reach} vs {t['star_final_tokens']:,}; best "
                 f"iterations: {_pct(t['search_best_acc'])} vs {_pct(t['star_best_acc'])}).")
  if t.get("search_instead_of_rationalization_final"):
    lines.append("* Without rationalization, ToT data vs none at the final iteration: "
                 f"{diff(t['search_instead_of_rationalization_final'])}.")
  if t.get("search_only_vs_star_final"):
    only = t["search_only_tokens_to_reach_star_final"]
    lines.append("* ToT data in place of rationalization vs STaR with rationalization at the final iteration: "
                 f"{diff(t['search_only_vs_star_final'])}; it reaches STaR's final accuracy after "
                 f"{'never' if only is None else f'{only:,}'} cumulative tokens (STaR: {t.get('star_final_tokens', 0):,}).")
  return lines


def _pct(v) -> str:
  return "–" if v is None else f"{100 * v:.1f}%"


def markdown(members: Sequence[Mapping], test_size: int) -> str:
  """The per-iteration table of every member and the targets."""
  lines = ["| member | iter | greedy pass@1 (±95%) | sampled pass@1 | sampled pass@k | ToT search with M_n | "
           "kept gen / rat / search | tokens this iter | cumulative tokens | wall s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for m in members:
    for r, total in zip(m["records"], cumulative_tokens(m["records"])):
      k = max((int(key[len("sampled_pass"):]) for key in r if key.startswith("sampled_pass")), default=None)
      kept = "–" if r["iteration"] == 0 else (f"{r['kept_generated']} / {r['kept_rationalized']} / "
                                              f"{r.get('kept_searched', '–')}")
      seconds = sum(v for key, v in r.items() if key.startswith("seconds_") and v is not None)
      acc = r.get("acc_overall")
      lines.append(f"| {m['label']} | {r['iteration']} | {_pct(acc)} (±{100 * stats.proportion_half_width(acc or 0, test_size):.1f}) | "
                   f"{_pct(r.get('sampled_pass1'))} | {'–' if k is None else f'k={k} ' + _pct(r.get(f'sampled_pass{k}'))} | "
                   f"{_pct(r.get('search_correct'))} | {kept} | {iteration_tokens(r):,} | {total:,} | {seconds:.0f} |")
  return "\n".join(lines)


def plot(members: Sequence[Mapping], path: str) -> None:
  """Held-out greedy pass@1 vs iteration and vs cumulative generated tokens; kept examples per source."""
  fig = Figure(figsize=(13, 4))
  ax_it, ax_tok, ax_kept = fig.subplots(1, 3)
  for m in members:
    its = [r["iteration"] for r in m["records"]]
    acc = [100 * r.get("acc_overall", 0) for r in m["records"]]
    ax_it.plot(its, acc, marker="o", label=m["label"])
    ax_tok.plot(cumulative_tokens(m["records"]), acc, marker="o", label=m["label"])
  ax_it.set_xlabel("STaR iteration (0 = base model)")
  ax_tok.set_xlabel("cumulative generated tokens (generation + rationalization + search)")
  for ax in (ax_it, ax_tok):
    ax.set_ylabel("held-out greedy pass@1 (%)")
  ax_it.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax_it.legend(fontsize=6)
  width = 0.8 / max(len(members), 1)
  colors = {"generated": "tab:blue", "rationalized": "tab:orange", "searched": "tab:green"}
  for j, m in enumerate(members):
    records = [r for r in m["records"] if r["iteration"] > 0]
    xs = [r["iteration"] + (j - (len(members) - 1) / 2) * width for r in records]
    bottom = [0] * len(records)
    for source, color in colors.items():
      kept = [r.get(f"kept_{source}", 0) for r in records]
      ax_kept.bar(xs, kept, width, bottom=bottom, color=color, edgecolor="white",
                  label=source if j == 0 else None)
      bottom = [b + k for b, k in zip(bottom, kept)]
  ax_kept.set_xlabel("iteration (bars: the members in the table's order)")
  ax_kept.set_ylabel("examples kept")
  ax_kept.legend(fontsize=7)
  fig.suptitle("STaR on the Game of 24: with and without Tree-of-Thoughts rationales")
  fig.tight_layout()
  io.save_figure(fig, path)


def write(workdir: str, out: str) -> dict:
  """comparison.md, comparison.json and comparison.png in `out`; returns the JSON."""
  members = read_members(workdir)
  if not members:
    raise ValueError(f"{workdir}: no sweep member with star_metrics.jsonl")
  config = io.read_json(os.path.join(workdir, members[0]["name"], "star_config.json"))
  test_size = config["data"]["test_size"] or 362
  result = {"members": members, "targets": targets(members, test_size), "test_size": test_size}
  os.makedirs(out, exist_ok=True)
  io.write_json(os.path.join(out, "comparison.json"), result)
  t = result["targets"]
  text = ["# STaR on the Game of 24 with Tree-of-Thoughts rationales", "",
          f"Held-out: {test_size} test puzzles (never in D or the seed set). Tokens: generation + rationalization "
          "(the kept texts' tokens) + search (every token in the search trees).", "", markdown(members, test_size), "",
          "Targets (measured):", "", *_target_lines(t), "", "![comparison](comparison.png)"]
  io.write_text(os.path.join(out, "comparison.md"), "\n".join(text) + "\n")
  plot(members, os.path.join(out, "comparison.png"))
  return result


def main(argv):
  del argv
  write(flags.FLAGS.workdir, flags.FLAGS.out)
  print(f"comparison: {os.path.join(flags.FLAGS.out, 'comparison.md')}")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "The sweep's workdir (experiments.sweep --workdir).")
  flags.DEFINE_string("out", None, "Where comparison.md / .json / .png go (e.g. experiments/star_game24).")
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
