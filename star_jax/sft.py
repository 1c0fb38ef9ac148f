"""The supervised job (`kind = "sft"`): fine-tune on arithmetic scratchpads, then held-out accuracy per
digit length, with a markdown report and a plot.

Build (or reuse) the TFDS dataset, train with the sharded train step (resuming from the latest checkpoint
in the workdir), evaluate with greedy KV-cache decoding, and write metrics, results.json, report.md and
accuracy_by_digits.png.
"""

from __future__ import annotations

import os
import time

import jax
from absl import logging
from matplotlib.figure import Figure

from star_jax import checkpoint, evaluate, io, metrics, train
from star_jax.config import ExperimentConfig
from star_jax.data import build_arithmetic_for, make_eval_problems, make_train_dataset


def run(cfg: ExperimentConfig, workdir: str) -> dict[str, float]:
  """Train cfg.model on the rationales split, evaluate on test_<n>digit splits; returns the accuracies.

  Re-running the same command after a crash resumes from the last checkpoint (state, rng and data
  position) and produces the same final parameters as an uninterrupted run.
  """
  tokenizer, mesh = train.tokenizer_and_mesh(cfg)

  timings = {}
  t0 = time.perf_counter()
  builder = build_arithmetic_for(cfg.data, workdir)
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
    accuracy["acc_train_lengths"] = evaluate.pooled_accuracy(accuracy, {n: len(problems[n]) for n in train_lengths})
    timings["eval_seconds"] = time.perf_counter() - t0
    writer.write_scalars(cfg.train.steps, {f"eval/{k}": v for k, v in accuracy.items()})

  if jax.process_index() == 0:
    _write_report(cfg, workdir, accuracy, timings)
  return accuracy


def _write_report(cfg: ExperimentConfig, workdir: str, accuracy: dict[str, float], timings: dict[str, float]):
  results = {"accuracy": accuracy, "timings": timings, "steps": cfg.train.steps}
  io.write_json(os.path.join(workdir, "results.json"), results)
  plot = os.path.join(workdir, "accuracy_by_digits.png")
  plot_accuracy_by_digits(accuracy, cfg.data.max_train_digits, plot,
                                 f"greedy accuracy after {cfg.train.steps} steps")
  text = "\n\n".join([
      "# Arithmetic fine-tuning report",
      f"Model: {cfg.model.n_layers} layers, d_model {cfg.model.d_model}; trained {cfg.train.steps} steps of "
      f"{cfg.train.batch_size} x {cfg.train.seq_len} tokens on full scratchpads with 1–{cfg.data.max_train_digits}"
      f"-digit operands; evaluated by greedy decoding on held-out problems ({cfg.data.test_per_digit} per length).",
      accuracy_table(accuracy, cfg.data.max_train_digits),
      "Wall time: " + ", ".join(f"{k.removesuffix('_seconds')} {v:.0f} s" for k, v in timings.items()),
      "![accuracy by digit length](accuracy_by_digits.png)",
  ])
  io.write_text(os.path.join(workdir, "report.md"), text + "\n")


# ---- report: markdown table and plot ----

def digit_lengths(accuracy: dict[str, float]) -> list[int]:
  """The n of every "acc_<n>digit" key."""
  return sorted(int(k[len("acc_"):-len("digit")]) for k in accuracy
                if k.startswith("acc_") and k.endswith("digit") and k[len("acc_"):-len("digit")].isdigit())


def accuracy_table(accuracy: dict[str, float], max_train_digits: int) -> str:
  """Markdown table of accuracy per digit length, marking lengths beyond the training range."""
  lines = ["| digits | accuracy | |", "|---:|---:|---|"]
  for n in digit_lengths(accuracy):
    note = "length generalisation (not trained on)" if n > max_train_digits else ""
    lines.append(f"| {n} | {100 * accuracy[f'acc_{n}digit']:.1f}% | {note} |")
  lines.append(f"| **1–{max_train_digits}** | **{100 * accuracy['acc_train_lengths']:.1f}%** | |")
  return "\n".join(lines)


def plot_accuracy_by_digits(accuracy: dict[str, float], max_train_digits: int, path: str, title: str) -> None:
  lengths = digit_lengths(accuracy)
  values = [100 * accuracy[f"acc_{n}digit"] for n in lengths]
  colors = ["tab:blue" if n <= max_train_digits else "tab:gray" for n in lengths]
  fig = Figure(figsize=(6, 3.5))
  ax = fig.subplots()
  ax.bar(lengths, values, color=colors)
  ax.set_xlabel("digits per operand (gray: longer than any training example)")
  ax.set_ylabel("held-out accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_xticks(lengths)
  ax.set_title(title)
  fig.tight_layout()
  io.save_figure(fig, path)
