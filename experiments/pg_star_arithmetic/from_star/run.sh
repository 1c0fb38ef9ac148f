#!/usr/bin/env bash
# Issue #14 part 3: PG-STaR variants and classic STaR, each from a STaR run's iteration-ITER model M_ITER, at an
# equal sampled-token budget; then held-out evaluation of the start and every end model (evaluate.py, up to
# PER_LENGTH problems per length, greedy + SAMPLES samples at T = 1, 95% intervals) and the summary
# (summarize.py: ROOT/results.{md,json}, ROOT/accuracy.png).
#
#   experiments/pg_star_arithmetic/from_star/run.sh STAR_WORKDIR ITER TOKENS ROOT
#   e.g. experiments/pg_star_arithmetic/from_star/run.sh runs/star_demo 2 800000 runs/from_star_2
#
# Variants (ROOT/<name>/; VARIANTS="..." runs a subset, in this order):
#   outcome               PG, R = 1(ŷ = y), RLOO
#   process_sequence      + exact step reward summed per sequence (rl.process_reward = 1)
#   process_reward_to_go  + exact step reward with per-step credit (rl.credit = reward_to_go)
#   process_gae           + exact step reward with GAE and a value head (rl.credit = gae, rl.advantage = none)
#   star                  classic STaR with star.base_dir = STAR_WORKDIR/iter_ITER (every iteration fine-tunes M_ITER
#                         again on its kept rationales); iterations are added one at a time until the sampled tokens
#                         (generated + rationalized) are within half an iteration of TOKENS (at most STAR_MAX_ITERATIONS)
# PG runs stop at the first update that reaches TOKENS (rl.token_budget; overshoot < one update's samples).
# Every run resumes: re-running continues it (a larger TOKENS continues the PG runs; evaluations are redone).
#
# Environment: PYTHON (python), PG_CONFIG / STAR_CONFIG (the demo configs: they must be the STaR run's recipe),
# PG_ARGS (extra overrides for every PG run, e.g. "--config.rl.lr=2e-5"), STAR_ARGS (for the STaR variant),
# PER_LENGTH (500), SAMPLES (16), EVAL_ARGS (extra evaluate.py flags, e.g. "--batch_size=1024" on a GPU),
# STAR_MAX_ITERATIONS (8), VARIANTS.
set -euo pipefail
USAGE_LINES=7,8
# shellcheck source=experiments/pg_star_arithmetic/from_star/common.sh
source "$(dirname "$0")/common.sh"
STAR_MAX_ITERATIONS=${STAR_MAX_ITERATIONS:-8}
VARIANTS=${VARIANTS:-outcome process_sequence process_reward_to_go process_gae star}

star() {  # classic STaR from M_ITER, one iteration more per call until the sampled tokens reach TOKENS
  local n=0
  while :; do
    n=$((n + 1))
    # shellcheck disable=SC2086
    $PY -m star_jax.main --config="$STAR_CONFIG" --workdir="$ROOT/star" --config.data.data_dir="$DATA" \
        --config.star.base_dir="$STAR/iter_$ITER" --config.star.iterations="$n" ${STAR_ARGS:-}
    if [ "$n" -ge "$STAR_MAX_ITERATIONS" ] || [ "$($PY -c 'import sys
from experiments.pg_star_arithmetic.from_star import summarize as s
print(int(s.star_should_continue(sys.argv[1], int(sys.argv[2]))))' "$ROOT/star" "$TOKENS")" = 0 ]; then
      break
    fi
  done
}

for v in $VARIANTS; do
  case $v in
    outcome) pg outcome ;;
    process_sequence) pg process_sequence --config.rl.process_reward=1.0 ;;
    process_reward_to_go) pg process_reward_to_go --config.rl.process_reward=1.0 --config.rl.credit=reward_to_go ;;
    process_gae) pg process_gae --config.rl.process_reward=1.0 --config.rl.credit=gae --config.rl.advantage=none ;;
    star) star ;;
    *) echo "run.sh: unknown variant $v" >&2; exit 2 ;;
  esac
done

evaluate "$ROOT/start/heldout_eval.json" --workdir="$STAR" --iteration="$ITER"
for v in $VARIANTS; do
  if [ "$v" = star ]; then
    evaluate "$ROOT/star/heldout_eval.json" --workdir="$ROOT/star" --iteration=last
  else
    evaluate "$ROOT/$v/heldout_eval.json" --workdir="$ROOT/$v"
  fi
done
$PY -m experiments.pg_star_arithmetic.from_star.summarize --root="$ROOT"
