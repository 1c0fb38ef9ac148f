"""The online policy-gradient STaR loop: sample, score with the verifier, update, repeat.

STaR as reinforcement learning (Zelikman et al. 2022, arXiv 2203.14465, §3.2): J = Σ_i E_{(r̂, ŷ) ~ p(·|x_i)}
1(ŷ_i = y_i). Each step s = 1..rl.steps:

  1. take G = rl.questions_per_step questions of D (a fresh permutation of D per epoch, from (rl.seed, epoch));
  2. sample K = rl.samples_per_question responses to each with the KV-cache sampler at rl.temperature
     (each question prefilled once, its K responses decoded over the shared prefix: sampling.sample_grouped),
     keeping the sampler's per-token log-probs (π_old of the update);
  3. reward each with the task's verifier, the indicator 1(ŷ = y), plus (rl.process_reward > 0) a dense
     process reward from the task's exact step checks or, with rl.process_reward_model, from a learned PRM
     (pg/rewards.py picks), or with the caller's `reward`;
  4. run the jitted, sharded update (pg/step.py): advantages, KL to the start model, PPO epochs;
  5. log reward, sample accuracy, KL, entropy, response length, clip fraction, tokens/s and the seconds
     spent sampling, on the host (verifier, batch) and updating; the update's metrics are fetched one
     step late (after the next sampler call is dispatched);
  6. every rl.eval_every steps: greedy held-out accuracy per group (arithmetic: digit length) and
     KL(π‖π_base) measured on held-out prompts; every checkpoint.every_steps: an Orbax checkpoint.

The start model π_base (the first policy and the frozen KL reference, `start_params`) is the base model M
(rl.base_iteration = 0: `<rl.base_workdir or workdir>/base/`, or the caller's params), or with
rl.base_iteration = N > 0 the STaR run's M_N, restored from `<rl.base_workdir>/iter_<N>/` as the STaR loop
restores it (star.loop.load_iteration_params): PG-STaR continued from a STaR model that already earns reward.

The loop sees its task only through data.tasks.Task (prompt, is_correct, generation_cap, group_name and,
for dense rewards, steps/step_correct/expected_steps): the config's task (star.tasks.load_task_data), or the
`task_data` a caller passes (a toy task in the tests, a user's own task).

Resumable: the questions and sampling keys of step s derive from (rl.seed, s), so the checkpoint (PGState
plus the sampled-token count) is all the loop needs; a re-run of the same command continues from it and
ends with the parameters and records of an uninterrupted run. Files in the workdir:

  rl_metrics.jsonl   one record per logged step (rl/* scalars also in logs/, TensorBoard)
  rl_eval.jsonl      one record per evaluation (step 0 = the start model), with sampled_tokens and seconds
  rl_report.md       the evaluation table
  rl_config.json     the run's config, written before anything else: a later run with a different one is
                     refused before it writes anything (`check_workdir`)
  checkpoints/       PGState + {"sampled_tokens", "seconds"}; the newest that restores is resumed from
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from star_jax import checkpoint, config, evaluate, io, metrics, sampling, sharding, train
from star_jax.data.tasks import Example, Task
from star_jax.pg import rewards
from star_jax.pg import step as pg_step
from star_jax.pg.config import RLExperimentConfig
from star_jax.star import loop as star_loop
from star_jax.star import tasks as star_tasks

SAMPLE, EVAL_KL = 0, 1  # phase ids of the rng: key(seed, step, phase)
METRICS_FILE, EVAL_FILE = "rl_metrics.jsonl", "rl_eval.jsonl"  # in the workdir (see the module docstring)


def questions_for_step(num_questions: int, per_step: int, seed: int, step: int) -> np.ndarray:
  """Indices into D of step `step` (from 1): consecutive slices of one permutation of D per epoch."""
  if num_questions <= 0:
    raise ValueError("the question set D is empty")
  positions = (step - 1) * per_step + np.arange(per_step)
  epochs = positions // num_questions
  perms = {int(e): np.random.default_rng([seed, int(e)]).permutation(num_questions) for e in np.unique(epochs)}
  return np.asarray([perms[int(e)][p % num_questions] for e, p in zip(epochs, positions)], np.int64)


def build_batch(prompt_ids: Sequence[Sequence[int]], tokens_BxN: np.ndarray, lengths_B: np.ndarray,
                logps_BxN: np.ndarray, rewards_B: np.ndarray, seq_len: int,
                valid_B: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Rows [BOS] + prompt + response (right-padded to seq_len after the next-token shift) for pg_step.

  loss_mask and old_logps cover exactly the response tokens (EOS included when generated): target j is
  response token i when j = |prompt ids| − 1 + i. A zero-length response has an all-zero mask.
  """
  b = len(prompt_ids)
  out = {name: np.zeros((b, seq_len), np.int32) for name in ("inputs_BxT", "targets_BxT", "segment_ids_BxT",
                                                             "positions_BxT")}
  out["loss_mask_BxT"] = np.zeros((b, seq_len), np.float32)
  out["old_logps_BxT"] = np.zeros((b, seq_len), np.float32)
  for row in range(b):
    prompt, n = np.asarray(prompt_ids[row], np.int32), int(lengths_B[row])
    tokens = np.concatenate([prompt, np.asarray(tokens_BxN[row, :n], np.int32)])
    width = len(tokens) - 1
    if width > seq_len:
      raise ValueError(f"row {row}: prompt ({len(prompt)}) + response ({n}) tokens exceed train.seq_len={seq_len} + 1")
    out["inputs_BxT"][row, :width] = tokens[:-1]
    out["targets_BxT"][row, :width] = tokens[1:]
    out["segment_ids_BxT"][row, :width] = 1
    out["positions_BxT"][row, :width] = np.arange(width)
    start = len(prompt) - 1
    out["loss_mask_BxT"][row, start:start + n] = 1.0
    out["old_logps_BxT"][row, start:start + n] = logps_BxN[row, :n]
  out["rewards_B"] = np.asarray(rewards_B, np.float32)
  out["valid_B"] = np.ones((b,), np.bool_) if valid_B is None else np.asarray(valid_B, np.bool_)
  return out


@dataclasses.dataclass
class _Context:
  cfg: RLExperimentConfig
  workdir: str
  mesh: jax.sharding.Mesh
  tokenizer: object
  task: Task
  questions: list[Example]  # D
  tests: dict[int, list[Example]]  # held-out examples per group
  train_groups: list[int]  # the groups D has questions of (acc_train_lengths pools them)
  kl_examples: list[Example]  # held-out questions on which KL(π‖π_base) is measured
  prompt_width: int  # every sampled batch is left-padded to this width (one sampler compilation)


CONFIG_FILE = "rl_config.json"


def check_workdir(cfg: RLExperimentConfig, workdir: str) -> None:
  """Refuse (ValueError naming every changed field, nothing written) a workdir an RL run with another config
  made; the first run writes `<workdir>/rl_config.json`. rl.steps and rl.token_budget may grow; rl.base_workdir
  may move, rl.base_iteration may not (another start model is another run). Also refuses a start model
  M_N that does not exist (`check_start`)."""
  check_start(cfg)
  config.check_resumable(os.path.join(os.path.abspath(workdir), CONFIG_FILE), cfg,
                         ("model", "data", "train", "star", "rl"),
                         ignored={("rl", "steps"), ("rl", "token_budget"), ("rl", "base_workdir"), ("data", "data_dir")},
                         what="RL run")


def start_directory(cfg: RLExperimentConfig) -> str:
  """The directory of the STaR iteration the loop starts from, `<rl.base_workdir>/iter_<rl.base_iteration>`
  (rl.base_iteration > 0)."""
  return os.path.join(os.path.abspath(cfg.rl.base_workdir), f"iter_{cfg.rl.base_iteration}")


def check_start(cfg: RLExperimentConfig) -> None:
  """With rl.base_iteration = N > 0: a ValueError naming the file unless the STaR run's iteration N finished
  its fine-tuning (`<rl.base_workdir>/iter_<N>/train.json`, written after its final checkpoint)."""
  if cfg.rl.base_iteration:
    directory = start_directory(cfg)
    marker = os.path.join(directory, "train.json")
    if not os.path.exists(marker):
      what = "is missing" if not os.path.isdir(directory) else "holds no finished fine-tuning"
      raise ValueError(f"config.rl.base_iteration={cfg.rl.base_iteration}: {directory} {what} ({marker} not found); "
                       f"rl.base_workdir={cfg.rl.base_workdir!r} must be a STaR run with at least "
                       f"{cfg.rl.base_iteration} finished iteration(s)")


def start_params(cfg: RLExperimentConfig, workdir: str, base_params=None, mesh=None):
  """The start model π_base: the first policy and the frozen reference of the KL terms (module docstring).

  rl.base_iteration = N > 0: M_N, the parameters the STaR run in rl.base_workdir ended iteration N with
  (star.loop.load_iteration_params, checked by `check_start`); `base_params` is not used. N = 0: `base_params`,
  or when None the base model of `<rl.base_workdir or workdir>` (star.loop.base_params: trained there if absent).
  """
  if cfg.rl.base_iteration:
    check_start(cfg)
    return star_loop.load_iteration_params(cfg, cfg.rl.base_workdir, cfg.rl.base_iteration, mesh)
  if base_params is not None:
    return base_params
  return star_loop.base_params(cfg, cfg.rl.base_workdir or workdir)


def restore_policy(cfg: RLExperimentConfig, workdir: str, step: int | None = None):
  """(params, host, step) of an RL workdir's newest checkpoint (or of `step`): the policy the loop ended (or
  was stopped) with, its {"sampled_tokens", "seconds"} and its update count. ValueError without checkpoints."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise ValueError(f"{workdir} holds no RL checkpoints ({directory} not found)")
  mesh = sharding.make_mesh(cfg.mesh.axes, name="config.mesh.axes")
  tx = train.make_optimizer(pg_step.optimizer_config(cfg.train, cfg.rl))
  abstract, _ = pg_step.state_shardings(cfg.model, tx, mesh, cfg.rl)
  with checkpoint.Checkpointer(directory, keep=cfg.checkpoint.keep) as ckpt:
    if ckpt.latest_step() is None:
      raise ValueError(f"{workdir} holds no RL checkpoints ({directory} is empty)")
    state, host = ckpt.restore(abstract, step)
  return state.train.params, host, int(state.train.step)


def _setup(cfg: RLExperimentConfig, workdir: str, task_data: star_tasks.TaskData | None = None,
           check: bool = False) -> _Context:
  """The run's context; with `check`, `check_workdir` runs after the mesh is built and before any write."""
  if not isinstance(cfg, RLExperimentConfig):
    raise TypeError(f"the RL loop needs an RLExperimentConfig (pg.config.rl_experiment_from_config), "
                    f"got {type(cfg).__name__}")
  tokenizer, mesh = star_tasks.tokenizer_and_mesh(cfg)
  rl = cfg.rl
  divisor = sharding.batch_divisor(mesh) * rl.minibatches
  if rl.batch_size % divisor:
    raise ValueError(f"config.rl.questions_per_step x rl.samples_per_question = {rl.batch_size} must be a multiple "
                     f"of the mesh's data x fsdp size {sharding.batch_divisor(mesh)} x rl.minibatches {rl.minibatches}")
  if check:
    check_workdir(cfg, workdir)
  data = task_data or star_tasks.load_task_data(cfg, workdir)
  if not data.tests:
    raise ValueError("the RL loop evaluates on held-out questions: the task data has none (config.eval.split)")
  train_groups = sorted({e.group for e in data.questions})
  held_out = [e for g in train_groups for e in data.tests.get(g, [])] or [e for t in data.tests.values() for e in t]
  kl_examples = [held_out[i % len(held_out)] for i in range(rl.questions_per_step)]
  longest = max(len(tokenizer.encode(data.task.prompt(e), add_bos=True)) for e in data.questions + kl_examples)
  return _Context(cfg, os.path.abspath(workdir), mesh, tokenizer, data.task, data.questions, data.tests,
                  [g for g in train_groups if g in data.tests], kl_examples, prompt_width=-(-longest // 16) * 16)


def _compiled(model_config, train_config, rl, mesh):
  """(tx, jitted update step, jitted log-prob function), compiled once per update configuration and mesh
  (the loop-only fields of rl, e.g. steps or token_budget, do not recompile: the RL lr is constant)."""
  return _compiled_cached(model_config, train_config, mesh, dataclasses.replace(
      rl, steps=1, token_budget=0, log_every=1, eval_every=1, base_workdir="", base_iteration=0, seed=0))


@functools.lru_cache(maxsize=8)
def _compiled_cached(model_config, train_config, mesh, rl):
  tx = train.make_optimizer(pg_step.optimizer_config(train_config, rl))
  return (tx, pg_step.compile_pg_step(model_config, train_config, rl, mesh, tx),
          pg_step.compile_response_logps(model_config, rl.temperature, mesh))


def grouped_sampling_fits(num_prompts: int, mesh: jax.sharding.Mesh) -> bool:
  """Whether `sampling.sample_grouped` can take `num_prompts` prompts on `mesh`: it splits the prompts (not the
  rows) over the mesh's data x fsdp devices, so their number must be a multiple of `sharding.batch_divisor`."""
  return num_prompts % sharding.batch_divisor(mesh) == 0


def _sample(ctx: _Context, params, examples: Sequence[Example], rng: jax.Array, *, grouped: bool = True):
  """K = rl.samples_per_question samples per example -> (prompt ids per row, device SampleOutput).

  Rows are question-major: row g K + k is sample k of examples[g], which is what the group advantages
  (RLOO / GRPO over each question's K rows, pg/advantages.py) and the reward's row_examples expect.
  Each question's prompt is encoded and prefilled once and its K samples decoded over the shared prefix
  (`sampling.sample_grouped`, cascade attention), which returns the rows `sampling.sample` returns on the
  prompts repeated K times with the same rng: the same tokens, log-probs to float rounding
  (tests/pg/test_grouped_sample.py). `sampling.sample` on the repeated prompts is used instead when
  `grouped` is False (the reference the test compares with) or when the G = len(examples) prompts cannot
  be split over the mesh (`grouped_sampling_fits`: G not a multiple of its data x fsdp size although G K
  is, e.g. the tiny test config's 4 questions on 8 devices; padding G up to a multiple instead would decode
  up to divisor - 1 extra groups of K rows).
  """
  cfg, tok = ctx.cfg, ctx.tokenizer
  k = cfg.rl.samples_per_question
  question_ids = [tok.encode(ctx.task.prompt(e), add_bos=True) for e in examples]
  prompt_ids = [ids for ids in question_ids for _ in range(k)]  # row g K + k: examples[g]
  cap = ctx.task.generation_cap(examples, cfg.rl.max_new_tokens, cfg.train.seq_len, tok)
  common = dict(cfg=sampling.SamplingConfig(max_new_tokens=cfg.rl.max_new_tokens, temperature=cfg.rl.temperature),
                eos_id=tok.eos_id, pad_id=tok.pad_id, max_new_tokens=jnp.int32(cap))
  if grouped and grouped_sampling_fits(len(examples), ctx.mesh):
    tokens_GxP, lengths_G = sampling.left_pad(question_ids, tok.pad_id, multiple=ctx.prompt_width)
    out = sampling.sample_grouped(cfg.model, params, sharding.shard_global_batch(tokens_GxP, ctx.mesh),
                                  sharding.shard_global_batch(lengths_G, ctx.mesh), rng, n_per_prompt=k, **common)
  else:
    tokens_BxP, lengths_B = sampling.left_pad(prompt_ids, tok.pad_id, multiple=ctx.prompt_width)
    out = sampling.sample(cfg.model, params, sharding.shard_global_batch(tokens_BxP, ctx.mesh),
                          sharding.shard_global_batch(lengths_B, ctx.mesh), rng, **common)
  return prompt_ids, out


def _evaluate(ctx: _Context, params, ref_params, logps_fn, step: int) -> dict:
  """Greedy held-out accuracy per group (acc_train_lengths: over the groups of D) and KL(π‖π_base) on
  sampled held-out responses (k1 and k3)."""
  cfg = ctx.cfg
  t0 = time.perf_counter()
  accuracy = evaluate.task_accuracy(cfg.model, params, ctx.tokenizer, ctx.task, ctx.tests, mesh=ctx.mesh,
                                    batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens)
  accuracy["acc_train_lengths"] = evaluate.pooled_accuracy(accuracy, {g: len(ctx.tests[g]) for g in ctx.train_groups},
                                                           ctx.task.group_name)
  return {"step": step, **accuracy, **_kl_to_base(ctx, params, ref_params, logps_fn, step),
          "eval_seconds": time.perf_counter() - t0}


def _kl_to_base(ctx: _Context, params, ref_params, logps_fn, step: int) -> dict:
  """KL(π‖π_base) per response: K samples from π (at rl.temperature) for each of rl.questions_per_step
  held-out prompts; the mean over responses of Σ_t log π(a_t)/π_base(a_t) (k1, unbiased) and of Σ_t k3."""
  prompt_ids, out = _sample(ctx, params, ctx.kl_examples, io.phase_key(ctx.cfg.rl.seed, step, EVAL_KL))
  tokens, lens, logps = sharding.to_host((out.tokens_BxN, out.lengths_B, out.logps_BxN))
  batch = build_batch(prompt_ids, tokens, lens, logps, np.zeros(len(prompt_ids)), ctx.cfg.train.seq_len)
  device_batch = {k: sharding.shard_global_batch(v, ctx.mesh) for k, v in batch.items()}
  logps_BxT, ref_BxT = sharding.to_host((logps_fn(params, device_batch), logps_fn(ref_params, device_batch)))
  x_BxT = (logps_BxT - ref_BxT) * batch["loss_mask_BxT"]
  k3_BxT = (np.exp(-np.clip(x_BxT, -20, 20)) - 1 + x_BxT) * batch["loss_mask_BxT"]
  return {"kl_to_base": float(np.mean(np.sum(x_BxT, 1))), "kl_to_base_k3": float(np.mean(np.sum(k3_BxT, 1)))}


def kl_meter(cfg: RLExperimentConfig, workdir: str, base_params) -> Callable[[object, int], dict]:
  """`measure(params, step) -> {"kl_to_base", "kl_to_base_k3"}`: the loop's KL to `base_params`, on the
  same held-out prompts and sampling keys, for any params (e.g. the STaR loop's M_n,
  experiments/pg_star_arithmetic/compare.py)."""
  ctx = _setup(cfg, workdir)
  logps_fn = _compiled(cfg.model, cfg.train, cfg.rl, ctx.mesh)[2]
  return lambda params, step: _kl_to_base(ctx, params, base_params, logps_fn, step)


def _write_outputs(ctx: _Context, train_records: list[dict], eval_records: list[dict]) -> None:
  if jax.process_index() != 0:
    return
  io.write_jsonl(os.path.join(ctx.workdir, METRICS_FILE), train_records)
  io.write_jsonl(os.path.join(ctx.workdir, EVAL_FILE), eval_records)
  rl, names = ctx.cfg.rl, [ctx.task.group_name(g) for g in sorted(ctx.tests)]
  header = (["step", "sampled tokens", "train lengths", "all"] + [n.replace("digit", "-digit") for n in names]
            + ["KL to base (k1)", "KL (k3)", "wall s"])
  rows = [[str(r["step"]), str(r["sampled_tokens"]), f"{r['acc_train_lengths']:.3f}", f"{r['acc_overall']:.3f}"]
          + [f"{r[f'acc_{n}']:.2f}" for n in names]
          + [f"{r['kl_to_base']:.3f}", f"{r['kl_to_base_k3']:.3f}", f"{r['seconds']:.0f}"]
          for r in eval_records]
  table = "\n".join("| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header)] + rows)
  start = f"STaR's M_{rl.base_iteration} ({start_directory(ctx.cfg)})" if rl.base_iteration else "the base model"
  text = (f"# Policy-gradient STaR\n\nadvantage `{rl.advantage}`, normalisation `{rl.normalisation}`, "
          f"{rl.questions_per_step} questions x {rl.samples_per_question} samples per step at temperature "
          f"{rl.temperature}, PPO epochs {rl.ppo_epochs} x minibatches {rl.minibatches} (clip {rl.clip_eps}), "
          f"β {rl.kl_coef} ({rl.kl_estimator} in the {rl.kl_mode}{', adaptive' if rl.kl_target else ''}), lr {rl.lr}."
          f" Start model π_base: {start}."
          f"\n\nHeld-out greedy accuracy and KL(π‖π_base) per evaluation:\n\n{table}\n")
  io.write_text(os.path.join(ctx.workdir, "rl_report.md"), text)


# ---- the loop: one small function per part of a step; the loop's state is one object ----

@dataclasses.dataclass
class _Pending:
  """An update whose metrics are fetched one step late."""
  step: int
  device_metrics: dict
  update_start: float
  host: dict  # host-side metrics of the step (sample accuracy, tokens, timings)
  update_seconds: float | None = None


@dataclasses.dataclass
class _Run:
  """What changes while the loop runs: the state, the records, the pending update, the clock."""
  state: pg_step.PGState
  host: dict  # {"sampled_tokens", "seconds"}: checkpointed with the state
  train_records: list[dict]
  eval_records: list[dict]
  started: float  # perf_counter() when this process started (host["seconds"] counts earlier processes)
  pending: _Pending | None = None
  checkpointer: checkpoint.Checkpointer | None = None  # named by a non-finite loss error

  def seconds(self) -> float:
    return self.host["seconds"] + time.perf_counter() - self.started

  def out_of_budget(self, rl) -> bool:
    return bool(rl.token_budget and self.host["sampled_tokens"] >= rl.token_budget)


def _record_eval(ctx: _Context, run: _Run, ref_params, logps_fn, writer, step: int) -> None:
  record = {**_evaluate(ctx, run.state.train.params, ref_params, logps_fn, step),
            "sampled_tokens": run.host["sampled_tokens"], "seconds": run.seconds()}
  run.eval_records.append(record)
  writer.write_scalars(step, {f"rl_eval/{k}": v for k, v in record.items() if k != "step"})
  writer.flush()
  print(f"[rl] step {step}: held-out acc {record['acc_overall']:.3f} (train lengths "
        f"{record['acc_train_lengths']:.3f}), KL to base {record['kl_to_base']:.4f}, "
        f"{run.host['sampled_tokens']} tokens sampled", flush=True)


def _update_done(run: _Run) -> None:
  """Time the pending update. The sampler needs its parameters anyway, so waiting here costs nothing."""
  if run.pending is not None and run.pending.update_seconds is None:
    jax.block_until_ready(run.state.train.step)
    run.pending.update_seconds = time.perf_counter() - run.pending.update_start


def _finish_pending(run: _Run, rl, writer, progress) -> None:
  """Fetch the pending update's metrics, check them and log them."""
  if run.pending is None:
    return
  _update_done(run)
  done, run.pending = run.pending, None
  values = {k: float(v) for k, v in sharding.to_host(done.device_metrics).items()}
  if not np.isfinite(values["loss"]):
    raise train.NonFiniteLossError(f"non-finite RL loss {values['loss']} at step {done.step}; "
                                   f"{train.newest_clean_checkpoint(run.checkpointer)}")
  step_seconds = done.host["sample_seconds"] + done.host["host_seconds"] + done.update_seconds
  values.update(done.host, update_seconds=done.update_seconds,
                tokens_per_sec=done.host["response_tokens"] / max(step_seconds, 1e-9))
  if done.step % rl.log_every == 0 or done.step == rl.steps:
    run.train_records.append({"step": done.step, **values})
    writer.write_scalars(done.step, {f"rl/{k}": v for k, v in values.items()})
  progress.set_postfix(reward=f"{values['reward']:.3f}", len=f"{values['response_length']:.0f}")


def _policy_step(ctx: _Context, run: _Run, step: int, step_fn, ref_params, reward: rewards.BatchRewardFn,
                 writer, progress) -> None:
  """Sample G x K responses, reward them, dispatch the update (its metrics are fetched next step)."""
  cfg, rl = ctx.cfg, ctx.cfg.rl
  _update_done(run)
  t0 = time.perf_counter()
  examples = [ctx.questions[i] for i in questions_for_step(len(ctx.questions), rl.questions_per_step, rl.seed, step)]
  prompt_ids, out = _sample(ctx, run.state.train.params, examples, io.phase_key(rl.seed, step, SAMPLE))
  _finish_pending(run, rl, writer, progress)  # the previous update's metrics, fetched while this batch is sampled
  tokens, lengths, logps = sharding.to_host((out.tokens_BxN, out.lengths_B, out.logps_BxN))
  t1 = time.perf_counter()
  row_examples = [e for e in examples for _ in range(rl.samples_per_question)]  # question-major rows
  texts = [ctx.tokenizer.decode(tokens[i, :lengths[i]]) for i in range(len(row_examples))]
  scored = reward(row_examples, texts)  # rewards_B, or one rewards.StepScores per row (rl.credit != "sequence")
  batch = build_batch(prompt_ids, tokens, lengths, logps, rewards.totals(scored), cfg.train.seq_len)
  if rl.credit != "sequence":  # per-token step rewards for pg/credit.py
    batch.update(rewards.step_fields(scored, prompt_ids, tokens, lengths, texts, ctx.tokenizer, cfg.train.seq_len))
  device_batch = {k: sharding.shard_global_batch(v, ctx.mesh) for k, v in batch.items()}
  args = (run.state, device_batch, run.state.train.rng) + ((ref_params,) if rl.uses_reference else ())
  t2 = time.perf_counter()
  run.state, device_metrics = step_fn(*args)
  n_tokens = int(np.sum(lengths))
  run.host["sampled_tokens"] += n_tokens
  run.pending = _Pending(step, device_metrics, t2, host={
      "accuracy": float(np.mean([ctx.task.is_correct(e, t) for e, t in zip(row_examples, texts)])),
      "sampled_tokens": float(run.host["sampled_tokens"]), "response_tokens": float(n_tokens),
      "sample_seconds": t1 - t0, "host_seconds": t2 - t1, "sample_tokens_per_sec": n_tokens / max(t1 - t0, 1e-9)})


def run(cfg: RLExperimentConfig, workdir: str, base_params=None, reward: rewards.BatchRewardFn | None = None,
        task_data: star_tasks.TaskData | None = None) -> list[dict]:
  """Run (or resume) the loop from the start model (also the frozen reference); returns the eval records.

  The start model is `start_params(cfg, workdir, base_params)`: `base_params` (None: the base model of
  `<rl.base_workdir or workdir>/base/`), or with rl.base_iteration = N > 0 the STaR run's M_N (base_params unused).

  `reward(examples, generated_texts) -> rewards_B` replaces the config's (`rewards.default_reward`), e.g. a
  test's; `rewards.per_sample` makes one from a function of a single response. `task_data` replaces the
  data the config names (star.tasks.TaskData: a task, D and held-out examples per group).
  """
  ctx = _setup(cfg, workdir, task_data, check=True)  # a workdir of another config is refused before any write
  rl, mesh = cfg.rl, ctx.mesh
  reward = reward or rewards.default_reward(rl, ctx.task, mesh, ctx.tokenizer, cfg.train.seq_len + 1)  # as build_batch
  tx, step_fn, logps_fn = _compiled(cfg.model, cfg.train, rl, mesh)
  abstract, shardings = pg_step.state_shardings(cfg.model, tx, mesh, rl)
  ref_params = jax.device_put(start_params(cfg, workdir, base_params, mesh), shardings.train.params)
  metrics_path, eval_path = (os.path.join(ctx.workdir, f) for f in (METRICS_FILE, EVAL_FILE))

  with checkpoint.Checkpointer(os.path.join(ctx.workdir, "checkpoints"), keep=cfg.checkpoint.keep) as ckpt, \
       metrics.MetricWriter(os.path.join(ctx.workdir, "logs")) as writer:
    if ckpt.latest_step() is not None:
      state, host = ckpt.restore(abstract)
    else:  # a copy: the state is donated to the step, the reference must survive it
      state = pg_step.create_state(cfg.model, tx, mesh, cfg.train.seed,
                                   jax.tree.map(lambda x: jnp.array(x, copy=True), ref_params), rl.kl_coef, rl=rl)
      host = {"sampled_tokens": 0, "seconds": 0.0}
    start = int(state.train.step)
    records = lambda path: [r for r in io.read_jsonl_if_exists(path) if r["step"] <= start]  # noqa: E731
    loop = _Run(state, host, records(metrics_path), records(eval_path), started=time.perf_counter(), checkpointer=ckpt)
    if not loop.eval_records:
      _record_eval(ctx, loop, ref_params, logps_fn, writer, 0)
      _write_outputs(ctx, loop.train_records, loop.eval_records)

    step = start
    with tqdm(total=rl.steps, initial=start, desc="rl", dynamic_ncols=True, leave=False,
              disable=jax.process_index() != 0) as progress:
      while step < rl.steps and not loop.out_of_budget(rl):
        step += 1
        _policy_step(ctx, loop, step, step_fn, ref_params, reward, writer, progress)
        progress.update(1)
        last = step == rl.steps or loop.out_of_budget(rl)
        if step % rl.eval_every == 0 or last:
          _finish_pending(loop, rl, writer, progress)
          _record_eval(ctx, loop, ref_params, logps_fn, writer, step)
        if step % cfg.checkpoint.every_steps == 0 or last:
          _finish_pending(loop, rl, writer, progress)
          loop.host["seconds"] = loop.seconds()
          loop.started = time.perf_counter()
          _write_outputs(ctx, loop.train_records, loop.eval_records)
          ckpt.save(step, loop.state, data_state=dict(loop.host))
      _finish_pending(loop, rl, writer, progress)
    _write_outputs(ctx, loop.train_records, loop.eval_records)
  return loop.eval_records
