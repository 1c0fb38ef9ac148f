"""STaR on the Game of 24 with Tree-of-Thoughts rationales (experiments/star_game24/): star_jax.star.run with the
search phase (star.search), run as sweep members from one base model.

  get_config()        the committed study: a 4-layer d_model 128 base model from the tot_game24 study
                      (star.base_dir), 3 iterations on 30% of the 1,000 train puzzles each, 200 held-out puzzles
  get_config("tiny")  seconds; used by tests/experiments/test_star_game24.py (after a tiny tot_game24 base)

The base model and the process reward model come from the tot_game24 study (run it first; its workdir's
policy/ and prm/):

  python -m experiments.tot_game24.study --config=experiments/configs/tot_game24.py --workdir=runs/tot_game24
  python -m experiments.sweep --config=experiments/configs/star_game24.py --sweep=comparison \
      --workdir=runs/sweeps/star_game24
  python -m experiments.star_game24.compare --workdir=runs/sweeps/star_game24 --out=experiments/star_game24

The PRM values every iteration's search; it was trained on the BASE model's samples (not retrained per
iteration: CPU time), which the report states. Validated by star_jax.star.config.star_experiment_from_config.
"""

import ml_collections

from star_jax.star import config as star_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  # Every field starts at its default (star_jax/config.py, star/config.py, search/: the comments live there);
  # only what this recipe changes is set below. The model keeps ModelConfig's defaults (= tot_game24's).
  c = star_config.default_config()
  c.data.task = "game24"
  c.data.test_size = 200  # held-out puzzles (the tot_game24 study's 200)

  c.train.batch_size = 16  # packed rows of ~2 examples
  c.train.seq_len = 256
  c.train.lr = 5e-4  # fine-tuning a trained base on a few hundred kept examples: a quarter of the base's lr
  c.train.warmup_steps = 10
  c.train.log_every = 20

  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 1

  c.eval.batch_size = 200

  c.star.iterations = 3
  c.star.base_steps = 150  # fine-tuning steps of iteration 1 (+20% per iteration)
  c.star.fraction_of_D = 0.3  # 300 of the 1,000 train puzzles per iteration (drawn anew each one)
  c.star.temperature = 0.7  # generation and rationalization at the ToT paper's temperature
  c.star.max_new_tokens = 160
  c.star.base_dir = "runs/tot_game24/policy"  # the tot_game24 study's base model
  c.star.search_chunk = 128
  c.star.eval_samples = 4  # held-out pass@1 / pass@4 by sampling, and steps solved by depth
  c.star.eval_search = True  # held-out: the same ToT search with M_n

  c.search.breadth = 1  # ToT-BFS b=1, n=5 (the greedy step beam) for data and evaluation
  c.search.step_tokens = 48
  c.search.temperature = 0.7
  c.value.aggregation = "last"  # P(the newest step is good): `good` covers every earlier step
  # trained on the base model's samples by tot_game24 (the committed `comparison` run used its first PRM, 600 x 4
  # samples, step AUC 0.854; the committed tot_game24 config now trains the 14,400-sample one, AUC 0.918)
  c.value.reward_model_dir = "runs/tot_game24/prm"
  c.value.seq_len = 192
  c.value.row_multiple = 256

  if arg == "tiny":
    c.model.d_model, c.model.n_layers, c.model.n_heads = 32, 1, 2  # = tot_game24's tiny model
    c.data.test_size = 6
    c.train.batch_size, c.train.warmup_steps, c.train.log_every = 8, 1, 1
    c.checkpoint.every_steps = 2
    c.eval.batch_size, c.eval.max_new_tokens = 16, 48
    c.star.iterations, c.star.base_steps, c.star.fraction_of_D = 2, 2, 0.01
    c.star.max_new_tokens, c.star.generate_batch_size = 48, 16
    c.star.search_chunk, c.star.eval_samples = 4, 2
    c.search.breadth, c.search.samples, c.search.step_tokens, c.search.answer_tokens = 2, 2, 16, 24
    c.value.row_multiple = 16
  elif arg:
    raise ValueError(f"unknown config variant {arg!r}; use '' or 'tiny'")
  return c


# The comparison of the search issue: one base model, equal iterations; each member a sweep member.
SWEEPS = {
    "comparison": [
        {"star.rationalize": True},  # STaR with rationalization
        {"star.rationalize": True, "star.search": True, "value.kind": "prm"},  # + ToT data valued by the PRM
        {"star.rationalize": True, "star.search": True, "value.kind": "oracle"},  # + ToT data, oracle (upper bound)
        {"star.rationalize": False},  # STaR without rationalization
        {"star.rationalize": False, "star.search": True, "value.kind": "prm"},  # ToT data in place of rationalization
    ],
}
# The comparison's follow-up (experiments/star_game24/README.md): every train puzzle each iteration and 60 fine-tuning
# steps (the comparison's small kept sets were over-trained: its accuracy peaked at iteration 1), the PRM trained
# on 14,400 base-model samples (tot_game24 with --config.study.reward_samples=16 --config.study.reward_puzzles=1000
# --config.reward_train.steps=600 in runs/tot_game24_prm2). Run with --config.star.iterations=2.
_ALL_OF_D = {"star.fraction_of_D": 1.0, "star.base_steps": 60, "value.reward_model_dir": "runs/tot_game24_prm2/prm"}
SWEEPS["all_of_d"] = [
    {**_ALL_OF_D, "star.rationalize": True},
    {**_ALL_OF_D, "star.rationalize": False},
    {**_ALL_OF_D, "star.rationalize": False, "star.search": True, "value.kind": "prm"},
    {**_ALL_OF_D, "star.rationalize": True, "star.search": True, "value.kind": "prm"},
]
