"""Two JAX processes on localhost (gloo collectives) agree with one process on one device."""

import os
import subprocess
import sys

import jax
import numpy as np
import optax
import portpicker
import pytest

from tests.test_train import MESHES, run_steps

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")


@pytest.mark.e2e
def test_two_processes_match_single_process(tmp_path):
  port = portpicker.pick_unused_port()
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
  procs = [subprocess.Popen([sys.executable, WORKER, str(port), str(i), str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert "devices 8" in outputs[0] and "'process_count': 2" in outputs[1]

  ref_state, ref_losses = run_steps(MESHES["1 device"], optax.sgd(0.5))
  result = np.load(tmp_path / "result.npz")
  np.testing.assert_allclose(result["losses"], ref_losses, rtol=1e-5)
  for path, leaf in jax.tree_util.tree_leaves_with_path(ref_state.params):
    key = "/".join(str(k.key) for k in path)
    np.testing.assert_allclose(result[key], np.asarray(leaf), atol=2e-6, rtol=1e-5, err_msg=key)
