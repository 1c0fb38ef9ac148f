#!/usr/bin/env bash
# Pilot (issue #14 part 2): outcome-only RLOO vs the exact step reward as a sequence sum vs the same reward
# with per-step credit (reward-to-go with per-step leave-one-out baselines, and GAE with a value head), from
# the demo-scale base model, at an equal sampled-token budget; held-out greedy accuracy on 500 problems per
# length (2-3 digits; all 81 1-digit problems). Re-running with a larger TOKENS continues every run.
#   [TOKENS=800000] [BASE=<a workdir whose base/ holds the base model>] experiments/pg_star_arithmetic/credit_pilot/run.sh [<output root>]
# then: python -m experiments.pg_star_arithmetic.credit_pilot.summarize --root=<output root>
set -euo pipefail
ROOT=${1:-runs/credit_pilot}
PY=${PYTHON:-python}
TOKENS=${TOKENS:-800000}
BASE=${BASE:-$ROOT/outcome}  # default: the first run trains the demo base model in its workdir
COMMON="--config=experiments/configs/pg_star_arithmetic.py:demo --config.data.test_per_digit=500 --config.data.max_test_digits=3
  --config.rl.token_budget=$TOKENS --config.rl.eval_every=100000 --config.checkpoint.every_steps=1000"
# shellcheck disable=SC2086
$PY -m star_jax.main $COMMON --workdir="$ROOT/outcome" --config.rl.base_workdir="$BASE"
# shellcheck disable=SC2086
$PY -m star_jax.main $COMMON --workdir="$ROOT/process_sequence" --config.rl.base_workdir="$BASE" \
    --config.rl.process_reward=1.0
# shellcheck disable=SC2086
$PY -m star_jax.main $COMMON --workdir="$ROOT/process_reward_to_go" --config.rl.base_workdir="$BASE" \
    --config.rl.process_reward=1.0 --config.rl.credit=reward_to_go
# shellcheck disable=SC2086
$PY -m star_jax.main $COMMON --workdir="$ROOT/process_gae" --config.rl.base_workdir="$BASE" \
    --config.rl.process_reward=1.0 --config.rl.credit=gae --config.rl.advantage=none
