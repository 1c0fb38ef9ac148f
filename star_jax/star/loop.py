"""The STaR outer loop (Zelikman et al. 2022, "STaR: Bootstrapping Reasoning With Reasoning", arXiv 2203.14465).

Algorithm 1. Given a base model M and questions D = {(x_i, y_i)} without rationales, for n = 1..N:

  1. generate (r_i, ŷ_i) ~ M_{n-1}(x_i) for every question (or a reproducible `fraction_of_D` of them);
  2. keep D_n = {(x_i, r_i, y_i) : 1(ŷ_i = y_i)};
  3. rationalize: for the failures, generate (r_i^rat, ŷ_i^rat) ~ M_{n-1}(x_i + hint(y_i)) and keep
     D_n^rat = {(x_i, r_i^rat, y_i) : 1(ŷ_i^rat = y_i)}, saved WITHOUT the hint (plain prompt x_i);
  3b. search (`star.search`, star/search_phase.py): for the questions still failed, a Tree-of-Thoughts search
     with M_{n-1} valued by the `value` section; found trajectories 1(ŷ = y) are kept as D_n^search, saved as
     ordinary rationales (plain prompt, no search trace);
  4. M_n = train(M, D_n ∪ D_n^rat ∪ D_n^search) for ceil(base_steps * growth^(n-1)) steps, always FROM THE BASE MODEL M
     (`restart_from_base=False` continues from M_{n-1}, an ablation);
  5. evaluate M_n on held-out questions (greedy accuracy, overall and per group: digit length for arithmetic).

The loop sees a task only through star_jax.data.tasks.Task (prompt, hinted_prompt, is_correct, trim,
few_shot_prompt) and Example.group; star/tasks.py sets up each task's data, tokenizer and base model:
arithmetic (generated data, character tokenizer, a base model trained here) or GSM8K / CommonsenseQA (the
user's JSONL files and a pretrained Hugging Face checkpoint, config.model.hf_path, with optional few-shot
exemplars before every generation prompt: star.num_shots).

Every phase writes its output atomically under `<workdir>/iter_<n>/` and is skipped when that output
exists, so a killed run re-started with the same command ends with the same parameters and metrics:

  iter_0/eval.json                 the base model's held-out accuracy
  iter_<n>/generated.jsonl         every generation of step 1, with `correct` (star/data.py: record format)
  iter_<n>/rationalized.jsonl      every hinted generation of step 3 (prompt = the plain prompt)
  iter_<n>/searched.jsonl          every searched question of step 3b, with its cost (search/chunk_<k>.jsonl
                                   while it runs: a killed search resumes at its first unsaved chunk)
  iter_<n>/checkpoints/, train.json  step 4 (the Checkpointer resumes mid-training; train.json marks the end)
  iter_<n>/eval.json               step 5
  iter_<n>/timings.json            wall time of the generation phases (written just before their outputs)
  star_metrics.jsonl, star_report.md, star_accuracy.png, logs/ (TensorBoard)   rewritten every iteration

A workdir belongs to one config: `star_config.json` (written by the first run, before anything else) and
`base/base_config.json` (the fields the base model depends on) are compared with the config of every later
run, which is refused, writing nothing, when a field differs (`check_workdir`). A finished phase whose
final checkpoint no longer restores is trained again from the newest checkpoint that does.

Every rng derives from (star.seed, iteration, phase) (io.phase_key / phase_seed). The base model
comes from the caller: `base_params` loads config.model.hf_path, or (arithmetic) `make_base_model` trains
one on seed scratchpads disjoint from D and the test sets; `star.base_dir` names a base model trained elsewhere
(game24: the tot_game24 study's policy/).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

from star_jax import checkpoint, config, evaluate, io, metrics, sampling, sharding, train
from star_jax.star import data as sd
from star_jax.star import report as star_report
from star_jax.star import search_phase
from star_jax.star import tasks as star_tasks
from star_jax.star.config import StarConfig, StarExperimentConfig

CONFIG_FILE = "star_config.json"  # in the workdir: the config the run was started with
BASE_CONFIG_FILE = os.path.join("base", "base_config.json")  # the config the base model was trained with
# The star fields the base model depends on (the others may differ between a STaR run and e.g. a PG run
# that shares its base model through rl.base_workdir).
BASE_STAR_FIELDS = ("seed_per_digit", "one_digit_repeats", "carry_fact_digits", "seed_steps", "seed")
_BASE_SECTIONS = ("model", "data", "train", "star", "hf_path")  # what check_base compares (star: BASE_STAR_FIELDS)
_SECTIONS = (*_BASE_SECTIONS, "search", "value")  # a run's whole recipe (the search phase's settings included)
_LABELS = {"hf_path": "model.hf_path"}


@dataclasses.dataclass
class _Context:
  cfg: StarExperimentConfig
  generator: Callable  # params -> sd.Generate
  workdir: str
  mesh: jax.sharding.Mesh
  tokenizer: Any  # CharTokenizer or HFTokenizer
  data: star_tasks.TaskData
  cap: Callable  # list[Example] -> generation cap (star_tasks.generation_cap)
  stops: tuple  # the task's stop strings as token sequences (star_tasks.stop_sequences)

  @property
  def task(self):
    return self.data.task

  @property
  def questions(self) -> list:
    return self.data.questions  # D (Examples)

  @property
  def tests(self) -> dict:
    return self.data.tests  # group -> held-out Examples

  def iter_dir(self, n: int) -> str:
    return os.path.join(self.workdir, f"iter_{n}")


def check_workdir(cfg: StarExperimentConfig, workdir: str) -> None:
  """Refuse (ValueError naming every changed field, nothing written) a workdir a STaR run with another config
  made; the first run writes `<workdir>/star_config.json`. star.iterations may grow and the generation batch
  size, data_dir, eval, checkpoint and mesh settings may change between runs of one workdir."""
  config.check_resumable(os.path.join(os.path.abspath(workdir), CONFIG_FILE), cfg, _SECTIONS,
                         ignored={("star", "iterations"), ("star", "generate_batch_size"), ("data", "data_dir")},
                         labels=_LABELS, what="STaR run")


def check_base(cfg: StarExperimentConfig, workdir: str) -> None:
  """`check_workdir` for `<workdir>/base/` over the fields the base model depends on (model, data, train,
  the star.seed_* fields): also guards a run killed while the base model trains, and a PG run's base."""
  other_star = {("star", f.name) for f in dataclasses.fields(StarConfig) if f.name not in BASE_STAR_FIELDS}
  config.check_resumable(os.path.join(os.path.abspath(workdir), BASE_CONFIG_FILE), cfg, _BASE_SECTIONS,
                         ignored=other_star | {("data", "data_dir")}, labels=_LABELS, what="base model")


def _setup(cfg: StarExperimentConfig, workdir: str, check: Callable | None = None) -> _Context:
  """The run's context; `check(cfg, workdir)` runs after the mesh is built and before anything is written."""
  if not isinstance(cfg, StarExperimentConfig):
    raise TypeError(f"STaR needs a StarExperimentConfig (config.star_experiment_from_config), got {type(cfg).__name__}")
  tokenizer, mesh = star_tasks.tokenizer_and_mesh(cfg)
  if check is not None:
    check(cfg, workdir)
  data = star_tasks.load_task_data(cfg, workdir)
  ctx = _Context(cfg, None, os.path.abspath(workdir), mesh, tokenizer, data,
                 star_tasks.generation_cap(cfg, data.task, tokenizer),
                 star_tasks.stop_sequences(tokenizer, data.task.stop_strings))
  ctx.generator = functools.partial(sampler_generator, ctx)
  return ctx


# ---- fine-tuning (the base model and every iteration) ----

def _fine_tune(cfg: StarExperimentConfig, mesh, tokenizer, examples: list[dict], init_params, num_steps: int,
               directory: str, **kwargs):
  """`train.fine_tune` with the experiment's model/train/checkpoint sections and packing."""
  return train.fine_tune(cfg.model, cfg.train, cfg.checkpoint, mesh, tokenizer, examples, init_params, num_steps,
                         directory, pack=cfg.data.pack, **kwargs)


def _restore_params(cfg: StarExperimentConfig, mesh, directory: str):
  return train.restore_params(cfg.model, cfg.train, mesh, directory, keep=cfg.checkpoint.keep)


def load_iteration_params(cfg: StarExperimentConfig, workdir: str, iteration: int, mesh=None):
  """M_n of a (finished) iteration, or the cached base model for iteration "base" / make_base_model."""
  mesh = mesh or sharding.make_mesh(cfg.mesh.axes, name="config.mesh.axes")
  name = "base" if iteration == "base" else f"iter_{iteration}"
  return _restore_params(cfg, mesh, os.path.join(os.path.abspath(workdir), name))


def base_params(cfg: StarExperimentConfig, workdir: str):
  """The base model M: the weights of config.model.hf_path, of star.base_dir, or (arithmetic) `make_base_model`'s."""
  if cfg.hf_path:
    return star_tasks.load_hf_base(cfg, star_tasks.tokenizer_and_mesh(cfg)[1])
  return make_base_model(cfg, workdir)


def _restore_base_dir(cfg: StarExperimentConfig):
  """The parameters of the finished training run in star.base_dir (checkpoints/ + train.json)."""
  directory = cfg.star.base_dir
  if not os.path.exists(os.path.join(directory, "train.json")):
    raise ValueError(f"config.star.base_dir={directory!r} holds no finished training run (no train.json)")
  return _restore_params(cfg, star_tasks.tokenizer_and_mesh(cfg)[1], directory)


def make_base_model(cfg: StarExperimentConfig, workdir: str):
  """Arithmetic: train (or load the cached) base model M in `<workdir>/base/` on the seed examples; params.

  Seed examples: all 81 one-digit problems (star.one_digit_repeats times), `star.seed_per_digit` problems per length
  2..max_train_digits from the rationales split (disjoint from D and the test sets), and (with
  `star.carry_fact_digits`) the few 2..carry_fact_digits-digit problems of that split that show every
  single-digit fact with a carry in (star.data.carry_fact_problems), each with its full scratchpad,
  once with the plain prompt and once with the hinted prompt (so that rationalization has a
  format to follow). Never trained on a rationale of a question in D or a test set of >= 2 digits.
  With star.base_dir: that directory's trained model, for any task.
  """
  if cfg.star.base_dir:
    return _restore_base_dir(cfg)
  if not star_tasks.is_arithmetic(cfg):
    raise ValueError(f"the {cfg.data.task} task has no seed-trained base model: give config.model.hf_path "
                     "(star.base_params loads it)")
  ctx = _setup(cfg, workdir, check=check_base)
  directory = os.path.join(ctx.workdir, "base")
  if os.path.exists(os.path.join(directory, "train.json")):
    try:
      return _restore_params(cfg, ctx.mesh, directory)
    except checkpoint.CheckpointError as e:
      logging.warning("%s; training the base model again from its newest checkpoint that restores", e)
  examples = _seed_examples(ctx)
  io.write_jsonl(os.path.join(directory, "seed.jsonl"), examples)
  with metrics.MetricWriter(os.path.join(ctx.workdir, "logs")) as writer:
    params, _ = _fine_tune(cfg, ctx.mesh, ctx.tokenizer, examples, None, cfg.star.seed_steps, directory,
                          data_seed=io.phase_seed(cfg.star.seed, 0, sd.TRAIN_DATA), init_seed=cfg.train.seed,
                          writer=writer, description="base/train")
  return params


def base_examples(cfg: StarExperimentConfig, workdir: str) -> list[dict]:
  """The seed examples `make_base_model` trains on (plain and hinted prompts)."""
  return _seed_examples(_setup(cfg, workdir))


def _seed_examples(ctx: _Context) -> list[dict]:
  cfg, task = ctx.cfg, ctx.task
  rationales = sd.problems_from_source(ctx.data.builder.as_data_source("rationales"))
  exclude = {task.problem(e) for e in ctx.questions + [e for t in ctx.tests.values() for e in t]}
  problems = sd.seed_problems(rationales, cfg.data.max_train_digits, cfg.star.seed_per_digit,
                              io.phase_seed(cfg.star.seed, 0, sd.SUBSAMPLE), exclude)
  if cfg.star.carry_fact_digits:
    chosen = set(problems)
    problems += [p for p in sd.carry_fact_problems(rationales, cfg.star.carry_fact_digits, exclude) if p not in chosen]
  problems += [p for p in problems if p.n_digits == 1] * (cfg.star.one_digit_repeats - 1)
  return sd.seed_examples(problems, hinted=True)


# ---- the loop ----

def sampler_generator(ctx: _Context, params) -> sd.Generate:
  """The default generator: the KV-cache sampler (greedy or star.temperature), batches of generate_batch_size,
  stopping at EOS, the generation cap and the task's stop strings (star_tasks.stop_sequences)."""
  cfg = ctx.cfg
  sampling_config = sampling.SamplingConfig(max_new_tokens=cfg.star.max_new_tokens, temperature=cfg.star.temperature,
                                            stop_sequences=ctx.stops)

  def generate(prompts, max_new_tokens, rng):
    return evaluate.generate_texts(cfg.model, params, ctx.tokenizer, prompts, mesh=ctx.mesh,
                                   sampling_config=sampling_config, batch_size=cfg.star.generate_batch_size,
                                   rng=rng, max_new_tokens=max_new_tokens)
  return generate


def _generation_phase(ctx: _Context, n: int, name: str, examples, params_fn, *, hint: bool) -> list[dict]:
  """Generate (hinted or not) for `examples` with M_{n-1}, or load `iter_<n>/<name>.jsonl` if it exists."""
  path = os.path.join(ctx.iter_dir(n), f"{name}.jsonl")
  if os.path.exists(path):
    return io.read_jsonl(path)
  t0 = time.perf_counter()
  records = []
  if examples:
    phase = sd.RATIONALIZE if hint else sd.GENERATE
    records = sd.generate_task_records(ctx.task, examples, ctx.generator(params_fn()),
                                       io.phase_key(ctx.cfg.star.seed, n, phase), hint=hint, cap=ctx.cap,
                                       exemplars=ctx.data.exemplars[:ctx.cfg.star.num_shots])
  _write_seconds(ctx, n, name, time.perf_counter() - t0)
  io.write_jsonl(path, records)
  return records


def _write_seconds(ctx: _Context, n: int, name: str, seconds: float) -> None:
  """Record a generation phase's wall time in iter_<n>/timings.json (before the phase's output is written)."""
  timings_path = os.path.join(ctx.iter_dir(n), "timings.json")
  timings = io.read_json(timings_path) if os.path.exists(timings_path) else {}
  io.write_json(timings_path, {**timings, f"seconds_{name}": seconds})


def _search_phase(ctx: _Context, n: int, examples, params_fn) -> list[dict]:
  """Step 3b: search for `examples` with M_{n-1} (star/search_phase.py), or load `iter_<n>/searched.jsonl`.

  The wall time recorded is that of the run which finished the phase (a resumed one counts only its chunks).
  """
  path = os.path.join(ctx.iter_dir(n), "searched.jsonl")
  if os.path.exists(path):
    return io.read_jsonl(path)
  t0 = time.perf_counter()
  records = []
  if examples:
    cfg = ctx.cfg
    params = params_fn()
    records = search_phase.search_records(
        ctx.task, examples, search_phase.make_policy(cfg, params, ctx.tokenizer, ctx.mesh),
        search_phase.make_value(cfg, ctx.task, ctx.tokenizer, ctx.mesh), cfg.search,
        io.phase_key(cfg.star.seed, n, sd.SEARCH), os.path.join(ctx.iter_dir(n), "search"), cfg.star.search_chunk)
  _write_seconds(ctx, n, "searched", time.perf_counter() - t0)
  io.write_jsonl(path, records)
  return records


def _eval_phase(ctx: _Context, n: int, params_fn) -> dict:
  path = os.path.join(ctx.iter_dir(n), "eval.json")
  if os.path.exists(path):
    return io.read_json(path)
  t0 = time.perf_counter()
  cfg, task = ctx.cfg, ctx.task
  if ctx.tests:
    accuracy = evaluate.task_accuracy(cfg.model, params_fn(), ctx.tokenizer, task, ctx.tests, mesh=ctx.mesh,
                                      batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
                                      exemplars=ctx.data.exemplars[:cfg.eval.num_shots], stop_sequences=ctx.stops)
    if star_tasks.is_arithmetic(cfg):  # the lengths D has questions of
      train_lengths = range(1, cfg.data.max_train_digits + 1)
      accuracy["acc_train_lengths"] = evaluate.pooled_accuracy(accuracy, {k: len(ctx.tests[k]) for k in train_lengths})
  else:
    accuracy = {}  # no held-out split given
  if ctx.tests and (cfg.star.eval_samples or cfg.star.eval_search):
    accuracy.update(search_phase.heldout_extras(cfg, params_fn(), ctx.tokenizer, ctx.mesh, task, ctx.tests, ctx.stops,
                                                io.phase_key(cfg.star.seed, n, sd.EVAL_EXTRA)))
  result = {"accuracy": accuracy, "seconds": time.perf_counter() - t0}
  io.write_json(path, result)
  return result


class _Params:
  """The base params and the most recent M_n, restored from checkpoints on demand; an iteration whose final
  checkpoint does not restore is fine-tuned again (`retrain[n]`, resuming from its newest good checkpoint)."""

  def __init__(self, ctx: _Context, base_params):
    self._ctx, self._base, self._latest = ctx, base_params, (None, None)
    self.retrain: dict[int, Callable[[], Any]] = {}

  def get(self, n: int):
    if n == 0:
      return self._base
    if self._latest[0] != n:
      try:
        params = _restore_params(self._ctx.cfg, self._ctx.mesh, self._ctx.iter_dir(n))
      except checkpoint.CheckpointError as e:
        if n not in self.retrain:
          raise
        logging.warning("%s; fine-tuning iteration %d again from its newest checkpoint that restores", e, n)
        params = self.retrain[n]()
      self._latest = (n, params)
    return self._latest[1]

  def put(self, n: int, params) -> None:
    self._latest = (n, params)


def _generated_tokens(ctx: _Context, records: list[dict]) -> int:
  """Tokens of the generations in `records` (each cut at its stop string): STaR's sampling cost, the
  axis on which experiments/pg_star_arithmetic compares it with policy-gradient STaR."""
  return sum(len(ctx.tokenizer.encode(r["target"])) for r in records)


def _iteration(ctx: _Context, n: int, store: _Params, writer) -> dict:
  cfg, star = ctx.cfg, ctx.cfg.star
  questions = sd.subsample(ctx.questions, star.fraction_of_D, star.seed, n)
  generated = _generation_phase(ctx, n, "generated", questions, lambda: store.get(n - 1), hint=False)
  rationalized = []
  if star.rationalize:
    rationalized = _generation_phase(ctx, n, "rationalized", sd.failed_examples(ctx.task, generated),
                                     lambda: store.get(n - 1), hint=True)
  searched = []
  if star.search:
    searched = _search_phase(ctx, n, sd.failed_examples(ctx.task, rationalized if star.rationalize else generated),
                             lambda: store.get(n - 1))

  def fine_tune():
    examples = sd.training_examples(generated) + sd.training_examples(rationalized) + sd.training_examples(searched)
    if star.mix_seed:
      examples += _seed_examples(ctx)
    examples = star_tasks.fitting_examples(examples, ctx.tokenizer, cfg.train.seq_len)
    init_params = store.get(0) if star.restart_from_base else store.get(n - 1)
    return _fine_tune(cfg, ctx.mesh, ctx.tokenizer, examples, init_params,
                      sd.steps_for_iteration(star.base_steps, star.growth, n), ctx.iter_dir(n),
                      data_seed=io.phase_seed(star.seed, n, sd.TRAIN_DATA),
                      init_seed=io.phase_seed(star.seed, n, sd.TRAIN_INIT), writer=writer,
                      description=f"iter_{n}/train")

  train_json = os.path.join(ctx.iter_dir(n), "train.json")
  if os.path.exists(train_json):
    train_info = io.read_json(train_json)
    store.retrain[n] = lambda: fine_tune()[0]
  else:
    params, train_info = fine_tune()
    store.put(n, params)
  evaluation = _eval_phase(ctx, n, lambda: store.get(n))

  timings_path = os.path.join(ctx.iter_dir(n), "timings.json")
  timings = io.read_json(timings_path) if os.path.exists(timings_path) else {}
  if star_tasks.is_arithmetic(cfg):
    groups = range(1, cfg.data.max_train_digits + 1)
  else:
    groups = sorted({e.group for e in ctx.questions})
  record = {"iteration": n, "questions": len(questions),
            "kept_generated": sum(r["correct"] for r in generated),
            "kept_rationalized": sum(r["correct"] for r in rationalized),
            "sampled_tokens": _generated_tokens(ctx, generated) + _generated_tokens(ctx, rationalized),
            "train_examples": train_info["examples"], "train_steps": train_info["steps"],
            "train_loss": train_info["final_loss"]}
  sources = [("generated", generated), ("rationalized", rationalized)]
  if star.search:
    sources.append(("searched", searched))
    record.update({"searched": len(searched), "kept_searched": sum(r["correct"] for r in searched),
                   "search_tokens": sum(r["generated_tokens"] for r in searched),
                   "search_reward_model_tokens": sum(r["reward_model_tokens"] for r in searched),
                   "seconds_searched": timings.get("seconds_searched")})
  for source, records in sources:
    record.update({f"kept_{source}_{ctx.task.group_name(g)}": v
                   for g, v in sd.kept_by_group(records, groups).items()})
  record.update(evaluation["accuracy"])
  record.update({"seconds_generated": timings.get("seconds_generated"),
                 "seconds_rationalized": timings.get("seconds_rationalized"),
                 "seconds_train": train_info["seconds"], "seconds_eval": evaluation["seconds"]})
  return record


def run(cfg: StarExperimentConfig, workdir: str, base_params,
        generator: Callable[[Any], sd.Generate] | None = None) -> list[dict]:
  """Run (or resume) star.iterations STaR iterations from `base_params`; returns one record per iteration.

  Record 0 is the base model's evaluation; record n has the questions generated on, examples kept by
  generation and by rationalization (total and per group: kept_<source>_<n>digit for arithmetic,
  kept_<source>_group<g> otherwise), training steps/examples/final loss, held-out accuracy (acc_overall and
  per group; arithmetic: acc_<n>digit and acc_train_lengths) and each phase's wall time.
  Records go to `<workdir>/star_metrics.jsonl`, TensorBoard (`logs/`, tags star/*), `star_report.md`,
  `star_accuracy.png`, and a one-line summary per iteration to stdout.

  `generator(params) -> Generate` replaces the KV-cache sampler for steps 1 and 3 (e.g. a search
  procedure, or a stub in tests); evaluation always decodes greedily with the sampler.
  """
  ctx = _setup(cfg, workdir, check=check_workdir)  # a workdir of another config is refused before any write
  if generator is not None:
    ctx.generator = generator
  metrics_path = os.path.join(ctx.workdir, "star_metrics.jsonl")
  logged = {r["iteration"] for r in io.read_jsonl_if_exists(metrics_path)}
  store = _Params(ctx, base_params)
  records: list[dict] = []
  with metrics.MetricWriter(os.path.join(ctx.workdir, "logs")) as writer:
    for n in range(0, cfg.star.iterations + 1):
      if n == 0:
        evaluation = _eval_phase(ctx, 0, lambda: store.get(0))
        record = {"iteration": 0, **evaluation["accuracy"], "seconds_eval": evaluation["seconds"]}
      else:
        record = _iteration(ctx, n, store, writer)
      records.append(record)
      if n not in logged:
        writer.write_scalars(n, {f"star/{k}": v for k, v in record.items()
                                 if k != "iteration" and isinstance(v, (int, float))})
        writer.flush()
      if jax.process_index() == 0:
        print(star_report.summary_line(record, cfg.data.max_train_digits), flush=True)
        io.write_jsonl(metrics_path, records)
        star_report.write_report(cfg, ctx.workdir, records)
  return records
