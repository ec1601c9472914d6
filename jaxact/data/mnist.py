"""MNIST loaded (from IDX files or tensorflow-datasets) and the train/valid/test split.

`load_split` is the entry point the trainer and the benchmarks use: it
resolves the data directory (`--data_dir`, else `JAXACT_DATA_DIR`), loads
MNIST through tensorflow-datasets (`jaxact.data.tfds_builder.load_mnist`: the four
IDX files of that directory, read by `jaxact.data.idx`, or a checked download of
the official ones, prepared once into a cache), and draws the split (`make_split`,
PROTOCOL section 1); `make_pool` and `RunData` give each member its own split.
It also normalises the pixels.

Data problems raise `idx.DataError`, one paragraph naming the file, the problem and
the fix. This module does I/O only; it imports neither JAX nor tensorflow_datasets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from jaxact.data import tfds_builder as mnist_tfds
from jaxact.data.idx import FIX_DIR, IMAGE_HW, data_error


TRAIN_SIZE = 2000    # PROTOCOL section 1: the training and validation examples drawn
VALID_SIZE = 3000    # from MNIST's training set; its test set is used whole
DATA_DIR_ENV = "JAXACT_DATA_DIR"
# How members draw their train / valid split (`load_run_data`): each its own, seeded by its
# seed, or one for all, seeded by the split seed.
SPLITS = ("per_seed", "fixed")


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
  if images.ndim != 4 or images.shape[1:] != (*IMAGE_HW, 1):
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


def draw_split_indices(pool_size: int, split_seed: int, n_train: int = TRAIN_SIZE,
                       n_valid: int = VALID_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """The train and valid indices into a pool of `pool_size` examples (PROTOCOL section 1).

  `np.random.default_rng(split_seed).choice(pool_size, n_train + n_valid,
  replace=False)`; the first n_train indices are train, the rest valid.

  Returns:
    int64 (n_train,), int64 (n_valid,).
  """
  indices = np.random.default_rng(split_seed).choice(
      pool_size, n_train + n_valid, replace=False).astype(np.int64)
  return indices[:n_train], indices[n_train:]


def split_fingerprint(mnist: dict[str, tuple[np.ndarray, np.ndarray]],
                      train_indices: np.ndarray, valid_indices: np.ndarray) -> str:
  """16 hex chars: a SHA-256 over the pool size, the indices, the selected labels and
  pixels and the test labels and pixels. Two splits with the same fingerprint hold the
  same examples in the same order."""
  pool_images, pool_labels = mnist["train"]
  test_images, test_labels = mnist["test"]
  indices = np.concatenate([train_indices, valid_indices])
  h = hashlib.sha256(b"jaxact-split-v1")
  h.update(repr((int(pool_labels.shape[0]), len(train_indices), len(valid_indices))).encode())
  for array in (indices, pool_labels[indices], pool_images[indices],
                test_labels, test_images):
    h.update(np.ascontiguousarray(array).data)
  return h.hexdigest()[:16]


def _check_pool_size(pool_size: int, n: int, n_train: int, n_valid: int, source: str) -> None:
  if pool_size < n:
    raise data_error(
        source or "the MNIST training set",
        f"holds {pool_size} training examples, fewer than the {n_train} "
        f"train + {n_valid} valid = {n} the split draws",
        "use a directory whose training files hold more examples (the full "
        "MNIST has 60,000), or " + FIX_DIR)


def make_split(
    mnist: dict[str, tuple[np.ndarray, np.ndarray]],
    split_seed: int,
    n_train: int = TRAIN_SIZE,
    n_valid: int = VALID_SIZE,
    source: str = "",
) -> Split:
  """Draws the train/valid split from mnist['train']; test is mnist['test'].

  The indices are `draw_split_indices(pool size, split_seed)`; the fingerprint
  is `split_fingerprint`: two splits with the same fingerprint hold the same
  examples in the same order, whatever `source` says.

  Args:
    mnist: as returned by `mnist_tfds.load_mnist` / `read_mnist_idx_dir`.
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
  _check_pool_size(pool_size, n_train + n_valid, n_train, n_valid, source)
  train_indices, valid_indices = draw_split_indices(pool_size, split_seed, n_train, n_valid)

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
      fingerprint=split_fingerprint(mnist, train_indices, valid_indices),
  )


@dataclasses.dataclass(frozen=True, eq=False)
class Pool:
  """MNIST's whole training pool and test set, from which each member draws its own split.

  The data of `--split=per_seed`: the pool is held once (on the device, by
  the engine), and a member with split seed s trains on the rows
  `split_rows(s)[0]` and selects its epoch on `split_rows(s)[1]`: the same
  examples as `make_split(mnist, s)`. Arrays are read-only.

  Attributes:
    x: float32 (P, 28, 28, 1) the training pool's images in [-1, 1].
    y: int32 (P,) their digit labels.
    x_test: float32 (N_test, 28, 28, 1), the full test set.
    y_test: int32 (N_test,).
    source: the data directory, or where it was downloaded from.
    mnist: the raw arrays (`mnist_tfds.load_mnist`'s format), for fingerprints.
    n_train, n_valid: the size of each member's train and valid sets.
  """
  x: np.ndarray
  y: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  source: str
  mnist: dict[str, tuple[np.ndarray, np.ndarray]]
  n_train: int = TRAIN_SIZE
  n_valid: int = VALID_SIZE

  @property
  def size(self) -> int:
    return int(self.y.shape[0])

  def split_rows(self, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 (n_train,), int32 (n_valid,): the rows of the pool of split seed `split_seed`."""
    train, valid = draw_split_indices(self.size, split_seed, self.n_train, self.n_valid)
    return train.astype(np.int32), valid.astype(np.int32)

  def fingerprint(self, split_seeds) -> str:
    """16 hex chars identifying the splits of `split_seeds` (in order) on this pool.

    One seed gives `make_split`'s fingerprint of that seed.
    """
    prints = [split_fingerprint(self.mnist, *draw_split_indices(
        self.size, s, self.n_train, self.n_valid)) for s in split_seeds]
    if len(prints) == 1:
      return prints[0]
    return hashlib.sha256(("jaxact-splits-v1:" + ",".join(prints)).encode()).hexdigest()[:16]


def make_pool(mnist: dict[str, tuple[np.ndarray, np.ndarray]], source: str = "",
              n_train: int = TRAIN_SIZE, n_valid: int = VALID_SIZE) -> Pool:
  """The `Pool` of `mnist` (DataError if it cannot hold one split of n_train + n_valid)."""
  pool_images, pool_labels = mnist["train"]
  test_images, test_labels = mnist["test"]
  _check_pool_size(int(pool_labels.shape[0]), n_train + n_valid, n_train, n_valid, source)
  return Pool(x=_readonly(normalise_pixels(pool_images)),
              y=_readonly(np.asarray(pool_labels, np.int32)),
              x_test=_readonly(normalise_pixels(test_images)),
              y_test=_readonly(np.asarray(test_labels, np.int32)),
              source=source, mnist=mnist, n_train=n_train, n_valid=n_valid)


# ---------------------------------------------------------------------------
# Loading the split.


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


def load_mnist(data_dir: str | None, tfds_dir: str | None = None
               ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
  """resolve_data_dir + mnist_tfds.load_mnist: (the raw arrays, where they came from).

  Args:
    data_dir: the --data_dir flag value (None/'' falls back to
      JAXACT_DATA_DIR, then to the tfds download path).
    tfds_dir: root of prepared tfds datasets (see `mnist_tfds.load_mnist`).

  Returns:
    The arrays (`mnist_tfds.load_mnist`'s format) and their source: the absolute
    data directory, or the download URL.
  """
  resolved = resolve_data_dir(data_dir)
  mnist = mnist_tfds.load_mnist(resolved, tfds_dir)
  source = (os.path.abspath(os.path.expanduser(resolved)) if resolved
            else f"downloaded through tensorflow-datasets from {mnist_tfds.mnist_url()}")
  return mnist, source


def load_split(
    data_dir: str | None,
    split_seed: int,
    tfds_dir: str | None = None,
) -> Split:
  """`load_mnist` + `make_split` (2,000 train, 3,000 valid): the data of `--split=fixed`.

  Args:
    data_dir: the --data_dir flag value (None/'' falls back to
      JAXACT_DATA_DIR, then to the tfds download path).
    split_seed: seed of the train/valid draw.
    tfds_dir: root of prepared tfds datasets (see `mnist_tfds.load_mnist`).

  Returns:
    The Split; its source is the absolute data directory, or the download URL.
  """
  mnist, source = load_mnist(data_dir, tfds_dir)
  return make_split(mnist, split_seed, source=source)


def load_pool(data_dir: str | None, tfds_dir: str | None = None) -> Pool:
  """`load_mnist` + `make_pool`: the data of `--split=per_seed`."""
  mnist, source = load_mnist(data_dir, tfds_dir)
  return make_pool(mnist, source=source)


@dataclasses.dataclass(frozen=True, eq=False)
class RunData:
  """The data of one run: MNIST's training pool, from which each member takes its split.

  `--split=per_seed`: member seed s trains on the split of split seed s.
  `--split=fixed`: every member trains on the split of `split_seed`. Both are
  computed the same way (the pool on the device, each member's rows of it in
  its state), so a member of a per-seed grid equals, bit for bit in "loop"
  mode, the fixed run of its split alone.

  Attributes:
    pool: the pool and the test set.
    split: "per_seed" or "fixed".
    split_seed: "fixed": the one split seed.
    seeds: the members' seeds, in order.
  """
  pool: Pool
  split: str
  split_seed: int
  seeds: tuple[int, ...]

  def split_seed_of(self, seed: int) -> int:
    """The split seed of the member of seed `seed`."""
    return int(seed) if self.split == "per_seed" else self.split_seed

  def member_splits(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, valid rows) of the pool of the member of seed `seed`."""
    return self.pool.split_rows(self.split_seed_of(seed))

  @property
  def split_seeds(self) -> tuple[int, ...]:
    return tuple(dict.fromkeys(self.split_seed_of(s) for s in self.seeds))

  @property
  def fingerprint(self) -> str:
    """16 hex chars identifying every member's split (one split: `make_split`'s fingerprint)."""
    return self.pool.fingerprint(self.split_seeds)

  @property
  def valid_labels(self) -> np.ndarray:
    """The labels of the valid sets: the one split's, or (per_seed) the whole pool's."""
    if self.split == "per_seed":
      return self.pool.y
    return self.pool.y[self.pool.split_rows(self.split_seed)[1]]

  @property
  def test_labels(self) -> np.ndarray:
    return self.pool.y_test

  def describe(self) -> str:
    """One line for the log: sizes, source, split seeds."""
    p = self.pool
    which = ("each member's split seed is its seed" if self.split == "per_seed"
             else f"one split for all, split seed {self.split_seed}")
    return (f"{p.n_train} train / {p.n_valid} valid per member from a pool of {p.size} "
            f"({p.source}), {which}; {len(p.y_test)} test")


def load_run_data(data_dir: str | None, tfds_dir: str | None, split: str, split_seed: int,
                  seeds) -> RunData:
  """The `RunData` of `--split` ("per_seed" or "fixed") for members of seeds `seeds`.

  Args:
    data_dir, tfds_dir: as `load_mnist`.
    split: "per_seed" or "fixed".
    split_seed: the shared split's seed ("fixed").
    seeds: the members' seeds.
  """
  if split not in ("per_seed", "fixed"):
    raise ValueError(f"unknown split {split!r}: choose per_seed or fixed")
  return RunData(pool=load_pool(data_dir, tfds_dir), split=split, split_seed=int(split_seed),
                 seeds=tuple(int(s) for s in seeds))
