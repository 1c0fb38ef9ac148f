"""Process and outcome reward models (Lightman et al. 2023, arXiv 2305.20050; Math-Shepherd, arXiv 2312.08935).

  steps.py    step segmentation, label placement, exact and Monte-Carlo labels, aggregation, best-of-N
  losses.py   step (PRM) and outcome (ORM) losses
  train.py    reward-model state, jitted step, scoring, save/load
  reward.py   dense returns and per-token rewards from step scores; a learned PRM as reward
  implicit.py implicit PRM (PRIME): per-token rewards β log π_φ/π_ref, trained on outcome or step labels
  logprob.py  verifiers from the policy's own token log-probs (untrained min-prefix score, logistic head); AUC
"""
