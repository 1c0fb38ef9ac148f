"""Corrupted, missing and non-finite checkpoints, and a full disk.

- The newest checkpoint truncated, zeroed, or its manifest deleted/emptied: restore falls back to the newest
  step that restores, warns naming the step skipped and why, and training ends exactly as a run that never
  had that checkpoint (also for a finished phase: the STaR base model is trained again from its newest
  good step).
- A state with a NaN/inf is never written; the error names the newest checkpoint, which is finite; a re-run
  without the fault resumes from it to the uninterrupted result.
- ENOSPC while committing a checkpoint or writing a results file: a clear error naming the file, the
  previous checkpoints/files unchanged, and a re-run once there is space ends with the uninterrupted result.
"""

import errno
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import arithmetic as arithmetic_config
from star_jax import checkpoint, io, sharding, star, train
from star_jax.config import CheckpointConfig, TrainConfig
from star_jax.data import CharTokenizer, arithmetic
from tests.reliability import runs
from tests.star import test_loop as star_test_loop
from tests.test_train import MODEL, make_batch


def _data_file(step_dir) -> str:
  """The largest file of the step's array data (where the parameters' bytes are)."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
           if os.sep + "d" + os.sep in os.path.join(r, f)]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _data_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _truncate_every_data_file(step_dir):
  """Halve every array-data file of the step. Orbax's writer threads spread the arrays over several files in no
  fixed order, so the largest one may hold only optimizer moments, which a params-only restore never reads."""
  for path in [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
               if os.sep + "d" + os.sep in os.path.join(r, f)]:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def _zero(step_dir):
  path = _data_file(step_dir)
  size = os.path.getsize(path)
  with open(path, "wb") as f:
    f.write(b"\0" * size)


def _delete_manifest(step_dir):
  os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


def _empty_manifest(step_dir):
  open(os.path.join(step_dir, "state", "manifest.ocdbt"), "w").close()


CORRUPTIONS = {"truncated data file": _truncate, "zeroed data file": _zero, "deleted manifest": _delete_manifest,
               "emptied manifest": _empty_manifest}
WHERE = "checkpoints/<step>/state/" + "{ocdbt.process_0/d/<largest>, manifest.ocdbt}"


def _tree(offset: float):
  return {"w": jnp.arange(4096, dtype=jnp.float32) + offset, "b": {"x": jnp.ones((8, 8)) * offset},
          "step": jnp.int32(offset)}


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---- the Checkpointer alone ----

@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_newest_checkpoint_falls_back_with_a_warning(corruption, tmp_path, caplog, fault_table):
  directory = str(tmp_path / "checkpoints")
  with checkpoint.Checkpointer(directory, keep=3) as ckpt:
    ckpt.save(2, _tree(2.0), {"i": 2})
    ckpt.save(4, _tree(4.0), {"i": 4})
  CORRUPTIONS[corruption](os.path.join(directory, "4"))
  with caplog.at_level(logging.WARNING), checkpoint.Checkpointer(directory, keep=3) as ckpt:
    state, data = ckpt.restore(checkpoint.abstract_like(_tree(0.0)))
    assert data == {"i": 2} and int(state["step"]) == 2
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(4096) + 2.0)
    assert ckpt.all_steps() == [2]  # step 4 moved out of the way ...
    ckpt.save(4, _tree(4.0), {"i": 4})  # ... so the resumed run can write it again
    assert ckpt.all_steps() == [2, 4]
  warning = [w for w in _warnings(caplog) if "step 4" in w]
  assert len(warning) == 1 and "does not restore" in warning[0] and "restored step 2" in warning[0]
  assert any(code in warning[0] for code in ("OUT_OF_RANGE", "DATA_LOSS", "NOT_FOUND", "Error", "error"))
  assert os.listdir(directory + ".skipped") == ["4"]
  fault_table(corruption, WHERE.replace("<step>", "4 (newest)"),
              "restored step 2; warning names step 4 and the reason; step 4 moved to checkpoints.skipped/")


def test_when_no_checkpoint_restores_nothing_is_moved_and_every_step_is_named(tmp_path, fault_table):
  directory = str(tmp_path / "checkpoints")
  with checkpoint.Checkpointer(directory, keep=3) as ckpt:
    ckpt.save(2, _tree(2.0))
    ckpt.save(4, _tree(4.0))
  _truncate(os.path.join(directory, "4"))
  _delete_manifest(os.path.join(directory, "2"))
  with checkpoint.Checkpointer(directory, keep=3) as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint in .* restores .*step 4: .*step 2: "):
      ckpt.restore(checkpoint.abstract_like(_tree(0.0)))
    assert ckpt.all_steps() == [2, 4]
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoints/4 does not restore: ValueError: OUT_OF_RANGE"):
      ckpt.restore(checkpoint.abstract_like(_tree(0.0)), step=4)  # an explicit step never falls back
  assert not os.path.exists(directory + ".skipped")
  fault_table("every checkpoint corrupt", "checkpoints/{2,4}", "CheckpointError listing each step and reason; nothing moved")


def test_a_non_finite_state_is_never_written(tmp_path, fault_table):
  directory = str(tmp_path / "checkpoints")
  with checkpoint.Checkpointer(directory, keep=3) as ckpt:
    ckpt.save(2, _tree(2.0))
    bad = _tree(3.0)
    bad["b"]["x"] = bad["b"]["x"].at[1, 2].set(jnp.nan)
    with pytest.raises(checkpoint.NonFiniteStateError,
                       match=r"state of step 3 holds 1 non-finite values .* not saved; the newest checkpoint, step 2"):
      ckpt.save(3, bad)
    assert ckpt.all_steps() == [2]
  fault_table("NaN in the state to be saved", "Checkpointer.save", "NonFiniteStateError naming the newest (finite) step; nothing written")


def test_a_non_finite_checkpoint_written_before_the_check_is_skipped(tmp_path, caplog):
  directory = str(tmp_path / "checkpoints")
  with checkpoint.Checkpointer(directory, keep=3) as ckpt:
    ckpt.save(2, _tree(2.0))
    real = checkpoint.is_finite
    checkpoint.is_finite = lambda tree: True  # as the code before this check did
    try:
      ckpt.save(4, jax.tree.map(lambda x: x * jnp.nan if x.dtype == jnp.float32 else x, _tree(4.0)))
    finally:
      checkpoint.is_finite = real
  with caplog.at_level(logging.WARNING), checkpoint.Checkpointer(directory, keep=3) as ckpt:
    state, _ = ckpt.restore(checkpoint.abstract_like(_tree(0.0)))
  assert int(state["step"]) == 2
  assert any("step 4" in w and "non-finite" in w for w in _warnings(caplog))


# ---- fine-tuning resumes past a corrupted checkpoint to the uninterrupted result ----

TRAIN = TrainConfig(batch_size=8, seq_len=128, steps=8, warmup_steps=2, lr=3e-3, log_every=1)
EVERY2 = CheckpointConfig(every_steps=2, keep=10)
EXAMPLES = [{"prompt": arithmetic.prompt_text(p), "target": arithmetic.target_text(p)}
            for p in arithmetic.sample_problems(1, 40, seed=0)]
TINY = MODEL.__class__(vocab_size=CharTokenizer().vocab_size, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2)


class _Crash(Exception):
  pass


def _fine_tune(directory, mesh):
  return train.fine_tune(TINY, TRAIN, EVERY2, mesh, CharTokenizer(), EXAMPLES, None, 8, str(directory), pack=True,
                         data_seed=1, init_seed=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  mesh = sharding.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), jax.devices()[:1])
  params, _ = _fine_tune(tmp_path_factory.mktemp("reference"), mesh)
  return mesh, jax.device_get(params)


def _assert_params_equal(a, b):
  for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_fine_tuning_resumes_from_the_newest_good_checkpoint(corruption, reference, tmp_path, monkeypatch, caplog,
                                                             fault_table):
  """Killed right after checkpoint 6 of 8 (a crash), checkpoint 6 corrupted: the re-run warns, resumes
  from step 4 and ends with the parameters of the uninterrupted run."""
  mesh, expected = reference
  real_save = checkpoint.Checkpointer.save

  def save_then_crash(self, step, state, data_state=None):
    real_save(self, step, state, data_state)
    if step == 6:
      raise _Crash

  with monkeypatch.context() as m, pytest.raises(_Crash):
    m.setattr(checkpoint.Checkpointer, "save", save_then_crash)
    _fine_tune(tmp_path, mesh)
  CORRUPTIONS[corruption](str(tmp_path / "checkpoints" / "6"))
  with caplog.at_level(logging.WARNING):
    params, info = _fine_tune(tmp_path, mesh)
  assert any("step 6" in w and "restored step 4" in w for w in _warnings(caplog))
  assert info["steps"] == 8
  _assert_params_equal(params, expected)
  fault_table(f"{corruption} (mid-training)", "fine_tune checkpoints/6 of 8, after a crash",
              "warning; resumed from step 4; final parameters equal the uninterrupted run's")


def test_a_non_finite_update_is_not_checkpointed_and_a_clean_rerun_resumes(reference, tmp_path, fault_table):
  """The update of step 5 makes the parameters NaN while its loss (from the parameters before it) is finite:
  checkpoint 5 is refused naming step 4, every checkpoint on disk is finite, and the re-run without the
  fault resumes from step 4 to the uninterrupted result."""
  mesh, _ = reference
  tx = train.make_optimizer(TRAIN)
  step_fn = train.compile_train_step(TINY, TRAIN, mesh, tx)

  def poisoned(state, batch, rng):
    state, metrics = step_fn(state, batch, rng)
    nan = jnp.where(state.step == 5, jnp.nan, 1.0)
    return state.replace(params=jax.tree.map(lambda p: p * nan, state.params)), metrics

  def batches(start=0):
    class _It:
      i = start

      def __next__(self):
        self.i += 1
        return make_batch(self.i, b=8, t=128)

      def get_state(self):
        return {"i": self.i}
    return _It()

  every1 = CheckpointConfig(every_steps=1, keep=10)
  directory = str(tmp_path / "checkpoints")
  with checkpoint.Checkpointer(directory, keep=10) as ckpt:
    state = train.create_train_state(TINY, tx, mesh, seed=0)
    with pytest.raises(checkpoint.NonFiniteStateError, match=rf"step 5 .* the newest checkpoint, step 4 in {directory}"):
      train.train_loop(state, poisoned, batches(), mesh, num_steps=8, checkpointer=ckpt, checkpoint_config=every1)
    assert ckpt.all_steps() == [1, 2, 3, 4]
  abstract, _ = train.state_shardings(TINY, tx, mesh)
  for step in (1, 2, 3, 4):
    with checkpoint.Checkpointer(directory, keep=10) as ckpt:
      assert checkpoint.is_finite(ckpt.restore(abstract, step=step)[0])
  with checkpoint.Checkpointer(directory, keep=10) as ckpt:
    state, data = ckpt.restore(abstract)
    resumed = train.train_loop(state, step_fn, batches(data["i"]), mesh, num_steps=8, checkpointer=ckpt,
                               checkpoint_config=every1)
  with checkpoint.Checkpointer(str(tmp_path / "straight"), keep=10) as ckpt:
    straight = train.train_loop(train.create_train_state(TINY, tx, mesh, seed=0), step_fn, batches(), mesh, num_steps=8,
                                checkpointer=ckpt, checkpoint_config=every1)
  _assert_params_equal(resumed.params, jax.device_get(straight.params))
  fault_table("update makes the parameters NaN (loss still finite)", "train_loop step 5 of 8, every_steps=1",
              "NonFiniteStateError naming step 4 (true: steps 1-4 on disk, all finite); clean re-run = uninterrupted")


@pytest.mark.e2e
def test_a_finished_base_model_with_a_corrupt_final_checkpoint_is_trained_again(tmp_path, caplog, fault_table):
  cfg = star_test_loop.tiny_config(tmp_path / "data", **star_test_loop.CONSTANT_STEPS)
  expected = jax.device_get(star.make_base_model(cfg, str(tmp_path / "w")))
  _truncate_every_data_file(str(tmp_path / "w" / "base" / "checkpoints" / "6"))  # the base model restores params only
  with caplog.at_level(logging.WARNING):
    again = star.make_base_model(cfg, str(tmp_path / "w"))
  assert any("training the base model again" in w for w in _warnings(caplog))
  assert any("step 6" in w and "restored step 4" in w for w in _warnings(caplog))
  _assert_params_equal(again, expected)
  assert io.read_json(str(tmp_path / "w" / "base" / "train.json"))["steps"] == 6
  fault_table("truncated final checkpoint of a finished phase", "STaR base/checkpoints/6, every data file (train.json present)",
              "warning; base model trained again from step 4; same parameters")


# ---- a full disk (ENOSPC injected into the writes of a subprocess) ----

@pytest.mark.e2e
def test_disk_full_gives_a_clear_error_and_keeps_the_previous_state(tmp_path, tmp_path_factory, fault_table):
  cache, data = runs.cache_dir(tmp_path_factory), tmp_path / "data"
  config = arithmetic_config.__file__

  def sft(workdir):
    return ["star_jax.main", f"--config={config}:tiny", f"--workdir={workdir}", f"--config.data.data_dir={data}"]

  straight = runs.launch(sft(tmp_path / "straight" / "run"), cache)
  assert straight.returncode == 0, straight.stdout[-3000:]
  workdir = tmp_path / "full" / "run"
  # the checkpoint of step 8 (of 12, every 4) cannot be committed
  out = runs.launch(sft(workdir), cache, enospc="ckpt:run/checkpoints/8")
  assert out.returncode != 0
  assert "CheckpointError: writing checkpoint step 8" in out.stdout and os.strerror(errno.ENOSPC) in out.stdout
  assert "the checkpoints already there (steps [4]) are unchanged" in out.stdout
  assert sorted(p for p in os.listdir(workdir / "checkpoints") if p.isdigit()) == ["4"]
  out = runs.launch(sft(workdir), cache)  # space freed: the same command resumes from step 4
  assert out.returncode == 0, out.stdout[-3000:]
  a, b = runs.newest_state(tmp_path / "straight" / "run" / "checkpoints"), runs.newest_state(workdir / "checkpoints")
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)
  assert io.read_json(workdir / "results.json")["accuracy"] == io.read_json(tmp_path / "straight" / "run" / "results.json")["accuracy"]
  fault_table("disk full (ENOSPC)", "commit of checkpoint 8 (sft job)",
              "CheckpointError naming step 8 and ENOSPC; step 4 intact; re-run resumes to the uninterrupted result")

  # a finished run re-run on a full disk: results.json cannot be rewritten
  before = (workdir / "results.json").read_bytes()
  out = runs.launch(sft(workdir), cache, enospc="write:run/results.json")
  assert out.returncode != 0
  assert f"{os.strerror(errno.ENOSPC)}: could not write {workdir / 'results.json'} (its previous content" in out.stdout
  assert (workdir / "results.json").read_bytes() == before
  assert not [p for p in os.listdir(workdir) if ".tmp." in p]  # the half-written temporary file is removed
  fault_table("disk full (ENOSPC)", "results.json write (half written, then the error)",
              "OSError naming the file; previous results.json byte-identical; no temporary file left")
