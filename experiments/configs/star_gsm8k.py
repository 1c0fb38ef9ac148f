"""STaR (Zelikman et al. 2022, arXiv 2203.14465) on GSM8K with a pretrained Hugging Face checkpoint, for a TPU VM.

  get_config()        a TPU VM run (v4-8 / v5e-8 class: 4-8 chips, FSDP over all of them) of a ~1-2B
                      Llama/Qwen2 checkpoint; the paper's fine-tuning recipe (GPT-J 6B: lr 1e-6, batch 8,
                      40 steps growing 20% per iteration)
  get_config("tiny")  the same shape at toy sizes, for a smoke test with a tiny checkpoint on CPU

Nothing is downloaded. Give the local paths on the command line:

  python -m star_jax.main --config=experiments/configs/star_gsm8k.py --workdir=$HOME/runs/star_gsm8k \\
    --config.model.hf_path=/mnt/disks/models/Qwen2.5-1.5B \\
    --config.data.train_path=/mnt/disks/data/gsm8k/train.jsonl \\
    --config.data.test_path=/mnt/disks/data/gsm8k/test.jsonl

The model directory holds config.json, model.safetensors (or a sharded index) and tokenizer.json; it is
loaded with star_jax.models.load_hf and tokenized with star_jax.data.HFTokenizer. The data files are the
GSM8K JSONL ({"question", "answer"}, the final answer after '####'), built into TFDS by
star_jax.data.gsm8k.build_gsm8k; texts, hint and answer extraction are star_jax.data.gsm8k.Gsm8kTask.

Only the task and a few task-dependent sizes are set here; the paper's recipe for the train, checkpoint,
eval, mesh and star sections and the "tiny" variant are experiments/configs/common.py's (shared with
star_commonsense_qa.py); every other field keeps its dataclass default.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = common.new_config()  # a pretrained model section, every other field at its default; the recipe is below

  c.data.task = "gsm8k"  # star_jax.data.tasks.get_task: prompts, hints, answer extraction
  # Given on the command line (both default to ""):
  #   data.train_path  REQUIRED: GSM8K train.jsonl (STaR's D; few-shot exemplars come from it too)
  #   data.test_path   GSM8K test.jsonl: held-out accuracy each iteration ("" = no evaluation)

  return common.add_star_sections(
      c, arg,
      seq_len=1024,  # tokens per row (a GSM8K question + rationale is ~150-400 tokens; rows are packed)
      eval_split="test",  # held-out split (greedy accuracy of M_n each iteration)
      max_new_tokens=320,  # generation cap (gold GSM8K solutions are almost all under 300 tokens)
      num_shots=4,  # first train solutions (taken out of D) before each generation prompt; hinted to rationalize
  )
