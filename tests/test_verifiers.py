"""Tests for star_jax.data.verifiers: answer extraction and per-step checks."""

import numpy as np
import pytest

from star_jax.data.arithmetic import Problem, sample_problems, target_text
from star_jax.data.verifiers import (
    NO_ANSWER,
    check_steps,
    expected_num_steps,
    expected_step_lines,
    extract_answer,
    is_correct,
    step_end_offsets,
)

P = Problem(152, 702)
GOOD = target_text(P)  # steps: 0 question, 1-2 pairs, 3 last sum, 4 final, 5 </scratch>, 6 answer


def _replace_line(text: str, step: int, new: str) -> str:
    """Replaces step line `step` (0 = the line after <scratch>) of a well-formed target."""
    lines = text.split("\n")
    lines[step + 1] = new
    return "\n".join(lines)


def _flags(checks):
    return [(c.valid, c.correct) for c in checks]


def test_extract_answer_examples():
    assert extract_answer(GOOD) == 854
    assert extract_answer("</scratch>\n\n  8 5 4  \nmore") == 854
    assert extract_answer("junk </scratch>8 5 4") == 854  # rest of the tag's line counts as a line
    assert extract_answer(GOOD.encode()) == 854
    assert extract_answer("</scratch>\n0\n") == 0


@pytest.mark.parametrize(
    "text",
    ["", "8 5 4", "<scratch>\n8 5 4\n", "</scratch>\n", "</scratch>\n\n\n", "</scratch>\n8 5 x", "</scratch>\n854x",
     "</scratch>\nabc", "</scratch>\n8  5 4", "</scratch>\n0 8 5 4", "</scratch>\n-8 5 4", "</scratch>\n8,5,4",
     "</scratch>\n__import__('os')", "</scratch>\n" + "9 " * 100_000, "</scratch>\n\u0668 \u0665",
     b"\xff\xfe</scratch>\n1", None, 854],
)
def test_extract_answer_rejects_garbage(text):
    assert extract_answer(text) is NO_ANSWER


def test_is_correct():
    assert is_correct(P, GOOD)
    assert not is_correct(P, GOOD.replace("</scratch>\n8 5 4", "</scratch>\n8 5 5"))
    assert not is_correct(P, "")
    for p in sample_problems(4, 20, seed=0):
        assert is_correct(p, target_text(p)) and not is_correct(Problem(p.a + 1, p.b), target_text(p))


@pytest.mark.parametrize("p", [P, Problem(5, 7), Problem(999, 1), Problem(478, 596), Problem(0, 0),
                               *sample_problems(5, 10, seed=2), *sample_problems(8, 5, seed=2)])
def test_true_target_round_trips_all_correct(p):
    checks = check_steps(p, target_text(p))
    assert len(checks) == expected_num_steps(p) == p.n_digits + 4
    assert [c.index for c in checks] == list(range(len(checks)))
    assert [c.text for c in checks] == expected_step_lines(p)
    assert all(c.valid and c.correct for c in checks)


@pytest.mark.parametrize(
    "step, new_line",
    [
        (0, "1 5 2 + 7 0 3 , C: 0"),  # wrong operand digit
        (0, "1 5 2 + 7 0 2 , C: 1"),  # wrong initial carry
        (1, "5 + 1 , 4 C: 0"),  # wrong pair digit
        (1, "5 + 0 , 5 C: 0"),  # wrong partial sum
        (2, "1 + 7 , 5 4 C: 1"),  # wrong carry
        (2, "1 + 7 , 4 C: 0"),  # partial sum too short
        (3, ", 8 5 4 C: 1"),
        (3, ", 9 5 4 C: 0"),
        (4, "1 8 5 4"),
        (4, "8 5 4"),  # final line without the carry digit
        (6, "8 5 5"),  # wrong answer
        (6, "0 8 5 4"),  # answer with a leading zero
    ],
)
def test_wrong_numbers_are_valid_but_incorrect_at_that_index(step, new_line):
    checks = check_steps(P, _replace_line(GOOD, step, new_line))
    assert len(checks) == expected_num_steps(P)
    for c in checks:
        assert (c.valid, c.correct) == ((True, False) if c.index == step else (True, True)), c
    assert checks[step].text == new_line


@pytest.mark.parametrize(
    "step, new_line",
    [
        (0, "1 5 2 + 7 0 2 C: 0"),
        (0, "152 + 702 , C: 0"),
        (1, "5 + 0 , 4 C 0"),
        (1, "5 + 0 ,4 C: 0"),
        (1, ", 4 C: 0"),  # the last-sum form at a pair position
        (2, "1 + 7 , 5 4 C: x"),
        (3, "8 5 4 C: 0"),
        (4, "0 8 5 4 C: 0"),
        (5, "</scratch >"),
        (6, "eight"),
    ],
)
def test_malformed_lines_are_invalid_at_that_index(step, new_line):
    checks = check_steps(P, _replace_line(GOOD, step, new_line))
    assert [c.index for c in checks if not c.valid] == [step]
    assert not checks[step].correct
    assert all(c.correct for c in checks if c.index != step)


def test_extra_lines_are_invalid_and_missing_lines_are_absent():
    checks = check_steps(P, GOOD + "8 5 4\nInput:\n")
    assert _flags(checks[-2:]) == [(False, False), (False, False)]
    assert all(c.correct for c in checks[:-2])
    truncated = "<scratch>\n1 5 2 + 7 0 2 , C: 0\n5 + 0 , 4 C: 0\n1 + 7 , 5"
    assert _flags(check_steps(P, truncated)) == [(True, True), (True, True), (False, False)]
    # A skipped line shifts every later one: each is checked against its position.
    skipped = _replace_line(GOOD, 1, "").replace("\n\n", "\n")
    assert _flags(check_steps(P, skipped))[:3] == [(True, True), (True, False), (False, False)]


def test_blank_lines_are_not_steps():
    spaced = GOOD.replace("\n", "\n\n")
    assert _flags(check_steps(P, spaced)) == _flags(check_steps(P, GOOD))


@pytest.mark.parametrize(
    "text",
    ["", "no tags at all", "</scratch>\n8 5 4", "<scratch>", "<scratch>\n\n\n", "</scratch>\n__import__('os')",
     "<scratch>\n__import__('os').system('echo hi')\n</scratch>\n__import__('os')",
     "<scratch>\n" + "9 " * 200_000 + "\n" * 10_000 + "x" * 100_000, None, 123],
)
def test_malformed_text_never_raises(text):
    checks = check_steps(P, text)
    assert isinstance(checks, list)
    assert not any(c.correct for c in checks)
    assert extract_answer(text) in (NO_ANSWER, 854)


def test_random_bytes_never_raise():
    rng = np.random.default_rng(0)
    for _ in range(200):
        raw = rng.integers(0, 256, size=int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        for text in (raw, raw.decode("latin-1"), "<scratch>\n" + raw.decode("latin-1") + "</scratch>\n"):
            assert extract_answer(text) is NO_ANSWER or isinstance(extract_answer(text), int)
            assert not any(c.correct for c in check_steps(P, text))


def test_step_end_offsets_point_at_each_step_newline():
    text = "<scratch>\n\n" + GOOD[len("<scratch>\n"):] + "8 5"  # a blank line and an unterminated extra step
    ends = step_end_offsets(text)
    checks = check_steps(P, text)
    assert len(ends) == len(checks) == expected_num_steps(P) + 1
    for c, end in zip(checks[:-1], ends):
        assert text[end] == "\n" and text[:end].endswith(c.text)
    assert ends[-1] == len(text)
    assert step_end_offsets("no scratch") == [] and step_end_offsets(None) == []
