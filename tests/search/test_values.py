"""State evaluators: the exact oracle (an upper bound), the policy's log-prob and a PRM, by hand."""

import math
import os

import numpy as np
import pytest

from star_jax.data import CharTokenizer
from star_jax.models import HeadConfig
from star_jax.prm import train as prm_train
from star_jax.search import LogProbValue, OracleValue, PRMValue, State, ValueConfig, make_value, task_oracle
from star_jax.search.values import oracle_for
from tests import toy_task
from tests.search.test_policy import MODEL, SEQ_LEN, mesh, random_params

TOK = CharTokenizer()
TASK = toy_task.CountTask()
THREE = toy_task.example(3)


def state(text, logps=(), step_lengths=()):
  return State(problem=0, node=0, parent=-1, tokens=tuple(TOK.encode(text)), logps=tuple(logps),
               step_lengths=tuple(step_lengths), text=text)


def test_task_oracle_is_one_iff_every_step_so_far_is_correct():
  oracle = oracle_for(TASK)
  texts = ["1\n", "1\n2\n", "1\n3\n", "2\n", "", "1\n2\n3\nso 3\n", "1\n2\n3\nso 4\n"]
  values = oracle([THREE] * len(texts), [state(t) for t in texts])
  assert values.values.tolist() == [1, 1, 0, 0, 0, 1, 0] and values.model_tokens.tolist() == [0] * len(texts)
  with pytest.raises(ValueError, match="no exact step checks"):
    task_oracle(_NoChecks())


class _NoChecks(toy_task.CountTask):
  has_step_checks = False


def test_oracle_value_wraps_any_checker():
  oracle = OracleValue(lambda example, text: text.count("\n") == int(example.question))
  assert oracle([THREE, THREE], [state("a\nb\nc\n"), state("a\n")]).values.tolist() == [1.0, 0.0]


def test_logprob_aggregations_by_hand():
  s = state("ab\nc", logps=(-1.0, -2.0, -0.5, -3.0), step_lengths=(3, 1))
  got = {a: LogProbValue(a)([THREE], [s]).values[0] for a in ("sum", "mean", "min", "last")}
  assert got == pytest.approx({"sum": -6.5, "mean": -6.5 / 4, "min": -3.0, "last": -3.0})
  assert LogProbValue("sum")([THREE], [state("")]).values.tolist() == [0.0]
  with pytest.raises(ValueError, match="aggregation must be one of"):
    LogProbValue("max")


def prm_value(**kw):
  rng = np.random.default_rng(2)
  params = {"trunk": random_params(1), "prm": {"w_DxC": rng.standard_normal((MODEL.d_model, 1)).astype(np.float32),
                                               "b_C": np.zeros((1,), np.float32)}}
  return PRMValue(MODEL, params, TOK, TASK, mesh(1), seq_len=SEQ_LEN, **kw)


def test_prm_value_aggregates_the_step_scores_of_one_forward_for_all_states():
  texts = ["1\n", "1\n2\n", "1\n3\n", "7\n8\n9\n", "x"] * 8  # 40 states: one forward of 64 rows
  states, examples = [state(t) for t in texts], [THREE] * len(texts)
  values = {a: prm_value(aggregation=a) for a in ("product", "min", "last")}
  got = {a: v(examples, states) for a, v in values.items()}
  assert all(v.calls == 1 and v.rows == 64 for v in values.values())
  # by hand from the per-step P(good) (a state scored alone gets the same scores: padding rows do not leak)
  alone = [prm_train.score_examples(MODEL, values["min"].params, [values["min"].inputs(THREE, s)], mesh=mesh(1),
                                    batch_size=64, seq_len=SEQ_LEN)[0][0] for s in states[:5]]
  assert [len(p) for p in alone] == [1, 2, 2, 3, 1]
  for i, probs in enumerate(alone):
    assert got["product"].values[i] == pytest.approx(math.prod(probs), rel=1e-5)
    assert got["min"].values[i] == pytest.approx(min(probs), rel=1e-5)
    assert got["last"].values[i] == pytest.approx(probs[-1], rel=1e-5)
  # reward-model tokens: [BOS] + prompt + steps (character tokens)
  assert got["min"].model_tokens.tolist() == [1 + len(TASK.prompt(THREE)) + len(t) for t in texts]


def test_prm_value_names_a_state_that_does_not_fit():
  with pytest.raises(ValueError, match="value.seq_len=64"):
    prm_value()([THREE], [state("1\n" * 40)])


def test_make_value_and_config_validation(tmp_path, monkeypatch):
  assert isinstance(make_value(ValueConfig(kind="oracle"), task=TASK), OracleValue)
  assert make_value(ValueConfig(kind="logprob", aggregation="min"), task=TASK).aggregation == "min"
  with pytest.raises(ValueError, match="needs value.reward_model_dir"):
    make_value(ValueConfig(kind="prm"), task=TASK)
  assert (ValueConfig().aggregation, ValueConfig(kind="logprob").aggregation) == ("product", "sum")  # the defaults
  with pytest.raises(ValueError, match="value.kind must be one of"):
    ValueConfig(kind="rollouts")
  with pytest.raises(ValueError, match="aggregation for kind 'logprob'"):
    ValueConfig(kind="logprob", aggregation="product")
  # kind "prm" loads the directory's reward model (prm.train.load_reward_model, tested in tests/prm) onto the mesh
  built = prm_value()
  heads = {"with": HeadConfig(prm_classes=1), "without": HeadConfig(prm_classes=0, orm=True)}
  monkeypatch.setattr(prm_train, "load_reward_model", lambda d, m: (MODEL, heads[os.path.basename(d)], built.params))
  loaded = make_value(ValueConfig(kind="prm", aggregation="min", reward_model_dir=str(tmp_path / "with"),
                                  seq_len=SEQ_LEN), task=TASK, tokenizer=TOK, mesh=mesh(1))
  assert (loaded.aggregation, loaded.seq_len, loaded.params) == ("min", SEQ_LEN, built.params)
  with pytest.raises(ValueError, match="no process head"):
    make_value(ValueConfig(kind="prm", reward_model_dir=str(tmp_path / "without")), task=TASK, tokenizer=TOK,
               mesh=mesh(1))
