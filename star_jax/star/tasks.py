"""The task side of the STaR loop: tokenizer, questions D, held-out sets, few-shot exemplars, a pretrained
base model, generation caps and stop sequences, for any registered task (star_jax.data.tasks).

  arithmetic       the generated TFDS dataset (data.build_arithmetic_for): D = the `questions` split, held-out
                   sets `test_<n>digit` (group = digit length), the character tokenizer; the base model is
                   trained on seed scratchpads (star.make_base_model). No few-shot exemplars.
  game24           the puzzles of data.game24.split() (generated in-process): D = the 1,000 train puzzles, held out
                   = the first data.test_size test puzzles (group = difficulty); the character tokenizer; the
                   base model is star.base_dir (trained on the seed set by experiments/tot_game24).
  gsm8k,           the user's local JSONL files built into TFDS (config.data.*_path): D = `train`, held out
  commonsense_qa   = config.eval.split (no file given: no evaluation); a pretrained Hugging Face
                   checkpoint (config.model.hf_path) is the base model M and its tokenizer.json tokenizes.

Few-shot exemplars (Zelikman et al. 2022 prompt every generation with a few solved examples P): the
`few_shot` split when the task has one (CommonsenseQA's `few_shot_path`), otherwise the first examples of D
that carry a gold rationale (GSM8K), which are then removed from D. The pool holds
max(star.num_shots, eval.num_shots) exemplars; generation uses the first star.num_shots (hinted ones when
rationalizing), evaluation the first eval.num_shots.

Stop strings: the sampler stops on token sequences. Each of the task's stop strings is given to it as its
own tokenization (when that decodes back to the string); a model may also write the string with other
tokens (e.g. '.\\n' as one token), and then the row runs on to EOS or the generation cap. Either way the
text is cut at the first stop string before it is judged or trimmed (data.tasks.cut_at_stop), so the
sampler's stop is only a speed-up and never changes a result.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from absl import logging

from star_jax import train
from star_jax.data import build_arithmetic_for, tasks
from star_jax.data.tasks import Example, Task
from star_jax.star.config import StarExperimentConfig


@dataclasses.dataclass
class TaskData:
  task: Task
  builder: object  # the TFDS builder the splits come from (None: game24, generated in-process)
  questions: list[Example]  # D (exemplars taken from it removed)
  tests: dict[int, list[Example]]  # held-out questions per group ({} = no evaluation)
  exemplars: list[Example]  # the few-shot pool: max(star.num_shots, eval.num_shots) solved examples


def is_arithmetic(cfg: StarExperimentConfig) -> bool:
  return cfg.data.task == "arithmetic"


def tokenizer_and_mesh(cfg: StarExperimentConfig):
  """(tokenizer, mesh): HFTokenizer(model.hf_path) with a checkpoint, else the character tokenizer."""
  if not cfg.hf_path:
    return train.tokenizer_and_mesh(cfg)
  from star_jax.data.hf_tokenizer import HFTokenizer  # noqa: PLC0415 (needs the `tokenizers` package)
  tokenizer = HFTokenizer(cfg.hf_path)
  for name in ("bos_id", "eos_id"):
    if getattr(tokenizer, name) is None:
      raise ValueError(f"{cfg.hf_path}: the tokenizer defines no {name.removesuffix('_id')} token "
                       "(tokenizer_config.json or config.json); STaR examples are [BOS] prompt target [EOS]")
  return tokenizer, train.tokenizer_and_mesh(cfg, tokenizer=tokenizer)[1]


def load_hf_base(cfg: StarExperimentConfig, mesh) -> object:
  """The base model M: the weights of model.hf_path in model.param_dtype, laid out on `mesh`."""
  from star_jax.models import load_hf  # noqa: PLC0415 (pulls in safetensors; only a pretrained base needs it)
  model, params = load_hf(cfg.hf_path, mesh=mesh, dtype=cfg.model.param_dtype)
  ignore = {"dtype": "float32", "param_dtype": "float32"}  # (set by the config, not the checkpoint)
  if dataclasses.replace(model, **ignore) != dataclasses.replace(cfg.model, **ignore):
    raise ValueError(f"{cfg.hf_path}/config.json changed since the config was read: {model} != {cfg.model}")
  return params


def _build(cfg: StarExperimentConfig, workdir: str):
  d = cfg.data
  data_dir = d.data_dir or os.path.join(workdir, "data")
  if d.task == "gsm8k":
    from star_jax.data.gsm8k import build_gsm8k  # noqa: PLC0415 (TFDS builder; imported for this task only)
    return build_gsm8k(data_dir, d.train_path, d.test_path)
  if d.task == "commonsense_qa":
    from star_jax.data.commonsense_qa import build_commonsense_qa  # noqa: PLC0415 (TFDS builder; this task only)
    return build_commonsense_qa(data_dir, d.train_path, validation_path=d.validation_path, test_path=d.test_path,
                                few_shot_path=d.few_shot_path)
  raise ValueError(f"config.data.task={d.task!r}: no STaR data setup for this task")


def load_task_data(cfg: StarExperimentConfig, workdir: str) -> TaskData:
  """Build (or reuse) the task's dataset and split it into D, held-out sets and few-shot exemplars."""
  task = tasks.get_task(cfg.data.task)
  if is_arithmetic(cfg):
    builder = build_arithmetic_for(cfg.data, workdir)
    tests = {n: task.examples(builder.as_data_source(f"test_{n}digit"))
             for n in range(1, cfg.data.max_test_digits + 1)}
    return TaskData(task, builder, task.examples(builder.as_data_source("questions")), tests, [])
  if cfg.data.task == "game24":
    held_out = task.examples("test")
    if cfg.data.test_size > len(held_out):
      raise ValueError(f"config.data.test_size={cfg.data.test_size} > the {len(held_out)} held-out game24 puzzles")
    tests: dict[int, list[Example]] = {}
    for e in held_out[:cfg.data.test_size or len(held_out)]:
      tests.setdefault(e.group, []).append(e)
    return TaskData(task, None, task.examples("train"), tests, [])
  builder = _build(cfg, workdir)
  splits = set(builder.info.splits)
  questions = task.examples(builder.as_data_source("train"))
  pool = max(cfg.star.num_shots, cfg.eval.num_shots)
  if "few_shot" in splits:
    exemplars = task.examples(builder.as_data_source("few_shot"))[:pool]
    where = f"the few_shot split ({cfg.data.few_shot_path})"
  else:
    chosen = [i for i, e in enumerate(questions) if e.rationale is not None][:pool]
    exemplars = [questions[i] for i in chosen]
    questions = [e for i, e in enumerate(questions) if i not in set(chosen)]
    where = f"the train split's examples with a rationale ({cfg.data.train_path})"
  if len(exemplars) < pool:
    hint = "; give data.few_shot_path" if "few_shot" not in splits and cfg.data.task == "commonsense_qa" else ""
    raise ValueError(f"config.star.num_shots / eval.num_shots ask for {pool} few-shot exemplars, but {where} has "
                     f"{len(exemplars)}{hint}")
  if not questions:
    raise ValueError(f"config.data.train_path={cfg.data.train_path}: no questions left for D after taking "
                     f"{len(exemplars)} few-shot exemplars")
  tests = {}
  if cfg.eval.split in splits:
    held_out = task.examples(builder.as_data_source(cfg.eval.split))
    unlabeled = [e for e in held_out if e.answer is None]
    if unlabeled:
      raise ValueError(f"config.eval.split={cfg.eval.split!r} is unlabeled ({unlabeled[0].id}); evaluate on a "
                       "labeled split (commonsense_qa: validation)")
    for e in held_out:
      tests.setdefault(e.group, []).append(e)
  else:
    logging.warning("no %s file given (config.data.%s_path): the STaR loop runs without held-out evaluation",
                    cfg.eval.split, cfg.eval.split)
  return TaskData(task, builder, questions, tests, exemplars)


def generation_cap(cfg: StarExperimentConfig, task: Task, tokenizer) -> Callable[[list[Example]], int]:
  """The generation cap of a group of examples during generation/rationalization (`Task.generation_cap`
  with star.max_new_tokens and train.seq_len)."""
  return lambda group: task.generation_cap(group, cfg.star.max_new_tokens, cfg.train.seq_len, tokenizer)


def stop_sequences(tokenizer, stop_strings: Sequence[str]) -> tuple[tuple[int, ...], ...]:
  """Each stop string's own tokenization, when it decodes back to the string (see the module docstring)."""
  out = []
  for s in stop_strings:
    ids = tuple(tokenizer.encode(s))
    if ids and tokenizer.decode(list(ids)) == s and ids not in out:
      out.append(ids)
  return tuple(out)


def fitting_examples(examples: list[dict], tokenizer, seq_len: int) -> list[dict]:
  """The training examples whose [BOS] prompt target [EOS] fits seq_len (the rest are dropped with a warning).

  Generation caps keep every generation short enough; a re-tokenized generation can still come out a token
  or two longer than the sampled tokens, and the input pipeline refuses (never truncates) long examples.
  """
  keep = [e for e in examples
          if len(tokenizer.encode(e["prompt"], add_bos=True)) + len(tokenizer.encode(e["target"], add_eos=True))
          <= seq_len + 1]
  if len(keep) < len(examples):
    logging.warning("dropped %d of %d training examples longer than train.seq_len=%d tokens",
                    len(examples) - len(keep), len(examples), seq_len)
  return keep
