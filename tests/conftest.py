"""Shared fixtures: where the real MNIST IDX files are, and a private tfds cache."""

import os
from pathlib import Path

import pytest

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"

# The CLI runs of the tests compile afresh and write nothing to ~/.cache/jaxact/xla; the test
# of the compilation cache passes its own --compilation_cache_dir.
os.environ.setdefault("JAXACT_COMPILATION_CACHE_DIR", "")


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
