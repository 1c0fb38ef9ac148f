"""Training and scoring of reward models (process and outcome heads on a decoder trunk).

The train step follows star_jax/train.py: a module-level pure function `(state, batch, rng) -> (state,
metrics)` over the same `TrainState`, jitted once with the state's shardings from the logical axes of
trunk and heads, the batch split over the mesh's data axes, the state donated; `train.train_loop` runs it.

Batches are packed like the LM pipeline's (data/pipeline.py), with the label fields of
`prm.encode_labelled_text`: inputs/targets/loss_mask, step_mask/step_targets, orm_mask/orm_targets,
segment_ids/positions, all [B, T].
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from star_jax import checkpoint, io, losses, sharding, train
from star_jax import config as config_lib
from star_jax.models import ModelConfig
from star_jax.models.heads import (
  HeadConfig,
  init_boxed_reward_params,
  reward_forward,
  reward_logical_axes,
  step_good_probability,
)
from star_jax.prm import losses as reward_losses
from star_jax.train import TrainState

SPEC_FILE = "reward_model.json"  # what a reward-model directory holds besides checkpoints/: see save_spec
_FIELDS = ("inputs", "targets", "loss_mask", "step_mask", "step_targets", "orm_mask", "orm_targets")


@dataclasses.dataclass(frozen=True)
class RewardObjective:
  """L = prm_weight · L_PRM + orm_weight · L_ORM + lm_weight · L_LM (each a masked mean over its labels)."""

  prm_weight: float = 1.0  # per labelled step
  orm_weight: float = 1.0  # per ORM-labelled token
  lm_weight: float = 0.0  # per solution token; > 0 keeps the shared trunk a usable policy

  def __post_init__(self):
    for key in ("prm_weight", "orm_weight", "lm_weight"):
      if getattr(self, key) < 0:
        raise ValueError(f"config.reward.{key} must be >= 0, got {getattr(self, key)}")


def reward_loss(model_config: ModelConfig, objective: RewardObjective, params, batch: Mapping[str, jax.Array]):
  """(scalar loss, metrics) of one batch; each term is normalised by its own label count (at least 1)."""
  out = reward_forward(model_config, params, batch["inputs_BxT"], segment_ids_BxT=batch["segment_ids_BxT"],
                       positions_BxT=batch["positions_BxT"])
  total, metrics = jnp.zeros(()), {}
  if out.prm_logits_BxTxC is not None:
    s, w = reward_losses.step_loss_sums(out.prm_logits_BxTxC, batch["step_targets_BxT"], batch["step_mask_BxT"])
    prm_loss = s / jnp.maximum(w, 1.0)
    total += objective.prm_weight * prm_loss
    metrics.update(prm_loss=prm_loss, prm_labels=w)
    if out.prm_logits_BxTxC.shape[-1] == 1:
      hits, _ = reward_losses.binary_accuracy_sums(out.prm_logits_BxTxC[..., 0], batch["step_targets_BxT"],
                                                   batch["step_mask_BxT"])
      metrics["prm_accuracy"] = hits / jnp.maximum(w, 1.0)
  if out.orm_logits_BxT is not None:
    s, w = reward_losses.orm_loss_sums(out.orm_logits_BxT, batch["orm_targets_BxT"], batch["orm_mask_BxT"])
    orm_loss = s / jnp.maximum(w, 1.0)
    total += objective.orm_weight * orm_loss
    metrics.update(orm_loss=orm_loss)
  if objective.lm_weight:
    s, w = losses.masked_nll_sum(out.lm_logits_BxTxV, batch["targets_BxT"], batch["loss_mask_BxT"])
    lm_loss = s / jnp.maximum(w, 1.0)
    total += objective.lm_weight * lm_loss
    metrics.update(lm_loss=lm_loss)
  return total, metrics


def reward_train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, *,
                      model_config: ModelConfig, objective: RewardObjective, tx: optax.GradientTransformation,
                      schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW update of trunk and heads on `reward_loss` (deterministic: rng unused; train.loss_train_step)."""
  return train.loss_train_step(state, batch, rng, loss_fn=functools.partial(reward_loss, model_config, objective),
                               tx=tx, schedule=schedule)


# ---- sharded state ----

def reward_state_shardings(model_config: ModelConfig, head_config: HeadConfig, tx: optax.GradientTransformation,
                           mesh: Mesh):
  """(abstract TrainState with shardings, TrainState of NamedShardings) of a reward model."""
  return train.boxed_state_shardings(functools.partial(init_boxed_reward_params, model_config, head_config), tx, mesh)


def params_shardings(model_config: ModelConfig, head_config: HeadConfig, mesh: Mesh):
  """NamedShardings of the reward-model params alone (for scoring without an optimizer)."""
  abstract = nn.unbox(jax.eval_shape(functools.partial(init_boxed_reward_params, model_config, head_config),
                                     jax.random.key(0)))
  return sharding.tree_shardings(reward_logical_axes(model_config, head_config), abstract, mesh)


def create_reward_state(model_config: ModelConfig, head_config: HeadConfig, tx: optax.GradientTransformation,
                        mesh: Mesh, seed: int, trunk_params=None) -> TrainState:
  """A fresh state on `mesh`: zero heads; the trunk random from `seed` or `trunk_params` (a policy, load_hf)."""
  _, shardings = reward_state_shardings(model_config, head_config, tx, mesh)
  init_rng, step_rng = jax.random.split(jax.random.key(seed))
  params = jax.jit(lambda key: nn.unbox(init_boxed_reward_params(model_config, head_config, key)),
                   out_shardings=shardings.params)(init_rng)
  if trunk_params is not None:
    expected = jax.tree.map(lambda x: (x.shape, x.dtype), params["trunk"])
    if jax.tree.map(lambda x: (tuple(x.shape), x.dtype), trunk_params) != expected:
      raise ValueError(f"trunk_params do not match model config {model_config} (structure, shapes or dtypes)")
    params["trunk"] = trunk_params
  return train.state_from_params(params, tx, shardings, step_rng)


def compile_reward_train_step(model_config: ModelConfig, head_config: HeadConfig, train_config,
                              objective: RewardObjective, mesh: Mesh, tx: optax.GradientTransformation | None = None):
  """The reward train step jitted once with explicit shardings, state donated (as train.compile_train_step)."""
  if train_config.grad_accum_steps != 1:
    raise ValueError(f"reward training supports config.train.grad_accum_steps = 1 only, got "
                     f"{train_config.grad_accum_steps}")
  tx = tx or train.make_optimizer(train_config)
  _, shardings = reward_state_shardings(model_config, head_config, tx, mesh)
  step = functools.partial(reward_train_step, model_config=model_config, objective=objective, tx=tx,
                           schedule=train.make_schedule(train_config))
  return train.jit_train_step(step, shardings, mesh)


# ---- data ----

class _CheckLength:
  def __init__(self, seq_len: int, fields: Sequence[str]):
    self._seq_len, self._fields = seq_len, tuple(fields)

  def __call__(self, example: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if len(example["inputs"]) > self._seq_len:
      raise ValueError(f"reward example of {len(example['inputs'])} tokens exceeds seq_len={self._seq_len}; "
                       "examples are never truncated (a cut would drop step labels)")
    return {k: example[k] for k in self._fields}


def _to_batch(fields: Sequence[str], batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {f"{k}_BxT": batch[k].astype(np.int32 if k in ("inputs", "targets") else np.float32) for k in fields}
  out["segment_ids_BxT"] = batch["inputs_segment_ids"].astype(np.int32)
  out["positions_BxT"] = batch["inputs_positions"].astype(np.int32)
  return out


def make_reward_dataset(examples: Sequence[Mapping[str, np.ndarray]], *, batch_size: int, seq_len: int,
                        seed: int, fields: Sequence[str] = _FIELDS) -> grain.IterDataset:
  """Infinite shuffled stream of packed batches of encoded examples (prm.encode_labelled_text outputs).

  batch_size is per process; each process reads examples i with i % process_count == process_index.
  Batches hold `<field>_BxT` for each of `fields` (int32 inputs/targets, float32 the rest), plus
  segment_ids_BxT and positions_BxT.
  """
  ds = grain.MapDataset.source(list(examples))
  if jax.process_count() > 1:
    ds = ds[jax.process_index()::jax.process_count()]
  if len(ds) == 0:
    raise ValueError("make_reward_dataset: no examples")
  it = ds.shuffle(seed=seed).repeat().map(_CheckLength(seq_len, fields)).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=4 * batch_size))
  it = grain.experimental.FirstFitPackIterDataset(it, length_struct={k: seq_len for k in fields},
                                                  num_packing_bins=batch_size, shuffle_bins=False)
  return it.batch(batch_size, drop_remainder=True).map(functools.partial(_to_batch, tuple(fields)))


def pad_examples(examples: Sequence[Mapping[str, np.ndarray]], seq_len: int) -> dict[str, np.ndarray]:
  """One example per row, right-padded to seq_len (segment id 0 on padding): a scoring batch."""
  b = len(examples)
  out = {f"{k}_BxT": np.zeros((b, seq_len), np.int32 if k in ("inputs", "targets") else np.float32)
         for k in _FIELDS}
  out["segment_ids_BxT"] = np.zeros((b, seq_len), np.int32)
  out["positions_BxT"] = np.zeros((b, seq_len), np.int32)
  for i, ex in enumerate(examples):
    n = len(ex["inputs"])
    if n > seq_len:
      raise ValueError(f"example {i} has {n} tokens > seq_len={seq_len}")
    for k in _FIELDS:
      out[f"{k}_BxT"][i, :n] = ex[k]
    out["segment_ids_BxT"][i, :n] = 1
    out["positions_BxT"][i, :n] = np.arange(n)
  return out


def fine_tune_reward_model(model_config: ModelConfig, head_config: HeadConfig, train_config: config_lib.TrainConfig,
                           checkpoint_config: config_lib.CheckpointConfig, mesh: Mesh, directory: str,
                           examples: Sequence[Mapping[str, np.ndarray]], trunk_params, *, description: str = "reward"):
  """Train a reward model on encoded examples (`prm.steps.encode_labelled_text`) from `trunk_params`, resumably.

  The reward-model analogue of `train.fine_tune`: checkpoints and the data-iterator position go to
  `<directory>/checkpoints` (a killed run resumes where it stopped; a finished one only loads), the last logged
  metrics to `<directory>/train.json`, and `save_spec` makes the directory loadable by `load_reward_model`
  (e.g. as `rl.process_reward_model`). Returns the trained params.
  """
  tx = train.make_optimizer(train_config)
  abstract, _ = reward_state_shardings(model_config, head_config, tx, mesh)
  last = {}
  with checkpoint.Checkpointer(os.path.join(directory, "checkpoints"), keep=checkpoint_config.keep) as ckpt:
    batches = iter(make_reward_dataset(examples, batch_size=train_config.batch_size // jax.process_count(),
                                       seq_len=train_config.seq_len, seed=train_config.seed))
    if ckpt.latest_step() is not None:
      state, data_state = ckpt.restore(abstract)
      batches.set_state(data_state)
    else:
      state = create_reward_state(model_config, head_config, tx, mesh, train_config.seed, trunk_params=trunk_params)
    if int(state.step) < train_config.steps:
      step_fn = compile_reward_train_step(model_config, head_config, train_config, RewardObjective(), mesh, tx)
      state = train.train_loop(state, step_fn, batches, mesh, num_steps=train_config.steps, checkpointer=ckpt,
                               checkpoint_config=checkpoint_config, log_every=train_config.log_every,
                               description=description, on_log=lambda s, m: last.update(m))
      io.write_json(os.path.join(directory, "train.json"), {"steps": train_config.steps, "final": last})
  save_spec(directory, model_config, head_config, train_config)
  return state.params


# ---- reward-model directories ----

def save_spec(directory: str, model_config: ModelConfig, head_config: HeadConfig, train_config) -> None:
  """Write `<directory>/reward_model.json`: what `load_reward_model` needs to rebuild the checkpoint's state."""
  spec = {"model": dataclasses.asdict(model_config), "head": dataclasses.asdict(head_config),
          "train": dataclasses.asdict(train_config)}
  io.write_json(os.path.join(directory, SPEC_FILE), spec)


def load_reward_model(directory: str, mesh: Mesh) -> tuple[ModelConfig, HeadConfig, dict]:
  """(model config, head config, params on `mesh`) of a trained reward model: a directory with checkpoints/
  and reward_model.json, as experiments/prm_arithmetic/study.py writes them (e.g. runs/prm_arithmetic/prm)."""
  spec_path = os.path.join(directory, SPEC_FILE)
  if not os.path.exists(spec_path):
    raise FileNotFoundError(f"{spec_path} not found: a reward-model directory needs {SPEC_FILE} next to its "
                            "checkpoints/ (experiments/prm_arithmetic/study.py writes both; prm.train.save_spec the file)")
  spec = io.read_json(spec_path)
  model_config = config_lib.from_mapping(ModelConfig, spec["model"], f"{spec_path}:model")
  head_config = config_lib.from_mapping(HeadConfig, spec["head"], f"{spec_path}:head")
  train_config = config_lib.from_mapping(config_lib.TrainConfig, spec["train"], f"{spec_path}:train")
  abstract, _ = reward_state_shardings(model_config, head_config, train.make_optimizer(train_config), mesh)
  with checkpoint.Checkpointer(os.path.join(directory, "checkpoints")) as ckpt:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {os.path.join(directory, 'checkpoints')}")
    # the final step exactly (CheckpointError naming it when it does not restore): an older one would be
    # a partly trained reward model
    state, _ = ckpt.restore(abstract, step=ckpt.latest_step())
  return model_config, head_config, state.params


# ---- scoring ----

@functools.partial(jax.jit, static_argnames=("model_config", "neutral_positive"))
def _score_batch(model_config: ModelConfig, params, inputs_BxT, segment_ids_BxT, positions_BxT,
                 neutral_positive: bool = True):
  out = reward_forward(model_config, params, inputs_BxT, segment_ids_BxT=segment_ids_BxT,
                       positions_BxT=positions_BxT)
  prm = (step_good_probability(out.prm_logits_BxTxC, neutral_positive) if out.prm_logits_BxTxC is not None
         else jnp.zeros(inputs_BxT.shape))
  orm = jax.nn.sigmoid(out.orm_logits_BxT) if out.orm_logits_BxT is not None else jnp.zeros(inputs_BxT.shape)
  return prm, orm


def score_examples(model_config: ModelConfig, params, examples: Sequence[Mapping[str, np.ndarray]], *,
                   mesh: Mesh, batch_size: int, seq_len: int,
                   neutral_positive: bool = True) -> tuple[list[list[float]], list[float]]:
  """(P(step good) at each labelled step end, P(correct) from the ORM at the last token) per example.

  Positions to read come from each example's step_mask (so encode with a target, e.g. 0, for every step
  to be scored). Rows go in fixed-size batches (the last one padded) so the forward compiles once.
  """
  batch_size = -(-batch_size // sharding.batch_divisor(mesh)) * sharding.batch_divisor(mesh)
  steps_out, orm_out = [], []
  for start in range(0, len(examples), batch_size):
    chunk = list(examples[start:start + batch_size])
    batch = pad_examples(chunk + [chunk[0]] * (batch_size - len(chunk)), seq_len)
    prm_BxT, orm_BxT = sharding.to_host(_score_batch(
        model_config, params, *(sharding.shard_global_batch(batch[k], mesh)
                                for k in ("inputs_BxT", "segment_ids_BxT", "positions_BxT")),
        neutral_positive=neutral_positive))
    for i, ex in enumerate(chunk):
      n = len(ex["inputs"])
      steps_out.append([float(p) for p in prm_BxT[i, :n][ex["step_mask"] > 0]])
      orm_out.append(float(orm_BxT[i, n - 1]))
  return steps_out, orm_out
