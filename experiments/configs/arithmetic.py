"""Supervised fine-tuning on the STaR arithmetic scratchpads (the `make demo` job).

  get_config()        the demo: ~5 minutes of training on a 2-core CPU, then held-out accuracy per length
  get_config("tiny")  seconds; used by the tests
  get_config("full")  2,500 steps: the length the design notes' prototype needed (not yet measured here)
"""

import ml_collections

from star_jax import config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  # Every field starts at its default (star_jax/config.py, models/config.py: the comments live there);
  # only what this recipe changes is set below.
  c = config.default_config(config.ExperimentConfig)  # kind "sft": supervised fine-tuning (star_jax/sft.py)
  c.model.n_kv_heads = 4  # = n_heads, spelled out (the saved configs of existing workdirs hold 4)
  c.train.seq_len = 256  # tokens per row (a 5-digit example is ~100 tokens)
  c.train.steps = 300  # optimizer updates (~5 min on 2 cores; "full" trains longer)
  c.train.warmup_steps = 30  # linear warmup
  c.train.log_every = 25  # metric interval (TensorBoard + metrics.jsonl)
  c.checkpoint.every_steps = 100  # save interval (and at the end)
  c.eval.batch_size = 100  # prompts decoded together
  c.eval.max_new_tokens = 288  # cap (an 8-digit target is 268 characters; each length gets its own tighter cap)

  if arg == "tiny":
    c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 32, 2, 4, 2
    c.data.max_train_digits, c.data.max_test_digits = 2, 3
    c.data.rationales_per_digit, c.data.questions_per_digit, c.data.test_per_digit = 200, 20, 8
    c.train.batch_size, c.train.seq_len, c.train.steps = 8, 128, 12
    c.train.warmup_steps, c.train.log_every = 2, 2
    c.checkpoint.every_steps = 4
    c.eval.batch_size, c.eval.max_new_tokens = 8, 48
  elif arg == "full":
    c.train.steps = 2500
    c.checkpoint.every_steps = 500
  elif arg:
    raise ValueError(f"unknown config variant {arg!r}; use '', 'tiny' or 'full'")
  return c
