"""The package's architecture, checked: sub-packages with one direction of imports, no cycles,
one module map, and size limits (docs/how_it_works.md, "Module map")."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxact"
# Each sub-package and what it may import besides itself: one direction, downwards.
LAYERS = ("data", "model", "engine", "store", "analysis", "study", "cli")
MAY_IMPORT = {
    "data": set(),
    "model": {"data"},
    "engine": {"model", "data"},
    "store": {"engine", "model", "data"},
    "analysis": {"store", "model", "data"},          # reads results through store, trains nothing
    "study": {"analysis", "store", "engine", "model", "data"},
    "cli": {"study", "analysis", "store", "engine", "model", "data"},
}
TOP_LEVEL = {"__init__", "__main__", "errors"}     # besides the command modules
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 300


def _modules() -> dict[str, Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    rel = path.relative_to(ROOT).with_suffix("")
    out[".".join(rel.parts)] = path
  return out


def _imports(path: Path) -> list[tuple[str, int, bool]]:
  """(imported jaxact module, line, inside a function) of every import in `path`."""
  tree = ast.parse(path.read_text(encoding="utf-8"))
  modules = _modules()
  out: list[tuple[str, int, bool]] = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("jaxact"):
        for alias in child.names:
          full = f"{child.module}.{alias.name}"
          out.append((full if full in modules else child.module, child.lineno, in_function))
      elif isinstance(child, ast.Import):
        out.extend([(a.name, child.lineno, in_function) for a in child.names
                    if a.name.startswith("jaxact")])
      visit(child, inside)
  visit(tree, False)
  return out


def _package(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 2 else None


def test_every_module_sits_in_a_sub_package():
  loose = [m for m, p in _modules().items() if _package(m) is None
           and m.split(".")[-1] not in TOP_LEVEL and "the command of" not in p.read_text()]
  assert not loose, f"modules outside the sub-packages (and not a command): {loose}"


def test_imports_go_one_way():
  bad = []
  for module, path in _modules().items():
    here = _package(module)
    for target, line, _ in _imports(path):
      there = _package(target)
      if here is None or there is None or there == here:
        continue
      if there not in MAY_IMPORT[here]:
        bad.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {target}")
  assert not bad, "\n".join(bad)


def test_no_import_cycle():
  graph = {m: {t for t, _, _ in _imports(p) if t in _modules() and t != m}
           for m, p in _modules().items()}
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for t in sorted(graph[m]):
      if state.get(t) == "open":
        pytest.fail("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
      if t not in state:
        visit(t)
    stack.pop()
    state[m] = "done"
  for m in sorted(graph):
    if m not in state:
      visit(m)


def test_no_import_inside_a_function_but_for_speed():
  """An import inside a function only where a comment says why (import time), never a cycle
  (test_no_import_cycle counts those imports too)."""
  bad = []
  for module, path in _modules().items():
    lines = path.read_text(encoding="utf-8").splitlines()
    for target, line, inside in _imports(path):
      if inside and "import time" not in lines[line - 1] and "lazily" not in lines[line - 1]:
        bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target} inside a function")
  assert not bad, "\n".join(bad)


def test_sizes():
  big = []
  for module, path in _modules().items():
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      limit = (MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else
               MAX_FUNCTION_LINES if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
               else None)
      if limit and node.end_lineno - node.lineno + 1 > limit:
        big.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} "
                   f"({node.end_lineno - node.lineno + 1} lines > {limit})")
  assert not big, "\n".join(big)


def test_one_module_map():
  """docs/how_it_works.md names every module once; nothing else keeps a map."""
  text = (ROOT / "docs" / "how_it_works.md").read_text(encoding="utf-8")
  section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
  missing = [m for m, p in _modules().items()
             if not m.endswith("__init__") and f"`{m.split('.', 1)[1].replace('.', '/')}" not in section
             and f"{m.split('.')[-1]}" not in section]
  assert not missing, f"modules the map does not name: {missing}"
  doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))) or ""
  assert "how_it_works.md" in doc and not re.search(r"^\s+\w+\s{2,}\w", doc, flags=re.M)
