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
import re
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


def decode_line(raw: bytes) -> str:
  """One line's bytes as text, decoded as strict UTF-8; ValueError with a readable reason otherwise.

  UTF-16/32 files (a byte-order mark, or NUL bytes, which JSON never contains) are named as such.
  """
  if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
    raise ValueError("not UTF-8: starts with a UTF-16/32 byte-order mark; save the file as UTF-8")
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); save the file as UTF-8") from None
  if "\0" in text:
    raise ValueError("contains NUL bytes (a UTF-16/32 file?); save the file as UTF-8")
  return text


_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def loads_json(text: str) -> Any:
  """json.loads of one line; json.JSONDecodeError for invalid JSON, ValueError (with a reason) for JSON that
  Python cannot hold or TFDS cannot write: nesting beyond the recursion limit, an integer of more than 4300
  digits, a string holding a lone UTF-16 surrogate ('\\ud800', not valid Unicode)."""
  try:
    data = json.loads(text)
  except json.JSONDecodeError:
    raise
  except RecursionError:
    raise ValueError("JSON nested too deeply") from None
  except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
    raise ValueError(f"unreadable JSON value ({e})") from None
  if _SURROGATE_ESCAPE_RE.search(text):  # only a \uD800-\uDFFF escape can put a surrogate in the data
    stack = [data]
    while stack:
      value = stack.pop()
      if isinstance(value, str):
        if _SURROGATE_RE.search(value):
          raise ValueError(f"a string holds a lone UTF-16 surrogate (not valid Unicode): {value!r:.80}")
      elif isinstance(value, dict):
        stack.extend(value.keys())
        stack.extend(value.values())
      elif isinstance(value, list):
        stack.extend(value)
  return data


def read_jsonl(path: str | os.PathLike) -> Iterator[Record]:
  """Yields one Record per non-blank line; DataFormatError on invalid UTF-8, invalid JSON or a non-object."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        text = decode_line(raw)
      except ValueError as e:
        raise DataFormatError(path, number, str(e)) from None
      if not text.strip():
        continue
      try:
        data = loads_json(text)
      except json.JSONDecodeError as e:
        raise DataFormatError(path, number, f"invalid JSON ({e.msg} at column {e.colno})") from None
      except ValueError as e:
        raise DataFormatError(path, number, str(e)) from None
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
