"""Small file helpers shared by the trainer and the report: atomic writes, JSON reads.

A workdir's files (run.json, results/<task>.json, the CSVs, report.md, the
figures) are read while a run writes them (a report rebuilt by hand, a
notebook, `tail -F`), and a process may be killed at any point; every writer
therefore replaces a file whole, by renaming a finished temporary file onto it.
This module imports only the standard library.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Callable


def atomic_write(path: str, write: Callable[[Any], None], binary: bool = False) -> None:
  """Calls write(file) on a temporary file next to `path`, then renames it onto `path`.

  The temporary file is opened normally (not with tempfile.mkstemp) so that the
  result gets the usual permissions of the process's umask.

  Args:
    path: the file to write.
    write: writes the whole content to the open file it is given.
    binary: open the temporary file in binary mode (else text, UTF-8).
  """
  directory, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(directory, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
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
