"""Entry point: `python -m star_jax.main --config=experiments/configs/arithmetic.py --workdir=runs/x`.

Overrides: `--config.train.lr=3e-4`, `--config.mesh.axes='(("data",-1),("fsdp",2),("tensor",1))'`.
Multi-host: pass --coordinator_address/--num_processes/--process_id (or nothing on TPU pods, where
jax.distributed discovers them) and run the same command on every host.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from star_jax import config as config_lib
from star_jax import host_malloc

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an experiments/configs/*.py file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for data, checkpoints, logs and the report.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize before anything else.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  host_malloc.reuse_freed_memory()  # before any JAX computation; STAR_JAX_SYSTEM_MALLOC=1 opts out
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax/TFDS are chatty at INFO; --verbosity=0 restores it
  from star_jax import finetune, sharding  # noqa: PLC0415 (after flags; jax.distributed must come first)
  if _MULTIHOST.value or _COORDINATOR.value:
    sharding.initialize_multihost(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  is_rl = "rl" in _CONFIG.value  # policy-gradient STaR: the STaR base model, then the online RL loop
  is_star = "star" in _CONFIG.value and not is_rl  # a STaR experiment: base model, then the outer loop
  if is_rl:
    from star_jax import rl_config  # noqa: PLC0415
    cfg = rl_config.rl_experiment_from_config(_CONFIG.value)
  else:
    cfg = (config_lib.star_experiment_from_config if is_star else config_lib.experiment_from_config)(_CONFIG.value)
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(_CONFIG.value.to_json_best_effort(indent=2))
  if is_rl:
    from star_jax import rl, star  # noqa: PLC0415
    rl.run(cfg, workdir, star.make_base_model(cfg, cfg.rl.base_workdir or workdir))
    print(f"\nreport: {os.path.join(workdir, 'rl_report.md')}")
    return
  if is_star:
    from star_jax import star  # noqa: PLC0415
    star.run(cfg, workdir, star.base_params(cfg, workdir))
    print(f"\nreport: {os.path.join(workdir, 'star_report.md')}\nplot:   {os.path.join(workdir, 'star_accuracy.png')}")
    return
  accuracy = finetune.run(cfg, workdir)
  from star_jax import report  # noqa: PLC0415
  print("\nheld-out greedy accuracy per digit length:\n" + report.accuracy_table(accuracy, cfg.data.max_train_digits))
  print(f"\nreport: {os.path.join(workdir, 'report.md')}\nplot:   {os.path.join(workdir, 'accuracy_by_digits.png')}")


if __name__ == "__main__":
  app.run(main)
