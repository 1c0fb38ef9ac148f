"""Supervised fine-tuning on the STaR arithmetic scratchpads (the `make demo` job).

  get_config()        the demo: ~5 minutes of training on a 2-core CPU, then held-out accuracy per length
  get_config("tiny")  seconds; used by the tests
  get_config("full")  2,500 steps: the length the design notes' prototype needed (not yet measured here)
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.kind = "sft"  # the job star_jax.main runs: supervised fine-tuning (star_jax/sft.py)

  c.model = ml_collections.ConfigDict()  # star_arithmetic.py takes this section too (its base model)
  c.model.vocab_size = 100  # CharTokenizer: pad/bos/eos/unk, newline, printable ASCII
  c.model.d_model = 128  # residual width
  c.model.n_layers = 4  # transformer blocks
  c.model.n_heads = 4  # query heads
  c.model.n_kv_heads = 4  # key/value heads (GQA when fewer than n_heads)
  c.model.head_dim = 0  # 0 = d_model // n_heads
  c.model.d_ff = 0  # 0 = 4 * d_model
  c.model.rope_theta = 10_000.0  # rotary base
  c.model.norm_eps = 1e-6  # RMSNorm epsilon
  c.model.qkv_bias = False  # Qwen2-style q/k/v bias
  c.model.tie_embeddings = False  # share input embedding and output projection
  c.model.dtype = "float32"  # compute dtype
  c.model.param_dtype = "float32"  # storage dtype

  c.data = ml_collections.ConfigDict()
  c.data.task = "arithmetic"  # the STaR paper's n-digit addition with scratchpads
  c.data.data_dir = ""  # TFDS data dir; "" = <workdir>/data
  c.data.max_train_digits = 5  # training operands: 1..5 digits
  c.data.max_test_digits = 8  # held-out 1..8 digits (6-8: length generalisation)
  c.data.rationales_per_digit = 20_000  # full scratchpads per length (2-digit has only ~7k distinct)
  c.data.questions_per_digit = 2_000  # STaR dataset D per length (unused by fine-tuning)
  c.data.test_per_digit = 100  # held-out problems per length
  c.data.pack = True  # pack examples into rows with per-example attention
  c.data.seed = 0  # dataset generation seed

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32  # global rows per step
  c.train.seq_len = 256  # tokens per row (a 5-digit example is ~100 tokens)
  c.train.steps = 300  # optimizer updates (~5 min on 2 cores; "full" trains longer)
  c.train.lr = 2e-3  # peak learning rate (d_model 128 breaks the loss plateau fastest here)
  c.train.warmup_steps = 30  # linear warmup
  c.train.decay = "cosine"  # cosine decay to lr * min_lr_ratio
  c.train.min_lr_ratio = 0.1
  c.train.weight_decay = 0.01  # AdamW decoupled decay (matrices only)
  c.train.b1 = 0.9
  c.train.b2 = 0.99
  c.train.grad_clip = 1.0  # global-norm clip
  c.train.grad_accum_steps = 1  # micro-batches per update
  c.train.seed = 0  # init + step rng
  c.train.log_every = 25  # metric interval (TensorBoard + metrics.jsonl)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 100  # save interval (and at the end)
  c.checkpoint.keep = 2  # checkpoints kept

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 100  # prompts decoded together
  c.eval.max_new_tokens = 288  # cap (an 8-digit target is 268 characters; each length gets its own tighter cap)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.axes = (("data", -1), ("fsdp", 1), ("tensor", 1))  # -1: all remaining devices

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
