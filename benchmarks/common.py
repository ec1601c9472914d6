"""Helpers shared by the benchmarks: data, analytic FLOPs, memory probes, statistics.

Nothing here imports torch, and nothing here initialises a JAX backend at
import time (on a GPU the parent benchmark process must not grab the device:
every measurement runs in its own subprocess).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Sequence

import numpy as np

IMAGE_SHAPE = (28, 28, 1)

# PROTOCOL section 2. A conv's MACs are H_out x W_out x Cout x (3 x 3 x Cin); a dense
# layer's in_features x out_features. Max-pools, biases and activations are left out
# (well under 1% of the work).


def layer_macs(num_outputs: int = 10) -> list[tuple[str, int]]:
  """Multiply-accumulates of one forward pass of one example, per layer."""
  return [
      ("conv1 3x3 1->32, 28x28 out", 28 * 28 * 32 * 9 * 1),
      ("conv2 3x3 32->64, 12x12 out", 12 * 12 * 64 * 9 * 32),
      ("conv3 3x3 64->64, 4x4 out", 4 * 4 * 64 * 9 * 64),
      ("dense 1024->64", 1024 * 64),
      (f"dense 64->{num_outputs}", 64 * num_outputs),
  ]


@dataclasses.dataclass(frozen=True)
class ModelEpochFlops:
  """FLOPs of one model-epoch (2,000 training examples + the 3,000-example valid pass).

  Counting: forward = 2 x MACs; a training example costs forward + backward
  with backward ~ 2 x forward (input and weight gradients), i.e. 3 x forward;
  a valid example costs one forward. Only the useful examples are counted
  (jaxact pads the last batch of 16 to 32; that padding is not counted).
  """
  forward_per_example: float
  train: float
  valid: float

  @property
  def total(self) -> float:
    return self.train + self.valid


def model_epoch_flops(num_outputs: int = 10, n_train: int = 2000,
                      n_valid: int = 3000) -> ModelEpochFlops:
  fwd = 2.0 * sum(m for _, m in layer_macs(num_outputs))
  return ModelEpochFlops(forward_per_example=fwd, train=3.0 * fwd * n_train,
                         valid=fwd * n_valid)


# ---------------------------------------------------------------------------
# Data.


@dataclasses.dataclass(frozen=True)
class Arrays:
  """NHWC float32 images in [-1, 1] and digit labels, as jaxact.data.Split holds them."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_valid: np.ndarray
  y_valid: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  source: str


def synthetic_arrays(n_train: int = 2000, n_valid: int = 3000, n_test: int = 256,
                     seed: int = 0) -> Arrays:
  """Random images and labels of the real shapes (speed does not depend on the values)."""
  rng = np.random.default_rng(seed)

  def make(n):
    x = rng.uniform(-1.0, 1.0, (n,) + IMAGE_SHAPE).astype(np.float32)
    return x, rng.integers(0, 10, n).astype(np.int32)

  (xtr, ytr), (xv, yv), (xte, yte) = make(n_train), make(n_valid), make(n_test)
  return Arrays(xtr, ytr, xv, yv, xte, yte, source="synthetic")


def load_arrays(data_dir: str | None, split_seed: int = 0, synthetic: bool = False,
                n_test: int | None = None) -> Arrays:
  """The shared split (jaxact.data.load_split), or synthetic arrays of the same shapes.

  n_test: keep only the first n_test test examples (the test set is not part
  of a model-epoch; the throughput benchmark keeps it small).
  """
  if synthetic:
    return synthetic_arrays(n_test=n_test or 256)
  from jaxact.data import mnist as data_lib  # pylint: disable=g-import-not-at-top
  split = data_lib.load_split(data_dir, split_seed)
  k = slice(None) if n_test is None else slice(0, n_test)
  return Arrays(np.asarray(split.x_train), np.asarray(split.y_train),
                np.asarray(split.x_valid), np.asarray(split.y_valid),
                np.asarray(split.x_test[k]), np.asarray(split.y_test[k]),
                source=f"{split.source} (split seed {split_seed}, {split.fingerprint})")


# ---------------------------------------------------------------------------
# Memory.


def _status_kib(field: str) -> int | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def rss_bytes() -> int | None:
  """Current resident set size (Linux), or None."""
  kib = _status_kib("VmRSS")
  return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
  """Peak resident set size since the process started or since reset_peak_rss()."""
  kib = _status_kib("VmHWM")
  if kib is not None:
    return kib * 1024
  try:
    import resource  # pylint: disable=g-import-not-at-top
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  except (ImportError, OSError):
    return None


def reset_peak_rss() -> bool:
  """Resets VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def device_memory_stats() -> dict | None:
  """jax's memory_stats() of the first device (GPU/TPU), or None (CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return stats or None


# ---------------------------------------------------------------------------
# Statistics and formatting.


def time_calls(fn, *args, repeats: int) -> float:
  """Median wall seconds of `fn(*args)` over `repeats` calls after one warm-up call.

  Waits for every call's result (`jax.block_until_ready`), so asynchronous
  dispatch does not hide the work.
  """
  import jax  # pylint: disable=g-import-not-at-top  (no backend at import time)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return median(times)


def median(xs: Sequence[float]) -> float:
  xs = [x for x in xs if x is not None]
  return statistics.median(xs) if xs else float("nan")


def fmt(x: float | None, spec: str = ".3g") -> str:
  if x is None or (isinstance(x, float) and np.isnan(x)):
    return "-"
  return format(x, spec)


def mib(n: float | None) -> str:
  return "-" if n is None else f"{n / 2**20:.0f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def cpu_count() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1
