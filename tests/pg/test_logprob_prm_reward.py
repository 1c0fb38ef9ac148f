"""The log-prob PRM as the PG process reward (issue #14 part 3): the saved head and PRM directory
(prm/logprob.py), rl.process_reward_model pointing at one (pg/rewards.py), and the pipeline of
experiments/pg_star_arithmetic/from_star/learned_prm.sh on tiny sizes: a STaR run's M_1 -> train_prm.py ->
a PG run with R = 1(ŷ = y) + w Σ_k P̂(step k good) / S and per-step credit."""

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.pg_star_arithmetic.from_star import train_prm
from star_jax import io, losses, models, sharding, star
from star_jax.data import CharTokenizer, arithmetic
from star_jax.data.tasks import ArithmeticTask
from star_jax.pg import loop as rl
from star_jax.pg import rewards
from star_jax.prm import logprob
from star_jax.prm import reward as prm_reward
from star_jax.star import loop as star_loop
from tests.pg.test_from_star import pg_cfg, star_cfg, true_targets

F = len(logprob.FEATURES)
SEED_STEPS = 200  # the tiny STaR run's base and iteration training: enough for the model to write scratchpad
#                   lines, some of them right, so that the exact step labels hold both classes


def test_head_save_load_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  x_NxF = rng.normal(size=(64, F))
  y_N = (x_NxF[:, 1] + 0.5 * rng.normal(size=64) > 0).astype(np.float32)
  head, _ = logprob.fit_logistic(x_NxF, y_N, steps=50)
  path = str(tmp_path / "head.json")
  logprob.save_head(path, head)
  loaded = logprob.load_head(path)
  for name in ("mean_F", "scale_F", "w_F"):
    np.testing.assert_array_equal(getattr(loaded, name), getattr(head, name))
  assert loaded.b == head.b and np.any(head.w_F != 0)
  np.testing.assert_array_equal(loaded.predict(x_NxF), head.predict(x_NxF))
  saved = io.read_json(path)
  io.write_json(path, {**saved, "features": saved["features"][::-1]})
  with pytest.raises(ValueError, match=r"head\.json: the head was fitted on features"):
    logprob.load_head(path)
  io.write_json(path, {**saved, "w_F": saved["w_F"][:-1]})
  with pytest.raises(ValueError, match=f"head arrays must have {F} entries"):
    logprob.load_head(path)


def _spec(tmp_path, params_directory):
  """A logprob_prm.json by hand (no model needed): the tiny PG config's model, a frozen model at params_directory."""
  cfg = pg_cfg(tmp_path / "data", tmp_path / "star")
  head = logprob.LogisticHead(np.zeros(F), np.ones(F), np.ones(F), 0.0)
  return cfg, {"format": logprob.SPEC_FORMAT, "features": list(logprob.FEATURES), "head": head.to_json(),
               "model": dataclasses.asdict(cfg.model), "train": dataclasses.asdict(cfg.train),
               "params": {"directory": str(params_directory), "keep": 2, "steps": 6, "checksum": 1.0}}


def test_a_bad_directory_errors_naming_the_missing_file(tmp_path):
  cfg, spec = _spec(tmp_path, tmp_path / "star" / "iter_1")
  mesh = sharding.make_mesh(cfg.mesh.axes)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty'?: neither logprob_prm\.json .* nor reward_model\.json"):
    rewards.check_prm_directory(str(empty))
  with pytest.raises(FileNotFoundError, match=r"empty/logprob_prm\.json not found"):
    logprob.load_logprob_prm(str(empty), mesh)
  rl_cfg = dataclasses.replace(cfg.rl, process_reward=1.0, process_reward_model=str(empty), credit="reward_to_go")
  for credit in ("reward_to_go", "sequence"):
    with pytest.raises(FileNotFoundError, match=r"neither logprob_prm\.json"):
      rewards.default_reward(dataclasses.replace(rl_cfg, credit=credit), ArithmeticTask(), mesh, CharTokenizer(), 129)
  prm_dir = tmp_path / "prm"
  io.write_json(str(prm_dir / logprob.SPEC_FILE), spec)  # the frozen model's directory does not exist
  assert rewards.check_prm_directory(str(prm_dir)) == "logprob"
  for credit in ("reward_to_go", "sequence"):
    with pytest.raises(FileNotFoundError, match=r"star/iter_1/train\.json not found"):
      rewards.default_reward(dataclasses.replace(rl_cfg, credit=credit, process_reward_model=str(prm_dir)),
                             ArithmeticTask(), mesh, CharTokenizer(), 129)
  io.write_json(str(prm_dir / logprob.SPEC_FILE), {**spec, "format": "something/0"})
  with pytest.raises(ValueError, match=r"format 'something/0', expected 'logprob_prm/1'"):
    logprob.load_logprob_prm(str(prm_dir), mesh)


# ---- the pipeline on tiny sizes ----

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A tiny STaR run (1 iteration), the log-prob PRM of its M_1 (train_prm.py) and a 2-step PG run from M_1 with
  the PRM's step scores as process reward and reward-to-go credit; the PG reward's outputs are captured."""
  root = tmp_path_factory.mktemp("logprob_prm")
  scfg = star_cfg(root / "data")
  scfg = dataclasses.replace(scfg, star=dataclasses.replace(scfg.star, seed_steps=SEED_STEPS, base_steps=SEED_STEPS))
  base = star.make_base_model(scfg, str(root / "star"))
  star.run(scfg, str(root / "star"), base, generator=true_targets)
  prm_dir = str(root / "learned_prm_model")
  prm_cfg = pg_cfg(root / "data", root / "star")
  report = train_prm.train_prm(prm_cfg, prm_dir, questions_per_length=8, samples=4, validation_every=4, head_steps=200)
  cfg = pg_cfg(root / "data", root / "star", steps=2, process_reward=1.0, process_reward_model=prm_dir,
               credit="reward_to_go")
  scored = []
  original = rewards.default_reward

  def spy(*args, **kwargs):
    fn = original(*args, **kwargs)

    def reward(examples, texts):
      out = fn(examples, texts)
      scored.append((list(examples), list(texts), out))
      return out
    return reward

  with pytest.MonkeyPatch.context() as m:
    m.setattr(rewards, "default_reward", spy)
    records = rl.run(cfg, str(root / "learned_prm_reward_to_go"))
  return {"root": root, "star_cfg": scfg, "cfg": cfg, "prm_dir": prm_dir, "report": report, "records": records,
          "scored": scored, "m1": star_loop.load_iteration_params(scfg, str(root / "star"), 1)}


@pytest.mark.e2e
def test_train_prm_writes_a_complete_prm_directory(runs):
  prm_dir, report = runs["prm_dir"], runs["report"]
  assert sorted(os.listdir(prm_dir)) == sorted([logprob.SPEC_FILE, train_prm.REPORT_FILE, train_prm.SAMPLES_FILE])
  assert not os.path.exists(prm_dir + ".tmp")
  spec = io.read_json(os.path.join(prm_dir, logprob.SPEC_FILE))
  assert spec["params"]["directory"] == str(runs["root"] / "star" / "iter_1")
  assert spec["fitted_on"]["settings"] == report["settings"] and io.read_json(os.path.join(prm_dir, "report.json")) == report
  assert report["questions"] == {"fit": {"1": 6, "2": 6}, "validation": {"1": 2, "2": 2}}
  samples = io.read_jsonl(os.path.join(prm_dir, train_prm.SAMPLES_FILE))
  assert len(samples) == 4 * 16 and {r["split"] for r in samples} == {"fit", "validation"}
  fit = report["samples"]["fit"]["all"]
  assert fit["samples"] == 48 and 0 < fit["good_steps"] < 1, "the tiny M_1's labels need both classes (SEED_STEPS)"
  for name in ("logprob_head", "min_logprob"):
    v = report["verifiers"][name]
    assert 0 <= v["fit_step_auc"] <= 1
    assert {"step_auc", "solution_auc", "text_ranked_first", "best_of_n"} <= set(v["validation"])
  # a re-run with the same settings returns the saved report; other settings are refused
  cfg = pg_cfg(runs["root"] / "data", runs["root"] / "star")
  assert train_prm.train_prm(cfg, prm_dir, questions_per_length=8, samples=4, validation_every=4, head_steps=200) == report
  with pytest.raises(ValueError, match=r"fitted with other settings \(samples: \{'samples': 4\} -> \{'samples': 2\}"):
    train_prm.train_prm(cfg, prm_dir, questions_per_length=8, samples=2, validation_every=4, head_steps=200)


def _direct_step_probs(model_config, params, head, example):
  """P̂(step k good) computed here: one unbatched forward, log-softmax at the targets, argmax, step_features, head."""
  logits_1xTxV = models.forward(model_config, params, jnp.asarray(example["inputs"])[None],
                                segment_ids_BxT=jnp.ones((1, len(example["inputs"])), jnp.int32),
                                positions_BxT=jnp.arange(len(example["inputs"]))[None])
  logps_T = np.asarray(losses.token_logprobs(logits_1xTxV, jnp.asarray(example["targets"])[None])[0])
  argmax_T = np.asarray(jnp.argmax(logits_1xTxV[0], axis=-1)) == example["targets"]
  features_SxF = logprob.step_features(logps_T, argmax_T, example["loss_mask"], example["step_mask"])
  return head.predict(features_SxF) if len(features_SxF) else np.zeros(0, np.float32)


@pytest.mark.e2e
def test_learned_step_scores_are_the_head_on_the_frozen_models_step_features(runs):
  cfg, prm_dir = runs["cfg"], runs["prm_dir"]
  mesh = sharding.make_mesh(cfg.mesh.axes)
  prm = logprob.load_logprob_prm(prm_dir, mesh)
  m1 = sharding.to_host(runs["m1"])
  jax.tree.map(np.testing.assert_array_equal, sharding.to_host(prm.params), m1)  # the frozen model is M_1
  task, tok, w = ArithmeticTask(), CharTokenizer(), cfg.rl.process_reward
  samples = io.read_jsonl(os.path.join(prm_dir, train_prm.SAMPLES_FILE))[:5]
  q = arithmetic.Problem(52, 79)
  examples = [task.example(arithmetic.Problem(r["a"], r["b"])) for r in samples] + [task.example(q)] * 2
  texts = [r["target"] for r in samples] + [arithmetic.target_text(q), "no scratchpad"]
  got = rewards.default_reward(cfg.rl, task, mesh, tok, cfg.train.seq_len + 1)(examples, texts)
  for e, t, s in zip(examples, texts, got):
    p = _direct_step_probs(cfg.model, m1, prm.head, prm_reward.scoring_example(tok, task, e, t))
    big_s = task.expected_steps(e)
    assert len(s.step_rewards) == len(p) == len(task.steps(t)) and s.outcome == float(task.is_correct(e, t))
    np.testing.assert_allclose(s.step_rewards, [w * pk / big_s if k < big_s else 0.0 for k, pk in enumerate(p)],
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(s.total, s.outcome + w * float(np.sum(p[:big_s])) / big_s, rtol=1e-5)
  assert got[-1].step_rewards == () and got[-2].outcome == 1.0
  sequence = rewards.default_reward(dataclasses.replace(cfg.rl, credit="sequence"), task, mesh, tok,
                                    cfg.train.seq_len + 1)(examples, texts)  # rl.credit = sequence: the totals
  np.testing.assert_allclose(sequence, [s.total for s in got], rtol=1e-6)
  # a frozen model that is not the one the head was fitted on is refused
  moved = str(runs["root"] / "changed_prm")
  shutil.copytree(prm_dir, moved)
  spec = io.read_json(os.path.join(moved, logprob.SPEC_FILE))
  io.write_json(os.path.join(moved, logprob.SPEC_FILE),
                {**spec, "params": {**spec["params"], "checksum": spec["params"]["checksum"] * 1.01}})
  with pytest.raises(ValueError, match="are not the ones the head was fitted on"):
    logprob.load_logprob_prm(moved, mesh)


@pytest.mark.e2e
def test_pg_runs_on_the_logprob_prm_reward_with_non_constant_step_rewards(runs):
  cfg, w = runs["cfg"], runs["cfg"].rl.process_reward
  assert [r["step"] for r in runs["records"]] == [0, 2]
  metrics = io.read_jsonl(str(runs["root"] / "learned_prm_reward_to_go" / "rl_metrics.jsonl"))
  assert [m["step"] for m in metrics] == [1, 2]
  assert all(np.isfinite(m["loss"]) and 0.0 <= m["reward"] <= 1 + w and m["advantage_abs"] > 0 for m in metrics)
  assert len(runs["scored"]) == 2  # one reward call per update (the loop's KL evaluation samples, it does not score)
  task, first_s = ArithmeticTask(), []
  for examples, texts, out in runs["scored"]:
    assert len(out) == cfg.rl.batch_size and all(isinstance(s, rewards.StepScores) for s in out)
    for e, s in zip(examples, out):
      first_s += [r * task.expected_steps(e) / w for r in s.step_rewards[:task.expected_steps(e)]]  # P̂(step k good)
  assert len(first_s) > 10 and all(0 <= p <= 1 for p in first_s)
  assert np.ptp(first_s) > 1e-3  # the PRM scores steps differently: a dense, non-constant process reward
  for (_, _, out), m in zip(runs["scored"], metrics):
    np.testing.assert_allclose(m["reward"], np.mean([s.total for s in out]), rtol=1e-5)
  assert io.read_json(str(runs["root"] / "learned_prm_reward_to_go" / rl.CONFIG_FILE))["rl"]["process_reward_model"] \
      == runs["prm_dir"]
