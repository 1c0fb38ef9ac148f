"""The policy-gradient update step: one batch of K sampled responses per question -> updated policy.

    state, metrics = step(state, batch, rng[, ref_params])     (jitted once by `compile_pg_step`)

Inside one jit, sharded over the mesh like the supervised train step (state by the partition rules,
batch rows over data x fsdp, state donated):

  1. reference log-probs log π_ref(y_t) — only when rl.kl_coef > 0: with β = 0 the compiled step takes no
     reference parameters and runs no reference forward pass;
  2. rewards R_b (the verifier's indicator, from the host), minus β Σ_t k_bt when rl.kl_mode = "reward";
  3. advantages A_b from the registry (advantages.py), over groups of rl.samples_per_question rows; or, with
     rl.credit = "reward_to_go" / "gae", per-token advantages A_bt from the step rewards (credit.py; GAE
     reads a value head on the policy trunk, fitted in the same updates with weight rl.value_coef);
  4. rl.ppo_epochs passes over the batch, each in rl.minibatches optimizer steps, on
     objectives.policy_gradient_loss with π_old = the sampler's own log-probs (the policy that sampled);
  5. the adaptive β update toward rl.kl_target (kl.adaptive_kl_coef), when enabled.

The policy is softmax(logits / rl.temperature) in both the sampler and here, so on the first update the
importance ratio is 1 up to float rounding (its deviation is logged as approx_kl_old).

Batch (global arrays, [B, T] rows = BOS + prompt + response, right-padded; built by rl.build_batch):
inputs_BxT, targets_BxT, loss_mask_BxT (1 on response tokens), segment_ids_BxT, positions_BxT,
old_logps_BxT (sampler log-probs, aligned with targets), rewards_B, valid_B (bool; False = no sample);
with rl.credit != "sequence" also step_rewards_BxT (r_k at step k's closing token), step_ends_BxT (the
number of steps closing at each token) and outcome_B (R_b, earned at the last response token), from
pg.rewards.step_fields; rewards_B is then the total R_b + Σ_k r_bk (logged as "reward").
Rows are question-major: row g·K + k is sample k of question g.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from star_jax import losses, models, sharding, train
from star_jax.config import TrainConfig
from star_jax.models import ModelConfig, heads
from star_jax.pg import advantages, credit, kl, objectives
from star_jax.pg.config import RLConfig

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class PGState:
  train: train.TrainState  # step counts RL steps (each = rl.ppo_epochs x rl.minibatches optimizer steps)
  kl_coef: jax.Array  # float32 scalar β (changes only with the adaptive controller)


@flax.struct.dataclass
class PGValueState(PGState):
  """The state of rl.credit = "gae": a PGState plus the value head (a separate class, so the checkpoints of
  every other configuration keep PGState's tree)."""
  value: Any  # {"params": the value head {w_DxC, b_C}, "opt_state": its Adam state}


def value_optimizer(rl: RLConfig) -> optax.GradientTransformation:
  """Adam at rl.value_lr for the value head (the trunk it reads is the policy's, updated by the policy optimizer)."""
  return optax.adam(rl.value_lr)


def init_value_head(model_config: ModelConfig) -> dict:
  """A zero linear head d_model -> 1 in float32 (V = 0 before any update; heads.apply_head reads it)."""
  return {"w_DxC": jnp.zeros((model_config.d_model, 1), jnp.float32), "b_C": jnp.zeros((1,), jnp.float32)}


def optimizer_config(train_config: TrainConfig, rl: RLConfig) -> TrainConfig:
  """AdamW settings of train.* with the RL learning rate, warmup and a constant schedule over all updates."""
  return dataclasses.replace(train_config, lr=rl.lr, warmup_steps=rl.warmup_steps, decay="constant",
                             steps=rl.steps * rl.updates_per_step, grad_accum_steps=1)


def response_logps(model_config: ModelConfig, params, batch: Batch, temperature: float
                   ) -> tuple[jax.Array, jax.Array]:
  """(log π(target_t | prefix), entropy of π at t) under π = softmax(logits / temperature); [B, T] each."""
  logits_BxTxV = models.forward(model_config, params, batch["inputs_BxT"], segment_ids_BxT=batch["segment_ids_BxT"],
                                positions_BxT=batch["positions_BxT"]) / temperature
  return losses.token_logprobs(logits_BxTxV, batch["targets_BxT"]), losses.token_entropy(logits_BxTxV)


def policy_outputs(model_config: ModelConfig, params, value_head, batch: Batch, temperature: float
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(log π(target_t | prefix), entropy of π at t, V(prefix) of the value head on the trunk's final hidden
  state at t); [B, T] each, from one forward pass."""
  logits_BxTxV, hidden_BxTxD = models.forward_with_hidden(model_config, params, batch["inputs_BxT"],
                                                          segment_ids_BxT=batch["segment_ids_BxT"],
                                                          positions_BxT=batch["positions_BxT"])
  logits_BxTxV = logits_BxTxV / temperature
  values_BxT = heads.apply_head(value_head, hidden_BxTxD)[..., 0]
  return losses.token_logprobs(logits_BxTxV, batch["targets_BxT"]), losses.token_entropy(logits_BxTxV), values_BxT


def token_kl(logps_BxT: jax.Array, ref_logps_BxT: jax.Array, mask_BxT: jax.Array, estimator: str) -> jax.Array:
  """m_bt k(log π − log π_ref) per token (0 where a log-prob is not finite)."""
  on_BxT = (mask_BxT > 0) & jnp.isfinite(logps_BxT) & jnp.isfinite(ref_logps_BxT)
  k_BxT = kl.get_estimator(estimator)(jnp.where(on_BxT, logps_BxT, 0.0), jnp.where(on_BxT, ref_logps_BxT, 0.0))
  return jnp.where(on_BxT, k_BxT, 0.0)


def sequence_kl(logps_BxT: jax.Array, ref_logps_BxT: jax.Array, mask_BxT: jax.Array, estimator: str) -> jax.Array:
  """Σ_t m_bt k(log π − log π_ref): the per-sequence KL estimate (0 where a log-prob is not finite)."""
  return jnp.sum(token_kl(logps_BxT, ref_logps_BxT, mask_BxT, estimator), axis=1)


def shaped_rewards(rewards_B: jax.Array, kl_seq_B: jax.Array, kl_coef: jax.Array) -> jax.Array:
  """R'_b = R_b − β Σ_t k_bt: the KL penalty in the reward (Ziegler et al. 2019, arXiv 1909.08593, eq. 2).

  With k1, E[R' ∇log π(y)] = ∇(J − β KL(π‖π_ref)) exactly (by E[∇log π] = 0); it then goes through the
  advantage estimator like the reward itself.
  """
  return rewards_B - kl_coef * kl_seq_B


def _split(tree, n: int):
  """[B, ...] -> [n, B/n, ...] with part i = rows i, i+n, ... (each part stays spread over devices)."""
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1), tree)


def _merge(x):
  """Inverse of _split for one array: [n, B/n, ...] -> [B, ...]."""
  return jnp.swapaxes(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _reference_logps(model_config: ModelConfig, ref_params, batch: Batch, rl: RLConfig) -> jax.Array:
  """log π_ref on the batch, one minibatch at a time (bounded activation memory); no gradient."""
  fields = ("inputs_BxT", "targets_BxT", "segment_ids_BxT", "positions_BxT")
  parts = _split({k: batch[k] for k in fields}, rl.minibatches)
  logps_NxBxT = jax.lax.map(lambda part: response_logps(model_config, ref_params, part, rl.temperature)[0], parts)
  return jax.lax.stop_gradient(_merge(logps_NxBxT))


def _values(model_config: ModelConfig, params, value_head, batch: Batch, rl: RLConfig) -> jax.Array:
  """V on the batch under the current parameters, one minibatch at a time; no gradient."""
  fields = ("inputs_BxT", "targets_BxT", "segment_ids_BxT", "positions_BxT")
  parts = _split({k: batch[k] for k in fields}, rl.minibatches)
  values_NxBxT = jax.lax.map(lambda part: policy_outputs(model_config, params, value_head, part, rl.temperature)[2], parts)
  return jax.lax.stop_gradient(_merge(values_NxBxT))


def token_advantages(model_config: ModelConfig, state: PGState, batch: Batch, rl: RLConfig, kl_BxT: jax.Array
                     ) -> tuple[jax.Array, jax.Array | None]:
  """(A_BxT, GAE's λ-returns or None) of rl.credit = "reward_to_go" / "gae" (pg/credit.py) from the batch's
  step rewards and outcome; kl_BxT = β · k per token, subtracted from the token rewards (kl_mode "reward")."""
  mask_BxT = batch["loss_mask_BxT"].astype(jnp.float32)
  valid_B = batch["valid_B"].astype(jnp.bool_)
  on_BxT = (mask_BxT > 0) & valid_B[:, None]
  outcome_B = jnp.where(valid_B, batch["outcome_B"].astype(jnp.float32), 0.0)
  rewards_BxT = credit.token_rewards(batch["step_rewards_BxT"], outcome_B, on_BxT) - kl_BxT
  if rl.credit == "reward_to_go":
    return credit.reward_to_go_advantages(rewards_BxT, batch["step_ends_BxT"], outcome_B, on_BxT, valid_B,
                                          group_size=rl.samples_per_question, baseline=rl.advantage == "rloo"), None
  values_BxT = _values(model_config, state.train.params, state.value["params"], batch, rl)
  return credit.gae(rewards_BxT, values_BxT, on_BxT, gamma=rl.gae_gamma, lam=rl.gae_lambda)


def pg_step(state: PGState, batch: Batch, rng: jax.Array, ref_params=None, *, model_config: ModelConfig,
            rl: RLConfig, tx: optax.GradientTransformation, schedule: optax.Schedule
            ) -> tuple[PGState, dict[str, jax.Array]]:
  """One RL step on a batch of samples (module docstring); deterministic (`rng` kept for the uniform
  step signature)."""
  del rng
  if rl.uses_value_head != isinstance(state, PGValueState):
    raise ValueError(f"rl.credit={rl.credit!r} needs a PGState {'with' if rl.uses_value_head else 'without'} a value "
                     "head: make it with create_state(..., rl=rl) / state_shardings(..., rl)")
  mask_BxT = batch["loss_mask_BxT"].astype(jnp.float32)
  valid_B = batch["valid_B"].astype(jnp.bool_)
  b = valid_B.shape[0]
  g, k = b // rl.samples_per_question, rl.samples_per_question
  valid_f_B = valid_B.astype(jnp.float32)
  n_valid = jnp.maximum(jnp.sum(valid_f_B), 1.0)
  rewards_B = jnp.where(valid_B, batch["rewards_B"].astype(jnp.float32), 0.0)
  beta = state.kl_coef

  data = dict(batch)
  kl_seq_B = jnp.zeros((b,), jnp.float32)
  if rl.uses_reference:
    if ref_params is None:
      raise ValueError("rl.kl_coef > 0 needs the reference parameters")
    data["ref_logps_BxT"] = _reference_logps(model_config, ref_params, batch, rl)
    kl_seq_B = sequence_kl(batch["old_logps_BxT"], data["ref_logps_BxT"], mask_BxT, rl.kl_estimator)
  reward_for_advantage_B = rewards_B
  if rl.uses_reference and rl.kl_mode == "reward":
    reward_for_advantage_B = shaped_rewards(rewards_B, kl_seq_B, beta)
  adv_key = "advantages_B" if rl.credit == "sequence" else "advantages_BxT"
  if rl.credit == "sequence":
    data["advantages_B"] = advantages.compute(rl.advantage, reward_for_advantage_B.reshape(g, k),
                                              valid_B.reshape(g, k)).reshape(b)
  else:
    kl_BxT = jnp.zeros_like(mask_BxT)
    if rl.uses_reference and rl.kl_mode == "reward":  # the KL penalty per token: -β k_t in r_t
      kl_BxT = beta * token_kl(batch["old_logps_BxT"], data["ref_logps_BxT"], mask_BxT, rl.kl_estimator)
    data["advantages_BxT"], returns_BxT = token_advantages(model_config, state, batch, rl, kl_BxT)
    if returns_BxT is not None:
      data["returns_BxT"] = returns_BxT
  kl_in_loss = rl.uses_reference and rl.kl_mode == "loss"

  def loss_fn(params, mb, value_head=None):
    if value_head is None:
      logps_BxT, entropy_BxT = response_logps(model_config, params, mb, rl.temperature)
    else:
      logps_BxT, entropy_BxT, values_BxT = policy_outputs(model_config, params, value_head, mb, rl.temperature)
    numerator, denominator, aux = objectives.policy_gradient_loss(
        logps_BxT, mb["old_logps_BxT"], mb["loss_mask_BxT"], mb[adv_key], clip_eps=rl.clip_eps,
        normalisation=rl.normalisation, ref_logps_BxT=mb["ref_logps_BxT"] if kl_in_loss else None,
        kl_coef=beta, kl_estimator=rl.kl_estimator, valid_B=mb["valid_B"])
    on_BxT = mb["loss_mask_BxT"] > 0
    aux["entropy"] = jnp.sum(jnp.where(on_BxT, entropy_BxT, 0.0))
    loss = numerator / jnp.maximum(denominator, 1.0)
    if value_head is not None:  # L = L_pg + c · ½(V − Ĝ)² (token mean); the trunk gets both gradients
      v_numerator, v_denominator = objectives.value_loss(values_BxT, mb["returns_BxT"], mb["loss_mask_BxT"],
                                                         mb["valid_B"])
      aux["value_loss"] = v_numerator / jnp.maximum(v_denominator, 1.0)
      loss = loss + rl.value_coef * aux["value_loss"]
    return loss, aux

  minibatches = _split(data, rl.minibatches)

  if not rl.uses_value_head:
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def update(carry, i):
      params, opt_state = carry
      mb = jax.tree.map(lambda x: x[i % rl.minibatches], minibatches)
      (loss, aux), grads = grad_fn(params, mb)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state), (loss, aux, optax.tree.norm(grads), optax.tree.norm(updates))

    (params, opt_state), (loss_U, aux_U, grad_norm_U, update_norm_U) = jax.lax.scan(
        update, (state.train.params, state.train.opt_state), jnp.arange(rl.updates_per_step))
    new_value = None
  else:
    value_tx = value_optimizer(rl)
    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 2), has_aux=True)

    def update(carry, i):
      params, opt_state, head, head_opt_state = carry
      mb = jax.tree.map(lambda x: x[i % rl.minibatches], minibatches)
      (loss, aux), (grads, head_grads) = grad_fn(params, mb, head)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      head_updates, head_opt_state = value_tx.update(head_grads, head_opt_state, head)
      head = optax.apply_updates(head, head_updates)
      return (params, opt_state, head, head_opt_state), (loss, aux, optax.tree.norm(grads), optax.tree.norm(updates))

    (params, opt_state, head, head_opt_state), (loss_U, aux_U, grad_norm_U, update_norm_U) = jax.lax.scan(
        update, (state.train.params, state.train.opt_state, state.value["params"], state.value["opt_state"]),
        jnp.arange(rl.updates_per_step))
    new_value = {"params": head, "opt_state": head_opt_state}

  totals = {name: jnp.sum(v) for name, v in aux_U.items()}
  tokens = jnp.maximum(totals["tokens"], 1.0)
  group_valid_GxK = valid_B.reshape(g, k)
  group_rewards_GxK = rewards_B.reshape(g, k)
  spread_G = (jnp.max(jnp.where(group_valid_GxK, group_rewards_GxK, -jnp.inf), axis=1)
              - jnp.min(jnp.where(group_valid_GxK, group_rewards_GxK, jnp.inf), axis=1))
  nonempty_G = jnp.any(group_valid_GxK, axis=1)
  metrics = {
      "loss": jnp.mean(loss_U),
      "reward": jnp.sum(rewards_B) / n_valid,
      "advantage_abs": (jnp.sum(jnp.abs(data["advantages_B"])) / n_valid if rl.credit == "sequence" else  # per token
                        jnp.sum(jnp.abs(data["advantages_BxT"])) / jnp.maximum(jnp.sum(mask_BxT * valid_f_B[:, None]), 1.0)),
      "groups_all_equal": jnp.sum(nonempty_G & (spread_G == 0)) / jnp.maximum(jnp.sum(nonempty_G), 1),
      "response_length": jnp.sum(mask_BxT * valid_f_B[:, None]) / n_valid,
      "entropy": totals["entropy"] / tokens,
      "clip_fraction": totals["clipped"] / tokens,
      "approx_kl_old": totals["approx_kl_old"] / tokens,
      "dropped_rows": totals["dropped_rows"] / rl.ppo_epochs,
      "grad_norm": grad_norm_U[-1],
      "update_norm": update_norm_U[-1],
      "param_norm": optax.tree.norm(params),
      "lr": schedule(state.train.step * rl.updates_per_step),
  }
  if new_value is not None:
    metrics["value_loss"] = totals["value_loss"] / rl.updates_per_step
    on_BxT = mask_BxT * valid_f_B[:, None]
    metrics["return_mean"] = jnp.sum(data["returns_BxT"] * on_BxT) / jnp.maximum(jnp.sum(on_BxT), 1.0)
  new_beta = beta
  if rl.uses_reference:
    mean_kl = jnp.sum(kl_seq_B * valid_f_B) / n_valid
    metrics.update(kl=mean_kl, kl_coef=beta)
    if rl.kl_mode == "reward":
      metrics["shaped_reward"] = jnp.sum(reward_for_advantage_B * valid_f_B) / n_valid
    if rl.kl_target > 0:
      new_beta = kl.adaptive_kl_coef(beta, mean_kl, target=rl.kl_target, horizon=rl.kl_horizon,
                                     n_samples=jnp.sum(valid_f_B))
  new_train = state.train.replace(step=state.train.step + 1, params=params, opt_state=opt_state)
  if new_value is None:
    return PGState(train=new_train, kl_coef=new_beta.astype(jnp.float32)), metrics
  return PGValueState(train=new_train, kl_coef=new_beta.astype(jnp.float32), value=new_value), metrics


# ---- sharded state creation and compilation ----

def _fresh_value(model_config: ModelConfig, rl: RLConfig) -> dict:
  head = init_value_head(model_config)
  return {"params": head, "opt_state": value_optimizer(rl).init(head)}


def state_shardings(model_config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                    rl: RLConfig | None = None):
  """(abstract PGState with shardings attached, PGState of NamedShardings); with a value head (replicated)
  when rl.credit = "gae"."""
  abstract_train, train_shardings = train.state_shardings(model_config, tx, mesh)
  replicated = sharding.replicated(mesh)
  abstract_kl = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
  if rl is None or not rl.uses_value_head:
    return PGState(train=abstract_train, kl_coef=abstract_kl), PGState(train=train_shardings, kl_coef=replicated)
  value_shapes = jax.eval_shape(functools.partial(_fresh_value, model_config, rl))
  value_shardings = jax.tree.map(lambda _: replicated, value_shapes)
  abstract_value = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), value_shapes)
  return (PGValueState(train=abstract_train, kl_coef=abstract_kl, value=abstract_value),
          PGValueState(train=train_shardings, kl_coef=replicated, value=value_shardings))


def create_state(model_config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh, seed: int, params,
                 kl_coef: float, rl: RLConfig | None = None) -> PGState:
  """A fresh PGState on `mesh` starting from `params` (the base model) with β = kl_coef, and a zero value
  head when rl.credit = "gae"."""
  state = train.create_train_state(model_config, tx, mesh, seed, params=params)
  kl = jax.device_put(jnp.float32(kl_coef), sharding.replicated(mesh))
  if rl is None or not rl.uses_value_head:
    return PGState(train=state, kl_coef=kl)
  return PGValueState(train=state, kl_coef=kl, value=jax.device_put(_fresh_value(model_config, rl), sharding.replicated(mesh)))


def compile_pg_step(model_config: ModelConfig, train_config: TrainConfig, rl: RLConfig, mesh: Mesh,
                    tx: optax.GradientTransformation | None = None):
  """pg_step jitted once; (state, batch, rng, ref_params) when rl.kl_coef > 0, else (state, batch, rng)."""
  opt_config = optimizer_config(train_config, rl)
  tx = tx or train.make_optimizer(opt_config)
  _, shardings = state_shardings(model_config, tx, mesh, rl)
  step = functools.partial(pg_step, model_config=model_config, rl=rl, tx=tx,
                           schedule=train.make_schedule(opt_config))
  in_shardings = (shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh))
  if rl.uses_reference:
    in_shardings += (shardings.train.params,)
  else:
    step = functools.partial(step, ref_params=None)
  return jax.jit(sharding.under_mesh(step, mesh), in_shardings=in_shardings,
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)


def compile_response_logps(model_config: ModelConfig, temperature: float, mesh: Mesh):
  """jit((params, batch) -> log π(target_t)) for measuring KL(π‖π_ref) on held-out samples."""
  fn = lambda params, batch: response_logps(model_config, params, batch, temperature)[0]  # noqa: E731
  return jax.jit(sharding.under_mesh(fn, mesh), out_shardings=sharding.batch_sharding(mesh))
