"""Config files start from the dataclass defaults and set only what differs (the layout issue's rule)."""

import ast
import dataclasses
import importlib
import pathlib
import typing

import pytest

from experiments.prm_arithmetic import study
from experiments.tot_game24 import study as tot_study
from star_jax import config, main
from star_jax.pg import config as pg_config
from star_jax.star import config as star_config

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "configs"
# config file -> (its dataclass, its variants)
FILES = {
    "arithmetic": (config.ExperimentConfig, ("", "tiny", "full")),
    "star_arithmetic": (star_config.StarExperimentConfig, ("", "demo", "tiny")),
    "pg_star_arithmetic": (pg_config.RLExperimentConfig, ("", "demo", "tiny")),
    "prm_arithmetic": (study.PRMStudyConfig, ("", "tiny")),
    "star_gsm8k": (star_config.StarExperimentConfig, ("", "tiny")),
    "star_commonsense_qa": (star_config.StarExperimentConfig, ("", "tiny")),
    "tot_game24": (tot_study.ToTStudyConfig, ("", "demo", "tiny")),
    "star_game24": (star_config.StarExperimentConfig, ("", "tiny")),
}


def _leaves(mapping, prefix=""):
  for key, value in mapping.items():
    if isinstance(value, dict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def test_every_config_file_is_listed():
  on_disk = {p.stem for p in CONFIGS.glob("*.py") if p.stem not in ("__init__", "common")}
  assert on_disk == set(FILES)


def test_default_config_holds_every_field_at_its_default():
  c = star_config.default_config()
  assert "hf_path" not in c  # given as model.hf_path
  typed = star_config.star_experiment_from_config(c)
  assert typed == star_config.StarExperimentConfig(
      model=config.ModelConfig(), data=config.DataConfig(), train=config.TrainConfig(),
      checkpoint=config.CheckpointConfig(), eval=config.EvalConfig(), mesh=config.MeshConfig())
  with pytest.raises(ValueError, match="no section"):
    config.default_config(config.ExperimentConfig, nonsense={})


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_field_can_be_overridden_from_the_command_line(name):
  """ml_collections refuses `--config.<key>=` for a key the ConfigDict does not hold: every field is there."""
  cls, variants = FILES[name]
  expected = set(dict(_leaves(config.default_config(cls, omit=("hf_path",)).to_dict())))
  for variant in variants:
    held = set(dict(_leaves(importlib.import_module(f"experiments.configs.{name}").get_config(variant).to_dict())))
    pretrained_model = {k for k in expected if k.startswith("model.")} if "model.hf_path" in held else set()
    assert expected - pretrained_model <= held, (name, variant, sorted(expected - held))


@pytest.mark.parametrize("name", ["arithmetic", "star_arithmetic", "pg_star_arithmetic", "prm_arithmetic"])
def test_every_variant_validates(name):
  for variant in FILES[name][1]:
    c = importlib.import_module(f"experiments.configs.{name}").get_config(variant)
    typed = study.study_from_config(c) if name == "prm_arithmetic" else main.experiment_from_config(c)
    assert dataclasses.is_dataclass(typed)


def _default_of(cls, dotted: str):
  """The dataclass default of `<section>.<key>` in `cls`, or MISSING."""
  section, key = dotted.split(".")
  section_cls = typing.get_type_hints(cls).get(section)
  if not dataclasses.is_dataclass(section_cls):
    return dataclasses.MISSING
  return config.field_defaults(section_cls).get(key, dataclasses.MISSING)


def _attribute_path(node) -> str | None:
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  return ".".join(reversed(parts)) if isinstance(node, ast.Name) and node.id == "c" else None


@pytest.mark.parametrize("name", sorted(set(FILES) | {"common"}))
def test_recipes_set_no_field_to_its_default(name):
  """In the recipe (the top-level body of get_config / common.add_star_sections, not the variants' branches), an
  assignment `c.<section>.<key> = <literal>` whose literal is the dataclass default is noise: refuse it."""
  cls = FILES.get(name, (star_config.StarExperimentConfig,))[0]
  path = CONFIGS / f"{name}.py"
  tree = ast.parse(path.read_text())
  noise = []
  for func in tree.body:
    if not isinstance(func, ast.FunctionDef) or func.name not in ("get_config", "add_star_sections"):
      continue
    for stmt in func.body:  # top level only: `if arg == ...` branches may set a default back
      if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
        continue
      target, value = stmt.targets[0], stmt.value
      pairs = (list(zip(target.elts, value.elts)) if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
               else [(target, value)])
      for t, v in pairs:
        dotted = _attribute_path(t)
        if dotted is None or dotted.count(".") != 1:
          continue
        try:
          literal = ast.literal_eval(v)
        except ValueError:
          continue  # computed from arguments
        default = _default_of(cls, dotted)
        if default is not dataclasses.MISSING and literal == default and isinstance(literal, bool) == isinstance(default, bool):
          noise.append(f"{path.name}:{stmt.lineno}: c.{dotted} = {literal!r} is the default")
  assert not noise, noise
