"""TFDS builder for the STaR arithmetic task, written as array_record (readable without TensorFlow).

Splits (n = number of digits of both operands):
  rationales           full scratchpads, n = 1..max_train_digits: the seed / fine-tuning data.
  questions            STaR's dataset D: question and answer only (`target` is the empty string).
  test_<n>digit        held-out problems, n = 1..max_test_digits.

For n >= 2 the three kinds are pairwise disjoint: test problems are drawn first (so the test sets do not
change when the train sizes do), then rationales excluding them, then questions excluding both. A split
gets fewer problems than asked when fewer remain (n = 2 has only 8100 problems). For n = 1 only 81
problems exist, so the 1-digit train and test splits are drawn independently and DO overlap.

Read with `builder.as_data_source(split)` (or `tfds.data_source`): text features come back as bytes.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from star_jax.data.arithmetic import Problem, answer_text, prompt_text, sample_problems, target_text
from star_jax.data.local_builder import ArrayRecordBuilder, prepare

_STREAMS = {"test": 0, "rationales": 1, "questions": 2}  # independent rng streams per split kind


@dataclasses.dataclass(eq=False)
class ArithmeticBuilderConfig(tfds.core.BuilderConfig):
    """Sizes and seed of the generated data. `name` is derived from the parameters when left empty, so
    builders with different parameters live in different directories."""

    name: str = ""
    max_train_digits: int = 5
    max_test_digits: int = 8
    rationales_per_digit: int = 2_000
    questions_per_digit: int = 10_000
    test_per_digit: int = 1_000
    seed: int = 0

    def __post_init__(self) -> None:
        sizes = (self.rationales_per_digit, self.questions_per_digit, self.test_per_digit, self.seed)
        if min(sizes) < 0:
            raise ValueError(f"ArithmeticBuilderConfig: sizes and seed must be >= 0, got {self}")
        if not 1 <= self.max_train_digits <= 18 or not 1 <= self.max_test_digits <= 18:
            raise ValueError(f"ArithmeticBuilderConfig: digit counts must be in [1, 18], got {self}")
        if not self.name:
            self.name = (
                f"train{self.max_train_digits}_test{self.max_test_digits}_r{self.rationales_per_digit}"
                f"_q{self.questions_per_digit}_t{self.test_per_digit}_seed{self.seed}"
            )


def _stream_seed(seed: int, stream: str) -> int:
    return seed * len(_STREAMS) + _STREAMS[stream]


def _split_problems(config: ArithmeticBuilderConfig) -> dict[str, list[Problem]]:
    """All problems of all splits, deterministic in the config (see module docstring for disjointness)."""
    out: dict[str, list[Problem]] = {"rationales": [], "questions": []}
    test: dict[int, frozenset[Problem]] = {}
    for n in range(1, config.max_test_digits + 1):
        problems = sample_problems(n, config.test_per_digit, _stream_seed(config.seed, "test"))
        out[f"test_{n}digit"] = problems
        test[n] = frozenset(problems)
    for n in range(1, config.max_train_digits + 1):
        exclude = test.get(n, frozenset()) if n >= 2 else frozenset()
        rationales = sample_problems(
            n, config.rationales_per_digit, _stream_seed(config.seed, "rationales"), exclude
        )
        if n >= 2:
            exclude = exclude | frozenset(rationales)
        questions = sample_problems(n, config.questions_per_digit, _stream_seed(config.seed, "questions"), exclude)
        out["rationales"] += rationales
        out["questions"] += questions
    return out


class Arithmetic(ArrayRecordBuilder):
    """n-digit addition with Nye et al. scratchpads, in the format of the STaR data (arXiv 2203.14465)."""

    BUILDER_CONFIGS = [ArithmeticBuilderConfig()]

    def __init__(self, *, config: ArithmeticBuilderConfig | str | None = None, **kwargs) -> None:
        if isinstance(config, ArithmeticBuilderConfig):
            registered = self.get_builder_config(config.name)
            if registered is not None:  # same parameters; TFDS insists on the registered instance
                config = registered
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly: dataset_info_from_configs fails for builders outside a registered TFDS package.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "a": np.int64,
                    "b": np.int64,
                    "n_digits": np.int32,
                    "prompt": tfds.features.Text(),
                    "target": tfds.features.Text(),
                    "answer": tfds.features.Text(),
                }
            ),
            disable_shuffling=True,  # problems are already in random order; keeps generation fast
            homepage="https://arxiv.org/abs/2203.14465",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        problems = _split_problems(self.builder_config)
        return {
            name: self._generate_examples(probs, with_rationale=(name != "questions"))
            for name, probs in problems.items()
        }

    def _generate_examples(self, problems: list[Problem], with_rationale: bool):
        for i, p in enumerate(problems):
            yield i, {
                "a": p.a,
                "b": p.b,
                "n_digits": p.n_digits,
                "prompt": prompt_text(p),
                "target": target_text(p) if with_rationale else "",
                "answer": answer_text(p),
            }


def build_arithmetic(
    data_dir: str | os.PathLike, config: ArithmeticBuilderConfig | None = None, **config_kwargs
) -> Arithmetic:
    """Generates the dataset under `data_dir` if needed (idempotent, no network) and returns the builder.

    Either pass `config` or its fields as keyword arguments (e.g. `rationales_per_digit=100`).
    """
    if config is not None and config_kwargs:
        raise ValueError(f"build_arithmetic: pass `config` or config fields, not both (got {sorted(config_kwargs)})")
    if config is None:
        config = ArithmeticBuilderConfig(**config_kwargs)
    return prepare(Arithmetic(data_dir=os.fspath(data_dir), config=config))


def build_arithmetic_for(data_config, workdir: str) -> Arithmetic:
  """`build_arithmetic` with the fields of a star_jax.config.DataConfig (data under data_dir, "" meaning
  <workdir>/data): the dataset of the supervised job, the STaR loop and the policy-gradient loop."""
  d = data_config
  return build_arithmetic(d.data_dir or os.path.join(workdir, "data"), max_train_digits=d.max_train_digits,
                          max_test_digits=d.max_test_digits, rationales_per_digit=d.rationales_per_digit,
                          questions_per_digit=d.questions_per_digit, test_per_digit=d.test_per_digit, seed=d.seed)
