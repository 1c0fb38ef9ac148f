"""Answer extraction and step-level checks for the arithmetic scratchpad (see arithmetic.py for the format).

Outcome reward: the STaR indicator 1(y_hat = y) (Zelikman et al. 2022, arXiv 2203.14465).
Step labels: exact automatic checks of each scratchpad line, the "process supervision" signal of
Lightman et al. 2023 (arXiv 2305.20050) computed by a rule instead of a human.

Everything here parses text with anchored regular expressions; nothing is ever evaluated, and malformed input
gives None / invalid steps instead of raising.
"""

from __future__ import annotations

import dataclasses
import re

from star_jax.data.arithmetic import (
    SCRATCH_CLOSE,
    SCRATCH_OPEN,
    Problem,
    ScratchState,
    answer_text,
    scratchpad_lines,
    scratchpad_states,
)

NO_ANSWER = None
MAX_ANSWER_DIGITS = 1000  # longer digit strings are treated as garbage (and int() stays cheap)
# Step lines examined (check_steps, step_end_offsets, ArithmeticTask.steps): more than any problem that
# parse_question accepts has (1000 digits + 4); later lines are not steps, so the work per text is bounded.
MAX_STEP_LINES = 1024

_DIGITS = r"[0-9](?: [0-9])*"
_ANSWER_RE = re.compile(_DIGITS)
_QUESTION_LINE_RE = re.compile(rf"({_DIGITS}) \+ ({_DIGITS}) , C: ([0-9])")
_PAIR_LINE_RE = re.compile(rf"([0-9]) \+ ([0-9]) , ({_DIGITS}) C: ([0-9])")
_LAST_SUM_LINE_RE = re.compile(rf", ({_DIGITS}) C: ([0-9])")
_FINAL_LINE_RE = re.compile(_DIGITS)
_VISIBLE_RE = re.compile(r"\S")


def _as_text(generated: object) -> str | None:
    if isinstance(generated, bytes):
        try:
            return generated.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return generated if isinstance(generated, str) else None


def _lines_after(text: str, tag: str, max_lines: int = MAX_STEP_LINES) -> list[tuple[str, int]] | None:
    """(line, end offset) of the first `max_lines` non-empty lines after the first `tag`; None without the tag.

    The rest of the tag's own line counts as a line. The end offset is the index in `text` of the line's
    terminating newline (or len(text) for an unterminated last line). Lines after the last one returned
    are not examined.
    """
    pos = text.find(tag)
    if pos < 0:
        return None
    out, start = [], pos + len(tag)
    while start <= len(text) and len(out) < max_lines:
        visible = _VISIBLE_RE.search(text, start)  # jump over blank lines in C
        if visible is None:
            break
        before = text.rfind("\n", start, visible.start())
        start = start if before < 0 else before + 1
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        line = text[start:end]
        if line.strip():
            out.append((line, end))
        start = end + 1
    return out


def extract_answer(generated_target: str) -> int | None:
    """The first non-empty line after '</scratch>' as an int, if it is digits separated by single spaces.

    Surrounding whitespace on that line is ignored; a leading zero ("0 8 5 4"), letters, an empty line, a
    missing tag or more than MAX_ANSWER_DIGITS digits give NO_ANSWER. Never raises.
    """
    text = _as_text(generated_target)
    if text is None:
        return NO_ANSWER
    lines = _lines_after(text, SCRATCH_CLOSE, max_lines=1)
    if not lines:
        return NO_ANSWER
    line = lines[0][0].strip()
    if len(line) > 2 * MAX_ANSWER_DIGITS or not _ANSWER_RE.fullmatch(line):
        return NO_ANSWER
    digits = line.replace(" ", "")
    if len(digits) > 1 and digits[0] == "0":
        return NO_ANSWER
    return int(digits)


def is_correct(p: Problem, generated_target: str) -> bool:
    """The STaR indicator 1(y_hat = y)."""
    return extract_answer(generated_target) == p.answer


@dataclasses.dataclass(frozen=True)
class StepCheck:
    """Result of checking one step (one non-empty line after '<scratch>')."""

    index: int  # 0-based index among the target's step lines
    text: str  # the generated line
    valid: bool  # parsed in the expected form for that position
    correct: bool  # valid and every field matches the truth


def expected_step_lines(p: Problem) -> list[str]:
    """The true steps: the scratch lines, '</scratch>' and the answer line."""
    return [*scratchpad_lines(p), SCRATCH_CLOSE, answer_text(p)]


def expected_num_steps(p: Problem) -> int:
    """n_digits + 2 scratch lines, plus '</scratch>' and the answer line."""
    return p.n_digits + 4


def _digits(spaced: str) -> str:
    return spaced.replace(" ", "")


def _check_line(p: Problem, states: list[ScratchState], k: int, line: str) -> tuple[bool, bool]:
    """(valid, correct) of generated `line` at step index `k`; `states` = scratchpad_states(p)."""
    n = p.n_digits
    if k == 0:  # "<a> + <b> , C: 0"
        m = _QUESTION_LINE_RE.fullmatch(line)
        if m is None:
            return False, False
        ok = _digits(m.group(1)) == str(p.a) and _digits(m.group(2)) == str(p.b) and m.group(3) == "0"
        return True, ok
    if 1 <= k < n:  # "<x> + <y> , <partial> C: <carry>"
        m = _PAIR_LINE_RE.fullmatch(line)
        if m is None:
            return False, False
        pair, partial, carry = states[k]
        assert pair is not None
        ok = (
            (int(m.group(1)), int(m.group(2))) == pair
            and _digits(m.group(3)) == partial
            and int(m.group(4)) == carry
        )
        return True, ok
    if k == n:  # ", <partial> C: <carry>"
        m = _LAST_SUM_LINE_RE.fullmatch(line)
        if m is None:
            return False, False
        _, partial, carry = states[n]
        return True, _digits(m.group(1)) == partial and int(m.group(2)) == carry
    if k == n + 1:  # "<carry> <partial>"
        if _FINAL_LINE_RE.fullmatch(line) is None:
            return False, False
        _, partial, carry = states[n]
        return True, _digits(line) == str(carry) + partial
    if k == n + 2:
        valid = line == SCRATCH_CLOSE
        return valid, valid
    if k == n + 3:  # the answer, compared as extract_answer does
        if _ANSWER_RE.fullmatch(line.strip()) is None:
            return False, False
        return True, extract_answer(f"{SCRATCH_CLOSE}\n{line}") == p.answer
    return False, False  # extra line beyond the expected steps


def check_steps(p: Problem, generated_target: str) -> list[StepCheck]:
    """Checks every step of a generated target against the true scratchpad, position by position.

    Steps are the non-empty lines after the first '<scratch>' (the rest of that tag's line counts if
    non-empty), at most MAX_STEP_LINES of them: each scratch line, '</scratch>' and the answer line. Fields (pair digits, partial-sum digits,
    carry, answer) are parsed and compared, so a malformed line is valid=False and a well-formed line with a
    wrong number is valid=True, correct=False. Scratch lines must match the format exactly (single spaces);
    the answer line tolerates surrounding whitespace, like `extract_answer`. Lines beyond
    expected_num_steps(p) are invalid; missing lines are simply absent. No '<scratch>' tag: no steps.
    Never raises; bounded work: at most MAX_STEP_LINES lines are examined (one StepCheck each) and only
    the first expected_num_steps(p) of them parsed.
    """
    text = _as_text(generated_target)
    if text is None:
        return []
    lines = _lines_after(text, SCRATCH_OPEN)
    if lines is None:
        return []
    states = scratchpad_states(p)
    expected = expected_num_steps(p)
    out = []
    for k, (line, _) in enumerate(lines[:expected]):
        valid, correct = _check_line(p, states, k, line)
        out.append(StepCheck(index=k, text=line, valid=valid, correct=valid and correct))
    # Lines beyond the expected steps are invalid without parsing: the cost stays one object per line.
    out.extend(StepCheck(k, line, False, False) for k, (line, _) in enumerate(lines[expected:], start=expected))
    return out


def step_end_offsets(generated_target: str) -> list[int]:
    """Character offset of the end of each step of `check_steps` (its newline, or len(text) if unterminated;
    at most MAX_STEP_LINES steps).

    With the character tokenizer this is also the token offset within the target, where a process reward
    head reads its label.
    """
    text = _as_text(generated_target)
    lines = _lines_after(text, SCRATCH_OPEN) if text is not None else None
    return [end for _, end in lines] if lines else []
