"""Reasoning steps of a solution text: segmentation and exact process labels (plain Python, no model).

A step is a non-empty piece of a solution between delimiters (a newline for arithmetic scratchpad lines,
PRM800K steps and Game-of-24 lines). Tasks segment their solutions with `split_steps` (data.tasks.Task.steps)
and, where they can check a step exactly, label step k good iff steps 0..k are all correct
(`prefix_correct_labels`: Lightman et al. 2023's "first error" rule). The PRM (star_jax/prm/) places
labels at each step's end token and aggregates step scores; the policy gradient uses them as dense rewards.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

_VISIBLE_RE = re.compile(r"\S")


@dataclasses.dataclass(frozen=True)
class Step:
  text: str  # the step without its delimiter
  start: int  # offset of its first character in the solution text
  end: int  # offset of the delimiter that closes it, or len(solution) when unterminated


def split_steps(text: str, delimiter: str = "\n", start_after: str | None = None,
                max_steps: int | None = None) -> list[Step]:
  """The non-empty (after strip) pieces of `text` between delimiters, with their offsets.

  With `start_after` (e.g. "<scratch>"), only what follows its first occurrence counts, and no tag means
  no steps: for arithmetic this is exactly the steps of `verifiers.check_steps` (same `end` offsets as
  `verifiers.step_end_offsets`, both at most `verifiers.MAX_STEP_LINES`). With `max_steps`, only the first
  that many steps (the rest of the text is not examined).
  """
  if not delimiter:
    raise ValueError("split_steps: the delimiter must be a non-empty string")
  pos = 0
  if start_after is not None:
    found = text.find(start_after)
    if found < 0:
      return []
    pos = found + len(start_after)
  steps = []
  while pos <= len(text):
    if len(delimiter) == 1:  # jump over blank pieces in C: the next step starts after the delimiter before a \S
      visible = _VISIBLE_RE.search(text, pos)
      if visible is None:
        break
      before = text.rfind(delimiter, pos, visible.start())
      pos = pos if before < 0 else before + 1
    end = text.find(delimiter, pos)
    end = len(text) if end < 0 else end
    if text[pos:end].strip():
      steps.append(Step(text[pos:end], pos, end))
      if max_steps is not None and len(steps) >= max_steps:
        break
    pos = end + len(delimiter)
  return steps


def prefix_correct_labels(step_correct: Sequence[bool]) -> list[float]:
  """Label of step k = 1 iff steps 0..k are all correct: a step after the first error is not good."""
  out, ok = [], True
  for correct in step_correct:
    ok = ok and bool(correct)
    out.append(1.0 if ok else 0.0)
  return out
