"""Shared fixtures: where the real MNIST IDX files are, a private tfds cache, and one
compilation cache for the whole test session."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from jaxact.study import train

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"

# Every test, in this process and in the CLI runs it starts, shares one compilation cache made
# for this test run: many tests build a new Engine (a new jit) for a program an earlier test
# already compiled, and load it instead of compiling it again (CI time, see BUILD_NOTES.md).
# A program loaded from the cache is the executable that was compiled, so no result can
# change. Nothing is written to ~/.cache/jaxact/xla; the tests of the cache itself pass their
# own --compilation_cache_dir.
# pytest-xdist's workers inherit the directory through the environment; the process that made
# it removes it at exit.
if train.COMPILATION_CACHE_ENV not in os.environ:
  os.environ[train.COMPILATION_CACHE_ENV] = tempfile.mkdtemp(prefix="jaxact-tests-xla-")
  atexit.register(shutil.rmtree, os.environ[train.COMPILATION_CACHE_ENV], ignore_errors=True)
train.enable_compilation_cache(None)


def real_mnist_dir() -> Path | None:
  """../shared/data/mnist, or $JAXACT_DATA_DIR, if it holds the files."""
  for candidate in (os.environ.get("JAXACT_DATA_DIR"), SHARED_MNIST):
    if candidate and Path(candidate, "t10k-labels-idx1-ubyte.gz").exists():
      return Path(candidate).resolve()   # absolute: some tests run the CLI in other directories
  return None


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
  d = real_mnist_dir()
  if d is None:
    pytest.skip("real MNIST IDX files absent: put ../shared/data/mnist beside the checkout "
                "or set JAXACT_DATA_DIR")
  return d


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> Path:
  """One prepared copy of MNIST shared by the tests that need it."""
  return tmp_path_factory.mktemp("tfds")
