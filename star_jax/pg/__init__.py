"""Policy-gradient STaR (Zelikman et al. 2022, §3.2: J = Σ_i E[1(ŷ_i = y_i)]) with KL to a reference model.

  config.py       the `rl` section and RLExperimentConfig (kind "pg")
  advantages.py   advantage estimators (registry): none, batch_mean, group_mean, rloo, grpo
  credit.py       per-token credit from step rewards (rl.credit): reward-to-go with per-step LOO baselines, GAE
  kl.py           KL estimators k1/k2/k3 and the adaptive β controller
  objectives.py   the surrogate losses and their normalisations (pure maths)
  step.py         the jitted, sharded update (PPO epochs, reference log-probs)
  loop.py         sample → reward → update, resumable, with held-out evaluation
"""

from star_jax.pg.config import RLConfig, RLExperimentConfig, rl_experiment_from_config
from star_jax.pg.loop import run

__all__ = ["RLConfig", "RLExperimentConfig", "rl_experiment_from_config", "run"]
