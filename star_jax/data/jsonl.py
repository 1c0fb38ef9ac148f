"""Strict JSON-lines reading for user-supplied datasets: every error names the file and the line.

    for record in read_jsonl("gsm8k/train.jsonl"):
      question = record.get("question", str)       # DataFormatError "gsm8k/train.jsonl:12: ..." if bad

Blank (whitespace-only) lines are skipped; anything else must be one JSON object per line. Nothing here
writes files: the TFDS builders parse a whole file before writing anything, and TFDS itself writes a split
into a temporary directory that is renamed only when the dataset is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class DataFormatError(ValueError):
  """A malformed input line; the message starts with `<file>:<line>:`."""

  def __init__(self, path: str, line: int, message: str):
    super().__init__(f"{path}:{line}: {message}")
    self.path, self.line = path, line


@dataclasses.dataclass(frozen=True)
class Record:
  """One JSON object of a JSONL file, with where it came from (for error messages)."""

  path: str
  line: int  # 1-based
  data: dict

  def error(self, message: str) -> DataFormatError:
    return DataFormatError(self.path, self.line, message)

  def get(self, key: str, kind: type[T], *, optional: bool = False) -> T | None:
    """`data[key]`, which must be a `kind`; a dotted key ("question.stem") walks nested objects.

    Missing keys raise unless `optional` (then None). `int` never accepts a bool.
    """
    value: Any = self.data
    walked = []
    for part in key.split("."):
      if not isinstance(value, dict):
        raise self.error(f"key {'.'.join(walked)!r} must be an object, got {type(value).__name__}")
      walked.append(part)
      if part not in value:
        if optional:
          return None
        raise self.error(f"missing key {'.'.join(walked)!r}")
      value = value[part]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
      raise self.error(f"key {key!r} must be a {kind.__name__}, got {type(value).__name__} {value!r:.80}")
    return value


def read_jsonl(path: str | os.PathLike) -> Iterator[Record]:
  """Yields one Record per non-blank line; DataFormatError on invalid UTF-8, invalid JSON or a non-object."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise DataFormatError(path, number, f"not UTF-8 ({e})") from None
      if not text.strip():
        continue
      try:
        data = json.loads(text)
      except json.JSONDecodeError as e:
        raise DataFormatError(path, number, f"invalid JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(data, dict):
        raise DataFormatError(path, number, f"expected a JSON object, got {type(data).__name__}")
      yield Record(path, number, data)


def file_fingerprint(paths: Mapping[str, str | os.PathLike]) -> str:
  """12 hex digits of sha256 over (split name, file contents) of every split's file.

  The local-file TFDS builders name their config after it, so an edited file is built into a new
  directory instead of silently reusing the data built from its old contents.
  """
  digest = hashlib.sha256()
  for split, path in sorted(paths.items()):
    digest.update(split.encode("utf-8") + b"\0")
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    digest.update(b"\0")
  return digest.hexdigest()[:12]
