"""The policy-gradient members of a sweep (star_jax/sweep.py): their records, when they are finished, their table.

A sweep over a config with an `rl` section (experiments/configs/pg_star_arithmetic.py) runs every member
with the online policy-gradient loop (rl.run) instead of the STaR loop; sweep.py places the members, runs
them and shares their base model as for STaR. What differs lives here: an RL member's history is its
`rl_eval.jsonl` (one record per held-out evaluation, step 0 = the base model), and its summary, table and
plot are star_jax.pg_compare's, so that a sweep's table reads like the STaR-vs-PG comparison's: accuracy
and KL to the base model against sampled tokens, the axis on which RL variants are compared.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from star_jax import pg_compare, rl
from star_jax import star_data as sd
from star_jax.rl_config import RLConfig, RLExperimentConfig


def read_records(workdir: str) -> list[dict]:
  """The evaluation records of the RL run in `workdir` ([] before its first evaluation)."""
  path = os.path.join(workdir, rl.EVAL_FILE)
  return sd.read_jsonl(path) if os.path.exists(path) else []


def is_finished(rl: RLConfig, records: Sequence[Mapping]) -> bool:
  """Whether the run has stopped. rl.run evaluates, and writes rl_eval.jsonl, at the step where it stops:
  step == rl.steps, or the first step after which rl.token_budget tokens were sampled; no earlier record
  meets either (a raised rl.steps or rl.token_budget on a re-run makes the member unfinished again)."""
  if not records:
    return False
  last = records[-1]
  return last["step"] >= rl.steps or bool(rl.token_budget and last["sampled_tokens"] >= rl.token_budget)


def summary(cfg: RLExperimentConfig, records: Sequence[Mapping]) -> dict:
  """A member's final metrics: pg_compare's summary of its last evaluation (accuracy over and per training
  length, KL to the base model, sampled tokens, seconds; the base model's and the best accuracy), plus the
  last and the best step and the last accuracy on every evaluated length (the longer ones too)."""
  values = {"steps": records[-1]["step"] if records else 0}
  if not records:
    return values
  points = pg_compare.rl_points(records)
  row = pg_compare.summary_rows({"": points}, cfg.data.max_train_digits)[0]
  del row["run"]
  values.update(row, best_step=max(points, key=lambda p: p["acc_train_lengths"])["step"])
  values.update({k: v for k, v in points[-1].items() if k.startswith("acc_")})
  return values


def report(rows: Sequence[Mapping], max_train_digits: int) -> tuple[str, str]:
  """(description, markdown table) of sweep.md: pg_compare's table of the members that have evaluated,
  then the names of those that have not started."""
  started = [{**r, "run": f"`{r['member']}`" + ("" if r["finished"] else f" (unfinished: step {r['steps']})")}
             for r in rows if "acc_train_lengths" in r]
  parts = [pg_compare.markdown_table(started, max_train_digits)] if started else []
  not_started = [f"`{r['member']}`" for r in rows if "acc_train_lengths" not in r]
  if not_started:
    parts.append(f"Not started: {', '.join(not_started)}.")
  description = (f"policy-gradient STaR (star_jax.rl) at each member's last evaluation: held-out greedy "
                 f"accuracy over 1–{max_train_digits} digits (from the base model's at step 0), the best "
                 f"evaluation on the way, per digit length, KL(π‖base) per response, sampled tokens and wall "
                 f"time (sweep.csv adds the longer lengths and the best step). ")
  return description, "\n\n".join(parts)


def plot(histories: Mapping[str, Sequence[Mapping]], path: str) -> None:
  """Held-out accuracy and KL to the base model vs sampled tokens, one line per member that has evaluated."""
  pg_compare.plot({name: pg_compare.rl_points(records) for name, records in histories.items() if records}, path)
