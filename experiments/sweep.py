"""Ablation sweeps of the STaR loop or of policy-gradient STaR: run a named list of config overrides, then
compare their final metrics.

    python -m experiments.sweep --config=experiments/configs/star_arithmetic.py[:variant] --sweep=<name> \
        --workdir=runs/sweeps/<name> [--config.star.iterations=3 ...] [--member=<i>] [--collect] [--base_only]
    python -m experiments.sweep --config=experiments/configs/pg_star_arithmetic.py:demo --sweep=comparison \
        --workdir=runs/sweeps/pg_comparison [--config.rl.token_budget=1290000 --config.rl.base_workdir=<STaR run>]

`--config=path.py[:variant]` is loaded exactly as by star_jax.main (`variant` goes to get_config, e.g. `tiny`);
`--sweep` names an entry of the module-level `SWEEPS` dict of that same file: a list of override sets
`{dotted key: value}`. Command-line overrides (`--config.star.iterations=3`) apply to every member, then
each member's own overrides on top (an unknown key is an error naming the key and the member).

Each member gets its own workdir `<workdir>/<name>`, the name written from its overrides
(`star.rationalize=False`, several joined by `,`), and runs `star.run` there: resumable, and skipped
altogether once `star_metrics.jsonl` records every iteration (a re-run does no work). A config with an `rl`
section (as star_jax.main decides) is a policy-gradient experiment: each member runs `rl.run` instead,
skipped once its `rl_eval.jsonl` holds the evaluation of the step where the loop stops (rl.steps or
rl.token_budget; below). All members share the generated data (`<workdir>/data`) and,
unless their overrides change what the base model depends on (model/data/train, star.seed/seed_per_digit/
one_digit_repeats/seed_steps/carry_fact_digits, rl.base_workdir), ONE base model trained once in
`<workdir>/base` (an RL config's `<rl.base_workdir>/base` when set, e.g. a STaR run's) and passed to every
member, so e.g. rationalization on/off start from the same M. Members that change it train their own in
`<workdir>/<name>/base`. `<workdir>/base_config.json` guards the shared base against a re-run with a
different base config.

At the end (or with `--collect` alone) the members' final metrics go to `<workdir>/sweep.md` (markdown
table), `<workdir>/sweep.csv` and `<workdir>/sweep.png`, one line per member: for STaR accuracy over the
training lengths vs iteration, wall time summing the members' phases (not the shared base model's
training); for RL the last evaluation's accuracy, KL to the base model, sampled tokens and wall time, and
accuracy and KL vs sampled tokens (experiments/pg_star_arithmetic/compare.py's table and plot).

Parallel launch on TPU VMs (one VM per member, the workdir on storage all of them mount: a Filestore NFS
share or a bucket mounted with gcsfuse, e.g. /mnt/sweeps):

    W=/mnt/sweeps/rationalization
    ARGS="--config=experiments/configs/star_arithmetic.py --sweep=rationalization --workdir=$W"
    python -m experiments.sweep $ARGS --base_only                 # once: the data and the shared base model
    python -m experiments.sweep $ARGS --list                      # one line per member: index, name, overrides
    python -m experiments.sweep $ARGS --list | cut -f1 | xargs -P 0 -I{} gcloud compute tpus tpu-vm ssh \
        sweep-{} --zone=$ZONE --worker=all --command="cd star_jax && python -m experiments.sweep $ARGS --member={}"
    python -m experiments.sweep $ARGS --collect                   # sweep.md / sweep.csv / sweep.png

(`--base_only` first, so that members do not race to train the same base; a failed or pre-empted member
is re-launched with the same command and resumes. Add `--multihost` on a multi-host slice.)
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from ml_collections import config_flags

from experiments.pg_star_arithmetic import compare as pg_compare
from star_jax import host_malloc, io, pg, sharding, star
from star_jax import main as star_main
from star_jax.pg.config import RLConfig, RLExperimentConfig
from star_jax.star import report as star_report
from star_jax.star.config import StarExperimentConfig

# What the base model (star.make_base_model) depends on: members that change none of it share one.
_BASE_SECTIONS = ("model", "data", "train")
_BASE_STAR_KEYS = ("seed", "seed_per_digit", "one_digit_repeats", "seed_steps", "carry_fact_digits")


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of a sweep: its overrides, validated config, workdir and whether it uses the shared base."""
  index: int
  name: str
  overrides: dict
  cfg: StarExperimentConfig  # an RLExperimentConfig for a policy-gradient sweep
  workdir: str
  shares_base: bool

  @property
  def is_rl(self) -> bool:
    """Whether the member runs the policy-gradient loop (rl.run) rather than the STaR loop."""
    return isinstance(self.cfg, RLExperimentConfig)


# ---- the sweep definition ----

def load_sweep(config_path: str, sweep_name: str) -> list[dict]:
  """The override sets `SWEEPS[sweep_name]` of the config file at `config_path`."""
  spec = importlib.util.spec_from_file_location("_sweep_config", config_path)
  if spec is None or not os.path.exists(config_path):
    raise FileNotFoundError(f"no config file {config_path!r}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sweeps = getattr(module, "SWEEPS", None)
  if not isinstance(sweeps, Mapping):
    raise ValueError(f"{config_path} defines no SWEEPS dict (sweep name -> list of override dicts)")
  if sweep_name not in sweeps:
    raise ValueError(f"{config_path} has no sweep {sweep_name!r}; its sweeps: {sorted(sweeps)}")
  sweep = list(sweeps[sweep_name])
  if not sweep:
    raise ValueError(f"{config_path}: SWEEPS[{sweep_name!r}] is empty")
  for i, overrides in enumerate(sweep):
    if not isinstance(overrides, Mapping):
      raise ValueError(f"{config_path}: SWEEPS[{sweep_name!r}][{i}] must be a dict of overrides, got {overrides!r}")
  return [dict(o) for o in sweep]


def member_name(overrides: Mapping[str, Any]) -> str:
  """`star.rationalize=False`, several overrides joined by `,`; `defaults` for none. Path-safe."""
  if not overrides:
    return "defaults"
  name = ",".join(f"{key}={value}" for key, value in overrides.items())
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                    where: str = "override") -> ml_collections.ConfigDict:
  """A copy of `config` with each dotted key set; unknown keys and wrong types raise naming the key."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
      if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f"{where}: unknown config key config.{key} (no section config.{'.'.join(parents[:i + 1])})")
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise ValueError(f"{where}: unknown config key config.{key}; valid keys here: {valid}")
    try:
      with node.unlocked():
        node[leaf] = value
    except (TypeError, ValueError) as e:
      raise ValueError(f"{where}: config.{key} = {value!r}: {e}") from e
  return config


def experiment_from_config(config: ml_collections.ConfigDict) -> StarExperimentConfig:
  """The validated config of a "star" or "pg" experiment (its `kind`, as for star_jax.main)."""
  if star_main.experiment_kind(config) not in ("star", "pg"):
    raise ValueError(f"config.kind={config.kind!r}: a sweep runs STaR or policy-gradient members ('star' or 'pg')")
  return star_main.experiment_from_config(config)


def base_signature(cfg: StarExperimentConfig) -> dict:
  """The part of a config the base model depends on (JSON-comparable), for RL also where it is kept."""
  sig = {s: dataclasses.asdict(getattr(cfg, s)) for s in _BASE_SECTIONS}
  sig["data"].pop("data_dir")
  sig["star"] = {k: getattr(cfg.star, k) for k in _BASE_STAR_KEYS}
  if isinstance(cfg, RLExperimentConfig):
    sig["rl"] = {"base_workdir": cfg.rl.base_workdir}
  return json.loads(json.dumps(sig))


def base_workdir(cfg: StarExperimentConfig, default: str) -> str:
  """The workdir whose base/ holds the base model: an RL config's rl.base_workdir if set (a STaR run's, as
  for star_jax.main), else `default` (the sweep's for the shared base, a member's for its own)."""
  return (cfg.rl.base_workdir if isinstance(cfg, RLExperimentConfig) else "") or default


def plan(config: ml_collections.ConfigDict, sweep: Sequence[Mapping[str, Any]], workdir: str,
         sweep_name: str = "sweep") -> list[Member]:
  """Validate every member (`config` with its overrides) and place it in `<workdir>/<name>`."""
  workdir = os.path.abspath(workdir)
  config = copy.deepcopy(config)
  if not config.data.data_dir:  # every member and the base read one copy of the data
    with config.unlocked():
      config.data.data_dir = os.path.join(workdir, "data")
  shared = base_signature(experiment_from_config(config))
  members, seen = [], {}
  for i, overrides in enumerate(sweep):
    where = f"sweep {sweep_name!r} member {i} ({member_name(overrides)})"
    member_config = apply_overrides(config, overrides, where)
    try:
      cfg = experiment_from_config(member_config)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from e
    name = member_name(overrides)
    if name in seen:
      raise ValueError(f"sweep {sweep_name!r}: members {seen[name]} and {i} have the same name {name!r}")
    seen[name] = i
    members.append(Member(i, name, dict(overrides), cfg, os.path.join(workdir, name),
                          base_signature(cfg) == shared))
  return members


# ---- running ----

def read_records(member: Member) -> list[dict]:
  """The member's history: star_metrics.jsonl (one record per iteration), for RL rl_eval.jsonl."""
  if member.is_rl:
    return rl_read_records(member.workdir)
  return io.read_jsonl_if_exists(os.path.join(member.workdir, "star_metrics.jsonl"))


def is_finished(member: Member) -> bool:
  """True when star_metrics.jsonl records iterations 0..star.iterations (RL: rl_is_finished)."""
  if member.is_rl:
    return rl_is_finished(member.cfg.rl, read_records(member))
  done = {r["iteration"] for r in read_records(member)}
  return done >= set(range(member.cfg.star.iterations + 1))


def shared_base(members: Sequence[Member], workdir: str):
  """Train (or load) the one base model of the members with `shares_base`, in `<workdir>/base`."""
  sharing = [m for m in members if m.shares_base]
  if not sharing:
    return None
  cfg = sharing[0].cfg
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, "base_config.json")
  signature = base_signature(cfg)
  if os.path.exists(path):
    saved = io.read_json(path)
    if saved != signature:
      differ = [f"config.{s}.{k}: {saved.get(s, {}).get(k)!r} -> {v!r}"
                for s, section in signature.items() for k, v in section.items() if saved.get(s, {}).get(k) != v]
      raise ValueError(f"{workdir}/base was trained with a different base config; use a new workdir. "
                       f"Differences: {'; '.join(differ)}")
  elif jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    io.write_json(path, signature)
  return star.make_base_model(cfg, base_workdir(cfg, workdir))


def run_member(member: Member, base_params=None, generator: Callable | None = None) -> list[dict] | None:
  """Run (or resume) one member with `base_params` (None: its own base in `<member>/base`); None if finished.

  STaR members run star.run (with `generator`, a test's stand-in for the sampler, if given), RL members
  rl.run with the config's reward; both return their records.
  """
  if is_finished(member):
    print(f"[sweep] {member.index}: {member.name} finished; skipped", flush=True)
    return None
  print(f"[sweep] {member.index}: {member.name} -> {member.workdir}", flush=True)
  if base_params is None:
    base_params = star.make_base_model(member.cfg, base_workdir(member.cfg, member.workdir))
  if member.is_rl:
    return pg.loop.run(member.cfg, member.workdir, base_params)
  return star.run(member.cfg, member.workdir, base_params, generator=generator)


def run_sweep(members: Sequence[Member], workdir: str, *, only: int | None = None,
              generator: Callable | None = None) -> None:
  """Run every member (or only `members[only]`) one after another; the shared base is made at most once."""
  todo = [m for m in members if only is None or m.index == only]
  base = None
  for m in todo:
    if m.shares_base and base is None and not is_finished(m):
      base = shared_base(members, workdir)
    run_member(m, base if m.shares_base else None, generator)


# ---- policy-gradient members ----
#
# A sweep over a "pg" config (experiments/configs/pg_star_arithmetic.py) runs every member with the online
# policy-gradient loop (pg.run) instead of the STaR loop. An RL member's history is its `rl_eval.jsonl` (one
# record per held-out evaluation, step 0 = the base model); its summary, table and plot are those of the
# STaR-vs-PG comparison (experiments/pg_star_arithmetic/compare.py): accuracy and KL to the base model
# against sampled tokens, the axis on which RL variants are compared.

def rl_read_records(workdir: str) -> list[dict]:
  """The evaluation records of the RL run in `workdir` ([] before its first evaluation)."""
  return io.read_jsonl_if_exists(os.path.join(workdir, pg.loop.EVAL_FILE))


def rl_is_finished(rl: RLConfig, records: Sequence[Mapping]) -> bool:
  """Whether the run has stopped. pg.run evaluates, and writes rl_eval.jsonl, at the step where it stops:
  step == rl.steps, or the first step after which rl.token_budget tokens were sampled; no earlier record
  meets either (a raised rl.steps or rl.token_budget on a re-run makes the member unfinished again)."""
  if not records:
    return False
  last = records[-1]
  return last["step"] >= rl.steps or bool(rl.token_budget and last["sampled_tokens"] >= rl.token_budget)


def rl_summary(cfg: RLExperimentConfig, records: Sequence[Mapping]) -> dict:
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


def rl_report(rows: Sequence[Mapping], max_train_digits: int) -> tuple[str, str]:
  """(description, markdown table) of sweep.md: pg_compare's table of the members that have evaluated,
  then the names of those that have not started."""
  started = [{**r, "run": f"`{r['member']}`" + ("" if r["finished"] else f" (unfinished: step {r['steps']})")}
             for r in rows if "acc_train_lengths" in r]
  parts = [pg_compare.markdown_table(started, max_train_digits)] if started else []
  not_started = [f"`{r['member']}`" for r in rows if "acc_train_lengths" not in r]
  if not_started:
    parts.append(f"Not started: {', '.join(not_started)}.")
  description = (f"policy-gradient STaR (star_jax.pg) at each member's last evaluation: held-out greedy "
                 f"accuracy over 1–{max_train_digits} digits (from the base model's at step 0), the best "
                 f"evaluation on the way, per digit length, KL(π‖base) per response, sampled tokens and wall "
                 f"time (sweep.csv adds the longer lengths and the best step). ")
  return description, "\n\n".join(parts)


def rl_plot(histories: Mapping[str, Sequence[Mapping]], path: str) -> None:
  """Held-out accuracy and KL to the base model vs sampled tokens, one line per member that has evaluated."""
  pg_compare.plot({name: pg_compare.rl_points(records) for name, records in histories.items() if records}, path)


# ---- collecting ----

def _seconds(records: Sequence[Mapping]) -> float:
  return sum(v for r in records for k, v in r.items() if k.startswith("seconds_") and v is not None)


def summary_row(member: Member, records: Sequence[Mapping]) -> dict:
  """One member's final metrics: the last iteration's accuracies and kept examples, the best iteration
  (highest acc_train_lengths), total wall time, and whether every iteration is recorded (RL:
  rl_summary of its evaluations)."""
  row = {"member": member.name, "overrides": json.dumps(member.overrides), "finished": is_finished(member)}
  if member.is_rl:
    return {**row, **rl_summary(member.cfg, records)}
  row["iterations"] = len(records) - 1 if records else 0
  if not records:
    return row
  last = records[-1]
  headline = lambda r: r.get("acc_train_lengths", r.get("acc_overall"))  # noqa: E731 (tasks without lengths: overall)
  best = max(records, key=headline)
  row.update({"final_iteration": last["iteration"], "acc_train_lengths": headline(last),
              "acc_overall": last.get("acc_overall"), "best_iteration": best["iteration"],
              "best_acc_train_lengths": headline(best)})
  row.update({f"acc_{k}digit": last[f"acc_{k}digit"] for k in star_report.accuracy_lengths(last)})
  row.update({k: v for k, v in last.items() if k.startswith("kept_")})
  row["seconds_total"] = _seconds(records)
  return row


def markdown_table(rows: Sequence[Mapping], max_train_digits: int) -> str:
  lengths = sorted({int(k[4:-5]) for r in rows for k in r if re.fullmatch(r"acc_\d+digit", k)})
  head = (["member", "iters", f"acc 1–{max_train_digits}", "best iter", f"best acc 1–{max_train_digits}", "acc all"]
          + [f"{k}d{'*' if k > max_train_digits else ''}" for k in lengths] + ["kept", "+rationalized", "wall s"])
  lines = ["| " + " | ".join(head) + " |", "|:---|" + "---:|" * (len(head) - 1)]
  pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
  for r in rows:
    iters = f"{r['iterations']}" + ("" if r["finished"] else " (unfinished)")
    cells = [f"`{r['member']}`", iters, pct(r.get("acc_train_lengths")), str(r.get("best_iteration", "–")),
             pct(r.get("best_acc_train_lengths")), pct(r.get("acc_overall"))]
    cells += [pct(r.get(f"acc_{k}digit")) for k in lengths]
    cells += [str(r.get("kept_generated", "–")), str(r.get("kept_rationalized", "–")) + (
              f" (+{r['kept_searched']} searched)" if "kept_searched" in r else ""),
              "–" if "seconds_total" not in r else f"{r['seconds_total']:.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(histories: Mapping[str, Sequence[Mapping]], max_train_digits: int, path: str, title: str) -> None:
  """Held-out accuracy over the training lengths vs iteration, one line per member."""
  fig = Figure(figsize=(7, 4))
  ax = fig.subplots()
  for name, records in histories.items():
    if records:
      ax.plot([r["iteration"] for r in records], [100 * r.get("acc_train_lengths", r.get("acc_overall")) for r in records],
              marker="o",
              markersize=3, label=name)
  ax.set_xlabel("STaR iteration (0 = base model)")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel(f"held-out accuracy, 1–{max_train_digits} digits (%)")
  ax.set_ylim(-2, 102)
  ax.legend(fontsize=7)
  ax.set_title(title)
  fig.tight_layout()
  io.save_figure(fig, path)


def collect(members: Sequence[Member], workdir: str, sweep_name: str = "sweep") -> list[dict]:
  """Write `sweep.md`, `sweep.csv` and `sweep.png` in `workdir` from the members' records (read_records)."""
  histories = {m.name: read_records(m) for m in members}
  rows = [summary_row(m, histories[m.name]) for m in members]
  if jax.process_index() != 0:
    return rows
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  max_train = members[0].cfg.data.max_train_digits
  io.write_csv(os.path.join(workdir, "sweep.csv"), rows)
  png = os.path.join(workdir, "sweep.png")
  if members[0].is_rl:  # (an override cannot add or remove the rl section: all members are of one kind)
    description, table = rl_report(rows, max_train)
    rl_plot(histories, png)
  else:
    description = (f"final iteration's held-out greedy accuracy (* = longer than any training question), the "
                   f"best iteration by accuracy over 1–{max_train} digits, examples kept at the final iteration, "
                   f"and the members' total wall time (without the base model). ")
    table = markdown_table(rows, max_train)
    plot(histories, max_train, png, f"STaR sweep: {sweep_name}")
  shared = [m for m in members if m.shares_base]
  text = "\n\n".join([
      f"# Sweep `{sweep_name}`",
      f"{len(members)} members; {description}"
      + (f"Shared base model (`{os.path.join(base_workdir(shared[0].cfg, ''), 'base/')}`): "
         f"{', '.join(f'`{m.name}`' for m in shared)}." if shared else ""),
      table,
      "![held-out accuracy](sweep.png)",
  ])
  io.write_text(os.path.join(workdir, "sweep.md"), text + "\n")
  return rows


# ---- command line ----

def define_flags(flag_values: flags.FlagValues = flags.FLAGS, sys_argv: list[str] | None = None) -> None:
  """The sweep's flags (defined by `main`, or on a test's own FlagValues with its argv: config_flags
  finds the `--config.*` overrides in `sys_argv`, default sys.argv, when the flag is defined)."""
  config_flags.DEFINE_config_file("config", None, "experiments/configs/*.py[:variant] with a SWEEPS dict.",
                                  flag_values=flag_values, lock_config=True, sys_argv=sys_argv)
  flags.DEFINE_string("sweep", None, "Name of the sweep in the config file's SWEEPS.", flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "Sweep directory: one subdirectory per member, base/, data/, sweep.*",
                      flag_values=flag_values)
  flags.DEFINE_string("member", None, "Run only this member (index or name); no collection.",
                      flag_values=flag_values)
  flags.DEFINE_bool("collect", False, "Only collect the members' metrics into sweep.md/csv/png.",
                    flag_values=flag_values)
  flags.DEFINE_bool("base_only", False, "Only make the data and the shared base model.", flag_values=flag_values)
  flags.DEFINE_bool("list", False, "Print `index<TAB>name<TAB>overrides` per member and exit.",
                    flag_values=flag_values)
  flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize first.", flag_values=flag_values)
  flags.mark_flags_as_required(["config", "sweep", "workdir"], flag_values=flag_values)


def _select(members: Sequence[Member], member: str) -> int:
  by_name = {m.name: m.index for m in members}
  if member in by_name:
    return by_name[member]
  if re.fullmatch(r"\d+", member) and int(member) < len(members):
    return int(member)
  raise ValueError(f"--member={member!r}: no such member; use 0..{len(members) - 1} or one of {sorted(by_name)}")


def run_from_flags(flag_values: flags.FlagValues = flags.FLAGS, generator: Callable | None = None) -> list[Member]:
  """Everything `python -m experiments.sweep` does, given parsed flags; returns the members."""
  fv = flag_values
  if fv["multihost"].value:
    sharding.initialize_multihost()
  sweep_name, workdir = fv["sweep"].value, os.path.abspath(fv["workdir"].value)
  # (config_flags reads `path[:variant]` as path.split(":", 1))
  sweep = load_sweep(config_flags.get_config_filename(fv["config"]).split(":", 1)[0], sweep_name)
  members = plan(fv["config"].value, sweep, workdir, sweep_name)
  if fv["list"].value:
    for m in members:
      print(f"{m.index}\t{m.name}\t{json.dumps(m.overrides)}")
    return members
  if fv["base_only"].value:
    shared_base(members, workdir)
    return members
  if not fv["collect"].value:
    only = None if fv["member"].value is None else _select(members, fv["member"].value)
    run_sweep(members, workdir, only=only, generator=generator)
    if only is not None:
      return members
  collect(members, workdir, sweep_name)
  print(f"\nsweep table: {os.path.join(workdir, 'sweep.md')}\nplot:        {os.path.join(workdir, 'sweep.png')}")
  return members


def main() -> None:
  define_flags()

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    host_malloc.reuse_freed_memory()  # before any JAX computation; STAR_JAX_SYSTEM_MALLOC=1 opts out
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    run_from_flags()
  app.run(_main)


if __name__ == "__main__":
  main()
