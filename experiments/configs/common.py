"""The sections shared by the STaR configs for a pretrained Hugging Face checkpoint (star_gsm8k.py,
star_commonsense_qa.py): everything but the task's data files, its sequence length, held-out split,
generation cap and number of few-shot exemplars, plus the "tiny" variant.

Not a config itself (no get_config): task configs import it (experiments.configs is a package):

  from experiments.configs import common
  c = common.new_config()  # kind "star", a pretrained model section, every other field at its default
  c.data.task = ...  # the task's data section
  return common.add_star_sections(c, arg, seq_len=..., eval_split=..., max_new_tokens=..., num_shots=...)
"""

import ml_collections

from star_jax.star import config as star_config


def new_config() -> ml_collections.ConfigDict:
  """A STaR config at its defaults (kind "star") with the `model` section of a pretrained checkpoint; the task
  config fills in `data`."""
  model = ml_collections.ConfigDict()
  model.hf_path = ""  # REQUIRED: local Hugging Face model dir (config.json, *.safetensors, tokenizer.json)
  model.dtype = "bfloat16"  # compute dtype (the architecture itself comes from the checkpoint's config.json)
  model.param_dtype = "float32"  # stored params and optimizer state: lr 1e-6 updates vanish in bfloat16
  return star_config.default_config(model=model)


def add_star_sections(c: ml_collections.ConfigDict, arg: str, *, seq_len: int, eval_split: str,
                      max_new_tokens: int, num_shots: int) -> ml_collections.ConfigDict:
  """Sets the paper's recipe in train/checkpoint/eval/mesh/star of `c` (from `new_config`; every other field
  keeps its default, star_jax/config.py and star/config.py) and applies the variant `arg`.

  Args:
    c: the config from `new_config`, its data section filled in by the task config.
    arg: the variant: "" (a TPU VM run, the paper's recipe) or "tiny" (toy sizes for a CPU smoke test).
    seq_len: train.seq_len, tokens per (packed) row.
    eval_split: eval.split, the held-out split scored each iteration.
    max_new_tokens: eval.max_new_tokens and star.max_new_tokens, the generation cap.
    num_shots: star.num_shots, exemplars before each generation prompt.

  Returns:
    `c`, completed.
  """
  c.train.batch_size = 8  # global rows per step (the paper: 8); a multiple of the mesh's data x fsdp size
  c.train.seq_len = seq_len  # tokens per row (set by the task config)
  c.train.steps = 1  # unused: the per-iteration schedule (star.base_steps, star.growth) sets the steps
  c.train.lr = 1e-6  # peak learning rate (the paper's, for GPT-J 6B)
  c.train.warmup_steps = 10  # linear warmup at the start of each fine-tuning
  c.train.decay = "constant"  # constant after warmup (the paper: constant lr)
  c.train.min_lr_ratio = 1.0  # unused with a constant schedule
  c.train.weight_decay = 0.0  # the paper: no weight decay
  c.train.log_every = 10  # metric interval (TensorBoard + logs/metrics.jsonl)

  c.checkpoint.every_steps = 50  # save interval within each fine-tuning (and at its end)
  c.checkpoint.keep = 1  # checkpoints kept per fine-tuning (the last one is M_n)

  c.eval.split = eval_split  # held-out split (greedy accuracy of M_n each iteration; set by the task config)
  c.eval.batch_size = 64  # prompts decoded together
  c.eval.max_new_tokens = max_new_tokens  # generation cap (set by the task config)

  c.mesh.axes = (("data", 1), ("fsdp", -1), ("tensor", 1))  # FSDP over all chips (-1: all remaining devices)

  # star keeps its defaults otherwise: 10 iterations, growth 1.2, rationalization on, restart from base, all of D
  c.star.base_steps = 40  # fine-tuning steps of iteration 1 (the paper: 40)
  c.star.max_new_tokens = max_new_tokens  # generation cap while generating and rationalizing (= eval's)
  c.star.generate_batch_size = 64  # prompts decoded together while generating
  c.star.num_shots = num_shots  # exemplars before each generation prompt (hinted when rationalizing)

  if arg == "tiny":
    c.model.dtype = "float32"
    c.train.batch_size, c.train.seq_len, c.train.warmup_steps, c.train.log_every = 8, 256, 1, 1
    c.train.lr = 1e-3
    c.checkpoint.every_steps = 2
    c.eval.batch_size, c.eval.max_new_tokens = 8, 32
    c.mesh.axes = (("data", -1), ("fsdp", 1), ("tensor", 1))
    c.star.iterations, c.star.base_steps = 2, 2
    c.star.max_new_tokens, c.star.generate_batch_size, c.star.num_shots = 32, 8, 1
  elif arg:
    raise ValueError(f"unknown config variant {arg!r}; use '' or 'tiny'")
  return c
