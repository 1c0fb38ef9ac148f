"""The policy-gradient step (manual composition of the pure loss, 8 devices == 1 device, reference only when
β > 0) and the online loop (files, records, a crashed run that resumes to the uninterrupted result)."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import pg_star_arithmetic
from star_jax import checkpoint, io, models, sampling, sharding, train
from star_jax.config import TrainConfig
from star_jax.data import CharTokenizer, arithmetic
from star_jax.data.tasks import ArithmeticTask
from star_jax.pg import advantages, kl, objectives, rewards
from star_jax.pg import config as rl_config
from star_jax.pg import loop as rl
from star_jax.pg import step as pg_step
from star_jax.star import tasks as star_tasks
from tests import toy_task

# ---- config ----


def test_config_errors_name_the_key():
  def check(key, value, match):
    c = pg_star_arithmetic.get_config("tiny")
    c.rl[key] = value
    with pytest.raises(ValueError, match=match):
      rl_config.rl_experiment_from_config(c)
  check("advantage", "ppo", r"config.rl.advantage must be one of \['batch_mean', 'group_mean', 'grpo', 'none'")
  check("kl_coef", -0.1, "config.rl.kl_coef must be >= 0, got -0.1")
  check("kl_estimator", "k4", "config.rl.kl_estimator must be one of")
  check("kl_mode", "both", "config.rl.kl_mode must be one of")
  check("normalisation", "mean", "config.rl.normalisation must be one of")
  check("kl_target", 1.0, r"config.rl.kl_target needs rl.kl_coef > 0")
  check("minibatches", 3, r"config.rl.minibatches must divide .* = 16")
  check("temperature", 0.0, "config.rl.temperature must be > 0")
  check("process_reward", -1.0, "config.rl.process_reward must be >= 0, got -1.0")
  d = pg_star_arithmetic.get_config("tiny").to_dict()
  d["rl"]["ppo_epochs"] = 1.5
  with pytest.raises(ValueError, match="config.rl.ppo_epochs must be an int, got 1.5"):
    rl_config.rl_experiment_from_config(d)
  cfg = rl_config.rl_experiment_from_config(pg_star_arithmetic.get_config("tiny"))
  with pytest.raises(ValueError, match="config.kind must be 'pg'"):
    dataclasses.replace(cfg, kind="star")
  c = pg_star_arithmetic.get_config("tiny")
  c.rl.kl_beta = 0.1
  with pytest.raises(ValueError, match="unknown config key.*config.rl.kl_beta"):
    rl_config.rl_experiment_from_config(c)
  for arg in ("", "demo", "tiny"):
    cfg = rl_config.rl_experiment_from_config(pg_star_arithmetic.get_config(arg))
    assert cfg.rl.batch_size == cfg.rl.questions_per_step * cfg.rl.samples_per_question
  for name, overrides in pg_star_arithmetic.SWEEPS.items():
    for override in overrides:
      c = pg_star_arithmetic.get_config()
      for key, value in override.items():
        c.rl[key.removeprefix("rl.")] = value
      rl_config.rl_experiment_from_config(c)  # every sweep point validates


def test_questions_for_step_walk_through_d_epoch_by_epoch():
  steps = [rl.questions_for_step(10, 4, seed=3, step=s) for s in range(1, 6)]
  flat = np.concatenate(steps)
  assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
  assert not np.array_equal(flat[:10], flat[10:20])  # a fresh permutation per epoch
  np.testing.assert_array_equal(rl.questions_for_step(10, 4, seed=3, step=4), steps[3])


def test_build_batch_layout():
  batch = rl.build_batch([[1, 5, 6], [1, 5]], np.asarray([[7, 8, 2], [0, 0, 0]]), np.asarray([3, 0]),
                         np.asarray([[-0.1, -0.2, -0.3], [0, 0, 0]]), np.asarray([1.0, 0.0]), seq_len=8)
  np.testing.assert_array_equal(batch["inputs_BxT"][0], [1, 5, 6, 7, 8, 0, 0, 0])
  np.testing.assert_array_equal(batch["targets_BxT"][0], [5, 6, 7, 8, 2, 0, 0, 0])
  np.testing.assert_array_equal(batch["loss_mask_BxT"][0], [0, 0, 1, 1, 1, 0, 0, 0])  # targets 7, 8, EOS
  np.testing.assert_allclose(batch["old_logps_BxT"][0], [0, 0, -0.1, -0.2, -0.3, 0, 0, 0])
  np.testing.assert_array_equal(batch["segment_ids_BxT"][0], [1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(batch["positions_BxT"][0], [0, 1, 2, 3, 4, 0, 0, 0])
  assert batch["loss_mask_BxT"][1].sum() == 0 and batch["inputs_BxT"][1, 0] == 1  # zero-length response
  with pytest.raises(ValueError, match="exceed train.seq_len=4"):
    rl.build_batch([[1, 5, 6]], np.asarray([[7, 8, 2]]), np.asarray([3]), np.zeros((1, 3)), np.ones(1), seq_len=4)


# ---- the update step ----

MODEL = models.ModelConfig(vocab_size=100, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2)
TRAIN = TrainConfig()
RL = rl_config.RLConfig(questions_per_step=4, samples_per_question=4, advantage="rloo", ppo_epochs=2, minibatches=2,
                        clip_eps=0.1, kl_coef=0.2, kl_estimator="k3", kl_target=0.05, kl_horizon=100,
                        normalisation="token_mean", temperature=0.8)
LR = 0.05
MESHES = {"1 device": (("data", 1), ("fsdp", 1), ("tensor", 1)),
          "data=2,fsdp=2,tensor=2": (("data", 2), ("fsdp", 2), ("tensor", 2))}


_response_logps = jax.jit(pg_step.response_logps, static_argnums=(0, 3))


def make_step_batch(params, seed=0, b=16, t=24):
  """Random prompts and responses; old log-probs = the policy's own (at RL.temperature) + noise."""
  rng = np.random.default_rng(seed)
  prompts = [[1] + list(rng.integers(4, 100, rng.integers(2, 6))) for _ in range(b)]
  lengths = rng.integers(0, 12, b)
  lengths[3] = 0  # a zero-length response
  tokens = rng.integers(4, 100, (b, 12))
  batch = rl.build_batch(prompts, tokens, lengths, np.zeros((b, 12)), rng.integers(0, 2, b), seq_len=t)
  logps = _response_logps(MODEL, params, batch, RL.temperature)[0]
  batch["old_logps_BxT"] = (np.asarray(logps) + rng.normal(0, 0.2, (b, t)) * batch["loss_mask_BxT"]).astype(np.float32)
  return batch


def init_params(model_config, seed):
  return jax.jit(models.init_params, static_argnums=0)(model_config, jax.random.key(seed))


@pytest.fixture(scope="module")
def step_setup():
  params, ref = init_params(MODEL, 0), init_params(MODEL, 1)
  return params, ref, make_step_batch(params)


def run_step(mesh_axes, params, ref, batch, n_steps=2):
  devices = jax.devices()[:int(np.prod([s for _, s in mesh_axes]))]
  mesh = sharding.make_mesh(mesh_axes, devices)
  tx = optax.sgd(LR)
  state = pg_step.create_state(MODEL, tx, mesh, 0, jax.tree.map(jnp.array, params), RL.kl_coef)
  _, shardings = pg_step.state_shardings(MODEL, tx, mesh)
  ref = jax.device_put(ref, shardings.train.params)
  step_fn = pg_step.compile_pg_step(MODEL, TRAIN, RL, mesh, tx)
  history = []
  for _ in range(n_steps):
    state, metrics = step_fn(state, sharding.host_batch_to_global(batch, mesh), state.train.rng, ref)
    history.append({k: float(v) for k, v in metrics.items()})
  return jax.device_get(state), history


@pytest.fixture(scope="module")
def sharded(step_setup):
  return run_step(MESHES["data=2,fsdp=2,tensor=2"], *step_setup)


def test_sharded_step_equals_the_pure_loss_composed_by_hand_on_one_device(step_setup, sharded):
  """Two RL steps on 8 devices (params split over fsdp x tensor, rows over data x fsdp), each = 2 epochs x
  2 minibatches of SGD on objectives.policy_gradient_loss (clipped, k3 in the loss, token_mean) with
  advantages over groups of 4, then the adaptive β update: reproduced by hand, unsharded, on one device."""
  params, ref, batch = step_setup
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  ref_logps = _response_logps(MODEL, ref, jb, RL.temperature)[0]
  adv = advantages.compute("rloo", jb["rewards_B"].reshape(4, 4)).reshape(16)
  parts = [np.arange(16)[m::2] for m in range(2)]  # minibatch m = rows m, m + 2, ...

  @jax.jit
  def update(p, rows, beta):
    def loss(p):
      mb = {k: v[rows] for k, v in jb.items()}
      logps = pg_step.response_logps(MODEL, p, mb, RL.temperature)[0]
      num, den, aux = objectives.policy_gradient_loss(logps, mb["old_logps_BxT"], mb["loss_mask_BxT"], adv[rows],
                                                  clip_eps=RL.clip_eps, normalisation="token_mean",
                                                  ref_logps_BxT=ref_logps[rows], kl_coef=beta, kl_estimator="k3")
      return num / den, aux
    (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(p)
    return jax.tree.map(lambda w, g: w - LR * g, p, grads), value, aux

  beta, p = jnp.float32(RL.kl_coef), params
  kl_seq = pg_step.sequence_kl(jb["old_logps_BxT"], ref_logps, jb["loss_mask_BxT"], "k3")
  for n in range(2):
    clipped = tokens = 0.0
    for i in range(4):
      p, _, aux = update(p, parts[i % 2], beta)
      clipped, tokens = clipped + float(aux["clipped"]), tokens + float(aux["tokens"])
    assert sharded[1][n]["clip_fraction"] == pytest.approx(clipped / tokens, abs=1e-6)
    assert sharded[1][n]["kl"] == pytest.approx(float(jnp.mean(kl_seq)), rel=1e-5)
    assert sharded[1][n]["kl_coef"] == pytest.approx(float(beta), rel=1e-6)
    beta = kl.adaptive_kl_coef(beta, jnp.mean(kl_seq), target=RL.kl_target, horizon=RL.kl_horizon, n_samples=16)
  state = sharded[0]
  assert 0 < sharded[1][0]["clip_fraction"] < 1
  assert int(state.train.step) == 2 and float(state.kl_coef) == pytest.approx(float(beta), rel=1e-6)
  assert float(state.kl_coef) != RL.kl_coef  # the controller moved β
  for got, want in zip(jax.tree.leaves(state.train.params), jax.tree.leaves(p)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-4)


def test_reference_logps_only_when_beta_positive(step_setup, monkeypatch):
  params, ref, batch = step_setup
  mesh = sharding.make_mesh(MESHES["1 device"], jax.devices()[:1])
  calls = []
  real = pg_step.response_logps
  monkeypatch.setattr(pg_step, "response_logps", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
  tx = optax.sgd(LR)
  state = pg_step.create_state(MODEL, tx, mesh, 0, params, 0.0)
  global_batch = sharding.host_batch_to_global(batch, mesh)
  for beta, expected_calls in ((0.0, 1), (0.3, 2)):
    calls.clear()
    step = pg_step.compile_pg_step(MODEL, TRAIN, dataclasses.replace(RL, kl_coef=beta, kl_target=0.0), mesh, tx)
    args = (state, global_batch, state.train.rng) + ((ref,) if beta else ())
    step.lower(*args)  # traces (a scan body is traced once) without compiling
    assert len(calls) == expected_calls, beta
  with pytest.raises(ValueError, match="wrong length"):  # with β = 0 the step takes no reference parameters
    pg_step.compile_pg_step(MODEL, TRAIN, dataclasses.replace(RL, kl_coef=0.0, kl_target=0.0), mesh, tx).lower(
        state, global_batch, state.train.rng, ref)


# ---- the loop ----

def test_process_reward_counts_the_steps_before_the_first_error():
  """R = 1(ŷ = y) + w · (#steps right before the first error) / S, by hand for 152 + 702 (S = 7 steps)."""
  task = ArithmeticTask()
  p = task.example(arithmetic.Problem(152, 702))
  right = "<scratch>\n1 5 2 + 7 0 2 , C: 0\n5 + 0 , 4 C: 0\n1 + 7 , 5 4 C: 0\n, 8 5 4 C: 0\n0 8 5 4\n</scratch>\n8 5 4\n"
  reward, outcome = rewards.step_rewarded(task, 0.5), rewards.outcome_reward(task)
  assert reward(p, right) == pytest.approx(1.0 + 0.5)
  wrong_step_2 = right.replace("5 + 0 , 4 C: 0", "5 + 0 , 3 C: 0")  # the answer line is still right
  assert reward(p, wrong_step_2) == pytest.approx(1.0 + 0.5 * 1 / 7)
  wrong_answer = right.replace("</scratch>\n8 5 4", "</scratch>\n8 5 5")
  assert reward(p, wrong_answer) == pytest.approx(0.0 + 0.5 * 6 / 7)
  assert reward(p, "") == outcome(p, "") == 0.0
  assert outcome(p, wrong_step_2) == 1.0


@pytest.mark.e2e
def test_the_loop_learns_a_dense_reward(tmp_path):
  """Positive control of the whole loop (sample -> reward -> advantages -> update): with the reward
  "fraction of the response that is the character 7", a random tiny policy goes from ~1/60 to ~all 7s."""
  cfg = tiny_config(tmp_path / "data", steps=20, lr=1e-2, eval_every=1000, advantage="rloo")

  def sevens(problem, text):
    del problem
    return text.count("7") / max(len(text), 1)

  rl.run(cfg, str(tmp_path / "run"), init_params(cfg.model, 0), reward=rewards.per_sample(sevens))
  logged = [r["reward"] for r in io.read_jsonl(str(tmp_path / "run" / "rl_metrics.jsonl"))]
  assert max(logged[:3]) < 0.05 and min(logged[-3:]) > 0.5, logged


def parity_reward(problem, text):
  """A dense stand-in for the indicator (a random model is never right): parity of the characters."""
  del problem
  return float(sum(map(ord, text)) % 2)


def tiny_config(data_dir, **rl_overrides):
  c = pg_star_arithmetic.get_config("tiny")
  c.data.data_dir = str(data_dir)
  for k, v in rl_overrides.items():
    c.rl[k] = v
  return rl_config.rl_experiment_from_config(c)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("rl_data")
  workdir = tmp_path_factory.mktemp("rl_straight")
  cfg = tiny_config(data_dir, kl_coef=0.05)
  base = init_params(cfg.model, 0)
  records = rl.run(cfg, str(workdir), base, reward=rewards.per_sample(parity_reward))
  return {"cfg": cfg, "base": base, "workdir": workdir, "data_dir": data_dir, "records": records}


TIMING = ("seconds", "eval_seconds", "tokens_per_sec", "sample_tokens_per_sec", "sample_seconds", "host_seconds",
          "update_seconds")


def _no_timing(records):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _final_params(cfg, workdir):
  tx = train.make_optimizer(pg_step.optimizer_config(cfg.train, cfg.rl))
  abstract, _ = pg_step.state_shardings(cfg.model, tx, sharding.make_mesh(cfg.mesh.axes))
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    state, host = ckpt.restore(abstract)
  return jax.device_get(state), host


@pytest.mark.e2e
def test_records_files_and_metrics(straight):
  cfg, workdir, records = straight["cfg"], straight["workdir"], straight["records"]
  assert [r["step"] for r in records] == [0, 2, 4]
  assert records[0]["kl_to_base"] == pytest.approx(0.0, abs=1e-5) and records[-1]["kl_to_base"] > 0
  tokens = [r["sampled_tokens"] for r in records]
  assert tokens[0] == 0 and tokens[1] < tokens[2]
  train_records = io.read_jsonl(os.path.join(workdir, "rl_metrics.jsonl"))
  assert [r["step"] for r in train_records] == [1, 2, 3, 4]
  for r in train_records:
    assert {"reward", "accuracy", "kl", "kl_coef", "entropy", "response_length", "clip_fraction",
            "tokens_per_sec", "sampled_tokens", "loss", "grad_norm", "update_seconds", "sample_seconds"} <= set(r)
    assert all(np.isfinite(v) for v in r.values())
    assert r["approx_kl_old"] < 1e-6  # the sampler's log-probs are the trained policy's (ratio 1)
  assert train_records[-1]["sampled_tokens"] == records[-1]["sampled_tokens"]
  assert io.read_jsonl(os.path.join(workdir, "rl_eval.jsonl")) == records
  report = open(os.path.join(workdir, "rl_report.md"), encoding="utf-8").read()
  assert "| step | sampled tokens |" in report and f"| 4 | {tokens[2]} |" in report
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "logs")))
  state, host = _final_params(cfg, str(workdir))
  assert int(state.train.step) == 4 and host["sampled_tokens"] == tokens[2]


@pytest.mark.e2e
def test_sampler_logps_match_the_update_forward(straight):
  """The sampler's per-token log-probs (π_old of the update) equal the update's own forward pass on the same rows."""
  cfg, task = straight["cfg"], ArithmeticTask()
  mesh, tok = sharding.make_mesh(cfg.mesh.axes), CharTokenizer()
  logps_fn = pg_step.compile_response_logps(cfg.model, cfg.rl.temperature, mesh)
  tx = train.make_optimizer(pg_step.optimizer_config(cfg.train, cfg.rl))
  params = jax.device_put(straight["base"], pg_step.state_shardings(cfg.model, tx, mesh)[1].train.params)
  examples = [task.example(arithmetic.Problem(a, b)) for a, b in ((3, 4), (12, 57), (8, 9), (40, 33))]
  prompt_ids = [tok.encode(task.prompt(e), add_bos=True) for e in examples for _ in range(4)]
  tokens_BxP, lengths_B = sampling.left_pad(prompt_ids, tok.pad_id)
  out = sampling.sample(cfg.model, params, sharding.shard_global_batch(tokens_BxP, mesh),
                        sharding.shard_global_batch(lengths_B, mesh), jax.random.key(5),
                        cfg=sampling.SamplingConfig(max_new_tokens=48, temperature=cfg.rl.temperature),
                        eos_id=tok.eos_id, pad_id=tok.pad_id)
  tokens, lengths, logps = sharding.to_host((out.tokens_BxN, out.lengths_B, out.logps_BxN))
  batch = rl.build_batch(prompt_ids, tokens, lengths, logps, np.zeros(16), cfg.train.seq_len)
  recomputed = np.asarray(logps_fn(params, {k: sharding.shard_global_batch(v, mesh) for k, v in batch.items()}))
  mask = batch["loss_mask_BxT"] > 0
  assert mask.sum() == lengths.sum() > 0
  np.testing.assert_allclose(recomputed[mask], batch["old_logps_BxT"][mask], atol=1e-4)


class _Crash(Exception):
  pass


@pytest.mark.e2e
def test_crashed_run_resumes_to_the_uninterrupted_result(straight, tmp_path, monkeypatch):
  cfg, base = straight["cfg"], straight["base"]
  workdir = str(tmp_path / "resumed")
  real_save = rl.checkpoint.Checkpointer.save

  def save_then_crash(self, step, state, data_state=None):
    real_save(self, step, state, data_state)
    if step == 2:
      raise _Crash

  with monkeypatch.context() as mp, pytest.raises(_Crash):
    mp.setattr(rl.checkpoint.Checkpointer, "save", save_then_crash)
    rl.run(cfg, workdir, base, reward=rewards.per_sample(parity_reward))
  assert [r["step"] for r in io.read_jsonl(os.path.join(workdir, "rl_eval.jsonl"))] == [0, 2]
  records = rl.run(cfg, workdir, base, reward=rewards.per_sample(parity_reward))
  assert _no_timing(records) == _no_timing(straight["records"])
  metrics = [io.read_jsonl(os.path.join(w, "rl_metrics.jsonl")) for w in (workdir, str(straight["workdir"]))]
  assert _no_timing(metrics[0]) == _no_timing(metrics[1])
  (state, host), (want, want_host) = _final_params(cfg, workdir), _final_params(cfg, str(straight["workdir"]))
  assert host["sampled_tokens"] == want_host["sampled_tokens"]
  assert float(state.kl_coef) == float(want.kl_coef)
  for a, b in zip(jax.tree.leaves(state.train), jax.tree.leaves(want.train)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


@pytest.mark.e2e
def test_resuming_with_another_config_is_refused_and_token_budget_stops(straight, tmp_path):
  with pytest.raises(ValueError, match=r"config.rl.lr: 0.001 -> 0.002"):
    rl.run(tiny_config(straight["data_dir"], kl_coef=0.05, lr=2e-3), str(straight["workdir"]), straight["base"])
  records = rl.run(tiny_config(straight["data_dir"], kl_coef=0.05, token_budget=1), str(tmp_path), straight["base"],
                   reward=rewards.per_sample(parity_reward))
  assert [r["step"] for r in records] == [0, 1]  # one step sampled more than 1 token: stop, evaluate, save
  first_step = io.read_jsonl(os.path.join(straight["workdir"], "rl_metrics.jsonl"))[0]
  assert records[1]["sampled_tokens"] == first_step["sampled_tokens"]


# ---- a second task: the loop and its rewards see a task only through data.tasks.Task ----

def test_exact_step_reward_of_a_toy_task_by_hand():
  """The config's reward for a non-arithmetic task with exact step checks: R = 1(ŷ = y) + w · (steps right
  before the first error) / S, S = n + 1 lines."""
  cfg = tiny_config("/unused", process_reward=0.5)
  task = toy_task.CountTask()
  reward = rewards.default_reward(cfg.rl, task, sharding.make_mesh(cfg.mesh.axes), CharTokenizer(), 129)
  three = toy_task.example(3)
  texts = ["1\n2\n3\nso 3\n", "1\n2\n4\nso 3\n", "1\n2\n3\nso 4\n", "garbage"]
  np.testing.assert_allclose(reward([three] * 4, texts), [1 + 0.5, 1 + 0.5 * 2 / 4, 0 + 0.5 * 3 / 4, 0.0])


@pytest.mark.e2e
def test_the_loop_runs_a_toy_task_given_as_task_data(tmp_path):
  """pg.run on "count to n" (tests/toy_task.py) with its exact dense reward: held-out accuracy per group
  under the task's group names, the train groups pooled, every logged value finite."""
  task = toy_task.CountTask()
  data = star_tasks.TaskData(task, None, [toy_task.example(n) for n in range(1, 9)],
                             {1: [toy_task.example(n) for n in (2, 3)], 2: [toy_task.example(n) for n in (6, 7)]}, [])
  cfg = tiny_config(tmp_path / "data", process_reward=0.5)
  records = rl.run(cfg, str(tmp_path / "run"), init_params(cfg.model, 0), task_data=data)
  assert [r["step"] for r in records] == [0, 2, 4]
  assert {"acc_group1", "acc_group2", "acc_overall", "acc_train_lengths", "kl_to_base"} <= set(records[-1])
  assert records[-1]["acc_train_lengths"] == pytest.approx((records[-1]["acc_group1"] + records[-1]["acc_group2"]) / 2)
  train_records = io.read_jsonl(os.path.join(tmp_path, "run", "rl_metrics.jsonl"))
  assert len(train_records) == 4 and all(np.isfinite(v) for r in train_records for v in r.values())
  assert "| step | sampled tokens | train lengths | all | group1 | group2 |" in open(
      os.path.join(tmp_path, "run", "rl_report.md"), encoding="utf-8").read()
