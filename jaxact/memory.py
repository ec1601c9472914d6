"""Will a run fit in memory? An estimate made before anything is built, and a clear refusal.

A task's program holds every member's training state at once (parameters,
best parameters and the optimizer's moments: about 2 MB per member of the
protocol's network), the task's data (about 60 MB) and, per training step,
each member's gradients, updates and activations: all members at once in the
"vmap" member mode, one member at a time in "loop" mode. The host keeps a copy
of the state for checkpoints and the per-epoch histories. Without a check, a
run such as `--seeds=2000000000` is killed by the kernel with no message.

`check_fits` estimates the largest task's need from the members it will
train (cells x seeds: the member list itself is never built for it) and
refuses a run that needs more than the memory available, naming how much it
needs and how many seeds per cell fit. The estimate is deliberately simple
(a byte count of the arrays, times SAFETY for XLA's temporaries); it is
there to stop runs that cannot fit, not to pack a machine to the last byte.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import numpy as np

from jaxact import model as model_lib
from jaxact import tasks as tasks_lib

SAFETY = 1.5                       # XLA's temporaries and fragmentation, on top of the arrays
FLOAT = 4                          # bytes of a float32
# Activations per example of the conv trunk (forward): each conv's output and its im2col
# patches (9 shifted copies of its input), 28x28x1 -> 32 -> 64 -> 64 channels, pooled by 2.
_TRUNK_ACTIVATIONS = (28 * 28 * (32 + 9)) + (14 * 14 * (64 + 9 * 32)) + (7 * 7 * (64 + 9 * 64))
_HISTORY_FLOATS_PER_EPOCH = 64     # per member: losses, metrics and diagnostics of one epoch
GIB = 2 ** 30


class DoesNotFit(ValueError):
  """The run needs more memory than the machine has; str() names both and the fix."""


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes a task needs: `total` = SAFETY x (state + step + data + host copies)."""
  members: int
  per_member: int          # state and step working set of one member, bytes
  shared: int              # data and evaluation buffers, bytes
  total: int


@functools.lru_cache(maxsize=None)
def parameters(num_outputs: int, depth: int) -> int:
  """Number of parameters of the network (model.CNN) with `depth` dense hidden layers."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  abstract = nnx.eval_shape(lambda: model_lib.CNN(num_outputs, dense_layers=depth,
                                                  rngs=nnx.Rngs(0)))
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(nnx.state(abstract)))


def estimate(task: str, members: int, *, depth: int = 1, batch_size: int = 32,
             max_epochs: int = 100, member_mode: str = "loop", optimizer: str = "adamw",
             eval_rows: int = 4096, n_examples: int = 15_000) -> Estimate:
  """The memory one task of `members` members needs, in bytes (see the module docstring).

  Args:
    task: the task's name (its number of outputs).
    members: cells x seeds of the task.
    depth: the deepest network's dense hidden layers.
    batch_size, max_epochs: the run's.
    member_mode: "loop" (one member's step at a time) or "vmap" (all at once).
    optimizer: "adamw" (two moments per parameter) or "sgd" (one).
    eval_rows: (member x example) rows of one evaluation chunk.
    n_examples: train + valid + test examples held on the device.
  """
  p = parameters(tasks_lib.get_task(task).num_outputs, depth) * FLOAT
  moments = 2 if optimizer == "adamw" else 1
  state = p * (2 + moments)                      # params, best params, moments
  host = state + max_epochs * _HISTORY_FLOATS_PER_EPOCH * FLOAT   # snapshot copy, histories
  step = 3 * p + 2 * batch_size * _TRUNK_ACTIVATIONS * FLOAT      # grads, updates, new params
  per_member = state + host + (step if member_mode == "vmap" else 0)
  shared = (n_examples * 28 * 28 * FLOAT + eval_rows * _TRUNK_ACTIVATIONS * FLOAT
            + (step if member_mode != "vmap" else 0))
  total = int(SAFETY * (members * per_member + shared))
  return Estimate(members=members, per_member=per_member, shared=shared, total=total)


def available_bytes() -> tuple[int, str]:
  """(bytes available, what they are) on the default device: an accelerator's free memory
  (its memory_stats), else the host's MemAvailable (Linux) or its physical memory."""
  device = jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
      free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
      return free, f"free memory of one {device.device_kind}"
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024, "available host memory"
  except OSError:
    pass
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host memory"
  except (ValueError, OSError, AttributeError):
    return 2 ** 62, "host memory (unknown)"


def check_fits(cells_per_task: dict[str, int], seeds: int, devices: int = 1,
               available: tuple[int, str] | None = None, **kwargs) -> Estimate:
  """The largest task's Estimate; raises DoesNotFit when it needs more than is available.

  Args:
    cells_per_task: task -> number of cells the run trains in it.
    seeds: seeds per cell.
    devices: the members are sharded over this many devices (each holds its share).
    available: (bytes, description); default `available_bytes()`.
    **kwargs: `estimate`'s keyword arguments (depth, batch_size, max_epochs, ...).
  """
  avail, what = available if available is not None else available_bytes()
  worst = None
  for task, cells in cells_per_task.items():
    members = cells * seeds
    e = estimate(task, -(-members // devices), **kwargs)
    if worst is None or e.total > worst[1].total:
      worst = (task, e, cells)
  if worst is None:
    raise ValueError("no task to check")
  task, e, cells = worst
  if e.total <= avail:
    return e
  room = (avail / SAFETY - e.shared) / e.per_member
  fit = max(0, math.floor(room * devices / cells))
  raise DoesNotFit(
      f"this run does not fit in memory: task {task} trains {cells} cells x {seeds} seeds = "
      f"{cells * seeds:,} members in one program, which needs about {_size(e.total)} "
      f"({_size(e.per_member)} per member{f' on each of {devices} devices' if devices > 1 else ''}"
      f", {SAFETY}x for temporaries) and the {what} is {_size(avail)}. "
      + (f"At most {fit:,} seeds per cell fit: lower --seeds" if fit else
         "Not even one seed per cell fits: train fewer cells (--task, --head, --loss)")
      + ", or run on a machine with more memory.")


def _size(n: float) -> str:
  return f"{n / GIB:,.1f} GiB" if n >= GIB / 10 else f"{n / 2 ** 20:,.1f} MiB"
