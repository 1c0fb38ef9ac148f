#!/usr/bin/env bash
# Issue #14 part 3, the learned-PRM variant: PG with the learned PRM of part 1 (a log-prob PRM,
# star_jax/prm/logprob.py) fitted on the start model M_ITER's own samples, with per-step credit
# (rl.credit = reward_to_go), from the same M_ITER, at the same token budget and with the same flags as
# run.sh's PG variants; then the held-out evaluation of its end model as run.sh evaluates, and the summary of
# every run under ROOT (summarize.py: ROOT/results.{md,json}, ROOT/accuracy.png).
#
#   experiments/pg_star_arithmetic/from_star/learned_prm.sh STAR_WORKDIR ITER TOKENS ROOT
#   e.g. experiments/pg_star_arithmetic/from_star/learned_prm.sh runs/star_demo 2 800000 runs/from_star_2
#
#   ROOT/learned_prm_model         train_prm.py: K samples of Q questions of D per length from M_ITER, exact step
#                                  labels, a logistic head on M_ITER's log-prob features (report.json: held-out
#                                  step AUC and solution AUC); fitted once, not refitted during PG
#   ROOT/learned_prm_reward_to_go  PG, R = 1(ŷ = y) + Σ_k P̂(step k good) / S (rl.process_reward = 1, the PRM's
#                                  features from a frozen copy of M_ITER), per-step credit (reward-to-go)
# and ROOT/start/heldout_eval.json when run.sh has not written it yet. Run it after run.sh (or alone, not beside
# it): it shares ROOT/data and ROOT/start with run.sh. Every step resumes: re-running continues it.
#
# Environment: as run.sh: PYTHON (python), PG_CONFIG (the demo config: it must be the STaR run's recipe), PG_ARGS
# (extra overrides for the PG run and for train_prm.py), PER_LENGTH (500), SAMPLES (16), EVAL_ARGS; and PRM_ARGS
# (extra train_prm.py flags, e.g. "--questions_per_length=300 --samples=4").
set -euo pipefail
USAGE_LINES=8,9
# shellcheck source=experiments/pg_star_arithmetic/from_star/common.sh
source "$(dirname "$0")/common.sh"
PRM="$ROOT/learned_prm_model"
NAME=learned_prm_reward_to_go

# shellcheck disable=SC2086
$PY -m experiments.pg_star_arithmetic.from_star.train_prm --config="$PG_CONFIG" --out="$PRM" \
    --config.data.data_dir="$DATA" --config.rl.base_workdir="$STAR" --config.rl.base_iteration="$ITER" \
    ${PG_ARGS:-} ${PRM_ARGS:-}
pg "$NAME" --config.rl.process_reward=1.0 --config.rl.process_reward_model="$PRM" --config.rl.credit=reward_to_go

if [ ! -f "$ROOT/start/heldout_eval.json" ]; then
  evaluate "$ROOT/start/heldout_eval.json" --workdir="$STAR" --iteration="$ITER"
fi
evaluate "$ROOT/$NAME/heldout_eval.json" --workdir="$ROOT/$NAME"
$PY -m experiments.pg_star_arithmetic.from_star.summarize --root="$ROOT"
