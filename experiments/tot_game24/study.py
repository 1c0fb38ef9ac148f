"""Tree-of-Thoughts vs chain-of-thought on the Game of 24 (issue 15, "The comparison"), end to end:

  1. policy   a base model trained from scratch on the seed set (data/game24_seed.py: single-step facts, random
              legal walks, solved examples for <= 5% of the train puzzles); it writes legal steps, it cannot plan;
  2. cot      on the held-out test puzzles: one greedy output and K samples per puzzle, judged by `is_correct`
              and labelled by `check_steps` (base competence: sampled steps `correct`, pass@1; CoT best-of-k);
  3. reward   samples of the policy on train puzzles with the exact step labels (`check_steps(...).good`: every
              step so far correct and the numbers left can still make 24); a process reward model (PRM) trained
              on them from the policy's weights (Lightman et al. 2023, arXiv 2305.20050); its step AUC on held-out
              test samples;
  4. tot      ToT-BFS (Yao et al. 2023, arXiv 2305.10601, star_jax.search) with breadth b and n samples per state,
              valued by the PRM, by the policy's own log-prob, and by the exact oracle (an UPPER BOUND: it knows
              which states can still make 24);
  5. report   success rate against generated tokens per puzzle: CoT best-of-k with the exact checker (the
              paper's "best of k"; k samples cost k times a sample's mean tokens) against each ToT setting.

Every phase writes its output atomically under the workdir and is skipped when it exists, so a killed run
resumes to the same results; the policy and reward model resume mid-training from their checkpoints.

  python -m experiments.tot_game24.study --config=experiments/configs/tot_game24.py --workdir=runs/tot_game24 \
      --results_dir=experiments/tot_game24
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from fractions import Fraction

import jax
import numpy as np

from experiments.tot_game24 import report
from star_jax import checkpoint, evaluate, host_malloc, io, sampling, sharding, train
from star_jax import config as config_lib
from star_jax.data import CharTokenizer, game24, game24_seed, make_train_dataset
from star_jax.models import HeadConfig, ModelConfig
from star_jax.prm import logprob as prm_logprob
from star_jax.prm import reward as prm_reward
from star_jax.prm import steps as prm_steps
from star_jax.prm import train as prm_train
from star_jax.search import LogProbValue, ModelStepSampler, PRMValue, SearchConfig, ValueConfig, bfs, oracle_for

CONFIG_FILE = "study_config.json"  # in the workdir: the config the study was started with


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  seed: int = 0  # seed set, sampling and search rngs derive from it
  split_seed: int = game24.SPLIT_SEED  # game24.split: train (seed set, reward data) / held-out test puzzles
  seed_examples: int = 150_000  # size of the base model's seed set (game24_seed.seed_set; facts/walks/solved)
  policy_stop_step: int = 0  # > 0: the base model is the checkpoint at this step of policy_train.steps's schedule
  polish_steps: int = 0  # > 0: a second schedule of this many steps continues the base model on fresh seed examples
  polish_lr: float = 5e-4  # its peak lr (policy_train's warmup, then cosine decay over polish_steps)
  hinted_fraction: float = 0.2  # of the seed walks / solved examples shown with their own expression as a hint
  test_puzzles: int = 200  # held-out test puzzles compared on (the first of the split's test list)
  temperature: float = 1.0  # CoT sampling and reward-data sampling (the search has its own)
  cot_samples: int = 100  # K samples per test puzzle: CoT best-of-k for k = 1..K
  cot_tokens: int = game24.MAX_GENERATION_CHARS  # generation cap of a CoT output (characters = tokens)
  reward_puzzles: int = 1000  # train puzzles the reward data is sampled on (every 10th: validation only)
  reward_samples: int = 4  # samples per reward puzzle
  auc_samples: int = 4  # test samples per puzzle the PRM scores for its held-out step AUC
  tot: tuple[tuple[int, int], ...] = ((5, 5), (1, 5), (5, 3), (1, 10))  # (breadth b, samples n), run in this order
  values: tuple[str, ...] = ("prm", "logprob", "oracle")  # value functions (search.values.KINDS)
  generate_batch_size: int = 512  # rows decoded together (CoT)

  def __post_init__(self):
    for key in ("seed_examples", "test_puzzles", "cot_samples", "cot_tokens", "reward_puzzles", "reward_samples",
                "auc_samples", "generate_batch_size"):
      if getattr(self, key) <= 0:
        raise ValueError(f"config.study.{key} must be > 0, got {getattr(self, key)}")
    if self.temperature <= 0:
      raise ValueError(f"config.study.temperature must be > 0 (sampling), got {self.temperature}")
    if not 0 <= self.hinted_fraction <= 1:
      raise ValueError(f"config.study.hinted_fraction must be in [0, 1], got {self.hinted_fraction}")
    if self.polish_steps < 0 or self.polish_lr <= 0:
      raise ValueError(f"config.study.polish_steps must be >= 0 and polish_lr > 0, got {self.polish_steps}, {self.polish_lr}")
    if self.polish_steps and self.policy_stop_step:
      raise ValueError("config.study.polish_steps continues a finished base schedule: set policy_stop_step = 0")
    if self.policy_stop_step < 0:
      raise ValueError(f"config.study.policy_stop_step must be >= 0, got {self.policy_stop_step}")
    if self.auc_samples > self.cot_samples:
      raise ValueError(f"config.study.auc_samples={self.auc_samples} must be <= cot_samples={self.cot_samples}")
    if not self.tot or any(len(t) != 2 or min(t) < 1 for t in self.tot):
      raise ValueError(f"config.study.tot must list (breadth, samples) pairs >= 1, got {self.tot}")
    bad = [v for v in self.values if v not in ("prm", "logprob", "oracle")]
    if not self.values or bad:
      raise ValueError(f"config.study.values must be from ('prm', 'logprob', 'oracle'), got {self.values}")


@dataclasses.dataclass(frozen=True)
class ToTStudyConfig:
  model: ModelConfig  # the policy (and the reward model's trunk)
  policy_train: config_lib.TrainConfig  # the base model on the seed set (steps = its length)
  reward_train: config_lib.TrainConfig  # the PRM on the policy's labelled samples
  checkpoint: config_lib.CheckpointConfig
  mesh: config_lib.MeshConfig
  search: SearchConfig  # ToT settings shared by every run (breadth and samples come from study.tot)
  value: ValueConfig  # PRM value: aggregation, scoring width (kind comes from study.values)
  study: StudyConfig


def study_from_config(config: Mapping) -> ToTStudyConfig:
  """Validate the ConfigDict of experiments/configs/tot_game24.py (unknown keys are errors)."""
  return config_lib.from_mapping(ToTStudyConfig, config)


def puzzles(s: StudyConfig) -> dict[str, list[tuple[int, ...]]]:
  """{"train": the split's train puzzles, "test": the first `test_puzzles` held-out puzzles}."""
  train_puzzles, test_puzzles = game24.split(s.split_seed)
  if s.test_puzzles > len(test_puzzles):
    raise ValueError(f"config.study.test_puzzles={s.test_puzzles} > {len(test_puzzles)} held-out puzzles")
  return {"train": list(train_puzzles), "test": list(test_puzzles[:s.test_puzzles])}


def base_model(cfg: ToTStudyConfig, workdir: str, mesh):
  """Phase 1: the policy trained from scratch on the seed set, then (study.polish_steps > 0) polished; each stage
  resumes, a finished one is loaded.

  Polishing is a second cosine schedule (a warm restart, Loshchilov & Hutter 2017, arXiv 1608.03983) of
  polish_steps at peak lr polish_lr, from the first stage's parameters, on a fresh seed set (seed + 1: the same
  mixture, new walks and facts), saved in `<workdir>/policy_polish/`.
  """
  s, tc = cfg.study, cfg.policy_train
  params = _first_stage(cfg, os.path.join(workdir, "policy"), mesh)
  if not s.polish_steps:
    return params
  directory = os.path.join(workdir, "policy_polish")
  polish = dataclasses.replace(tc, steps=s.polish_steps, lr=s.polish_lr)
  if os.path.exists(os.path.join(directory, "train.json")):
    return train.restore_params(cfg.model, polish, mesh, directory, keep=cfg.checkpoint.keep)
  examples = game24_seed.training_pairs(game24_seed.seed_set(puzzles(s)["train"], s.seed_examples, s.seed + 1),
                                        hinted_fraction=s.hinted_fraction, seed=s.seed + 1)
  params, _ = train.fine_tune(cfg.model, polish, cfg.checkpoint, mesh, CharTokenizer(), examples, params, s.polish_steps,
                              directory, pack=True, data_seed=s.seed + 1, init_seed=tc.seed, description="polish")
  return params


def _first_stage(cfg: ToTStudyConfig, directory: str, mesh):
  """The base model's first schedule, from scratch (`policy/`).

  With study.policy_stop_step = S > 0 the run stops at step S of the schedule of policy_train.steps (the lr has
  not finished its decay): the same parameters as `train.fine_tune`'s checkpoint at step S, the same data order.
  """
  s, tc = cfg.study, cfg.policy_train
  if os.path.exists(os.path.join(directory, "train.json")):
    return train.restore_params(cfg.model, tc, mesh, directory, keep=cfg.checkpoint.keep)
  examples = game24_seed.training_pairs(game24_seed.seed_set(puzzles(s)["train"], s.seed_examples, s.seed),
                                        hinted_fraction=s.hinted_fraction, seed=s.seed)
  if not 0 < s.policy_stop_step < tc.steps:
    params, _ = train.fine_tune(cfg.model, tc, cfg.checkpoint, mesh, CharTokenizer(), examples, None, tc.steps, directory,
                                pack=True, data_seed=s.seed, init_seed=tc.seed, description="policy")
    return params
  t0 = time.perf_counter()
  tx = train.make_optimizer(tc)  # the schedule spans tc.steps, as in fine_tune
  abstract_state, _ = train.state_shardings(cfg.model, tx, mesh)
  last = {}
  with checkpoint.Checkpointer(os.path.join(directory, "checkpoints"), keep=cfg.checkpoint.keep) as ckpt:
    batches = iter(make_train_dataset(examples, CharTokenizer(), batch_size=tc.batch_size // jax.process_count(),
                                            seq_len=tc.seq_len, seed=s.seed, pack=True))
    if ckpt.latest_step() is not None:
      if ckpt.latest_step() > s.policy_stop_step:
        raise ValueError(f"{directory}: a checkpoint at step {ckpt.latest_step()} is past study.policy_stop_step="
                         f"{s.policy_stop_step}")
      state, data_state = ckpt.restore(abstract_state)
      batches.set_state(data_state)
    else:
      state = train.create_train_state(cfg.model, tx, mesh, tc.seed)
    state = train.train_loop(state, train.compile_train_step(cfg.model, tc, mesh, tx), batches, mesh,
                             num_steps=s.policy_stop_step, checkpointer=ckpt, checkpoint_config=cfg.checkpoint,
                             log_every=tc.log_every, description="policy", on_log=lambda step, m: last.update(m))
  io.write_json(os.path.join(directory, "train.json"), {"steps": s.policy_stop_step, "schedule_steps": tc.steps,
                                                         "examples": len(examples), "final_loss": last.get("loss"),
                                                         "seconds": time.perf_counter() - t0})
  return state.params


# ---- sampling and judging ----

def generate(cfg: ToTStudyConfig, mesh, params, prompts: Sequence[str], n: int, *, temperature: float,
             max_new_tokens: int, rng: jax.Array) -> list[tuple[str, int]]:
  """(text, generated tokens) of n continuations of every prompt, row i * n + j = continuation j of prompt i.

  `evaluate.sample_continuations` (each prompt prefilled once for its n rows; calls of a fixed number of prompts,
  so the sampler compiles once per prompt-length bucket). The token count includes EOS (what the policy
  generated), as the search's budget does.
  """
  scfg = sampling.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature)
  texts, generated = evaluate.sample_continuations(cfg.model, params, CharTokenizer(), prompts, n, mesh=mesh,
                                                   sampling_config=scfg, batch_size=cfg.study.generate_batch_size,
                                                   rng=rng, prompt_multiple=32, key_stride=1)
  return [(text, int(tokens)) for text, tokens in zip(texts, generated)]


def _has_fraction(check: game24.StepCheck) -> bool:
  """The step line involves a non-integer (an operand, the result or a number left)."""
  parsed = game24.parse_step(check.text)
  if parsed is None:
    return False
  (a, _, b, r), left = parsed
  return any(Fraction(x).denominator != 1 for x in (a, b, r, *left))


def judge(puzzle: Sequence[int], text: str, tokens: int) -> dict:
  """One output, judged exactly: correct answer (`is_correct`), its step checks, and whether it reached
  `left: 24` with every step correct."""
  question = game24.format_numbers(puzzle)
  checks = game24.check_steps(question, text)
  correct_steps = [c.correct for c in checks]
  reached = bool(checks) and all(correct_steps) and checks[-1].left == (Fraction(24),)
  return {"puzzle": question, "text": text, "tokens": tokens, "correct": game24.is_correct(question, text),
          "reached24": reached, "steps_correct": correct_steps, "steps_good": [c.good for c in checks],
          "steps_fraction": [_has_fraction(c) for c in checks]}


def cot_samples(cfg: ToTStudyConfig, mesh, params, test: Sequence[tuple[int, ...]], rng) -> dict[str, list[dict]]:
  """{"greedy": one greedy output per puzzle, "sampled": K samples per puzzle (K = study.cot_samples)}."""
  task = game24.Game24Task()
  prompts = [task.prompt(game24.puzzle_example(p)) for p in test]
  s = cfg.study
  greedy = generate(cfg, mesh, params, prompts, 1, temperature=0.0, max_new_tokens=s.cot_tokens, rng=rng)
  sampled = generate(cfg, mesh, params, prompts, s.cot_samples, temperature=s.temperature, max_new_tokens=s.cot_tokens,
                     rng=jax.random.fold_in(rng, 1))
  return {"greedy": [judge(p, *g) for p, g in zip(test, greedy)],
          "sampled": [dict(judge(test[i // s.cot_samples], *g), sample=i % s.cot_samples) for i, g in enumerate(sampled)]}


# ---- the process reward model ----

def reward_examples(records: Sequence[Mapping]) -> list[dict]:
  """Encoded PRM examples: each sample's text (cut after its Answer line) with the exact `good` label at the
  end of every step line (prm.steps.encode_labelled_text)."""
  task, tokenizer, out = game24.Game24Task(), CharTokenizer(), []
  for r in records:
    example = game24.puzzle_example(game24.puzzle_numbers(r["puzzle"]))
    text = task.trim(r["text"])
    steps = task.steps(text)
    labels = [float(g) for g in task.step_good(example, text)]
    out.append(prm_steps.encode_labelled_text(tokenizer, task.prompt(example), text, [st.end for st in steps], labels))
  return out


def train_prm(cfg: ToTStudyConfig, mesh, directory: str, examples, trunk_params):
  """The PRM (one binary process head on the policy's trunk) trained on `examples` (resumes; a finished one loads)."""
  return prm_train.fine_tune_reward_model(cfg.model, HeadConfig(prm_classes=1), cfg.reward_train, cfg.checkpoint, mesh,
                                          directory, examples, trunk_params, description="prm")


def step_auc(cfg: ToTStudyConfig, mesh, prm_dir: str, records: Sequence[Mapping]) -> dict:
  """The PRM's P(step good) at every step line of `records` against the exact `good` labels: AUC, accuracy at
  0.5, and the AUC among steps that are arithmetically correct (where only solvability separates the labels)."""
  task, tokenizer = game24.Game24Task(), CharTokenizer()
  model_config, _, params = prm_train.load_reward_model(prm_dir, mesh)
  inputs = [prm_reward.scoring_example(tokenizer, task, game24.puzzle_example(game24.puzzle_numbers(r["puzzle"])),
                                       task.trim(r["text"])) for r in records]
  probs, _ = prm_train.score_examples(model_config, params, inputs, mesh=mesh, batch_size=256, seq_len=cfg.reward_train.seq_len)
  p, good, correct = [], [], []
  for r, ps in zip(records, probs):
    n = min(len(ps), len(r["steps_good"]))
    p += ps[:n]
    good += r["steps_good"][:n]
    correct += r["steps_correct"][:n]
  p, good, correct = np.asarray(p), np.asarray(good, bool), np.asarray(correct, bool)
  return {"steps": int(p.size), "positive_fraction": float(good.mean()) if p.size else None,
          "auc": prm_logprob.roc_auc(p, good), "accuracy": float(np.mean((p > 0.5) == good)) if p.size else None,
          "auc_correct_steps": prm_logprob.roc_auc(p[correct], good[correct]),
          "correct_steps": int(correct.sum())}


# ---- the search ----

def tot_run(cfg: ToTStudyConfig, mesh, params, prm_dir: str, test: Sequence[tuple[int, ...]], value: str,
            breadth: int, samples: int, rng) -> list[dict]:
  """ToT-BFS (star_jax.search.bfs) on every test puzzle with breadth b, n samples per state and the named value
  function; one judged record per puzzle with its budget (generated tokens, reward-model tokens, sampler calls).

  `correct` judges the output (the final state of highest value); `correct_any` whether any of the b answered
  final states is correct: the ToT paper's Game of 24 evaluation, which picks among the final b candidates with a
  check of the equation (the numbers used, = 24; princeton-nlp/tree-of-thought-llm issue #53), as CoT best-of-k
  picks among its k samples with the exact checker."""
  task, tokenizer = game24.Game24Task(), CharTokenizer()
  scfg = dataclasses.replace(cfg.search, method="bfs", breadth=breadth, samples=samples)
  if value == "prm":
    model_config, _, prm_params = prm_train.load_reward_model(prm_dir, mesh)
    value_fn = PRMValue(model_config, prm_params, tokenizer, task, mesh, aggregation=cfg.value.aggregation,
                        seq_len=cfg.value.seq_len, row_multiple=cfg.value.row_multiple)
  elif value == "logprob":
    value_fn = LogProbValue("sum")
  else:
    value_fn = oracle_for(task)
  policy = ModelStepSampler(cfg.model, params, tokenizer, mesh, max_new_tokens=max(scfg.step_tokens, scfg.answer_tokens),
                            prefix_multiple=64)
  examples = [game24.puzzle_example(p) for p in test]
  result = bfs(policy, value_fn, examples, [task.prompt(e) for e in examples], scfg, rng)
  out = []
  for p, o in zip(test, result.outcomes):
    b, question = o.budget, game24.format_numbers(p)
    out.append(dict(judge(p, o.text, b.generated_tokens), model_tokens=b.reward_model_tokens,
                    sampler_calls=b.sampler_calls, valued_states=b.valued_states, value=o.best.value,
                    finals=len(o.finals), correct_any=any(game24.is_correct(question, f.text) for f in o.finals)))
  return out


# ---- the study ----

def _cached(path: str, make):
  if os.path.exists(path):
    return io.read_json(path)
  out = make()
  io.write_json(path, out)
  return out


def tot_settings(s: StudyConfig) -> list[tuple[str, int, int]]:
  """(value, b, n) of every ToT run, in the order they run: the PRM's runs first, then the oracle's, then the
  log-prob's, each in study.tot's order, so that a run stopped early has the comparisons listed first."""
  order = ("prm", "oracle", "logprob")
  return [(v, b, n) for v in sorted(s.values, key=order.index) for b, n in s.tot]


def _tot_key(rng: jax.Array, breadth: int, samples: int) -> jax.Array:
  """The search rng of a (b, n) setting: the same for every value function."""
  return jax.random.fold_in(jax.random.fold_in(rng, 3), 1000 * breadth + samples)


def _check_config(cfg: ToTStudyConfig, workdir: str) -> None:
  """Refuse a workdir whose finished phases came from another base model or reward recipe (the ToT settings and
  study sizes of later phases may change: each ToT setting is its own file)."""
  path = os.path.join(workdir, CONFIG_FILE)
  fixed = {k: dataclasses.asdict(getattr(cfg, k)) for k in ("model", "policy_train", "reward_train")}
  fixed["seed_set"] = [cfg.study.seed, cfg.study.split_seed, cfg.study.seed_examples, cfg.study.policy_stop_step]
  if cfg.study.hinted_fraction:  # (absent from workdirs made before hinted seed examples)
    fixed["seed_set"].append(cfg.study.hinted_fraction)
  if cfg.study.polish_steps:  # (absent from workdirs without a polished base model)
    fixed["polish"] = [cfg.study.polish_steps, cfg.study.polish_lr]
  fixed = json.loads(json.dumps(fixed))
  if os.path.exists(path):
    saved = io.read_json(path)
    if saved != fixed:
      diff = sorted(k for k in fixed if saved.get(k) != fixed[k])
      raise ValueError(f"{path}: the workdir was started with another base model / reward recipe ({diff}); "
                       "use a new --workdir")
  else:
    os.makedirs(workdir, exist_ok=True)
    io.write_json(path, fixed)


def run(cfg: ToTStudyConfig, workdir: str, results_dir: str | None = None, *,
        search_values: Sequence[str] = ()) -> dict | None:
  """All phases (module docstring); returns results.json's content.

  search_values (e.g. ("oracle", "logprob")): only the base model and the ToT runs of these value functions (they
  need no reward model), cached as the full run caches them, and None is returned: a second process can run
  them beside the main one.
  """
  _check_config(cfg, workdir)
  s = cfg.study
  mesh = sharding.make_mesh(cfg.mesh.axes, name="config.mesh.axes")
  pools = puzzles(s)
  rng = jax.random.key(s.seed)
  timed = io.phase_timer(os.path.join(workdir, "timings.json"))  # a phase's first real timing, kept on resume
  if search_values:
    params = base_model(cfg, workdir, mesh)
    for value, b, n in tot_settings(s):
      if value in search_values and value != "prm":
        timed(f"tot_{value}_b{b}_n{n}", lambda v=value, b=b, n=n: _cached(
            os.path.join(workdir, f"tot_{v}_b{b}_n{n}.json"),
            lambda: tot_run(cfg, mesh, params, "", pools["test"], v, b, n, _tot_key(rng, b, n))))
    return None

  params = timed("policy", lambda: base_model(cfg, workdir, mesh))
  cot = timed("cot", lambda: _cached(os.path.join(workdir, "cot.json"),
                                      lambda: cot_samples(cfg, mesh, params, pools["test"], jax.random.fold_in(rng, 1))))

  # reward data: the policy's samples on train puzzles (every 10th puzzle validates only)
  order = np.random.default_rng([s.seed, 11]).permutation(len(pools["train"]))[:s.reward_puzzles]
  reward_puzzles = [pools["train"][i] for i in order]
  prompts = [game24.Game24Task().prompt(game24.puzzle_example(p)) for p in reward_puzzles]

  def sample_reward_data():
    outs = generate(cfg, mesh, params, prompts, s.reward_samples, temperature=s.temperature,
                    max_new_tokens=s.cot_tokens, rng=jax.random.fold_in(rng, 2))
    return [dict(judge(reward_puzzles[i // s.reward_samples], *o), validation=(i // s.reward_samples) % 10 == 9)
            for i, o in enumerate(outs)]
  reward_records = timed("reward_data", lambda: _cached(os.path.join(workdir, "reward_data.json"), sample_reward_data))
  train_records = [r for r in reward_records if not r["validation"]]
  val_records = [r for r in reward_records if r["validation"]]
  prm_dir = os.path.join(workdir, "prm")
  if not os.path.exists(os.path.join(prm_dir, "train.json")):
    timed("prm_train", lambda: train_prm(cfg, mesh, prm_dir, reward_examples(train_records), params))
  auc_records = [r for r in cot["sampled"] if r["sample"] < s.auc_samples]
  prm_auc = timed("prm_auc", lambda: _cached(os.path.join(workdir, "prm_auc.json"), lambda: {
      "test": step_auc(cfg, mesh, prm_dir, auc_records),
      "validation": step_auc(cfg, mesh, prm_dir, val_records) if val_records else None}))

  tot = {}
  for value, b, n in tot_settings(s):
    name = f"{value}_b{b}_n{n}"
    key = _tot_key(rng, b, n)
    tot[name] = timed(f"tot_{name}", lambda v=value, b=b, n=n, name=name, key=key: _cached(
        os.path.join(workdir, f"tot_{name}.json"), lambda: tot_run(cfg, mesh, params, prm_dir, pools["test"], v, b, n, key)))

  results = report.summarize(cfg, cot, reward_records, prm_auc, tot)
  results["timings_seconds"] = dict(timed.timings)
  results["config"] = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
  io.write_json(os.path.join(workdir, "results.json"), results)
  report.write_report(results, workdir)
  if results_dir:
    os.makedirs(results_dir, exist_ok=True)
    for name in ("results.json", "report.md", "success_vs_tokens.png"):
      shutil.copy(os.path.join(workdir, name), os.path.join(results_dir, name))
  return results


def main(argv):
  del argv
  host_malloc.reuse_freed_memory()  # before any JAX computation; STAR_JAX_SYSTEM_MALLOC=1 opts out
  from absl import flags  # noqa: PLC0415 (flags are defined by the entry point below)
  cfg = study_from_config(flags.FLAGS.config)
  run(cfg, flags.FLAGS.workdir, flags.FLAGS.results_dir or None, search_values=tuple(flags.FLAGS.search_only))


if __name__ == "__main__":
  from absl import app, flags, logging
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "experiments/configs/tot_game24.py[:variant]", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and the report.")
  flags.DEFINE_string("results_dir", "", "Also copy results.json, report.md and the plot here.")
  flags.DEFINE_list("search_only", [], "Only the base model and the ToT runs of these model-free values (oracle, "
                    "logprob): a second process beside the main run, which then finds them cached.")
  flags.mark_flags_as_required(["config", "workdir"])
  logging.set_verbosity(logging.WARNING)
  app.run(main, flags_parser=config_lib.parse_flags)
