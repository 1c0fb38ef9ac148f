"""Per-step credit assignment (pg/credit.py): hand-computed advantages, GAE's reductions, exact expectations
by enumeration, the host-side step arrays, the config keys and the jitted step with each credit option.

The enumeration tests use a tabular softmax policy over V = 3 tokens (0 = EOS, 1 = a letter, 2 = a newline
that closes a step) and responses of at most T = 3 tokens: 15 responses, so E[∇ loss] over batches of K = 3
samples of one question is an exact sum over all 15^3 batches, compared with ∇ E[Σ_k r_k + R] computed
from the response probabilities. Step rewards are a random function of the prefix up to the closing
newline (causal), the outcome a random function of the whole response.
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import pg_star_arithmetic
from star_jax import sharding
from star_jax.data import CharTokenizer
from star_jax.pg import advantages, credit, objectives, rewards
from star_jax.pg import config as rl_config
from star_jax.pg import step as pg_step
from tests.pg.test_loop import MODEL, TRAIN, init_params, make_step_batch

# ---- hand-computed values ----

# one question, K = 3 samples, T = 6 (position 0 is the prompt's last token, masked out)
MASK_3x6 = np.asarray([[0, 1, 1, 1, 1, 1],   # two steps closing at t = 2 and t = 4, then a tail token
                       [0, 1, 1, 1, 0, 0],   # one step closing at its last token t = 3: an empty tail
                       [0, 1, 1, 1, 1, 0]],  # no step at all
                      np.float32)
ENDS_3x6 = np.zeros((3, 6), np.float32)
ENDS_3x6[0, [2, 4]] = 1
ENDS_3x6[1, 3] = 1
STEP_R_3x6 = np.zeros((3, 6), np.float32)
STEP_R_3x6[0, 2], STEP_R_3x6[0, 4], STEP_R_3x6[1, 3] = 0.5, 0.25, 0.5
OUTCOME_3 = np.asarray([1.0, 0.0, 0.0], np.float32)


def _rtg(baseline=True, step_r=STEP_R_3x6, outcome=OUTCOME_3, valid=(True, True, True)):
  r = credit.token_rewards(step_r, outcome, MASK_3x6)
  return np.asarray(credit.reward_to_go_advantages(r, ENDS_3x6, outcome, MASK_3x6, jnp.asarray(valid), group_size=3,
                                                   baseline=baseline))


def test_token_rewards_segments_and_returns_by_hand():
  r = credit.token_rewards(STEP_R_3x6, OUTCOME_3, MASK_3x6)
  np.testing.assert_allclose(r, [[0, 0, 0.5, 0, 0.25, 1], [0, 0, 0, 0.5, 0, 0], [0] * 6])
  np.testing.assert_array_equal(credit.segments(ENDS_3x6), [[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1], [0] * 6])
  g = credit.returns_to_go(r, MASK_3x6)
  np.testing.assert_allclose(g, [[0, 1.75, 1.75, 1.25, 1.25, 1], [0, 0.5, 0.5, 0.5, 0, 0], [0] * 6])
  # G_{b,k}: row 0 segments 1.75, 1.25, 1 (tail), then R = 1; row 1: 0.5, then R = 0 (empty tail); row 2: R = 0
  g_bxs = np.asarray(credit.segment_returns(g, credit.segments(ENDS_3x6), MASK_3x6, OUTCOME_3))
  assert g_bxs.shape == (3, 7)
  np.testing.assert_allclose(g_bxs[:, :4], [[1.75, 1.25, 1, 1], [0.5, 0, 0, 0], [0, 0, 0, 0]])


def test_reward_to_go_with_per_step_leave_one_out_baselines_by_hand():
  # row 0: b_0 = (0.5 + 0) / 2, b_1 = (0 + 0) / 2 (row 1's tail is empty: R = 0; row 2 has no step 1: R = 0)
  # row 1: b_0 = (1.75 + 0) / 2;  row 2: b_0 = (1.75 + 0.5) / 2
  np.testing.assert_allclose(_rtg(), [[0, 1.5, 1.5, 1.25, 1.25, 1.0],
                                      [0, -0.375, -0.375, -0.375, 0, 0],
                                      [0, -1.125, -1.125, -1.125, -1.125, 0]], atol=1e-6)
  np.testing.assert_allclose(_rtg(baseline=False), credit.returns_to_go(
      credit.token_rewards(STEP_R_3x6, OUTCOME_3, MASK_3x6), MASK_3x6), atol=1e-7)
  # an invalid row gets A = 0 and leaves the others' baselines: row 0's b_0 = 0.5 (row 1 only), b_1 = R_1 = 0
  np.testing.assert_allclose(_rtg(valid=(True, True, False))[:2], [[0, 1.25, 1.25, 1.25, 1.25, 1.0],
                                                                    [0, -1.25, -1.25, -1.25, 0, 0]], atol=1e-6)
  np.testing.assert_array_equal(_rtg(valid=(True, True, False))[2], 0)
  # a question with one valid sample: no baseline (as rloo)
  np.testing.assert_allclose(_rtg(valid=(True, False, False))[0], [0, 1.75, 1.75, 1.25, 1.25, 1.0], atol=1e-6)


def test_reward_to_go_without_step_rewards_is_rloo_on_every_token():
  outcome = np.asarray([1.0, 0.0, 1.0], np.float32)
  want = np.asarray(advantages.compute("rloo", outcome[None]))[0][:, None] * MASK_3x6
  np.testing.assert_allclose(_rtg(step_r=np.zeros_like(STEP_R_3x6), outcome=outcome), want, atol=1e-6)


def test_gae_by_hand():
  # r = (0, 0.5, 1), V = (0.2, 0.4, 0.6), γ = 0.9, λ = 0.5:
  # δ = (0 + .9·.4 − .2, .5 + .9·.6 − .4, 1 − .6) = (.16, .64, .4);  A_3 = .4, A_2 = .64 + .45·.4, A_1 = .16 + .45·A_2
  mask = np.asarray([[0, 1, 1, 1, 0]], np.float32)
  a, ret = credit.gae(np.asarray([[9, 0, 0.5, 1, 9]]), np.asarray([[9, 0.2, 0.4, 0.6, 9]]), mask, gamma=0.9, lam=0.5)
  want = np.asarray([[0, 0.16 + 0.45 * 0.82, 0.82, 0.4, 0]])
  np.testing.assert_allclose(a, want, atol=1e-6)
  np.testing.assert_allclose(ret, want + np.asarray([[0, 0.2, 0.4, 0.6, 0]]), atol=1e-6)


def test_gae_reductions():
  rng = np.random.default_rng(0)
  lengths = rng.integers(0, 9, 6)
  start = rng.integers(0, 3, 6)
  mask = np.asarray([[float(s <= t < s + n) for t in range(12)] for s, n in zip(start, lengths)], np.float32)
  r, v = rng.normal(size=(6, 12)).astype(np.float32), rng.normal(size=(6, 12)).astype(np.float32)
  g = credit.returns_to_go(r, mask)
  # λ = γ = 1, V = 0: reward-to-go without a baseline
  np.testing.assert_allclose(credit.gae(r, np.zeros_like(v), mask, gamma=1.0, lam=1.0)[0], g, atol=1e-5)
  np.testing.assert_allclose(credit.reward_to_go_advantages(r, np.zeros_like(r), np.zeros(6), mask, np.ones(6, bool),
                                                            group_size=3, baseline=False), g, atol=1e-6)
  # λ = γ = 1: the Monte-Carlo return minus the value; λ = 0: the one-step TD error
  np.testing.assert_allclose(credit.gae(r, v, mask, gamma=1.0, lam=1.0)[0], (g - v) * mask, atol=1e-5)
  next_v = np.pad(v[:, 1:] * mask[:, 1:], ((0, 0), (0, 1)))
  np.testing.assert_allclose(credit.gae(r, v, mask, gamma=0.7, lam=0.0)[0], (r + 0.7 * next_v - v) * mask, atol=1e-5)
  # γ < 1 without a value: discounted returns
  want = np.zeros_like(r)
  for b in range(6):
    for t in range(12):
      want[b, t] = mask[b, t] * sum(0.7 ** (u - t) * r[b, u] * mask[b, u] for u in range(t, 12))
  np.testing.assert_allclose(credit.returns_to_go(r, mask, gamma=0.7), want, atol=1e-5)


# ---- exact expectations on a tabular policy ----

V, T, K = 3, 3, 3
EOS, LETTER, NEWLINE = 0, 1, 2
RESPONSES = ([(EOS,)] + [(a, EOS) for a in (LETTER, NEWLINE)]
             + [(a, b, c) for a in (LETTER, NEWLINE) for b in (LETTER, NEWLINE) for c in (EOS, LETTER, NEWLINE)])
S = len(RESPONSES)
PREFIXES = [()] + [(a,) for a in (1, 2)] + [(a, b) for a in (1, 2) for b in (1, 2)]  # the policy's states
_rng = np.random.default_rng(3)
STEP_REWARD = {p + (NEWLINE,): float(x) for p, x in zip(PREFIXES, _rng.normal(size=len(PREFIXES)))}
OUTCOME_S = jnp.asarray(_rng.normal(size=S), jnp.float32)
TOKENS_SxT = jnp.asarray([list(r) + [0] * (T - len(r)) for r in RESPONSES], jnp.int32)
MASK_SxT = jnp.asarray([[1.0] * len(r) + [0.0] * (T - len(r)) for r in RESPONSES], jnp.float32)
STATES_SxT = jnp.asarray([[PREFIXES.index(r[:t]) if t < len(r) else 0 for t in range(T)] for r in RESPONSES], jnp.int32)
ENDS_SxT = jnp.asarray([[float(t < len(r) and r[t] == NEWLINE) for t in range(T)] for r in RESPONSES], jnp.float32)
STEP_R_SxT = jnp.asarray([[STEP_REWARD.get(r[:t + 1], 0.0) if t < len(r) else 0.0 for t in range(T)] for r in RESPONSES],
                         jnp.float32)
BATCHES_NxK = jnp.asarray(list(itertools.product(range(S), repeat=K)), jnp.int32)
THETA = jnp.asarray(np.random.default_rng(1).normal(size=(len(PREFIXES), V)), jnp.float32)
VALUE_TABLE = jnp.asarray(np.random.default_rng(4).normal(size=len(PREFIXES)), jnp.float32)  # V(state), any values


def token_logps(theta):
  return jax.nn.log_softmax(theta, axis=-1)[STATES_SxT, TOKENS_SxT] * MASK_SxT


def objective(theta):
  """E[Σ_k r_k + R] by enumeration."""
  return jnp.sum(jnp.exp(jnp.sum(token_logps(theta), 1)) * (jnp.sum(STEP_R_SxT, 1) + OUTCOME_S))


def expected_gradient(advantage_fn):
  """E over all K-sample batches of ∇ loss (sequence_sum), advantages_KxT = advantage_fn(rows idx_K)."""
  def batch_loss(th, idx):
    logps = token_logps(th)[idx]
    num, den, _ = objectives.policy_gradient_loss(logps, jax.lax.stop_gradient(logps), MASK_SxT[idx], advantage_fn(idx))
    return num / den

  def expectation(th):
    prob_S = jax.lax.stop_gradient(jnp.exp(jnp.sum(token_logps(th), 1)))
    return jnp.sum(jnp.prod(prob_S[BATCHES_NxK], 1) * jax.vmap(lambda idx: batch_loss(th, idx))(BATCHES_NxK))
  return jax.jit(jax.grad(expectation))(THETA)


def _rewards(idx):
  return credit.token_rewards(STEP_R_SxT[idx], OUTCOME_S[idx], MASK_SxT[idx])


def reward_to_go(baseline):
  return lambda idx: credit.reward_to_go_advantages(_rewards(idx), ENDS_SxT[idx], OUTCOME_S[idx], MASK_SxT[idx],
                                                    jnp.ones(K, bool), group_size=K, baseline=baseline)


def gae_with_value_table(lam):
  return lambda idx: credit.gae(_rewards(idx), VALUE_TABLE[STATES_SxT[idx]], MASK_SxT[idx], gamma=1.0, lam=lam)[0]


GRAD_J = jax.grad(objective)(THETA)


def assert_close(got, want):
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-6)


def test_the_response_space_has_responses_with_0_to_3_steps():
  assert float(jnp.sum(jnp.exp(jnp.sum(token_logps(THETA), 1)))) == pytest.approx(1.0, abs=1e-6)
  assert sorted(set(np.asarray(jnp.sum(ENDS_SxT, 1)).tolist())) == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("baseline", [True, False])
def test_reward_to_go_is_unbiased_for_the_gradient_of_the_expected_dense_return(baseline):
  """E[Σ_t A_t ∇log π(y_t)] = ∇ E[Σ_k r_k + R], with and without the per-step leave-one-out baselines."""
  assert_close(expected_gradient(reward_to_go(baseline)), -GRAD_J)


def test_gae_with_lambda_one_and_any_state_value_is_unbiased_and_lambda_below_one_is_not():
  assert_close(expected_gradient(gae_with_value_table(1.0)), -GRAD_J)
  biased = np.asarray(expected_gradient(gae_with_value_table(0.5)))
  assert np.max(np.abs(biased + np.asarray(GRAD_J))) > 1e-2  # a wrong V with λ < 1 biases the gradient


def test_reward_to_go_with_a_per_token_k1_penalty_is_unbiased_for_the_regularised_objective():
  """r_t − β (log π(y_t) − log π_ref(y_t)) per token (rl.kl_mode = "reward" with per-step credit):
  E[Σ_t A_t ∇log π] = ∇(E[Σ_k r_k + R] − β KL(π‖π_ref)), with the per-step baselines."""
  theta_ref, beta = jnp.asarray(np.random.default_rng(5).normal(size=THETA.shape), jnp.float32), 0.3

  def advantages_kl(idx):
    x = jax.lax.stop_gradient(token_logps(THETA)[idx] - token_logps(theta_ref)[idx])
    return credit.reward_to_go_advantages(_rewards(idx) - beta * x, ENDS_SxT[idx], OUTCOME_S[idx], MASK_SxT[idx],
                                          jnp.ones(K, bool), group_size=K)

  def regularised(th):
    seq_logp = jnp.sum(token_logps(th), 1)
    kl = jnp.sum(jnp.exp(seq_logp) * (seq_logp - jnp.sum(token_logps(theta_ref), 1)))
    return objective(th) - beta * kl
  assert_close(expected_gradient(advantages_kl), -jax.grad(regularised)(THETA))


def test_a_per_step_baseline_that_includes_the_sample_itself_is_biased():
  """The enumeration can tell: a per-step mean that includes the sample's own return is not unbiased."""
  def including_self(idx):
    r = _rewards(idx)
    g = credit.returns_to_go(r, MASK_SxT[idx])
    s = credit.segments(ENDS_SxT[idx])
    g_kxs = credit.segment_returns(g, s, MASK_SxT[idx], OUTCOME_S[idx])
    return (g - jnp.take_along_axis(jnp.broadcast_to(jnp.mean(g_kxs, 0, keepdims=True), g_kxs.shape), s, 1)) * MASK_SxT[idx]
  assert np.max(np.abs(np.asarray(expected_gradient(including_self)) + np.asarray(GRAD_J))) > 1e-3


# ---- host-side step arrays ----

def test_step_fields_place_each_step_reward_at_its_closing_token():
  tok = CharTokenizer()
  prompt_ids = [tok.encode("Q:", add_bos=True)] * 3  # 3 ids: response token i is target 2 + i
  texts = ["ab\ncd\nx", "ab\ncd", "zz"]
  tokens = np.zeros((3, 9), np.int32)
  lengths = np.zeros(3, np.int32)
  for row, (text, eos) in enumerate(zip(texts, (True, True, False))):
    ids = tok.encode(text) + ([tok.eos_id] if eos else [])
    tokens[row, :len(ids)], lengths[row] = ids, len(ids)
  steps = [rewards.StepScores(1.0, (2, 5), (0.5, 0.25), 1.75),
           rewards.StepScores(0.0, (2, 5), (0.5, 0.0), 0.5),  # the second step is unterminated: ends at len(text)
           rewards.StepScores(0.0, (), (), 0.0)]
  out = rewards.step_fields(steps, prompt_ids, tokens, lengths, texts, tok, seq_len=12)
  want_r, want_e = np.zeros((3, 12)), np.zeros((3, 12))
  want_r[0, 2 + 2], want_r[0, 2 + 5] = 0.5, 0.25  # the two newlines
  want_r[1, 2 + 2] = 0.5  # row 1's second step closes at its EOS token (index 5)
  want_e[0, [4, 7]] = want_e[1, [4, 7]] = 1
  np.testing.assert_allclose(out["step_rewards_BxT"], want_r)
  np.testing.assert_array_equal(out["step_ends_BxT"], want_e)
  np.testing.assert_array_equal(out["outcome_B"], [1, 0, 0])
  np.testing.assert_array_equal(rewards.totals(steps), np.asarray([1.75, 0.5, 0.0], np.float32))
  plain = rewards.step_fields(np.asarray([1.0, 0.0, 1.0]), prompt_ids, tokens, lengths, texts, tok, seq_len=12)
  assert not plain["step_ends_BxT"].any() and plain["outcome_B"].tolist() == [1, 0, 1]
  with pytest.raises(ValueError, match="2 step ends but 1 step rewards"):
    rewards.StepScores(1.0, (2, 5), (0.5,), 1.5)


def test_the_config_reward_with_per_step_credit_gives_step_scores():
  """rl.credit != "sequence" with rl.process_reward = w: the toy task's exact step reward split by step,
  r_k = w / S while steps 1..k are right (S = n + 1 lines), by hand."""
  from tests import toy_task  # noqa: PLC0415
  from tests.pg.test_loop import tiny_config  # noqa: PLC0415
  cfg = tiny_config("/unused", process_reward=0.5, credit="reward_to_go")
  reward = rewards.default_reward(cfg.rl, toy_task.CountTask(), _mesh(), CharTokenizer(), 129)
  got = reward([toy_task.example(3)] * 3, ["1\n2\n3\nso 3\n", "1\n2\n4\nso 3\n", "garbage"])
  assert [s.step_rewards for s in got] == [(0.125,) * 4, (0.125, 0.125, 0.0, 0.0), (0.0,)]
  assert [s.step_ends for s in got] == [(1, 3, 5, 10), (1, 3, 5, 10), (7,)]
  assert [s.outcome for s in got] == [1.0, 1.0, 0.0] and [s.total for s in got] == [1.5, 1.25, 0.0]


def test_exact_step_scores_split_the_sequence_reward():
  from star_jax.data import arithmetic  # noqa: PLC0415 (only this test builds arithmetic examples)
  from star_jax.data.tasks import ArithmeticTask  # noqa: PLC0415
  task = ArithmeticTask()
  p = task.example(arithmetic.Problem(152, 702))
  right = "<scratch>\n1 5 2 + 7 0 2 , C: 0\n5 + 0 , 4 C: 0\n1 + 7 , 5 4 C: 0\n, 8 5 4 C: 0\n0 8 5 4\n</scratch>\n8 5 4\n"
  wrong_step_2 = right.replace("5 + 0 , 4 C: 0", "5 + 0 , 3 C: 0")
  scores = rewards.step_rewarded_scores(task, 0.5)
  sequence = rewards.step_rewarded(task, 0.5)
  for text in (right, wrong_step_2, ""):
    s = scores(p, text)
    assert s.total == sequence(p, text)
    assert s.outcome + sum(s.step_rewards) == pytest.approx(s.total)
    assert [text[e] for e in s.step_ends] == ["\n"] * len(s.step_ends)
  s = scores(p, wrong_step_2)
  assert s.step_rewards[:3] == (0.5 / 7, 0.0, 0.0) and s.outcome == 1.0


# ---- config ----

def test_credit_config_errors_name_the_key():
  def check(match, **overrides):
    c = pg_star_arithmetic.get_config("tiny")
    for key, value in overrides.items():
      c.rl[key] = value
    with pytest.raises(ValueError, match=match):
      rl_config.rl_experiment_from_config(c)
  check(r"config.rl.credit must be one of \['sequence', 'reward_to_go', 'gae'\], got 'token'", credit="token")
  check("config.rl.advantage must be 'rloo' .* with rl.credit='reward_to_go', got 'grpo'", credit="reward_to_go",
        advantage="grpo")
  check("config.rl.advantage must be 'none' with rl.credit='gae'", credit="gae")
  check(r"config.rl.gae_lambda must be in \[0, 1\], got 1.5", credit="gae", advantage="none", gae_lambda=1.5)
  check(r"config.rl.gae_gamma must be in \(0, 1\], got 0.0", credit="gae", advantage="none", gae_gamma=0.0)
  check("config.rl.value_coef must be >= 0", credit="gae", advantage="none", value_coef=-1.0)
  check("config.rl.value_lr must be > 0", credit="gae", advantage="none", value_lr=0.0)
  check("config.rl.gae_lambda is used only with rl.credit='gae'", credit="reward_to_go", gae_lambda=0.9)
  assert rl_config.RLConfig().credit == "sequence"  # today's estimator stays the default
  for overrides in ({"credit": "reward_to_go"}, {"credit": "reward_to_go", "advantage": "none"},
                    {"credit": "gae", "advantage": "none", "gae_lambda": 1.0, "value_coef": 0.5}):
    c = pg_star_arithmetic.get_config("tiny")
    for key, value in overrides.items():
      c.rl[key] = value
    assert rl_config.rl_experiment_from_config(c).rl.credit == overrides["credit"]


# ---- the jitted step ----

RL = rl_config.RLConfig(questions_per_step=4, samples_per_question=4, advantage="rloo", temperature=0.8)
LR = 0.05


def _mesh():
  return sharding.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), jax.devices()[:1])


@pytest.fixture(scope="module")
def step_batch():
  params = init_params(MODEL, 0)
  batch = make_step_batch(params)
  rng = np.random.default_rng(7)
  batch["outcome_B"] = batch["rewards_B"].copy()
  ends = (rng.random(batch["loss_mask_BxT"].shape) < 0.3) * batch["loss_mask_BxT"]
  batch["step_ends_BxT"] = ends.astype(np.float32)
  batch["step_rewards_BxT"] = (ends * rng.normal(size=ends.shape)).astype(np.float32)
  return params, batch


def _run(params, batch, rl, n_steps=1):
  mesh, tx = _mesh(), optax.sgd(LR)
  state = pg_step.create_state(MODEL, tx, mesh, 0, jax.tree.map(jnp.array, params), 0.0, rl=rl)
  step_fn = pg_step.compile_pg_step(MODEL, TRAIN, rl, mesh, tx)
  history = []
  for _ in range(n_steps):
    state, metrics = step_fn(state, sharding.host_batch_to_global(batch, mesh), state.train.rng)
    history.append({k: float(v) for k, v in metrics.items()})
  return jax.device_get(state), history


def test_reward_to_go_without_step_rewards_updates_as_sequence_rloo(step_batch):
  params, batch = step_batch
  zero = dict(batch, step_rewards_BxT=np.zeros_like(batch["step_rewards_BxT"]))
  (seq, _), (tok, _) = _run(params, batch, RL), _run(params, zero, dataclasses.replace(RL, credit="reward_to_go"))
  moved = 0.0
  for a, b, p in zip(jax.tree.leaves(seq.train.params), jax.tree.leaves(tok.train.params), jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    moved = max(moved, float(np.max(np.abs(np.asarray(a) - np.asarray(p)))))
  assert moved > 1e-4


def test_gae_step_trains_the_value_head_in_the_same_update(step_batch):
  """One GAE step (SGD on the policy, Adam on the value head) = the pure losses composed by hand: V = 0 at
  the start, A and the λ-returns from credit.gae, L = L_pg + c · ½(V − Ĝ)² over (trunk, head)."""
  params, batch = step_batch
  rl = dataclasses.replace(RL, credit="gae", advantage="none", gae_gamma=0.9, gae_lambda=0.8, value_coef=0.5,
                           value_lr=0.01)
  state, history = _run(params, batch, rl)
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  on = (jb["loss_mask_BxT"] > 0) & jb["valid_B"][:, None]
  r = credit.token_rewards(jb["step_rewards_BxT"], jb["outcome_B"], on)
  adv, ret = credit.gae(r, jnp.zeros_like(r), on, gamma=0.9, lam=0.8)
  head = pg_step.init_value_head(MODEL)

  def loss(p, h):
    logps, _, values = pg_step.policy_outputs(MODEL, p, h, jb, rl.temperature)
    num, den, _ = objectives.policy_gradient_loss(logps, jb["old_logps_BxT"], jb["loss_mask_BxT"], adv)
    v_num, v_den = objectives.value_loss(values, ret, jb["loss_mask_BxT"])
    return num / den + 0.5 * v_num / v_den
  grads, head_grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, head)
  updates, _ = optax.adam(0.01).update(head_grads, optax.adam(0.01).init(head), head)
  want_head = optax.apply_updates(head, updates)
  for got, want in zip(jax.tree.leaves(state.train.params), jax.tree.leaves(jax.tree.map(lambda w, g: w - LR * g, params, grads))):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-4)
  for got, want in zip(jax.tree.leaves(state.value["params"]), jax.tree.leaves(want_head)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  assert np.any(np.asarray(state.value["params"]["w_DxC"]) != 0)
  assert history[0]["value_loss"] > 0 and all(np.isfinite(v) for v in history[0].values())


def test_a_gae_step_needs_a_state_with_a_value_head(step_batch):
  params, batch = step_batch
  mesh, tx = _mesh(), optax.sgd(LR)
  rl = dataclasses.replace(RL, credit="gae", advantage="none")
  state = pg_step.create_state(MODEL, tx, mesh, 0, params, 0.0)  # no rl: no value head
  step = functools.partial(pg_step.pg_step, model_config=MODEL, rl=rl, tx=tx, schedule=optax.constant_schedule(LR))
  with pytest.raises(ValueError, match="rl.credit='gae' needs a PGState with a value head"):
    jax.eval_shape(step, state, batch, state.train.rng)
  with pytest.raises(ValueError, match="rl.credit='sequence' needs a PGState without a value head"):
    jax.eval_shape(functools.partial(step, rl=RL), pg_step.create_state(MODEL, tx, mesh, 0, params, 0.0, rl=rl),
                   batch, state.train.rng)


def test_only_gae_changes_the_state_tree():
  """Checkpoints of every other credit option keep PGState's tree (an older RL checkpoint still restores)."""
  mesh, tx = _mesh(), optax.sgd(LR)
  plain = pg_step.state_shardings(MODEL, tx, mesh)[0]
  for rl in (RL, dataclasses.replace(RL, credit="reward_to_go")):
    abstract = pg_step.state_shardings(MODEL, tx, mesh, rl)[0]
    assert type(abstract) is pg_step.PGState and jax.tree.structure(abstract) == jax.tree.structure(plain)
  gae = pg_step.state_shardings(MODEL, tx, mesh, dataclasses.replace(RL, credit="gae", advantage="none"))[0]
  assert isinstance(gae, pg_step.PGValueState) and gae.value["params"]["w_DxC"].shape == (MODEL.d_model, 1)


def test_policy_outputs_match_response_logps():
  params = init_params(MODEL, 0)
  batch = {k: jnp.asarray(v) for k, v in make_step_batch(params, seed=2).items()}
  logps, entropy = jax.jit(pg_step.response_logps, static_argnums=(0, 3))(MODEL, params, batch, 0.8)
  got = jax.jit(pg_step.policy_outputs, static_argnums=(0, 4))(MODEL, params, pg_step.init_value_head(MODEL), batch, 0.8)
  np.testing.assert_allclose(got[0], logps, atol=1e-6)
  np.testing.assert_allclose(got[1], entropy, atol=1e-6)
  np.testing.assert_array_equal(got[2], 0.0)  # the zero head


# ---- the loop with each credit option (end to end) ----

def sevens_by_line(examples, texts):
  """A StepRewardFn with dense step rewards: r_k = the fraction of 7s in line k, outcome = parity of the text."""
  out = []
  for text in texts:
    ends = [i for i, c in enumerate(text) if c == "\n"]
    starts = [0] + [e + 1 for e in ends[:-1]]
    step_r = tuple(text[s:e].count("7") / max(e - s, 1) for s, e in zip(starts, ends))
    outcome = float(sum(map(ord, text)) % 2)
    out.append(rewards.StepScores(outcome, tuple(ends), step_r, outcome + sum(step_r)))
  return out


@pytest.mark.e2e
@pytest.mark.parametrize("credit_name", ["reward_to_go", "gae"])
def test_the_loop_runs_with_per_step_credit(tmp_path, credit_name):
  """pg.run with rl.credit = reward_to_go and gae on a reward with dense step rewards: records, finite
  metrics, non-zero per-token advantages, and the value head saved in the checkpoint."""
  from star_jax import checkpoint, io, train  # noqa: PLC0415 (only the loop tests restore checkpoints)
  from star_jax.pg import loop as rl  # noqa: PLC0415
  from star_jax.star import tasks as star_tasks  # noqa: PLC0415
  from tests import toy_task  # noqa: PLC0415
  from tests.pg.test_loop import tiny_config  # noqa: PLC0415
  overrides = {"credit": credit_name}
  if credit_name == "gae":
    overrides.update(advantage="none", value_coef=0.5)
  cfg = tiny_config(tmp_path / "data", **overrides)
  data = star_tasks.TaskData(toy_task.CountTask(), None, [toy_task.example(n) for n in range(1, 9)],
                             {1: [toy_task.example(n) for n in (2, 3)], 2: [toy_task.example(n) for n in (6, 7)]}, [])
  records = rl.run(cfg, str(tmp_path / "run"), init_params(cfg.model, 0), task_data=data, reward=sevens_by_line)
  assert [r["step"] for r in records] == [0, 2, 4]
  train_records = io.read_jsonl(str(tmp_path / "run" / "rl_metrics.jsonl"))
  assert len(train_records) == 4 and all(np.isfinite(v) for r in train_records for v in r.values())
  assert all(r["advantage_abs"] > 0 for r in train_records)
  tx = train.make_optimizer(pg_step.optimizer_config(cfg.train, cfg.rl))
  abstract, _ = pg_step.state_shardings(cfg.model, tx, sharding.make_mesh(cfg.mesh.axes), cfg.rl)
  with checkpoint.Checkpointer(str(tmp_path / "run" / "checkpoints")) as ckpt:
    state, _ = ckpt.restore(abstract)
  assert int(state.train.step) == 4
  if credit_name == "gae":
    assert all(r["value_loss"] >= 0 for r in train_records)
    assert np.any(np.asarray(state.value["params"]["w_DxC"]) != 0)
  else:
    assert type(state) is pg_step.PGState  # the checkpoint keeps PGState's tree


@pytest.mark.e2e
def test_learned_prm_step_scores_split_its_sequence_reward(tmp_path):
  """rl.process_reward_model with per-step credit: r_k = w · p_k / S for the first S steps (a PRM whose step
  head is a constant P(good) = p), totals equal to the sequence-level learned reward."""
  import math  # noqa: PLC0415 (only this test)

  from star_jax.data import arithmetic  # noqa: PLC0415
  from star_jax.data.tasks import ArithmeticTask  # noqa: PLC0415
  from tests.prm.test_reward import _rl_config, _save_reward_model  # noqa: PLC0415 (the PRM tests' tiny PRM)
  p, w = 0.8, 0.5
  cfg = _rl_config(tmp_path, process_reward=w, process_reward_model=str(tmp_path / "prm"), credit="reward_to_go")
  mesh = sharding.make_mesh(cfg.mesh.axes)
  _save_reward_model(str(tmp_path / "prm"), cfg, mesh, head_bias=math.log(p / (1 - p)))
  task, tok = ArithmeticTask(), CharTokenizer()
  q = arithmetic.Problem(52, 79)  # S = 6
  right = arithmetic.target_text(q)
  first_three = "\n".join(right.split("\n")[:4])
  texts = [right, first_three, "no scratchpad"]
  got = rewards.default_reward(cfg.rl, task, mesh, tok, cfg.train.seq_len + 1)([task.example(q)] * 3, texts)
  sequence = rewards.default_reward(dataclasses.replace(cfg.rl, credit="sequence"), task, mesh, tok,
                                    cfg.train.seq_len + 1)([task.example(q)] * 3, texts)
  np.testing.assert_allclose([s.total for s in got], sequence, rtol=1e-6)
  assert [len(s.step_rewards) for s in got] == [len(task.steps(t)) for t in texts]
  np.testing.assert_allclose(got[0].step_rewards[:6], [w * p / 6] * 6, rtol=1e-5)
  assert all(r == 0.0 for r in got[0].step_rewards[6:])
  np.testing.assert_allclose(got[1].step_rewards, [w * p / 6] * 3, rtol=1e-5)
  assert [s.outcome for s in got] == [1.0, 0.0, 0.0]
