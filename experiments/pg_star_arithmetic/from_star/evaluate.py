"""Held-out accuracy of one model on large per-length sets, with 95% intervals (issue #14 part 3).

The model is a STaR run's M_n (`--workdir=<STaR run> --iteration=n`; 0 = its base model, `last` = its newest
finished iteration) or a policy-gradient run's newest checkpoint (`--workdir=<PG run>`: the policy it ended
with). The run's own saved config (rl_config.json / star_config.json) gives the model, the data and the
evaluation settings, so a STaR run and the PG runs started from it are evaluated on the same problems.

Per length n (arithmetic: digit length 1..data.max_test_digits), on up to P problems (--per_length, 500):
  greedy    1(ŷ = y) of the greedy decode (the loops' held-out metric, evaluate.generate_texts);
  sampled   the mean over S samples at temperature T (--samples 16, --temperature 1.0) of 1(ŷ = y), i.e. the
            expected reward of the policy the PG loop trains; each prompt is prefilled once and its S samples
            decoded over the shared prefix (sampling.sample_grouped);
each with a 95% Wilson score interval (Wilson 1927) over the n problems. For the sampled mean the unit is the
problem: with per-problem rates p_i in [0, 1], Var(p_i) <= p̄(1 − p̄), so the Wilson interval of p̄ with n trials
covers at least as widely as the normal interval of the problems' mean (treating the S·n samples as independent
would understate it: samples of one problem are correlated).

The held-out set of length n (`heldout_sets`): the loops' test split `test_<n>digit` (data.test_per_digit
problems, first and in order), topped up to P with problems of n digits that were never trained on: not in D
(the `questions` split: STaR generates on it, PG samples it) and not in the base model's seed set (a few
scratchpads of the rationales split, star.loop.base_examples), drawn from a fixed stream (HELDOUT_STREAM).
The data config is that of the STaR run, so the count may fall short of P: the demo's D holds every 2-digit
problem but the 50 test and 1,000 rationales ones. A length with at most P problems in all is evaluated on
every one of them (1-digit: all 81, each in D and in the seed set: there is nothing to hold out). Each length
reports `n`, `from_test_split` and `in_training_set`. (Building the data with data.test_per_digit = 500 instead would change D itself and,
against a run made with 50, put its D's problems in the test set.)

Output, written atomically (io.write_json) to --out (default `<workdir>/heldout_eval.json`, STaR:
`<workdir>/iter_<n>/heldout_eval.json`): {"model", "settings", "lengths": {"<n>digit": {n, from_test_split,
in_training_set, greedy: {correct, accuracy, ci95}, sampled: {correct, samples, accuracy, ci95,
tokens_per_sample}, problems, greedy_correct, sampled_correct}}, "seconds"}; the per-problem lists let
summarize.py pair a start and an end model on the same problems.

  python -m experiments.pg_star_arithmetic.from_star.evaluate --workdir=runs/star_demo --iteration=2 \\
      --out=runs/from_star_2/start/heldout_eval.json [--data_dir=runs/from_star_2/data]
  python -m experiments.pg_star_arithmetic.from_star.evaluate --workdir=runs/from_star_2/outcome
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from experiments.stats import wilson
from star_jax import evaluate, io, sampling
from star_jax.data import arithmetic
from star_jax.data.tasks import Example, cut_at_stop
from star_jax.pg import loop as pg_loop
from star_jax.pg.config import RLExperimentConfig, rl_experiment_from_config
from star_jax.star import loop as star_loop
from star_jax.star import tasks as star_tasks
from star_jax.star.config import StarExperimentConfig, star_experiment_from_config

PER_LENGTH, SAMPLES, TEMPERATURE = 500, 16, 1.0  # the defaults: P problems per length, S samples at T
HELDOUT_STREAM = 1_000_003  # + data.seed: the problems that top a test split up to P (arithmetic.sample_problems)
EVAL_FILE = "heldout_eval.json"


def workdir_config(workdir: str) -> StarExperimentConfig:
  """The typed config a run was made with: `rl_config.json` (a PG run) or `star_config.json` (a STaR run)."""
  for name, convert in ((pg_loop.CONFIG_FILE, rl_experiment_from_config),
                        (star_loop.CONFIG_FILE, star_experiment_from_config)):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      return convert(io.read_json(path))
  raise ValueError(f"{workdir} holds neither {pg_loop.CONFIG_FILE} (a PG run) nor {star_loop.CONFIG_FILE} (a STaR run)")


def last_iteration(workdir: str) -> int:
  """The newest iteration of a STaR run that finished its fine-tuning (`iter_<n>/train.json`); 0 if none."""
  done = [int(name[5:]) for name in os.listdir(workdir) if name.startswith("iter_") and name[5:].isdigit()
          and os.path.exists(os.path.join(workdir, name, "train.json"))]
  return max(done, default=0)


def load_model(cfg: StarExperimentConfig, workdir: str, iteration: int | None = None, mesh=None):
  """(params, description) of a run's model: a PG run's newest checkpoint (`iteration` None), or a STaR run's
  M_`iteration` (0: its base model, `<workdir>/base/` or star.base_dir)."""
  workdir = os.path.abspath(workdir)
  if iteration is None:
    if not isinstance(cfg, RLExperimentConfig):
      raise ValueError(f"{workdir} is a STaR run: give the iteration to evaluate (--iteration=n, 0 = base, last)")
    params, host, step = pg_loop.restore_policy(cfg, workdir)
    return params, {"workdir": workdir, "kind": "pg", "step": step, "sampled_tokens": int(host["sampled_tokens"]),
                    "start": (f"iter_{cfg.rl.base_iteration} of {os.path.abspath(cfg.rl.base_workdir)}"
                              if cfg.rl.base_iteration else "base")}
  info = {"workdir": workdir, "kind": "star", "iteration": iteration}
  if iteration == 0:
    if cfg.star.base_dir:
      return star_loop.make_base_model(cfg, workdir), {**info, "directory": cfg.star.base_dir}
    directory = os.path.join(workdir, "base")
  else:
    directory = os.path.join(workdir, f"iter_{iteration}")
  if not os.path.exists(os.path.join(directory, "train.json")):
    raise ValueError(f"{directory} holds no finished fine-tuning ({os.path.join(directory, 'train.json')} not found)")
  return star_loop.load_iteration_params(cfg, workdir, "base" if iteration == 0 else iteration, mesh), \
      {**info, "directory": directory}


def trained_problems(cfg: StarExperimentConfig, workdir: str, data: star_tasks.TaskData) -> set[arithmetic.Problem]:
  """Arithmetic problems a STaR or PG model of this config may have trained on: D and the base model's seed set."""
  task = data.task
  seed = {arithmetic.parse_question(r["prompt"].split("\n")[1]) for r in star_loop.base_examples(cfg, workdir)}
  return {task.problem(e) for e in data.questions} | seed


def heldout_sets(cfg: StarExperimentConfig, workdir: str, per_length: int = PER_LENGTH,
                 data: star_tasks.TaskData | None = None) -> tuple[dict[int, list[Example]], dict[int, dict]]:
  """({group: held-out examples}, {group: {"n", "from_test_split", "in_training_set"}}): the test split of
  each group first, then (arithmetic) untrained problems of that length up to `per_length` (module docstring).
  Other tasks: the first `per_length` of each group's held-out split (in_training_set None: not checked).
  `data`: the config's task data (star.tasks.load_task_data) when the caller has it."""
  data = data or star_tasks.load_task_data(cfg, workdir)
  if not data.tests:
    raise ValueError("the task data has no held-out split (config.eval.split)")
  sets, info = {}, {}
  if not star_tasks.is_arithmetic(cfg):
    for g in sorted(data.tests):
      sets[g] = list(data.tests[g][:per_length])
      info[g] = {"n": len(sets[g]), "from_test_split": len(sets[g]), "in_training_set": None}
    return sets, info
  task, trained = data.task, trained_problems(cfg, workdir, data)
  for n in sorted(data.tests):
    test = [task.problem(e) for e in data.tests[n]]
    chosen = test[:per_length]
    if len(chosen) < per_length:
      lo, hi = 10 ** (n - 1), 10 ** n
      population = (hi - lo) ** 2 <= per_length  # e.g. the 81 1-digit problems: nothing to hold out, take all
      chosen += arithmetic.sample_problems(n, per_length - len(chosen), HELDOUT_STREAM + cfg.data.seed,
                                           exclude=frozenset(set(test) if population else trained | set(test)))
    sets[n] = [task.example(p) for p in chosen]
    info[n] = {"n": len(chosen), "from_test_split": min(len(test), per_length),
               "in_training_set": sum(p in trained for p in chosen)}
  return sets, info


def greedy_correct(cfg: StarExperimentConfig, params, tokenizer, mesh, task, examples: Sequence[Example],
                   stops=(), exemplars: Sequence[Example] = ()) -> np.ndarray:
  """1(ŷ = y) of each example's greedy decode, as the loops' held-out evaluation decodes (evaluate.task_accuracy)."""
  sampling_config = sampling.SamplingConfig(max_new_tokens=cfg.eval.max_new_tokens, stop_sequences=stops)
  texts = evaluate.generate_texts(cfg.model, params, tokenizer, [task.few_shot_prompt(e, exemplars) for e in examples],
                                  mesh=mesh, sampling_config=sampling_config, batch_size=cfg.eval.batch_size,
                                  max_new_tokens=task.eval_cap(examples, cfg.eval.max_new_tokens))
  return np.asarray([task.is_correct(e, cut_at_stop(t, task.stop_strings)) for e, t in zip(examples, texts)], np.int32)


def sampled_correct(cfg: StarExperimentConfig, params, tokenizer, mesh, task, examples: Sequence[Example], *,
                    samples: int, temperature: float, rng: jax.Array, stops=(), exemplars: Sequence[Example] = (),
                    batch_size: int | None = None, progress=None) -> tuple[np.ndarray, int]:
  """(correct samples per example [n] in 0..samples, generated tokens): `samples` continuations of each prompt
  at `temperature`, each prompt prefilled once (evaluate.sample_continuations: grouped sampling). Every call has
  the same shape (the last chunk padded with its first prompt, prompts left-padded to one width): one compilation."""
  prompts = [task.few_shot_prompt(e, exemplars) for e in examples]
  width = -(-max(len(tokenizer.encode(p, add_bos=True)) for p in prompts) // 16) * 16
  sampling_config = sampling.SamplingConfig(max_new_tokens=cfg.eval.max_new_tokens, temperature=temperature,
                                            stop_sequences=stops)
  texts, generated = evaluate.sample_continuations(
      cfg.model, params, tokenizer, prompts, samples, mesh=mesh, sampling_config=sampling_config,
      batch_size=batch_size or cfg.eval.batch_size, rng=rng, max_new_tokens=task.eval_cap(examples, cfg.eval.max_new_tokens),
      prompt_multiple=width, key_stride=1, on_chunk=None if progress is None else progress.update)
  correct = np.zeros(len(examples), np.int32)
  for row, text in enumerate(texts):  # row i S + s: sample s of examples[i]
    correct[row // samples] += bool(task.is_correct(examples[row // samples], cut_at_stop(text, task.stop_strings)))
  return correct, int(generated.sum())


def _proportion(correct: int, n: int) -> dict:
  p = correct / n
  return {"correct": int(correct), "accuracy": p, "ci95": list(wilson(p, n))}


def evaluate_params(cfg: StarExperimentConfig, params, workdir: str, *, per_length: int = PER_LENGTH,
                    samples: int = SAMPLES, temperature: float = TEMPERATURE, seed: int = 0,
                    batch_size: int | None = None) -> dict:
  """{"settings", "lengths"} for `params` on the held-out sets of `cfg` (module docstring); samples = 0: greedy only."""
  tokenizer, mesh = star_tasks.tokenizer_and_mesh(cfg)
  data = star_tasks.load_task_data(cfg, workdir)
  sets, info = heldout_sets(cfg, workdir, per_length, data)
  task, exemplars = data.task, data.exemplars[:cfg.eval.num_shots]
  stops = star_tasks.stop_sequences(tokenizer, task.stop_strings)
  lengths = {}
  total = sum(len(v) for v in sets.values())
  with tqdm(total=total * (2 if samples else 1), desc="heldout", dynamic_ncols=True, leave=False) as progress:
    for g in sorted(sets):
      examples = sets[g]
      greedy = greedy_correct(cfg, params, tokenizer, mesh, task, examples, stops, exemplars)
      progress.update(len(examples))
      n = len(examples)
      result = {**info[g], "greedy": _proportion(int(greedy.sum()), n)}
      if samples:
        sampled, tokens = sampled_correct(cfg, params, tokenizer, mesh, task, examples, samples=samples,
                                          temperature=temperature, rng=jax.random.fold_in(jax.random.key(seed), g),
                                          stops=stops, exemplars=exemplars, batch_size=batch_size, progress=progress)
        mean = float(sampled.sum()) / (n * samples)
        result["sampled"] = {"correct": int(sampled.sum()), "samples": n * samples, "accuracy": mean,
                             "ci95": list(wilson(mean, n)), "tokens_per_sample": tokens / (n * samples)}
        result["sampled_correct"] = sampled.tolist()
      result["problems"] = [e.id for e in examples]
      result["greedy_correct"] = greedy.tolist()
      lengths[task.group_name(g)] = result
  return {"settings": {"per_length": per_length, "samples": samples, "temperature": temperature, "seed": seed,
                       "max_new_tokens": cfg.eval.max_new_tokens, "heldout_stream": HELDOUT_STREAM + cfg.data.seed},
          "lengths": lengths}


def default_out(workdir: str, iteration: int | None) -> str:
  if iteration is None:
    return os.path.join(workdir, EVAL_FILE)
  return os.path.join(workdir, "base" if iteration == 0 else f"iter_{iteration}", EVAL_FILE)


def evaluate_workdir(workdir: str, iteration: int | str | None = None, out: str | None = None, *,
                     data_dir: str | None = None, **kwargs) -> dict:
  """Evaluate a run's model (`load_model`; iteration "last": a STaR run's newest) and write the JSON to `out`
  (default `default_out`); `data_dir` replaces the config's data.data_dir (the problems do not change)."""
  t0 = time.perf_counter()
  workdir = os.path.abspath(workdir)
  cfg = workdir_config(workdir)
  if data_dir:
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=os.path.abspath(data_dir)))
  if iteration == "last":
    iteration = last_iteration(workdir)
  iteration = None if iteration is None else int(iteration)
  params, model = load_model(cfg, workdir, iteration, star_tasks.tokenizer_and_mesh(cfg)[1])
  result = {"model": model, **evaluate_params(cfg, params, workdir, **kwargs)}
  result["seconds"] = time.perf_counter() - t0
  out = out or default_out(workdir, iteration)
  if jax.process_index() == 0:
    io.write_json(out, result)
  return result


def summary_lines(result: dict) -> list[str]:
  lines = []
  for name, r in result["lengths"].items():
    g = r["greedy"]
    line = f"{name}: n={r['n']} greedy {g['accuracy']:.3f} [{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}]"
    if "sampled" in r:
      s = r["sampled"]
      line += f"; sampled {s['accuracy']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"
    lines.append(line + f" (from test split {r['from_test_split']}, in training set {r['in_training_set']})")
  return lines


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a STaR run (with --iteration) or a PG run")
  parser.add_argument("--iteration", default=None, help="STaR runs: n (0 = base model) or 'last'; PG runs: leave out")
  parser.add_argument("--out", default=None, help=f"output JSON (default <workdir>[/iter_<n>]/{EVAL_FILE})")
  parser.add_argument("--per_length", type=int, default=PER_LENGTH, help="problems per length (at most)")
  parser.add_argument("--samples", type=int, default=SAMPLES, help="samples per problem at --temperature (0: greedy only)")
  parser.add_argument("--temperature", type=float, default=TEMPERATURE)
  parser.add_argument("--seed", type=int, default=0, help="sampling rng")
  parser.add_argument("--batch_size", type=int, default=None, help="rows per sampler call (default config.eval.batch_size)")
  parser.add_argument("--data_dir", default=None, help="where the task data is built/read (default: the run's)")
  args = parser.parse_args(argv)
  if args.per_length < 1 or args.samples < 0 or args.temperature <= 0:
    parser.error("--per_length must be >= 1, --samples >= 0 and --temperature > 0")
  result = evaluate_workdir(args.workdir, args.iteration, args.out, data_dir=args.data_dir, per_length=args.per_length,
                            samples=args.samples, temperature=args.temperature, seed=args.seed, batch_size=args.batch_size)
  print("\n".join(summary_lines(result)))


if __name__ == "__main__":
  main()
