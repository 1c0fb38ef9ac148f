"""The search with a real (tiny, random) policy and reward model: one sampler call per depth, shared-prefix
sampling equals repeated prompts, 8 simulated devices equal 1, breadth 1 with n = 1 at temperature 0 is greedy
decoding, and the budgets are exact.

All tests share shapes (prefixes padded to 16, prompts to 64 tokens, an 8-token buffer) so the sampler and
the reward model compile once per mesh and temperature.
"""

import jax
import numpy as np
import pytest

from star_jax import models, sampling, sharding
from star_jax.data import CharTokenizer
from star_jax.models import ModelConfig
from star_jax.search import LogProbValue, ModelStepSampler, PRMValue, SearchConfig, bfs, dfs
from star_jax.search.policy import prefix_bucket
from tests import toy_task

TOK = CharTokenizer()
MODEL = ModelConfig(vocab_size=TOK.vocab_size, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64)
TASK = toy_task.CountTask()
EXAMPLES = [toy_task.example(n) for n in (3, 5, 12)]
PROMPTS = [TASK.prompt(e) for e in EXAMPLES]
CFG = SearchConfig(depth=2, breadth=2, samples=3, step_tokens=5, answer_tokens=8, answer_prefix="so", temperature=1.0,
                   answer_temperature=1.0)  # (one temperature: one sampler compile)
SEQ_LEN = 64


def random_params(seed):
  """A random policy (numpy: nothing to compile): N(0, 0.3²) weights, norm scales included."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (0.3 * rng.standard_normal(a.shape)).astype(a.dtype), models.abstract_params(MODEL))


@pytest.fixture(scope="module")
def params():
  return random_params(0)


@pytest.fixture(scope="module")
def reward_params():
  """A reward model: a random trunk and a random process head (one logit)."""
  rng = np.random.default_rng(2)
  return {"trunk": random_params(1), "prm": {"w_DxC": rng.standard_normal((MODEL.d_model, 1)).astype(np.float32),
                                             "b_C": np.zeros((1,), np.float32)}}


def mesh(devices):
  return sharding.make_mesh([("data", devices), ("fsdp", 1), ("tensor", 1)], devices=jax.devices()[:devices])


def sampler(params, devices=1, **kw):
  m = mesh(devices)
  return ModelStepSampler(MODEL, jax.device_put(params, sharding.replicated(m)), TOK, m, max_new_tokens=8, **kw)


def prm_value(reward_params, devices=1):
  m = mesh(devices)
  return PRMValue(MODEL, jax.device_put(reward_params, sharding.replicated(m)), TOK, TASK, m, aggregation="min",
                  seq_len=SEQ_LEN)


def summary(result):
  return [(o.text, [s.text for s in o.finals], o.budget) for o in result.outcomes]


def test_one_sampler_call_per_depth_and_shared_prefix_equals_repeated_prompts(params):
  grouped, repeated = sampler(params), sampler(params, grouped=False)
  a = bfs(grouped, LogProbValue("sum"), EXAMPLES, PROMPTS, CFG, jax.random.key(3))
  b = bfs(repeated, LogProbValue("sum"), EXAMPLES, PROMPTS, CFG, jax.random.key(3))
  assert summary(a) == summary(b)
  np.testing.assert_allclose([o.best.value for o in a.outcomes], [o.best.value for o in b.outcomes], rtol=1e-5)
  assert grouped.calls == repeated.calls == a.sampler_calls == CFG.depth + 1 and a.value_calls == CFG.depth
  # every call pads its prefixes to 16 of 64 tokens; the repeated sampler prefills each n = 3 times (not the answers)
  assert grouped.real_rows == sum(o.budget.sampled_rows for o in a.outcomes) and grouped.rows == 16 * (3 + 3 + 1)
  assert grouped.prefill_tokens == 3 * 16 * 64 and repeated.prefill_tokens == (3 + 3 + 1) * 16 * 64
  for out in a.outcomes:  # a beam state that ended with EOS is neither expanded nor answered
    open_beams = [n for n in a.nodes if n.problem == out.best.problem and n.depth == 1 and not n.finished
                  and n.duplicate_of < 0 and any(c.parent == n.node for c in a.nodes)]
    assert out.budget.expansions == 1 + len(open_beams) and out.budget.sampled_rows == 3 * out.budget.expansions + sum(
        s.answered for s in out.finals)


def test_token_counts_are_exact(params):
  s = sampler(params)
  result = bfs(s, LogProbValue("mean"), EXAMPLES, PROMPTS, CFG, jax.random.key(4))
  total = 0
  for i, out in enumerate(result.outcomes):
    children = [n for n in result.nodes if n.problem == i and n.parent >= 0]
    new = [len(n.tokens) - len(result.nodes[n.parent].tokens) - (len(TOK.encode(CFG.answer_prefix)) if n.answered else 0)
           for n in children]
    assert out.budget.generated_tokens == sum(new)
    total += sum(new)
    for n, k in zip(children, new):  # every step stops at the newline, at EOS, or at its cap
      cap = CFG.answer_tokens if n.answered else CFG.step_tokens
      assert 1 <= k <= cap and (k == cap or n.tokens[-1] in (TOK.eos_id, TOK.encode("\n")[0]))
      assert TOK.decode(n.tokens) == n.text and len(n.logps) == len(n.tokens) == sum(n.step_lengths)
  assert total == sum(len(n.tokens) - len(result.nodes[n.parent].tokens) for n in result.nodes if n.parent >= 0) - sum(
      len(TOK.encode(CFG.answer_prefix)) for n in result.nodes if n.answered)


def test_sharded_over_8_devices_equals_one_device(params, reward_params):
  results, values = [], []
  for devices in (1, 8):
    value = prm_value(reward_params, devices)
    result = bfs(sampler(params, devices), value, EXAMPLES, PROMPTS, CFG, jax.random.key(5))
    results.append(summary(result))
    values.append([s.value for s in result.nodes])
    assert value.calls == CFG.depth and value.rows == 2 * 64  # one reward-model forward per depth
  assert results[0] == results[1]
  np.testing.assert_allclose(values[0], values[1], rtol=1e-5, atol=1e-6)
  for i, (_, _, budget) in enumerate(results[0]):  # reward-model tokens: [BOS] + prompt + steps per valued state
    assert budget.reward_model_tokens > 0 and budget.valued_states <= 3 + 6


def test_prm_valued_budget_counts_reward_model_tokens_exactly(params, reward_params):
  result = bfs(sampler(params), prm_value(reward_params), EXAMPLES, PROMPTS, CFG, jax.random.key(5))
  for i, out in enumerate(result.outcomes):
    valued = [n for n in result.nodes if n.problem == i and n.parent >= 0 and not n.answered and n.duplicate_of < 0]
    assert out.budget.valued_states == len(valued)
    assert out.budget.reward_model_tokens == sum(1 + len(PROMPTS[i]) + len(n.text) for n in valued)


def test_breadth_one_with_one_greedy_sample_is_greedy_decoding(params):
  cfg = SearchConfig(depth=2, breadth=1, samples=1, step_tokens=5, answer_tokens=6, temperature=0.0)
  result = bfs(sampler(params), LogProbValue("sum"), EXAMPLES, PROMPTS, cfg, jax.random.key(6))
  tokens_BxP, lengths_B = sampling.left_pad([TOK.encode(p, add_bos=True) for p in PROMPTS], TOK.pad_id, multiple=64)
  out = sampling.sample(MODEL, params, tokens_BxP, lengths_B, jax.random.key(0),
                        cfg=sampling.SamplingConfig(max_new_tokens=16), eos_id=TOK.eos_id, pad_id=TOK.pad_id)
  for row, o in enumerate(result.outcomes):
    k = o.budget.generated_tokens
    assert o.best.tokens == tuple(int(t) for t in np.asarray(out.tokens_BxN)[row, :k])


def test_dfs_runs_batched_on_the_policy(params):
  s = sampler(params)
  cfg = SearchConfig(method="dfs", depth=2, samples=3, step_tokens=5, answer_tokens=8, answer_temperature=1.0,
                     threshold=-1e9, max_expansions=5)
  result = dfs(s, LogProbValue("mean"), EXAMPLES, PROMPTS, cfg, jax.random.key(7))
  # nothing is pruned: each problem goes straight down its best child (2 expansions, or fewer where the best child
  # ended with EOS), all problems in the same rounds; then one call answers them all
  expansions = [o.budget.expansions for o in result.outcomes]
  assert s.calls == result.sampler_calls == max(expansions) + 1 and result.value_calls == max(expansions)
  for o in result.outcomes:
    assert o.reached_depth and o.budget.expansions == o.best.depth and (o.best.answered or o.best.finished)
    assert o.best.depth == cfg.depth or o.best.finished
    node = o.best if not o.best.answered else result.nodes[o.best.parent]
    while node.parent >= 0:  # each state on the path is the best-valued of its siblings
      siblings = [c for c in result.nodes if c.parent == node.parent and c.duplicate_of < 0]
      assert node.value == max(c.value for c in siblings)
      node = result.nodes[node.parent]


def test_prefix_bucket_hand_computed():
  assert [prefix_bucket(c, 16) for c in (1, 16, 17, 100, 112, 113, 130, 300, 1000)] == [
      16, 16, 32, 112, 112, 128, 160, 320, 1024]
  sizes = sorted({prefix_bucket(c, 16) for c in range(1, 2049)})
  assert len(sizes) == 24 and all(b >= c and (b - c) / c <= 0.25 for c in range(113, 2049) for b in [prefix_bucket(c, 16)])
  with pytest.raises(ValueError, match="count=0"):
    prefix_bucket(0, 16)
