"""Tabulate the credit pilot (run.sh): held-out greedy accuracy per length at the start and the end of each
run with 95% Wilson intervals, the end-minus-start change with a normal-approximation interval, and the
training metrics (reward, sample accuracy, all-equal groups, KL to base), as results.md and results.json.

  python -m experiments.pg_star_arithmetic.credit_pilot.summarize --root=runs/credit_pilot --n=500
"""

import argparse
import json
import os

from experiments import stats

RUNS = ("outcome", "process_sequence", "process_reward_to_go", "process_gae")


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--root", default="runs/credit_pilot")
  parser.add_argument("--n", default="1digit=81,2digit=500,3digit=500", help="held-out problems per length")
  parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  args = parser.parse_args()
  sizes = {f"acc_{k}": int(v) for k, v in (item.split("=") for item in args.n.split(","))}
  results, lines = {}, []
  for run in RUNS:
    if not os.path.exists(os.path.join(args.root, run, "rl_eval.jsonl")):
      continue
    evals = read_jsonl(os.path.join(args.root, run, "rl_eval.jsonl"))
    train = read_jsonl(os.path.join(args.root, run, "rl_metrics.jsonl"))
    first, last = evals[0], evals[-1]
    groups = sorted(k for k in last if k.startswith("acc_") and k not in ("acc_overall", "acc_train_lengths"))
    mean = lambda key: sum(r[key] for r in train) / len(train)  # noqa: E731
    results[run] = {
        "steps": last["step"], "sampled_tokens": last["sampled_tokens"], "kl_to_base": last["kl_to_base"],
        "train_reward": mean("reward"), "train_sample_accuracy": mean("accuracy"),
        "groups_all_equal": mean("groups_all_equal"),
        "first_10_steps_reward": sum(r["reward"] for r in train[:10]) / min(10, len(train)),
        "last_10_steps_reward": sum(r["reward"] for r in train[-10:]) / min(10, len(train)),
        "first_10_steps_accuracy": sum(r["accuracy"] for r in train[:10]) / min(10, len(train)),
        "last_10_steps_accuracy": sum(r["accuracy"] for r in train[-10:]) / min(10, len(train)),
        "evaluations": [{k: e[k] for k in ["step", "sampled_tokens", *groups]} for e in evals],
        "held_out": {g: {"start": first[g], "end": last[g], "n": sizes[g], "end_ci95": stats.wilson(last[g], sizes[g]),
                         "change_ci95": stats.difference_interval(last[g], first[g], sizes[g])} for g in groups},
    }
  header = ("| run | steps | sampled tokens | " + " | ".join(f"{g[4:]} start → end (95% CI of end; change CI)" for g in groups)
            + " | train reward first→last 10 steps | sample acc first→last 10 steps | all-equal groups | KL to base |")
  lines += [header, "|" + "---|" * (header.count("|") - 1)]
  for run, r in results.items():
    cells = [f"{h['start']:.3f} → {h['end']:.3f} ({h['end_ci95'][0]:.3f}–{h['end_ci95'][1]:.3f}; "
             f"{h['change_ci95'][0]:+.3f}…{h['change_ci95'][1]:+.3f})" for h in r["held_out"].values()]
    lines.append(f"| {run} | {r['steps']} | {r['sampled_tokens']:,} | " + " | ".join(cells)
                 + f" | {r['first_10_steps_reward']:.3f} → {r['last_10_steps_reward']:.3f}"
                 + f" | {r['first_10_steps_accuracy']:.3f} → {r['last_10_steps_accuracy']:.3f}"
                 + f" | {r['groups_all_equal']:.3f} | {r['kl_to_base']:.3f} |")
  with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
