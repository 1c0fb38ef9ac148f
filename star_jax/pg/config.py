"""Typed, validated `rl` section of a policy-gradient STaR experiment (experiments/configs/pg_star_arithmetic.py).

An RL experiment has every section of a STaR experiment (model/data/train/checkpoint/eval/mesh/star: the
base model is made exactly as the STaR loop makes it) plus `rl`. Errors name the key:
`config.rl.kl_coef must be >= 0, got -0.1`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from star_jax.config import require
from star_jax.pg import advantages, credit, kl, objectives
from star_jax.star.config import StarExperimentConfig, star_experiment_from_config

KL_MODES = ("loss", "reward")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """The online policy-gradient loop (star_jax/pg/loop.py) and its update step (star_jax/pg/step.py)."""
  steps: int = 200  # policy updates; each samples, scores and updates once (rl.ppo_epochs x rl.minibatches optimizer steps)
  token_budget: int = 0  # also stop once this many response tokens were sampled (0: no budget)
  questions_per_step: int = 32  # G questions per step, drawn from D without replacement (epoch by epoch)
  samples_per_question: int = 8  # K responses per question (the group of rloo/grpo/group_mean)
  temperature: float = 1.0  # the policy is softmax(logits / temperature): sampling and training agree exactly
  max_new_tokens: int = 192  # generation cap (also capped per batch by the longest true target + 16)
  advantage: str = "rloo"  # advantages.ADVANTAGES: none | batch_mean | group_mean | rloo | grpo
  normalisation: str = "sequence_sum"  # objectives.NORMALISATIONS: sequence_sum | token_mean | sequence_mean
  ppo_epochs: int = 1  # passes over each batch of samples
  minibatches: int = 1  # optimizer steps per pass (the batch split in this many parts)
  clip_eps: float = 0.0  # PPO ratio clipping epsilon (0: none; the importance ratio is still applied)
  process_reward: float = 0.0  # w > 0: R = 1(ŷ = y) + w · (steps right before the first error) / (steps expected), rl.step_rewarded
  process_reward_model: str = ""  # a trained PRM directory (experiments/prm_arithmetic/study.py writes one): prm/reward.py
  credit: str = "sequence"  # credit.CREDITS: "sequence" (one advantage per response) | "reward_to_go" (per-step LOO baselines) | "gae" (value head)
  gae_gamma: float = 1.0  # rl.credit = "gae": discount γ per token
  gae_lambda: float = 0.95  # rl.credit = "gae": GAE's λ (1: Monte-Carlo returns minus the value; 0: one-step TD errors)
  value_coef: float = 0.1  # rl.credit = "gae": weight c of the value loss c · ½(V − Ĝ)² (token mean) added to the policy loss
  value_lr: float = 1e-3  # rl.credit = "gae": Adam learning rate of the value head (its trunk is the policy's, at rl.lr)
  kl_coef: float = 0.0  # β of the KL penalty to the base model (0: no reference forward pass at all)
  kl_estimator: str = "k3"  # kl.KL_ESTIMATORS: k1 | k2 | k3
  kl_mode: str = "loss"  # "loss": β·k per token in the loss; "reward": R − β·Σ_t k before the advantages
  kl_target: float = 0.0  # > 0: adapt β toward this per-sequence KL (Ziegler et al. 2019); 0: fixed β
  kl_horizon: int = 10_000  # adaptive β: samples over which β may change by ~20%
  lr: float = 1e-4  # Adam learning rate of the RL updates (constant after warmup; other AdamW settings: train.*)
  warmup_steps: int = 0  # linear lr warmup, in optimizer steps
  log_every: int = 1  # steps between metric writes
  eval_every: int = 50  # steps between held-out evaluations (greedy accuracy + KL to the base model)
  base_workdir: str = ""  # the workdir whose base/ holds the base model (a STaR run's); "" = this workdir
  base_iteration: int = 0  # the start model (= KL reference): 0 = the base model (base/); N > 0 = rl.base_workdir's STaR M_N (iter_N/)
  seed: int = 0  # question order and sampling keys derive from (seed, step)

  def __post_init__(self):
    for key in ("steps", "questions_per_step", "samples_per_question", "max_new_tokens", "ppo_epochs",
                "minibatches", "kl_horizon", "log_every", "eval_every"):
      require(getattr(self, key) > 0, f"rl.{key}", getattr(self, key), "must be > 0")
    require(self.token_budget >= 0, "rl.token_budget", self.token_budget, "must be >= 0")
    require(self.base_iteration >= 0, "rl.base_iteration", self.base_iteration, "must be >= 0")
    require(self.base_iteration == 0 or bool(self.base_workdir), "rl.base_iteration", self.base_iteration,
             "needs rl.base_workdir (the STaR run whose iter_<N>/ holds M_N)")
    require(self.temperature > 0, "rl.temperature", self.temperature, "must be > 0 (RL samples; greedy is for eval)")
    require(self.advantage in advantages.ADVANTAGES, "rl.advantage", self.advantage,
             f"must be one of {sorted(advantages.ADVANTAGES)}")
    require(self.normalisation in objectives.NORMALISATIONS, "rl.normalisation", self.normalisation,
             f"must be one of {list(objectives.NORMALISATIONS)}")
    require(0 <= self.clip_eps < 1, "rl.clip_eps", self.clip_eps, "must be in [0, 1)")
    require(self.kl_coef >= 0, "rl.kl_coef", self.kl_coef, "must be >= 0")
    require(self.process_reward >= 0, "rl.process_reward", self.process_reward, "must be >= 0")
    require(not self.process_reward_model or self.process_reward > 0, "rl.process_reward_model",
             self.process_reward_model, "needs rl.process_reward > 0 (the weight w of its step scores)")
    require(self.credit in credit.CREDITS, "rl.credit", self.credit, f"must be one of {list(credit.CREDITS)}")
    if self.credit == "reward_to_go":
      require(self.advantage in ("rloo", "none"), "rl.advantage", self.advantage,
               "must be 'rloo' (per-step leave-one-out baselines) or 'none' (no baseline) with rl.credit='reward_to_go'")
    if self.credit == "gae":
      require(self.advantage == "none", "rl.advantage", self.advantage,
               "must be 'none' with rl.credit='gae' (the value head is the baseline)")
    require(0 < self.gae_gamma <= 1, "rl.gae_gamma", self.gae_gamma, "must be in (0, 1]")
    require(0 <= self.gae_lambda <= 1, "rl.gae_lambda", self.gae_lambda, "must be in [0, 1]")
    require(self.value_coef >= 0, "rl.value_coef", self.value_coef, "must be >= 0")
    require(self.value_lr > 0, "rl.value_lr", self.value_lr, "must be > 0")
    if self.credit != "gae":
      for key in ("gae_gamma", "gae_lambda", "value_coef", "value_lr"):
        require(getattr(self, key) == getattr(RLConfig, key), f"rl.{key}", getattr(self, key),
                 "is used only with rl.credit='gae' (leave it at its default)")
    require(self.kl_estimator in kl.KL_ESTIMATORS, "rl.kl_estimator", self.kl_estimator,
             f"must be one of {sorted(kl.KL_ESTIMATORS)}")
    require(self.kl_mode in KL_MODES, "rl.kl_mode", self.kl_mode, f"must be one of {list(KL_MODES)}")
    require(self.kl_target >= 0, "rl.kl_target", self.kl_target, "must be >= 0")
    require(self.kl_target == 0 or self.kl_coef > 0, "rl.kl_target", self.kl_target,
             "needs rl.kl_coef > 0 (the initial β the controller adapts)")
    require(self.lr > 0, "rl.lr", self.lr, "must be > 0")
    require(self.warmup_steps >= 0, "rl.warmup_steps", self.warmup_steps, "must be >= 0")

  @property
  def batch_size(self) -> int:
    """Sampled responses per step: questions_per_step x samples_per_question."""
    return self.questions_per_step * self.samples_per_question

  @property
  def updates_per_step(self) -> int:
    return self.ppo_epochs * self.minibatches

  @property
  def uses_value_head(self) -> bool:
    """Whether the policy carries a value head (rl.credit = "gae")."""
    return self.credit == "gae"

  @property
  def uses_reference(self) -> bool:
    """Whether the update needs reference log-probs (β > 0)."""
    return self.kl_coef > 0


@dataclasses.dataclass(frozen=True)
class RLExperimentConfig(StarExperimentConfig):
  """A StarExperimentConfig plus the `rl` section. The loop starts from the STaR experiment's base model
  (star.base_params: model.hf_path's weights, or the arithmetic base model trained on seed scratchpads), or
  with rl.base_iteration = N > 0 from the STaR run's iteration-N model M_N (pg.loop.start_params); any task."""
  kind: str = "pg"
  rl: RLConfig = dataclasses.field(default_factory=RLConfig)

  def __post_init__(self):
    super().__post_init__()
    require(self.train.grad_accum_steps == 1, "train.grad_accum_steps", self.train.grad_accum_steps,
             "must be 1 in an RL experiment (split the RL batch with rl.minibatches)")
    require(self.rl.batch_size % self.rl.minibatches == 0, "rl.minibatches", self.rl.minibatches,
             f"must divide rl.questions_per_step x rl.samples_per_question = {self.rl.batch_size}")


def rl_experiment_from_config(config: Mapping[str, Any]) -> RLExperimentConfig:
  """Validate a policy-gradient experiment ConfigDict (the STaR sections plus `rl`); unknown keys raise naming them."""
  return star_experiment_from_config(config, RLExperimentConfig)
