"""Tree-of-Thoughts children: the shared-prefix sampler (sample_grouped) vs repeated prompts inside a BFS search.

A random-weight 4-layer d_model 128 policy on the Game of 24 held-out puzzles, BFS b = n = 5, 3 depths; the same
search runs with ModelStepSampler(grouped=True) and (grouped=False), interleaved, 4 rounds (the first compiles).

  .venv/bin/python benchmarks/search_children.py 40 32   # puzzles, tokens per step

Last line: the median warm-round time ratio repeated / grouped.
"""
import sys
import time

import jax
import numpy as np

from star_jax import host_malloc, models, sharding
from star_jax.data import CharTokenizer, game24
from star_jax.data.tasks import get_task
from star_jax.models import ModelConfig
from star_jax.search import LogProbValue, ModelStepSampler, SearchConfig, bfs

host_malloc.reuse_freed_memory()
P, STEP = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (40, 32)
TOK, TASK = CharTokenizer(), get_task("game24")
MODEL = ModelConfig(vocab_size=TOK.vocab_size, d_model=128, n_layers=4, n_heads=4, d_ff=512)
rng = np.random.default_rng(0)
params = jax.tree.map(lambda a: (0.05 * rng.standard_normal(a.shape)).astype(a.dtype), models.abstract_params(MODEL))
mesh = sharding.make_mesh([("data", 1), ("fsdp", 1), ("tensor", 1)])
examples = [game24.puzzle_example(p) for p in game24.split()[1][:P]]
prompts = [TASK.prompt(e) for e in examples]
cfg = SearchConfig(depth=3, breadth=5, samples=5, step_tokens=STEP, answer_tokens=STEP, answer_prefix="Answer:",
                   answer_temperature=1.0)
samplers = {g: ModelStepSampler(MODEL, params, TOK, mesh, max_new_tokens=STEP, grouped=g) for g in (True, False)}
outs, times = {}, {True: [], False: []}
for rnd in range(4):
  for g in (True, False):
    t = time.perf_counter()
    r = bfs(samplers[g], LogProbValue("sum"), examples, prompts, cfg, jax.random.key(0))
    times[g].append(time.perf_counter() - t)
    outs[g] = [o.text for o in r.outcomes]
s = samplers[True]
print(f"P={P} b=5 n=5 T=3 step_tokens={STEP}: {s.calls // 4} sampler calls per search, {s.real_rows // 4} rows "
      f"({s.rows // 4} padded), generated {sum(o.budget.generated_tokens for o in r.outcomes)} tokens")
print("same outputs:", outs[True] == outs[False])
for g in (True, False):
  print(f"{'grouped ' if g else 'repeated'}: first (compile) {times[g][0]:.2f} s, then {['%.2f' % x for x in times[g][1:]]} s;"
        f" prefill slots/search {samplers[g].prefill_tokens // 4}")
print(f"search_children_speedup: {np.median(times[False][1:]) / np.median(times[True][1:]):.2f}")
