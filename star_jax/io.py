"""Files that are either complete or absent, JSON lines, and the loops' reproducible rng keys.

Every write goes to a temporary file next to its destination and is renamed over it (`os.replace`, atomic
on POSIX), so a run killed mid-write leaves the previous file or none, never half of one: the loops'
"skip a phase whose output exists" resumption relies on it. A write that fails (a full disk: ENOSPC)
removes its temporary file and raises an OSError naming the destination, which keeps its previous content.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence

import jax
import numpy as np


def _tmp(path: str) -> str:
  return f"{path}.tmp.{jax.process_index()}.{os.getpid()}"


def _make_parent(path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _failed_write(path: str, tmp: str, e: OSError) -> OSError:
  """The error of a write that failed (e.g. the disk is full): the partial temporary file is removed, and
  the message names the destination and says that its previous content (if any) is unchanged."""
  with contextlib.suppress(OSError):
    os.remove(tmp)
  return OSError(e.errno, f"{e.strerror or e}: could not write {path} (its previous content, if any, is unchanged)")


def write_text(path: str, text: str) -> None:
  """Write a text file (markdown, CSV) atomically."""
  _make_parent(path)
  tmp = _tmp(path)
  try:
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      f.write(text)
    os.replace(tmp, path)
  except OSError as e:
    raise _failed_write(path, tmp, e) from e


def write_json(path: str, obj) -> None:
  """Write JSON atomically (indent 1)."""
  write_text(path, json.dumps(obj, indent=1))


def write_jsonl(path: str, records: Iterable[Mapping]) -> None:
  """Write JSON lines atomically."""
  write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def write_csv(path: str, rows: Sequence[Mapping]) -> None:
  """`rows` as CSV atomically, the columns in order of first appearance (rows may have fewer)."""
  columns = list(dict.fromkeys(k for r in rows for k in r))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  write_text(path, buffer.getvalue())


def save_figure(fig, path: str, dpi: int = 120) -> None:
  """Save a matplotlib figure atomically as PNG (the temporary name keeps the .png suffix matplotlib reads)."""
  _make_parent(path)
  tmp = _tmp(path) + ".png"
  try:
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
  except OSError as e:
    raise _failed_write(path, tmp, e) from e


def read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_jsonl(path: str) -> list[dict]:
  """The records of a JSON-lines file; a malformed line raises naming the file and line."""
  with open(path, encoding="utf-8") as f:
    out = []
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{number}: not JSON ({e.msg})") from None
    return out


def read_jsonl_if_exists(path: str) -> list[dict]:
  """`read_jsonl(path)`, or [] when the file does not exist yet."""
  return read_jsonl(path) if os.path.exists(path) else []


# ---- reproducible randomness: every rng of a loop derives from (seed, iteration or step, phase) ----

def phase_key(seed: int, iteration: int, phase: int) -> jax.Array:
  """The jax PRNG key of (seed, iteration, phase)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), iteration), phase)


def phase_seed(seed: int, iteration: int, phase: int) -> int:
  """An int seed (grain shuffling, state init) of (seed, iteration, phase)."""
  return int(np.random.default_rng([seed, iteration, phase]).integers(2**31 - 1))


def phase_timer(path: str):
  """`timed(name, fn)`: run fn() and record its wall time under `name` in the JSON file `path`, once: a
  resumed run keeps the first (real) timing of a phase it only reloads from cache, and phases another process
  recorded in `path` meanwhile are kept. `timed.timings` is the {name: seconds} dict."""
  timings = read_json(path) if os.path.exists(path) else {}

  def timed(name: str, fn):
    t0 = time.perf_counter()
    out = fn()
    if os.path.exists(path):  # another process of the same study may have recorded phases meanwhile
      timings.update({k: v for k, v in read_json(path).items() if k not in timings})
    if name not in timings:
      timings[name] = time.perf_counter() - t0
      write_json(path, timings)
    return out

  timed.timings = timings
  return timed
