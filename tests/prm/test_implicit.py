"""Implicit PRM (star_jax/prm/implicit.py): rewards = β · log-ratio by hand, zero when φ = ref, packed sums
restart per segment, step aggregation, the loss by hand, and a toy set where training separates good and bad
steps."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax import models, sharding, train
from star_jax.config import TrainConfig
from star_jax.data import CharTokenizer
from star_jax.models import ModelConfig
from star_jax.prm import implicit, logprob
from star_jax.prm import steps as prm

TOK = CharTokenizer()
TINY = ModelConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
_init = jax.jit(models.init_params, static_argnums=0)
_loss = jax.jit(implicit.implicit_loss, static_argnums=(0, 1))  # one compilation instead of op-by-op dispatch


def _mesh():
  return sharding.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)), jax.devices()[:1])


def test_token_rewards_and_segment_sums_by_hand():
  logps = jnp.asarray([[-1.0, -2.0, -0.5, -3.0]])
  ref = jnp.asarray([[-1.5, -1.0, -0.5, -1.0]])
  mask = jnp.asarray([[0.0, 1.0, 1.0, 1.0]])
  r = implicit.token_rewards(logps, ref, mask, beta=0.1)
  np.testing.assert_allclose(r, [[0.0, -0.1, 0.0, -0.2]], atol=1e-7)  # β (log π_φ − log π_ref), masked
  # two packed segments (positions restart at index 3): sums restart there
  x = jnp.asarray([[1.0, 2.0, 3.0, 10.0, 20.0, 0.0]])
  positions = jnp.asarray([[0, 1, 2, 0, 1, 0]])
  np.testing.assert_allclose(implicit.segment_cumsum(x, positions), [[1.0, 3.0, 6.0, 10.0, 30.0, 0.0]])
  with pytest.raises(ValueError, match="objective"):
    implicit.ImplicitObjective(objective="value")
  with pytest.raises(ValueError, match="beta"):
    implicit.ImplicitObjective(beta=0.0)


def test_step_aggregation_by_hand():
  # positions 0..6, loss from 2; steps close at positions 3 and 5 (rewards of their tokens at [2, 3) and [3, 5))
  logps = np.asarray([0.0, 0.0, -1.0, -2.0, -1.0, -1.0, -0.5])
  ref = np.asarray([0.0, 0.0, -2.0, -2.0, -3.0, -1.0, -1.0])
  loss_mask = np.asarray([0, 0, 1, 1, 1, 1, 1])
  step_mask = np.asarray([0, 0, 0, 1, 0, 1, 0])
  out = implicit.scores_from_logps(logps, ref, loss_mask, step_mask, beta=0.5)
  # r = 0.5 · (0, 0, 1, 0, 2, 0, 0.5): q before position 3 = 0.5; before 5 = 0.5 + 0 + 1 = 1.5; total 1.75
  np.testing.assert_allclose(out["q"], [0.5, 1.5])
  np.testing.assert_allclose(out["step_sums"], [0.5, 1.0])
  assert out["q_T"] == pytest.approx(1.75)
  sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
  np.testing.assert_allclose(out["prefix"], [sig(0.5), sig(1.5)])
  np.testing.assert_allclose(out["step"], [sig(0.5), sig(1.0)])
  assert out["outcome"] == pytest.approx(sig(1.75))


def _examples():
  return [prm.encode_steps(TOK, "Q:", ["12", "345"], [1.0, 0.0], outcome=0.0, orm_all_tokens=False),
          prm.encode_steps(TOK, "Q: 7", ["8", "9"], [1.0, 1.0], outcome=1.0, orm_all_tokens=False)]


def test_rewards_are_zero_at_init_and_beta_log_ratio_after_a_change():
  mesh, ref = _mesh(), _init(TINY, jax.random.key(0))
  examples = implicit.with_reference_logps(TINY, ref, _examples(), mesh=mesh, batch_size=2, seq_len=32)
  for s in implicit.score_examples(TINY, ref, examples, beta=0.05, mesh=mesh, batch_size=2, seq_len=32):
    assert s["q_T"] == 0.0 and s["outcome"] == 0.5 and all(p == 0.5 for p in s["prefix"] + s["step"])
  batch = {f"{k}_BxT": jnp.asarray(examples[0][k])[None] for k in implicit.FIELDS}
  batch.update(segment_ids_BxT=jnp.ones_like(batch["inputs_BxT"]), positions_BxT=jnp.arange(len(examples[0]["inputs"]))[None])
  for objective in implicit.OBJECTIVES:  # σ(0) against any label: ln 2
    loss, _ = _loss(TINY, implicit.ImplicitObjective(objective=objective), ref, batch)
    assert float(loss) == pytest.approx(math.log(2), rel=1e-6)
  # φ ≠ ref: every score is β Σ (log π_φ − log π_ref) over the right tokens, from two direct forwards
  phi = _init(TINY, jax.random.key(1))
  beta = 0.3
  scored = implicit.score_examples(TINY, phi, examples, beta=beta, mesh=mesh, batch_size=2, seq_len=32)
  for ex, s in zip(examples, scored):
    def direct_logps(params, ex=ex):
      logits = jax.jit(models.forward, static_argnums=0)(TINY, params, ex["inputs"][None])
      return np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32)))[np.arange(len(ex["targets"])), ex["targets"]]
    r = beta * (direct_logps(phi) - direct_logps(ref)) * ex["loss_mask"]
    ends = np.flatnonzero(ex["step_mask"])
    np.testing.assert_allclose(s["q"], [r[:e].sum() for e in ends], atol=1e-5)
    assert s["q_T"] == pytest.approx(r.sum(), abs=1e-5)
    # the outcome loss is BCE(σ(q_T), 1(ŷ = y)) with q_T read at the last position
    one = {f"{k}_BxT": jnp.asarray(ex[k])[None] for k in implicit.FIELDS}
    one.update(segment_ids_BxT=jnp.ones_like(one["inputs_BxT"]), positions_BxT=jnp.arange(len(ex["inputs"]))[None])
    loss, _ = _loss(TINY, implicit.ImplicitObjective(beta=beta), phi, one)
    y = float(ex["orm_targets"].max())
    assert float(loss) == pytest.approx(math.log1p(math.exp(r.sum())) - y * r.sum(), rel=1e-4)


# ---- the toy task: a step "ab" is bad iff b >= 5; a prefix is good iff all its steps are ----

def _toy(n, seed):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    steps, good = [], True
    labels = []
    for _ in range(rng.integers(2, 5)):
      a, b = rng.integers(10, size=2)
      steps.append(f"{a}{b}")
      good = good and b < 5
      labels.append(float(good))
    out.append(prm.encode_steps(TOK, "Q:", steps, labels, outcome=float(good), orm_all_tokens=False))
  return out


def test_toy_implicit_prm_loss_decreases_and_separates_steps():
  mesh, ref = _mesh(), _init(TINY, jax.random.key(0))
  cfg = TrainConfig(batch_size=16, seq_len=64, steps=60, lr=1e-2, warmup_steps=5, log_every=20)
  train_set = implicit.with_reference_logps(TINY, ref, _toy(300, 0), mesh=mesh, batch_size=64, seq_len=64)
  held_out = implicit.with_reference_logps(TINY, ref, _toy(80, 1), mesh=mesh, batch_size=64, seq_len=64)
  tx = train.make_optimizer(cfg)
  state = train.create_train_state(TINY, tx, mesh, 0, params=jax.tree.map(jnp.copy, ref))
  step_fn = implicit.compile_implicit_train_step(TINY, cfg, implicit.ImplicitObjective(beta=0.5, objective="step"),
                                                 mesh, tx)
  logged = []
  state = train.train_loop(state, step_fn, iter(implicit.make_dataset(train_set, batch_size=16, seq_len=64, seed=0)),
                           mesh, num_steps=cfg.steps, log_every=20, on_log=lambda step, m: logged.append(m["loss"]))
  assert logged[-1] < 0.5 * math.log(2), logged
  scored = implicit.score_examples(TINY, state.params, held_out, beta=0.5, mesh=mesh, batch_size=64, seq_len=64)
  labels = np.concatenate([ex["step_targets"][ex["step_mask"] > 0] for ex in held_out])
  assert logprob.roc_auc(np.concatenate([s["prefix"] for s in scored]), labels) > 0.95
  outcomes = [float(ex["orm_targets"].max()) for ex in held_out]
  assert logprob.roc_auc([s["outcome"] for s in scored], outcomes) > 0.9
