"""The colab/ notebooks run top to bottom (tiny scale) on the CPU."""

import ast
import os

import nbformat
import pytest
from nbclient import NotebookClient

from experiments.configs import arithmetic as arithmetic_config

COLAB = os.path.join(os.path.dirname(__file__), "..", "colab")


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["quickstart.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
  monkeypatch.setenv("STAR_JAX_NOTEBOOK_SCALE", "tiny")
  monkeypatch.setenv("STAR_JAX_REPO", os.path.abspath(os.path.join(COLAB, "..")))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  notebook = nbformat.read(os.path.join(COLAB, name), as_version=4)
  client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), "the accuracy plot is displayed inline"

  # The accuracies sft.run returned are shown, and the report displayed has a row of those numbers per length.
  (shown,) = [o["data"]["text/plain"] for o in outputs
              if o.output_type == "execute_result" and "acc_train_lengths" in o["data"].get("text/plain", "")]
  accuracy = ast.literal_eval(shown)
  data = arithmetic_config.get_config("tiny").data
  lengths = range(1, data.max_test_digits + 1)
  assert set(accuracy) == {f"acc_{n}digit" for n in lengths} | {"acc_overall", "acc_train_lengths"}
  assert all(0 <= v <= 1 for v in accuracy.values())
  (report,) = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
  for n in lengths:
    assert f"| {n} | {100 * accuracy[f'acc_{n}digit']:.1f}% |" in report
  assert f"| **1–{data.max_train_digits}** | **{100 * accuracy['acc_train_lengths']:.1f}%** |" in report


@pytest.mark.e2e
def test_tot_game24_notebook_runs(tmp_path, monkeypatch):
  """colab/tot_game24.ipynb at tiny scale: the summary it shows agrees with the report table it displays."""
  from experiments.configs import tot_game24  # noqa: PLC0415 (only this test needs the study's config)
  monkeypatch.setenv("STAR_JAX_NOTEBOOK_SCALE", "tiny")
  monkeypatch.setenv("STAR_JAX_REPO", os.path.abspath(os.path.join(COLAB, "..")))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  notebook = nbformat.read(os.path.join(COLAB, "tot_game24.ipynb"), as_version=4)
  client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), "the success-vs-tokens plot is displayed inline"
  (shown,) = [o["data"]["text/plain"] for o in outputs
              if o.output_type == "execute_result" and "base_step_correct" in o["data"].get("text/plain", "")]
  summary = ast.literal_eval(shown)
  study = tot_game24.get_config("tiny").study
  runs = {f"tot_{v}_b{b}_n{n}" for v in study["values"] for b, n in study["tot"]}
  assert set(summary) == {"base_step_correct", "cot_greedy", "prm_step_auc"} | runs
  assert 0 <= summary["base_step_correct"] <= 1 and 0 <= summary["cot_greedy"] <= 1
  (report,) = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
  for name in runs:
    success, tokens = summary[name]
    value, b, n = name[len("tot_"):].rsplit("_", 2)
    label = {"prm": "PRM (learned)", "logprob": "policy log-prob", "oracle": "exact oracle (upper bound)"}[value]
    assert f"| {label} | {b[1:]} | {n[1:]} | {100 * success:.1f}% " in report and f"| {tokens} |" in report
