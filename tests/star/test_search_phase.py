"""star/search_phase.py: which final state a searched question keeps, the held-out step depth, and a killed
search phase resuming to the records of an uninterrupted one (a real, tiny, random policy: nothing trained)."""

import os

import jax
import numpy as np
import pytest

from star_jax import io, models, sharding
from star_jax.data import CharTokenizer, game24
from star_jax.models import ModelConfig
from star_jax.search import Budget, ModelStepSampler, Outcome, SearchConfig, State, oracle_for
from star_jax.star import search_phase

TOK = CharTokenizer()
TASK = game24.Game24Task()
PUZZLE = game24.puzzle_example((4, 9, 10, 13))
SOLVED = game24.solution_outputs((4, 9, 10, 13))[0] + "\n"
WRONG = "13 - 10 = 3 (left: 3 4 9)\n9 - 3 = 7 (left: 4 7)\n4 * 7 = 28 (left: 28)\nAnswer: 4 * (9 - 13 + 10) + 4 = 28\n"


def _outcome(*texts):
  finals = [State(problem=0, node=i, parent=-1, text=t, value=1.0 - 0.1 * i, answered=True) for i, t in enumerate(texts)]
  return Outcome(finals, Budget(generated_tokens=123, reward_model_tokens=45, sampler_calls=4), True)


def test_outcome_record_keeps_the_best_valued_correct_final_state():
  record = search_phase.outcome_record(TASK, PUZZLE, _outcome(WRONG, SOLVED, SOLVED.replace("\n", "\n", 1)))
  assert record["correct"] and record["source"] == "searched"
  assert record["target"] == SOLVED and record["prompt"] == TASK.prompt(PUZZLE)  # plain prompt, no search trace
  assert (record["generated_tokens"], record["reward_model_tokens"], record["sampler_calls"]) == (123, 45, 4)
  assert record["puzzle"] == "4 9 10 13"


def test_outcome_record_without_a_correct_final_is_the_best_valued_failure():
  record = search_phase.outcome_record(TASK, PUZZLE, _outcome(WRONG, WRONG.replace("28", "27")))
  assert not record["correct"] and record["target"] == WRONG


def test_steps_solved_is_the_good_prefix_by_depth():
  assert search_phase.steps_solved(TASK, PUZZLE, SOLVED, 3) == [True, True, True]
  # 13 - 10 = 3 is good; 9 - 3 = 7 is wrong: solved to depth 1 only, whatever follows
  assert search_phase.steps_solved(TASK, PUZZLE, WRONG, 3) == [True, False, False]
  assert search_phase.steps_solved(TASK, PUZZLE, "13 - 10 = 3 (left: 3 4 9)\n", 3) == [True, False, False]
  assert search_phase.steps_solved(TASK, PUZZLE, "", 3) == [False, False, False]


MODEL = ModelConfig(vocab_size=TOK.vocab_size, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64)
CFG = SearchConfig(depth=2, breadth=2, samples=2, step_tokens=8, answer_tokens=8, temperature=1.0, answer_temperature=1.0)
EXAMPLES = [game24.puzzle_example(p) for p in game24.split()[0][:5]]


class _Killed(Exception):
  pass


class _KillAfter:
  """The oracle value, raising (a kill) on its `calls`-th call."""

  def __init__(self, calls):
    self.left, self.value = calls, oracle_for(TASK)

  def __call__(self, examples, states):
    self.left -= 1
    if self.left == 0:
      raise _Killed
    return self.value(examples, states)


@pytest.fixture(scope="module")
def policy():
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: (0.3 * rng.standard_normal(a.shape)).astype(a.dtype), models.abstract_params(MODEL))
  mesh = sharding.make_mesh([("data", 1), ("fsdp", 1), ("tensor", 1)], devices=jax.devices()[:1])
  return ModelStepSampler(MODEL, jax.device_put(params, sharding.replicated(mesh)), TOK, mesh, max_new_tokens=8)


def test_killed_search_phase_resumes_to_the_uninterrupted_records(policy, tmp_path):
  rng = jax.random.key(7)
  full = search_phase.search_records(TASK, EXAMPLES, policy, oracle_for(TASK), CFG, rng, str(tmp_path / "full"), 2)
  assert len(full) == len(EXAMPLES) and [r["puzzle"] for r in full] == [e.question for e in EXAMPLES]
  assert all(r["generated_tokens"] > 0 and r["source"] == "searched" for r in full)
  assert sorted(os.listdir(tmp_path / "full")) == ["chunk_00000.jsonl", "chunk_00001.jsonl", "chunk_00002.jsonl"]

  killed = str(tmp_path / "killed")
  with pytest.raises(_Killed):  # 2 value calls per chunk (depth 2): killed during chunk 1's second depth
    search_phase.search_records(TASK, EXAMPLES, policy, _KillAfter(4), CFG, rng, killed, 2)
  assert os.listdir(killed) == ["chunk_00000.jsonl"]
  resumed = search_phase.search_records(TASK, EXAMPLES, policy, oracle_for(TASK), CFG, rng, killed, 2)
  assert resumed == full
  for name in os.listdir(tmp_path / "full"):
    assert io.read_jsonl(os.path.join(killed, name)) == io.read_jsonl(str(tmp_path / "full" / name))
