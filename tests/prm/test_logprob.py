"""Log-prob verifiers (star_jax/prm/logprob.py): token log-probs equal a direct forward, step features by hand,
the untrained min-prefix score, a logistic head fitted on a separable set, AUC and text-ranked-first on sets
whose answer is known."""

import math

import jax
import numpy as np
import pytest

from star_jax import models, sharding
from star_jax.data import CharTokenizer
from star_jax.models import ModelConfig
from star_jax.prm import logprob
from star_jax.prm import steps as prm

TOK = CharTokenizer()
TINY = ModelConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)


def _mesh():
  return sharding.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)), jax.devices()[:1])


def test_token_logprobs_match_a_direct_forward():
  params = jax.jit(models.init_params, static_argnums=0)(TINY, jax.random.key(3))
  examples = [prm.encode_steps(TOK, "Q:", ["12", "345"], [1.0, 0.0]), prm.encode_steps(TOK, "Q: 7", ["8"], [1.0])]
  stats = logprob.token_logprobs(TINY, params, examples, mesh=_mesh(), batch_size=4, seq_len=32)
  for ex, st in zip(examples, stats):
    logits = np.asarray(jax.jit(models.forward, static_argnums=0)(TINY, params, ex["inputs"][None]))[0].astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    direct = logits[np.arange(len(ex["targets"])), ex["targets"]] - logz
    np.testing.assert_allclose(st["logps"], direct, atol=1e-5)
    np.testing.assert_array_equal(st["is_argmax"], logits.argmax(-1) == ex["targets"])
    assert st["logps"].shape == ex["inputs"].shape


def test_step_features_by_hand():
  # positions 0..7; loss from position 2 (prompt = 3 tokens incl. BOS); steps end at positions 4 and 7
  logps = np.asarray([-9.0, -9.0, -0.5, -2.0, -0.1, -0.3, -4.0, -0.2])
  is_argmax = np.asarray([0, 0, 1, 0, 1, 1, 0, 1], bool)
  loss_mask = np.asarray([0, 0, 1, 1, 1, 1, 1, 1], np.float32)
  step_mask = np.asarray([0, 0, 0, 0, 1, 0, 0, 1], np.float32)
  assert logprob.step_spans(loss_mask, step_mask) == [(2, 4), (4, 7)]
  f = logprob.step_features(logps, is_argmax, loss_mask, step_mask)
  col = {name: f[:, i] for i, name in enumerate(logprob.FEATURES)}
  # step 0: positions 2, 3 (-0.5, -2.0; one non-argmax); step 1: positions 4, 5, 6 (-0.1, -0.3, -4.0; one)
  np.testing.assert_allclose(col["step_min"], [-2.0, -4.0])
  np.testing.assert_allclose(col["prefix_min"], [-2.0, -4.0])
  np.testing.assert_allclose(col["step_sum"], [-2.5, -4.4], rtol=1e-6)
  np.testing.assert_allclose(col["prefix_sum"], [-2.5, -6.9], rtol=1e-6)
  np.testing.assert_allclose(col["step_not_argmax"], [1, 1])
  np.testing.assert_allclose(col["prefix_not_argmax"], [1, 2])
  np.testing.assert_allclose(logprob.min_prefix_scores(f), np.exp([-2.0, -4.0]), rtol=1e-6)
  # the prefix minimum never rises, even when a later step is confident
  f2 = logprob.step_features(np.asarray([0, 0, -3.0, -0.1, -0.1, -0.1, -0.1, -0.1]), is_argmax, loss_mask, step_mask)
  np.testing.assert_allclose(f2[:, logprob.FEATURES.index("prefix_min")], [-3.0, -3.0])
  np.testing.assert_allclose(f2[:, logprob.FEATURES.index("step_min")], [-3.0, -0.1])
  assert logprob.step_features(logps, is_argmax, np.zeros(8), step_mask).shape == (0, len(logprob.FEATURES))


def test_features_of_encoded_text_sit_on_the_right_tokens():
  """With log-prob = −(token id) the step minima are −(largest id) among each step's own characters."""
  ex = prm.encode_steps(TOK, "Q:", ["12", "9"], [1.0, 1.0])
  fake_logps = -ex["targets"].astype(np.float64)  # position i holds the log-prob of targets[i]
  f = logprob.step_features(fake_logps, np.ones_like(fake_logps, bool), ex["loss_mask"], ex["step_mask"])
  step_ids = [TOK.encode("12\n"), TOK.encode("9\n")]
  np.testing.assert_allclose(f[:, 0], [-max(step_ids[0]), -max(step_ids[1])])
  np.testing.assert_allclose(f[:, 2], [-sum(step_ids[0]), -sum(step_ids[1])])


def test_logistic_head_fits_a_separable_set():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 3)) * [1.0, 5.0, 0.1] + [0.0, -3.0, 2.0]
  y = (x[:, 0] + 0.2 * x[:, 1] > -0.6).astype(np.float32)
  head, losses = logprob.fit_logistic(x, y, steps=300, lr=0.1)
  assert losses[-1] < 0.3 * losses[0] and losses[0] == pytest.approx(math.log(2), rel=1e-5)
  p = head.predict(x)
  assert np.mean((p > 0.5) == (y > 0.5)) > 0.97
  assert logprob.roc_auc(p, y) > 0.99
  again = logprob.LogisticHead.from_json(head.to_json())
  np.testing.assert_allclose(again.predict(x), p, rtol=1e-6)
  with pytest.raises(ValueError, match="fit_logistic"):
    logprob.fit_logistic(np.zeros((0, 3)), np.zeros(0))


def test_roc_auc_on_sets_with_known_answers():
  rng = np.random.default_rng(1)
  labels = rng.random(300) < 0.3
  assert logprob.roc_auc(labels + 0.01 * rng.random(300), labels) == 1.0  # separates perfectly
  assert logprob.roc_auc(-labels.astype(float), labels) == 0.0  # exactly reversed
  assert logprob.roc_auc(np.ones(300), labels) == 0.5  # all tied
  assert abs(logprob.roc_auc(rng.random(300), labels) - 0.5) < 0.1  # random scores
  # ties counted half: equals pairwise counting
  scores = rng.integers(0, 4, 60).astype(float)
  pos, neg = scores[labels[:60]], scores[~labels[:60]]
  pairwise = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
  assert math.isclose(logprob.roc_auc(scores, labels[:60]), pairwise)
  assert logprob.roc_auc([0.2, 0.3], [1, 1]) is None


def test_text_ranked_first_counts_distinct_texts():
  texts = [["a", "a", "b", "c"], ["x", "y", "y", "z"], ["p", "p", "p", "p"]]
  correct = np.asarray([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]], bool)
  scores = np.asarray([[0.9, 0.1, 0.5, 0.2],  # "a" keeps its first score 0.9: top, correct
                       [0.7, 0.7, 0.0, 0.1]])  # "x" and "y" tie at the top: half correct
  out = logprob.text_ranked_first(scores, correct[:2], texts[:2])
  assert out == {"problems": 2, "ranked_first": 0.75, "random_scores": (1 / 3 + 1 / 3) / 2}
  # a problem with only correct texts does not count; constant scores do exactly as well as random ones
  out = logprob.text_ranked_first(np.ones((3, 4)), correct, texts)
  assert out["problems"] == 2 and out["ranked_first"] == pytest.approx(1 / 3) == out["random_scores"]
