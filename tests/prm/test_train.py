"""Reward heads and their training: shapes and init, hand-computed loss values, a trunk from any
checkpoint, the sharded step on 8 devices == 1 device, scoring, and a PRM trained on a toy task that
separates good from bad steps."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax import models, sharding, train
from star_jax.config import TrainConfig
from star_jax.data import CharTokenizer
from star_jax.models import HeadConfig, ModelConfig, reward_forward
from star_jax.models.heads import init_reward_params
from star_jax.prm import losses as reward_losses
from star_jax.prm import steps as prm
from star_jax.prm import train as prm_train

TOK = CharTokenizer()
TINY = ModelConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
_reward_forward = jax.jit(reward_forward, static_argnums=0)  # one compilation instead of op-by-op dispatch


def _mesh(n_devices, axes=(("data", -1), ("fsdp", 1), ("tensor", 1))):
  return sharding.make_mesh(axes, jax.devices()[:n_devices])


def test_reward_forward_shapes_and_zero_heads():
  params = init_reward_params(TINY, HeadConfig(prm_classes=3, orm=True), jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(4, 100, size=(2, 9)), jnp.int32)
  out = _reward_forward(TINY, params, tokens)
  assert out.lm_logits_BxTxV.shape == (2, 9, 100)
  assert out.prm_logits_BxTxC.shape == (2, 9, 3) and out.orm_logits_BxT.shape == (2, 9)
  assert np.all(np.asarray(out.prm_logits_BxTxC) == 0) and np.all(np.asarray(out.orm_logits_BxT) == 0)
  np.testing.assert_allclose(out.lm_logits_BxTxV, jax.jit(models.forward, static_argnums=0)(TINY, params["trunk"], tokens), atol=1e-6)
  shardings = prm_train.params_shardings(TINY, HeadConfig(prm_classes=3, orm=True), _mesh(8, MESH_8))
  assert jax.tree.structure(shardings) == jax.tree.structure(params)
  assert shardings["prm"]["w_DxC"].spec == jax.sharding.PartitionSpec("fsdp", None)  # embed -> fsdp
  binary = init_reward_params(TINY, HeadConfig(prm_classes=1), jax.random.key(0))
  assert set(binary) == {"trunk", "prm"} and binary["prm"]["w_DxC"].shape == (32, 1)
  with pytest.raises(ValueError, match="prm_classes"):
    HeadConfig(prm_classes=2)
  with pytest.raises(ValueError, match="needs a process head"):
    HeadConfig(prm_classes=0, orm=False)


def test_trunk_from_a_checkpoint():
  trunk = jax.jit(models.init_params, static_argnums=0)(TINY, jax.random.key(7))
  params = init_reward_params(TINY, HeadConfig(orm=True), jax.random.key(0), trunk_params=trunk)
  assert params["trunk"] is trunk
  with pytest.raises(ValueError, match="do not match"):
    init_reward_params(dataclasses.replace(TINY, d_model=64), HeadConfig(), jax.random.key(0), trunk_params=trunk)


def test_loss_values_hand_computed():
  z = jnp.asarray([[0.0, np.log(3.0), 5.0]])
  y = jnp.asarray([[0.3, 1.0, 0.0]])
  m = jnp.asarray([[1.0, 1.0, 0.0]])
  total, weight = reward_losses.binary_step_loss_sums(z, y, m)
  # z = 0: ln 2 for any target; z = ln 3 (σ = 3/4), y = 1: −ln(3/4); the third is masked
  assert np.isclose(float(total), np.log(2) - np.log(0.75)) and float(weight) == 2
  logits = jnp.log(jnp.asarray([[[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]]))
  total, weight = reward_losses.multiclass_step_loss_sums(logits, jnp.asarray([[2, 0]]), jnp.asarray([[1.0, 1.0]]))
  assert np.isclose(float(total), -np.log(0.5) - np.log(0.1)) and float(weight) == 2
  total, _ = reward_losses.step_loss_sums(logits, jnp.asarray([[2.0, 0.0]]), jnp.asarray([[1.0, 0.0]]))
  assert np.isclose(float(total), -np.log(0.5))
  hits, _ = reward_losses.binary_accuracy_sums(jnp.asarray([[1.0, -1.0, 2.0]]), jnp.asarray([[0.6, 0.4, 0.2]]),
                                               jnp.asarray([[1.0, 1.0, 1.0]]))
  assert float(hits) == 2


# ---- the toy task: a step "ab" (two digits) is good iff b < 5 ----

def _toy_examples(n, seed):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    steps, labels = [], []
    for _ in range(rng.integers(2, 5)):
      a, b = rng.integers(10, size=2)
      steps.append(f"{a}{b}")
      labels.append(float(b < 5))
    out.append(prm.encode_steps(TOK, "Q:", steps, labels, outcome=float(all(labels))))
  return out


def _auc(scores, labels):
  scores, labels = np.asarray(scores), np.asarray(labels).astype(bool)
  pos, neg = scores[labels], scores[~labels]
  return float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))


# Shared by the tests below, so that each mesh compiles the step once: binary PRM + ORM heads, with the LM
# loss on (a trunk shared with the policy).
TOY_TRAIN = TrainConfig(batch_size=16, seq_len=64, steps=120, lr=1e-2, warmup_steps=10, log_every=40)
TOY_HEADS = HeadConfig(prm_classes=1, orm=True)
TOY_OBJECTIVE = prm_train.RewardObjective(lm_weight=0.5)
MESH_8 = (("data", 2), ("fsdp", 2), ("tensor", 2))
_COMPILED = {}


def _state_and_step(n_devices, axes):
  mesh = _mesh(n_devices, axes)
  tx = train.make_optimizer(TOY_TRAIN)
  if (n_devices, axes) not in _COMPILED:
    _COMPILED[(n_devices, axes)] = prm_train.compile_reward_train_step(TINY, TOY_HEADS, TOY_TRAIN, TOY_OBJECTIVE,
                                                                       mesh, tx)
  return mesh, prm_train.create_reward_state(TINY, TOY_HEADS, tx, mesh, seed=0), _COMPILED[(n_devices, axes)]


def test_sharded_step_on_8_devices_equals_1_device():
  batch = next(iter(prm_train.make_reward_dataset(_toy_examples(64, 1), batch_size=16, seq_len=64, seed=0)))
  results = []
  for n_devices, axes in ((1, (("data", -1), ("fsdp", 1), ("tensor", 1))), (8, MESH_8)):
    mesh, state, step_fn = _state_and_step(n_devices, axes)
    for _ in range(2):
      state, metrics = step_fn(state, sharding.host_batch_to_global(batch, mesh), state.rng)
    results.append((sharding.to_host(state.params), {k: float(v) for k, v in metrics.items()}))
  (p1, m1), (p8, m8) = results
  for key in ("loss", "prm_loss", "orm_loss", "lm_loss"):
    assert np.isclose(m1[key], m8[key], rtol=1e-5), key
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p8)
  assert np.abs(p1["prm"]["w_DxC"]).max() > 0  # the heads did move


def test_toy_prm_separates_good_and_bad_steps_and_scores_consistently():
  mesh, state, step_fn = _state_and_step(8, MESH_8)
  batches = iter(prm_train.make_reward_dataset(_toy_examples(400, 0), batch_size=16, seq_len=64, seed=0))
  state = train.train_loop(state, step_fn, batches, mesh, num_steps=TOY_TRAIN.steps, log_every=40)
  held_out = _toy_examples(60, 123)
  step_probs, orm_probs = prm_train.score_examples(TINY, state.params, held_out, mesh=mesh, batch_size=32, seq_len=64)
  labels = np.concatenate([ex["step_targets"][ex["step_mask"] > 0] for ex in held_out])
  scores = np.concatenate(step_probs)
  assert len(scores) == len(labels)
  auc = _auc(scores, labels)
  assert auc > 0.95, auc
  assert np.mean((scores > 0.5) == (labels > 0.5)) > 0.9
  # scoring equals a direct forward pass at the step-end positions
  ex = held_out[0]
  out = _reward_forward(TINY, sharding.to_host(state.params), jnp.asarray(ex["inputs"])[None])
  direct = jax.nn.sigmoid(np.asarray(out.prm_logits_BxTxC)[0, :, 0])[ex["step_mask"] > 0]
  np.testing.assert_allclose(step_probs[0], direct, atol=1e-5)
  np.testing.assert_allclose(orm_probs[0], jax.nn.sigmoid(np.asarray(out.orm_logits_BxT)[0, -1]), atol=1e-5)
  # product aggregation ranks all-good solutions above solutions with a bad step
  probs, mask = prm.pad_steps(step_probs)
  solution_scores = np.asarray(prm.aggregate("product", probs, mask))
  all_good = [bool(ex["orm_targets"].max() > 0) for ex in held_out]
  assert _auc(solution_scores, all_good) > 0.95
