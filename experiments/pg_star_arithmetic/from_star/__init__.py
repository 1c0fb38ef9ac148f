"""Issue #14 part 3: PG-STaR variants and classic STaR from a STaR run's iteration-N model (run.sh, evaluate.py,
summarize.py; README.md)."""
