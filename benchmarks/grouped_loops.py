"""The two loops that sample many continuations of one prompt, grouped (`sampling.sample_grouped`) vs independent rows.

  pg  one sampling phase of the policy-gradient loop (`pg.loop._sample` + fetching its rows, the loop's
      `sample_seconds`): experiments/configs/pg_star_arithmetic.py's default step, G = 32 questions of 1-5
      digits x K = 8 samples = 256 rows at T = 1, capped at the longest target + 16 tokens.
  mc  one Monte-Carlo labelling call of the PRM study (`prm.rollout_outcomes` with `prm.sample_rollouts`, as
      experiments/prm_arithmetic/study.py's mc_agreement calls it): the step prefixes of 4 solutions (one of each of
      2-5 digits, their correct scratchpads: 30 prefixes) x N = 16 rollouts = 480 rows in calls of 256 rows,
      capped at the longest target + 16 tokens, T = 1.

Both with the models of those configs (arithmetic shapes, d_model 64, 3 layers) at random weights (only the shapes
matter; a random policy rarely emits EOS, so most rows run to the cap), on one device. "independent" is each
loop's previous path (`grouped=False`: `sampling.sample` on the prompts repeated K / N times), "grouped" the
current one; the two must agree (tokens for pg, outcomes and texts for mc: checked and printed). Each contender
runs once untimed (compilation), then --repeats rounds time both, alternating which goes first; figures are
medians over rounds. Last line: `grouped_loops_speedup: <the smaller of the two ratios of medians>` (each loop
is at least that much faster grouped).

  python benchmarks/grouped_loops.py [--repeats 3] [--workloads pg,mc] [--system-malloc]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from experiments.configs import pg_star_arithmetic, prm_arithmetic
from experiments.prm_arithmetic import study as prm_study
from star_jax import host_malloc, models, sampling, sharding
from star_jax.data import CharTokenizer, arithmetic, verifiers
from star_jax.data.tasks import ArithmeticTask
from star_jax.pg import config as rl_config
from star_jax.pg import loop as rl
from star_jax.prm import steps as prm
from star_jax.star import tasks as star_tasks


def pg_contenders():
  """The PG loop's sampling phase, grouped and independent, on its default config's step shapes."""
  cfg = rl_config.rl_experiment_from_config(pg_star_arithmetic.get_config(""))
  task = ArithmeticTask()
  questions = [task.example(p) for d in range(1, 6) for p in arithmetic.sample_problems(d, 40, seed=d)]
  data = star_tasks.TaskData(task, None, questions, {1: questions[:4]}, [])
  ctx = rl._setup(cfg, tempfile.mkdtemp(prefix="grouped_loops_"), task_data=data)  # writes nothing (check=False)
  params = jax.jit(models.init_params, static_argnums=0)(cfg.model, jax.random.key(0))
  examples = [questions[i] for i in rl.questions_for_step(len(questions), cfg.rl.questions_per_step, cfg.rl.seed, 1)]
  rng = jax.random.key(1)

  def phase(grouped):
    _, out = rl._sample(ctx, params, examples, rng, grouped=grouped)
    tokens, lengths, _ = sharding.to_host((out.tokens_BxN, out.lengths_B, out.logps_BxN))
    return tokens, int(lengths.sum())

  g, k = len(examples), cfg.rl.samples_per_question
  cap = task.generation_cap(examples, cfg.rl.max_new_tokens, cfg.train.seq_len)
  print(f"[pg] {g} questions x K={k} = {g * k} rows, prompts padded to {ctx.prompt_width} tokens, cap {cap} tokens")
  return {"independent": lambda: phase(False), "grouped": lambda: phase(True)}


def mc_contenders():
  """One Monte-Carlo labelling call of the PRM study, grouped and independent."""
  cfg = prm_study.study_from_config(prm_arithmetic.get_config(""))
  tok, mesh = CharTokenizer(), sharding.make_mesh([("data", -1), ("fsdp", 1), ("tensor", 1)])
  params = jax.jit(models.init_params, static_argnums=0)(cfg.model, jax.random.key(0))
  problems = [arithmetic.sample_problems(d, 1, seed=3)[0] for d in (2, 3, 4, 5)]
  targets = [arithmetic.target_text(p) for p in problems]
  prefixes = [prm.step_prefixes(t, prm.split_steps(t, "\n", arithmetic.SCRATCH_OPEN)) for t in targets]
  verify = [lambda text, p=p: verifiers.is_correct(p, text) for p in problems]
  n = cfg.study.mc_rollouts
  sampling_config = sampling.SamplingConfig(max_new_tokens=max(map(len, targets)) + 16, temperature=cfg.study.temperature)
  texts = {}

  def labels(grouped):
    def complete(contexts, n, key):  # the study's completer (sorted by length, trimmed after the answer)
      order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
      sampled = prm.sample_rollouts(cfg.model, params, tok, [contexts[i] for i in order], n, mesh=mesh,
                                    sampling_config=sampling_config, batch_size=cfg.study.generate_batch_size,
                                    rng=key, grouped=grouped)
      texts[grouped] = sampled
      out = [""] * (len(contexts) * n)
      for rank, i in enumerate(order):
        out[i * n:(i + 1) * n] = [ArithmeticTask().trim(t) for t in sampled[rank * n:(rank + 1) * n]]
      return out
    outcomes = prm.rollout_outcomes([arithmetic.prompt_text(p) for p in problems], prefixes, verify, complete, n,
                                    jax.random.key(2))
    return np.concatenate([o.ravel() for o in outcomes]), texts[grouped]

  s = sum(map(len, prefixes))
  print(f"[mc] {s} step prefixes x N={n} = {s * n} rows in calls of {cfg.study.generate_batch_size} rows, "
        f"cap {sampling_config.max_new_tokens} tokens")
  return {"independent": lambda: labels(False), "grouped": lambda: labels(True)}


def bench(name: str, contenders: dict, repeats: int) -> float:
  results = {}
  for label, fn in contenders.items():
    start = time.perf_counter()
    results[label] = fn()  # untimed: compilation
    print(f"  first call (compile + run) {label}: {time.perf_counter() - start:.2f} s")
  a, b = results["independent"], results["grouped"]
  same = all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b))
  print(f"  grouped output equal to the independent rows': {same} ({name}: "
        + ("tokens, generated-token count)" if name == "pg" else "outcomes, texts)"))
  if name == "pg":
    print(f"  generated tokens: {a[1]:,}")
  times = {label: [] for label in contenders}
  for round_ in range(repeats):
    for label in (list(contenders) if round_ % 2 == 0 else list(contenders)[::-1]):
      start = time.perf_counter()
      contenders[label]()
      times[label].append(time.perf_counter() - start)
  for label, runs in times.items():
    print(f"  {label:12s} median {statistics.median(runs):7.3f} s   (runs: {', '.join(f'{t:.3f}' for t in runs)})")
  ratios = [i / g for i, g in zip(times["independent"], times["grouped"])]
  ratio = statistics.median(times["independent"]) / statistics.median(times["grouped"])
  print(f"  speed-up {ratio:.2f}x (ratio of medians; per-round ratios {min(ratios):.2f}-{max(ratios):.2f})")
  if not same:
    raise SystemExit(f"grouped_loops.py: the grouped {name} output differs from the independent one")
  return ratio


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=3, help="timed rounds (each times both paths)")
  parser.add_argument("--workloads", default="pg,mc", help="comma-separated: pg, mc")
  parser.add_argument("--system-malloc", action="store_true", help="skip host_malloc.reuse_freed_memory()")
  args = parser.parse_args()
  workloads = args.workloads.split(",")
  if unknown := set(workloads) - {"pg", "mc"}:
    parser.error(f"unknown workloads {sorted(unknown)}; use pg, mc")
  if not args.system_malloc:
    host_malloc.reuse_freed_memory()  # as the entry points do; see benchmarks/RESULTS.md
  print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.device_count()}")
  ratios = {}
  if "pg" in workloads:
    ratios["pg"] = bench("pg", pg_contenders(), args.repeats)
  if "mc" in workloads:
    ratios["mc"] = bench("mc", mc_contenders(), args.repeats)
  print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  for name, ratio in ratios.items():
    print(f"grouped_loops_speedup_{name}: {ratio:.2f}")
  print(f"grouped_loops_speedup: {min(ratios.values()):.2f}")


if __name__ == "__main__":
  main()
