"""Entry point: `python -m star_jax.main --config=experiments/configs/star_arithmetic.py:demo --workdir=runs/x`.

The config's `kind` picks the job (`KINDS`): "sft" (supervised fine-tuning, star_jax/sft.py), "star" (the
STaR loop, star_jax/star/) or "pg" (policy-gradient STaR, star_jax/pg/). Overrides: `--config.train.lr=3e-4`,
`--config.mesh.axes='(("data",-1),("fsdp",2),("tensor",1))'`. Multi-host: pass --coordinator_address/
--num_processes/--process_id (or nothing on TPU pods, where jax.distributed discovers them) and run the same
command on every host.

Before anything is written the config is validated, the mesh built (errors name `config.mesh.axes`) and the
workdir's saved config compared with this one (`Kind.check`): a refused run leaves the workdir untouched,
`config.json` included. An override of a key the config lacks exits with a usage error naming it.

This is the one top-level module that imports the algorithm subpackages: it dispatches to them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from star_jax import config as config_lib
from star_jax import host_malloc, io, pg, sft, sharding, star, train
from star_jax.pg import loop as pg_loop
from star_jax.star import loop as star_loop
from star_jax.star import tasks as star_tasks


@dataclasses.dataclass(frozen=True)
class Kind:
  """An experiment kind: how its ConfigDict is validated and how it runs in a workdir."""
  from_config: Callable[[Mapping[str, Any]], Any]  # ConfigDict -> typed, validated config
  run: Callable[[Any, str], str]  # (cfg, workdir) -> the line(s) saying where the report is
  check: Callable[[Any, str], None]  # (cfg, workdir): build the mesh, refuse a workdir of another config; no write if it raises


def _run_sft(cfg, workdir: str) -> str:
  accuracy = sft.run(cfg, workdir)
  return (f"held-out greedy accuracy per digit length:\n{sft.accuracy_table(accuracy, cfg.data.max_train_digits)}"
          f"\n\nreport: {os.path.join(workdir, 'report.md')}\nplot:   {os.path.join(workdir, 'accuracy_by_digits.png')}")


def _run_star(cfg, workdir: str) -> str:
  star.run(cfg, workdir, star.base_params(cfg, workdir))
  return f"report: {os.path.join(workdir, 'star_report.md')}\nplot:   {os.path.join(workdir, 'star_accuracy.png')}"


def _run_pg(cfg, workdir: str) -> str:
  pg.run(cfg, workdir, star.base_params(cfg, cfg.rl.base_workdir or workdir))
  return f"report: {os.path.join(workdir, 'rl_report.md')}"


def _check_sft(cfg, workdir: str) -> None:
  del workdir  # the supervised job keeps no saved config: a re-run with another config resumes its checkpoints
  train.tokenizer_and_mesh(cfg)


def _check_star(cfg, workdir: str) -> None:
  star_tasks.tokenizer_and_mesh(cfg)
  star_loop.check_workdir(cfg, workdir)


def _check_pg(cfg, workdir: str) -> None:
  star_tasks.tokenizer_and_mesh(cfg)
  pg_loop.check_workdir(cfg, workdir)


KINDS: dict[str, Kind] = {
    "sft": Kind(config_lib.experiment_from_config, _run_sft, _check_sft),
    "star": Kind(star.star_experiment_from_config, _run_star, _check_star),
    "pg": Kind(pg.rl_experiment_from_config, _run_pg, _check_pg),
}


def experiment_kind(config: Mapping[str, Any]) -> str:
  """The config's `kind`, checked against KINDS (a config file must set it)."""
  kind = config.get("kind")
  if kind not in KINDS:
    raise ValueError(f"config.kind must be one of {sorted(KINDS)} (the job to run), got {kind!r}")
  return kind


def experiment_from_config(config: Mapping[str, Any]):
  """The typed, validated config of any kind of experiment."""
  return KINDS[experiment_kind(config)].from_config(config)


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Path to an experiments/configs/*.py file[:variant].",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for data, checkpoints, logs and the report.")
  flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize before anything else.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  host_malloc.reuse_freed_memory()  # before any JAX computation; STAR_JAX_SYSTEM_MALLOC=1 opts out
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax/TFDS are chatty at INFO; --verbosity=0 restores it
  if f.multihost or f.coordinator_address:  # before any computation: jax.distributed must come first
    sharding.initialize_multihost(f.coordinator_address, f.num_processes, f.process_id)
  kind = KINDS[experiment_kind(f.config)]
  cfg = kind.from_config(f.config)
  workdir = os.path.abspath(f.workdir)
  kind.check(cfg, workdir)  # before the first write: a refused run writes nothing
  io.write_text(os.path.join(workdir, "config.json"), f.config.to_json_best_effort(indent=2))
  print("\n" + kind.run(cfg, workdir))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
