"""The PG loop's sampler (`pg.loop._sample`): each question prefilled once and its K samples decoded over the
shared prefix (`sampling.sample_grouped`) gives the rows of the independent-row sampler on the questions
repeated K times (the loop's previous path, `grouped=False`) for the same rng: identical tokens, lengths and
prompt ids, log-probs to float rounding, hence the same update batch; row g K + k is sample k of question g."""

import jax
import numpy as np
import pytest

from experiments.configs import pg_star_arithmetic
from star_jax import io, models, sharding
from star_jax.pg import config as rl_config
from star_jax.pg import loop as rl
from star_jax.star import tasks as star_tasks
from tests import toy_task


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """The tiny PG config (4 x 4 rows, T = 1) on the 8 test devices, with the toy "count to n" task."""
  c = pg_star_arithmetic.get_config("tiny")
  c.data.data_dir = str(tmp_path_factory.mktemp("unused"))
  cfg = rl_config.rl_experiment_from_config(c)
  task = toy_task.CountTask()
  data = star_tasks.TaskData(task, None, [toy_task.example(n) for n in range(1, 17)],
                             {1: [toy_task.example(n) for n in (2, 3)]}, [])
  ctx = rl._setup(cfg, str(tmp_path_factory.mktemp("run")), task_data=data)
  params = jax.jit(models.init_params, static_argnums=0)(cfg.model, jax.random.key(0))
  return ctx, params


def _host(out):
  return sharding.to_host((out.tokens_BxN, out.lengths_B, out.logps_BxN))


def test_grouped_fits_only_when_the_questions_split_over_the_mesh(setup):
  ctx, _ = setup
  assert sharding.batch_divisor(ctx.mesh) == 8
  assert [rl.grouped_sampling_fits(g, ctx.mesh) for g in (4, 8, 12, 16)] == [False, True, False, True]


@pytest.mark.parametrize("num_questions", [8, 16])
def test_grouped_sample_equals_the_independent_rows(setup, num_questions):
  ctx, params = setup
  k = ctx.cfg.rl.samples_per_question
  examples = ctx.questions[:num_questions]
  rng = io.phase_key(ctx.cfg.rl.seed, 3, rl.SAMPLE)
  ids_grouped, out_grouped = rl._sample(ctx, params, examples, rng)
  ids_repeated, out_repeated = rl._sample(ctx, params, examples, rng, grouped=False)
  assert ids_grouped == ids_repeated
  assert ids_grouped[3 * k:4 * k] == [ctx.tokenizer.encode(ctx.task.prompt(examples[3]), add_bos=True)] * k  # row g K + k
  tokens_g, lengths_g, logps_g = _host(out_grouped)
  tokens_r, lengths_r, logps_r = _host(out_repeated)
  assert tokens_g.shape == (num_questions * k, ctx.cfg.rl.max_new_tokens)
  np.testing.assert_array_equal(tokens_g, tokens_r)
  np.testing.assert_array_equal(lengths_g, lengths_r)
  np.testing.assert_allclose(logps_g, logps_r, atol=1e-5)
  assert lengths_g.sum() > len(lengths_g)  # rows generated several tokens (T = 1, random policy)
  assert len({tuple(t) for t in tokens_g[:k]}) > 1  # a question's K samples differ from each other
  batches = [rl.build_batch(ids, t, n, lp, np.zeros(len(ids)), ctx.cfg.train.seq_len)
             for ids, (t, n, lp) in ((ids_grouped, (tokens_g, lengths_g, logps_g)),
                                     (ids_repeated, (tokens_r, lengths_r, logps_r)))]
  for name in batches[0]:
    np.testing.assert_allclose(batches[0][name], batches[1][name], atol=1e-5, err_msg=name)


def test_questions_that_do_not_split_over_the_mesh_fall_back_to_the_independent_rows(setup):
  """4 questions on 8 devices (the tiny config's step): sampling.sample on the repeated prompts."""
  ctx, params = setup
  rng = jax.random.key(7)
  _, out = rl._sample(ctx, params, ctx.questions[:4], rng)
  _, reference = rl._sample(ctx, params, ctx.questions[:4], rng, grouped=False)
  for a, b in zip(_host(out), _host(reference)):
    np.testing.assert_array_equal(a, b)  # the same call, so bit-identical


@pytest.mark.e2e
def test_a_tiny_run_is_the_same_with_grouped_and_independent_sampling(tmp_path, monkeypatch):
  """rl.run (4 steps of 4 questions x 4 samples, RLOO, β = 0.05) on a data=4 x tensor=2 mesh, where the 4
  questions split over the mesh and the loop samples grouped, against the same run with `grouped=False`:
  the same sampled tokens every step and the same records (to float rounding of the log-probs)."""
  c = pg_star_arithmetic.get_config("tiny")
  c.data.data_dir = str(tmp_path / "data")
  c.mesh.axes = (("data", 4), ("fsdp", 1), ("tensor", 2))
  c.rl.kl_coef = 0.05
  cfg = rl_config.rl_experiment_from_config(c)
  task = toy_task.CountTask()
  data = star_tasks.TaskData(task, None, [toy_task.example(n) for n in range(1, 9)],
                             {1: [toy_task.example(n) for n in (2, 3)], 2: [toy_task.example(n) for n in (6, 7)]}, [])
  base = jax.jit(models.init_params, static_argnums=0)(cfg.model, jax.random.key(0))
  sample, paths = rl._sample, []

  def recording(grouped):
    def _sample(ctx, params, examples, rng):
      paths.append(grouped and rl.grouped_sampling_fits(len(examples), ctx.mesh))
      return sample(ctx, params, examples, rng, grouped=grouped)
    return _sample

  results = {}
  for grouped in (True, False):
    monkeypatch.setattr(rl, "_sample", recording(grouped))
    workdir = tmp_path / f"run_{grouped}"
    evals = rl.run(cfg, str(workdir), base, task_data=data)
    results[grouped] = (evals, io.read_jsonl(str(workdir / "rl_metrics.jsonl")))
  assert paths == [True] * 7 + [False] * 7  # per run: 4 steps + KL at the evaluations of steps 0, 2, 4
  timing = {"seconds", "eval_seconds", "tokens_per_sec", "sample_tokens_per_sec", "sample_seconds", "host_seconds",
            "update_seconds"}
  for new, old in zip(*(sum(results[g], []) for g in (True, False)), strict=True):
    assert new.keys() == old.keys()
    assert new["step"] == old["step"] and new["sampled_tokens"] == old["sampled_tokens"]
    for key in new.keys() - timing:
      assert new[key] == pytest.approx(old[key], rel=1e-4, abs=1e-5), key
