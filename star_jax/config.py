"""Typed, validated views of the ml_collections configs in experiments/configs/.

Configs are edited as `ConfigDict`s (Python files, command-line overrides); at the module boundary they
are converted once into frozen dataclasses here, which reject unknown keys and invalid values with an
error naming the key (`config.train.lr must be > 0, got -1.0`). Library code never reads ConfigDicts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

from star_jax import io
from star_jax.data import tasks
from star_jax.models import hf
from star_jax.models.config import ModelConfig

# The local files each task's TFDS builder reads (config.data.<split>_path); arithmetic and the Game of 24
# generate their data.
TASK_PATHS = {"arithmetic": (), "game24": (), "gsm8k": ("train_path", "test_path"),
              "commonsense_qa": ("train_path", "validation_path", "test_path", "few_shot_path")}
GENERATED_TASKS = tuple(t for t, paths in TASK_PATHS.items() if not paths)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  task: str = "arithmetic"  # a registered task (star_jax.data.tasks.get_task): arithmetic, game24, gsm8k, commonsense_qa
  data_dir: str = ""  # TFDS data dir; "" means <workdir>/data
  train_path: str = ""  # gsm8k / commonsense_qa: the user's local train JSONL (STaR's D); required for them
  validation_path: str = ""  # commonsense_qa: the labeled dev JSONL ("" = none)
  test_path: str = ""  # gsm8k / commonsense_qa: the test JSONL ("" = none)
  few_shot_path: str = ""  # commonsense_qa: exemplars with a "rationale" on every line ("" = none)
  test_size: int = 0  # game24: held-out puzzles evaluated, the first of game24.split()'s test list (0 = all 362)
  # the digit fields below apply to the arithmetic task only
  max_train_digits: int = 5  # training operands have 1..max_train_digits digits
  max_test_digits: int = 8  # held-out splits for 1..max_test_digits (length generalisation beyond train)
  rationales_per_digit: int = 20_000  # examples with full scratchpads per digit length
  questions_per_digit: int = 2_000  # STaR dataset D (questions + answers, no rationale) per digit length
  test_per_digit: int = 100  # held-out questions per digit length
  pack: bool = True  # pack several examples per row (per-example attention masks) instead of padding
  seed: int = 0  # data generation seed

  def __post_init__(self):
    require(self.task in TASK_PATHS and self.task in tasks.task_names(), "data.task", self.task,
             f"must be one of {sorted(TASK_PATHS)}")
    for key in ("train_path", "validation_path", "test_path", "few_shot_path"):
      require(key in TASK_PATHS[self.task] or not getattr(self, key), f"data.{key}", getattr(self, key),
               f"is not read by the {self.task} task (it reads {list(TASK_PATHS[self.task]) or 'no files'})")
    require(self.task in GENERATED_TASKS or bool(self.train_path), "data.train_path", self.train_path,
             f"is required for the {self.task} task (a local JSONL file; nothing is downloaded)")
    require(1 <= self.max_train_digits <= self.max_test_digits, "data.max_train_digits", self.max_train_digits,
             f"must be in [1, data.max_test_digits={self.max_test_digits}]")
    for key in ("rationales_per_digit", "questions_per_digit", "test_per_digit"):
      require(getattr(self, key) > 0, f"data.{key}", getattr(self, key), "must be > 0")
    require(self.test_size >= 0, "data.test_size", self.test_size, "must be >= 0")


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
  # "band": packed rows whose examples all fit the band (<= 65 tokens) attend block-banded (exact; 1.06-1.16x the
  # demo SFT step, benchmarks/RESULTS.md), other rows densely; compiles both paths. "dense": full masked scores.
  attention: str = "dense"

  def __post_init__(self):
    require(self.attention in ("dense", "band"), "train.attention", self.attention, "must be 'dense' or 'band'")
    for key in ("batch_size", "seq_len", "steps", "grad_accum_steps", "log_every"):
      require(getattr(self, key) > 0, f"train.{key}", getattr(self, key), "must be > 0")
    require(math.isfinite(self.lr), "train.lr", self.lr, "must be a finite number")
    require(self.lr > 0, "train.lr", self.lr, "must be > 0")
    require(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "must be >= 0")
    require(self.decay in ("cosine", "constant"), "train.decay", self.decay, "must be 'cosine' or 'constant'")
    require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
    require(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "must be >= 0")
    require(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "train.b1/b2", (self.b1, self.b2), "must be in [0, 1)")
    require(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "must be >= 0")
    require(self.batch_size % self.grad_accum_steps == 0, "train.grad_accum_steps", self.grad_accum_steps,
             f"must divide train.batch_size={self.batch_size}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every_steps: int = 500  # save every N steps (and always at the end)
  keep: int = 2  # checkpoints kept on disk

  def __post_init__(self):
    require(self.every_steps > 0, "checkpoint.every_steps", self.every_steps, "must be > 0")
    require(self.keep > 0, "checkpoint.keep", self.keep, "must be > 0")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  batch_size: int = 256  # prompts decoded together
  max_new_tokens: int = 160  # generation cap (an 8-digit scratchpad is ~150 characters)
  split: str = "test"  # held-out split (arithmetic: the test_<n>digit splits; commonsense_qa: also "validation")
  num_shots: int = 0  # few-shot exemplars before each held-out question (STaR tasks with exemplars only)

  def __post_init__(self):
    require(self.batch_size > 0, "eval.batch_size", self.batch_size, "must be > 0")
    require(self.max_new_tokens > 0, "eval.max_new_tokens", self.max_new_tokens, "must be > 0")
    require(self.split in ("test", "validation"), "eval.split", self.split, "must be 'test' or 'validation'")
    require(self.num_shots >= 0, "eval.num_shots", self.num_shots, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  axes: tuple[tuple[str, int], ...] = (("data", -1), ("fsdp", 1), ("tensor", 1))

  def __post_init__(self):
    names = sorted(name for name, _ in self.axes)
    require(names == ["data", "fsdp", "tensor"], "mesh.axes", self.axes, "must name data, fsdp and tensor once each")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """The supervised job (`kind = "sft"`, star_jax/sft.py); every other experiment extends it.

  `kind` picks the job in star_jax.main ("sft", "star", "pg"); each subclass sets its own default and
  accepts no other value.
  """
  model: ModelConfig
  data: DataConfig
  train: TrainConfig
  checkpoint: CheckpointConfig
  eval: EvalConfig
  mesh: MeshConfig
  kind: str = "sft"

  def __post_init__(self):
    default = field_defaults(type(self))["kind"]
    require(self.kind == default, "kind", self.kind, f"must be {default!r} for a {type(self).__name__}")


def require(ok: bool, key: str, value: Any, message: str) -> None:
  """Raise `ValueError("config.<key> <message>, got <value>")` unless ok: every config check goes here."""
  if not ok:
    raise ValueError(f"config.{key} {message}, got {value!r}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
  """Convert a ConfigDict leaf (or a section, for a dataclass annotation) to the field's type, or raise
  naming the key."""
  origin = typing.get_origin(annotation)
  if dataclasses.is_dataclass(annotation):
    if isinstance(value, annotation):
      return value
    if not isinstance(value, Mapping):
      raise ValueError(f"config.{key} must be a section (a dict of keys), got {value!r}")
    return from_mapping(annotation, value, key)
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
    if not math.isfinite(value):  # no setting means anything at NaN or inf (lr=inf trains to NaN)
      raise ValueError(f"config.{key} must be a finite number, got {value!r}")
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


def from_mapping(cls, mapping: Mapping[str, Any], prefix: str = ""):
  """THE ConfigDict -> dataclass converter: build `cls` from a (Config)dict, recursing into sections.

  Fields whose type is a dataclass are sections (built the same way; a missing section takes its
  defaults); unknown keys and wrong types raise naming the key (`config.train.lr must be a number`).
  """
  mapping = mapping.to_dict() if hasattr(mapping, "to_dict") else dict(mapping)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  hints = typing.get_type_hints(cls)
  unknown = sorted(set(mapping) - set(fields))
  if unknown:
    what = "section(s)/key(s)" if not prefix else "key(s)"
    names = ", ".join(f"config.{prefix + '.' if prefix else ''}{k}" for k in unknown)
    raise ValueError(f"unknown config {what} {names}; valid: {sorted(fields)}")
  kwargs = {}
  for name, f in fields.items():
    key = f"{prefix}.{name}" if prefix else name
    if name in mapping:
      kwargs[name] = _coerce(mapping[name], hints[name], key)
    elif dataclasses.is_dataclass(hints[name]) and f.default is dataclasses.MISSING and \
        f.default_factory is dataclasses.MISSING:
      kwargs[name] = from_mapping(hints[name], {}, key)
  return cls(**kwargs)


def experiment_from_config(config: Mapping[str, Any]) -> ExperimentConfig:
  """Validate a supervised-job ConfigDict (sections model/data/train/checkpoint/eval/mesh, kind "sft")."""
  return from_mapping(ExperimentConfig, config)


_HF_MODEL_KEYS = ("dtype", "param_dtype")  # the model keys that may be set beside model.hf_path


def model_from_hf(mapping: Mapping[str, Any]) -> tuple[ModelConfig, str]:
  """(ModelConfig, hf_path) of a model section `{"hf_path": dir, "dtype"?: ..., "param_dtype"?: ...}`.

  The architecture comes from `<hf_path>/config.json` (star_jax.models.hf.config_from_hf); dtype and
  param_dtype default to the checkpoint's torch_dtype. Any other key raises (it would be ignored).
  """
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


def changed_fields(saved: Mapping[str, Any], cfg, sections: Sequence[str],
                   ignored: frozenset | set = frozenset(), labels: Mapping[str, str] | None = None) -> list[str]:
  """`config.<section>.<key>: old -> new` for every field of `cfg`'s sections that differs from `saved`
  (a run's config as JSON); a field missing from `saved` (added since it was written) counts as its
  default. A name in `sections` may also be a plain top-level field (e.g. hf_path), reported as
  `config.<labels[name]>`. `ignored` holds (section, key) pairs that may change between runs of one workdir."""
  current = json.loads(json.dumps(dataclasses.asdict(cfg)))
  top_defaults = json.loads(json.dumps(field_defaults(type(cfg)), default=dataclasses.asdict))  # (sections: dicts)
  labels = labels or {}
  differ = []
  for section in sections:
    if not isinstance(current[section], dict):
      old = saved.get(section, top_defaults.get(section))
      if old != current[section]:
        differ.append(f"config.{labels.get(section, section)}: {old!r} -> {current[section]!r}")
      continue
    defaults = json.loads(json.dumps(field_defaults(type(getattr(cfg, section)))))
    for key, value in current[section].items():
      old = saved.get(section, {}).get(key, defaults.get(key))
      if (section, key) not in ignored and old != value:
        differ.append(f"config.{section}.{key}: {old!r} -> {value!r}")
  return differ


def check_resumable(path: str, cfg, sections: Sequence[str], *, ignored: frozenset | set = frozenset(),
                    labels: Mapping[str, str] | None = None, what: str = "run") -> None:
  """Refuse to resume a workdir made with a different config; the first run writes `path` (its config).

  `path` is the JSON of the config the workdir was made with (`<workdir>/star_config.json`, ...); the
  comparison is `changed_fields` over `sections`. A field added since that file was written counts as
  unchanged while it keeps its default value.
  """
  if not os.path.exists(path):
    if jax.process_index() == 0:
      io.write_json(path, json.loads(json.dumps(dataclasses.asdict(cfg))))
    return
  differ = changed_fields(io.read_json(path), cfg, sections, ignored, labels)
  if differ:
    raise ValueError(f"{os.path.dirname(os.path.abspath(path))} holds a {what} with a different config; use a new "
                     f"workdir. Differences: {'; '.join(differ)}")


def field_defaults(cls) -> dict[str, Any]:
  """{field name: default value} of a dataclass (fields without a default are left out)."""
  out = {}
  for f in dataclasses.fields(cls):
    if f.default is not dataclasses.MISSING:
      out[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:
      out[f.name] = f.default_factory()
  return out


def default_config(cls, omit: Sequence[str] = (), **sections) -> ml_collections.ConfigDict:
  """A ConfigDict holding every field of the dataclass `cls` at its default, sections recursively.

  Config files start from it and set only what differs, so a file reads as its recipe, the dataclasses
  are the one place defaults (and their comments) live, and every field can still be overridden from
  the command line (`--config.train.lr=3e-4`; ml_collections refuses keys a ConfigDict does not hold).
  `sections` replaces whole sections by name (e.g. `model=<a Hugging Face model section>`); `omit` leaves
  out fields that are not config keys (derived by the converter, e.g. StarExperimentConfig.hf_path).
  """
  hints = typing.get_type_hints(cls)
  c = ml_collections.ConfigDict()
  for f in dataclasses.fields(cls):
    if f.name in omit:
      continue
    if f.name in sections:
      value = sections[f.name]
    elif dataclasses.is_dataclass(hints[f.name]):
      value = default_config(hints[f.name])
    else:
      value = field_defaults(cls)[f.name]
    c[f.name] = value
  unknown = sorted(set(sections) - {f.name for f in dataclasses.fields(cls)})
  if unknown:
    raise ValueError(f"default_config: {cls.__name__} has no section(s) {unknown}")
  return c


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (app.run's `flags_parser`), except that an override of a key the config does not
  have (`--config.foo.bar=1`, ml_collections' bare KeyError/AttributeError "'foo'") exits with a usage
  error naming the key and the argument."""
  from absl import app  # noqa: PLC0415 (only the command-line entry points parse flags)
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as e:
    missing = str(e.args[0] if e.args else e).split("'")[1:2]
    for arg in argv[1:]:
      flag, _, _ = arg.lstrip("-").partition("=")
      if not missing or not flag.startswith("config."):
        continue
      path = flag.split(".")[1:]
      if missing[0] in path:
        key = "config." + ".".join(path[:path.index(missing[0]) + 1])
        print(f"FATAL Flags parsing error: {arg}: the config has no key {key} (an override must name an existing "
              "key; see the config file)", file=sys.stderr)
        sys.exit(1)
    raise
