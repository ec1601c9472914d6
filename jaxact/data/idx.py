"""MNIST's four IDX files: reading and validating them.

`read_idx` reads one file (gzip or raw) and checks its header; `read_mnist_idx_dir`
finds and reads the four files of a directory (the tfds builder, tfds_builder.py,
calls it too). Every problem a user can cause raises `DataError`, one paragraph
naming the file, the problem and the fix (`data_error`).
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np


class DataError(Exception):
  """A user-facing data problem.

  str(e) is one paragraph naming the file, the problem and the fix.
  """


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Each may be present as NAME.gz (gzip) or NAME (raw); .gz is preferred.

IMAGE_HW = (28, 28)
NUM_CLASSES = 10

# The fix a DataError names when the data directory is the problem.
FIX_DIR = (
    "point --data_dir (or JAXACT_DATA_DIR) at a directory holding the four "
    "MNIST IDX files (" + ", ".join(
        f"{name}[.gz]" for pair in MNIST_FILES.values() for name in pair)
    + "), e.g. ../shared/data/mnist from the project root")
_FIX_FILE = "re-download the file, or " + FIX_DIR

_IDX_UBYTE = 0x08
_IDX_OTHER_TYPES = {0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
                    0x0D: "float32", 0x0E: "float64"}
_GZIP_MAGIC = b"\x1f\x8b"


def data_error(path: Any, problem: str, fix: str = _FIX_FILE) -> DataError:
  """The DataError 'PATH: PROBLEM. Fix: FIX.' (`problem` and `fix` without a final period)."""
  return DataError(f"{os.fspath(path)}: {problem}. Fix: {fix}.")


# ---------------------------------------------------------------------------
# IDX files.


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads one IDX file, gzip-compressed (name ends in .gz) or raw.

  Validates the magic number (two zero bytes, the element type code, which
  must be 0x08 = unsigned byte, and the number of dimensions, 1 to 3), that
  the data holds exactly prod(dims) bytes (no truncation, no trailing bytes),
  and, for .gz files, the gzip stream's integrity.

  Args:
    path: the file.

  Returns:
    uint8 array of shape dims (as stored in the header), writable.

  Raises:
    DataError: on any problem, naming the path and the fix.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise data_error(path, f"cannot be read ({e.strerror or e})") from e

  is_gzip = path.endswith(".gz")
  if is_gzip:
    try:
      content = gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
      raise data_error(
          path, f"truncated or corrupt gzip ({type(e).__name__}: {e})") from e
  else:
    content = raw

  if len(content) < 4:
    raise data_error(path, f"is not an IDX file: {len(content)} bytes, shorter "
                     "than the 4-byte IDX magic number")
  zero0, zero1, type_code, ndim = content[:4]
  if zero0 or zero1:
    problem = ("is not an IDX file: its magic number "
               f"{content[:4].hex()} does not start with two zero bytes")
    if not is_gzip and content[:2] == _GZIP_MAGIC:
      problem += (" (it looks gzip-compressed: name it with a .gz suffix, or "
                  "decompress it)")
    raise data_error(path, problem)
  if type_code != _IDX_UBYTE:
    kind = _IDX_OTHER_TYPES.get(type_code)
    if kind:
      problem = (f"holds IDX element type 0x{type_code:02x} ({kind}); only "
                 "0x08 (unsigned byte), the MNIST type, is supported")
    else:
      problem = (f"is not an IDX file: invalid element type code "
                 f"0x{type_code:02x} in its magic number")
    raise data_error(path, problem)
  if not 1 <= ndim <= 3:
    raise data_error(path, f"has {ndim} dimensions in its IDX magic number; "
                     "expected 1 (labels) to 3 (images)")
  header_len = 4 + 4 * ndim
  if len(content) < header_len:
    raise data_error(path, f"is truncated: {len(content)} bytes, shorter than "
                     f"its {header_len}-byte IDX header")
  dims = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big")
               for i in range(ndim))
  expected = math.prod(dims)
  actual = len(content) - header_len
  if actual < expected:
    raise data_error(path, f"is truncated: its header gives dimensions {dims}, "
                     f"i.e. {expected} data bytes, but it holds {actual}")
  if actual > expected:
    raise data_error(path, f"has {actual - expected} trailing bytes after the "
                     f"{expected} data bytes its header dimensions {dims} give")
  return np.frombuffer(content, np.uint8, offset=header_len).reshape(
      dims).copy()


def _find_idx_file(data_dir: Path, name: str) -> Path | None:
  for candidate in (data_dir / f"{name}.gz", data_dir / name):
    if candidate.is_file():
      return candidate
  return None


def read_mnist_idx_dir(
    data_dir: str | os.PathLike[str],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads and validates the four MNIST IDX files of a directory.

  Counts come from the file headers (a partial training set is fine).

  Args:
    data_dir: directory holding the files named in `MNIST_FILES`, each as
      NAME.gz or NAME (.gz preferred when both exist).

  Returns:
    {'train': (images, labels), 'test': (images, labels)}: images uint8
    (N, 28, 28), labels uint8 (N,) with values 0..9.

  Raises:
    DataError: the directory is missing, not a directory, empty or lacks some
      of the files; a file is unreadable or malformed; images are not
      (N, 28, 28); labels are not 1-D or outside 0..9; an images file and its
      labels file hold different counts; a file holds no examples.
  """
  shown = os.fspath(data_dir)
  data_dir = Path(os.path.expanduser(shown))
  if not data_dir.exists():
    raise data_error(shown, "MNIST data directory does not exist", FIX_DIR)
  if not data_dir.is_dir():
    raise data_error(shown, "MNIST data directory is not a directory", FIX_DIR)
  try:
    entries = sorted(p.name for p in data_dir.iterdir())
  except OSError as e:
    raise data_error(shown, f"MNIST data directory cannot be listed ({e})",
                     FIX_DIR) from e
  if not entries:
    raise data_error(shown, "MNIST data directory is empty", FIX_DIR)

  found, missing = {}, []
  for pair in MNIST_FILES.values():
    for name in pair:
      path = _find_idx_file(data_dir, name)
      if path is None:
        missing.append(f"{name}[.gz]")
      else:
        found[name] = path
  if missing:
    others = [e for e in entries
              if e not in {p.name for p in found.values()}]
    listing = ", ".join(others[:12]) + (" ..." if len(others) > 12 else "")
    raise data_error(
        shown,
        f"MNIST data directory lacks {len(missing)} of the 4 IDX files: "
        f"missing {', '.join(missing)}; found "
        f"{', '.join(p.name for p in found.values()) or 'none of them'}"
        + (f" (other entries: {listing})" if others else ""),
        FIX_DIR)

  result = {}
  for split, (images_name, labels_name) in MNIST_FILES.items():
    images_path, labels_path = found[images_name], found[labels_name]
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_HW:
      raise data_error(images_path, f"holds an array of shape {images.shape}; "
                       "MNIST images must be (N, 28, 28)")
    if labels.ndim != 1:
      raise data_error(labels_path, f"holds an array of shape {labels.shape}; "
                       "MNIST labels must be 1-D (N,)")
    if images.shape[0] != labels.shape[0]:
      raise data_error(
          images_path,
          f"holds {images.shape[0]} images but {labels_path} holds "
          f"{labels.shape[0]} labels; the counts must match",
          "use an images file and a labels file from the same download, or "
          + _FIX_FILE)
    if labels.shape[0] == 0:
      raise data_error(images_path, "holds no examples (header count 0)")
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
      raise data_error(labels_path, f"holds {bad.size} label(s) outside 0..9, "
                       f"the first at index {bad[0]} (value {labels[bad[0]]})")
    result[split] = (images, labels)
  return result
