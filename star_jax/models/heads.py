"""Reward heads on the decoder's final hidden states: a process reward head (PRM) and an outcome head (ORM).

    lm_logits_BxTxV, hidden_BxTxD = forward_with_hidden(config, params["trunk"], tokens_BxT)
    prm_logits_BxTxC = hidden_BxTxD @ W_prm + b_prm     read at the last token of every reasoning step
    orm_logits_BxT   = hidden_BxTxD @ w_orm + b_orm     read at the last token of the solution

Process supervision (Lightman et al. 2023, "Let's Verify Step by Step", arXiv 2305.20050) rates every
step: C = 3 classes for PRM800K's ratings -1/0/+1 (class = rating + 1), or C = 1 logit for binary or soft
(Monte-Carlo, Math-Shepherd arXiv 2312.08935) labels, P(step good) = sigmoid(logit). Outcome supervision
(Cobbe et al. 2021, arXiv 2110.14168) predicts whether the final answer is right.

A reward model is the pytree {"trunk": LM params, "prm": {...}, "orm": {...}} (heads absent when disabled).
The trunk is any decoder checkpoint (a policy trained here, or `load_hf`); sharing it with the policy just
means training the same tree with the LM loss switched on (prm_train.RewardObjective.lm_weight > 0), so the
LM logits stay usable for sampling. Heads are zero-initialised: every prediction starts at P = 1/2 (C = 1)
or uniform (C = 3).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from star_jax.models.config import ModelConfig
from star_jax.models.functional import forward_with_hidden, init_boxed_params, logical_axes

Params = dict


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """Which reward heads a reward model has."""

  prm_classes: int = 1  # 0: no process head; 1: one logit (binary / soft labels); 3: ratings -1/0/+1
  orm: bool = False  # an outcome head (one logit: P(final answer correct))

  def __post_init__(self):
    if self.prm_classes not in (0, 1, 3):
      raise ValueError(f"reward.prm_classes must be 0 (off), 1 (binary) or 3 (ratings -1/0/+1), "
                       f"got {self.prm_classes}")
    if self.prm_classes == 0 and not self.orm:
      raise ValueError("a reward model needs a process head (reward.prm_classes > 0) or an outcome head "
                       "(reward.orm = True)")


class RewardOutputs(NamedTuple):
  lm_logits_BxTxV: jax.Array  # the trunk's language-model logits (float32)
  prm_logits_BxTxC: jax.Array | None  # per-position step logits (float32), C = prm_classes
  orm_logits_BxT: jax.Array | None  # per-position outcome logit (float32)


def _boxed_head(d_model: int, num_outputs: int, dtype: str) -> dict:
  """Zero-initialised linear head, boxed with its logical axes (W: embed x -, b: -)."""
  w = nn.with_logical_partitioning(nn.initializers.zeros, ("embed", None))
  b = nn.with_logical_partitioning(nn.initializers.zeros, (None,))
  key = jax.random.key(0)  # unused by the zeros initializer
  return {"w_DxC": w(key, (d_model, num_outputs), jnp.dtype(dtype)),
          "b_C": b(key, (num_outputs,), jnp.dtype(dtype))}


def init_boxed_reward_params(model_config: ModelConfig, head_config: HeadConfig, rng: jax.Array) -> dict:
  """Reward-model parameters in flax `LogicallyPartitioned` boxes (trunk random from `rng`, heads zero)."""
  params = {"trunk": init_boxed_params(model_config, rng)}
  d, dtype = model_config.d_model, model_config.param_dtype
  if head_config.prm_classes:
    params["prm"] = _boxed_head(d, head_config.prm_classes, dtype)
  if head_config.orm:
    params["orm"] = _boxed_head(d, 1, dtype)
  return params


def init_reward_params(model_config: ModelConfig, head_config: HeadConfig, rng: jax.Array,
                       trunk_params: Params | None = None) -> Params:
  """Plain reward-model params; the trunk is `trunk_params` (any checkpoint, e.g. from load_hf) if given."""
  params = jax.jit(lambda key: nn.unbox(init_boxed_reward_params(model_config, head_config, key)))(rng)
  if trunk_params is not None:
    want = jax.tree.map(lambda x: (x.shape, x.dtype), params["trunk"])
    got = jax.tree.map(lambda x: (tuple(x.shape), x.dtype), trunk_params)
    if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
      raise ValueError("trunk_params do not match the model config (tree structure, shapes or dtypes differ); "
                       f"config: {model_config}")
    params["trunk"] = trunk_params
  return params


@functools.lru_cache(maxsize=32)
def reward_logical_axes(model_config: ModelConfig, head_config: HeadConfig):
  """PartitionSpecs over logical axis names, same structure as the reward-model params."""
  specs = {"trunk": logical_axes(model_config)}
  head = {"w_DxC": jax.sharding.PartitionSpec("embed", None), "b_C": jax.sharding.PartitionSpec(None)}
  if head_config.prm_classes:
    specs["prm"] = head
  if head_config.orm:
    specs["orm"] = dict(head)
  return specs


def apply_head(head_params: Params, hidden_BxTxD: jax.Array) -> jax.Array:
  """Linear head in float32: logits_BxTxC = hidden · W + b."""
  w_DxC = head_params["w_DxC"].astype(jnp.float32)
  b_C = head_params["b_C"].astype(jnp.float32)
  return jnp.einsum("BTD,DC->BTC", hidden_BxTxD.astype(jnp.float32), w_DxC) + b_C[None, None, :]


def reward_forward(model_config: ModelConfig, params: Params, tokens_BxT: jax.Array, *,
                   segment_ids_BxT: jax.Array | None = None,
                   positions_BxT: jax.Array | None = None) -> RewardOutputs:
  """One trunk pass, then every head present in `params` at every position."""
  lm_logits_BxTxV, hidden_BxTxD = forward_with_hidden(model_config, params["trunk"], tokens_BxT,
                                                      segment_ids_BxT=segment_ids_BxT, positions_BxT=positions_BxT)
  prm = apply_head(params["prm"], hidden_BxTxD) if "prm" in params else None
  orm = apply_head(params["orm"], hidden_BxTxD)[..., 0] if "orm" in params else None
  return RewardOutputs(lm_logits_BxTxV, prm, orm)


def step_good_probability(prm_logits_BxTxC: jax.Array, neutral_positive: bool = True) -> jax.Array:
  """P(step good) at every position.

  C = 1: sigmoid(logit). C = 3 (classes -1/0/+1): P(+1) + P(0) with the neutral class counted as positive
  (Lightman et al. 2023, Sec. 3: the PRM800K scoring convention), or P(+1) alone.
  """
  c = prm_logits_BxTxC.shape[-1]
  if c == 1:
    return jax.nn.sigmoid(prm_logits_BxTxC[..., 0])
  if c == 3:
    probs_BxTx3 = jax.nn.softmax(prm_logits_BxTxC, axis=-1)
    return probs_BxTx3[..., 2] + (probs_BxTx3[..., 1] if neutral_positive else 0.0)
  raise ValueError(f"step_good_probability: prm logits need 1 or 3 classes, got shape {prm_logits_BxTxC.shape}")
