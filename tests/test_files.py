"""files.atomic_write: a failed write names its file and leaves the old one; the clean-up of the
temporary files a killed writer leaves behind matches the names atomic_write gives them."""

import errno
import os
import subprocess
import sys

import pytest

from jaxact.store import files
from jaxact.store import workdir as workdir_lib


def _full_disk(f):
  f.write(b"half a figure")
  raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_leaves_the_old_file_and_no_temporary_file(tmp_path):
  path = tmp_path / "curves_binary.png"
  path.write_bytes(b"the finished figure")
  with pytest.raises(files.WriteError) as err:
    files.atomic_write(str(path), _full_disk, binary=True)
  assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
  assert str(err.value) == f"cannot write {path}: No space left on device [Errno 28]"
  assert path.read_bytes() == b"the finished figure"
  assert os.listdir(tmp_path) == ["curves_binary.png"]


def test_other_errors_pass_unchanged(tmp_path):
  def bug(f):
    raise ValueError("not a file system problem")
  with pytest.raises(ValueError):
    files.atomic_write(str(tmp_path / "x.json"), bug)
  assert not os.listdir(tmp_path)


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
  # A process that is surely gone: one that ran and exited.
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  stale = os.path.basename(files.temp_name(str(tmp_path / "report.md"))).replace(
      f".{os.getpid()}.", f".{dead}.")
  mine = os.path.basename(files.temp_name(str(tmp_path / "run.json")))   # a live writer's
  keep = ["report.md", ".tmp-old", "notes.tmp", ".report.md.tmp"]
  (tmp_path / "results").mkdir()
  for name in [stale, mine, *keep]:
    (tmp_path / name).write_text("x")
  (tmp_path / "results" / stale.replace("report.md", "binary.json")).write_text("x")
  workdir_lib.prepare_workdir(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == sorted([mine, *keep, "results"])
  assert not os.listdir(tmp_path / "results")


def test_no_temporary_file_is_committed():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(["git", "-C", root, "ls-files"], capture_output=True, text=True)
  if proc.returncode:
    pytest.skip("not a git checkout")
  names = [os.path.basename(p) for p in proc.stdout.splitlines()]
  temp = files._TEMP_NAME   # pylint: disable=protected-access
  assert not [n for n in names if temp.fullmatch(n)]
