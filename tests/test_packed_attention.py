"""Band attention over packed rows (transformer.band_attention_core) against the dense reference path."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax import models, train
from star_jax.config import TrainConfig
from star_jax.models import functional, transformer

CONFIG = models.ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)  # GQA: G = 2
T = 128  # BAND_BLOCK 32, BAND_WINDOW 96: blocks of 32 queries see 96 keys


def packed_rows(rng: np.random.Generator, b: int, t: int, lengths: tuple[int, int]) -> np.ndarray:
  """segment ids [b, t]: examples of random length in [lengths) packed from the left, tail padding 0."""
  segment_ids = np.zeros((b, t), np.int32)
  for row in range(b):
    start, segment = 0, 1
    while True:
      length = int(rng.integers(*lengths))
      if start + length > t:
        break
      segment_ids[row, start:start + length] = segment
      start, segment = start + length, segment + 1
  return segment_ids


def batch_for(segment_ids: np.ndarray, seed: int = 0) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  return {
      "inputs_BxT": jnp.asarray(rng.integers(4, CONFIG.vocab_size, segment_ids.shape), jnp.int32),
      "targets_BxT": jnp.asarray(rng.integers(4, CONFIG.vocab_size, segment_ids.shape), jnp.int32),
      "loss_mask_BxT": jnp.asarray(segment_ids != 0, jnp.float32),
      "segment_ids_BxT": jnp.asarray(segment_ids),
  }


def nll_sum(params, batch, attention):
  logits_BxTxV = models.forward(CONFIG, params, batch["inputs_BxT"], segment_ids_BxT=batch["segment_ids_BxT"],
                                attention=attention)
  logp_BxT = jnp.take_along_axis(jax.nn.log_softmax(logits_BxTxV), batch["targets_BxT"][..., None], -1)[..., 0]
  return -jnp.sum(logp_BxT * batch["loss_mask_BxT"])


@pytest.fixture(scope="module")
def params():
  return models.init_params(CONFIG, jax.random.key(0))


def assert_trees_close(a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = float(jnp.max(jnp.abs(y)))
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=rtol * scale)


def test_band_fits_hand_computed():
  band = transformer.Band(block=4, blocks=2)  # query block n sees keys 4(n - 1) .. 4n + 3
  fits = lambda segments: bool(transformer.band_fits(jnp.asarray([segments], jnp.int32), band))  # noqa: E731
  assert fits([1] * 5 + [2] * 3)  # an example of 5 tokens starting at a block boundary: query 4 reaches back 4
  assert fits([1] * 3 + [2] * 5)  # 5 tokens from 3: query 7 (block 1, slack 3) reaches back to 3 >= 0
  assert not fits([1] * 2 + [2] * 7 + [0] * 3)  # 7 tokens from 2: query 8 (block 2) needs key 2 < 4
  assert fits([1] + [2] * 6 + [0] * 5)  # 6 tokens from 1: query 6 (block 1) needs key 1 >= 0
  assert fits([0] * 3 + [1] * 2 + [0] * 7)  # padding needs nothing


def test_band_bias_matches_the_dense_mask():
  segments = np.asarray([[1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 0, 0]], np.int32)
  band = transformer.Band(block=4, blocks=2)
  bias_BxNx1xCxS = np.asarray(transformer.band_bias(jnp.asarray(segments), band))
  dense_TxT = np.asarray(functional.segment_causal_mask(jnp.asarray(segments)))[0]
  for n in range(3):
    for c in range(4):
      for s in range(8):
        key = (n - 1) * 4 + s
        expected = key >= 0 and dense_TxT[n * 4 + c, key]
        assert (bias_BxNx1xCxS[0, n, 0, c, s] == 0.0) == expected, (n, c, s)


def test_windows_and_unwindow_are_adjoint():
  x = jax.random.normal(jax.random.key(1), (2, 5, 3, 4, 6))  # [B, N, K, E, C]
  y = jax.random.normal(jax.random.key(2), (2, 5, 3, 4, 18))  # [B, N, K, E, 3 C]
  lhs = jnp.sum(transformer._band_windows(x, 3) * y)
  rhs = jnp.sum(x * transformer._band_unwindow(y, 3))
  np.testing.assert_allclose(float(lhs), float(rhs), rtol=1e-5)
  # window slot j of block n holds block n - 2 + j; blocks before 0 are zeros
  windows = np.asarray(transformer._band_windows(x, 3))
  np.testing.assert_array_equal(windows[:, 3, ..., 0:6], np.asarray(x)[:, 1])
  np.testing.assert_array_equal(windows[:, 0, ..., 0:12], 0.0)


def test_band_loss_and_gradients_equal_dense_on_packed_rows(params):
  segment_ids = packed_rows(np.random.default_rng(0), 4, T, (5, 60))
  assert bool(transformer.band_fits(jnp.asarray(segment_ids), transformer.band_for(T, 32, 96)))
  batch = batch_for(segment_ids)
  grad = jax.jit(jax.value_and_grad(nll_sum), static_argnums=2)
  band_loss, band_grads = grad(params, batch, "band")
  dense_loss, dense_grads = grad(params, batch, "dense")
  np.testing.assert_allclose(float(band_loss), float(dense_loss), rtol=1e-5)
  assert_trees_close(band_grads, dense_grads, rtol=1e-4)
  # real tokens' logits agree too; padding positions may not (see transformer.py), so they are not compared
  logits = {a: np.asarray(models.forward(CONFIG, params, batch["inputs_BxT"], segment_ids_BxT=batch["segment_ids_BxT"],
                                         attention=a)) for a in ("band", "dense")}
  real = segment_ids != 0
  np.testing.assert_allclose(logits["band"][real], logits["dense"][real], rtol=0, atol=2e-5)


def test_cond_runs_dense_when_an_example_does_not_fit(params):
  segment_ids = packed_rows(np.random.default_rng(1), 4, T, (5, 40))
  segment_ids[1] = 0
  segment_ids[1, :100] = 1  # one example of 100 tokens: longer than the band reaches
  assert not bool(transformer.band_fits(jnp.asarray(segment_ids), transformer.band_for(T, 32, 96)))
  batch = batch_for(segment_ids)
  grad_fn = jax.value_and_grad(functools.partial(nll_sum, attention=None))  # attention from the cond
  cond_loss, cond_grads = jax.jit(lambda p, b: models.cond_band_attention(b["segment_ids_BxT"], grad_fn, p, b))(
      params, batch)
  dense_loss, dense_grads = jax.jit(jax.value_and_grad(nll_sum), static_argnums=2)(params, batch, "dense")
  np.testing.assert_allclose(float(cond_loss), float(dense_loss), rtol=1e-6)
  assert_trees_close(cond_grads, dense_grads, rtol=1e-5)
  # the band alone would be wrong there: the long example's tokens 96..99 lose keys 0..31; other rows are exact
  logits = {a: np.asarray(models.forward(CONFIG, params, batch["inputs_BxT"], segment_ids_BxT=batch["segment_ids_BxT"],
                                         attention=a)) for a in ("band", "dense")}
  error_BxT = np.max(np.abs(logits["band"] - logits["dense"]), axis=-1)
  other_rows = (segment_ids != 0) & (np.arange(4) != 1)[:, None]
  assert np.min(error_BxT[1, 96:100]) > 50 * np.max(error_BxT[other_rows])


def test_train_step_with_band_equals_dense_reference():
  model_config = CONFIG
  train_config = TrainConfig(batch_size=4, seq_len=T, steps=10, warmup_steps=1)
  tx = train.make_optimizer(train_config)
  params = models.init_params(model_config, jax.random.key(3))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                           rng=jax.random.key_data(jax.random.key(4)))
  segment_ids = packed_rows(np.random.default_rng(2), 4, T, (5, 60))
  batch = batch_for(segment_ids)
  batch["positions_BxT"] = models.positions_from_segments(batch["segment_ids_BxT"])
  step = functools.partial(train.train_step, model_config=model_config, tx=tx, schedule=train.make_schedule(train_config))
  band_state, band_metrics = jax.jit(functools.partial(step, attention="band"))(state, batch, state.rng)
  dense_state, dense_metrics = jax.jit(step)(state, batch, state.rng)  # train.attention's default
  np.testing.assert_allclose(float(band_metrics["loss"]), float(dense_metrics["loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(band_metrics["grad_norm"]), float(dense_metrics["grad_norm"]), rtol=1e-4)
  assert_trees_close(band_state.params, dense_state.params, rtol=1e-5)


def test_unknown_attention_rejected(params):
  with pytest.raises(ValueError, match="attention"):
    models.forward(CONFIG, params, jnp.zeros((1, 4), jnp.int32), attention="sparse")
