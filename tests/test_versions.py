"""One version number (pyproject.toml's) everywhere, the installs that pin constraints.txt,
CHANGELOG.md and CITATION.cff."""

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import jaxact

REPO = Path(__file__).resolve().parents[1]


def _project() -> dict:
  with open(REPO / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]


def _pins() -> dict[str, str]:
  pins = {}
  for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      name, version = line.split("==")
      pins[canonicalize_name(name)] = version
  return pins


def test_version_is_pyprojects():
  assert jaxact.__version__ == _project()["version"]


def test_version_of_a_source_tree_without_metadata(monkeypatch):
  def missing(name):
    raise metadata.PackageNotFoundError(name)
  monkeypatch.setattr(metadata, "distribution", missing)
  assert jaxact._version() == _project()["version"]   # pylint: disable=protected-access


def test_changelog_begins_with_this_version():
  text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
  headings = re.findall(r"^## (\S+)", text, re.M)
  assert headings and headings[0] == _project()["version"], headings
  # Each entry says what changed in results first.
  for entry in re.split(r"^## ", text, flags=re.M)[1:]:
    assert "**Results.**" in entry, entry[:80]


def test_citation_cff():
  yaml = pytest.importorskip("yaml")   # PyYAML comes with jaxact's dependencies (constraints.txt)
  cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
  # CFF 1.2.0's required keys; the authors as one entity; the version is pyproject's.
  assert cff["cff-version"] == "1.2.0"
  assert {"cff-version", "message", "title", "authors"} <= set(cff)
  assert cff["authors"] == [{"name": "jaxact contributors"}]
  assert cff["version"] == _project()["version"]
  assert cff["license"] == _project()["license"]
  # Nothing that points to a place or an identifier this project does not have.
  assert not {"doi", "url", "repository-code", "identifiers", "preferred-citation"} & set(cff)


def test_constraints_pin_the_test_extra():
  pins = _pins()
  for req in map(Requirement, _project()["optional-dependencies"]["test"]):
    name = canonicalize_name(req.name)
    assert name in pins, f"constraints.txt does not pin {req.name} (the [test] extra)"
    assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} is outside {req}"


def _pip_installs(text: str) -> list[str]:
  return [m.group(0) for m in re.finditer(r"pip install[^\n&]*", text)]


def test_readme_and_ci_install_with_the_constraints():
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
  ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
  installs = [c for c in _pip_installs(quick) + _pip_installs(ci) if " -e " in c]
  assert len(installs) >= 3, installs
  for command in installs:
    assert "-c constraints.txt" in command, command
