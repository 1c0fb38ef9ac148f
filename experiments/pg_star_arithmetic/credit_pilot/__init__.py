"""Per-step credit pilot (issue #14 part 2): run.sh runs it, summarize.py tabulates it."""
