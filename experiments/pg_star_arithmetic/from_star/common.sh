# Sourced by run.sh and learned_prm.sh (not run on its own): the arguments STAR_WORKDIR ITER TOKENS ROOT, the
# environment settings, and the two commands every variant uses, so that all runs from M_ITER share one recipe.
#   pg NAME [overrides...]          a PG run from M_ITER in ROOT/NAME, stopped at TOKENS sampled tokens
#   evaluate OUT [evaluate.py flags] the held-out evaluation (PER_LENGTH problems per length, SAMPLES at T = 1)
# The caller sets USAGE_LINES (the lines of its header that show its usage) before sourcing.
if [ $# -ne 4 ]; then
  sed -n "${USAGE_LINES}p" "$0" >&2
  exit 2
fi
STAR=$(cd "$1" && pwd)
ITER=$2
TOKENS=$3
ROOT=$4
PY=${PYTHON:-python}
PG_CONFIG=${PG_CONFIG:-experiments/configs/pg_star_arithmetic.py:demo}
STAR_CONFIG=${STAR_CONFIG:-experiments/configs/star_arithmetic.py:demo}
PER_LENGTH=${PER_LENGTH:-500}
SAMPLES=${SAMPLES:-16}
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
DATA="$ROOT/data"  # one copy of the task data for every run and evaluation (the STaR workdir is only read)

if [ ! -f "$STAR/iter_$ITER/train.json" ]; then
  echo "$(basename "$0"): $STAR/iter_$ITER/train.json not found: the STaR run has not finished iteration $ITER" >&2
  exit 1
fi

pg() {  # pg NAME [overrides...]
  local name=$1
  shift
  # shellcheck disable=SC2086
  $PY -m star_jax.main --config="$PG_CONFIG" --workdir="$ROOT/$name" --config.data.data_dir="$DATA" \
      --config.rl.base_workdir="$STAR" --config.rl.base_iteration="$ITER" --config.rl.token_budget="$TOKENS" \
      --config.rl.eval_every=1000000 --config.checkpoint.every_steps=1000 "$@" ${PG_ARGS:-}
}

evaluate() {  # evaluate OUT [--workdir=.. --iteration=..]
  local out=$1
  shift
  # shellcheck disable=SC2086
  $PY -m experiments.pg_star_arithmetic.from_star.evaluate --out="$out" --data_dir="$DATA" \
      --per_length="$PER_LENGTH" --samples="$SAMPLES" "$@" ${EVAL_ARGS:-}
}
