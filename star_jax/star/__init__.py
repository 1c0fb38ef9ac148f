"""STaR, Algorithm 1 (Zelikman et al. 2022, arXiv 2203.14465): generate, filter, rationalize, fine-tune.

  config.py   the `star` section and StarExperimentConfig (kind "star")
  data.py     records, filtering, rationalization, arithmetic seed sets (plain Python over text)
  tasks.py    a task's data, tokenizer, held-out sets, few-shot exemplars, caps and stop sequences
  loop.py     the resumable outer loop and the base model
  report.py   star_report.md and star_accuracy.png
"""

from star_jax.star.config import StarConfig, StarExperimentConfig, star_experiment_from_config
from star_jax.star.loop import base_examples, base_params, load_iteration_params, make_base_model, run

__all__ = ["StarConfig", "StarExperimentConfig", "base_examples", "base_params", "load_iteration_params",
           "make_base_model", "run", "star_experiment_from_config"]
