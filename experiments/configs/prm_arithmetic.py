"""Process vs outcome reward models for best-of-N on held-out arithmetic (experiments/prm_arithmetic/study.py).

  get_config()        the committed study (experiments/prm_arithmetic/): ~30 min on a shared 2-core CPU
  get_config("tiny")  seconds of compute; used by the end-to-end test (tests/prm/test_study.py, marked slow)

  python -m experiments.prm_arithmetic.study --config=experiments/configs/prm_arithmetic.py \
      --workdir=runs/prm_arithmetic --results_dir=experiments/prm_arithmetic

Validated by experiments.prm_arithmetic.study.study_from_config (unknown keys are errors).
"""

import ml_collections


def _train(steps: int, lr: float, batch_size: int, seq_len: int) -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.batch_size = batch_size  # global rows per step (packed examples)
  t.seq_len = seq_len  # tokens per row (a 3-digit sample with its prompt is ~140 tokens)
  t.steps = steps  # optimizer updates
  t.lr = lr  # peak learning rate
  t.warmup_steps = 30  # linear warmup
  t.decay = "cosine"  # cosine decay to lr * min_lr_ratio
  t.min_lr_ratio = 0.1
  t.weight_decay = 0.01  # AdamW decoupled decay (matrices only)
  t.b1 = 0.9
  t.b2 = 0.99
  t.grad_clip = 1.0  # global-norm clip
  t.grad_accum_steps = 1  # reward training supports 1 only
  t.seed = 0  # init + data order
  t.log_every = 50  # metric interval
  return t


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()  # policy and both reward models (reward trunks start from the policy)
  c.model.vocab_size = 100  # CharTokenizer
  c.model.d_model = 64  # small enough to leave the loss plateau in ~700 steps here
  c.model.n_layers = 3
  c.model.n_heads = 4
  c.model.n_kv_heads = 4
  c.model.head_dim = 0  # d_model // n_heads
  c.model.d_ff = 0  # 4 * d_model
  c.model.rope_theta = 10_000.0
  c.model.norm_eps = 1e-6
  c.model.qkv_bias = False
  c.model.tie_embeddings = False
  c.model.dtype = "float32"
  c.model.param_dtype = "float32"

  # The policy: in a pilot with this recipe, step 1000 (of a 1200-step schedule) sampled 57% right at
  # temperature 1.0 on 3-digit problems (99% greedy); a 900-step schedule decays the lr too early and
  # stayed near the loss plateau (2% at temperature 1.0).
  c.policy_train = _train(steps=1200, lr=3e-3, batch_size=16, seq_len=256)
  # Each reward model (PRM and ORM): same data (the reward-pool samples), same steps, trunk = the policy.
  # A first run with 200 steps at lr 1e-3 on 2,400 samples left both near their label priors (validation-free
  # then; results in experiments/prm_arithmetic/run1_undertrained/); a pilot on held-out reward-pool questions
  # (not test) still improved slowly after 600 steps at 3e-3, hence more data and 1000 steps.
  c.reward_train = _train(steps=1000, lr=3e-3, batch_size=16, seq_len=256)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 100  # save interval (and at the end)
  c.checkpoint.keep = 1

  c.mesh = ml_collections.ConfigDict()
  c.mesh.axes = (("data", -1), ("fsdp", 1), ("tensor", 1))

  c.study = ml_collections.ConfigDict()
  c.study.seed = 0  # pools, sampling, initialisation
  c.study.policy_max_digits = 3  # policy trained on 1..3-digit scratchpads
  c.study.policy_examples_per_digit = 3000  # (1 digit: all 81)
  c.study.reward_digits = (3,)  # reward-pool question lengths (the test length)
  c.study.reward_questions_per_digit = 1000  # 1000 questions ...
  c.study.reward_samples_per_question = 16  # ... x 16 samples = 16,000 labelled solutions
  c.study.validation_every = 10  # every 10th question (1,600 samples) only validates the reward models
  c.study.test_digits = 3  # held-out problems: 3 digits (disjoint from every training pool)
  c.study.test_problems = 200
  c.study.test_samples = 64  # K: best-of-N for N = 1, 2, 4, ..., 64
  c.study.temperature = 1.0  # sampling temperature of every sample and rollout
  c.study.mc_solutions = 120  # reward-pool samples given Monte-Carlo labels
  c.study.mc_rollouts = 16  # rollouts per step prefix (agreement for N = 1, 2, 4, 8, 16)
  c.study.generate_batch_size = 256  # prompts decoded together
  c.study.score_batch_size = 128  # solutions scored together
  c.study.majority_subsets = 256  # random subsets per problem and N for majority voting

  if arg == "tiny":
    c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 32, 2, 4, 2
    c.policy_train = _train(steps=4, lr=3e-3, batch_size=8, seq_len=256)
    c.reward_train = _train(steps=3, lr=1e-3, batch_size=8, seq_len=256)
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
