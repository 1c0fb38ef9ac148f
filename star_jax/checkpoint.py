"""Orbax checkpoints of the train state together with the data-iterator position.

Each save is atomic (Orbax writes to a temporary directory and renames it when complete), so a process
killed mid-save leaves the previous checkpoint intact; restoring takes the target shardings from an
abstract state, so a checkpoint written on one mesh restores onto any other.

Two guarantees on top of Orbax's:
- **Nothing non-finite is written.** `save` checks on device (one all-reduce of isfinite over every float
  leaf) that the state is finite and raises `NonFiniteStateError` otherwise, naming the newest checkpoint
  on disk (which was checked the same way when it was written).
- **A corrupted newest checkpoint does not block the directory.** `restore()` without a step tries the steps
  newest first and returns the newest that restores (and is finite); every step skipped is logged with the
  reason and moved out of the way to `<directory>.skipped/` (so the run can write that step again). When
  no step restores nothing is moved and `CheckpointError` lists each step's reason.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
  """A checkpoint (or every checkpoint of a directory) does not restore; the message names step and reason."""


class NonFiniteStateError(FloatingPointError):
  """`Checkpointer.save` was given a state with NaN/inf values; nothing was written."""


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] or [jnp.bool_(True)]))


def _float_leaves(tree: Any) -> list[jax.Array]:
  return [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]


def _fetch_scalar(x: jax.Array):
  """A replicated scalar as a numpy value (works when the array spans several hosts)."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


def is_finite(tree: Any) -> bool:
  """Whether every float leaf of `tree` is finite: one jitted reduction, one scalar fetched to the host."""
  leaves = _float_leaves(tree)
  return not leaves or bool(_fetch_scalar(_all_finite(leaves)))


def count_non_finite(tree: Any) -> tuple[int, int]:
  """(non-finite entries, float entries) of `tree` (for error messages; fetches one scalar per leaf)."""
  leaves = _float_leaves(tree)
  bad = sum(int(_fetch_scalar(jnp.sum(~jnp.isfinite(x)))) for x in leaves)
  return bad, sum(int(np.prod(x.shape)) for x in leaves)


@contextlib.contextmanager
def _quiet_unraisable():
  """Orbax/TensorStore leave never-awaited coroutines behind when a read fails; their "Exception ignored"
  tracebacks would bury the one-line warning `restore` logs, so they are dropped while restoring."""
  previous = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  try:
    yield
  finally:
    sys.unraisablehook = previous


def _reason(e: BaseException) -> str:
  """One line: the innermost cause (TensorStore's OUT_OF_RANGE/DATA_LOSS/NOT_FOUND is usually wrapped)."""
  while e.__cause__ is not None and str(e.__cause__):
    e = e.__cause__
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


class Checkpointer:
  """Save every N steps (the caller decides when), keep the newest `keep`, restore the latest that restores."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._keep = keep
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=True, enable_async_checkpointing=False),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict | None = None) -> None:
    """Write `state` (any pytree of jax arrays) and the JSON-able data-iterator state for `step`.

    Raises NonFiniteStateError, writing nothing, when a float leaf of `state` holds NaN or inf, and
    CheckpointError (naming the step and the cause, e.g. ENOSPC) when the write fails.
    """
    if not is_finite(state):
      bad, total = count_non_finite(state)
      newest = self.latest_step()
      clean = (f"the newest checkpoint, step {newest} in {self.directory}, was checked finite when written"
               if newest is not None else f"no checkpoint was written in {self.directory}")
      raise NonFiniteStateError(f"the state of step {step} holds {bad} non-finite values (NaN/inf) of {total}; "
                                f"it was not saved; {clean}")
    before = self.all_steps()
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave({"iterator": data_state})))
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 (a full disk surfaces as OSError, or wrapped by Orbax/TensorStore)
      raise CheckpointError(f"writing checkpoint step {step} in {self.directory} failed ({_reason(e)}); the "
                            f"checkpoints already there (steps {before}) are unchanged") from e

  def _restore_step(self, abstract_state: Any, step: int) -> tuple[Any, dict | None]:
    with _quiet_unraisable():
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    if not is_finite(restored["state"]):
      bad, total = count_non_finite(restored["state"])
      raise NonFiniteStateError(f"it holds {bad} non-finite values (NaN/inf) of {total}")
    return restored["state"], restored["data"]["iterator"]

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict | None]:
    """(state laid out as `abstract_state`'s shardings, data-iterator state).

    With `step`: that step, or CheckpointError naming it and why. Without: the newest step that restores;
    newer steps that do not are logged as warnings (step and reason) and moved to `<directory>.skipped/`.
    """
    if step is not None:
      try:
        return self._restore_step(abstract_state, step)
      except Exception as e:  # noqa: BLE001 (Orbax/TensorStore raise many types; the reason is reported)
        raise CheckpointError(f"checkpoint {os.path.join(self.directory, str(step))} does not restore: "
                              f"{_reason(e)}") from e
    steps = self.all_steps()[::-1]
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    failed: list[tuple[int, str]] = []
    for candidate in steps:
      try:
        out = self._restore_step(abstract_state, candidate)
      except Exception as e:  # noqa: BLE001
        failed.append((candidate, _reason(e)))
        continue
      if failed:
        self._set_aside([s for s, _ in failed])
        for bad, reason in failed:
          logging.warning("checkpoint step %d in %s does not restore (%s); skipped it and restored step %d "
                          "(moved to %s.skipped/)", bad, self.directory, reason, candidate, self.directory)
      return out
    raise CheckpointError(f"no checkpoint in {self.directory} restores (nothing was moved): "
                          + "; ".join(f"step {s}: {r}" for s, r in failed)
                          + ". If they are corrupt, delete the directory to start this phase over.")

  def _set_aside(self, steps: list[int]) -> None:
    """Move unrestorable steps out of the manager's directory (process 0), so they can be written again."""
    if jax.process_index() == 0:
      target = f"{self.directory}.skipped"
      os.makedirs(target, exist_ok=True)
      for s in steps:
        destination = os.path.join(target, str(s))
        if os.path.exists(destination):
          destination += f".{time.time_ns()}"
        os.replace(os.path.join(self.directory, str(s)), destination)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_set_aside:{self.directory}")
    self._manager.close()
    self._manager = self._open()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) mirroring a tree of arrays, as a restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
