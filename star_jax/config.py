"""Typed, validated views of the ml_collections configs in experiments/configs/.

Configs are edited as `ConfigDict`s (Python files, command-line overrides); at the module boundary they
are converted once into frozen dataclasses here, which reject unknown keys and invalid values with an
error naming the key (`config.train.lr must be > 0, got -1.0`). Library code never reads ConfigDicts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from star_jax.data import tasks
from star_jax.models.config import ModelConfig

# The local files each task's TFDS builder reads (config.data.<split>_path); arithmetic generates its data.
TASK_PATHS = {"arithmetic": (), "gsm8k": ("train_path", "test_path"),
              "commonsense_qa": ("train_path", "validation_path", "test_path", "few_shot_path")}


@dataclasses.dataclass(frozen=True)
class DataConfig:
  task: str = "arithmetic"  # a registered task (star_jax.data.tasks.get_task): arithmetic, gsm8k, commonsense_qa
  data_dir: str = ""  # TFDS data dir; "" means <workdir>/data
  train_path: str = ""  # gsm8k / commonsense_qa: the user's local train JSONL (STaR's D); required for them
  validation_path: str = ""  # commonsense_qa: the labeled dev JSONL ("" = none)
  test_path: str = ""  # gsm8k / commonsense_qa: the test JSONL ("" = none)
  few_shot_path: str = ""  # commonsense_qa: exemplars with a "rationale" on every line ("" = none)
  # the digit fields below apply to the arithmetic task only
  max_train_digits: int = 5  # training operands have 1..max_train_digits digits
  max_test_digits: int = 8  # held-out splits for 1..max_test_digits (length generalisation beyond train)
  rationales_per_digit: int = 20_000  # examples with full scratchpads per digit length
  questions_per_digit: int = 2_000  # STaR dataset D (questions + answers, no rationale) per digit length
  test_per_digit: int = 100  # held-out questions per digit length
  pack: bool = True  # pack several examples per row (per-example attention masks) instead of padding
  seed: int = 0  # data generation seed

  def __post_init__(self):
    _require(self.task in TASK_PATHS and self.task in tasks.task_names(), "data.task", self.task,
             f"must be one of {sorted(TASK_PATHS)}")
    for key in ("train_path", "validation_path", "test_path", "few_shot_path"):
      _require(key in TASK_PATHS[self.task] or not getattr(self, key), f"data.{key}", getattr(self, key),
               f"is not read by the {self.task} task (it reads {list(TASK_PATHS[self.task]) or 'no files'})")
    _require(self.task == "arithmetic" or bool(self.train_path), "data.train_path", self.train_path,
             f"is required for the {self.task} task (a local JSONL file; nothing is downloaded)")
    _require(1 <= self.max_train_digits <= self.max_test_digits, "data.max_train_digits", self.max_train_digits,
             f"must be in [1, data.max_test_digits={self.max_test_digits}]")
    for key in ("rationales_per_digit", "questions_per_digit", "test_per_digit"):
      _require(getattr(self, key) > 0, f"data.{key}", getattr(self, key), "must be > 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  batch_size: int = 32  # global batch (rows); split over the mesh's data x fsdp axes and processes
  seq_len: int = 128  # tokens per row
  steps: int = 1000  # optimizer updates
  lr: float = 2e-3  # peak learning rate
  warmup_steps: int = 100  # linear warmup from 0
  decay: str = "cosine"  # after warmup: "cosine" (to lr * min_lr_ratio) or "constant"
  min_lr_ratio: float = 0.1  # final lr / peak lr for cosine decay
  weight_decay: float = 0.01  # AdamW decoupled weight decay
  b1: float = 0.9
  b2: float = 0.99
  grad_clip: float = 1.0  # global-norm clipping threshold; 0 disables
  grad_accum_steps: int = 1  # micro-batches per update (batch_size must divide evenly)
  seed: int = 0  # init + per-step rng seed
  log_every: int = 50  # steps between metric writes

  def __post_init__(self):
    for key in ("batch_size", "seq_len", "steps", "grad_accum_steps", "log_every"):
      _require(getattr(self, key) > 0, f"train.{key}", getattr(self, key), "must be > 0")
    _require(self.lr > 0, "train.lr", self.lr, "must be > 0")
    _require(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "must be >= 0")
    _require(self.decay in ("cosine", "constant"), "train.decay", self.decay, "must be 'cosine' or 'constant'")
    _require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
    _require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
    _require(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "train.b1/b2", (self.b1, self.b2), "must be in [0, 1)")
    _require(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "must be >= 0")
    _require(self.batch_size % self.grad_accum_steps == 0, "train.grad_accum_steps", self.grad_accum_steps,
             f"must divide train.batch_size={self.batch_size}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every_steps: int = 500  # save every N steps (and always at the end)
  keep: int = 2  # checkpoints kept on disk

  def __post_init__(self):
    _require(self.every_steps > 0, "checkpoint.every_steps", self.every_steps, "must be > 0")
    _require(self.keep > 0, "checkpoint.keep", self.keep, "must be > 0")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  batch_size: int = 256  # prompts decoded together
  max_new_tokens: int = 160  # generation cap (an 8-digit scratchpad is ~150 characters)
  split: str = "test"  # held-out split (arithmetic: the test_<n>digit splits; commonsense_qa: also "validation")
  num_shots: int = 0  # few-shot exemplars before each held-out question (STaR tasks with exemplars only)

  def __post_init__(self):
    _require(self.batch_size > 0, "eval.batch_size", self.batch_size, "must be > 0")
    _require(self.max_new_tokens > 0, "eval.max_new_tokens", self.max_new_tokens, "must be > 0")
    _require(self.split in ("test", "validation"), "eval.split", self.split, "must be 'test' or 'validation'")
    _require(self.num_shots >= 0, "eval.num_shots", self.num_shots, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  axes: tuple[tuple[str, int], ...] = (("data", -1), ("fsdp", 1), ("tensor", 1))

  def __post_init__(self):
    names = sorted(name for name, _ in self.axes)
    _require(names == ["data", "fsdp", "tensor"], "mesh.axes", self.axes, "must name data, fsdp and tensor once each")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  model: ModelConfig
  data: DataConfig
  train: TrainConfig
  checkpoint: CheckpointConfig
  eval: EvalConfig
  mesh: MeshConfig


@dataclasses.dataclass(frozen=True)
class StarConfig:
  """The STaR outer loop (Zelikman et al. 2022, arXiv 2203.14465, Algorithm 1); see star_jax/star.py."""
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
  seed: int = 0  # every rng of the loop derives from (seed, iteration, phase)

  def __post_init__(self):
    for key in ("iterations", "base_steps", "max_new_tokens", "generate_batch_size"):
      _require(getattr(self, key) > 0, f"star.{key}", getattr(self, key), "must be > 0")
    for key in ("num_shots", "seed_steps"):
      _require(getattr(self, key) >= 0, f"star.{key}", getattr(self, key), "must be >= 0")
    _require(self.growth > 0, "star.growth", self.growth, "must be > 0")
    _require(0 < self.fraction_of_D <= 1, "star.fraction_of_D", self.fraction_of_D, "must be in (0, 1]")
    _require(self.temperature >= 0, "star.temperature", self.temperature, "must be >= 0")
    _require(self.seed_per_digit >= 0, "star.seed_per_digit", self.seed_per_digit, "must be >= 0")
    _require(self.one_digit_repeats >= 1, "star.one_digit_repeats", self.one_digit_repeats, "must be >= 1")
    _require(self.carry_fact_digits == 0 or self.carry_fact_digits >= 2, "star.carry_fact_digits",
             self.carry_fact_digits, "must be 0 (off) or >= 2")


@dataclasses.dataclass(frozen=True)
class StarExperimentConfig(ExperimentConfig):
  """An ExperimentConfig plus the `star` section; accepted wherever an ExperimentConfig is.

  hf_path (the config's `model.hf_path`): a local Hugging Face model directory whose weights are the base
  model M and whose tokenizer.json tokenizes; `model` then holds the checkpoint's architecture (read from
  its config.json by `star_experiment_from_config`). "" = the character tokenizer and a base model trained
  on arithmetic seed scratchpads (star.make_base_model).
  """
  star: StarConfig = dataclasses.field(default_factory=StarConfig)
  hf_path: str = ""

  def __post_init__(self):
    arithmetic = self.data.task == "arithmetic"
    if arithmetic:
      _require(self.star.seed_per_digit <= self.data.rationales_per_digit, "star.seed_per_digit",
               self.star.seed_per_digit,
               f"must be <= config.data.rationales_per_digit={self.data.rationales_per_digit} "
               "(seed scratchpads are taken from the rationales split, which is disjoint from D and the test sets)")
      _require(self.star.num_shots == 0 and self.eval.num_shots == 0, "star.num_shots/eval.num_shots",
               (self.star.num_shots, self.eval.num_shots),
               "must be 0 for arithmetic (its base model is fine-tuned on seed scratchpads instead)")
      _require(self.eval.split == "test", "eval.split", self.eval.split, "must be 'test' for arithmetic")
    else:
      _require(bool(self.hf_path), "model.hf_path", self.hf_path,
               f"is required for the {self.data.task} task (the base model is a pretrained checkpoint)")
      _require(f"{self.eval.split}_path" in TASK_PATHS[self.data.task], "eval.split", self.eval.split,
               f"is not a split of the {self.data.task} task")
      _require(not self.star.mix_seed, "star.mix_seed", self.star.mix_seed, "applies to arithmetic only")
    _require(bool(self.hf_path) or self.star.seed_steps > 0, "star.seed_steps", self.star.seed_steps,
             "must be > 0 to train the base model (or give model.hf_path)")


def _require(ok: bool, key: str, value: Any, message: str) -> None:
  if not ok:
    raise ValueError(f"config.{key} {message}, got {value!r}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
  """Convert a ConfigDict leaf to the dataclass field's type, or raise naming the key."""
  origin = typing.get_origin(annotation)
  if annotation is bool:
    if not isinstance(value, bool):
      raise ValueError(f"config.{key} must be a bool, got {value!r}")
    return value
  if annotation is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ValueError(f"config.{key} must be an int, got {value!r}")
    return value
  if annotation is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ValueError(f"config.{key} must be a number, got {value!r}")
    return float(value)
  if annotation is str:
    if not isinstance(value, str):
      raise ValueError(f"config.{key} must be a string, got {value!r}")
    return value
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise ValueError(f"config.{key} must be a list, got {value!r}")
    args = typing.get_args(annotation)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
      raise ValueError(f"config.{key} must have {len(args)} entries, got {value!r}")
    return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
  return value


def dataclass_from_mapping(cls, mapping: Mapping[str, Any], prefix: str):
  """Build dataclass `cls` from a (Config)dict; unknown keys and wrong types raise naming the key."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(mapping) - set(fields))
  if unknown:
    raise ValueError(f"unknown config key(s) {', '.join(f'config.{prefix}.{k}' for k in unknown)}; "
                     f"valid keys: {sorted(fields)}")
  hints = typing.get_type_hints(cls)
  kwargs = {name: _coerce(mapping[name], hints[name], f"{prefix}.{name}") for name in fields if name in mapping}
  return cls(**kwargs)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "checkpoint": CheckpointConfig,
             "eval": EvalConfig, "mesh": MeshConfig}


def experiment_from_config(config: Mapping[str, Any]) -> ExperimentConfig:
  """Validate a whole experiment ConfigDict (sections model/data/train/checkpoint/eval/mesh)."""
  config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  unknown = sorted(set(config) - set(_SECTIONS))
  if unknown:
    raise ValueError(f"unknown config section(s) {unknown}; valid sections: {sorted(_SECTIONS)}")
  return ExperimentConfig(**{name: dataclass_from_mapping(cls, config.get(name, {}), name)
                             for name, cls in _SECTIONS.items()})


_HF_MODEL_KEYS = ("dtype", "param_dtype")  # the model keys that may be set beside model.hf_path


def model_from_hf(mapping: Mapping[str, Any]) -> tuple[ModelConfig, str]:
  """(ModelConfig, hf_path) of a model section `{"hf_path": dir, "dtype"?: ..., "param_dtype"?: ...}`.

  The architecture comes from `<hf_path>/config.json` (star_jax.models.hf.config_from_hf); dtype and
  param_dtype default to the checkpoint's torch_dtype. Any other key raises (it would be ignored).
  """
  from star_jax.models import hf  # noqa: PLC0415 (pulls in jax and safetensors)
  mapping = dict(mapping)
  path = _coerce(mapping.pop("hf_path"), str, "model.hf_path")
  other = sorted(set(mapping) - set(_HF_MODEL_KEYS))
  if other:
    raise ValueError(f"config.model.{other[0]} cannot be set with config.model.hf_path={path!r}: the architecture "
                     f"comes from its config.json (only {', '.join(_HF_MODEL_KEYS)} may be set)")
  try:
    model = hf.read_config(path)
  except hf.CheckpointError as e:
    raise ValueError(f"config.model.hf_path: {e}") from None
  overrides = {k: _coerce(v, str, f"model.{k}") for k, v in mapping.items()}
  try:
    return dataclasses.replace(model, **overrides), path
  except ValueError as e:
    raise ValueError(f"config.{e}") from None


def star_experiment_from_config(config: Mapping[str, Any]) -> StarExperimentConfig:
  """Validate a STaR experiment ConfigDict (the sections of `experiment_from_config` plus `star`).

  A non-empty `model.hf_path` makes the model section the checkpoint's architecture (`model_from_hf`).
  """
  config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  sections = {**_SECTIONS, "star": StarConfig}
  unknown = sorted(set(config) - set(sections))
  if unknown:
    raise ValueError(f"unknown config section(s) {unknown}; valid sections: {sorted(sections)}")
  kwargs = {name: dataclass_from_mapping(cls, config.get(name, {}), name)
            for name, cls in sections.items() if name != "model"}
  model_section = config.get("model", {})
  if model_section.get("hf_path"):
    kwargs["model"], kwargs["hf_path"] = model_from_hf(model_section)
  else:
    kwargs["model"] = dataclass_from_mapping(ModelConfig, {k: v for k, v in model_section.items() if k != "hf_path"},
                                             "model")
  return StarExperimentConfig(**kwargs)


def changed_fields(saved: Mapping[str, Any], cfg, sections: Sequence[str],
                   ignored: frozenset | set = frozenset()) -> list[str]:
  """`config.<section>.<key>: old -> new` for every field of `cfg`'s sections that differs from `saved`
  (a run's config as JSON); a field missing from `saved` (added since it was written) counts as its
  default. `ignored` holds (section, key) pairs that may change between runs of one workdir."""
  current = json.loads(json.dumps(dataclasses.asdict(cfg)))
  differ = []
  for section in sections:
    defaults = json.loads(json.dumps(field_defaults(type(getattr(cfg, section)))))
    for key, value in current[section].items():
      old = saved.get(section, {}).get(key, defaults.get(key))
      if (section, key) not in ignored and old != value:
        differ.append(f"config.{section}.{key}: {old!r} -> {value!r}")
  return differ


def field_defaults(cls) -> dict[str, Any]:
  """{field name: default value} of a dataclass (fields without a default are left out)."""
  out = {}
  for f in dataclasses.fields(cls):
    if f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      out[f.name] = f.default_factory()
  return out
