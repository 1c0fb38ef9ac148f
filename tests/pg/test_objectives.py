"""Policy-gradient objectives and KL estimators: hand-computed values, and exact expectations by enumeration.

The enumeration tests use a tabular softmax policy over V = 3 tokens (0 = EOS) and responses of at most
T = 2 tokens: 7 possible responses, so E[∇ loss] over batches of K = 3 samples is an exact sum over all
7^3 batches, compared with ∇J and ∇(J − β KL) computed exactly from the response probabilities.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax.pg import advantages, kl, objectives

# ---- hand-computed values ----

LOG = math.log


@pytest.mark.parametrize("name, expected", [
    ("k1", [LOG(2), -LOG(2), 0.0]),
    ("k2", [0.5 * LOG(2) ** 2, 0.5 * LOG(2) ** 2, 0.0]),
    ("k3", [0.5 - 1 + LOG(2), 2 - 1 - LOG(2), 0.0]),  # exp(-x) - 1 + x
])
def test_kl_estimators_hand_computed(name, expected):
  logps = jnp.asarray([[LOG(0.5), LOG(0.25), LOG(0.3)]])
  ref = jnp.asarray([[LOG(0.25), LOG(0.5), LOG(0.3)]])
  np.testing.assert_allclose(np.asarray(kl.get_estimator(name)(logps, ref))[0], expected, rtol=1e-5, atol=1e-6)


def test_kl_estimator_registry_error():
  with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'.*'k3'"):
    kl.get_estimator("k4")


def test_adaptive_kl_coef_hand_computed():
  # Ziegler et al.: e = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + e * n / horizon
  got = [float(kl.adaptive_kl_coef(jnp.float32(0.1), jnp.float32(v), target=4.0, horizon=10_000, n_samples=256))
         for v in (6.0, 3.8, 0.0, 4.0)]
  np.testing.assert_allclose(got, [0.1 * (1 + 0.2 * 0.0256), 0.1 * (1 - 0.05 * 0.0256),
                                   0.1 * (1 - 0.2 * 0.0256), 0.1], rtol=1e-6)


TWO_ROWS = dict(logps_BxT=jnp.asarray([[LOG(0.5), LOG(0.25), 0.0], [LOG(0.8), 0.0, 0.0]]),
                mask_BxT=jnp.asarray([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("normalisation, value, grad_row0, grad_row1", [
    ("sequence_sum", -0.5, [-0.5, -0.5, 0], [0.5, 0, 0]),  # (-1 - 1 + 1) / 2 sequences
    ("token_mean", -1 / 3, [-1 / 3, -1 / 3, 0], [1 / 3, 0, 0]),  # / 3 tokens
    ("sequence_mean", 0.0, [-0.25, -0.25, 0], [0.5, 0, 0]),  # ((-2)/2 + 1/1) / 2
])
def test_on_policy_loss_and_gradient_hand_computed(normalisation, value, grad_row0, grad_row1):
  advantages_B = jnp.asarray([1.0, -1.0])

  def loss(logps):
    num, den, _ = objectives.policy_gradient_loss(logps, logps, TWO_ROWS["mask_BxT"], advantages_B,
                                              normalisation=normalisation)
    return num / den

  got, grad = jax.jit(jax.value_and_grad(loss))(TWO_ROWS["logps_BxT"])
  assert float(got) == pytest.approx(value, abs=1e-6)
  np.testing.assert_allclose(np.asarray(grad), [grad_row0, grad_row1], atol=1e-6)


def test_star_policy_gradient_loss_hand_computed_and_equal_to_general_loss():
  rewards = jnp.asarray([1.0, 0.0])
  got = objectives.star_policy_gradient_loss(TWO_ROWS["logps_BxT"], TWO_ROWS["mask_BxT"], rewards)
  assert float(got) == pytest.approx(-LOG(0.125) / 2, rel=1e-6)  # -(1 * log(.5 * .25) + 0) / 2
  star_grad = jax.grad(objectives.star_policy_gradient_loss)(TWO_ROWS["logps_BxT"], TWO_ROWS["mask_BxT"], rewards)

  def general(logps):
    num, den, _ = objectives.policy_gradient_loss(logps, logps, TWO_ROWS["mask_BxT"], rewards)
    return num / den
  np.testing.assert_allclose(np.asarray(jax.grad(general)(TWO_ROWS["logps_BxT"])), np.asarray(star_grad), atol=1e-7)


def test_ppo_clipping_hand_computed():
  # ratios exp(logp - old): row 0 (A = +1) 1.5, 0.5, 1.1, 1.0; row 1 (A = -1) 1.5, 0.5, 0.9, 1.0; eps = 0.2
  ratios = jnp.asarray([[1.5, 0.5, 1.1, 1.0], [1.5, 0.5, 0.9, 1.0]])
  logps = jnp.full((2, 4), -1.0)
  old = logps - jnp.log(ratios)
  mask, adv = jnp.ones((2, 4)), jnp.asarray([1.0, -1.0])

  def loss(lp):
    num, den, aux = objectives.policy_gradient_loss(lp, old, mask, adv, clip_eps=0.2)
    return num / den, aux

  (value, aux), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(logps)
  # -min(rA, clip(r)A): row 0 [-1.2 (clipped), -0.5, -1.1, -1.0]; row 1 [1.5, 0.8 (clipped), 0.9, 1.0]
  assert float(value) == pytest.approx((-3.8 + 4.2) / 2, abs=1e-5)
  assert float(aux["clipped"]) == 2 and float(aux["tokens"]) == 8
  # d(-r A)/d logp = -r A where the unclipped branch is active, 0 where clipping binds
  np.testing.assert_allclose(np.asarray(grad), np.asarray([[0, -0.5, -1.1, -1.0], [1.5, 0, 0.9, 1.0]]) / 2, atol=1e-5)


def test_kl_in_loss_hand_computed():
  logps = jnp.asarray([[LOG(0.5), LOG(0.25)]])
  ref = jnp.asarray([[LOG(0.25), LOG(0.5)]])
  num, den, aux = objectives.policy_gradient_loss(logps, logps, jnp.ones((1, 2)), jnp.zeros(1), ref_logps_BxT=ref,
                                              kl_coef=0.1, kl_estimator="k3")
  k3_sum = (0.5 - 1 + LOG(2)) + (2 - 1 - LOG(2))
  assert float(num / den) == pytest.approx(0.1 * k3_sum, rel=1e-5)
  assert float(aux["kl"]) == pytest.approx(k3_sum, rel=1e-5)


# ---- guardrails ----

def test_nan_logps_empty_rows_and_empty_batches_give_finite_loss():
  logps = jnp.asarray([[-1.0, jnp.nan, -2.0],   # NaN under the mask: row dropped
                       [-1.0, -0.5, jnp.nan],   # NaN outside the mask: harmless
                       [-0.3, -0.2, -0.1],      # -inf reference under the mask: row dropped
                       [-0.3, -0.2, -0.1]])     # zero-length response
  old = logps.at[1, 0].set(-1.1)
  ref = jnp.zeros((4, 3)).at[2, 1].set(-jnp.inf).at[1, 2].set(jnp.nan)
  mask = jnp.asarray([[1.0, 1, 1], [1, 1, 0], [1, 1, 0], [0, 0, 0]])
  adv = jnp.asarray([1.0, -1.0, 1.0, 1.0])
  for normalisation in objectives.NORMALISATIONS:
    def loss(lp):
      num, den, aux = objectives.policy_gradient_loss(lp, old, mask, adv, clip_eps=0.2, normalisation=normalisation,
                                                  ref_logps_BxT=ref, kl_coef=0.5)
      return num / jnp.maximum(den, 1.0), aux
    (value, aux), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(logps)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad))), normalisation
    assert float(aux["dropped_rows"]) == 2 and float(aux["tokens"]) == 2  # only row 1 remains
    np.testing.assert_array_equal(np.asarray(grad)[[0, 2, 3]], 0.0)
  num, den, _ = objectives.policy_gradient_loss(logps, old, jnp.zeros((4, 3)), adv, normalisation="token_mean")
  assert float(num) == 0 and float(den) == 0  # an empty batch: 0 / max(0, 1) = 0 in the step


@pytest.mark.parametrize("name", ["group_mean", "rloo", "grpo"])
def test_all_equal_rewards_give_zero_gradient(name):
  logps = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
  adv = advantages.compute(name, jnp.ones((1, 4)))[0]

  def loss(lp):
    num, den, _ = objectives.policy_gradient_loss(lp, lp, jnp.ones((4, 3)), adv)
    return num / den
  np.testing.assert_array_equal(np.asarray(jax.jit(jax.grad(loss))(logps)), np.zeros((4, 3)))


def test_unknown_normalisation_raises():
  with pytest.raises(ValueError, match="unknown normalisation 'mean'"):
    objectives.policy_gradient_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.ones((1, 2)), jnp.ones(1),
                                normalisation="mean")


# ---- exact expectations on a tabular policy ----

V, T, K = 3, 2, 3
EOS = 0
# responses: [EOS], then (a, b) for a in {1, 2}, b in {EOS, 1, 2} (length 2, truncated if no EOS)
RESPONSES = [(EOS,)] + [(a, b) for a in (1, 2) for b in (EOS, 1, 2)]
S = len(RESPONSES)
TOKENS_SxT = jnp.asarray([list(r) + [0] * (T - len(r)) for r in RESPONSES], jnp.int32)
MASK_SxT = jnp.asarray([[1.0] * len(r) + [0.0] * (T - len(r)) for r in RESPONSES], jnp.float32)
STATES_SxT = jnp.asarray([[0, r[0]] if len(r) == 2 else [0, 0] for r in RESPONSES], jnp.int32)  # (), (1,), (2,)
REWARDS_S = jnp.asarray([1.0 if r in ((1, 2), (2, EOS)) else 0.0 for r in RESPONSES], jnp.float32)
BATCHES_NxK = jnp.asarray(list(itertools.product(range(S), repeat=K)), jnp.int32)  # all 343 batches

THETA = jnp.asarray(np.random.default_rng(1).normal(size=(3, V)), jnp.float32)  # logits per state
THETA_REF = jnp.asarray(np.random.default_rng(2).normal(size=(3, V)), jnp.float32)


def token_logps(theta):
  """log π(y_t | state_t) for every response and position; 0 on padding. [S, T]"""
  logp_state_V = jax.nn.log_softmax(theta, axis=-1)
  return logp_state_V[STATES_SxT, TOKENS_SxT] * MASK_SxT


def seq_logp(theta):
  return jnp.sum(token_logps(theta), axis=1)


def objective_j(theta):
  return jnp.sum(jnp.exp(seq_logp(theta)) * REWARDS_S)


def exact_kl(theta, theta_ref=THETA_REF):
  """KL(π(y) ‖ π_ref(y)) over whole responses, by enumeration."""
  return jnp.sum(jnp.exp(seq_logp(theta)) * (seq_logp(theta) - seq_logp(theta_ref)))


def state_probs(theta):
  """P(reaching state) for the states (), (1,), (2,): 1, π(1), π(2)."""
  p0 = jax.nn.softmax(theta[0])
  return jnp.asarray([1.0, p0[1], p0[2]])


def local_kl(p_V, q_V):
  return jnp.sum(p_V * (jnp.log(p_V) - jnp.log(q_V)))


def expected_gradient(theta, *, advantage="none", normalisation="sequence_sum", clip_eps=0.0, kl_coef=0.0,
                      kl_estimator="k3", kl_mode=None, ratio_offset=0.0):
  """E over all K-sample batches of ∇ loss, with the stop-gradient quantities evaluated at theta."""
  ref_logps_SxT = token_logps(THETA_REF)

  def batch_loss(th, idx_K):
    logps_KxT = token_logps(th)[idx_K]
    old_KxT = jax.lax.stop_gradient(logps_KxT) + ratio_offset * MASK_SxT[idx_K]
    mask_KxT = MASK_SxT[idx_K]
    rewards_K = REWARDS_S[idx_K]
    if kl_mode == "reward":
      rewards_K = rewards_K - kl_coef * jnp.sum(kl.get_estimator(kl_estimator)(
          jax.lax.stop_gradient(logps_KxT), ref_logps_SxT[idx_K]) * mask_KxT, axis=1)
    adv_K = advantages.compute(advantage, rewards_K[None])[0]
    num, den, _ = objectives.policy_gradient_loss(
        logps_KxT, old_KxT, mask_KxT, adv_K, clip_eps=clip_eps, normalisation=normalisation,
        ref_logps_BxT=ref_logps_SxT[idx_K] if kl_mode == "loss" else None, kl_coef=kl_coef,
        kl_estimator=kl_estimator)
    return num / den

  def expectation(th):
    prob_S = jax.lax.stop_gradient(jnp.exp(seq_logp(th)))
    weight_N = jnp.prod(prob_S[BATCHES_NxK], axis=1)
    return jnp.sum(weight_N * jax.vmap(lambda idx: batch_loss(th, idx))(BATCHES_NxK))

  return jax.jit(jax.grad(expectation))(theta)


def test_tabular_policy_is_normalised():
  assert float(jnp.sum(jnp.exp(seq_logp(THETA)))) == pytest.approx(1.0, abs=1e-6)


def assert_close(got, want):
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-6)


GRAD_J = jax.grad(objective_j)(THETA)


@pytest.mark.parametrize("advantage", ["none", "rloo"])
def test_reinforce_and_rloo_are_unbiased_for_grad_j(advantage):
  """E[∇L] = −∇J: the STaR estimator (no baseline) and leave-one-out."""
  assert_close(expected_gradient(THETA, advantage=advantage), -GRAD_J)


@pytest.mark.parametrize("advantage", ["batch_mean", "group_mean"])
def test_mean_baseline_including_own_sample_scales_grad_j(advantage):
  """A baseline that includes the sample's own reward: E[∇L] = −(1 − 1/K) ∇J."""
  assert_close(expected_gradient(THETA, advantage=advantage), -(1 - 1 / K) * GRAD_J)


def test_clipping_is_inactive_on_policy():
  assert_close(expected_gradient(THETA, advantage="rloo", clip_eps=0.2), -GRAD_J)


def test_importance_ratio_without_clipping_weights_the_gradient():
  """π_old = π · e^(−c) per token: ρ = e^c per token, so E[∇L] = −E[A Σ_t e^c ∇log π_t] = −e^c ∇J."""
  assert_close(expected_gradient(THETA, ratio_offset=-0.1), -math.exp(0.1) * GRAD_J)


@pytest.mark.parametrize("advantage", ["none", "rloo"])
def test_k1_in_the_reward_is_unbiased_for_grad_of_j_minus_beta_kl(advantage):
  beta = 0.3
  want = -jax.grad(lambda th: objective_j(th) - beta * exact_kl(th))(THETA)
  assert_close(expected_gradient(THETA, advantage=advantage, kl_coef=beta, kl_estimator="k1", kl_mode="reward"),
               want)


def test_kl_penalties_in_the_loss_have_their_known_gradients():
  beta = 0.3
  probs_sg = jax.lax.stop_gradient(state_probs(THETA))

  def per_state(theta, reverse):
    p, q = jax.nn.softmax(theta, -1), jax.nn.softmax(THETA_REF, -1)
    return sum(probs_sg[s] * (local_kl(q[s], p[s]) if reverse else local_kl(p[s], q[s])) for s in range(3))

  # k1: E[∇ Σ_t log π] = 0, only ∇J remains
  assert_close(expected_gradient(THETA, kl_coef=beta, kl_estimator="k1", kl_mode="loss"), -GRAD_J)
  grad_per_state = jax.jit(jax.grad(per_state), static_argnums=1)
  # k2: the forward KL of each visited state, the state distribution held fixed
  assert_close(expected_gradient(THETA, kl_coef=beta, kl_estimator="k2", kl_mode="loss"),
               -GRAD_J + beta * grad_per_state(THETA, False))
  # k3: the same for the reverse KL(π_ref ‖ π)
  assert_close(expected_gradient(THETA, kl_coef=beta, kl_estimator="k3", kl_mode="loss"),
               -GRAD_J + beta * grad_per_state(THETA, True))
  # ... and neither is the gradient of the sequence-level KL on this multi-step policy
  exact = -jax.grad(lambda th: objective_j(th) - beta * exact_kl(th))(THETA)
  assert np.max(np.abs(np.asarray(expected_gradient(THETA, kl_coef=beta, kl_estimator="k2", kl_mode="loss")
                                  - exact))) > 1e-3


def test_k2_in_the_loss_is_exact_for_one_token_responses():
  """A bandit (T = 1): E[∇ β ½ x²] = β E[x ∇log π] = β ∇KL."""
  theta, theta_ref, beta = THETA[0], THETA_REF[0], 0.7
  p = jax.nn.softmax(theta)

  def loss(th, a):
    logp = jax.nn.log_softmax(th)[a][None, None]
    ref = jax.nn.log_softmax(theta_ref)[a][None, None]
    num, den, _ = objectives.policy_gradient_loss(logp, jax.lax.stop_gradient(logp), jnp.ones((1, 1)),
                                              jnp.zeros(1), ref_logps_BxT=ref, kl_coef=beta, kl_estimator="k2")
    return num / den
  got = jnp.sum(p[:, None] * jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(theta, jnp.arange(V)), axis=0)
  assert_close(got, beta * jax.grad(lambda th: local_kl(jax.nn.softmax(th), jax.nn.softmax(theta_ref)))(theta))


def expected_estimate(theta, name, theta_ref=THETA_REF):
  prob_S = jnp.exp(seq_logp(theta))
  per_seq = jnp.sum(kl.get_estimator(name)(token_logps(theta), token_logps(theta_ref)) * MASK_SxT, axis=1)
  return jnp.sum(prob_S * per_seq)


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_k1_and_k3_are_unbiased_for_the_sequence_kl(name):
  assert float(expected_estimate(THETA, name)) == pytest.approx(float(exact_kl(THETA)), rel=1e-5)


def test_k2_expectation_is_half_mean_square_log_ratio_and_kl_to_second_order():
  x_SxT = token_logps(THETA) - token_logps(THETA_REF)
  want = jnp.sum(jnp.exp(seq_logp(THETA)) * jnp.sum(0.5 * x_SxT ** 2, axis=1))
  assert float(expected_estimate(THETA, "k2")) == pytest.approx(float(want), rel=1e-6)
  assert float(expected_estimate(THETA, "k2")) != pytest.approx(float(exact_kl(THETA)), rel=1e-2)
  # near the reference, E[k2] - KL = O(eps^3): halving eps divides the gap by ~8
  direction = THETA - THETA_REF
  gaps = [float(expected_estimate(THETA_REF + e * direction, "k2") - exact_kl(THETA_REF + e * direction))
          for e in (0.2, 0.1)]
  assert 6 < gaps[0] / gaps[1] < 10, gaps


@jax.jit
@jax.vmap
def _train(beta: jax.Array, steps: int = 300, lr: float = 0.5, batch: int = 16) -> jax.Array:
  """SGD on sampled batches (k1 in the reward, RLOO) from π = π_ref; returns the final logits (vmapped
  over β: one compilation)."""
  ref_logps_SxT = token_logps(THETA_REF)

  def loss(th, idx):
    logps = token_logps(th)[idx]
    rewards = REWARDS_S[idx] - beta * jnp.sum(jax.lax.stop_gradient(logps) - ref_logps_SxT[idx], axis=1)
    adv = advantages.compute("rloo", rewards.reshape(2, batch // 2)).reshape(batch)
    num, den, _ = objectives.policy_gradient_loss(logps, jax.lax.stop_gradient(logps), MASK_SxT[idx], adv)
    return num / den

  def step(th, key):
    idx = jax.random.categorical(key, seq_logp(th), shape=(batch,))
    return th - lr * jax.grad(loss)(th, idx), None

  return jax.lax.scan(step, THETA_REF, jax.random.split(jax.random.key(0), steps))[0]


def test_large_beta_keeps_the_policy_near_the_reference():
  free, held = _train(jnp.asarray([0.0, 2.0]))
  # the regularised optimum is π*(y) ∝ π_ref(y) exp(r(y) / β)
  ref_prob = jnp.exp(seq_logp(THETA_REF))
  optimum = ref_prob * jnp.exp(REWARDS_S / 2.0)
  optimum = optimum / jnp.sum(optimum)
  kl_optimum = float(jnp.sum(optimum * jnp.log(optimum / ref_prob)))
  assert float(objective_j(free)) > 0.9 and float(exact_kl(free)) > 1.0  # β = 0: J -> 1, far from π_ref
  # β = 2: SGD on sampled batches lands on the regularised optimum (measured: KL 0.01760 vs 0.01761)
  assert float(exact_kl(held)) == pytest.approx(kl_optimum, abs=0.003)
  assert float(objective_j(held)) == pytest.approx(float(jnp.sum(optimum * REWARDS_S)), abs=0.01)
  assert float(objective_j(held)) > float(objective_j(THETA_REF)) + 0.05  # still learns, within the leash
