"""Supervised fine-tuning on arithmetic scratchpads, then held-out accuracy per digit length.

This is the job `make demo` runs until the STaR loop lands, and the "fine-tune" phase STaR will reuse:
build (or reuse) the TFDS dataset, train with the sharded train step (resuming from the latest checkpoint
in the workdir), evaluate with greedy KV-cache decoding, and write metrics, a report and a plot.
"""

from __future__ import annotations

import json
import os
import time

import jax
from absl import logging

from star_jax import checkpoint, evaluate, metrics, report, sharding, train
from star_jax.config import DataConfig, ExperimentConfig
from star_jax.data import CharTokenizer, build_arithmetic, make_eval_problems, make_train_dataset


def tokenizer_and_mesh(cfg: ExperimentConfig, tokenizer=None):
  """The tokenizer (default: the character tokenizer) and the device mesh, after checking the config fits both.

  The character tokenizer's vocabulary must equal model.vocab_size; another tokenizer's (e.g. a Hugging
  Face checkpoint's, whose embedding table is often padded) must fit in it.
  """
  if tokenizer is None:
    tokenizer = CharTokenizer()
    if cfg.model.vocab_size != tokenizer.vocab_size:
      raise ValueError(f"config.model.vocab_size must equal the tokenizer's {tokenizer.vocab_size}, "
                       f"got {cfg.model.vocab_size}")
  elif tokenizer.vocab_size > cfg.model.vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's vocab_size "
                     f"{cfg.model.vocab_size}")
  mesh = sharding.make_mesh(cfg.mesh.axes)
  if cfg.train.batch_size % (sharding.batch_divisor(mesh) * jax.process_count()):
    raise ValueError(f"config.train.batch_size={cfg.train.batch_size} must be a multiple of the mesh's "
                     f"data x fsdp size {sharding.batch_divisor(mesh)} and the process count {jax.process_count()}")
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())
  return tokenizer, mesh


def build_dataset(d: DataConfig, workdir: str):
  """The arithmetic TFDS builder for config.data (generated once under data_dir or <workdir>/data)."""
  return build_arithmetic(d.data_dir or os.path.join(workdir, "data"), max_train_digits=d.max_train_digits,
                          max_test_digits=d.max_test_digits, rationales_per_digit=d.rationales_per_digit,
                          questions_per_digit=d.questions_per_digit, test_per_digit=d.test_per_digit, seed=d.seed)


def run(cfg: ExperimentConfig, workdir: str) -> dict[str, float]:
  """Train cfg.model on the rationales split, evaluate on test_<n>digit splits; returns the accuracies.

  Re-running the same command after a crash resumes from the last checkpoint (state, rng and data
  position) and produces the same final parameters as an uninterrupted run.
  """
  tokenizer, mesh = tokenizer_and_mesh(cfg)

  timings = {}
  t0 = time.perf_counter()
  builder = build_dataset(cfg.data, workdir)
  timings["data_seconds"] = time.perf_counter() - t0
  batches = iter(make_train_dataset(builder.as_data_source("rationales"), tokenizer,
                                    batch_size=cfg.train.batch_size // jax.process_count(),
                                    seq_len=cfg.train.seq_len, seed=cfg.data.seed, pack=cfg.data.pack))

  tx = train.make_optimizer(cfg.train)
  abstract_state, _ = train.state_shardings(cfg.model, tx, mesh)
  t0 = time.perf_counter()
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.checkpoint.keep) as ckpt, \
       metrics.MetricWriter(os.path.join(workdir, "logs")) as writer:
    if ckpt.latest_step() is not None:
      state, data_state = ckpt.restore(abstract_state)
      batches.set_state(data_state)
      logging.info("resumed from step %d", int(state.step))
    else:
      state = train.create_train_state(cfg.model, tx, mesh, cfg.train.seed)
    step_fn = train.compile_train_step(cfg.model, cfg.train, mesh, tx)
    state = train.train_loop(state, step_fn, batches, mesh, num_steps=cfg.train.steps, checkpointer=ckpt,
                             checkpoint_config=cfg.checkpoint, writer=writer, log_every=cfg.train.log_every)
    timings["train_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    problems = {n: make_eval_problems(builder.as_data_source(f"test_{n}digit"))
                for n in range(1, cfg.data.max_test_digits + 1)}
    accuracy = evaluate.arithmetic_accuracy(cfg.model, state.params, tokenizer, problems, mesh=mesh,
                                            batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens)
    train_lengths = range(1, cfg.data.max_train_digits + 1)
    accuracy["acc_train_lengths"] = sum(accuracy[f"acc_{n}digit"] * len(problems[n]) for n in train_lengths) / sum(
        len(problems[n]) for n in train_lengths)
    timings["eval_seconds"] = time.perf_counter() - t0
    writer.write_scalars(cfg.train.steps, {f"eval/{k}": v for k, v in accuracy.items()})

  if jax.process_index() == 0:
    _write_report(cfg, workdir, accuracy, timings)
  return accuracy


def _write_report(cfg: ExperimentConfig, workdir: str, accuracy: dict[str, float], timings: dict[str, float]):
  results = {"accuracy": accuracy, "timings": timings, "steps": cfg.train.steps}
  tmp = os.path.join(workdir, "results.json.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  os.replace(tmp, os.path.join(workdir, "results.json"))
  plot = os.path.join(workdir, "accuracy_by_digits.png")
  report.plot_accuracy_by_digits(accuracy, cfg.data.max_train_digits, plot,
                                 f"greedy accuracy after {cfg.train.steps} steps")
  text = "\n\n".join([
      "# Arithmetic fine-tuning report",
      f"Model: {cfg.model.n_layers} layers, d_model {cfg.model.d_model}; trained {cfg.train.steps} steps of "
      f"{cfg.train.batch_size} x {cfg.train.seq_len} tokens on full scratchpads with 1–{cfg.data.max_train_digits}"
      f"-digit operands; evaluated by greedy decoding on held-out problems ({cfg.data.test_per_digit} per length).",
      report.accuracy_table(accuracy, cfg.data.max_train_digits),
      "Wall time: " + ", ".join(f"{k.removesuffix('_seconds')} {v:.0f} s" for k, v in timings.items()),
      "![accuracy by digit length](accuracy_by_digits.png)",
  ])
  with open(os.path.join(workdir, "report.md.tmp"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  os.replace(os.path.join(workdir, "report.md.tmp"), os.path.join(workdir, "report.md"))
