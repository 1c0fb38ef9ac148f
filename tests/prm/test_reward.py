"""Dense process rewards: the return formula by hand, reward-model directories (save -> load is exact, bad
directories are named), a learned PRM's reward by hand, and the RL loop running on it from its config."""

import math
import os

import jax
import numpy as np
import pytest

from experiments.configs import pg_star_arithmetic
from star_jax import checkpoint, io, models, sharding, train
from star_jax.data import CharTokenizer, arithmetic
from star_jax.data.tasks import ArithmeticTask
from star_jax.models import HeadConfig
from star_jax.pg import config as rl_config
from star_jax.pg import loop as rl
from star_jax.pg import rewards
from star_jax.prm import reward as prm_reward
from star_jax.prm import steps as prm
from star_jax.prm import train as prm_train

P = arithmetic.Problem(152, 702)  # S = 3 digits + 4 = 7 steps
RIGHT = "<scratch>\n1 5 2 + 7 0 2 , C: 0\n5 + 0 , 4 C: 0\n1 + 7 , 5 4 C: 0\n, 8 5 4 C: 0\n0 8 5 4\n</scratch>\n8 5 4\n"


def test_dense_return_hand_computed():
  assert prm_reward.dense_return(1.0, [1.0, 1.0, 0.5], 4, 2.0) == pytest.approx(1 + 2 * 2.5 / 4)
  assert prm_reward.dense_return(0.0, [1.0] * 9, 7, 0.5) == pytest.approx(0.5)  # at most S steps count
  assert prm_reward.dense_return(1.0, [], 7, 0.5) == 1.0
  with pytest.raises(ValueError, match="expected_steps must be > 0"):
    prm_reward.dense_return(1.0, [1.0], 0, 1.0)
  # the exact-verifier reward of the RL loop is this return over the exact step labels
  wrong = RIGHT.replace("5 + 0 , 4 C: 0", "5 + 0 , 3 C: 0")
  assert rewards.step_rewarded(ArithmeticTask(), 0.5)(ArithmeticTask().example(P), wrong) == pytest.approx(
      prm_reward.dense_return(1.0, prm.arithmetic_step_labels(P, wrong), 7, 0.5)) == pytest.approx(1 + 0.5 / 7)


def _rl_config(tmp_path, **rl_overrides):
  c = pg_star_arithmetic.get_config("tiny")
  c.data.data_dir = str(tmp_path / "data")
  for k, v in rl_overrides.items():
    c.rl[k] = v
  return rl_config.rl_experiment_from_config(c)


def _save_reward_model(directory, cfg, mesh, head_bias: float | None = None):
  """A tiny PRM on `mesh`, heads random (or zero weights and a constant bias), saved like prm_experiment does."""
  head = HeadConfig(prm_classes=1)
  tx = train.make_optimizer(cfg.train)
  state = prm_train.create_reward_state(cfg.model, head, tx, mesh, seed=3)
  w = jax.random.normal(jax.random.key(1), state.params["prm"]["w_DxC"].shape)
  b = jax.numpy.full_like(state.params["prm"]["b_C"], 0.3 if head_bias is None else head_bias)
  params = dict(state.params, prm={"w_DxC": w if head_bias is None else 0 * w, "b_C": b})
  state = state.replace(params=jax.device_put(params, jax.tree.map(lambda x: x.sharding, state.params)))
  with checkpoint.Checkpointer(os.path.join(directory, "checkpoints")) as ckpt:
    ckpt.save(7, state, data_state={})
  prm_train.save_spec(directory, cfg.model, head, cfg.train)
  return params


def test_reward_model_directory_round_trip(tmp_path):
  cfg = _rl_config(tmp_path)
  mesh = sharding.make_mesh(cfg.mesh.axes)
  with pytest.raises(FileNotFoundError, match=r"reward_model\.json not found"):
    prm_train.load_reward_model(str(tmp_path / "nothing"), mesh)
  saved = _save_reward_model(str(tmp_path / "prm"), cfg, mesh)
  model_config, head_config, params = prm_train.load_reward_model(str(tmp_path / "prm"), mesh)
  assert model_config == cfg.model and head_config == HeadConfig(prm_classes=1)
  jax.tree.map(np.testing.assert_array_equal, sharding.to_host(params), sharding.to_host(saved))
  spec = io.read_json(str(tmp_path / "prm" / prm_train.SPEC_FILE))
  spec["head"]["prm_clases"] = 1
  io.write_json(str(tmp_path / "prm" / prm_train.SPEC_FILE), spec)
  with pytest.raises(ValueError, match=r"reward_model\.json:head\.prm_clases"):
    prm_train.load_reward_model(str(tmp_path / "prm"), mesh)


@pytest.mark.e2e
def test_learned_step_reward_by_hand_and_in_the_loop(tmp_path):
  """A PRM whose step head is a constant P(good) = p: R = 1(ŷ = y) + w · min(m, S) · p / S by hand, chosen by
  the RL config (rl.process_reward_model), and the loop runs on it."""
  p, w = 0.8, 0.5
  with pytest.raises(ValueError, match="config.rl.process_reward_model needs rl.process_reward > 0"):
    _rl_config(tmp_path, process_reward_model="/somewhere")
  cfg = _rl_config(tmp_path, process_reward=w, process_reward_model=str(tmp_path / "prm"), steps=2)
  mesh = sharding.make_mesh(cfg.mesh.axes)
  _save_reward_model(str(tmp_path / "prm"), cfg, mesh, head_bias=math.log(p / (1 - p)))
  task = ArithmeticTask()
  reward = rewards.default_reward(cfg.rl, task, mesh, CharTokenizer(), cfg.train.seq_len + 1)
  q = arithmetic.Problem(52, 79)  # S = 2 digits + 4 = 6 steps; fits the tiny config's 128-token rows
  right = arithmetic.target_text(q)
  extra_lines = right.replace("</scratch>\n1 3 1", "9 9\n9 9\n</scratch>\n1 3 2")  # 8 steps, wrong answer
  first_three = "\n".join(right.split("\n")[:4])  # "<scratch>" and 3 steps
  assert right.endswith("</scratch>\n1 3 1\n") and len(prm.split_steps(first_three, start_after="<scratch>")) == 3
  got = reward([task.example(q)] * 4, [right, extra_lines, first_three, "no scratchpad"])
  np.testing.assert_allclose(got, [1 + w * p, w * p, w * 3 * p / 6, 0.0], rtol=1e-5)
  records = rl.run(cfg, str(tmp_path / "run"), jax.jit(models.init_params, static_argnums=0)(cfg.model, jax.random.key(0)))
  assert [r["step"] for r in records] == [0, 2]
  metrics = io.read_jsonl(str(tmp_path / "run" / "rl_metrics.jsonl"))
  assert [m["step"] for m in metrics] == [1, 2]
  assert all(0.0 <= m["reward"] <= 1 + w and np.isfinite(m["loss"]) for m in metrics)
