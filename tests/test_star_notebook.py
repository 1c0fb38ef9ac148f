"""colab/star_arithmetic.ipynb runs top to bottom (tiny scale) on the CPU: base model, STaR iterations,
the per-iteration table and the accuracy plot inline."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

COLAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "colab")


@pytest.mark.e2e
def test_star_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.setenv("STAR_JAX_NOTEBOOK_SCALE", "tiny")  # the convention of tests/test_notebooks.py
  monkeypatch.setenv("STAR_JAX_REPO", os.path.abspath(os.path.join(COLAB, "..")))
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  notebook = nbformat.read(os.path.join(COLAB, "star_arithmetic.ipynb"), as_version=4)
  client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), "the accuracy plot is displayed inline"

  # The loop ran its iterations in the notebook's workdir, and the table shown is of those records.
  workdir = tmp_path / "star_notebook_tiny"
  with open(workdir / "star_metrics.jsonl", encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert [r["iteration"] for r in records] == [0, 1, 2]
  (table,) = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
  per_iteration = next(block for block in table.split("\n\n") if block.startswith("| iter | steps"))
  rows = per_iteration.splitlines()[2:]
  assert [row.split("|")[1].strip() for row in rows] == ["0", "1", "2"]
  assert [row.split("|")[4].strip() for row in rows[1:]] == [str(r["kept_generated"]) for r in records[1:]]
  printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "iter 2 | kept" in printed and "iteration 1:" in printed
