"""Small file helpers shared by the trainer and the report: atomic writes, JSON reads.

A workdir's files (run.json, results/<task>.json, the CSVs, report.md, the
figures) are read while a run writes them (a report rebuilt by hand, a
notebook, `tail -F`), and a process may be killed at any point; every writer
therefore replaces a file whole, by renaming a finished temporary file onto it.
A failed write raises `WriteError`, which names the file; the file it would
have replaced is left as it was. This module imports only the standard library.
"""

from __future__ import annotations

import errno
import json
import os
import re
import uuid
from typing import Any, Callable

# `atomic_write`'s temporary files: ".<name>.<pid>.<8 hex digits>.tmp" beside the target.
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")

# Errors whose fix is the disk, not jaxact: full, over quota, read-only, not permitted.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class WriteError(OSError):
  """A file could not be written; str() names the file and the system's reason.

  An OSError with the original errno, so callers that handle OSError still do.
  """

  def __init__(self, path: str, cause: OSError):
    super().__init__(cause.errno, cause.strerror or str(cause), path)
    self.path = path

  def __str__(self) -> str:
    code = f" [Errno {self.errno}]" if self.errno is not None else ""
    return f"cannot write {self.path}: {self.strerror}{code}"


def temp_name(path: str) -> str:
  """The temporary file `atomic_write` writes `path`'s content to before renaming it."""
  directory, name = os.path.split(os.path.abspath(path))
  return os.path.join(directory, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _alive(pid: int) -> bool:
  """Whether a process `pid` runs on this host (a process of another user counts)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError):
    return pid > 0
  return True


def remove_stale_temps(directory: str) -> list[str]:
  """Deletes `atomic_write`'s temporary files in `directory` left by processes no longer running.

  A process killed between creating its temporary file and renaming it
  leaves the file behind; one still running (a report rebuilt beside a
  training run) keeps its own. Returns the names removed.
  """
  removed = []
  try:
    names = os.listdir(directory)
  except OSError:
    return removed
  for name in names:
    m = _TEMP_NAME.fullmatch(name)
    if m is None or _alive(int(m.group("pid"))):
      continue
    try:
      os.unlink(os.path.join(directory, name))
      removed.append(name)
    except OSError:
      pass
  return removed


def atomic_write(path: str, write: Callable[[Any], None], binary: bool = False) -> None:
  """Calls write(file) on a temporary file next to `path`, then renames it onto `path`.

  The temporary file is opened normally (not with tempfile.mkstemp) so that the
  result gets the usual permissions of the process's umask.

  Args:
    path: the file to write.
    write: writes the whole content to the open file it is given.
    binary: open the temporary file in binary mode (else text, UTF-8).

  Raises:
    WriteError: the file system refused (a full disk, a read-only directory,
      ...); `path` is unchanged and no temporary file is left.
  """
  tmp = temp_name(path)
  try:
    with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    if isinstance(e, OSError) and not isinstance(e, WriteError):
      raise WriteError(os.path.abspath(path), e) from e
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes `obj` as JSON (indent 1) to `path` with `atomic_write`."""
  atomic_write(path, lambda f: json.dump(obj, f, indent=1))


def read_json_object(path: str) -> dict | None:
  """Returns the JSON object in `path`, or None when it is missing, unreadable or not an object."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, ValueError):
    return None
  return data if isinstance(data, dict) else None
