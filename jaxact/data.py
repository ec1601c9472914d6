"""MNIST loading, validation and the shared train/valid/test split.

Two ways in (see `load_mnist`):

* `data_dir` given (or `JAXACT_DATA_DIR`): a directory holding the four MNIST
  IDX files (gzip or raw). They are validated here, then prepared through a
  small custom tensorflow-datasets builder (array_record format, no TensorFlow
  and no network needed) into a cache keyed by their content, and read back
  with tfds' random-access data source. Examples keep the IDX file order.
* no `data_dir`: the four official IDX files are downloaded once through
  tfds' download manager, checked against the checksums tfds registers for
  them, and then go the same way (needs internet once, not TensorFlow).

Every data problem a user can cause raises `DataError`, whose message is one
paragraph naming the file, the problem and the fix. This module does I/O only;
it does not import JAX, and imports tensorflow_datasets lazily.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import io
import math
import os
import shutil
import socket
import urllib.parse
import zlib
from pathlib import Path
from typing import Any, Iterator

from absl import logging
import numpy as np

try:
  import fcntl
except ImportError:  # Not on POSIX: builds are then not guarded against
  fcntl = None     # concurrent processes (single-process use still works).


class DataError(Exception):
  """A user-facing data problem.

  str(e) is one paragraph naming the file, the problem and the fix.
  """


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Each may be present as NAME.gz (gzip) or NAME (raw); .gz is preferred.

TRAIN_SIZE = 2000    # PROTOCOL section 1: the training and validation examples drawn
VALID_SIZE = 3000    # from MNIST's training set; its test set is used whole
DATA_DIR_ENV = "JAXACT_DATA_DIR"
TFDS_DIR_ENV = "JAXACT_TFDS_DIR"
DEFAULT_TFDS_DIR = "~/.cache/jaxact/tfds"
# Where tfds' built-in `mnist` builder downloads the four IDX files from; tfds
# registers their sizes and SHA-256 under these URLs.
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_URL_ENV = "JAXACT_MNIST_URL"
# With any of these set, requests (tfds' downloader) goes through a proxy.
PROXY_ENV_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                  "all_proxy")

_FIX_DIR = (
    "point --data_dir (or JAXACT_DATA_DIR) at a directory holding the four "
    "MNIST IDX files (" + ", ".join(
        f"{name}[.gz]" for pair in MNIST_FILES.values() for name in pair)
    + "), e.g. ../shared/data/mnist from the project root")
_FIX_FILE = "re-download the file, or " + _FIX_DIR

_IDX_UBYTE = 0x08
_IDX_OTHER_TYPES = {0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
                    0x0D: "float32", 0x0E: "float64"}
_GZIP_MAGIC = b"\x1f\x8b"
_IMAGE_HW = (28, 28)
_NUM_CLASSES = 10
# Part of the prepared-dataset cache key: bump it when the builder's output
# changes, so that caches written by an older builder are not reused.
_BUILDER_LAYOUT = b"jaxact-mnist-idx-builder-v1"


def _error(path: Any, problem: str, fix: str = _FIX_FILE) -> DataError:
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
    raise _error(path, f"cannot be read ({e.strerror or e})") from e

  is_gzip = path.endswith(".gz")
  if is_gzip:
    try:
      content = gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
      raise _error(
          path, f"truncated or corrupt gzip ({type(e).__name__}: {e})") from e
  else:
    content = raw

  if len(content) < 4:
    raise _error(path, f"is not an IDX file: {len(content)} bytes, shorter "
                 "than the 4-byte IDX magic number")
  zero0, zero1, type_code, ndim = content[:4]
  if zero0 or zero1:
    problem = ("is not an IDX file: its magic number "
               f"{content[:4].hex()} does not start with two zero bytes")
    if not is_gzip and content[:2] == _GZIP_MAGIC:
      problem += (" (it looks gzip-compressed: name it with a .gz suffix, or "
                  "decompress it)")
    raise _error(path, problem)
  if type_code != _IDX_UBYTE:
    kind = _IDX_OTHER_TYPES.get(type_code)
    if kind:
      problem = (f"holds IDX element type 0x{type_code:02x} ({kind}); only "
                 "0x08 (unsigned byte), the MNIST type, is supported")
    else:
      problem = (f"is not an IDX file: invalid element type code "
                 f"0x{type_code:02x} in its magic number")
    raise _error(path, problem)
  if not 1 <= ndim <= 3:
    raise _error(path, f"has {ndim} dimensions in its IDX magic number; "
                 "expected 1 (labels) to 3 (images)")
  header_len = 4 + 4 * ndim
  if len(content) < header_len:
    raise _error(path, f"is truncated: {len(content)} bytes, shorter than "
                 f"its {header_len}-byte IDX header")
  dims = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big")
               for i in range(ndim))
  expected = math.prod(dims)
  actual = len(content) - header_len
  if actual < expected:
    raise _error(path, f"is truncated: its header gives dimensions {dims}, "
                 f"i.e. {expected} data bytes, but it holds {actual}")
  if actual > expected:
    raise _error(path, f"has {actual - expected} trailing bytes after the "
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
    raise _error(shown, "MNIST data directory does not exist", _FIX_DIR)
  if not data_dir.is_dir():
    raise _error(shown, "MNIST data directory is not a directory", _FIX_DIR)
  try:
    entries = sorted(p.name for p in data_dir.iterdir())
  except OSError as e:
    raise _error(shown, f"MNIST data directory cannot be listed ({e})",
                 _FIX_DIR) from e
  if not entries:
    raise _error(shown, "MNIST data directory is empty", _FIX_DIR)

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
    raise _error(
        shown,
        f"MNIST data directory lacks {len(missing)} of the 4 IDX files: "
        f"missing {', '.join(missing)}; found "
        f"{', '.join(p.name for p in found.values()) or 'none of them'}"
        + (f" (other entries: {listing})" if others else ""),
        _FIX_DIR)

  result = {}
  for split, (images_name, labels_name) in MNIST_FILES.items():
    images_path, labels_path = found[images_name], found[labels_name]
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != _IMAGE_HW:
      raise _error(images_path, f"holds an array of shape {images.shape}; "
                   "MNIST images must be (N, 28, 28)")
    if labels.ndim != 1:
      raise _error(labels_path, f"holds an array of shape {labels.shape}; "
                   "MNIST labels must be 1-D (N,)")
    if images.shape[0] != labels.shape[0]:
      raise _error(
          images_path,
          f"holds {images.shape[0]} images but {labels_path} holds "
          f"{labels.shape[0]} labels; the counts must match",
          "use an images file and a labels file from the same download, or "
          + _FIX_FILE)
    if labels.shape[0] == 0:
      raise _error(images_path, "holds no examples (header count 0)")
    bad = np.flatnonzero(labels >= _NUM_CLASSES)
    if bad.size:
      raise _error(labels_path, f"holds {bad.size} label(s) outside 0..9, "
                   f"the first at index {bad[0]} (value {labels[bad[0]]})")
    result[split] = (images, labels)
  return result


# ---------------------------------------------------------------------------
# Loading through tensorflow-datasets.


def resolve_data_dir(flag_value: str | None) -> str | None:
  """Returns the IDX directory to use, or None for the tfds download path.

  Args:
    flag_value: the --data_dir flag; None or '' means not given.

  Returns:
    `flag_value` if given, else env JAXACT_DATA_DIR if set and non-empty,
    else None.
  """
  if flag_value:
    return flag_value
  return os.environ.get(DATA_DIR_ENV) or None


def _resolve_tfds_dir(tfds_dir: str | None) -> Path:
  tfds_dir = tfds_dir or os.environ.get(TFDS_DIR_ENV) or DEFAULT_TFDS_DIR
  return Path(os.path.expanduser(tfds_dir)).absolute()


def _content_key(mnist: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
  """Short SHA-256 of the decoded IDX contents (not the file bytes).

  Hashing the arrays rather than the files makes a .gz and a raw copy of the
  same data share one prepared dataset, and ties the key to exactly what the
  builder writes.
  """
  h = hashlib.sha256(_BUILDER_LAYOUT)
  for split in MNIST_FILES:
    for array in mnist[split]:
      h.update(repr((split, array.shape)).encode())
      h.update(np.ascontiguousarray(array).data)
  return h.hexdigest()[:16]


def _png_bytes(image: np.ndarray) -> bytes:
  """uint8 (28, 28) -> PNG bytes (grayscale, lossless)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(image, mode="L").save(buf, format="PNG")
  return buf.getvalue()


@functools.cache
def _mnist_idx_builder_cls() -> type[Any]:
  """Defines `MnistIdx` on first use (importing tfds costs ~0.3 s)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class MnistIdx(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """MNIST from the four IDX files in `dl_manager.manual_dir`.

    Same name, version and features as tfds' built-in `mnist`, so the
    prepared directory reads like it, but: counts come from the headers (the
    built-in one hard-codes 60,000 and checks the official checksums), images
    are encoded to PNG with PIL (no TensorFlow), and shuffling is disabled so
    examples keep the IDX file order. Registration is skipped: the name
    'mnist' belongs to the built-in builder.
    """

    name = "mnist"
    VERSION = tfds.core.Version("3.0.1")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass manual_dir=DIR, a directory holding the four MNIST IDX files "
        "(train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; each raw or .gz).")
    # No checksums file to look up (nothing is downloaded). tfds finds it next
    # to the builder's package with importlib.resources, which raises for a
    # namespace package such as an editable-installed jaxact.
    code_path = None

    def _info(self):
      # dataset_info_from_configs() fails for a builder outside a tfds
      # dataset package, hence DatasetInfo directly.
      return tfds.core.DatasetInfo(
          builder=self,
          description="The MNIST database of handwritten digits, read from "
          "local IDX files.",
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(*_IMAGE_HW, 1)),
              "label": tfds.features.ClassLabel(num_classes=_NUM_CLASSES),
          }),
          supervised_keys=("image", "label"),
          homepage="http://yann.lecun.com/exdb/mnist/",
          disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      mnist = read_mnist_idx_dir(dl_manager.manual_dir)
      return {split: self._generate_examples(*mnist[split])
              for split in MNIST_FILES}

    def _generate_examples(self, images, labels):
      for index, (image, label) in enumerate(zip(images, labels)):
        yield index, {"image": _png_bytes(image), "label": int(label)}

  return MnistIdx


def __getattr__(name: str) -> Any:
  # Exposes `data.MnistIdx` without importing tfds when this module loads.
  if name == "MnistIdx":
    return _mnist_idx_builder_cls()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
  """Holds an exclusive lock on `directory`/.lock (blocks other processes)."""
  directory.mkdir(parents=True, exist_ok=True)
  if fcntl is None:
    yield
    return
  with open(directory / ".lock", "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _remove_stale_build(variant_dir: Path) -> None:
  """Deletes what an interrupted build left around a dataset version dir.

  tfds builds `<name>/<version>` in `<name>/incomplete.XXXXXX_<version>/` and
  renames it on success, so a build that raised leaves nothing, but a killed
  process leaves that directory behind (dead weight, never read). A version
  directory without dataset_info.json can only come from outside
  interference, and tfds would "reuse" it; it is removed too. Call this
  under `_build_lock`, which keeps other builders out.

  Args:
    variant_dir: `<data_dir>/<name>/<version>`.
  """
  for stale in variant_dir.parent.glob(f"incomplete.*_{variant_dir.name}"):
    shutil.rmtree(stale, ignore_errors=True)
  if variant_dir.exists() and not (variant_dir / "dataset_info.json").is_file():
    shutil.rmtree(variant_dir, ignore_errors=True)


def _is_prepared(builder: Any) -> bool:
  # builder.is_prepared() logs a warning when the directory does not exist.
  data_path = Path(os.fspath(builder.data_path))
  return (data_path / "dataset_info.json").is_file() and builder.is_prepared()


def _read_data_source(
    builder: Any, where: str, fix: str,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Decodes every example of both splits into uint8 arrays."""
  result = {}
  try:
    for split in MNIST_FILES:
      source = builder.as_data_source(split=split)
      examples = source.__getitems__(list(range(len(source))))
      images = np.stack([e["image"] for e in examples])[..., 0]
      labels = np.array([e["label"] for e in examples], np.uint8)
      result[split] = (images, labels)
  except Exception as e:  # pylint: disable=broad-except
    # Whatever tfds raises on a damaged prepared copy, the fix is the same.
    raise _error(where, "the prepared tensorflow-datasets copy of MNIST "
                 f"cannot be read ({type(e).__name__}: {e})", fix) from e
  return result


def _load_from_idx_dir(
    data_dir: str, tfds_dir: Path,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  mnist = read_mnist_idx_dir(data_dir)
  root = tfds_dir / f"mnist_idx_{_content_key(mnist)}"
  builder_cls = _mnist_idx_builder_cls()
  with _build_lock(root):
    _remove_stale_build(root / builder_cls.name / str(builder_cls.VERSION))
    builder = builder_cls(data_dir=os.fspath(root), file_format="array_record")
    if not _is_prepared(builder):
      tfds.disable_progress_bar()  # one build of ~3 s; its bars only clutter the log
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(
              manual_dir=os.path.abspath(os.path.expanduser(data_dir))))
  loaded = _read_data_source(
      builder, os.fspath(root),
      f"delete {root} (a cache) and run again")
  for split in MNIST_FILES:
    if len(loaded[split][1]) != len(mnist[split][1]):
      raise _error(root, f"the prepared {split} split holds "
                   f"{len(loaded[split][1])} examples, the IDX files "
                   f"{len(mnist[split][1])}", f"delete {root} and run again")
  return loaded


def mnist_url() -> str:
  """The base URL the four MNIST files are downloaded from (ends in '/').

  `$JAXACT_MNIST_URL` if set (a mirror serving the same files), else
  `MNIST_URL`, where tfds' built-in `mnist` builder downloads them.
  """
  url = os.environ.get(MNIST_URL_ENV) or MNIST_URL
  return url if url.endswith("/") else url + "/"


def _registered_url_infos() -> dict[str, Any]:
  """file name -> tfds' registered `UrlInfo` (size, SHA-256) of the official files.

  tensorflow-datasets ships them (url_checksums/mnist.txt) for its built-in
  `mnist` builder; every download is checked against them.
  """
  from tensorflow_datasets.core.download import checksums  # pylint: disable=g-import-not-at-top
  registered = {url[len(MNIST_URL):]: info
                for url, info in checksums.get_all_url_infos().items()
                if url.startswith(MNIST_URL)}
  names = [name + ".gz" for pair in MNIST_FILES.values() for name in pair]
  missing = [name for name in names if name not in registered]
  if missing:
    raise DataError(
        "This tensorflow-datasets registers no checksums for "
        f"{', '.join(MNIST_URL + name for name in missing)}, so a download "
        "could not be verified. Fix: install a tensorflow-datasets that "
        f"registers them (4.9.x does), or {_FIX_DIR}.")
  return {name: registered[name] for name in names}


def _probe(url: str, timeout_s: float = 10.0) -> str | None:
  """None if a TCP connection to `url`'s host opens, else why not.

  tfds' downloader retries a failed connection for minutes (about 200 s
  without a network here); this fails in seconds. Behind a proxy
  (HTTP(S)_PROXY set) the probe is skipped: the downloader goes through it.
  """
  parts = urllib.parse.urlsplit(url)
  if parts.scheme not in ("http", "https") or not parts.hostname:
    return f"{url!r} is not an http(s) URL"
  if any(os.environ.get(v) for v in PROXY_ENV_VARS):
    return None
  port = parts.port or (443 if parts.scheme == "https" else 80)
  try:
    with socket.create_connection((parts.hostname, port), timeout=timeout_s):
      return None
  except OSError as e:
    return f"cannot connect to {parts.hostname}:{port} ({e})"


def _download_idx_files(tfds_dir: Path) -> Path:
  """Downloads the four MNIST IDX files once; returns the directory holding them.

  Through tfds' `DownloadManager`, from `mnist_url()`, each file checked
  against the size and SHA-256 that tensorflow-datasets registers for it.
  The checked files are stored under their standard names in
  `tfds_dir/downloads/mnist/` (renamed into place only when all four are
  there), which later calls reuse without the network.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from tensorflow_datasets.core.download import download_manager

  downloads = tfds_dir / "downloads"
  target = downloads / "mnist"
  infos = _registered_url_infos()
  downloaded = lambda: all((target / name).is_file() for name in infos)
  if downloaded():
    return target
  base = mnist_url()
  or_data_dir = f"or {_FIX_DIR}"

  def failed(cause: str, fix: str) -> DataError:
    return DataError(
        "No --data_dir (or JAXACT_DATA_DIR) was given, and downloading MNIST "
        f"through tensorflow-datasets from {base} failed: {cause.rstrip('.')}. "
        f"Fix: {fix}.")

  with _build_lock(downloads):
    if downloaded():   # another process did it meanwhile
      return target
    problem = _probe(base)
    if problem:
      raise failed(problem, f"run again with internet access (a mirror of {MNIST_URL} "
                   f"can be given in {MNIST_URL_ENV}), {or_data_dir}")
    raw = downloads / "tfds"
    logging.info("data: downloading the four MNIST files (%.1f MB) from %s into %s",
                 sum(int(info.size) for info in infos.values()) / 1e6, base, target)
    tfds.disable_progress_bar()
    manager = tfds.download.DownloadManager(
        download_dir=raw, url_infos={base + name: info for name, info in infos.items()},
        force_checksums_validation=True)
    try:
      # One file at a time: after a failure no download thread is left
      # writing into `raw`, which is removed below.
      paths = {name: manager.download(base + name) for name in infos}
      incomplete = downloads / "mnist.incomplete"
      shutil.rmtree(incomplete, ignore_errors=True)
      incomplete.mkdir()
      for name, path in paths.items():
        shutil.copyfile(os.fspath(path), incomplete / name)
      shutil.rmtree(target, ignore_errors=True)
      incomplete.rename(target)
    except download_manager.NonMatchingChecksumError as e:
      # tfds' message spans lines and ends in a link; one paragraph here.
      detail = " ".join(str(e).split("To debug")[0].split())
      raise failed(
          "a file is not the one tensorflow-datasets registers for MNIST (size "
          f"or SHA-256 differ: {detail})",
          f"make {base} serve the original files (or unset {MNIST_URL_ENV} to "
          f"download from {MNIST_URL}), {or_data_dir}") from e
    except Exception as e:  # pylint: disable=broad-except
      # Network errors come as requests/urllib3/tfds exceptions of many types.
      raise failed(f"{type(e).__name__}: {' '.join(str(e).split())}",
                   f"run again once {base} can be reached and serves the four files, "
                   f"{or_data_dir}") from e
    finally:
      shutil.rmtree(raw, ignore_errors=True)   # tfds' own copies, hashed names
  return target


def load_mnist(
    data_dir: str | None = None,
    tfds_dir: str | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Loads MNIST through tensorflow-datasets.

  With `data_dir`, the IDX files there are validated (`read_mnist_idx_dir`),
  prepared once with the `MnistIdx` builder (array_record) under
  `tfds_dir/mnist_idx_<key>/`, where key is a short SHA-256 of their decoded
  contents, and read back with the tfds data source; later calls with the
  same contents reuse the prepared copy. Examples keep the IDX file order.
  Builds are serialised with a file lock, and leftovers of an interrupted
  build are removed before building again.

  Without `data_dir`, the four official IDX files are downloaded once
  through tfds' download manager (`_download_idx_files`: checked against the
  sizes and SHA-256 that tfds registers for its built-in `mnist` builder,
  kept under `tfds_dir/downloads/mnist/`) and then prepared and read as
  above, so the examples are in the files' order in both cases, and neither
  path needs TensorFlow. (tfds' built-in builder would need it to prepare the
  data, and would hand the examples over in its own hashed order.)

  Args:
    data_dir: directory holding the four MNIST IDX files, or None.
    tfds_dir: root of prepared tfds datasets; default env JAXACT_TFDS_DIR,
      else ~/.cache/jaxact/tfds.

  Returns:
    Same format as `read_mnist_idx_dir`: {'train': (images uint8 (N, 28, 28),
    labels uint8 (N,)), 'test': (...)}.

  Raises:
    DataError: invalid IDX files; a damaged prepared copy; or, without
      `data_dir`, the download failed (no network, a file that does not
      match tfds' checksums).
  """
  tfds_root = _resolve_tfds_dir(tfds_dir)
  if not data_dir:
    data_dir = os.fspath(_download_idx_files(tfds_root))
  return _load_from_idx_dir(data_dir, tfds_root)


# ---------------------------------------------------------------------------
# Pixels and the split.


def normalise_pixels(images: np.ndarray) -> np.ndarray:
  """Maps uint8 pixels to [-1, 1] as PROTOCOL section 1: (x/255 - 0.5)/0.5.

  Computed in float32 in that order, as torchvision's ToTensor + Normalize.

  Args:
    images: uint8 (N, 28, 28) or (N, 28, 28, 1).

  Returns:
    float32 (N, 28, 28, 1): 0 -> -1, 255 -> 1.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"normalise_pixels expects uint8 pixels, got "
                     f"{images.dtype} (already normalised?)")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[1:] != (*_IMAGE_HW, 1):
    raise ValueError(f"normalise_pixels expects (N, 28, 28) or "
                     f"(N, 28, 28, 1), got {images.shape}")
  x = images.astype(np.float32) / np.float32(255)
  return (x - np.float32(0.5)) / np.float32(0.5)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """The shared data split (PROTOCOL section 1). Arrays are read-only.

  Attributes:
    x_train: float32 (n_train, 28, 28, 1) in [-1, 1].
    y_train: int32 (n_train,) digit labels.
    x_valid: float32 (n_valid, 28, 28, 1).
    y_valid: int32 (n_valid,).
    x_test: float32 (N_test, 28, 28, 1), the full test set.
    y_test: int32 (N_test,).
    split_seed: the seed the train/valid indices were drawn with.
    train_pool_size: N of the source training set drawn from.
    source: the data directory, or 'tfds'.
    train_indices: int64 (n_train,) indices into the source training set.
    valid_indices: int64 (n_valid,) indices into the source training set.
    fingerprint: 16 hex chars, the split's identity (see `make_split`).
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_valid: np.ndarray
  y_valid: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  split_seed: int
  train_pool_size: int
  source: str
  train_indices: np.ndarray
  valid_indices: np.ndarray
  fingerprint: str


def _readonly(array: np.ndarray) -> np.ndarray:
  array.setflags(write=False)
  return array


def make_split(
    mnist: dict[str, tuple[np.ndarray, np.ndarray]],
    split_seed: int,
    n_train: int = TRAIN_SIZE,
    n_valid: int = VALID_SIZE,
    source: str = "",
) -> Split:
  """Draws the train/valid split from mnist['train']; test is mnist['test'].

  `np.random.default_rng(split_seed).choice(N, n_train + n_valid,
  replace=False)`; the first n_train indices are train, the rest valid.

  The fingerprint is a short SHA-256 over the pool size, the indices, the
  selected labels and pixels and the test labels and pixels: two splits with
  the same fingerprint hold the same examples in the same order, whatever
  `source` says.

  Args:
    mnist: as returned by `load_mnist` / `read_mnist_idx_dir`.
    split_seed: seed of the draw.
    n_train: number of train examples.
    n_valid: number of valid examples.
    source: where the data came from, recorded in the Split.

  Returns:
    The Split.

  Raises:
    DataError: the training pool holds fewer than n_train + n_valid examples.
  """
  pool_images, pool_labels = mnist["train"]
  test_images, test_labels = mnist["test"]
  pool_size = int(pool_labels.shape[0])
  n = n_train + n_valid
  if pool_size < n:
    raise _error(
        source or "the MNIST training set",
        f"holds {pool_size} training examples, fewer than the {n_train} "
        f"train + {n_valid} valid = {n} the split draws",
        "use a directory whose training files hold more examples (the full "
        "MNIST has 60,000), or " + _FIX_DIR)
  indices = np.random.default_rng(split_seed).choice(
      pool_size, n, replace=False).astype(np.int64)
  train_indices, valid_indices = indices[:n_train], indices[n_train:]

  h = hashlib.sha256(b"jaxact-split-v1")
  h.update(repr((pool_size, n_train, n_valid)).encode())
  for array in (indices, pool_labels[indices], pool_images[indices],
                test_labels, test_images):
    h.update(np.ascontiguousarray(array).data)

  def labels(y):
    return _readonly(np.asarray(y, np.int32))

  return Split(
      x_train=_readonly(normalise_pixels(pool_images[train_indices])),
      y_train=labels(pool_labels[train_indices]),
      x_valid=_readonly(normalise_pixels(pool_images[valid_indices])),
      y_valid=labels(pool_labels[valid_indices]),
      x_test=_readonly(normalise_pixels(test_images)),
      y_test=labels(test_labels),
      split_seed=int(split_seed),
      train_pool_size=pool_size,
      source=source,
      train_indices=_readonly(train_indices),
      valid_indices=_readonly(valid_indices),
      fingerprint=h.hexdigest()[:16],
  )


def load_split(
    data_dir: str | None,
    split_seed: int,
    tfds_dir: str | None = None,
) -> Split:
  """resolve_data_dir + load_mnist + make_split (2,000 train, 3,000 valid).

  Args:
    data_dir: the --data_dir flag value (None/'' falls back to
      JAXACT_DATA_DIR, then to the tfds download path).
    split_seed: seed of the train/valid draw.
    tfds_dir: root of prepared tfds datasets (see `load_mnist`).

  Returns:
    The Split; its source is the absolute data directory, or the download URL.
  """
  resolved = resolve_data_dir(data_dir)
  mnist = load_mnist(resolved, tfds_dir)
  source = (os.path.abspath(os.path.expanduser(resolved)) if resolved
            else f"downloaded through tensorflow-datasets from {mnist_url()}")
  return make_split(mnist, split_seed, source=source)
