"""The online policy-gradient STaR loop: sample, score with the verifier, update, repeat.

STaR as reinforcement learning (Zelikman et al. 2022, arXiv 2203.14465, §3.2): J = Σ_i E_{(r̂, ŷ) ~ p(·|x_i)}
1(ŷ_i = y_i). Each step s = 1..rl.steps:

  1. take G = rl.questions_per_step questions of D (a fresh permutation of D per epoch, from (rl.seed, epoch));
  2. sample K = rl.samples_per_question responses to each with the KV-cache sampler at rl.temperature,
     keeping the sampler's per-token log-probs (π_old of the update);
  3. reward each with the task's verifier, the indicator 1(ŷ = y), plus (rl.process_reward > 0) a dense
     process reward from the exact step verifier (`step_rewarded`) or, with rl.process_reward_model, from a
     learned PRM (prm/reward.py), or with the caller's `reward` (`default_reward` picks);
  4. run the jitted, sharded update (pg/step.py): advantages, KL to the base model, PPO epochs;
  5. log reward, sample accuracy, KL, entropy, response length, clip fraction, tokens/s and the seconds
     spent sampling, on the host (verifier, batch) and updating; the update's metrics are fetched one
     step late (after the next sampler call is dispatched);
  6. every rl.eval_every steps: greedy held-out accuracy per digit length and KL(π‖π_base) measured on
     held-out prompts; every checkpoint.every_steps: an Orbax checkpoint.

Resumable: the questions and sampling keys of step s derive from (rl.seed, s), so the checkpoint (PGState
plus the sampled-token count) is all the loop needs; a re-run of the same command continues from it and
ends with the parameters and records of an uninterrupted run. Files in the workdir:

  rl_metrics.jsonl   one record per logged step (rl/* scalars also in logs/, TensorBoard)
  rl_eval.jsonl      one record per evaluation (step 0 = the base model), with sampled_tokens and seconds
  rl_report.md       the evaluation table;  rl_config.json  the run's config (a different one is refused)
  checkpoints/       PGState + {"sampled_tokens", "seconds"}
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from star_jax import checkpoint, config, evaluate, io, metrics, sampling, sharding, train
from star_jax.data import CharTokenizer, Problem, arithmetic, build_arithmetic_for, make_eval_problems, verifiers
from star_jax.pg import step as pg_step
from star_jax.pg.config import RLExperimentConfig
from star_jax.prm import reward as prm_reward
from star_jax.prm import steps as prm_steps
from star_jax.star import data as sd

RewardFn = Callable[[Problem, str], float]  # one response
BatchRewardFn = Callable[[Sequence[Problem], Sequence[str]], np.ndarray]  # a sampled batch -> rewards_B
SAMPLE, EVAL_KL = 0, 1  # phase ids of the rng: key(seed, step, phase)
METRICS_FILE, EVAL_FILE = "rl_metrics.jsonl", "rl_eval.jsonl"  # in the workdir (see the module docstring)


def outcome_reward(problem: Problem, text: str) -> float:
  """STaR's reward: the indicator 1(ŷ = y) of the final answer."""
  return float(verifiers.is_correct(problem, text))


def step_rewarded(weight: float) -> RewardFn:
  """A dense process reward from the exact scratchpad verifier, plus the outcome indicator:

    R = 1(ŷ = y) + w · Σ_k r_k,   r_k = 1/S if scratchpad steps 1..k are all correct (else 0),

  S = the number of steps a correct scratchpad has (prm.arithmetic_step_labels: the ideal PRM of
  Lightman et al. 2023 / Math-Shepherd's hard labels, with no learned-model error). The per-step rewards
  enter the loss through their sum R: without a critic, Σ_k r_k as every token's return is an unbiased
  (higher-variance) estimate of ∇ E[Σ_k r_k], since a step's reward does not depend on later tokens.
  """

  def reward(problem: Problem, text: str) -> float:
    return prm_reward.dense_return(outcome_reward(problem, text), prm_steps.arithmetic_step_labels(problem, text),
                            verifiers.expected_num_steps(problem), weight)
  return reward


def per_sample(fn: RewardFn) -> BatchRewardFn:
  """A batch reward that calls `fn(problem, text)` on each response."""
  return lambda problems, texts: np.asarray([fn(p, t) for p, t in zip(problems, texts)], np.float32)


def default_reward(cfg: RLExperimentConfig, mesh) -> BatchRewardFn:
  """The config's reward: 1(ŷ = y), + w · exact step rewards (rl.process_reward = w > 0), or + w · a learned
  PRM's step scores (rl.process_reward_model = its directory)."""
  rl = cfg.rl
  if rl.process_reward_model:
    return prm_reward.learned_step_reward(rl.process_reward_model, rl.process_reward, mesh,
                                          batch_size=rl.batch_size, seq_len=cfg.train.seq_len + 1)  # as build_batch
  return per_sample(step_rewarded(rl.process_reward) if rl.process_reward > 0 else outcome_reward)


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
  tokenizer: CharTokenizer
  questions: list[Problem]  # D
  tests: dict[int, list[Problem]]  # held-out problems per digit length
  kl_problems: list[Problem]  # held-out questions on which KL(π‖π_base) is measured
  prompt_width: int  # every sampled batch is left-padded to this width (one sampler compilation)


def _setup(cfg: RLExperimentConfig, workdir: str) -> _Context:
  if not isinstance(cfg, RLExperimentConfig):
    raise TypeError(f"the RL loop needs an RLExperimentConfig (pg.config.rl_experiment_from_config), "
                    f"got {type(cfg).__name__}")
  tokenizer, mesh = train.tokenizer_and_mesh(cfg)
  rl = cfg.rl
  divisor = sharding.batch_divisor(mesh) * rl.minibatches
  if rl.batch_size % divisor:
    raise ValueError(f"config.rl.questions_per_step x rl.samples_per_question = {rl.batch_size} must be a multiple "
                     f"of the mesh's data x fsdp size {sharding.batch_divisor(mesh)} x rl.minibatches {rl.minibatches}")
  builder = build_arithmetic_for(cfg.data, workdir)
  questions = sd.problems_from_source(builder.as_data_source("questions"))
  tests = {n: make_eval_problems(builder.as_data_source(f"test_{n}digit"))
           for n in range(1, cfg.data.max_test_digits + 1)}
  held_out = [p for n in range(1, cfg.data.max_train_digits + 1) for p in tests[n]]
  kl_problems = [held_out[i % len(held_out)] for i in range(rl.questions_per_step)]
  longest = max(len(arithmetic.prompt_text(p)) + 1 for p in questions + kl_problems)
  return _Context(cfg, os.path.abspath(workdir), mesh, tokenizer, questions, tests, kl_problems,
                  prompt_width=-(-longest // 16) * 16)


def _compiled(model_config, train_config, rl, mesh):
  """(tx, jitted update step, jitted log-prob function), compiled once per update configuration and mesh
  (the loop-only fields of rl, e.g. steps or token_budget, do not recompile: the RL lr is constant)."""
  return _compiled_cached(model_config, train_config, mesh, dataclasses.replace(
      rl, steps=1, token_budget=0, log_every=1, eval_every=1, base_workdir="", seed=0))


@functools.lru_cache(maxsize=8)
def _compiled_cached(model_config, train_config, mesh, rl):
  tx = train.make_optimizer(pg_step.optimizer_config(train_config, rl))
  return (tx, pg_step.compile_pg_step(model_config, train_config, rl, mesh, tx),
          pg_step.compile_response_logps(model_config, rl.temperature, mesh))


def _sample(ctx: _Context, params, problems: Sequence[Problem], rng: jax.Array):
  """K samples per problem (question-major rows) -> (prompt ids, device SampleOutput)."""
  cfg, tok = ctx.cfg, ctx.tokenizer
  prompt_ids = [tok.encode(arithmetic.prompt_text(p), add_bos=True) for p in problems
                for _ in range(cfg.rl.samples_per_question)]
  tokens_BxP, lengths_B = sampling.left_pad(prompt_ids, tok.pad_id, multiple=ctx.prompt_width)
  cap = sd.generation_cap(problems, cfg.rl.max_new_tokens, cfg.train.seq_len)
  out = sampling.sample(cfg.model, params, sharding.shard_global_batch(tokens_BxP, ctx.mesh),
                        sharding.shard_global_batch(lengths_B, ctx.mesh), rng,
                        cfg=sampling.SamplingConfig(max_new_tokens=cfg.rl.max_new_tokens,
                                                    temperature=cfg.rl.temperature),
                        eos_id=tok.eos_id, pad_id=tok.pad_id, max_new_tokens=jnp.int32(cap))
  return prompt_ids, out


def _evaluate(ctx: _Context, params, ref_params, logps_fn, step: int) -> dict:
  """Greedy held-out accuracy per digit length and KL(π‖π_base) on sampled held-out responses (k1 and k3)."""
  cfg = ctx.cfg
  t0 = time.perf_counter()
  accuracy = evaluate.arithmetic_accuracy(cfg.model, params, ctx.tokenizer, ctx.tests, mesh=ctx.mesh,
                                          batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens)
  lengths = range(1, cfg.data.max_train_digits + 1)
  accuracy["acc_train_lengths"] = evaluate.pooled_accuracy(accuracy, {n: len(ctx.tests[n]) for n in lengths})
  return {"step": step, **accuracy, **_kl_to_base(ctx, params, ref_params, logps_fn, step),
          "eval_seconds": time.perf_counter() - t0}


def _kl_to_base(ctx: _Context, params, ref_params, logps_fn, step: int) -> dict:
  """KL(π‖π_base) per response: K samples from π (at rl.temperature) for each of rl.questions_per_step
  held-out prompts; the mean over responses of Σ_t log π(a_t)/π_base(a_t) (k1, unbiased) and of Σ_t k3."""
  prompt_ids, out = _sample(ctx, params, ctx.kl_problems, io.phase_key(ctx.cfg.rl.seed, step, EVAL_KL))
  tokens, lens, logps = sharding.to_host((out.tokens_BxN, out.lengths_B, out.logps_BxN))
  batch = build_batch(prompt_ids, tokens, lens, logps, np.zeros(len(prompt_ids)), ctx.cfg.train.seq_len)
  device_batch = {k: sharding.shard_global_batch(v, ctx.mesh) for k, v in batch.items()}
  logps_BxT, ref_BxT = sharding.to_host((logps_fn(params, device_batch), logps_fn(ref_params, device_batch)))
  x_BxT = (logps_BxT - ref_BxT) * batch["loss_mask_BxT"]
  k3_BxT = (np.exp(-np.clip(x_BxT, -20, 20)) - 1 + x_BxT) * batch["loss_mask_BxT"]
  return {"kl_to_base": float(np.mean(np.sum(x_BxT, 1))), "kl_to_base_k3": float(np.mean(np.sum(k3_BxT, 1)))}


def kl_meter(cfg: RLExperimentConfig, workdir: str, base_params) -> Callable[[object, int], dict]:
  """`measure(params, step) -> {"kl_to_base", "kl_to_base_k3"}`: the loop's KL to `base_params`, on the
  same held-out prompts and sampling keys, for any params (e.g. the STaR loop's M_n, star_jax/pg_compare.py)."""
  ctx = _setup(cfg, workdir)
  logps_fn = _compiled(cfg.model, cfg.train, cfg.rl, ctx.mesh)[2]
  return lambda params, step: _kl_to_base(ctx, params, base_params, logps_fn, step)


def _read_records(path: str, last_step: int) -> list[dict]:
  return [r for r in io.read_jsonl(path) if r["step"] <= last_step] if os.path.exists(path) else []


def _write_outputs(ctx: _Context, train_records: list[dict], eval_records: list[dict]) -> None:
  if jax.process_index() != 0:
    return
  io.write_jsonl(os.path.join(ctx.workdir, METRICS_FILE), train_records)
  io.write_jsonl(os.path.join(ctx.workdir, EVAL_FILE), eval_records)
  rl, lengths = ctx.cfg.rl, range(1, ctx.cfg.data.max_test_digits + 1)
  header = (["step", "sampled tokens", "train lengths", "all"] + [f"{n}-digit" for n in lengths]
            + ["KL to base (k1)", "KL (k3)", "wall s"])
  rows = [[str(r["step"]), str(r["sampled_tokens"]), f"{r['acc_train_lengths']:.3f}", f"{r['acc_overall']:.3f}"]
          + [f"{r[f'acc_{n}digit']:.2f}" for n in lengths] + [f"{r['kl_to_base']:.3f}", f"{r['kl_to_base_k3']:.3f}", f"{r['seconds']:.0f}"]
          for r in eval_records]
  table = "\n".join("| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header)] + rows)
  text = (f"# Policy-gradient STaR\n\nadvantage `{rl.advantage}`, normalisation `{rl.normalisation}`, "
          f"{rl.questions_per_step} questions x {rl.samples_per_question} samples per step at temperature "
          f"{rl.temperature}, PPO epochs {rl.ppo_epochs} x minibatches {rl.minibatches} (clip {rl.clip_eps}), "
          f"β {rl.kl_coef} ({rl.kl_estimator} in the {rl.kl_mode}{', adaptive' if rl.kl_target else ''}), lr {rl.lr}."
          f"\n\nHeld-out greedy accuracy and KL(π‖π_base) per evaluation:\n\n{table}\n")
  io.write_text(os.path.join(ctx.workdir, "rl_report.md"), text)


@dataclasses.dataclass
class _Pending:
  """An update whose metrics are fetched one step late."""
  step: int
  device_metrics: dict
  update_start: float
  host: dict  # host-side metrics of the step (sample accuracy, tokens, timings)
  update_seconds: float | None = None


def run(cfg: RLExperimentConfig, workdir: str, base_params, reward: BatchRewardFn | None = None) -> list[dict]:
  """Run (or resume) the loop from `base_params` (also the frozen reference); returns the eval records.

  `reward(problems, generated_texts) -> rewards_B` replaces the config's (`default_reward`), e.g. a test's;
  `per_sample` makes one from a function of a single response.
  """
  ctx = _setup(cfg, workdir)
  # rl.steps and rl.token_budget may grow between runs of one workdir
  config.check_resumable(os.path.join(ctx.workdir, "rl_config.json"), cfg, ("model", "data", "train", "star", "rl"),
                         ignored={("rl", "steps"), ("rl", "token_budget"), ("rl", "base_workdir"),
                                  ("data", "data_dir")}, what="RL run")
  rl, mesh, tok = cfg.rl, ctx.mesh, ctx.tokenizer
  reward = reward or default_reward(cfg, mesh)
  tx, step_fn, logps_fn = _compiled(cfg.model, cfg.train, rl, mesh)
  abstract, shardings = pg_step.state_shardings(cfg.model, tx, mesh)
  ref_params = jax.device_put(base_params, shardings.train.params)
  metrics_path, eval_path = (os.path.join(ctx.workdir, f) for f in (METRICS_FILE, EVAL_FILE))

  with checkpoint.Checkpointer(os.path.join(ctx.workdir, "checkpoints"), keep=cfg.checkpoint.keep) as ckpt, \
       metrics.MetricWriter(os.path.join(ctx.workdir, "logs")) as writer:
    if ckpt.latest_step() is not None:
      state, host = ckpt.restore(abstract)
    else:  # a copy: the state is donated to the step, the reference must survive it
      state = pg_step.create_state(cfg.model, tx, mesh, cfg.train.seed,
                                   jax.tree.map(lambda x: jnp.array(x, copy=True), ref_params), rl.kl_coef)
      host = {"sampled_tokens": 0, "seconds": 0.0}
    start = int(state.train.step)
    train_records, eval_records = _read_records(metrics_path, start), _read_records(eval_path, start)
    elapsed = host["seconds"]
    t_start = time.perf_counter()

    def seconds() -> float:
      return elapsed + time.perf_counter() - t_start

    def record_eval(step: int) -> None:
      record = {**_evaluate(ctx, state.train.params, ref_params, logps_fn, step),
                "sampled_tokens": host["sampled_tokens"], "seconds": seconds()}
      eval_records.append(record)
      writer.write_scalars(step, {f"rl_eval/{k}": v for k, v in record.items() if k != "step"})
      writer.flush()
      print(f"[rl] step {step}: held-out acc {record['acc_overall']:.3f} (train lengths "
            f"{record['acc_train_lengths']:.3f}), KL to base {record['kl_to_base']:.4f}, "
            f"{host['sampled_tokens']} tokens sampled", flush=True)

    if not eval_records:
      record_eval(0)
      _write_outputs(ctx, train_records, eval_records)

    pending: _Pending | None = None

    def update_done() -> None:
      """Time the pending update. The sampler needs its parameters anyway, so waiting here costs nothing."""
      if pending is not None and pending.update_seconds is None:
        jax.block_until_ready(state.train.step)
        pending.update_seconds = time.perf_counter() - pending.update_start

    def finish() -> None:
      nonlocal pending
      if pending is None:
        return
      update_done()
      done, pending = pending, None
      values = {k: float(v) for k, v in sharding.to_host(done.device_metrics).items()}
      if not np.isfinite(values["loss"]):
        raise train.NonFiniteLossError(f"non-finite RL loss {values['loss']} at step {done.step}; "
                                       "the last checkpoint written before it is intact")
      step_seconds = done.host["sample_seconds"] + done.host["host_seconds"] + done.update_seconds
      values.update(done.host, update_seconds=done.update_seconds,
                    tokens_per_sec=done.host["response_tokens"] / max(step_seconds, 1e-9))
      if done.step % rl.log_every == 0 or done.step == rl.steps:
        train_records.append({"step": done.step, **values})
        writer.write_scalars(done.step, {f"rl/{k}": v for k, v in values.items()})
      progress.set_postfix(reward=f"{values['reward']:.3f}", len=f"{values['response_length']:.0f}")

    step = start
    with tqdm(total=rl.steps, initial=start, desc="rl", dynamic_ncols=True, leave=False,
              disable=jax.process_index() != 0) as progress:
      while step < rl.steps and not (rl.token_budget and host["sampled_tokens"] >= rl.token_budget):
        step += 1
        update_done()
        t0 = time.perf_counter()
        problems = [ctx.questions[i] for i in questions_for_step(len(ctx.questions), rl.questions_per_step,
                                                                 rl.seed, step)]
        prompt_ids, out = _sample(ctx, state.train.params, problems, io.phase_key(rl.seed, step, SAMPLE))
        finish()  # the previous update's metrics, fetched while this batch is sampled
        tokens, lengths, logps = sharding.to_host((out.tokens_BxN, out.lengths_B, out.logps_BxN))
        t1 = time.perf_counter()
        row_problems = [p for p in problems for _ in range(rl.samples_per_question)]  # question-major rows
        texts = [tok.decode(tokens[i, :lengths[i]]) for i in range(len(row_problems))]
        rewards = np.asarray(reward(row_problems, texts), np.float32)
        batch = build_batch(prompt_ids, tokens, lengths, logps, rewards, cfg.train.seq_len)
        device_batch = {k: sharding.shard_global_batch(v, mesh) for k, v in batch.items()}
        args = (state, device_batch, state.train.rng) + ((ref_params,) if rl.uses_reference else ())
        t2 = time.perf_counter()
        state, device_metrics = step_fn(*args)
        n_tokens = int(np.sum(lengths))
        host["sampled_tokens"] += n_tokens
        pending = _Pending(step, device_metrics, t2, host={
            "accuracy": float(np.mean([verifiers.is_correct(p, text) for p, text in zip(row_problems, texts)])),
            "sampled_tokens": float(host["sampled_tokens"]), "response_tokens": float(n_tokens),
            "sample_seconds": t1 - t0, "host_seconds": t2 - t1,
            "sample_tokens_per_sec": n_tokens / max(t1 - t0, 1e-9)})
        progress.update(1)
        last = step == rl.steps or bool(rl.token_budget and host["sampled_tokens"] >= rl.token_budget)
        if step % rl.eval_every == 0 or last:
          finish()
          record_eval(step)
        if step % cfg.checkpoint.every_steps == 0 or last:
          finish()
          host["seconds"] = seconds()
          _write_outputs(ctx, train_records, eval_records)
          ckpt.save(step, state, data_state=dict(host))
      finish()
    _write_outputs(ctx, train_records, eval_records)
  return eval_records
