"""One process of the two-process test (tests/test_multihost.py); not collected by pytest.

usage: python tests/multihost_worker.py PORT PROCESS_ID OUT_DIR
Each process owns 4 simulated CPU devices; together they form one 8-device mesh (data=4, fsdp=2).
Runs two train steps on the shared global batch (each process feeds its own half), saves and restores
an Orbax checkpoint, and (process 0) writes the losses and final params for comparison.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

port, process_id, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import numpy as np  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root: `tests` imports
from star_jax import checkpoint, sharding, train  # noqa: E402
from tests.test_train import MODEL, TRAIN, make_batch  # noqa: E402

mesh = sharding.make_mesh((("data", 4), ("fsdp", 2), ("tensor", 1)))
tx = optax.sgd(0.5)
state = train.create_train_state(MODEL, tx, mesh, seed=0)
step_fn = train.compile_train_step(MODEL, TRAIN, mesh, tx)
losses = []
half = TRAIN.batch_size // 2
for i in range(2):
  local = {k: v[process_id * half:(process_id + 1) * half] for k, v in make_batch(i).items()}
  state, metrics = step_fn(state, sharding.host_batch_to_global(local, mesh), state.rng)
  losses.append(float(sharding.to_host(metrics["loss"])))

ckpt = checkpoint.Checkpointer(os.path.join(out_dir, "ckpt"))
ckpt.save(2, state, data_state={"process_count": jax.process_count()})
restored, data_state = ckpt.restore(checkpoint.abstract_like(state))
ckpt.close()
params = sharding.to_host(restored.params)
if process_id == 0:
  np.savez(os.path.join(out_dir, "result.npz"), losses=np.asarray(losses),
           **{"/".join(str(k.key) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)})
print(f"process {process_id} done: losses {losses}, devices {jax.device_count()}, restored {data_state}")
