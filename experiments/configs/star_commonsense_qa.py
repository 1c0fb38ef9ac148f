"""STaR (Zelikman et al. 2022, arXiv 2203.14465) on CommonsenseQA with a pretrained Hugging Face checkpoint,
for a TPU VM.

  get_config()        a TPU VM run (v4-8 / v5e-8 class: 4-8 chips, FSDP over all of them) of a ~1-2B
                      Llama/Qwen2 checkpoint; the paper's recipe (GPT-J 6B: lr 1e-6, batch 8, 40 steps
                      growing 20% per iteration, 96 generated tokens, evaluation on the dev set)
  get_config("tiny")  the same shape at toy sizes, for a smoke test with a tiny checkpoint on CPU

Nothing is downloaded. Give the local paths on the command line:

  python -m star_jax.main --config=experiments/configs/star_commonsense_qa.py --workdir=$HOME/runs/star_csqa \\
    --config.model.hf_path=/mnt/disks/models/Qwen2.5-1.5B \\
    --config.data.train_path=/mnt/disks/data/csqa/train_rand_split.jsonl \\
    --config.data.validation_path=/mnt/disks/data/csqa/dev_rand_split.jsonl \\
    --config.data.few_shot_path=/mnt/disks/data/csqa/exemplars.jsonl

CommonsenseQA has no rationales, so the few-shot exemplars (the paper used 10) are a small JSONL in the
dataset's own format with an extra "rationale" (the reasoning, without 'Therefore, the answer is ...',
which is appended from answerKey); see star_jax/data/commonsense_qa.py. The official test split has no
answerKey; it may be given as data.test_path but is never evaluated.

Only the task and a few task-dependent sizes are set here; the paper's recipe for the train, checkpoint,
eval, mesh and star sections and the "tiny" variant are experiments/configs/common.py's (shared with
star_gsm8k.py); every other field keeps its dataclass default.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = common.new_config()  # a pretrained model section, every other field at its default; the recipe is below

  c.data.task = "commonsense_qa"  # star_jax.data.tasks.get_task: prompts, '(CORRECT)' hint, answer extraction
  # Given on the command line (all default to ""):
  #   data.train_path       REQUIRED: train_rand_split.jsonl (STaR's D)
  #   data.validation_path  dev_rand_split.jsonl: held-out accuracy each iteration ("" = no evaluation)
  #   data.test_path        optional test_rand_split_no_answers.jsonl (unlabeled: built, never scored)
  #   data.few_shot_path    REQUIRED when star.num_shots > 0: exemplars with a "rationale" on every line

  return common.add_star_sections(
      c, arg,
      seq_len=512,  # tokens per row (a question, five choices and a one-line rationale: ~100-150 tokens)
      eval_split="validation",  # held-out split (the paper reports the dev set; test has no answers)
      max_new_tokens=96,  # generation cap (the paper: 96); the rationale is one line, stopped at '\n'
      num_shots=10,  # few_shot exemplars before each generation prompt (the paper: 10; hinted when rationalizing)
  )
