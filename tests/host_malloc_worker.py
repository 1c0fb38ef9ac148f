"""Subprocess of tests/test_host_malloc.py: minor page faults per train step, after host_malloc's call.

Prints one JSON line: {"applied": bool, "faults_per_step": [minor page faults of each of 6 steps, sorted]}.
A 2-layer, d_model 256 model on benchmarks/train_step.py's 16 x 128 batch, whose step temporary buffer
(~90 MiB) is larger than any glibc arena heap, so that with glibc's defaults it is mmapped and page-faulted
in afresh on every step.
"""

import json
import os
import resource
import sys

from star_jax import host_malloc

applied = host_malloc.reuse_freed_memory()  # before the first JAX computation, as the entry points do

import jax  # noqa: E402

from star_jax import models, sharding, train  # noqa: E402
from star_jax.config import TrainConfig  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import train_step as train_step_benchmark  # noqa: E402


def main():
  model_config = models.ModelConfig(vocab_size=100, d_model=256, n_layers=2, n_heads=4)
  train_config = TrainConfig(batch_size=16, seq_len=128, steps=100, warmup_steps=2)
  mesh = sharding.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
  batch = sharding.host_batch_to_global(train_step_benchmark.make_batch(
      "ref", False, train_config.batch_size, train_config.seq_len, model_config.vocab_size), mesh)
  tx = train.make_optimizer(train_config)
  state = train.create_train_state(model_config, tx, mesh, seed=0)
  step = train.compile_train_step(model_config, train_config, mesh, tx)
  for _ in range(3):  # compile, then let the heap reach its steady size
    state, metrics = step(state, batch, state.rng)
  jax.block_until_ready(metrics)
  faults = []
  for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    state, metrics = step(state, batch, state.rng)
    jax.block_until_ready(metrics)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  print(json.dumps({"applied": applied, "faults_per_step": sorted(faults)}))


if __name__ == "__main__":
  main()
