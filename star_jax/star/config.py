"""Typed, validated `star` section and STaR experiment config (experiments/configs/star_*.py).

A STaR experiment has every section of the supervised job (star_jax.config) plus `star`, and
`kind = "star"`. Errors name the key: `config.star.growth must be > 0, got -1.0`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from star_jax.config import TASK_PATHS, ExperimentConfig, ModelConfig, from_mapping, model_from_hf, require
from star_jax.config import default_config as config_default
from star_jax.search import SearchConfig, ValueConfig


@dataclasses.dataclass(frozen=True)
class StarConfig:
  """The STaR outer loop (Zelikman et al. 2022, arXiv 2203.14465, Algorithm 1); see star_jax/star/loop.py."""
  iterations: int = 10  # outer-loop iterations N
  base_steps: int = 300  # fine-tuning steps of iteration 1
  growth: float = 1.2  # steps_n = ceil(base_steps * growth^(n-1)): +20% per iteration in the paper
  rationalize: bool = True  # for failures, generate again with the answer as a hint (hint removed when saved)
  restart_from_base: bool = True  # fine-tune every iteration from the base model M (False: from M_{n-1})
  fraction_of_D: float = 1.0  # fraction of the questions D generated on per iteration (resampled each one)
  temperature: float = 0.0  # rationale sampling temperature (0 = greedy)
  max_new_tokens: int = 192  # generation cap (also capped per digit length and by train.seq_len)
  generate_batch_size: int = 256  # prompts decoded together during generation and rationalization
  mix_seed: bool = False  # also fine-tune on the seed examples each iteration (not in Algorithm 1; arithmetic)
  num_shots: int = 0  # few-shot exemplars before each generation prompt (hinted ones when rationalizing)
  seed_per_digit: int = 10  # base model: scratchpads per digit length 2..max_train_digits (+ all 81 1-digit)
  one_digit_repeats: int = 1  # base model: the 81 one-digit seed problems appear this many times (keeps their share)
  carry_fact_digits: int = 0  # base model: + split problems of 2..this many digits showing every x+y+carry (0: none)
  seed_steps: int = 500  # base model: training steps on the seed examples (unused with model.hf_path)
  base_dir: str = ""  # a trained base model's directory (checkpoints/ + train.json, e.g. a tot_game24 study's policy/)
  search: bool = False  # phase 3b: Tree-of-Thoughts search (the `search` and `value` sections) for questions still failed
  search_chunk: int = 256  # questions searched per saved chunk (a killed search phase resumes at its first unsaved chunk)
  eval_samples: int = 0  # held-out: also this many samples per question at eval_temperature (pass@1, pass@k; 0 = off)
  eval_temperature: float = 0.7  # held-out sampling temperature (eval_samples)
  eval_search: bool = False  # held-out: also the same ToT search with M_n (success, tokens per question)
  seed: int = 0  # every rng of the loop derives from (seed, iteration, phase)

  def __post_init__(self):
    for key in ("iterations", "base_steps", "max_new_tokens", "generate_batch_size"):
      require(getattr(self, key) > 0, f"star.{key}", getattr(self, key), "must be > 0")
    for key in ("num_shots", "seed_steps", "eval_samples"):
      require(getattr(self, key) >= 0, f"star.{key}", getattr(self, key), "must be >= 0")
    require(self.growth > 0, "star.growth", self.growth, "must be > 0")
    require(0 < self.fraction_of_D <= 1, "star.fraction_of_D", self.fraction_of_D, "must be in (0, 1]")
    require(self.temperature >= 0, "star.temperature", self.temperature, "must be >= 0")
    require(self.eval_temperature > 0, "star.eval_temperature", self.eval_temperature, "must be > 0 (sampling)")
    require(self.search_chunk > 0, "star.search_chunk", self.search_chunk, "must be > 0")
    require(self.seed_per_digit >= 0, "star.seed_per_digit", self.seed_per_digit, "must be >= 0")
    require(self.one_digit_repeats >= 1, "star.one_digit_repeats", self.one_digit_repeats, "must be >= 1")
    require(self.carry_fact_digits == 0 or self.carry_fact_digits >= 2, "star.carry_fact_digits",
             self.carry_fact_digits, "must be 0 (off) or >= 2")


@dataclasses.dataclass(frozen=True)
class StarExperimentConfig(ExperimentConfig):
  """An ExperimentConfig plus the `star` section; accepted wherever an ExperimentConfig is.

  hf_path (the config's `model.hf_path`): a local Hugging Face model directory whose weights are the base
  model M and whose tokenizer.json tokenizes; `model` then holds the checkpoint's architecture (read from
  its config.json by `star_experiment_from_config`). "" = the character tokenizer and a base model trained
  on arithmetic seed scratchpads (star.make_base_model).
  """
  kind: str = "star"
  star: StarConfig = dataclasses.field(default_factory=StarConfig)
  search: SearchConfig = dataclasses.field(default_factory=SearchConfig)  # ToT settings (star.search, star.eval_search)
  value: ValueConfig = dataclasses.field(default_factory=ValueConfig)  # the search's state value (prm: reward_model_dir)
  hf_path: str = ""

  def __post_init__(self):
    super().__post_init__()
    arithmetic = self.data.task == "arithmetic"
    searching = self.star.search or self.star.eval_search
    require(not searching or self.value.kind != "prm" or bool(self.value.reward_model_dir), "value.reward_model_dir",
             self.value.reward_model_dir, "is required by a search valued by a process reward model (value.kind='prm')")
    require(not searching or self.data.task == "game24", "star.search", self.star.search,
             "needs a task with step lines and exact step checks (game24)")
    if arithmetic:
      require(self.star.seed_per_digit <= self.data.rationales_per_digit, "star.seed_per_digit",
               self.star.seed_per_digit,
               f"must be <= config.data.rationales_per_digit={self.data.rationales_per_digit} "
               "(seed scratchpads are taken from the rationales split, which is disjoint from D and the test sets)")
      require(self.star.num_shots == 0 and self.eval.num_shots == 0, "star.num_shots/eval.num_shots",
               (self.star.num_shots, self.eval.num_shots),
               "must be 0 for arithmetic (its base model is fine-tuned on seed scratchpads instead)")
      require(self.eval.split == "test", "eval.split", self.eval.split, "must be 'test' for arithmetic")
    elif self.data.task == "game24":
      require(bool(self.star.base_dir) and not self.hf_path, "star.base_dir", self.star.base_dir,
               "is required for the game24 task (a base model trained on the seed set: experiments/tot_game24)")
      require(self.eval.split == "test", "eval.split", self.eval.split, "must be 'test' for game24")
      require(self.star.num_shots == 0 and self.eval.num_shots == 0, "star.num_shots/eval.num_shots",
               (self.star.num_shots, self.eval.num_shots), "must be 0 for game24")
      require(not self.star.mix_seed, "star.mix_seed", self.star.mix_seed, "applies to arithmetic only")
    else:
      require(bool(self.hf_path), "model.hf_path", self.hf_path,
               f"is required for the {self.data.task} task (the base model is a pretrained checkpoint)")
      require(f"{self.eval.split}_path" in TASK_PATHS[self.data.task], "eval.split", self.eval.split,
               f"is not a split of the {self.data.task} task")
      require(not self.star.mix_seed, "star.mix_seed", self.star.mix_seed, "applies to arithmetic only")
    require(bool(self.hf_path) or bool(self.star.base_dir) or self.star.seed_steps > 0, "star.seed_steps",
             self.star.seed_steps,
             "must be > 0 to train the base model (or give model.hf_path)")


def star_experiment_from_config(config: Mapping[str, Any], cls: type = StarExperimentConfig):
  """Validate a STaR experiment ConfigDict (the sections of the supervised job plus `star`), or one of a
  subclass `cls` (pg.config.PGExperimentConfig adds `rl`).

  A non-empty `model.hf_path` makes the model section the checkpoint's architecture (`model_from_hf`).
  """
  config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  model_section = dict(config.get("model", {}))
  if model_section.get("hf_path"):
    config["model"], config["hf_path"] = model_from_hf(model_section)
  else:
    model_section.pop("hf_path", None)
    config["model"] = from_mapping(ModelConfig, model_section, "model")
  return from_mapping(cls, config)


def default_config(cls: type = StarExperimentConfig, **sections) -> ml_collections.ConfigDict:
  """Every field of a STaR experiment (or of the subclass `cls`) at its default, as a ConfigDict for config
  files to start from (`config.default_config`; `sections` replaces whole sections); `hf_path` is set as
  `model.hf_path`, so it is left out."""
  return config_default(cls, omit=("hf_path",), **sections)
