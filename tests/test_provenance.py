"""Provenance that survives a resume: run.json's segments, the versions warning, the backend and
its plugins, the constraints' hash; and a full disk while a rerun rebuilds the report.

The CLI tests rerun a copy of a committed finished run (one multiclass member): every task is
reused, nothing trains, so each costs a process start and a report.
"""

import errno
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path


from jaxact.store import provenance
from jaxact.study import train

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "experiments" / "collapse_interventions" / "sgd_pilots" / "lr0.1_wd0"


def _copy_committed(tmp_path: Path) -> Path:
  workdir = tmp_path / "wd"
  shutil.copytree(COMMITTED, workdir)
  return workdir


def _cli(workdir: Path, prelude: str = "") -> subprocess.CompletedProcess:
  """The committed run's own command (its flags, this workdir), run as `python -m jaxact.main`."""
  run = json.loads((COMMITTED / "run.json").read_text())
  flags = [a for a in run["argv"][1:] if not a.startswith(("--workdir=", "--data_dir="))]
  if "split" not in run["config"]:
    flags.append("--split=fixed")   # made before per-member splits: the one fixed split
  code = (f"{prelude}\nimport sys\nfrom jaxact.cli import main\n"
          f"sys.argv = ['jaxact'] + {flags + [f'--workdir={workdir}']!r}\nmain.run()\n")
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=300)


def test_an_older_run_json_becomes_the_first_segment():
  old = json.loads((REPO / "experiments" / "all_torch_10seeds" / "run.json").read_text())
  (first,) = provenance.segments_of(old)
  assert first["git_revision"] == "30ce5cb" and first["started"] == old["started"]
  assert first["ended"] == old["finished"] and first["versions"] == old["versions"]
  assert first["resumed"] == old["resumed"] and len(first["resumed"]) == 3


def test_a_resumed_record_keeps_every_segment_and_warns_on_other_versions(monkeypatch):
  warnings = []
  monkeypatch.setattr(train.logging, "warning", lambda *a: warnings.append(a[0] % a[1:]))
  config = train.RunConfig(task="binary", seeds=1)
  record = train._run_record   # pylint: disable=protected-access
  first = record(config, ["jaxact", "--task=binary"], None)
  assert len(first["segments"]) == 1 and not warnings
  first["segments"][0]["versions"] = dict(first["segments"][0]["versions"], jax="0.9.1")
  first["split_fingerprint"] = "abc"
  second = record(config, ["jaxact", "--task=binary"], first)
  assert [s["started"] for s in second["segments"]] == [
      first["segments"][0]["started"], second["segments"][1]["started"]]
  assert second["started"] == first["started"] and second["split_fingerprint"] == "abc"
  (line,) = warnings
  assert f"jax 0.9.1 before, {second['segments'][1]['versions']['jax']} now" in line
  assert "\n" not in line


def test_segment_records_python_backend_and_constraints():
  segment = provenance.segment("python -m jaxact.main")
  assert segment["python"].count(".") == 2 and segment["backend"]["platform"] == "cpu"
  assert segment["backend"]["plugins"] == provenance.backend_plugins()
  digest = hashlib.sha256((REPO / "constraints.txt").read_bytes()).hexdigest()
  assert segment["constraints_sha256"] == digest       # the tests run from a checkout
  assert segment["ended"] is None and segment["jaxact_version"]


def test_backend_plugins_are_found_by_their_distribution_names(monkeypatch):
  from importlib import metadata   # pylint: disable=g-import-not-at-top

  class Dist:
    def __init__(self, name, version):
      self.metadata, self.version = {"Name": name}, version

  fake = [Dist("libtpu", "0.0.21"), Dist("jax_cuda12_plugin", "0.10.2"),
          Dist("jax-cuda12-pjrt", "0.10.2"), Dist("jax", "0.10.2"), Dist("libtpu-helper", "1")]
  monkeypatch.setattr(metadata, "distributions", lambda: fake)
  assert provenance.backend_plugins() == {
      "jax-cuda12-pjrt": "0.10.2", "jax-cuda12-plugin": "0.10.2", "libtpu": "0.0.21"}


def test_cli_resume_of_a_committed_run_adds_a_segment_and_warns(tmp_path):
  workdir = _copy_committed(tmp_path)
  old = json.loads((workdir / "run.json").read_text())
  old["versions"]["numpy"] = "1.26.4"          # as if made under another numpy
  (workdir / "run.json").write_text(json.dumps(old))
  results = (workdir / "results" / "multiclass.json").read_bytes()
  proc = _cli(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  warned = [l for l in proc.stderr.splitlines() if "other package versions" in l]
  assert len(warned) == 1 and "numpy 1.26.4 before" in warned[0], proc.stderr[-3000:]
  run = json.loads((workdir / "run.json").read_text())
  first, second = run["segments"]
  assert first["git_revision"] == old["git_revision"] and first["started"] == old["started"]
  assert first["versions"]["numpy"] == "1.26.4"
  assert second["git_revision"] == provenance.git_revision() and second["ended"]
  assert "tasks" not in second                  # nothing trained: the task was reused
  assert run["started"] == old["started"] and run["finished"] == second["ended"]
  assert (workdir / "results" / "multiclass.json").read_bytes() == results


def test_cli_full_disk_while_writing_the_report(tmp_path):
  workdir = _copy_committed(tmp_path)
  results = (workdir / "results" / "multiclass.json").read_bytes()
  prelude = ("import errno\nimport matplotlib.figure\n"
             "def full(*args, **kwargs):\n"
             "  raise OSError(errno.ENOSPC, 'No space left on device')\n"
             "matplotlib.figure.Figure.savefig = full\n")
  proc = _cli(workdir, prelude)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  message = proc.stderr.splitlines()[-1]
  assert message.startswith("jaxact: error: cannot write ") and ".png" in message
  assert f"No space left on device [Errno {errno.ENOSPC}]" in message
  assert "results are kept in" in message and "make room on that disk" in message
  # Nothing finished is lost, and no temporary file is left behind.
  assert (workdir / "results" / "multiclass.json").read_bytes() == results
  assert not [p for p in workdir.rglob("*.tmp")]
  run = json.loads((workdir / "run.json").read_text())
  assert run["segments"][-1]["stopped_by"] == "WriteError" and run["segments"][-1]["ended"]
