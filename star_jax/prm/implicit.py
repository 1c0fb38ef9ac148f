"""Implicit process reward model: an LM whose log-ratio to a frozen reference is the per-token reward.

Yuan et al. 2024 ("Free Process Rewards without Process Labels", arXiv 2412.01981) and PRIME (Cui et al. 2025,
"Process Reinforcement through Implicit Rewards", arXiv 2502.01456): a language model π_φ initialised from
the policy (π_ref = the policy, frozen) defines, for every generated token y_t,

  r_t = β · log π_φ(y_t | y_<t) / π_ref(y_t | y_<t)        q_t = Σ_{i ≤ t} r_i

and is trained only through its sequence-level sum: L_outcome = BCE(σ(q_T), 1(ŷ = y)) (objective
"outcome", Yuan et al. eq. 5 with the cross-entropy loss). q_t is then the implicit Q value of the prefix
y_≤t, and a step's reward is the sum of r over its tokens, q_{end_k} − q_{end_{k−1}}. With exact step
labels the same parametrisation can be trained on the prefix sums directly: L_step = mean_k
BCE(σ(q_{end_k}), label_k) (objective "step"), label_k = 1 iff steps 0..k are all correct. At
initialisation φ = ref, so every r_t = 0 and every score is σ(0) = 1/2.

The step scores read here: "prefix" P̂_k = σ(q_{end_k}) (the implicit value of the prefix through step k)
and "step" σ(q_{end_k} − q_{end_{k−1}}) (the step's own reward sum).

Batches use `prm.encode_labelled_text`'s fields with outcome labels at the last position only
(orm_all_tokens=False), plus `ref_logps` = log π_ref(targets[i] | inputs[≤i]) at every position, computed
once before training (`with_reference_logps`) so the train step runs one forward/backward of π_φ only.
Position i holds the log-prob of targets[i] = inputs[i+1]: r lives at the loss_mask positions, q_T is the
inclusive sum at the last position (the EOS target), and the prefix through a step ending at position p_k
(the step's closing token is inputs[p_k]) is the exclusive sum at p_k. Packed rows restart sums at
every segment (positions == 0).

The train step is star_jax/train.py's: a module-level pure function over its `TrainState` (params = π_φ, a
plain LM), jitted once with the state's shardings and donated, run by `train.train_loop`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from star_jax import losses, models, train
from star_jax.models import ModelConfig
from star_jax.prm import logprob
from star_jax.prm import losses as reward_losses
from star_jax.prm import train as prm_train
from star_jax.train import TrainState

OBJECTIVES = ("outcome", "step")
FIELDS = ("inputs", "targets", "loss_mask", "step_mask", "step_targets", "orm_mask", "orm_targets", "ref_logps")


@dataclasses.dataclass(frozen=True)
class ImplicitObjective:
  beta: float = 0.05  # r_t = β log π_φ/π_ref (PRIME's default)
  objective: str = "outcome"  # "outcome": BCE(σ(q_T), 1(ŷ = y)); "step": BCE(σ(q_{end_k}), label_k)

  def __post_init__(self):
    if self.beta <= 0:
      raise ValueError(f"implicit PRM: beta must be > 0, got {self.beta}")
    if self.objective not in OBJECTIVES:
      raise ValueError(f"implicit PRM: unknown objective {self.objective!r}; choose one of {OBJECTIVES}")


def token_rewards(logps_BxT: jax.Array, ref_logps_BxT: jax.Array, mask_BxT: jax.Array, beta: float) -> jax.Array:
  """r_t = β (log π_φ(y_t|y<t) − log π_ref(y_t|y<t)) at masked positions, 0 elsewhere (Yuan et al. 2024, eq. 2)."""
  return beta * (logps_BxT.astype(jnp.float32) - ref_logps_BxT.astype(jnp.float32)) * mask_BxT.astype(jnp.float32)


def segment_cumsum(x_BxT: jax.Array, positions_BxT: jax.Array) -> jax.Array:
  """Inclusive running sum along T that restarts at every segment start (positions == 0): q_t = Σ_{s ≤ i ≤ t} x_i."""
  t = x_BxT.shape[1]
  total_BxT = jnp.cumsum(x_BxT, axis=1)
  start_BxT = jax.lax.cummax(jnp.where(positions_BxT == 0, jnp.arange(t)[None, :], 0), axis=1)
  before_BxT = jnp.take_along_axis(total_BxT - x_BxT, start_BxT, axis=1)  # exclusive sum at the segment start
  return total_BxT - before_BxT


def implicit_loss(model_config: ModelConfig, objective: ImplicitObjective, params, batch: Mapping[str, jax.Array]):
  """(loss, metrics): the BCE of σ(q) at the objective's positions, normalised by their count (at least 1).

    outcome: Σ_b BCE(σ(q_{T_b}), 1(ŷ_b = y_b)) over the orm_mask positions (one per solution)
    step:    Σ_{b,k} BCE(σ(q_{end_k} − r_{end_k}), label_k) over the step_mask positions (exclusive sums)
  """
  logits_BxTxV = models.forward(model_config, params, batch["inputs_BxT"], segment_ids_BxT=batch["segment_ids_BxT"],
                                positions_BxT=batch["positions_BxT"])
  r_BxT = token_rewards(losses.token_logprobs(logits_BxTxV, batch["targets_BxT"]), batch["ref_logps_BxT"],
                        batch["loss_mask_BxT"], objective.beta)
  q_BxT = segment_cumsum(r_BxT, batch["positions_BxT"])
  if objective.objective == "outcome":
    z_BxT, y_BxT, m_BxT = q_BxT, batch["orm_targets_BxT"], batch["orm_mask_BxT"]
  else:
    z_BxT, y_BxT, m_BxT = q_BxT - r_BxT, batch["step_targets_BxT"], batch["step_mask_BxT"]
  s, w = reward_losses.binary_step_loss_sums(z_BxT, y_BxT, m_BxT)
  hits, _ = reward_losses.binary_accuracy_sums(z_BxT, y_BxT, m_BxT)
  mask_BxT = batch["loss_mask_BxT"].astype(jnp.float32)
  metrics = {"labels": w, "accuracy": hits / jnp.maximum(w, 1.0),
             "mean_abs_reward": jnp.sum(jnp.abs(r_BxT)) / jnp.maximum(jnp.sum(mask_BxT), 1.0)}
  return s / jnp.maximum(w, 1.0), metrics


def implicit_train_step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array, *,
                        model_config: ModelConfig, objective: ImplicitObjective, tx: optax.GradientTransformation,
                        schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """One AdamW update of π_φ on `implicit_loss` (deterministic: rng unused; train.loss_train_step)."""
  return train.loss_train_step(state, batch, rng, loss_fn=functools.partial(implicit_loss, model_config, objective),
                               tx=tx, schedule=schedule)


def compile_implicit_train_step(model_config: ModelConfig, train_config, objective: ImplicitObjective, mesh: Mesh,
                                tx: optax.GradientTransformation | None = None):
  """The step jitted once with train.state_shardings (π_φ is a plain LM), the state donated."""
  if train_config.grad_accum_steps != 1:
    raise ValueError(f"implicit PRM training supports grad_accum_steps = 1 only, got {train_config.grad_accum_steps}")
  tx = tx or train.make_optimizer(train_config)
  _, shardings = train.state_shardings(model_config, tx, mesh)
  step = functools.partial(implicit_train_step, model_config=model_config, objective=objective, tx=tx,
                           schedule=train.make_schedule(train_config))
  return train.jit_train_step(step, shardings, mesh)


# ---- data ----

def with_reference_logps(model_config: ModelConfig, ref_params, examples: Sequence[Mapping[str, np.ndarray]], *,
                         mesh: Mesh, batch_size: int, seq_len: int) -> list[dict[str, np.ndarray]]:
  """Each example with `ref_logps` [L] = log π_ref(targets[i] | inputs[≤i]) added (one batched forward)."""
  stats = logprob.token_logprobs(model_config, ref_params, examples, mesh=mesh, batch_size=batch_size, seq_len=seq_len)
  return [{**ex, "ref_logps": s["logps"]} for ex, s in zip(examples, stats)]


def make_dataset(examples: Sequence[Mapping[str, np.ndarray]], *, batch_size: int, seq_len: int,
                 seed: int) -> grain.IterDataset:
  """Infinite shuffled stream of packed batches: prm.train.make_reward_dataset with ref_logps_BxT too."""
  return prm_train.make_reward_dataset(examples, batch_size=batch_size, seq_len=seq_len, seed=seed, fields=FIELDS)


# ---- scoring ----

def scores_from_logps(logps_L: np.ndarray, ref_logps_L: np.ndarray, loss_mask_L: np.ndarray, step_mask_L: np.ndarray,
                      beta: float) -> dict[str, list[float] | float]:
  """One solution's implicit scores from π_φ and π_ref log-probs at its positions:

    prefix[k] = σ(q_{end_k})   step[k] = σ(q_{end_k} − q_{end_{k−1}})   outcome = σ(q_T)
    (q_{end_k} = Σ_{i < p_k} r_i, q_T = Σ_i r_i; raw sums under "q", "step_sums", "q_T").
  """
  r_L = beta * (np.asarray(logps_L, np.float64) - np.asarray(ref_logps_L, np.float64)) * (np.asarray(loss_mask_L) > 0)
  exclusive_L = np.cumsum(r_L) - r_L
  ends = np.flatnonzero(np.asarray(step_mask_L) > 0)
  q_S = exclusive_L[ends]
  sums_S = np.diff(np.concatenate([[0.0], q_S]))
  sigmoid = lambda x: 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))  # noqa: E731
  return {"prefix": sigmoid(q_S).tolist(), "step": sigmoid(sums_S).tolist(), "outcome": float(sigmoid(r_L.sum())),
          "q": q_S.tolist(), "step_sums": sums_S.tolist(), "q_T": float(r_L.sum())}


def score_examples(model_config: ModelConfig, params, examples: Sequence[Mapping[str, np.ndarray]], *, beta: float,
                   mesh: Mesh, batch_size: int, seq_len: int) -> list[dict]:
  """`scores_from_logps` of every example (with `ref_logps`) under π_φ = params, in fixed-shape batches."""
  stats = logprob.token_logprobs(model_config, params, examples, mesh=mesh, batch_size=batch_size, seq_len=seq_len)
  return [scores_from_logps(s["logps"], ex["ref_logps"], ex["loss_mask"], ex["step_mask"], beta)
          for ex, s in zip(examples, stats)]
