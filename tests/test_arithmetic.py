"""Tests for star_jax.data.arithmetic: the STaR scratchpad format and problem sampling."""

import numpy as np
import pytest

from star_jax.data.arithmetic import (
    Problem,
    answer_text,
    parse_question,
    prompt_text,
    question_text,
    sample_problems,
    scratchpad_lines,
    target_text,
)

STAR_EXAMPLE = """Input:
1 5 2 + 7 0 2
Target:
<scratch>
1 5 2 + 7 0 2 , C: 0
5 + 0 , 4 C: 0
1 + 7 , 5 4 C: 0
, 8 5 4 C: 0
0 8 5 4
</scratch>
8 5 4
"""


def test_official_star_example_exactly():
    p = Problem(152, 702)
    assert prompt_text(p) + target_text(p) == STAR_EXAMPLE
    assert question_text(p) == "1 5 2 + 7 0 2"
    assert prompt_text(p) == "Input:\n1 5 2 + 7 0 2\nTarget:\n"
    assert answer_text(p) == "8 5 4"
    assert (p.n_digits, p.answer) == (3, 854)


def test_one_digit_with_final_carry():
    p = Problem(5, 7)
    assert scratchpad_lines(p) == ["5 + 7 , C: 0", ", 2 C: 1", "1 2"]
    assert target_text(p) == "<scratch>\n5 + 7 , C: 0\n, 2 C: 1\n1 2\n</scratch>\n1 2\n"


def test_three_digits_carry_on_every_pair():
    # 478 + 596: 8+6 = 14 (4, carry 1); 7+9+1 = 17 (7, carry 1); 4+5+1 = 10 (0, carry 1) -> 1074.
    assert scratchpad_lines(Problem(478, 596)) == [
        "4 7 8 + 5 9 6 , C: 0",
        "7 + 9 , 4 C: 1",
        "4 + 5 , 7 4 C: 1",
        ", 0 7 4 C: 1",
        "1 0 7 4",
    ]
    assert answer_text(Problem(478, 596)) == "1 0 7 4"


def test_unequal_lengths_are_zero_padded_in_pair_lines():
    p = Problem(999, 1)
    assert p.n_digits == 3
    assert scratchpad_lines(p) == [
        "9 9 9 + 1 , C: 0",
        "9 + 0 , 0 C: 1",
        "9 + 0 , 0 0 C: 1",
        ", 0 0 0 C: 1",
        "1 0 0 0",
    ]
    assert answer_text(p) == "1 0 0 0"


def test_answer_has_no_leading_zero_but_final_scratch_line_does():
    p = Problem(12, 34)
    assert scratchpad_lines(p)[-1] == "0 4 6"
    assert answer_text(p) == "4 6"


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_format_invariants_on_random_problems(n):
    for p in sample_problems(n, 30, seed=1):
        lines = scratchpad_lines(p)
        assert len(lines) == n + 2
        assert lines[0] == f"{question_text(p)} , C: 0"
        assert lines[-1].replace(" ", "") == str(p.answer).zfill(n + 1)
        assert answer_text(p).replace(" ", "") == str(p.a + p.b)
        text = target_text(p)
        assert text.startswith("<scratch>\n") and text.endswith(f"\n</scratch>\n{answer_text(p)}\n")


def test_sample_problems_ranges_distinct_and_deterministic():
    probs = sample_problems(3, 500, seed=7)
    assert len(probs) == len(set(probs)) == 500
    assert all(100 <= p.a < 1000 and 100 <= p.b < 1000 for p in probs)
    assert probs == sample_problems(3, 500, seed=7)
    assert probs != sample_problems(3, 500, seed=8)
    assert all(type(p.a) is int for p in probs)  # numpy ints are converted


def test_sample_problems_respects_exclude():
    excluded = frozenset(sample_problems(2, 4000, seed=0))
    probs = sample_problems(2, 1000, seed=1, exclude=excluded)
    assert len(probs) == 1000 and not set(probs) & excluded
    # Only 8100 - 4000 two-digit problems remain: asking for more returns all of them.
    rest = sample_problems(2, 10_000, seed=1, exclude=excluded)
    assert len(rest) == 4100 and not set(rest) & excluded


def test_one_digit_has_81_problems_returned_in_deterministic_order():
    probs = sample_problems(1, 1000, seed=3)
    assert len(probs) == 81 == len(set(probs))
    assert {(p.a, p.b) for p in probs} == {(a, b) for a in range(1, 10) for b in range(1, 10)}
    assert probs == sample_problems(1, 1000, seed=3)
    assert sample_problems(1, 0, seed=3) == []


def test_sample_problems_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_digits"):
        sample_problems(0, 3, seed=0)
    with pytest.raises(ValueError, match="count"):
        sample_problems(2, -1, seed=0)


def test_problem_validation():
    assert Problem(np.int64(3), np.int32(4)) == Problem(3, 4)
    with pytest.raises(ValueError, match="non-negative"):
        Problem(-1, 2)
    with pytest.raises(TypeError):
        Problem(1.5, 2)
    with pytest.raises(TypeError):
        Problem(True, 2)


def test_parse_question_round_trip():
    for p in [Problem(152, 702), Problem(5, 7), Problem(999, 1), Problem(0, 0), *sample_problems(6, 20, seed=0)]:
        assert parse_question(question_text(p)) == p
    assert parse_question("  1 5 + 2\n") == Problem(15, 2)


@pytest.mark.parametrize(
    "text",
    ["", "1 5 2 +", "+ 1", "15 + 7", "1  5 + 7", "1 5+7", "a + b", "0 5 + 1", "\u0661 + \u0662", "1 + 2 + 3",
     "1 - 2", "9 " * 2000 + "+ 1", None, b"1 + 2"],
)
def test_parse_question_rejects_malformed(text):
    assert parse_question(text) is None
