"""experiments/colab_tpu.ipynb: valid nbformat 4, and its code runs end to end on CPU (tiny).

The notebook's code cells are joined into one script and run in a subprocess
(cwd experiments/, as Jupyter would start there) with the notebook's tiny
configuration (JAXACT_NOTEBOOK_TINY=1: one task, one seed, two epochs), the
real MNIST files (JAXACT_DATA_DIR) and a temporary workdir.

The notebook's test hooks (environment variables it reads; on Colab none is set):
JAXACT_NOTEBOOK_SOURCE, the jaxact source to install instead of REPO_URL /
WHEEL_PATH (tests/test_install.py; here the notebook finds the checkout it lies
in, as in a local Jupyter); JAXACT_NOTEBOOK_DRY_RUN=1, the install cell
computes and prints its pip commands (the guard runs for real against this
environment's jax) but runs none; JAXACT_NOTEBOOK_TINY and
JAXACT_NOTEBOOK_WORKDIR. Outside Colab (no google.colab) USE_DRIVE's default is
off, so the Drive cell does nothing; the Colab routes (the wheel's upload, Drive)
are tested with a stand-in google.colab module. The install guard itself is tested in
tests/test_install.py.

IPython-only lines cannot run in plain Python: every line whose first
non-blank character is `!` (shell, e.g. `!pip install`) or `%` (a magic) is
replaced by `pass` at the same indentation, so the surrounding code keeps its
shape. Nothing is installed: the subprocess imports this checkout's jaxact
through PYTHONPATH (the notebook also puts a directory source on sys.path).
"""

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments" / "colab_tpu.ipynb"
_IPYTHON_ONLY = re.compile(r"^(\s*)[!%].*$")


def _load() -> dict:
  with open(NOTEBOOK, encoding="utf-8") as f:
    return json.load(f)


def _source(cell: dict) -> str:
  src = cell["source"]
  return "".join(src) if isinstance(src, list) else src


def tagged_cells(nb: dict, *tags: str) -> str:
  """The code cells carrying any of these tags (cell metadata "tags"), in notebook order."""
  return "\n".join(_source(c) for c in nb["cells"]
                   if c["cell_type"] == "code" and set(tags) & set(c["metadata"].get("tags", ())))


def notebook_script(nb: dict) -> str:
  """The code cells as one Python script, IPython-only lines replaced by `pass`."""
  parts = []
  for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
    lines = [_IPYTHON_ONLY.sub(r"\1pass  # IPython-only line skipped by the test", line)
             for line in _source(cell).splitlines()]
    parts.append(f"# ---- code cell {i}\n" + "\n".join(lines) + "\n")
  return "\n".join(parts)


def test_notebook_is_valid_nbformat_4():
  nb = _load()
  assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5
  assert nb["metadata"]["kernelspec"]["language"] == "python"
  ids = [c["id"] for c in nb["cells"]]
  assert len(set(ids)) == len(ids)
  for cell in nb["cells"]:
    assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["metadata"], dict)
    assert isinstance(cell["source"], (list, str))
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None
  code = [_source(c) for c in nb["cells"] if c["cell_type"] == "code"]
  # What the notebook must do, in order: install, devices, config, train, report.
  joined = "\n".join(code)
  for needle in ("REPO_URL", "WHEEL_PATH", "colab_files.upload()", "def plan_install",
                 '"--no-deps"', "def backend_extra", "USE_DRIVE", "drive.mount(", "jax.devices()",
                 "JAXACT_NOTEBOOK_TINY", "DATA_DIR",
                 "train.train_and_evaluate", "report.write_report", "Markdown(report_text)",
                 "Image(filename="):
    assert needle in joined, needle
  # The cells other tests run on their own, by tag.
  for tag in ("settings", "source", "guard", "install", "drive"):
    assert tagged_cells(nb, tag), tag
  assert re.search(r'seeds=10\b', joined) and 'study="all"' in joined and "task=None" in joined
  try:   # the schema check, where nbformat is installed (it is not a dependency)
    import nbformat  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  nbformat.validate(nbformat.reads(json.dumps(nb), as_version=4))


def test_ipython_only_lines_are_replaced_by_pass():
  nb = {"cells": [{"cell_type": "code", "source": ["x = 1\n", "if x:\n", "  !pip install a\n",
                                                   "%timeit y = 2"]},
                  {"cell_type": "markdown", "source": "!not code"}]}
  script = notebook_script(nb)
  assert "pip" not in script.replace("pass  # IPython-only", "")
  assert "  pass  # IPython-only" in script and "not code" not in script
  compile(script, "<notebook>", "exec")


def _fake_colab(monkeypatch, uploads: dict[str, bytes]) -> list[str]:
  """A `google.colab` module whose files.upload() returns `uploads`; records drive mounts."""
  mounted = []
  colab = types.ModuleType("google.colab")
  colab.files = types.SimpleNamespace(upload=lambda: dict(uploads))
  colab.drive = types.SimpleNamespace(mount=mounted.append)
  google = types.ModuleType("google")
  google.colab = colab
  monkeypatch.setitem(sys.modules, "google", google)
  monkeypatch.setitem(sys.modules, "google.colab", colab)
  return mounted


def test_source_cell_says_what_to_set(tmp_path, monkeypatch):
  """No source set, outside a checkout and outside Colab: a clear error, not a NameError."""
  nb = _load()
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv("JAXACT_NOTEBOOK_SOURCE", raising=False)
  monkeypatch.setitem(sys.modules, "google.colab", None)   # not Colab: its import fails
  cells = tagged_cells(nb, "settings", "source")
  with pytest.raises(RuntimeError, match=r"set WHEEL_PATH to a jaxact wheel \(build it in a "
                                         r"checkout of jaxact with  python -m pip wheel "
                                         r"--no-deps -w dist \.\) or REPO_URL"):
    exec(compile(cells, "<notebook>", "exec"), {})   # pylint: disable=exec-used
  missing_wheel = cells.replace('WHEEL_PATH = ""', f'WHEEL_PATH = "{tmp_path / "no.whl"}"', 1)
  with pytest.raises(FileNotFoundError, match="upload the jaxact wheel"):
    exec(compile(missing_wheel, "<notebook>", "exec"), {})   # pylint: disable=exec-used


def test_colab_asks_for_the_wheel_by_default(tmp_path, monkeypatch):
  """On Colab with nothing set, the source cell uploads the wheel and installs that file."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv("JAXACT_NOTEBOOK_SOURCE", raising=False)
  # A second upload of the same file is named "... (1).whl" by the browser; pip needs the name.
  _fake_colab(monkeypatch, {"jaxact-0.1.0-py3-none-any (1).whl": b"wheel bytes"})
  namespace = {}
  cells = compile(tagged_cells(_load(), "settings", "source"), "<notebook>", "exec")
  exec(cells, namespace)   # pylint: disable=exec-used
  wheel = tmp_path / "jaxact-0.1.0-py3-none-any.whl"
  assert namespace["SOURCE"] == namespace["WHEEL_PATH"] == str(wheel)
  assert wheel.read_bytes() == b"wheel bytes" and namespace["IN_COLAB"]
  _fake_colab(monkeypatch, {"notes.txt": b""})
  with pytest.raises(RuntimeError, match=r"No \.whl file was uploaded\. Build the wheel"):
    exec(cells, {})   # pylint: disable=exec-used


@pytest.mark.parametrize("tiny, mounts", [(False, ["/content/drive"]), (True, [])])
def test_colab_keeps_the_full_runs_workdir_on_drive(monkeypatch, tiny, mounts):
  mounted = _fake_colab(monkeypatch, {})
  monkeypatch.delenv("JAXACT_NOTEBOOK_TINY", raising=False)
  namespace = {"os": os, "IN_COLAB": True}
  settings = tagged_cells(_load(), "settings").replace("TINY = False", f"TINY = {tiny}")
  cells = compile(settings + "\n" + tagged_cells(_load(), "drive"), "<notebook>", "exec")
  exec(cells, namespace)   # pylint: disable=exec-used
  assert mounted == mounts and namespace["USE_DRIVE"] is (not tiny)


def test_a_notebook_kernel_gets_the_progress_bar(monkeypatch):
  from jaxact.store import metrics_writer  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
  assert metrics_writer.ProgressBar.wanted()
  bar = metrics_writer.ProgressBar("binary", 10, 0, 4)
  try:
    # tqdm.auto's pick (a widget where ipywidgets is there, else the text bar)
    assert type(bar._bar).__module__.startswith("tqdm")   # pylint: disable=protected-access
  finally:
    bar.close()


def test_notebook_runs_tiny_on_cpu(mnist_dir, tfds_dir, tmp_path):
  script = tmp_path / "notebook.py"
  script.write_text(notebook_script(_load()), encoding="utf-8")
  workdir = tmp_path / "workdir"
  env = dict(os.environ, JAXACT_NOTEBOOK_TINY="1", JAXACT_NOTEBOOK_WORKDIR=str(workdir),
             JAXACT_NOTEBOOK_DRY_RUN="1",
             JAXACT_DATA_DIR=str(mnist_dir), JAXACT_TFDS_DIR=str(tfds_dir),
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  env.pop("XLA_FLAGS", None)
  env.pop("JAXACT_NOTEBOOK_SOURCE", None)
  proc = subprocess.run([sys.executable, str(script)], cwd=str(REPO / "experiments"), env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
  out = proc.stdout
  # Found the checkout (REPO_URL not needed); the guard passed this environment's jax; only
  # jaxact itself would be installed, without its dependencies (all there).
  assert "pip install -q --no-deps -e " + str(REPO) in out
  assert "kept as installed: jax==" in out
  assert "1 devices" in out and "cpu" in out
  saved = json.loads((workdir / "results" / "multilabel.json").read_text())
  assert {m["seed"] for m in saved["members"]} == {0}
  assert len(saved["members"]) == 5                  # the 5 multilabel cells of both studies
  assert all(m["epochs_trained"] == 2 for m in saved["members"])
  run = json.loads((workdir / "run.json").read_text())
  assert run["finished"] and run["config"]["study"] == "all"
  assert run["command"].startswith("python -m jaxact.main --study=all --task=multilabel --seeds=1")
  report = (workdir / "report.md").read_text(encoding="utf-8")
  assert "multilabel" in report and "loss study" in report and "final-activation study" in report
  assert report.strip() in out                       # the report cell printed it (no IPython)
  png = workdir / "curves_multilabel.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in out
