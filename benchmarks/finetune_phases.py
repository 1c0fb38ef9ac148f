"""STaR's fine-tuning phases, dense vs band attention (`train.attention`), timed in one process (issue #18).

For two recipes of experiments/configs/star_arithmetic.py:

  demo    `get_config("demo")`: 16 x 160 rows, 1-3 digit scratchpads; phases: the base model (star.seed_steps = 1,200
          steps) and iterations n = 1, 2 (ceil(800 * 1.2^(n-1)) = 800, 960 steps)
  full5   `get_config()`: 16 x 256 rows, 1-5 digit scratchpads; phases: the base model (3,000 steps) and the
          iterations up to the first whose held-out accuracy on the training lengths (acc 1-5) reached 90% in the
          recorded run (experiments/star_arithmetic/full5/star_metrics.jsonl: iteration 6, 800 ... 1,991 steps)

each phase's training data is built as star.loop builds it:
  base       the seed examples P (`loop._seed_examples`: plain + hinted prompts), as `make_base_model` trains on;
  iteration  kept-like examples: the questions of iteration 1's subsample of D (`star.fraction_of_D`), each with its
             full scratchpad and the plain prompt (a correct generation has that format), plus P (`star.mix_seed`),
             through `star_tasks.fitting_examples`, as `loop._iteration` builds its training set;
and packed into batches by `pipeline.make_train_dataset` (the fine-tuning input pipeline, `data.pack`).

For each recipe one train step per variant is compiled (`train.compile_train_step`, the step `train.fine_tune`
runs; its lr schedule spans the base phase, which changes no cost), every phase starts both variants from the same
initial state (random init: step time does not depend on the parameter values) and feeds both the same batches
through `train.train_loop` (the fine-tuning loop without checkpoints: per-step host batch transfer and the previous
step's metric fetch included). After `--warmup` steps, `--rounds` rounds each time `--steps / --rounds` steps of
each variant back to back, the order alternating between rounds (dense, band; band, dense; ...), so both see the
same machine load. Reported: the median over rounds of each variant's mean step time (wall and process CPU), the
median per-round dense/band ratio, and each phase's projected wall time = its steps x the median step time (and
the same at the median CPU time per step, which moves less with the load of other jobs on a shared machine).

The last line, `finetune_band_speedup: <ratio>`, is the demo's projected fine-tuning time (base + both iterations)
dense over band. The band is exact, and taken, only for batches whose packed examples all fit it (<= 65 tokens
always do; `models.cond_band_attention`); the script prints how many of the batches did, and checks that the
first step's loss agrees between the variants.

  python benchmarks/finetune_phases.py [--recipes demo,full5] [--steps 80] [--rounds 8] [--warmup 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from experiments.configs import star_arithmetic
from star_jax import host_malloc, models, sharding, train
from star_jax.data import arithmetic, pipeline
from star_jax.models import transformer
from star_jax.star import config as star_config
from star_jax.star import data as sd
from star_jax.star import loop
from star_jax.star import tasks as star_tasks

VARIANTS = ("dense", "band")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL5_METRICS = os.path.join(REPO, "experiments", "star_arithmetic", "full5", "star_metrics.jsonl")


def steps_to_accuracy(records: list[dict], threshold: float, key: str = "acc_train_lengths") -> tuple[int, list[int]]:
  """(n, [train_steps of iterations 1..n]) for the first iteration n >= 1 whose record[key] >= threshold.

  records: a STaR run's star_metrics.jsonl rows (iteration 0 is the base model's evaluation). Raises ValueError
  when no iteration reached the threshold.
  """
  steps = []
  for record in sorted((r for r in records if r["iteration"] >= 1), key=lambda r: r["iteration"]):
    steps.append(int(record["train_steps"]))
    if record[key] >= threshold:
      return int(record["iteration"]), steps
  raise ValueError(f"no iteration reached {key} >= {threshold}")


def projected_seconds(phase_steps: dict[str, list[int]], step_seconds: dict[str, float]) -> float:
  """sum over phase kinds k of sum(phase_steps[k]) * step_seconds[k]: fine-tuning wall time at those step times."""
  return float(sum(sum(steps) * step_seconds[kind] for kind, steps in phase_steps.items()))


def example_lengths(segment_ids_BxT: np.ndarray) -> np.ndarray:
  """Lengths of the packed examples (maximal runs of one nonzero segment id within a row)."""
  lengths = []
  for row in np.asarray(segment_ids_BxT):
    starts = np.flatnonzero(np.diff(row, prepend=-1) != 0)
    lengths += [end - start for start, end in zip(starts, list(starts[1:]) + [len(row)]) if row[start] != 0]
  return np.asarray(lengths, np.int64)


def recipe_config(name: str) -> star_config.StarExperimentConfig:
  return star_config.star_experiment_from_config(star_arithmetic.get_config("demo" if name == "demo" else ""))


def phase_schedule(name: str, cfg: star_config.StarExperimentConfig) -> tuple[dict[str, list[int]], str]:
  """The recipe's fine-tuning steps per phase kind {"base": [..], "iteration": [..]} and a description."""
  star = cfg.star
  if name == "demo":
    iterations = [sd.steps_for_iteration(star.base_steps, star.growth, n) for n in range(1, star.iterations + 1)]
    return {"base": [star.seed_steps], "iteration": iterations}, f"all {star.iterations} iterations"
  with open(FULL5_METRICS) as f:
    records = [json.loads(line) for line in f if line.strip()]
  n, iterations = steps_to_accuracy(records, 0.9)
  return {"base": [star.seed_steps], "iteration": iterations}, f"to >= 90% acc 1-5 (iteration {n} of the recorded run)"


def phase_examples(cfg: star_config.StarExperimentConfig, workdir: str) -> dict[str, list[dict]]:
  """{"base": P, "iteration": kept-like examples of iteration 1's questions + P}, built as star.loop builds them."""
  ctx = loop._setup(cfg, workdir)
  seed = loop._seed_examples(ctx)
  questions = sd.subsample(ctx.questions, cfg.star.fraction_of_D, cfg.star.seed, 1)
  problems = [ctx.task.problem(e) for e in questions]
  kept = [{"prompt": arithmetic.prompt_text(p), "target": arithmetic.target_text(p)} for p in problems]
  iteration = star_tasks.fitting_examples(kept + (seed if cfg.star.mix_seed else []), ctx.tokenizer, cfg.train.seq_len)
  return {"base": seed, "iteration": iteration}


def take_batches(examples: list[dict], cfg: star_config.StarExperimentConfig, tokenizer, count: int, seed: int):
  dataset = pipeline.make_train_dataset(examples, tokenizer, batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len,
                                        seed=seed, pack=cfg.data.pack, shard_by_process=False)
  it = iter(dataset)
  return [next(it) for _ in range(count)]


def run_recipe(name: str, args) -> dict:
  cfg = recipe_config(name)
  schedule, reach = phase_schedule(name, cfg)
  tokenizer, mesh = star_tasks.tokenizer_and_mesh(cfg)
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    examples = phase_examples(cfg, workdir)
    data_seconds = time.perf_counter() - start
  per_round = args.steps // args.rounds
  count = args.warmup + per_round * args.rounds
  batches = {kind: take_batches(examples[kind], cfg, tokenizer, count, seed=index)
             for index, kind in enumerate(("base", "iteration"))}
  band = transformer.band_for(cfg.train.seq_len, models.functional.BAND_BLOCK, models.functional.BAND_WINDOW)
  train_config = dataclasses.replace(cfg.train, steps=cfg.star.seed_steps)
  tx = train.make_optimizer(train_config)
  steps, compile_seconds = {}, {}
  probe = train.create_train_state(cfg.model, tx, mesh, cfg.train.seed)
  probe_batch = sharding.host_batch_to_global(batches["base"][0], mesh)
  for variant in VARIANTS:
    start = time.perf_counter()
    steps[variant] = train.compile_train_step(cfg.model, dataclasses.replace(train_config, attention=variant), mesh,
                                              tx).lower(probe, probe_batch, probe.rng).compile()
    compile_seconds[variant] = time.perf_counter() - start
  del probe, probe_batch

  print(f"== {name}: {cfg.model.n_layers} layers, d_model {cfg.model.d_model}, batch {cfg.train.batch_size} x "
        f"{cfg.train.seq_len}, band {band}; examples built in {data_seconds:.1f} s; compile dense "
        f"{compile_seconds['dense']:.1f} s, band {compile_seconds['band']:.1f} s")
  results, cpu_results = {}, {}
  for kind in ("base", "iteration"):
    lengths = np.concatenate([example_lengths(b["segment_ids_BxT"]) for b in batches[kind]])
    fits = sum(bool(transformer.band_fits(jnp.asarray(b["segment_ids_BxT"]), band)) for b in batches[kind]) if band else 0
    states, first_loss, wall, cpu = {}, {}, {v: [] for v in VARIANTS}, {v: [] for v in VARIANTS}
    for variant in VARIANTS:
      states[variant] = train.create_train_state(cfg.model, tx, mesh, cfg.train.seed)
      logged = {}
      states[variant] = train.train_loop(states[variant], steps[variant], iter(batches[kind][:args.warmup]), mesh,
                                         num_steps=args.warmup, log_every=1, on_log=lambda step, m: logged.setdefault(step, m))
      first_loss[variant] = logged[1]["loss"]
    for r in range(args.rounds):
      order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
      chunk = batches[kind][args.warmup + r * per_round:args.warmup + (r + 1) * per_round]
      for variant in order:
        state = states[variant]
        start, cpu_start = time.perf_counter(), time.process_time()
        state = train.train_loop(state, steps[variant], iter(chunk), mesh, num_steps=int(state.step) + per_round,
                                 log_every=10 ** 9)
        jax.block_until_ready(state.params)
        wall[variant].append((time.perf_counter() - start) / per_round)
        cpu[variant].append((time.process_time() - cpu_start) / per_round)
        states[variant] = state
    ratios = np.asarray(wall["dense"]) / np.asarray(wall["band"])
    results[kind] = {v: float(np.median(wall[v])) for v in VARIANTS}
    cpu_results[kind] = {v: float(np.median(cpu[v])) for v in VARIANTS}
    diff = abs(first_loss["dense"] - first_loss["band"])
    agree = diff <= 1e-5 * max(1.0, abs(first_loss["dense"]))
    print(f"  [{kind} phase] {len(examples[kind])} examples (packed lengths {lengths.min()}-{lengths.max()}, "
          f"mean {lengths.mean():.1f}); band branch taken on {fits} of {len(batches[kind])} batches")
    print(f"    first-step loss dense {first_loss['dense']:.6f}  band {first_loss['band']:.6f}  |diff| {diff:.2e}  "
          f"{'AGREE' if agree else 'DISAGREE'} (tolerance 1e-5 relative)")
    for v in VARIANTS:
      print(f"    {v:5s} step {1000 * np.median(wall[v]):7.1f} ms wall (median of {args.rounds} rounds x {per_round}; "
            f"rounds {' '.join(f'{1000 * x:.0f}' for x in wall[v])}), CPU {1000 * np.median(cpu[v]):.1f} ms")
    print(f"    dense/band per-round ratios {' '.join(f'{x:.3f}' for x in ratios)}  median {np.median(ratios):.3f}; "
          f"CPU-time ratio {np.median(np.asarray(cpu['dense']) / np.asarray(cpu['band'])):.3f}")
  print(f"  projected fine-tuning wall time ({reach}: base {schedule['base']} + iterations {schedule['iteration']} steps):")
  total = {}
  for v in VARIANTS:
    total[v] = projected_seconds(schedule, {kind: results[kind][v] for kind in results})
    phases = [schedule["base"][0] * results["base"][v]] + [s * results["iteration"][v] for s in schedule["iteration"]]
    cpu_total = projected_seconds(schedule, {kind: cpu_results[kind][v] for kind in cpu_results})
    print(f"    {v:5s} {total[v] / 60:6.1f} min  (phases {' / '.join(f'{p:.0f}' for p in phases)} s; "
          f"at the CPU time per step {cpu_total / 60:.1f} min)")
    total[f"{v}_cpu"] = cpu_total
  print(f"    dense / band: {total['dense'] / total['band']:.3f} wall, {total['dense_cpu'] / total['band_cpu']:.3f} CPU time")
  return {"total": total}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--recipes", default="demo,full5", help="comma-separated: demo, full5")
  parser.add_argument("--steps", type=int, default=80, help="timed steps per variant and phase")
  parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds the timed steps are split into")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant and phase (the first is checked)")
  args = parser.parse_args()
  if args.steps < args.rounds or args.warmup < 1:
    parser.error("need --steps >= --rounds and --warmup >= 1")
  reused = host_malloc.reuse_freed_memory()  # as the library's entry points, before the first JAX computation
  tfds.disable_progress_bar()  # the task data is built afresh in a temporary workdir
  progress_bar = train.tqdm
  train.tqdm = lambda *a, **k: progress_bar(*a, **{**k, "disable": True})  # train_loop's bar: no per-round output
  recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
  if not set(recipes) <= {"demo", "full5"}:
    parser.error(f"unknown recipe in {recipes}")
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}  host_malloc: {bool(reused)}  "
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  start = time.perf_counter()
  results = {name: run_recipe(name, args) for name in recipes}
  print(f"total {time.perf_counter() - start:.0f} s; load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  if "demo" in results:
    total = results["demo"]["total"]
    print(f"finetune_band_speedup: {total['dense'] / total['band']:.3f}")


if __name__ == "__main__":
  main()
