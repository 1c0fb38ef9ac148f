#!/usr/bin/env bash
# The PG-STaR half of the comparison: one run per variant, each from the STaR run's base model and
# stopped at the STaR run's total sampled tokens; then the table and plot.
#   [PRM=<reward-model dir>] experiments/pg_star_arithmetic/run.sh <STaR workdir> [<output root>]
# The STaR run first:  python -m star_jax.main --config=experiments/configs/star_arithmetic.py:demo --workdir=<STaR workdir>
set -euo pipefail
STAR=${1:?usage: run.sh <STaR workdir> [<output root>]}
ROOT=${2:-runs/pg_star_arithmetic}
PRM=${PRM:-runs/prm_arithmetic/prm}  # the learned PRM (experiments/prm_arithmetic/README.md makes it)
PY=${PYTHON:-python}
CONFIG=experiments/configs/pg_star_arithmetic.py:demo
TOKENS=$($PY -c "import json,sys; print(sum(json.loads(l).get('sampled_tokens', 0) for l in open(sys.argv[1])))" "$STAR/star_metrics.jsonl")
echo "token budget (the STaR run's sampled tokens): $TOKENS"
declare -A VARIANTS=(
  [none]="--config.rl.advantage=none"
  [rloo]="--config.rl.advantage=rloo"
  [grpo]="--config.rl.advantage=grpo"
  [rloo_kl0.01]="--config.rl.advantage=rloo --config.rl.kl_coef=0.01"
  [rloo_kl0.05]="--config.rl.advantage=rloo --config.rl.kl_coef=0.05"
  [rloo_kl0.2]="--config.rl.advantage=rloo --config.rl.kl_coef=0.2"
  [rloo_process]="--config.rl.advantage=rloo --config.rl.process_reward=1.0"
  [rloo_learned_prm]="--config.rl.advantage=rloo --config.rl.process_reward=1.0 --config.rl.process_reward_model=$PRM"
)
ORDER=(none rloo grpo rloo_kl0.01 rloo_kl0.05 rloo_kl0.2 rloo_process rloo_learned_prm)
RUNS=()
for name in "${ORDER[@]}"; do
  # shellcheck disable=SC2086
  $PY -m star_jax.main --config=$CONFIG --workdir="$ROOT/$name" --config.rl.base_workdir="$STAR" \
      --config.rl.token_budget="$TOKENS" ${VARIANTS[$name]}
  RUNS+=("$name=$ROOT/$name")
done
$PY -m experiments.pg_star_arithmetic.compare --config=$CONFIG --star_workdir="$STAR" --rl="$(IFS=,; echo "${RUNS[*]}")" \
    --out=experiments/pg_star_arithmetic
