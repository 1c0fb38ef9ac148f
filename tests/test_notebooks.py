"""The colab/ notebooks run top to bottom (tiny scale) on the CPU."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

COLAB = os.path.join(os.path.dirname(__file__), "..", "colab")


@pytest.mark.parametrize("name", ["quickstart.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
  monkeypatch.setenv("STAR_JAX_NOTEBOOK_SCALE", "tiny")
  monkeypatch.setenv("STAR_JAX_REPO", os.path.abspath(os.path.join(COLAB, "..")))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  notebook = nbformat.read(os.path.join(COLAB, name), as_version=4)
  NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), "the accuracy plot is displayed inline"
