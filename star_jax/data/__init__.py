"""Tasks, tokenizers, verifiers and grain input pipelines.

The light modules (tokenizer, arithmetic, verifiers) are imported eagerly; the TFDS builder and the grain
pipeline (which pull in tensorflow_datasets, grain and jax) are imported on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from star_jax.data.tokenizer import CharTokenizer
from star_jax.data.verifiers import (
    NO_ANSWER,
    StepCheck,
    check_steps,
    expected_num_steps,
    expected_step_lines,
    extract_answer,
    is_correct,
    step_end_offsets,
)

if TYPE_CHECKING:
    from star_jax.data.arithmetic_tfds import (
        Arithmetic,
        ArithmeticBuilderConfig,
        build_arithmetic,
        build_arithmetic_for,
    )
    from star_jax.data.hf_tokenizer import HFTokenizer
    from star_jax.data.pipeline import encode_example, make_eval_problems, make_train_dataset

_LAZY = {
    "Arithmetic": "star_jax.data.arithmetic_tfds",
    "ArithmeticBuilderConfig": "star_jax.data.arithmetic_tfds",
    "build_arithmetic": "star_jax.data.arithmetic_tfds",
    "build_arithmetic_for": "star_jax.data.arithmetic_tfds",
    "encode_example": "star_jax.data.pipeline",
    "make_eval_problems": "star_jax.data.pipeline",
    "make_train_dataset": "star_jax.data.pipeline",
    "HFTokenizer": "star_jax.data.hf_tokenizer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'star_jax.data' has no attribute {name!r}")


__all__ = [
    "NO_ANSWER",
    "Arithmetic",
    "HFTokenizer",
    "ArithmeticBuilderConfig",
    "build_arithmetic_for",
    "CharTokenizer",
    "Problem",
    "StepCheck",
    "answer_text",
    "build_arithmetic",
    "check_steps",
    "encode_example",
    "expected_num_steps",
    "expected_step_lines",
    "extract_answer",
    "is_correct",
    "make_eval_problems",
    "make_train_dataset",
    "parse_question",
    "prompt_text",
    "question_text",
    "sample_problems",
    "scratchpad_lines",
    "step_end_offsets",
    "target_text",
]
