"""Tree-of-Thoughts vs chain-of-thought on the Game of 24 at equal generated tokens (experiments/tot_game24/study.py).

  get_config()        the committed study (experiments/tot_game24/): base model 45 min, reward data + PRM 18 min,
                      the rest ~10 min on a shared, busy 2-core CPU
  get_config("demo")  a small base model, a PRM and a small ToT vs CoT table: 4 min 47 s wall (3 min 15 s user CPU)
                      on the 2-core CPU, load ~1-5; its 500-step d_model 64 model learns the format, not the steps
  get_config("tiny")  seconds of compute; used by the tests (tests/experiments/test_tot_game24.py, the notebook)

  python -m experiments.tot_game24.study --config=experiments/configs/tot_game24.py \
      --workdir=runs/tot_game24 --results_dir=experiments/tot_game24

Validated by experiments.tot_game24.study.study_from_config (unknown keys are errors).
"""

import ml_collections

from experiments.tot_game24 import study
from star_jax import config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  # Every field starts at its default (star_jax/config.py, experiments/tot_game24/study.py: the comments live
  # there); only what this study changes is set below. The model keeps ModelConfig's defaults (4 layers,
  # d_model 128: the prototype of DESIGN.md §5).
  c = config.default_config(study.ToTStudyConfig)
  # ~30 min of base-model training on a quiet 2-core CPU (3.4 steps/s: ~21 M token slots).
  c.policy_train.batch_size = 16  # packed rows of ~2 seed examples
  c.policy_train.seq_len = 256  # tokens per row (a seed example is ~115 characters)
  c.policy_train.steps = 6000
  c.reward_train.batch_size = 16
  c.reward_train.seq_len = 256
  c.reward_train.steps = 600  # ~1 epoch of the 14,400 training samples
  c.reward_train.lr = 1e-3  # the trunk starts from the policy
  c.reward_train.warmup_steps = 30
  c.checkpoint.keep = 1
  c.study.seed_examples = 200_000  # > the ~210k examples 6,000 steps of 16 packed rows read: ~1 epoch
  # then a second cosine schedule on a fresh seed set: 6,000 steps alone gave 89.6% of sampled steps correct
  c.study.polish_steps = 2500  # at study.polish_lr's 5e-4 (a quarter of the first schedule's peak)
  c.study.temperature = 0.7  # CoT and reward-data sampling at the ToT paper's temperature (Yao et al. 2023 use 0.7)
  c.search.temperature = 0.7  # ToT step sampling, likewise
  c.study.cot_samples = 64  # CoT best-of-k for k = 1..64 (the issue asks up to 100: CPU time; ToT b=5 n=10 costs ~27)
  # reward data: every train puzzle (study.reward_puzzles = 1000; every 10th validates only) x 16 samples; 600 x 4
  c.study.reward_samples = 16  # samples in a first run gave a PRM of step AUC 0.854 (experiments/tot_game24/README.md)
  c.study.tot = ((5, 5), (1, 5), (5, 10))
  c.search.step_tokens = 48  # a step with fractions ('13/5 / 7 = 13/35 (left: 13/35 10)') is longer than 32
  c.value.aggregation = "last"  # `good` already covers every earlier step: V = P(the last step is good)
  c.value.seq_len = 192  # BOS + prompt (<= 26) + 3 steps of <= 48 tokens
  c.value.row_multiple = 256  # few compiled scoring shapes

  if arg == "demo":
    c.model.d_model, c.model.n_layers = 64, 2
    c.study.polish_steps = 0
    c.policy_train.steps, c.policy_train.batch_size = 500, 16
    c.reward_train.steps, c.reward_train.batch_size = 120, 16
    c.checkpoint.every_steps = 100
    c.study.seed_examples = 20_000
    c.study.test_puzzles = 100
    c.study.cot_samples = 16
    c.study.reward_puzzles, c.study.reward_samples = 300, 2
    c.study.auc_samples = 2
    c.study.tot = ((1, 5), (5, 3))
    c.study.values = ("prm", "oracle")
  elif arg == "tiny":
    c.model.d_model, c.model.n_layers, c.model.n_heads = 32, 1, 2
    c.study.polish_steps = 2
    c.policy_train.steps, c.policy_train.batch_size, c.policy_train.warmup_steps = 4, 8, 1
    c.reward_train.steps, c.reward_train.batch_size, c.reward_train.warmup_steps = 3, 8, 1
    c.policy_train.log_every = c.reward_train.log_every = 1
    c.checkpoint.every_steps = 2
    c.study.seed_examples = 64
    c.study.test_puzzles = 4
    c.study.cot_samples = 4
    c.study.reward_puzzles, c.study.reward_samples = 4, 2
    c.study.auc_samples = 2
    c.study.tot = ((1, 2), (2, 2))
    c.study.generate_batch_size = 32
    c.search.step_tokens, c.search.answer_tokens = 16, 24
    c.value.row_multiple = 16
  elif arg:
    raise ValueError(f"unknown config variant {arg!r}; use '', 'demo' or 'tiny'")
  return c
