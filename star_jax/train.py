"""Train state, the jitted train step, the inner training loop, and `fine_tune` (used by every loop).

The step is a module-level pure function `(state, batch, rng) -> (state, metrics)`; `compile_train_step`
jits it once with explicit in/out shardings and the state donated. The loop fetches metrics to the host
one step late (the device is never idle waiting for the host), raises on a non-finite loss naming the
step *before* any later checkpoint is written, never writes a checkpoint of a non-finite state (the
Checkpointer checks it on device first), and checkpoints the data iterator with the state so a killed run
resumes exactly (from the newest checkpoint that restores, checkpoint.Checkpointer.restore).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh
from tqdm.auto import tqdm

from star_jax import checkpoint, io, losses, models, sharding
from star_jax.config import CheckpointConfig, ExperimentConfig, TrainConfig
from star_jax.data import CharTokenizer, make_train_dataset
from star_jax.models import ModelConfig

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32 key data; the step's rng is fold_in(rng, step)


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss becomes NaN/inf; the message names the step."""


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
  """Linear warmup to cfg.lr, then cosine decay to lr * min_lr_ratio (or constant)."""
  if cfg.decay == "constant":
    decay = optax.constant_schedule(cfg.lr)
  else:
    decay = optax.cosine_decay_schedule(cfg.lr, max(cfg.steps - cfg.warmup_steps, 1), alpha=cfg.min_lr_ratio)
  warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps) if cfg.warmup_steps else optax.constant_schedule(cfg.lr)
  return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW (Loshchilov & Hutter 2019); no weight decay on norms (1-D params)."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
  adamw = optax.adamw(make_schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip else adamw


def lm_loss_sums(model_config: ModelConfig, params, batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(Σ masked token NLL, Σ mask) for a batch with inputs/targets/loss_mask/segment_ids/positions."""
  logits_BxTxV = models.forward(model_config, params, batch["inputs_BxT"],
                                segment_ids_BxT=batch.get("segment_ids_BxT"),
                                positions_BxT=batch.get("positions_BxT"))
  return losses.masked_nll_sum(logits_BxTxV, batch["targets_BxT"], batch["loss_mask_BxT"])


def _split_microbatches(batch: Batch, n: int) -> Batch:
  """[B, ...] -> [n, B/n, ...] with micro-batch i = rows i, i+n, ... so each stays spread over devices."""
  def split(x):
    return jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, model_config: ModelConfig,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               grad_accum_steps: int = 1, attention: str = "dense") -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW update on the masked mean token NLL, Σ m·nll / Σ m over the whole (global) batch.

  With grad_accum_steps = n the batch is split into n micro-batches whose gradient *sums* are
  accumulated and divided by the total mask weight once, so the update equals the full-batch update.
  `rng` is the run's base key; this step would use fold_in(rng, step) (the LM loss needs none).
  """
  del rng  # deterministic objective; kept for the uniform step signature used by RL objectives
  value_and_grad = jax.value_and_grad(functools.partial(lm_loss_sums, model_config), has_aux=True)

  def grad_fn(params, b):
    if attention == "band":  # block-band attention where every packed example fits (train.attention)
      return models.cond_band_attention(b.get("segment_ids_BxT"), value_and_grad, params, b)
    return value_and_grad(params, b)

  if grad_accum_steps == 1:
    (nll_sum, weight), grads = grad_fn(state.params, batch)
  else:
    def accumulate(carry, microbatch):
      (nll_acc, weight_acc), grads_acc = carry
      (nll, w), g = grad_fn(state.params, microbatch)
      return ((nll_acc + nll, weight_acc + w), jax.tree.map(jnp.add, grads_acc, g)), None
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    ((nll_sum, weight), grads), _ = jax.lax.scan(
        accumulate, ((jnp.zeros(()), jnp.zeros(())), zeros), _split_microbatches(batch, grad_accum_steps))

  denominator = jnp.maximum(weight, 1.0)
  state, update_metrics = apply_gradients(state, jax.tree.map(lambda g: g / denominator, grads), tx=tx,
                                          schedule=schedule)
  return state, {"loss": nll_sum / denominator, "loss_tokens": weight, **update_metrics}


def apply_gradients(state: TrainState, grads, *, tx: optax.GradientTransformation,
                    schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """θ ← θ + u with (u, opt_state) = tx.update(g, opt_state, θ), step + 1; and the norms every train step
  logs: grad_norm ‖g‖, update_norm ‖u‖, param_norm ‖θ‖ (after the update) and the step's lr."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"grad_norm": optax.tree.norm(grads), "update_norm": optax.tree.norm(updates),
             "param_norm": optax.tree.norm(params), "lr": schedule(state.step)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def loss_train_step(state: TrainState, batch: Batch, rng: jax.Array, *, loss_fn: Callable,
                    tx: optax.GradientTransformation, schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update on a deterministic objective `loss_fn(params, batch) -> (scalar loss, metrics)` (rng unused):
  g = ∇_θ loss, then `apply_gradients`; metrics are loss_fn's, the loss and the update's norms (the reward
  models' steps, prm.train and prm.implicit)."""
  del rng
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
  state, update_metrics = apply_gradients(state, grads, tx=tx, schedule=schedule)
  return state, {**metrics, "loss": loss, **update_metrics}


# ---- sharded state creation and compilation ----

def _boxed_state(init_boxed: Callable, tx: optax.GradientTransformation, rng: jax.Array, seed_rng: jax.Array):
  params = init_boxed(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(seed_rng))


def boxed_state_shardings(init_boxed: Callable, tx: optax.GradientTransformation, mesh: Mesh):
  """(abstract TrainState with shardings attached, TrainState of NamedShardings) of the state whose params
  `init_boxed(rng)` makes in flax boxes carrying their logical axes (the LM's, or a reward model's)."""
  boxed = jax.eval_shape(functools.partial(_boxed_state, init_boxed, tx), jax.random.key(0), jax.random.key(0))
  abstract = nn.unbox(boxed)
  shardings = sharding.tree_shardings(nn.get_partition_spec(boxed), abstract, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return abstract, shardings


def state_shardings(model_config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh):
  """(abstract TrainState with shardings attached, TrainState of NamedShardings)."""
  return boxed_state_shardings(functools.partial(models.functional.init_boxed_params, model_config), tx, mesh)


def state_from_params(params, tx: optax.GradientTransformation, shardings: TrainState,
                      step_rng: jax.Array) -> TrainState:
  """A step-0 TrainState of `params` (a fresh optimizer state) laid out by `shardings`."""
  params = jax.device_put(params, shardings.params)
  make = lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),  # noqa: E731
                              rng=jax.random.key_data(step_rng))
  return jax.jit(make, out_shardings=shardings)(params)


def create_train_state(model_config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, seed: int,
                       params=None) -> TrainState:
  """A fresh state laid out on `mesh`; random init from `seed`, or given `params` (e.g. a base model)."""
  _, shardings = state_shardings(model_config, tx, mesh)
  init_rng, step_rng = jax.random.split(jax.random.key(seed))
  if params is None:
    init_boxed = functools.partial(models.functional.init_boxed_params, model_config)
    make = lambda: nn.unbox(_boxed_state(init_boxed, tx, init_rng, step_rng))  # noqa: E731
    return jax.jit(make, out_shardings=shardings)()
  return state_from_params(params, tx, shardings, step_rng)


def jit_train_step(step: Callable, shardings: TrainState, mesh: Mesh):
  """`step(state, batch, rng) -> (state, metrics)` jitted once: the state laid out by `shardings` and
  donated, the batch over data x fsdp, rng and metrics replicated."""
  return jax.jit(sharding.under_mesh(step, mesh),
                 in_shardings=(shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)),
                 donate_argnums=0)


def compile_train_step(model_config: ModelConfig, train_config: TrainConfig, mesh: Mesh,
                       tx: optax.GradientTransformation | None = None):
  """The train step jitted once: state sharded by the partition rules, batch over data x fsdp, donated."""
  tx = tx or make_optimizer(train_config)
  _, shardings = state_shardings(model_config, tx, mesh)
  step = functools.partial(train_step, model_config=model_config, tx=tx, schedule=make_schedule(train_config),
                           grad_accum_steps=train_config.grad_accum_steps, attention=train_config.attention)
  return jit_train_step(step, shardings, mesh)


# ---- the inner loop ----

def newest_clean_checkpoint(checkpointer) -> str:
  """Where a run stopped by a non-finite value resumes: the newest checkpoint (every one is checked finite
  before it is written, checkpoint.Checkpointer.save)."""
  newest = checkpointer.latest_step() if checkpointer is not None else None
  if newest is None:
    return "no checkpoint was written" + (f" in {checkpointer.directory}" if checkpointer is not None else "")
  return (f"the newest checkpoint, step {newest} in {checkpointer.directory}, holds finite parameters and "
          "optimizer state (checked before it was written)")


def _check_finite(metrics: dict[str, float], step: int, checkpointer=None) -> None:
  if not np.isfinite(metrics["loss"]):
    raise NonFiniteLossError(f"non-finite loss {metrics['loss']} at step {step} (computed from the parameters "
                             f"after step {step - 1}); {newest_clean_checkpoint(checkpointer)}")


def train_loop(state: TrainState, step_fn: Callable, batches: Iterator[dict[str, np.ndarray]], mesh: Mesh, *,
               num_steps: int, checkpointer=None, checkpoint_config: CheckpointConfig | None = None,
               writer=None, log_every: int = 50, description: str = "train",
               on_log: Callable[[int, dict], None] | None = None) -> TrainState:
  """Run `step_fn` until state.step == num_steps.

  `batches` yields per-process numpy batches (and may expose get_state() for checkpointing). Metrics of
  step s are fetched while step s+1 runs. At each checkpoint step the current metrics are checked first,
  and the Checkpointer refuses a state with a NaN/inf parameter or optimizer entry
  (checkpoint.NonFiniteStateError), so a checkpoint is only ever written for a finite state.
  """
  start = int(state.step)
  rng = state.rng
  pending: tuple[int, dict] | None = None
  window_tokens, window_start = 0, time.perf_counter()
  every = checkpoint_config.every_steps if checkpoint_config else None

  def finish(step: int, device_metrics: dict) -> None:
    nonlocal window_tokens, window_start
    host = {k: float(v) for k, v in sharding.to_host(device_metrics).items()}
    _check_finite(host, step, checkpointer)
    if step % log_every == 0 or step == num_steps:
      elapsed = time.perf_counter() - window_start
      host["tokens_per_sec"] = window_tokens / max(elapsed, 1e-9)
      window_tokens, window_start = 0, time.perf_counter()
      if writer is not None:
        writer.write_scalars(step, {f"{description}/{k}": v for k, v in host.items()})
      if on_log is not None:
        on_log(step, host)
      progress.set_postfix(loss=f"{host['loss']:.4f}", tok_s=f"{host['tokens_per_sec']:.0f}")

  with tqdm(total=num_steps, initial=start, desc=description, dynamic_ncols=True, leave=False,
            disable=jax.process_index() != 0) as progress:
    for step in range(start + 1, num_steps + 1):
      local = next(batches)
      window_tokens += int(np.sum(local["segment_ids_BxT"] != 0)) * jax.process_count()
      state, metrics = step_fn(state, sharding.host_batch_to_global(local, mesh), rng)
      if pending is not None:
        finish(*pending)
      pending = (step, metrics)
      progress.update(1)
      if checkpointer is not None and (step % every == 0 or step == num_steps):
        finish(*pending)
        pending = None
        checkpointer.save(step, state, data_state=getattr(batches, "get_state", lambda: None)())
    if pending is not None:
      finish(*pending)
  return state


# ---- fine-tuning as a resumable phase (the base model, every STaR iteration, the PRM study's policy) ----

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
  mesh = sharding.make_mesh(cfg.mesh.axes, name="config.mesh.axes")
  if cfg.train.batch_size % (sharding.batch_divisor(mesh) * jax.process_count()):
    raise ValueError(f"config.train.batch_size={cfg.train.batch_size} must be a multiple of the mesh's "
                     f"data x fsdp size {sharding.batch_divisor(mesh)} and the process count {jax.process_count()}")
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())
  return tokenizer, mesh


@functools.lru_cache(maxsize=8)
def _optimizer_and_step(model_config: ModelConfig, train_config: TrainConfig, mesh: Mesh):
  """(tx, jitted train step) per (model, train config, mesh): the loops re-train with the same few step
  counts (and a resumed or repeated run in one process with all of them), so each compiles once."""
  tx = make_optimizer(train_config)
  return tx, compile_train_step(model_config, train_config, mesh, tx)


def fine_tune(model_config: ModelConfig, train_config: TrainConfig, checkpoint_config: CheckpointConfig, mesh: Mesh,
              tokenizer, examples: list[dict], init_params, num_steps: int, directory: str, *, pack: bool,
              data_seed: int, init_seed: int, writer=None, description: str = "train"):
  """Train `init_params` (None: random init from init_seed) on `examples` ({"prompt", "target"}) for
  num_steps; returns (params, info).

  Checkpoints go to `directory/checkpoints` (a re-run resumes mid-training); `directory/train.json` is
  written last and marks the phase done. The lr schedule spans num_steps (train_config with steps
  replaced). Without examples nothing is trained: init_params are saved as step 0.
  """
  t0 = time.perf_counter()
  train_config = dataclasses.replace(train_config, steps=max(num_steps, 1))
  tx, step_fn = _optimizer_and_step(model_config, train_config, mesh)
  abstract_state, _ = state_shardings(model_config, tx, mesh)
  last = {}
  with checkpoint.Checkpointer(os.path.join(directory, "checkpoints"), keep=checkpoint_config.keep) as ckpt:
    if not examples:
      num_steps = 0
      state = create_train_state(model_config, tx, mesh, init_seed, params=init_params)
      if ckpt.latest_step() is None:  # (a run killed after this save finds it on the re-run)
        ckpt.save(0, state)
    else:
      batches = iter(make_train_dataset(examples, tokenizer, batch_size=train_config.batch_size // jax.process_count(),
                                        seq_len=train_config.seq_len, seed=data_seed, pack=pack))
      if ckpt.latest_step() is not None:
        state, data_state = ckpt.restore(abstract_state)
        batches.set_state(data_state)
        logging.info("%s: resumed from step %d", description, int(state.step))
      else:
        state = create_train_state(model_config, tx, mesh, init_seed, params=init_params)
      state = train_loop(state, step_fn, batches, mesh, num_steps=num_steps, checkpointer=ckpt,
                         checkpoint_config=checkpoint_config, writer=writer, log_every=train_config.log_every,
                         description=description, on_log=lambda step, m: last.update(m))
  info = {"steps": num_steps, "examples": len(examples), "final_loss": last.get("loss"),
          "seconds": time.perf_counter() - t0}
  io.write_json(os.path.join(directory, "train.json"), info)
  return state.params, info


def restore_params(model_config: ModelConfig, train_config: TrainConfig, mesh: Mesh, directory: str, *, keep: int):
  """The parameters a finished `fine_tune` phase in `directory` ended with (checked against train.json).

  Raises checkpoint.CheckpointError when its final checkpoint is missing or does not restore: the caller
  may run `fine_tune` again, which resumes from the newest checkpoint that restores.
  """
  info = io.read_json(os.path.join(directory, "train.json"))
  abstract_state = state_shardings(model_config, make_optimizer(train_config), mesh)[0]
  with checkpoint.Checkpointer(os.path.join(directory, "checkpoints"), keep=keep) as ckpt:
    if ckpt.latest_step() != info["steps"]:
      raise checkpoint.CheckpointError(f"{directory}: train.json says {info['steps']} steps, "
                                       f"the latest checkpoint is {ckpt.latest_step()}")
    state, _ = ckpt.restore(abstract_state, step=info["steps"])
  return state.params
