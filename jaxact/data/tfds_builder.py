"""MNIST through tensorflow-datasets: the IDX builder, the download, the prepared-data cache.

`load_mnist` is the one way in (`jaxact.data.mnist.load_split` calls it):

* `data_dir` given (or `JAXACT_DATA_DIR`): a directory holding the four MNIST
  IDX files (gzip or raw). They are validated (`jaxact.data.mnist.read_mnist_idx_dir`),
  then prepared through a small custom tensorflow-datasets builder (`MnistIdx`,
  array_record format, no TensorFlow and no network needed) into a cache keyed
  by their content, and read back with tfds' random-access data source.
  Examples keep the IDX file order.
* no `data_dir`: the four official IDX files are downloaded once through
  tfds' download manager, checked against the checksums tfds registers for
  them, and then go the same way (needs internet once, not TensorFlow).

Every problem raises `jaxact.data.mnist.DataError`. This module does I/O only; it
does not import JAX, and imports tensorflow_datasets lazily (`MnistIdx` is
defined on first access).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import shutil
import socket
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

from absl import logging
import numpy as np

from jaxact.data import idx as data_lib

try:
  import fcntl
except ImportError:  # Not on POSIX: builds are then not guarded against
  fcntl = None     # concurrent processes (single-process use still works).

TFDS_DIR_ENV = "JAXACT_TFDS_DIR"
DEFAULT_TFDS_DIR = "~/.cache/jaxact/tfds"
# Where tfds' built-in `mnist` builder downloads the four IDX files from; tfds
# registers their sizes and SHA-256 under these URLs.
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_URL_ENV = "JAXACT_MNIST_URL"
# With any of these set, requests (tfds' downloader) goes through a proxy.
PROXY_ENV_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                  "all_proxy")

# Part of the prepared-dataset cache key: bump it when the builder's output
# changes, so that caches written by an older builder are not reused.
_BUILDER_LAYOUT = b"jaxact-mnist-idx-builder-v1"


# ---------------------------------------------------------------------------
# The builder and the prepared-data cache.


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
  for split in data_lib.MNIST_FILES:
    for array in mnist[split]:
      h.update(repr((split, array.shape)).encode())
      h.update(np.ascontiguousarray(array).data)
  return h.hexdigest()[:16]


def png_bytes(image: np.ndarray) -> bytes:
  """uint8 (28, 28) -> PNG bytes (grayscale, lossless): how `MnistIdx` stores an image."""
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
              "image": tfds.features.Image(shape=(*data_lib.IMAGE_HW, 1)),
              "label": tfds.features.ClassLabel(num_classes=data_lib.NUM_CLASSES),
          }),
          supervised_keys=("image", "label"),
          homepage="http://yann.lecun.com/exdb/mnist/",
          disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      mnist = data_lib.read_mnist_idx_dir(dl_manager.manual_dir)
      return {split: self._generate_examples(*mnist[split])
              for split in data_lib.MNIST_FILES}

    def _generate_examples(self, images, labels):
      for index, (image, label) in enumerate(zip(images, labels)):
        yield index, {"image": png_bytes(image), "label": int(label)}

  return MnistIdx


def __getattr__(name: str) -> Any:
  # Exposes `MnistIdx` without importing tfds when this module loads (~0.3 s,
  # and only a build or a read needs it).
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
    for split in data_lib.MNIST_FILES:
      source = builder.as_data_source(split=split)
      examples = source.__getitems__(list(range(len(source))))
      images = np.stack([e["image"] for e in examples])[..., 0]
      labels = np.array([e["label"] for e in examples], np.uint8)
      result[split] = (images, labels)
  except Exception as e:  # pylint: disable=broad-except
    # Whatever tfds raises on a damaged prepared copy, the fix is the same.
    raise data_lib.data_error(where, "the prepared tensorflow-datasets copy of MNIST "
                              f"cannot be read ({type(e).__name__}: {e})", fix) from e
  return result


def _load_from_idx_dir(
    data_dir: str, tfds_dir: Path,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  mnist = data_lib.read_mnist_idx_dir(data_dir)
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
  for split in data_lib.MNIST_FILES:
    if len(loaded[split][1]) != len(mnist[split][1]):
      raise data_lib.data_error(root, f"the prepared {split} split holds "
                                f"{len(loaded[split][1])} examples, the IDX files "
                                f"{len(mnist[split][1])}", f"delete {root} and run again")
  return loaded


# ---------------------------------------------------------------------------
# The download.


def mnist_url() -> str:
  """The base URL the four MNIST files are downloaded from (ends in '/').

  `$JAXACT_MNIST_URL` if set (a mirror serving the same files), else
  `MNIST_URL`, where tfds' built-in `mnist` builder downloads them.
  """
  url = os.environ.get(MNIST_URL_ENV) or MNIST_URL
  return url if url.endswith("/") else url + "/"


def registered_url_infos() -> dict[str, Any]:
  """file name -> tfds' registered `UrlInfo` (size, SHA-256) of the official files.

  tensorflow-datasets ships them (url_checksums/mnist.txt) for its built-in
  `mnist` builder; every download is checked against them.
  """
  from tensorflow_datasets.core.download import checksums  # pylint: disable=g-import-not-at-top
  registered = {url[len(MNIST_URL):]: info
                for url, info in checksums.get_all_url_infos().items()
                if url.startswith(MNIST_URL)}
  names = [name + ".gz" for pair in data_lib.MNIST_FILES.values() for name in pair]
  missing = [name for name in names if name not in registered]
  if missing:
    raise data_lib.DataError(
        "This tensorflow-datasets registers no checksums for "
        f"{', '.join(MNIST_URL + name for name in missing)}, so a download "
        "could not be verified. Fix: install a tensorflow-datasets that "
        f"registers them (4.9.x does), or {data_lib.FIX_DIR}.")
  return {name: registered[name] for name in names}


def probe_url(url: str, timeout_s: float = 10.0) -> str | None:
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
  infos = registered_url_infos()
  downloaded = lambda: all((target / name).is_file() for name in infos)
  if downloaded():
    return target
  base = mnist_url()
  or_data_dir = f"or {data_lib.FIX_DIR}"

  def failed(cause: str, fix: str) -> data_lib.DataError:
    return data_lib.DataError(
        "No --data_dir (or JAXACT_DATA_DIR) was given, and downloading MNIST "
        f"through tensorflow-datasets from {base} failed: {cause.rstrip('.')}. "
        f"Fix: {fix}.")

  with _build_lock(downloads):
    if downloaded():   # another process did it meanwhile
      return target
    problem = probe_url(base)
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


# ---------------------------------------------------------------------------
# Loading.


def load_mnist(
    data_dir: str | None = None,
    tfds_dir: str | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Loads MNIST through tensorflow-datasets.

  With `data_dir`, the IDX files there are validated (`data.read_mnist_idx_dir`),
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
    Same format as `data.read_mnist_idx_dir`: {'train': (images uint8 (N, 28, 28),
    labels uint8 (N,)), 'test': (...)}.

  Raises:
    DataError: invalid IDX files; a damaged prepared copy; a `tfds_dir` that
      cannot be written (or a full disk there); or, without
      `data_dir`, the download failed (no network, a file that does not
      match tfds' checksums).
  """
  tfds_root = _resolve_tfds_dir(tfds_dir)
  try:
    if not data_dir:
      data_dir = os.fspath(_download_idx_files(tfds_root))
    return _load_from_idx_dir(data_dir, tfds_root)
  except OSError as e:
    # The IDX files' own read errors are DataErrors already; what is left is the cache.
    raise _cache_error(tfds_root, e) from e


def _cache_error(tfds_root: Path, err: OSError) -> data_lib.DataError:
  where = f" ({err.filename})" if err.filename and os.fspath(err.filename) != os.fspath(
      tfds_root) else ""
  return data_lib.data_error(
      tfds_root, f"the tensorflow-datasets cache directory cannot be written: "
      f"{err.strerror or err}{where}",
      f"pass a writable directory with --tfds_dir (or {TFDS_DIR_ENV}; default "
      f"{DEFAULT_TFDS_DIR}), or make room on its disk")

