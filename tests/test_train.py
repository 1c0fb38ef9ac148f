"""The sharded train step: 8 devices == 1 device, FSDP memory, accumulation, non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from star_jax import checkpoint, models, sharding, train
from star_jax.config import CheckpointConfig, TrainConfig

MODEL = models.ModelConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
TRAIN = TrainConfig(batch_size=16, seq_len=32, steps=8, warmup_steps=2, lr=1e-2)


def make_batch(seed=0, b=16, t=32):
  rng = np.random.default_rng(seed)
  # two packed examples per row ([0, t/4) and [t/4, length)), then padding
  index = np.arange(t)[None]
  segments = np.where(index < t // 4, 1, np.where(index < rng.integers(t // 2, t + 1, (b, 1)), 2, 0))
  return {
      "inputs_BxT": rng.integers(4, 100, (b, t)).astype(np.int32),
      "targets_BxT": rng.integers(4, 100, (b, t)).astype(np.int32),
      "loss_mask_BxT": (rng.random((b, t)) < 0.7).astype(np.float32) * (segments > 0),
      "segment_ids_BxT": segments.astype(np.int32),
      "positions_BxT": np.asarray(models.positions_from_segments(jnp.asarray(segments))).astype(np.int32),
  }


def run_steps(mesh_axes, tx, n_steps=2, train_config=TRAIN):
  devices = jax.devices()[:int(np.prod([s for _, s in mesh_axes]))]
  mesh = sharding.make_mesh(mesh_axes, devices)
  state = train.create_train_state(MODEL, tx, mesh, seed=0)
  step_fn = train.compile_train_step(MODEL, train_config, mesh, tx)
  losses = []
  for i in range(n_steps):
    state, metrics = step_fn(state, sharding.host_batch_to_global(make_batch(i), mesh), state.rng)
    losses.append(float(metrics["loss"]))
  return state, losses


MESHES = {
    "1 device": (("data", 1), ("fsdp", 1), ("tensor", 1)),
    "data=8": (("data", 8), ("fsdp", 1), ("tensor", 1)),
    "data=2,fsdp=2,tensor=2": (("data", 2), ("fsdp", 2), ("tensor", 2)),
}


@pytest.fixture(scope="module")
def sgd_results():
  tx = optax.sgd(0.5)
  return {name: run_steps(axes, tx) for name, axes in MESHES.items()}


@pytest.mark.parametrize("name", ["data=8", "data=2,fsdp=2,tensor=2"])
def test_sharded_step_equals_single_device(sgd_results, name):
  ref_state, ref_losses = sgd_results["1 device"]
  state, losses = sgd_results[name]
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for ref, got in zip(jax.tree.leaves(ref_state.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-6, rtol=1e-5)


def test_params_are_actually_sharded_on_2x2x2(sgd_results):
  state, _ = sgd_results["data=2,fsdp=2,tensor=2"]
  wq = state.params["layer_0"]["attn"]["q"]  # [embed, heads, head_dim] -> (fsdp, tensor, None)
  assert wq.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert wq.addressable_shards[0].data.shape == (MODEL.d_model // 2, MODEL.n_heads // 2, MODEL.head_dim)


def test_fsdp8_holds_an_eighth_of_params_and_optimizer_state():
  tx = train.make_optimizer(TRAIN)
  state, fsdp_losses = run_steps((("data", 1), ("fsdp", 8), ("tensor", 1)), tx, n_steps=1)
  per_device = sharding.bytes_per_device((state.params, state.opt_state))
  total = sum(x.nbytes for x in jax.tree.leaves((state.params, state.opt_state)))
  assert len(per_device) == 8
  # params + Adam mu + nu, every tensor split 8 ways along `embed`; only scalars (counts) are replicated
  assert max(per_device.values()) <= total / 8 + 64, (per_device, total)
  _, ref_losses = run_steps(MESHES["1 device"], tx, n_steps=1)
  np.testing.assert_allclose(fsdp_losses, ref_losses, rtol=1e-5)


def test_gradient_accumulation_equals_full_batch():
  tx = optax.sgd(0.5)
  full, full_losses = run_steps(MESHES["data=8"], tx, n_steps=1)
  accum_config = TrainConfig(**{**TRAIN.__dict__, "grad_accum_steps": 2})
  accum, accum_losses = run_steps(MESHES["data=8"], tx, n_steps=1, train_config=accum_config)
  np.testing.assert_allclose(accum_losses, full_losses, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(accum.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_masked_loss_is_mean_over_mask():
  params = models.init_params(MODEL, jax.random.key(0))
  batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
  total, weight = train.lm_loss_sums(MODEL, params, batch)
  logits = models.forward(MODEL, params, batch["inputs_BxT"], segment_ids_BxT=batch["segment_ids_BxT"],
                          positions_BxT=batch["positions_BxT"])
  logp = jax.nn.log_softmax(logits, -1)
  nll = -np.take_along_axis(np.asarray(logp), np.asarray(batch["targets_BxT"])[..., None], -1)[..., 0]
  mask = np.asarray(batch["loss_mask_BxT"])
  np.testing.assert_allclose(float(total), (nll * mask).sum(), rtol=1e-5)
  assert float(weight) == mask.sum()


def test_schedule_warmup_then_cosine():
  schedule = train.make_schedule(TrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1))
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)  # half-way through the cosine
  assert float(schedule(110)) == pytest.approx(0.1, rel=1e-5)


class _Batches:
  """An iterator with get_state/set_state, like grain's."""

  def __init__(self):
    self.i = 0

  def __next__(self):
    self.i += 1
    return make_batch(self.i)

  def get_state(self):
    return {"i": self.i}


def test_nonfinite_loss_raises_naming_step_and_keeps_last_good_checkpoint(tmp_path):
  mesh = sharding.make_mesh(MESHES["1 device"], jax.devices()[:1])
  tx = train.make_optimizer(TRAIN)
  state = train.create_train_state(MODEL, tx, mesh, seed=0)
  step_fn = train.compile_train_step(MODEL, TRAIN, mesh, tx)

  def poisoned_step(state, batch, rng):  # the update at step 6 blows up the parameters
    lr_scale = jnp.where(state.step == 5, jnp.inf, 1.0)
    batch = dict(batch, loss_mask_BxT=batch["loss_mask_BxT"] * lr_scale)
    return step_fn(state, batch, rng)

  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), keep=5)
  with pytest.raises(train.NonFiniteLossError, match="at step 6"):
    train.train_loop(state, poisoned_step, _Batches(), mesh, num_steps=8, checkpointer=ckpt,
                     checkpoint_config=CheckpointConfig(every_steps=2, keep=5), log_every=1)
  assert ckpt.latest_step() == 4
  abstract, _ = train.state_shardings(MODEL, tx, mesh)
  restored, data_state = ckpt.restore(abstract)
  assert int(restored.step) == 4 and data_state == {"i": 4}
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored.params))
  ckpt.close()
