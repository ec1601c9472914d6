"""The install: constraints.txt against pyproject.toml's bounds, and the Colab notebook's guard.

The guard is the notebook's code cell tagged "guard" (experiments/colab_tpu.ipynb), run here on
its own: `plan_install` returns the pip commands that install jaxact with --no-deps and only the
dependencies the runtime lacks, with its jax, jaxlib and libtpu pinned; where the runtime's jax
is older than pyproject.toml's bound, one pip command that installs a matching jax with the
runtime's backend (jax[tpu], jax[cuda12]) and the missing dependencies, and a restart.

test_guard_keeps_an_older_jax_in_a_real_venv builds a virtual environment with the jax release
just below the bound (jax and jaxlib without their dependencies: the guard reads versions, it
imports no jax; ~80 MB from PyPI, 40-55 s on the 2-core VM) and runs the notebook's install cells
in it (printing their pip commands, running none). It skips where pip cannot fetch jax (no
network), and with JAXACT_SLOW_TESTS=0.
"""

import os
import re
import subprocess
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from test_notebook import _load, tagged_cells   # pylint: disable=g-bad-import-order

try:
  import tomllib   # pylint: disable=g-import-not-at-top
except ImportError:   # Python 3.10: pip's copy of tomli
  from pip._vendor import tomli as tomllib   # pylint: disable=g-import-not-at-top

REPO = Path(__file__).resolve().parents[1]
# The jax release just below pyproject.toml's bound (checked below), for the real-venv test.
OLD_JAX = "0.8.0"
# What the code needs (BUILD_NOTES.md, Dependencies): flax 0.12.1's own floor.
JAX_FLOOR = "0.8.1"


def _dependencies() -> list[Requirement]:
  with open(REPO / "pyproject.toml", "rb") as f:
    return [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]


def _constraints() -> dict[str, str]:
  pins = {}
  for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line)
      assert m, f"constraints.txt: not a name==version pin: {line!r}"
      name = canonicalize_name(m.group(1))
      assert name not in pins, f"constraints.txt pins {name} twice"
      pins[name] = m.group(2)
  return pins


def _jax_bound() -> Requirement:
  return next(r for r in _dependencies() if r.name == "jax")


@pytest.fixture(scope="module")
def guard() -> dict:
  namespace = {}
  cell = compile(tagged_cells(_load(), "guard"), "<notebook guard>", "exec")
  exec(cell, namespace)   # pylint: disable=exec-used
  return namespace


def test_constraints_pin_every_dependency_within_its_bound():
  pins = _constraints()
  for req in _dependencies():
    name = canonicalize_name(req.name)
    assert name in pins, f"constraints.txt does not pin {req.name} (a pyproject dependency)"
    assert req.specifier.contains(pins[name], prereleases=True), (
        f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req}")
  assert pins["jaxlib"] == pins["jax"]   # jax and jaxlib are released together


def test_old_jax_is_below_the_bound():
  assert not _jax_bound().specifier.contains(OLD_JAX)


def test_the_jax_floor_is_what_the_code_needs():
  """pyproject.toml asks for no newer jax than the code needs, and no older than flax's floor."""
  assert str(_jax_bound().specifier) == f">={JAX_FLOOR}"
  flax = next(r for r in _dependencies() if r.name == "flax")
  assert str(flax.specifier) == ">=0.12.1"   # nnx.List; flax 0.12.1 itself asks for jax>=0.8.1


def _runtime(jax: str) -> dict[str, str]:
  """A Colab-like runtime: its own jax stack, some of jaxact's dependencies, flax too old."""
  return {"jax": jax, "jaxlib": jax, "libtpu": "0.0.99", "numpy": "2.0.2", "scipy": "1.14.1",
          "matplotlib": "3.10.0", "absl-py": "2.1.0", "flax": "0.10.2", "pillow": "11.1.0",
          "tensorflow-datasets": "4.9.9", "unrelated": "1.0"}


@pytest.mark.parametrize("backend, extra", [
    ({"libtpu": "0.0.99"}, "tpu"), ({"jax-cuda12-plugin": OLD_JAX, "jax-cuda12-pjrt": OLD_JAX},
                                    "cuda12"), ({}, None)])
def test_guard_installs_a_matching_jax_below_the_bound(guard, backend, extra):
  bound = _jax_bound()
  requirements = [str(r) for r in _dependencies()]
  runtime = {n: v for n, v in _runtime(OLD_JAX).items() if n != "libtpu"}
  runtime.update(backend)
  commands, pins, restart = guard["plan_install"](str(REPO), requirements, runtime,
                                                  "/tmp/pins.txt")
  assert restart and pins == ""
  stack, own = commands
  # One pip command: jax with the runtime's backend, and what the runtime lacks, nothing pinned.
  jax = f"jax[{extra}]{bound.specifier}" if extra else f"jax{bound.specifier}"
  assert stack[:4] == ["install", "-q", "-U", jax] and "-c" not in stack
  named = {canonicalize_name(Requirement(r).name) for r in stack[3:]}
  assert "flax" in named and "optax" in named and not named & {"numpy", "scipy", "libtpu"}
  assert own == ["install", "-q", "--no-deps", "-e", str(REPO)]
  assert guard["backend_extra"](runtime) == extra


def test_guard_keeps_a_jax_at_or_above_the_bound(guard):
  bound = _jax_bound()
  at_bound = str(min(Version(s.version) for s in bound.specifier if ">" in s.operator))
  requirements = [str(r) for r in _dependencies()]
  for jax in (at_bound, "99.0.0"):
    runtime = _runtime(jax)
    commands, pins, restart = guard["plan_install"](str(REPO), requirements, runtime,
                                                    "/tmp/pins.txt")
    assert not restart
    # The runtime's jax stack is pinned as it is; nothing else is.
    assert pins.splitlines() == [f"jax=={jax}", f"jaxlib=={jax}", "libtpu==0.0.99"]
    deps, own = commands
    # jaxact itself without its dependencies...
    assert own == ["install", "-q", "--no-deps", "-e", str(REPO)]
    # ...and only the dependencies the runtime lacks or has too old, under the pins.
    assert deps[:4] == ["install", "-q", "-c", "/tmp/pins.txt"]
    named = {canonicalize_name(Requirement(r).name) for r in deps[4:]}
    assert "flax" in named and "optax" in named              # too old; absent
    assert not named & {"jax", "jaxlib", "libtpu", "numpy", "scipy", "absl-py", "pillow"}
    bounds = {canonicalize_name(r.name): r.specifier for r in _dependencies()}
    assert ("tensorflow-datasets" in named) != bounds["tensorflow-datasets"].contains("4.9.9")


def test_guard_installs_nothing_but_jaxact_when_all_is_there(guard, tmp_path):
  runtime = {canonicalize_name(r.name): "999" for r in _dependencies()}
  wheel = tmp_path / "jaxact-0.1.0-py3-none-any.whl"
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("jaxact-0.1.0.dist-info/METADATA",
               "Metadata-Version: 2.4\nName: jaxact\nVersion: 0.1.0\n"
               "Requires-Dist: jax>=0.8.0\nRequires-Dist: flax>=0.12.0\n"
               'Requires-Dist: pytest>=8; extra == "test"\n')
  requirements = guard["read_requirements"](str(wheel))
  assert requirements == ["jax>=0.8.0", "flax>=0.12.0", 'pytest>=8; extra == "test"']
  commands, _, _ = guard["plan_install"](str(wheel), requirements, runtime, "/tmp/pins.txt")
  assert commands == [["install", "-q", "--no-deps", str(wheel)]]   # the test extra is skipped


def test_guard_installs_jax_where_there_is_none(guard):
  commands, pins, restart = guard["plan_install"](str(REPO), ["jax>=0.8.0", "numpy"],
                                                  {"numpy": "2.0"}, "/tmp/pins.txt")
  assert pins == "" and not restart
  assert commands[0] == ["install", "-q", "-c", "/tmp/pins.txt", "jax>=0.8.0"]


def test_guard_reads_the_checkouts_bounds(guard):
  assert guard["read_requirements"](str(REPO)) == [str(r) for r in _dependencies()]


@pytest.mark.skipif(os.environ.get("JAXACT_SLOW_TESTS") == "0",
                    reason="JAXACT_SLOW_TESTS=0: skips the download of jax + jaxlib (~80 MB)")
def test_guard_keeps_an_older_jax_in_a_real_venv(tmp_path):
  env_dir = tmp_path / "venv"
  venv.EnvBuilder(with_pip=True).create(env_dir)
  python = str(env_dir / "bin" / "python")
  env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JAXACT_"))}
  try:
    pip = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--timeout=30",
                          "--retries=1", f"jax=={OLD_JAX}", f"jaxlib=={OLD_JAX}"],
                         env=env, capture_output=True, text=True, timeout=300)
  except subprocess.TimeoutExpired:
    pytest.skip(f"pip took over 300 s to fetch jax {OLD_JAX}")
  if pip.returncode:
    pytest.skip(f"pip could not install jax {OLD_JAX}: {pip.stderr.strip()[-300:]}")

  def versions() -> str:
    return subprocess.run(
        [python, "-c", "import importlib.metadata as m\n"
         "print([d.metadata['Name'] + '==' + d.version for d in m.distributions()])"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, check=True).stdout
  before = versions()
  assert f"jax=={OLD_JAX}" in before and "jaxact" not in before

  # The notebook's cells up to the install, as Colab runs them, with this checkout as source.
  script = tmp_path / "install.py"
  script.write_text(tagged_cells(_load(), "settings", "source", "guard", "install"),
                    encoding="utf-8")
  run = subprocess.run([python, str(script)], cwd=str(tmp_path),
                       env=dict(env, JAXACT_NOTEBOOK_SOURCE=str(REPO), JAXACT_NOTEBOOK_DRY_RUN="1"),
                       capture_output=True, text=True, timeout=300)
  # The plan: a matching jax (no backend in this venv) with the missing dependencies, then
  # jaxact; then the cell stops "Run all" and asks for a restart.
  assert run.returncode != 0, run.stdout + run.stderr
  assert f"this runtime's jax {OLD_JAX} is older than jaxact needs" in run.stdout, run.stdout
  assert f"pip install -q -U jax{_jax_bound().specifier} " in run.stdout, run.stdout
  assert "Restart the runtime (Runtime > Restart session)" in run.stderr, run.stderr[-2000:]
  assert "Traceback" not in run.stderr
  assert versions() == before   # a dry run: nothing installed
