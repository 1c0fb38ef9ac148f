"""Policy-gradient STaR on n-digit addition: star_jax.pg.run from the STaR experiment's base model.

  get_config()        the comparison run: RLOO, no KL; the other variants are the SWEEPS below
  get_config("demo")  the comparison that experiments/pg_star_arithmetic/ reports: star_arithmetic.py's
                      demo (1-3 digits, its base model), 16 questions x 4 samples per step
  get_config("tiny")  seconds; used by tests/pg/test_loop.py

Every section of experiments/configs/star_arithmetic.py (taken from that file, so the base model, data
and evaluation are the STaR experiment's) plus `rl`, validated by
star_jax.pg.config.rl_experiment_from_config. Point rl.base_workdir at a STaR run's workdir to start
from its very base model (`<workdir>/base/`); otherwise it is trained (identically) in this workdir.

  python -m star_jax.main --config=experiments/configs/pg_star_arithmetic.py --workdir=runs/pg_rloo \\
      --config.rl.base_workdir=runs/star_arithmetic --config.rl.advantage=rloo

The SWEEPS below run with the sweep runner (one rl.run per member, one shared base model, sweep.md/csv/png):

  python -m experiments.sweep --config=experiments/configs/pg_star_arithmetic.py --sweep=comparison \\
      --workdir=runs/sweeps/pg_comparison --config.rl.base_workdir=runs/star_arithmetic
"""

import ml_collections

from experiments.configs import star_arithmetic
from star_jax import config
from star_jax.pg import config as pg_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg not in ("", "demo", "tiny"):
    raise ValueError(f"unknown config variant {arg!r}; use '', 'demo' or 'tiny'")
  c = star_arithmetic.get_config(arg)
  c.kind = "pg"  # the job star_jax.main runs: policy-gradient STaR (star_jax/pg/)

  # The rl section at its defaults (star_jax/pg/config.py: RLOO, no KL, T = 1, lr 1e-4...), changed only here:
  c.rl = config.default_config(pg_config.RLConfig)
  c.rl.steps = 300  # policy updates (each: sample G x K = 32 x 8 responses, ~25k sampled tokens, score, update)
  c.rl.warmup_steps = 10  # lr warmup in optimizer steps
  c.rl.eval_every = 25  # steps between held-out evaluations (greedy accuracy + KL to base)

  c.checkpoint.every_steps = 25  # RL checkpoints (the base model's training uses the same interval)

  if arg == "demo":  # run until an equal-token budget: --config.rl.token_budget=<STaR's sampled tokens>
    c.rl.steps = 5_000
    c.rl.questions_per_step, c.rl.samples_per_question = 16, 4  # 64 samples, ~6k sampled tokens per step
    c.rl.max_new_tokens = c.star.max_new_tokens
    c.rl.eval_every = 50
    c.rl.lr = 5e-5  # 3e-4 drove RLOO to KL > 5 nats and 5% accuracy within 50 steps (experiments/pg_star_arithmetic/)
    c.checkpoint.every_steps = 100
  if arg == "tiny":
    c.model.n_layers = 1  # (star's tiny has 2) one layer: the tests compile sampler, step and eval quickly
    c.rl.steps = 4
    c.rl.questions_per_step, c.rl.samples_per_question = 4, 4  # 16 rows: a multiple of 8 simulated devices
    c.rl.max_new_tokens = 128  # = star.max_new_tokens in tiny
    c.rl.warmup_steps = 0
    c.rl.lr = 1e-3
    c.rl.eval_every = 2
    c.checkpoint.every_steps = 2
  return c


# Named sweeps: each a list of override sets (dotted key -> value) for a sweep runner. "comparison" is the
# issue's study (with classic STaR from star_arithmetic.py at an equal rl.token_budget).
_KL_BETAS = (0.01, 0.05, 0.2)
SWEEPS = {
    "comparison": ([{"rl.advantage": a} for a in ("none", "rloo", "grpo")]
                   + [{"rl.advantage": "rloo", "rl.kl_coef": b} for b in _KL_BETAS]),
    "advantage": [{"rl.advantage": a} for a in ("none", "batch_mean", "group_mean", "rloo", "grpo")],
    "normalisation": [{"rl.normalisation": n} for n in ("sequence_sum", "token_mean", "sequence_mean")],
    "kl_coef": [{"rl.advantage": "rloo", "rl.kl_coef": b} for b in _KL_BETAS],
    "kl_mode": [{"rl.kl_coef": 0.05, "rl.kl_mode": "reward", "rl.kl_estimator": "k1"},
                {"rl.kl_coef": 0.05, "rl.kl_mode": "loss", "rl.kl_estimator": "k3"},
                {"rl.kl_coef": 0.05, "rl.kl_mode": "loss", "rl.kl_estimator": "k2"}],
    # outcome-only vs + dense step reward, exact (the verifier) or learned (experiments/prm_arithmetic/'s PRM)
    "process_reward": [{"rl.process_reward": 0.0}, {"rl.process_reward": 1.0},
                       {"rl.process_reward": 1.0, "rl.process_reward_model": "runs/prm_arithmetic/prm"}],
    # per-step credit for the exact step reward (star_jax/pg/credit.py): summed per response, reward-to-go, GAE
    "credit": [{"rl.process_reward": 1.0}, {"rl.process_reward": 1.0, "rl.credit": "reward_to_go"},
               {"rl.process_reward": 1.0, "rl.credit": "gae", "rl.advantage": "none"}],
    "adaptive_kl": [{"rl.kl_coef": 0.05, "rl.kl_target": t} for t in (0.5, 2.0)],
    "ppo": [{"rl.ppo_epochs": 2, "rl.minibatches": 4, "rl.clip_eps": 0.2},
            {"rl.ppo_epochs": 4, "rl.minibatches": 4, "rl.clip_eps": 0.2}],
}
