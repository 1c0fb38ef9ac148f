"""STaR (Zelikman et al. 2022, arXiv 2203.14465) on n-digit addition: star_jax.star.make_base_model + star_jax.star.run.

  get_config()        the arithmetic experiment (experiments/star_arithmetic/, run "full5"): 3 layers,
                      d_model 64, |D| = 40,081 questions of 1-5 digits (5% drawn per iteration), 8 iterations
  get_config("demo")  `make demo` (run "demo2"): 1-3 digits, a 1,200-step base model, two iterations
  get_config("tiny")  seconds; used by tests/star/test_loop.py

The base model (never trained on a rationale for D or a test set) learns from the seed set P: all 81
one-digit problems (star.one_digit_repeats times), star.seed_per_digit scratchpads per length
2..max_train_digits, and the few 2-3 digit problems whose scratchpads show every single-digit fact
x + y + carry (star.carry_fact_digits), all drawn from the rationales split (disjoint from D and the tests),
each with the plain and the hinted prompt. |P| is 528 problems, 1.3% of |D|, here (the paper's bound: 5%);
the demo's is 210, 1.0% of its |D|.

Validated by star_jax.star.config.star_experiment_from_config (sections model/data/train/checkpoint/eval/mesh
as in arithmetic.py, plus `star`; every field starts at its dataclass default and this file sets what differs).
`train` is used twice: for the base model (star.seed_steps steps) and
for every iteration's fine-tuning (its steps replaced by ceil(star.base_steps * star.growth^(n-1))).
SWEEPS below are named lists of override sets for `python -m experiments.sweep`.
"""

import ml_collections

from star_jax.star import config as star_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  # Every field starts at its default (star_jax/config.py, star/config.py: the comments live there);
  # only what this recipe changes is set below.
  c = star_config.default_config()  # kind "star": the STaR loop
  c.model.n_kv_heads = 4  # = n_heads, spelled out (the saved configs of existing workdirs hold 4)
  c.model.d_model, c.model.n_layers = 64, 3  # 3.5x faster steps than 128 x 4; learns 1-3 digit addition

  c.data.rationales_per_digit = 1000  # pool of the seed scratchpads and carry facts; disjoint from D and tests
  c.data.questions_per_digit = 10_000  # STaR's dataset D per length (1 digit: all 81), answers only

  c.train.batch_size = 16  # global rows per step
  c.train.seq_len = 256  # tokens per row (a 5-digit example is ~200 tokens; generations are capped to fit)
  c.train.steps = 1  # unused: star.seed_steps / the per-iteration schedule set the steps
  c.train.warmup_steps = 50  # linear warmup (each fine-tuning restarts its schedule)
  c.train.log_every = 25  # metric interval (TensorBoard + logs/metrics.jsonl)

  c.checkpoint.every_steps = 200  # save interval within each fine-tuning (and at its end)
  c.checkpoint.keep = 1  # checkpoints kept per fine-tuning (the last one is M_n)

  c.eval.batch_size = 100  # prompts decoded together
  c.eval.max_new_tokens = 288  # cap (an 8-digit target is 268 characters)

  c.star.iterations = 8  # outer-loop iterations N (full5: 96.5% after 6, 99.6% after 8)
  c.star.base_steps = 800  # fine-tuning steps of iteration 1 (fewer underfit the kept set: experiments/star_arithmetic/)
  c.star.fraction_of_D = 0.05  # fraction of D generated on per iteration (drawn anew each iteration): ~2,000
  c.star.mix_seed = True  # also fine-tune on P (not in Algorithm 1: our stand-in for the paper's few-shot prompt)
  c.star.seed_per_digit = 100  # base model: scratchpads per length 2..5 (30 left 4-5 digits unrationalized: full2)
  c.star.one_digit_repeats = 3  # base model: the 81 one-digit seeds 3 times (else 1-digit fell to 12%: full3)
  c.star.carry_fact_digits = 3  # base model: + the ~90 2-3 digit split problems showing every x + y + carry fact
  c.star.seed_steps = 3000  # base model: training steps on the seed examples (plain + hinted prompts)
  # few-shot prompting is not implemented for arithmetic: the base model is fine-tuned on the seed examples instead.

  if arg == "demo":  # `make demo`: 1-3 digit D, a small model, a ~2 minute base model, two iterations
    c.data.max_train_digits, c.data.max_test_digits, c.data.test_per_digit = 3, 4, 50
    c.train.batch_size, c.train.seq_len, c.train.warmup_steps = 16, 160, 30  # a 3-digit example: 129 tokens
    c.eval.batch_size, c.eval.max_new_tokens = 200, 144  # a 4-digit target is 130 characters
    c.star.seed_per_digit, c.star.one_digit_repeats = 30, 1  # the seed set (210 problems) is 1.0% of |D| = 20,081
    c.star.seed_steps = 1200
    c.star.iterations, c.star.base_steps, c.star.fraction_of_D = 2, 800, 0.1  # ~2,000 questions per iteration
    c.star.max_new_tokens = 112
  elif arg == "tiny":
    c.model.d_model, c.model.n_layers, c.model.n_heads, c.model.n_kv_heads = 32, 2, 4, 2
    c.data.max_train_digits, c.data.max_test_digits = 2, 3
    c.data.rationales_per_digit, c.data.questions_per_digit, c.data.test_per_digit = 4, 8, 8
    c.train.batch_size, c.train.seq_len = 8, 128
    c.train.warmup_steps, c.train.log_every = 2, 2
    c.checkpoint.every_steps, c.checkpoint.keep = 4, 2
    c.eval.batch_size, c.eval.max_new_tokens = 8, 128
    c.star.iterations, c.star.base_steps, c.star.fraction_of_D = 2, 6, 1.0
    c.star.max_new_tokens, c.star.generate_batch_size = 128, 8  # = eval's: one sampler compilation
    c.star.seed_per_digit, c.star.one_digit_repeats, c.star.seed_steps = 4, 1, 6  # 6 = base_steps: one compilation
    c.star.carry_fact_digits = 0  # (tested on its own in tests/star/test_loop.py)
    c.star.mix_seed = False  # Algorithm 1 exactly: the tests count the kept examples as the training set
  elif arg:
    raise ValueError(f"unknown config variant {arg!r}; use '', 'demo' or 'tiny'")
  return c


# Named sweeps: each a list of override sets (dotted key -> value) for a sweep runner.
SWEEPS = {
    "rationalization": [{"star.rationalize": True}, {"star.rationalize": False}],
    "restart_from_base": [{"star.restart_from_base": True}, {"star.restart_from_base": False}],
    "temperature": [{"star.temperature": t} for t in (0.0, 0.5, 1.0)],
    "fraction_of_D": [{"star.fraction_of_D": f} for f in (0.25, 0.5, 1.0)],
    "seed_per_digit": [{"star.seed_per_digit": k} for k in (5, 10, 50)],
    "carry_facts": [{"star.carry_fact_digits": 2}, {"star.carry_fact_digits": 0}],
}
