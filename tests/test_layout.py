"""The package's dependency rule, checked by parsing every module's imports (no module is imported here).

  top-level modules          import no algorithm subpackage (star, pg, prm, search); main.py, the CLI that
                             dispatches on the config's kind, is the one exception
  prm/                       imports only top-level modules, data/ and models/ (and itself)
  search/                    may also import prm/ (a PRM values states)
  star/                      may also import search/ and prm/ (the search phase makes rationales)
  pg/                        may also import star/ and prm/
                             (a layering: data, models <- prm <- search <- star <- pg; no cycles)
  nothing in star_jax        imports experiments/
  in-function imports        only with a one-line reason (a `# noqa: PLC0415 (...)` comment)
"""

import ast
import os
import re

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "star_jax")
ALGORITHMS = ("star", "pg", "prm", "search")
ALLOWED = {  # subpackage -> the star_jax subpackages it may import besides the top level, data and models
    "star": {"search", "prm"}, "prm": set(), "pg": {"star", "prm"}, "search": {"prm"}, "data": set(), "models": set(),
}


def _modules():
  for root, _, files in os.walk(PACKAGE):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(root, name)
        yield os.path.relpath(path, PACKAGE).replace(os.sep, "/"), path


def _imports(path):
  """(imported star_jax-relative parts, line, inside a function) of every import in the file."""
  with open(path, encoding="utf-8") as f:
    source = f.read()
  tree = ast.parse(source)
  lines = source.split("\n")
  functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
  inside = {id(n) for fn in functions for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    yield names, node.lineno, id(node) in inside, lines[node.lineno - 1]


def _subpackages(names):
  """The star_jax subpackages (first component after star_jax) that an import's names reach."""
  out = set()
  for name in names:
    parts = name.split(".")
    if parts[0] == "star_jax" and len(parts) > 1 and parts[1] in ALGORITHMS + ("data", "models"):
      out.add(parts[1])
  return out


@pytest.mark.parametrize("module,path", list(_modules()))
def test_import_rule(module, path):
  where = module.split("/")[0] if "/" in module else None
  for names, line, in_function, text in _imports(path):
    assert not any(n == "experiments" or n.startswith("experiments.") for n in names), \
        f"star_jax/{module}:{line} imports experiments: {text.strip()}"
    reached = _subpackages(names) - {"data", "models"} - ({where} if where else set())
    if where is None:  # a top-level module
      assert module == "main.py" or not reached, f"star_jax/{module}:{line} (top level) imports {reached}"
    else:
      assert reached <= ALLOWED.get(where, set()), f"star_jax/{module}:{line} ({where}/) imports {reached}"
    if in_function:
      assert re.search(r"# noqa: PLC0415 \(.+\)", text), \
          f"star_jax/{module}:{line}: an in-function import needs a one-line reason: {text.strip()}"


def test_the_rule_sees_violations(tmp_path):
  """The parser finds a top-level import of a subpackage and an unexplained in-function import."""
  bad = tmp_path / "bad.py"
  bad.write_text("from star_jax.pg import loop\n\ndef f():\n  from star_jax import star\n")
  found = list(_imports(str(bad)))
  assert _subpackages(found[0][0]) == {"pg"} and found[1][2] and not re.search(r"# noqa: PLC0415 \(", found[1][3])
