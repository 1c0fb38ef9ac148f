"""STaR (Zelikman et al. 2022, arXiv 2203.14465) on GSM8K with a pretrained Hugging Face checkpoint, for a TPU VM.

  get_config()        a TPU VM run (v4-8 / v5e-8 class: 4-8 chips, FSDP over all of them) of a ~1-2B
                      Llama/Qwen2 checkpoint; the paper's fine-tuning recipe (GPT-J 6B: lr 1e-6, batch 8,
                      40 steps growing 20% per iteration)
  get_config("tiny")  the same shape at toy sizes, for a smoke test with a tiny checkpoint on CPU

Nothing is downloaded. Give the local paths on the command line:

  python -m star_jax.main --config=experiments/configs/star_gsm8k.py --workdir=$HOME/runs/star_gsm8k \\
    --config.model.hf_path=/mnt/disks/models/Qwen2.5-1.5B \\
    --config.data.train_path=/mnt/disks/data/gsm8k/train.jsonl \\
    --config.data.test_path=/mnt/disks/data/gsm8k/test.jsonl

The model directory holds config.json, model.safetensors (or a sharded index) and tokenizer.json; it is
loaded with star_jax.models.load_hf and tokenized with star_jax.data.HFTokenizer. The data files are the
GSM8K JSONL ({"question", "answer"}, the final answer after '####'), built into TFDS by
star_jax.data.gsm8k.build_gsm8k; texts, hint and answer extraction are star_jax.data.gsm8k.Gsm8kTask.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.hf_path = ""  # REQUIRED: local Hugging Face model dir (config.json, *.safetensors, tokenizer.json)
  c.model.dtype = "bfloat16"  # compute dtype (the architecture itself comes from the checkpoint's config.json)
  c.model.param_dtype = "float32"  # stored params and optimizer state: lr 1e-6 updates vanish in bfloat16

  c.data = ml_collections.ConfigDict()
  c.data.task = "gsm8k"  # star_jax.data.tasks.get_task: prompts, hints, answer extraction
  c.data.data_dir = ""  # TFDS data dir for the built dataset; "" = <workdir>/data
  c.data.train_path = ""  # REQUIRED: GSM8K train.jsonl (STaR's D; few-shot exemplars come from it too)
  c.data.test_path = ""  # GSM8K test.jsonl: held-out accuracy each iteration ("" = no evaluation)
  c.data.pack = True  # pack several examples per row (per-example attention masks) instead of padding

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 8  # global rows per step (the paper: 8); a multiple of the mesh's data x fsdp size
  c.train.seq_len = 1024  # tokens per row (a GSM8K question + rationale is ~150-400 tokens; rows are packed)
  c.train.steps = 1  # unused: the per-iteration schedule (star.base_steps, star.growth) sets the steps
  c.train.lr = 1e-6  # peak learning rate (the paper's, for GPT-J 6B)
  c.train.warmup_steps = 10  # linear warmup at the start of each fine-tuning
  c.train.decay = "constant"  # constant after warmup (the paper: constant lr)
  c.train.min_lr_ratio = 1.0  # unused with a constant schedule
  c.train.weight_decay = 0.0  # the paper: no weight decay
  c.train.b1 = 0.9  # AdamW first-moment decay
  c.train.b2 = 0.99  # AdamW second-moment decay
  c.train.grad_clip = 1.0  # global-norm clip (the paper: 1)
  c.train.grad_accum_steps = 1  # micro-batches per update (raise if a batch of 8 rows does not fit)
  c.train.seed = 0  # per-step rng
  c.train.log_every = 10  # metric interval (TensorBoard + logs/metrics.jsonl)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 50  # save interval within each fine-tuning (and at its end)
  c.checkpoint.keep = 1  # checkpoints kept per fine-tuning (the last one is M_n)

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"  # held-out split (greedy accuracy of M_n each iteration)
  c.eval.batch_size = 64  # prompts decoded together
  c.eval.max_new_tokens = 320  # generation cap (gold GSM8K solutions are almost all under 300 tokens)
  c.eval.num_shots = 0  # exemplars before each eval prompt (0: the fine-tuned model answers zero-shot)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.axes = (("data", 1), ("fsdp", -1), ("tensor", 1))  # FSDP over all chips (-1: all remaining devices)

  c.star = ml_collections.ConfigDict()
  c.star.iterations = 10  # outer-loop iterations N
  c.star.base_steps = 40  # fine-tuning steps of iteration 1 (the paper: 40)
  c.star.growth = 1.2  # steps grow 20% per iteration (the paper's schedule)
  c.star.rationalize = True  # retry failures with the answer as a hint ('Q: ... (72)'); hint removed when saved
  c.star.restart_from_base = True  # fine-tune from the pretrained checkpoint every iteration (False: from M_{n-1})
  c.star.fraction_of_D = 1.0  # fraction of D generated on per iteration (drawn anew each iteration)
  c.star.temperature = 0.0  # rationale sampling temperature (0 = greedy)
  c.star.max_new_tokens = 320  # generation cap while generating and rationalizing
  c.star.generate_batch_size = 64  # prompts decoded together while generating
  c.star.num_shots = 4  # first train solutions (taken out of D) before each generation prompt; hinted to rationalize
  c.star.seed = 0  # every rng of the loop derives from (seed, iteration, phase)

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
