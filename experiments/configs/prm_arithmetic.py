"""Process vs outcome reward models for best-of-N on held-out arithmetic (experiments/prm_arithmetic/study.py).

  get_config()        the committed study (experiments/prm_arithmetic/): ~30 min on a shared 2-core CPU
  get_config("tiny")  seconds of compute; used by the end-to-end test (tests/prm/test_study.py, marked slow)

  python -m experiments.prm_arithmetic.study --config=experiments/configs/prm_arithmetic.py \
      --workdir=runs/prm_arithmetic --results_dir=experiments/prm_arithmetic

Validated by experiments.prm_arithmetic.study.study_from_config (unknown keys are errors).
"""

import ml_collections

from experiments.prm_arithmetic import study
from star_jax import config


def _train(c: ml_collections.ConfigDict, steps: int, lr: float, batch_size: int, seq_len: int) -> None:
  """Sets a train section's recipe (the rest keeps TrainConfig's defaults: AdamW, cosine to 0.1 lr...)."""
  c.batch_size = batch_size  # global rows per step (packed examples)
  c.seq_len = seq_len  # tokens per row (a 3-digit sample with its prompt is ~140 tokens)
  c.steps = steps  # optimizer updates
  c.lr = lr  # peak learning rate
  c.warmup_steps = 30  # linear warmup


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  # Every field starts at its default (star_jax/config.py, experiments/prm_arithmetic/study.py: the comments
  # live there); only what this study changes is set below.
  c = config.default_config(study.PRMStudyConfig)
  # policy and both reward models (reward trunks start from the policy)
  c.model.d_model = 64  # small enough to leave the loss plateau in ~700 steps here
  c.model.n_layers = 3
  c.model.n_kv_heads = 4  # = n_heads, spelled out (the saved configs of existing workdirs hold 4)

  # The policy: in a pilot with this recipe, step 1000 (of a 1200-step schedule) sampled 57% right at
  # temperature 1.0 on 3-digit problems (99% greedy); a 900-step schedule decays the lr too early and
  # stayed near the loss plateau (2% at temperature 1.0).
  _train(c.policy_train, steps=1200, lr=3e-3, batch_size=16, seq_len=256)
  # Each reward model (PRM and ORM): same data (the reward-pool samples), same steps, trunk = the policy.
  # A first run with 200 steps at lr 1e-3 on 2,400 samples left both near their label priors (validation-free
  # then; results in experiments/prm_arithmetic/run1_undertrained/); a pilot on held-out reward-pool questions
  # (not test) still improved slowly after 600 steps at 3e-3, hence more data and 1000 steps.
  _train(c.reward_train, steps=1000, lr=3e-3, batch_size=16, seq_len=256)

  c.checkpoint.every_steps = 100  # save interval (and at the end)
  c.checkpoint.keep = 1
  # The study section keeps StudyConfig's defaults: 1,000 3-digit reward-pool questions x 16 samples, 200 test
  # problems x 64 samples (best-of-N for N = 1..64), 120 solutions with 16 Monte-Carlo rollouts per step.

  if arg == "tiny":
    c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 32, 2, 4, 2
    _train(c.policy_train, steps=4, lr=3e-3, batch_size=8, seq_len=256)
    _train(c.reward_train, steps=3, lr=1e-3, batch_size=8, seq_len=256)
    c.policy_train.warmup_steps = c.reward_train.warmup_steps = 1
    c.policy_train.log_every = c.reward_train.log_every = 1
    c.checkpoint.every_steps = 2
    c.study.policy_examples_per_digit = 20
    c.study.reward_digits = (2,)
    c.study.reward_questions_per_digit, c.study.reward_samples_per_question = 4, 2
    c.study.test_digits, c.study.test_problems, c.study.test_samples = 2, 3, 4
    c.study.mc_solutions, c.study.mc_rollouts = 2, 2
    c.study.generate_batch_size, c.study.score_batch_size, c.study.majority_subsets = 16, 8, 8
  elif arg:
    raise ValueError(f"unknown config variant {arg!r}; use '' or 'tiny'")
  return c
