"""Monte-Carlo step labels from the policy (`prm.sample_rollouts` as the `rollout_outcomes` completer): each
step prefix prefilled once and its N rollouts decoded over the shared prefix (`sampling.sample_grouped`) gives
the texts and outcomes of the independent-row sampler on the prefixes repeated N times, with the same rng:
`sample_rollouts(grouped=False)` and `evaluate.generate_texts` (the path the PRM study used before)."""

import jax
import numpy as np
import pytest

from star_jax import evaluate, models, sampling, sharding
from star_jax.data import CharTokenizer
from star_jax.models import ModelConfig
from star_jax.prm import steps as prm

MODEL = ModelConfig(vocab_size=CharTokenizer().vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
N = 4  # rollouts per step prefix
PROMPTS = ["Count to 3:\n", "Count to 5:\n", "Count to 12:\n"]
SOLUTIONS = ["1\n2\n3\nso 3\n", "1\n2\n", "1\n2\n3\n4\n5\n6\n"]
CFG = sampling.SamplingConfig(max_new_tokens=12, temperature=1.0)


@pytest.fixture(scope="module")
def setup():
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 1), ("tensor", 1)])  # the 8 test devices
  params = jax.jit(models.init_params, static_argnums=0)(MODEL, jax.random.key(0))
  return mesh, params, CharTokenizer()


def test_grouped_rollouts_equal_the_repeated_prompts(setup):
  mesh, params, tok = setup
  contexts = [p + pre for p, s in zip(PROMPTS, SOLUTIONS) for pre in prm.step_prefixes(s, prm.split_steps(s))]
  assert len(contexts) == 4 + 2 + 6
  rng = jax.random.key(3)
  # 32 rows per call: 8 contexts x 4 rollouts (a multiple of the 8 devices); 12 contexts -> 2 calls, the second padded
  kwargs = dict(mesh=mesh, sampling_config=CFG, batch_size=32, rng=rng)
  grouped = prm.sample_rollouts(MODEL, params, tok, contexts, N, **kwargs)
  repeated = prm.sample_rollouts(MODEL, params, tok, contexts, N, grouped=False, **kwargs)
  flat = evaluate.generate_texts(MODEL, params, tok, [c for c in contexts for _ in range(N)], **kwargs)
  assert len(grouped) == len(contexts) * N
  assert grouped == repeated == flat
  assert len(set(grouped[:N])) > 1  # a context's rollouts differ (T = 1)
  capped = prm.sample_rollouts(MODEL, params, tok, contexts, N, max_new_tokens=3, **kwargs)
  assert all(len(tok.encode(t)) <= 3 for t in capped) and capped != grouped


def test_rollout_outcomes_grouped_equal_independent(setup):
  mesh, params, tok = setup
  prefixes = [prm.step_prefixes(s, prm.split_steps(s)) for s in SOLUTIONS]
  verify = [lambda text: "7" in text or "so" in text] * len(PROMPTS)  # any verifier: outcomes depend on the texts

  def completer(grouped):
    return lambda contexts, n, key: prm.sample_rollouts(MODEL, params, tok, contexts, n, mesh=mesh, sampling_config=CFG,
                                                        batch_size=32, rng=key, grouped=grouped)

  rng = jax.random.key(11)
  grouped = prm.rollout_outcomes(PROMPTS, prefixes, verify, completer(True), N, rng)
  independent = prm.rollout_outcomes(PROMPTS, prefixes, verify, completer(False), N, rng)
  assert [o.shape for o in grouped] == [(4, N), (2, N), (6, N)]
  for a, b in zip(grouped, independent):
    np.testing.assert_array_equal(a, b)
  every = np.concatenate([o.ravel() for o in grouped])
  assert every.any() and not every.all()  # the comparison sees both outcomes


def test_rollout_outcomes_checks_the_completer():
  with pytest.raises(ValueError, match="complete returned 1 texts for 1 contexts x 2 rollouts"):
    prm.rollout_outcomes(["P"], [["a\n"]], [lambda t: True], lambda contexts, n, key: ["x"], 2, jax.random.key(0))
