"""Tests for jaxact.data (IDX files, validation, the split) and jaxact.data.tfds_builder (tfds loading)."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from jaxact.data import mnist as data
from jaxact.data import idx as idx_lib
from jaxact.data import tfds_builder as mnist_tfds
from jaxact.data.idx import DataError

# The 19,690-example prefix in ../shared/data/mnist; and the full MNIST.
PREFIX_LABEL_COUNTS = [1955, 2248, 1901, 2048, 1919, 1738, 1940, 2067, 1894,
                       1980]
FULL_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851,
                     5949]


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
  """Serialises `array` (uint8) as an IDX file."""
  header = bytes([0, 0, type_code, array.ndim])
  header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_file(path: Path, content: bytes) -> Path:
  """Writes `content`, gzip-compressed if the name ends in .gz."""
  if path.name.endswith(".gz"):
    content = gzip.compress(content)
  path.write_bytes(content)
  return path


def write_mnist_dir(directory: Path, n_train: int, n_test: int, seed: int = 0,
                    gz: bool = True) -> dict:
  """Writes four synthetic MNIST IDX files (noise images) and returns them."""
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  result = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    images_name, labels_name = idx_lib.MNIST_FILES[split]
    suffix = ".gz" if gz else ""
    write_file(directory / (images_name + suffix), idx_bytes(images))
    write_file(directory / (labels_name + suffix), idx_bytes(labels))
    result[split] = (images, labels)
  return result


def assert_mnist_equal(actual: dict, expected: dict) -> None:
  assert set(actual) == {"train", "test"}
  for split in ("train", "test"):
    for a, e in zip(actual[split], expected[split]):
      assert a.dtype == e.dtype
      np.testing.assert_array_equal(a, e)


def assert_names(error: pytest.ExceptionInfo, *parts: str) -> None:
  message = str(error.value)
  for part in parts:
    assert part in message, (part, message)
  assert "Fix:" in message and "\n" not in message


# ---------------------------------------------------------------------------
# read_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 28, 28), (2, 5)])
def test_read_idx_round_trips(tmp_path, suffix, shape):
  array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
  path = write_file(tmp_path / f"x-idx{suffix}", idx_bytes(array))
  result = idx_lib.read_idx(path)
  assert result.dtype == np.uint8 and result.shape == shape
  np.testing.assert_array_equal(result, array)
  assert result.flags.writeable


def test_read_idx_empty_dimension_is_valid(tmp_path):
  path = write_file(tmp_path / "empty", idx_bytes(np.zeros((0, 28, 28))))
  assert idx_lib.read_idx(path).shape == (0, 28, 28)


GOOD = idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("content, expected", [
    (b"\x08\x03" + GOOD[2:], "magic number"),
    (GOOD[:2] + b"\x0d" + GOOD[3:], "0x0d (float32)"),
    (GOOD[:2] + b"\x07" + GOOD[3:], "invalid element type code 0x07"),
    (GOOD[:3] + b"\x00" + GOOD[4:], "0 dimensions"),
    (GOOD[:3] + b"\x04" + GOOD[4:], "4 dimensions"),
    (GOOD[:-1], "truncated"),
    (GOOD[:10], "shorter than its 16-byte IDX header"),
    (GOOD + b"\x00\x01", "2 trailing bytes"),
    (b"\x00\x00", "shorter than the 4-byte"),
    (b"", "0 bytes"),
])
def test_read_idx_rejects_corrupt_content(tmp_path, suffix, content, expected):
  path = write_file(tmp_path / f"bad-idx{suffix}", content)
  with pytest.raises(DataError) as e:
    idx_lib.read_idx(path)
  assert_names(e, str(path), expected, "re-download")


def test_read_idx_truncated_data_names_counts(tmp_path):
  array = np.zeros((5, 28, 28), np.uint8)
  path = write_file(tmp_path / "images.gz", idx_bytes(array)[:-784])
  with pytest.raises(DataError) as e:
    idx_lib.read_idx(path)
  assert_names(e, str(path), "(5, 28, 28)", "3920 data bytes",
               f"holds {3920 - 784}")


def test_read_idx_truncated_gzip(tmp_path):
  path = write_file(tmp_path / "x.gz", GOOD * 50)
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(DataError) as e:
    idx_lib.read_idx(path)
  assert_names(e, str(path), "truncated or corrupt gzip")


def test_read_idx_corrupt_gzip_crc(tmp_path):
  path = write_file(tmp_path / "x.gz", GOOD)
  raw = bytearray(path.read_bytes())
  raw[-8] ^= 0xFF  # CRC-32 of the member.
  path.write_bytes(bytes(raw))
  with pytest.raises(DataError) as e:
    idx_lib.read_idx(path)
  assert_names(e, str(path), "truncated or corrupt gzip")


def test_read_idx_non_gzip_bytes_in_gz_file(tmp_path):
  path = tmp_path / "x.gz"
  path.write_bytes(GOOD)  # Raw IDX under a .gz name.
  with pytest.raises(DataError) as e:
    idx_lib.read_idx(path)
  assert_names(e, str(path), "truncated or corrupt gzip")


def test_read_idx_gzip_bytes_in_raw_file_hint(tmp_path):
  path = tmp_path / "x"
  path.write_bytes(gzip.compress(GOOD))
  with pytest.raises(DataError) as e:
    idx_lib.read_idx(path)
  assert_names(e, str(path), "looks gzip-compressed")


def test_read_idx_missing_and_directory(tmp_path):
  for path in (tmp_path / "nope.gz", tmp_path):
    with pytest.raises(DataError) as e:
      idx_lib.read_idx(path)
    assert_names(e, str(path), "cannot be read")


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
  # Module-scoped: hypothesis reruns the test body, not function fixtures.
  return tmp_path_factory.mktemp("fuzz")


def _read_or_data_error(directory: Path, content: bytes, name: str) -> None:
  path = directory / name
  path.write_bytes(content)
  try:
    result = idx_lib.read_idx(path)
  except DataError as e:
    assert str(path) in str(e)
  else:
    assert isinstance(result, np.ndarray) and result.dtype == np.uint8
    decoded = gzip.decompress(content) if name.endswith(".gz") else content
    assert result.size == len(decoded) - 4 - 4 * result.ndim


FUZZ_SETTINGS = hypothesis.settings(max_examples=200, deadline=None)


@FUZZ_SETTINGS
@hypothesis.given(content=st.binary(max_size=64),
                  name=st.sampled_from(["fuzz", "fuzz.gz"]))
def test_read_idx_fuzz_arbitrary_bytes(fuzz_dir, content, name):
  _read_or_data_error(fuzz_dir, content, name)


@FUZZ_SETTINGS
@hypothesis.given(
    edits=st.lists(st.tuples(st.integers(0, len(GOOD) - 1),
                             st.integers(0, 255)), max_size=4),
    cut=st.integers(0, len(GOOD) + 1),
    extra=st.binary(max_size=4),
    mode=st.sampled_from(["raw", "gzip_of_mutated", "mutated_gzip"]))
def test_read_idx_fuzz_mutations(fuzz_dir, edits, cut, extra, mode):
  if mode == "mutated_gzip":
    content = bytearray(gzip.compress(GOOD))
  else:
    content = bytearray(GOOD)
  for position, value in edits:
    content[position % len(content)] = value
  content = bytes(content[:cut]) + extra
  if mode == "gzip_of_mutated":
    content = gzip.compress(content)
  _read_or_data_error(fuzz_dir, content,
                      "fuzz" if mode == "raw" else "fuzz.gz")


# ---------------------------------------------------------------------------
# read_mnist_idx_dir


def test_read_mnist_idx_dir_reads_gz_and_raw(tmp_path):
  expected = write_mnist_dir(tmp_path / "gz", 6, 4, gz=True)
  assert_mnist_equal(idx_lib.read_mnist_idx_dir(tmp_path / "gz"), expected)
  expected = write_mnist_dir(tmp_path / "raw", 6, 4, gz=False)
  assert_mnist_equal(idx_lib.read_mnist_idx_dir(str(tmp_path / "raw")), expected)


def test_read_mnist_idx_dir_prefers_gz(tmp_path):
  expected = write_mnist_dir(tmp_path, 6, 4, seed=1, gz=True)
  write_mnist_dir(tmp_path, 6, 4, seed=2, gz=False)
  assert_mnist_equal(idx_lib.read_mnist_idx_dir(tmp_path), expected)


def test_read_mnist_idx_dir_missing_dir(tmp_path):
  with pytest.raises(DataError) as e:
    idx_lib.read_mnist_idx_dir(tmp_path / "absent")
  assert_names(e, str(tmp_path / "absent"), "does not exist", "--data_dir",
               "JAXACT_DATA_DIR")


def test_read_mnist_idx_dir_not_a_directory(tmp_path):
  path = tmp_path / "file"
  path.write_bytes(b"x")
  with pytest.raises(DataError) as e:
    idx_lib.read_mnist_idx_dir(path)
  assert_names(e, str(path), "not a directory")


def test_read_mnist_idx_dir_empty(tmp_path):
  with pytest.raises(DataError) as e:
    idx_lib.read_mnist_idx_dir(tmp_path)
  assert_names(e, str(tmp_path), "is empty", "--data_dir")


def test_read_mnist_idx_dir_some_files_missing(tmp_path):
  write_mnist_dir(tmp_path, 6, 4)
  (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
  (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(DataError) as e:
    idx_lib.read_mnist_idx_dir(tmp_path)
  message = str(e.value)
  missing = message[message.index("missing"):message.index("found")]
  found = message[message.index("found"):]
  assert "train-labels-idx1-ubyte[.gz]" in missing
  assert "t10k-images-idx3-ubyte[.gz]" in missing
  assert "train-images" not in missing and "t10k-labels" not in missing
  assert "train-images-idx3-ubyte.gz" in found
  assert "t10k-labels-idx1-ubyte.gz" in found
  assert "notes.txt" in found  # Listed as another entry.
  assert_names(e, str(tmp_path), "lacks 2 of the 4")


def test_read_mnist_idx_dir_count_mismatch(tmp_path):
  write_mnist_dir(tmp_path, 6, 4)
  labels_path = tmp_path / "t10k-labels-idx1-ubyte.gz"
  write_file(labels_path, idx_bytes(np.zeros(3, np.uint8)))
  with pytest.raises(DataError) as e:
    idx_lib.read_mnist_idx_dir(tmp_path)
  assert_names(e, "t10k-images-idx3-ubyte.gz", str(labels_path),
               "holds 4 images", "3 labels")


def test_read_mnist_idx_dir_label_out_of_range(tmp_path):
  write_mnist_dir(tmp_path, 6, 4)
  labels_path = tmp_path / "train-labels-idx1-ubyte.gz"
  write_file(labels_path,
             idx_bytes(np.array([0, 1, 12, 3, 4, 5], np.uint8)))
  with pytest.raises(DataError) as e:
    idx_lib.read_mnist_idx_dir(tmp_path)
  assert_names(e, str(labels_path), "outside 0..9", "index 2", "value 12")


@pytest.mark.parametrize("name, array, expected", [
    ("train-images-idx3-ubyte.gz", np.zeros((6, 28, 27)), "(N, 28, 28)"),
    ("train-images-idx3-ubyte.gz", np.zeros((6, 784)), "(N, 28, 28)"),
    ("t10k-labels-idx1-ubyte.gz", np.zeros((4, 1)), "1-D"),
    ("t10k-labels-idx1-ubyte.gz", np.zeros((4, 28, 28)), "1-D"),
])
def test_read_mnist_idx_dir_bad_shapes(tmp_path, name, array, expected):
  write_mnist_dir(tmp_path, 6, 4)
  write_file(tmp_path / name, idx_bytes(array.astype(np.uint8)))
  with pytest.raises(DataError) as e:
    idx_lib.read_mnist_idx_dir(tmp_path)
  assert_names(e, str(tmp_path / name), expected)


def test_read_mnist_idx_dir_no_examples(tmp_path):
  write_mnist_dir(tmp_path, 0, 4)
  with pytest.raises(DataError) as e:
    idx_lib.read_mnist_idx_dir(tmp_path)
  assert_names(e, "train-images-idx3-ubyte.gz", "no examples")


def test_read_mnist_idx_dir_corrupt_file_named(tmp_path):
  write_mnist_dir(tmp_path, 6, 4)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(DataError) as e:
    idx_lib.read_mnist_idx_dir(tmp_path)
  assert_names(e, str(path), "truncated or corrupt gzip")


# ---------------------------------------------------------------------------
# resolve_data_dir, normalise_pixels, make_split


def test_resolve_data_dir(monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  assert data.resolve_data_dir(None) is None
  assert data.resolve_data_dir("") is None
  assert data.resolve_data_dir("/a") == "/a"
  monkeypatch.setenv(data.DATA_DIR_ENV, "")
  assert data.resolve_data_dir(None) is None
  monkeypatch.setenv(data.DATA_DIR_ENV, "/env")
  assert data.resolve_data_dir(None) == "/env"
  assert data.resolve_data_dir("/flag") == "/flag"


def test_normalise_pixels():
  images = np.array([0, 127, 128, 255], np.uint8).reshape(4, 1, 1)
  images = np.broadcast_to(images, (4, 28, 28))
  x = data.normalise_pixels(images)
  assert x.dtype == np.float32 and x.shape == (4, 28, 28, 1)
  np.testing.assert_array_equal(x[:, 0, 0, 0][[0, 3]], [-1, 1])
  # 127.5 maps to 0: 127 and 128 sit symmetrically around it.
  np.testing.assert_allclose(x[:, 0, 0, 0], [-1, -1 / 255, 1 / 255, 1],
                             rtol=0, atol=1e-7)
  np.testing.assert_allclose(x[1, 0, 0, 0], -x[2, 0, 0, 0], rtol=0, atol=1e-7)
  # Bit-exact with the float32 formula x/255 then (x-0.5)/0.5 (what
  # torchvision's ToTensor + Normalize compute).
  f = np.float32
  expected = (np.arange(256, dtype=f) / f(255) - f(0.5)) / f(0.5)
  all_values = np.broadcast_to(
      np.arange(256, dtype=np.uint8)[:, None, None], (256, 28, 28))
  np.testing.assert_array_equal(data.normalise_pixels(all_values)[:, 5, 5, 0],
                                expected)
  assert data.normalise_pixels(images[..., None]).shape == (4, 28, 28, 1)


def test_normalise_pixels_rejects_floats_and_bad_shapes():
  with pytest.raises(ValueError, match="uint8"):
    data.normalise_pixels(np.zeros((1, 28, 28), np.float32))
  with pytest.raises(ValueError, match="28, 28"):
    data.normalise_pixels(np.zeros((1, 28, 27), np.uint8))


@pytest.fixture(scope="module")
def pool():
  rng = np.random.default_rng(5)
  return {
      "train": (rng.integers(0, 256, (6000, 28, 28), dtype=np.uint8),
                rng.integers(0, 10, (6000,), dtype=np.uint8)),
      "test": (rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
               rng.integers(0, 10, (50,), dtype=np.uint8)),
  }


def test_make_split_contents(pool):
  split = data.make_split(pool, 3, source="somewhere")
  assert split.x_train.shape == (2000, 28, 28, 1)
  assert split.x_valid.shape == (3000, 28, 28, 1)
  assert split.x_test.shape == (50, 28, 28, 1)
  for x in (split.x_train, split.x_valid, split.x_test):
    assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
  for y in (split.y_train, split.y_valid, split.y_test):
    assert y.dtype == np.int32
  assert split.train_indices.shape == (2000,)
  assert split.valid_indices.shape == (3000,)
  both = np.concatenate([split.train_indices, split.valid_indices])
  assert len(np.unique(both)) == 5000  # Disjoint, no repeats.
  drawn = np.random.default_rng(3).choice(6000, 5000, replace=False)
  np.testing.assert_array_equal(both, drawn)
  images, labels = pool["train"]
  np.testing.assert_array_equal(
      split.x_train, data.normalise_pixels(images[split.train_indices]))
  np.testing.assert_array_equal(split.y_valid, labels[split.valid_indices])
  np.testing.assert_array_equal(split.y_test, pool["test"][1])
  assert split.split_seed == 3 and split.train_pool_size == 6000
  assert split.source == "somewhere"
  assert len(split.fingerprint) == 16
  assert not split.x_train.flags.writeable


def test_make_split_deterministic_and_seed_dependent(pool):
  a = data.make_split(pool, 7)
  b = data.make_split(pool, 7, source="elsewhere")
  c = data.make_split(pool, 8)
  np.testing.assert_array_equal(a.train_indices, b.train_indices)
  np.testing.assert_array_equal(a.x_valid, b.x_valid)
  assert a.fingerprint == b.fingerprint  # The source is not identity.
  assert not np.array_equal(a.train_indices, c.train_indices)
  assert a.fingerprint != c.fingerprint


def test_make_split_fingerprint_tracks_data(pool):
  base = data.make_split(pool, 7).fingerprint
  test_images, test_labels = pool["test"]
  changed = dict(pool, test=(test_images, (test_labels + 1) % 10))
  assert data.make_split(changed, 7).fingerprint != base
  train_images, train_labels = pool["train"]
  grown = dict(pool, train=(np.concatenate([train_images, train_images[:1]]),
                            np.concatenate([train_labels, train_labels[:1]])))
  assert data.make_split(grown, 7).fingerprint != base
  assert data.make_split(pool, 7, n_train=1000, n_valid=1000).fingerprint != (
      base)


def test_make_split_pool_too_small(pool):
  images, labels = pool["train"]
  small = dict(pool, train=(images[:4999], labels[:4999]))
  with pytest.raises(DataError) as e:
    data.make_split(small, 0, source="/some/dir")
  assert_names(e, "/some/dir", "4999", "5000")
  assert data.make_split(small, 0, n_train=10, n_valid=20).x_valid.shape == (
      20, 28, 28, 1)


# ---------------------------------------------------------------------------
# load_mnist through the tfds builder (small synthetic data: fast builds)


def _cache_dirs(tfds_dir: Path) -> list[Path]:
  return sorted(tfds_dir.glob("mnist_idx_*"))


def _forbid_prepare(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("download_and_prepare called again")
  monkeypatch.setattr(mnist_tfds.MnistIdx, "download_and_prepare", fail)


def test_load_mnist_from_idx_dir_round_trip_and_reuse(tmp_path, monkeypatch):
  expected = write_mnist_dir(tmp_path / "idx", 40, 12)
  tfds_dir = tmp_path / "tfds"
  assert_mnist_equal(mnist_tfds.load_mnist(str(tmp_path / "idx"), str(tfds_dir)),
                     expected)
  (cache,) = _cache_dirs(tfds_dir)
  variant = cache / "mnist" / "3.0.1"
  assert (variant / "dataset_info.json").is_file()
  assert list(variant.glob("mnist-train.array_record-*"))
  mtime = variant.stat().st_mtime_ns

  _forbid_prepare(monkeypatch)
  assert_mnist_equal(mnist_tfds.load_mnist(str(tmp_path / "idx"), str(tfds_dir)),
                     expected)
  # The same contents stored raw share the prepared copy.
  write_mnist_dir(tmp_path / "raw", 40, 12, gz=False)
  assert_mnist_equal(mnist_tfds.load_mnist(str(tmp_path / "raw"), str(tfds_dir)),
                     expected)
  assert _cache_dirs(tfds_dir) == [cache]
  assert variant.stat().st_mtime_ns == mtime


def test_load_mnist_tfds_dir_from_env(tmp_path, monkeypatch):
  expected = write_mnist_dir(tmp_path / "idx", 10, 3)
  monkeypatch.setenv(mnist_tfds.TFDS_DIR_ENV, str(tmp_path / "env_tfds"))
  assert_mnist_equal(mnist_tfds.load_mnist(str(tmp_path / "idx")), expected)
  assert len(_cache_dirs(tmp_path / "env_tfds")) == 1


def test_load_mnist_different_dirs_do_not_collide(tmp_path):
  a = write_mnist_dir(tmp_path / "a", 10, 3, seed=1)
  b = write_mnist_dir(tmp_path / "b", 10, 3, seed=2)
  tfds_dir = str(tmp_path / "tfds")
  assert_mnist_equal(mnist_tfds.load_mnist(str(tmp_path / "a"), tfds_dir), a)
  assert_mnist_equal(mnist_tfds.load_mnist(str(tmp_path / "b"), tfds_dir), b)
  assert len(_cache_dirs(tmp_path / "tfds")) == 2
  assert_mnist_equal(mnist_tfds.load_mnist(str(tmp_path / "a"), tfds_dir), a)


def test_load_mnist_validates_before_building(tmp_path):
  write_mnist_dir(tmp_path / "idx", 10, 3)
  (tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
    mnist_tfds.load_mnist(str(tmp_path / "idx"), str(tmp_path / "tfds"))
  assert not (tmp_path / "tfds").exists()


def test_load_mnist_unwritable_tfds_dir_is_a_data_error(tmp_path):
  write_mnist_dir(tmp_path / "idx", 10, 3)
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(DataError) as err:
    mnist_tfds.load_mnist(str(tmp_path / "idx"), str(blocker / "tfds"))
  message = str(err.value)
  assert message.startswith(f"{blocker / 'tfds'}: the tensorflow-datasets cache directory "
                            "cannot be written: Not a directory")
  assert "Fix: pass a writable directory with --tfds_dir (or JAXACT_TFDS_DIR" in message
  assert "\n" not in message


def test_load_mnist_recovers_from_interrupted_builds(tmp_path, monkeypatch):
  expected = write_mnist_dir(tmp_path / "idx", 30, 10)
  tfds_dir = tmp_path / "tfds"
  calls = []
  png_bytes = mnist_tfds.png_bytes

  def interrupted(image):
    calls.append(1)
    if len(calls) == 20:
      raise KeyboardInterrupt
    return png_bytes(image)

  monkeypatch.setattr(mnist_tfds, "png_bytes", interrupted)
  with pytest.raises(KeyboardInterrupt):
    mnist_tfds.load_mnist(str(tmp_path / "idx"), str(tfds_dir))
  monkeypatch.setattr(mnist_tfds, "png_bytes", png_bytes)
  (cache,) = _cache_dirs(tfds_dir)
  assert not (cache / "mnist" / "3.0.1").exists()

  # What a killed build leaves: a half-written incomplete directory.
  stale = cache / "mnist" / "incomplete.ABC123_3.0.1"
  stale.mkdir(parents=True)
  (stale / "mnist-train.array_record-00000-of-00001").write_bytes(b"junk")
  assert_mnist_equal(mnist_tfds.load_mnist(str(tmp_path / "idx"), str(tfds_dir)),
                     expected)
  assert not stale.exists()
  assert sorted(p.name for p in (cache / "mnist").iterdir()) == ["3.0.1"]


# ---------------------------------------------------------------------------
# No data_dir: the download through tfds' download manager (from a local server)


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[tuple[str, list[str]]]:
  """Serves `directory` over HTTP on localhost: yields (base URL, paths requested)."""
  requested: list[str] = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, directory=os.fspath(directory), **kwargs)

    def do_GET(self):  # pylint: disable=invalid-name
      requested.append(self.path)
      super().do_GET()

    def log_message(self, *args):  # pylint: disable=arguments-differ
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}/", requested
  finally:
    server.shutdown()
    server.server_close()


def _gz_names() -> list[str]:
  return [name + ".gz" for pair in idx_lib.MNIST_FILES.values() for name in pair]


def test_registered_checksums_cover_the_four_files():
  infos = mnist_tfds.registered_url_infos()
  assert sorted(infos) == sorted(_gz_names())
  for name, info in infos.items():
    assert info.filename == name and len(info.checksum) == 64
  if REAL_DIR is not None:
    # The offline copy's test files are the originals, byte for byte.
    from tensorflow_datasets.core.download import checksums  # pylint: disable=g-import-not-at-top
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
      assert checksums.compute_url_info(REAL_DIR / name) == infos[name]


def test_load_mnist_without_data_dir_downloads_once(tmp_path, monkeypatch):
  from tensorflow_datasets.core.download import checksums  # pylint: disable=g-import-not-at-top
  expected = write_mnist_dir(tmp_path / "mirror", 30, 7)
  infos = {name: checksums.compute_url_info(tmp_path / "mirror" / name)
           for name in _gz_names()}
  monkeypatch.setattr(mnist_tfds, "registered_url_infos", lambda: infos)
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  tfds_dir = tmp_path / "tfds"
  with serve(tmp_path / "mirror") as (url, requested):
    monkeypatch.setenv(mnist_tfds.MNIST_URL_ENV, url)
    assert_mnist_equal(mnist_tfds.load_mnist(None, str(tfds_dir)), expected)
    assert sorted(requested) == sorted("/" + name for name in _gz_names())
    downloaded = tfds_dir / "downloads" / "mnist"
    assert sorted(p.name for p in downloaded.iterdir()) == sorted(_gz_names())
    assert sorted(p.name for p in (tfds_dir / "downloads").iterdir()) == [".lock", "mnist"]
    # Prepared like a --data_dir of the same files: one content-keyed copy.
    assert len(_cache_dirs(tfds_dir)) == 1
    assert_mnist_equal(mnist_tfds.load_mnist(str(downloaded), str(tfds_dir)), expected)
    assert len(_cache_dirs(tfds_dir)) == 1

    _forbid_prepare(monkeypatch)
    assert_mnist_equal(mnist_tfds.load_mnist(None, str(tfds_dir)), expected)
    assert len(requested) == 4                       # no second download
  monkeypatch.setenv(mnist_tfds.MNIST_URL_ENV, url.rstrip("/"))
  assert mnist_tfds.mnist_url() == url
  monkeypatch.delenv(mnist_tfds.MNIST_URL_ENV)
  assert mnist_tfds.mnist_url() == mnist_tfds.MNIST_URL


def test_load_mnist_download_checks_the_registered_checksums(tmp_path, monkeypatch):
  # The offline copy's train files are a prefix of the originals: tfds'
  # registered checksums must refuse them.
  if REAL_DIR is None:
    pytest.skip("real MNIST IDX files absent")
  tfds_dir = tmp_path / "tfds"
  with serve(REAL_DIR) as (url, _):
    monkeypatch.setenv(mnist_tfds.MNIST_URL_ENV, url)
    with pytest.raises(DataError) as e:
      mnist_tfds.load_mnist(None, str(tfds_dir))
  assert_names(e, "No --data_dir", "downloading MNIST", url,
               "not the one tensorflow-datasets registers", "train-",
               "point --data_dir", mnist_tfds.MNIST_URL_ENV)
  assert sorted(p.name for p in (tfds_dir / "downloads").iterdir()) == [".lock"]
  assert not _cache_dirs(tfds_dir)


def test_load_mnist_download_names_a_missing_file(tmp_path, monkeypatch):
  from tensorflow_datasets.core.download import checksums  # pylint: disable=g-import-not-at-top
  write_mnist_dir(tmp_path / "mirror", 10, 3)
  infos = {name: checksums.compute_url_info(tmp_path / "mirror" / name)
           for name in _gz_names()}
  monkeypatch.setattr(mnist_tfds, "registered_url_infos", lambda: infos)
  (tmp_path / "mirror" / "t10k-images-idx3-ubyte.gz").unlink()
  with serve(tmp_path / "mirror") as (url, _):
    monkeypatch.setenv(mnist_tfds.MNIST_URL_ENV, url)
    with pytest.raises(DataError) as e:
      mnist_tfds.load_mnist(None, str(tmp_path / "tfds"))
  assert_names(e, "downloading MNIST", url + "t10k-images-idx3-ubyte.gz", "404",
               "serves the four files", "point --data_dir")
  assert ". Fix:" in str(e.value) and ".. Fix:" not in str(e.value)
  assert sorted(p.name for p in (tmp_path / "tfds" / "downloads").iterdir()) == [".lock"]


def test_load_mnist_download_fails_fast_without_network(tmp_path, monkeypatch):
  with socket.socket() as s:          # a port that nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  for var in mnist_tfds.PROXY_ENV_VARS:
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv(mnist_tfds.MNIST_URL_ENV, f"http://127.0.0.1:{port}/mnist")
  start = time.perf_counter()
  with pytest.raises(DataError) as e:
    mnist_tfds.load_mnist(None, str(tmp_path / "tfds"))
  assert time.perf_counter() - start < 30     # tfds' own retries take minutes
  assert_names(e, "No --data_dir", "JAXACT_DATA_DIR", f"http://127.0.0.1:{port}/mnist/",
               "cannot connect", "internet", mnist_tfds.MNIST_URL_ENV, "point --data_dir")
  # Behind a proxy the probe leaves it to the downloader.
  monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
  assert mnist_tfds.probe_url(f"https://127.0.0.1:{port}/") is None
  assert mnist_tfds.probe_url("ftp://example.org/") is not None


# ---------------------------------------------------------------------------
# The real data (../shared/data/mnist)


def _real_data_dir() -> Path | None:
  candidates = [Path(__file__).parents[1].parent / "shared/data/mnist"]
  if os.environ.get(data.DATA_DIR_ENV):
    candidates.append(Path(os.environ[data.DATA_DIR_ENV]))
  for candidate in candidates:
    if candidate.is_dir():
      return candidate
  return None


REAL_DIR = _real_data_dir()
needs_real_data = pytest.mark.skipif(
    REAL_DIR is None,
    reason="real MNIST IDX files absent: neither ../shared/data/mnist "
    "(relative to the project root) nor $JAXACT_DATA_DIR is a directory")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
  tfds_dir = tmp_path_factory.mktemp("real_tfds")
  return tfds_dir, mnist_tfds.load_mnist(str(REAL_DIR), str(tfds_dir))


@needs_real_data
def test_real_mnist_through_tfds(real):
  _, mnist = real
  images, labels = mnist["train"]
  n = len(labels)
  assert images.shape == (n, 28, 28) and images.dtype == np.uint8
  counts = np.bincount(labels, minlength=10).tolist()
  if n == 19690:
    assert counts == PREFIX_LABEL_COUNTS
  elif n == 60000:
    assert counts == FULL_LABEL_COUNTS
  assert mnist["test"][0].shape == (10000, 28, 28)
  assert mnist["test"][1].shape == (10000,)
  # The PNG round trip is lossless and keeps the file order.
  assert_mnist_equal(mnist, idx_lib.read_mnist_idx_dir(REAL_DIR))


@needs_real_data
def test_real_mnist_prefix_count():
  if REAL_DIR != Path(__file__).parents[1].parent / "shared/data/mnist":
    pytest.skip("only ../shared/data/mnist is known to hold the prefix")
  assert len(idx_lib.read_mnist_idx_dir(REAL_DIR)["train"][1]) == 19690


@needs_real_data
def test_real_mnist_second_load_reuses_prepared(real, monkeypatch):
  tfds_dir, first = real
  (cache,) = _cache_dirs(tfds_dir)
  variant = cache / "mnist" / "3.0.1"
  mtime = variant.stat().st_mtime_ns
  _forbid_prepare(monkeypatch)
  start = time.perf_counter()
  split = data.load_split(str(REAL_DIR), 0, str(tfds_dir))
  assert time.perf_counter() - start < 20
  assert variant.stat().st_mtime_ns == mtime
  assert _cache_dirs(tfds_dir) == [cache]
  assert split.source == str(REAL_DIR.absolute())
  assert split.train_pool_size == len(first["train"][1])
  assert split.x_train.shape == (2000, 28, 28, 1)
  assert split.x_valid.shape == (3000, 28, 28, 1)
  assert split.x_test.shape == (10000, 28, 28, 1)
  assert split.fingerprint == data.make_split(first, 0).fingerprint


def test_import_does_not_load_tfds():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import sys, jaxact.data.mnist, jaxact.data.tfds_builder; "
          "print('tensorflow_datasets' in sys.modules, 'jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True, cwd=Path(__file__).parents[1])
  assert out.stdout.split() == ["False", "False"]


def test_builder_class_is_defined_once_on_first_access():
  builder_cls = mnist_tfds.MnistIdx
  assert builder_cls is mnist_tfds.MnistIdx
  assert (builder_cls.name, str(builder_cls.VERSION)) == ("mnist", "3.0.1")
  with pytest.raises(AttributeError, match="no attribute 'NoSuchBuilder'"):
    mnist_tfds.NoSuchBuilder  # pylint: disable=pointless-statement
