"""Will a run fit in memory? An estimate from the compiled program, and a clear refusal.

A task's program holds every member's training state at once (parameters,
best parameters, the optimizer's moments), the task's data and, per training
step, the working set of the members it computes at once: all of them in the
"vmap" member mode, one at a time in "loop" mode. The host keeps its own copy
of the data, a copy of the state for checkpoints and the per-epoch histories.
Without a check, a run such as `--seeds=2000000000` is killed by the kernel
with no message, and one that would fit is not worth refusing.

How the need is estimated (`estimate`):
- the device: the task's epoch program is lowered and compiled (no step is
  run) for SMALL_MEMBERS = (4, 8) members per device, and XLA's memory
  analysis of each executable gives its peak: arguments + outputs - donated
  (aliased) buffers + temporaries. The peak is linear in the members from 3
  or 4 on (measured on the CPU in both member modes; below, XLA shares some
  buffers), so the two points give a line that is extrapolated to the run's
  members per device. The compiled programs carry the run's network (its
  deepest cell, with batch norm where any cell has it) and at most two cells,
  so every member's state has the run's shapes and the compilation costs
  seconds, not the minutes of a program with many branches. The line is
  cached per static description of the program (`program_need`), and the
  small executables land in jax's persistent compilation cache like any other;
- the host: its copy of the data, two copies of the stacked state (a
  snapshot, and the checkpointer's while it writes it asynchronously during
  the next epoch) and the histories, counted from the shapes. The memory the
  compiler and the runtime keep is left out: compiling for the estimate
  takes it before the available memory is read;
- on a CPU the devices are the host's memory, so both add up and are
  compared with the host's available memory; on an accelerator the device
  need is compared with one device's free memory (`memory_stats`) and the
  host's with the host's.

`check_fits` first screens with `byte_count`, a rough count computed from
the layer shapes (0.8x to 2.4x the measured peak on the CPU): a run that
needs at most SCREEN of the memory by it is let through without compiling
anything (the usual case, and the test suite's).
Only a run near or over the limit pays for the two compilations, and only a
run whose compiled estimate does not fit is refused, with the number of seeds
per cell that fit. benchmarks/memory_estimate.py compares the estimate with
the peak resident memory of runs on the CPU (results_cpu_2core_memory_estimate.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Sequence

import jax
import numpy as np

from jaxact.data import mnist as data_lib
from jaxact.model import network as model_lib
from jaxact.data import tasks as tasks_lib
from jaxact.engine import engine as engine_lib
from jaxact.engine import program as program_lib

SMALL_MEMBERS = (4, 8)             # members per device of the two programs compiled
SCREEN = 0.5                       # byte_count at most this share of the memory: no compilation
TEST_SIZE = 10_000                 # MNIST's test set, used whole
FLOAT = 4                          # bytes of a float32
GIB = 2 ** 30
MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
# byte_count's margin for XLA's temporaries on top of the arrays it counts.
_ROUGH_SAFETY = 1.5
# Activations per example of the conv trunk (forward): each conv's output and its im2col
# patches (9 shifted copies of its input), 28x28x1 -> 32 -> 64 -> 64 channels, pooled by 2.
_TRUNK_ACTIVATIONS = (28 * 28 * (32 + 9)) + (14 * 14 * (64 + 9 * 32)) + (7 * 7 * (64 + 9 * 64))
_HISTORY_FLOATS_PER_EPOCH = 64     # byte_count: per member, losses, metrics and diagnostics


class DoesNotFit(ValueError):
  """The run needs more memory than the machine has; str() names both and the fix."""


@dataclasses.dataclass(frozen=True)
class Need:
  """Bytes of one memory as a line in the members: `shared + per_member * members`."""
  shared: int
  per_member: int

  def at(self, members: int) -> int:
    return self.shared + self.per_member * members

  def most(self, available: int) -> int:
    """The most members whose need is at most `available` bytes (0 if none)."""
    if self.per_member <= 0:
      return 0 if self.shared > available else 2 ** 62
    return max(0, math.floor((available - self.shared) / self.per_member))

  def __add__(self, other: "Need") -> "Need":
    return Need(self.shared + other.shared, self.per_member + other.per_member)


@dataclasses.dataclass(frozen=True)
class Estimate:
  """What one task of `members` members per device needs, in bytes.

  Attributes:
    members: members per device.
    device: one device's need: the compiled epoch program's peak, extrapolated
      (`program_need`), or byte_count's rough line.
    host: the host's copies: the data, two copies of the state, the histories.
    shared_memory: the devices are the host's memory (CPU): `total` adds both.
    source: "compiled program" or "byte count".
    compile_s: seconds spent compiling for this estimate in this process (0 if cached).
  """
  members: int
  device: Need
  host: Need
  shared_memory: bool
  source: str
  compile_s: float = 0.0

  @property
  def per_member(self) -> int:
    """Bytes per member in the memory checked first (the device's, plus the host's on a CPU)."""
    return self.first.per_member

  @property
  def total(self) -> int:
    """Bytes of the memory checked first (the device's, plus the host's on a CPU)."""
    return self.first.at(self.members)

  @property
  def first(self) -> Need:
    return self.device + self.host if self.shared_memory else self.device


# ---------------------------------------------------------------------------
# The rough screen: a byte count from the layer shapes.


@functools.lru_cache(maxsize=None)
def parameters(num_outputs: int, depth: int) -> int:
  """Number of parameters of the network (model.CNN) with `depth` dense hidden layers."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  abstract = nnx.eval_shape(lambda: model_lib.CNN(num_outputs, dense_layers=depth,
                                                  rngs=nnx.Rngs(0)))
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(nnx.state(abstract)))


def byte_count(task: str, members: int, *, depth: int = 1, batch_size: int = 32,
               max_epochs: int = 100, member_mode: str = "loop", optimizer: str = "adamw",
               eval_rows: int = 4096, n_examples: int | None = None) -> Estimate:
  """A rough count of what one task of `members` members per device needs, in bytes.

  The arrays of the state (params, best params, the optimizer's moments), a
  host copy and the histories, the data, and a step's gradients, updates and
  activations (every member's in "vmap" mode), times 1.5 for temporaries;
  all in one memory. It was 0.79-0.85 times the measured peak on the CPU in
  "loop" mode and 2.1-2.4 times it in "vmap" mode
  (benchmarks/results_cpu_2core_memory_estimate.md), and 37.5 against the
  15-18 MiB per member measured on an H100: `check_fits` uses it only to let
  runs that need at most SCREEN (half) of the memory by it through without
  compiling.
  """
  if n_examples is None:
    n_examples = POOL_SIZE + TEST_SIZE
  p = parameters(tasks_lib.get_task(task).num_outputs, depth) * FLOAT
  moments = 2 if optimizer == "adamw" else 1
  state = p * (2 + moments)
  host = state + max_epochs * _HISTORY_FLOATS_PER_EPOCH * FLOAT
  step = 3 * p + 2 * batch_size * _TRUNK_ACTIVATIONS * FLOAT
  per_member = state + host + (step if member_mode == "vmap" else 0)
  shared = (n_examples * 28 * 28 * FLOAT + eval_rows * _TRUNK_ACTIVATIONS * FLOAT
            + (step if member_mode != "vmap" else 0))
  need = Need(int(_ROUGH_SAFETY * shared), int(_ROUGH_SAFETY * per_member))
  return Estimate(members=members, device=need, host=Need(0, 0), shared_memory=False,
                  source="byte count")


# ---------------------------------------------------------------------------
# The estimate from the compiled program.


def representative_cells(cells: Sequence) -> tuple:
  """At most two of `cells` whose program's state has the shapes of all of theirs.

  The program's network carries the most dense layers of any cell, and batch
  norm if any cell has it (program.Program); every member's state has that
  network's shapes. The deepest cell (one with batch norm first) does the most
  work per member; a cell with batch norm is added if that one has none.
  """
  cells = list(cells)
  if not cells:
    raise ValueError("no cells")
  deepest = max(cells, key=lambda c: (c.depth, c.batch_norm))
  out = [deepest]
  if not deepest.batch_norm:
    out += [c for c in cells if c.batch_norm][:1]
  return tuple(out)


# The training pool the estimate assumes: MNIST's whole training set (a run on fewer
# examples, like the offline copy's 19,690, needs less).
POOL_SIZE = 60000


def abstract_task_data(task: str, *sizes: int):
  """ShapeDtypeStructs of a task's data: `program.TaskData.from_pool` for sizes
  (pool, test), the data of every run (each member holds its rows of the pool), or
  `program.TaskData.from_split` for sizes (train, valid, test), one split shared by
  members without rows (the benchmarks' synthetic splits)."""
  sizes = sizes or (POOL_SIZE, TEST_SIZE)
  c = tasks_lib.get_task(task).num_outputs

  def images(n):
    return jax.ShapeDtypeStruct((n, 28, 28, 1), np.float32)
  def targets(n):
    return jax.ShapeDtypeStruct((n, c), np.float32)
  if len(sizes) == 2:
    pool, n_test = sizes
    n_train = n_valid = pool
  else:
    n_train, n_valid, n_test = sizes
  return program_lib.TaskData(x_train=images(n_train), t_train=targets(n_train),
                              x_valid=images(n_valid), t_valid=targets(n_valid),
                              x_test=images(n_test), t_test=targets(n_test),
                              target_mean=jax.ShapeDtypeStruct((), np.float32, weak_type=True),
                              target_std=jax.ShapeDtypeStruct((), np.float32, weak_type=True))


def _shape_splits(seed: int, rows: tuple[int, int] = (data_lib.TRAIN_SIZE, data_lib.VALID_SIZE)
                  ) -> tuple[np.ndarray, np.ndarray]:
  """A member's rows of the pool, for shapes only (every member's rows have these sizes)."""
  del seed
  return tuple(np.zeros((n,), np.int32) for n in rows)


def _nbytes(tree) -> int:
  """Bytes of a tree of arrays or ShapeDtypeStructs (PRNG keys: their key data's)."""
  total = 0
  for a in jax.tree_util.tree_leaves(tree):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a = jax.eval_shape(jax.random.key_data, a)
    total += int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
  return total


def compiled_peak(engine, data) -> int:
  """Peak bytes of one device while `engine.epoch_fn` runs, from XLA's memory analysis.

  `data`: the task's data or its ShapeDtypeStructs (`abstract_task_data`).
  Arguments + outputs - aliased (donated) buffers + temporaries of the
  compiled executable (per device with several); nothing is run.
  """
  mesh = engine.mesh
  stacked = len(engine.stacked_members)
  template = engine.state_template()
  member, replicated = None, None
  if mesh.size > 1:
    member = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("member"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def stack(a):
    if not a.shape:
      return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated)
    return jax.ShapeDtypeStruct((stacked,) + a.shape[1:], a.dtype, sharding=member)
  state = program_lib.TrainState.from_dict(jax.tree_util.tree_map(stack, template))
  def replicate(a):
    if isinstance(a, (int, float)):   # target_mean / target_std: weakly typed scalars
      return jax.ShapeDtypeStruct((), np.float32, weak_type=True, sharding=replicated)
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated,
                                weak_type=getattr(a, "weak_type", False))
  data = jax.tree_util.tree_map(replicate, data)
  stats = engine.epoch_fn.lower(state, data).compile().memory_analysis()
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


@functools.lru_cache(maxsize=None)
def program_need(task: str, cells: tuple, config, execution,
                 data_sizes: tuple[int, ...] = (POOL_SIZE, TEST_SIZE),
                 small: tuple[int, int] = SMALL_MEMBERS,
                 rows: tuple[int, int] = (data_lib.TRAIN_SIZE, data_lib.VALID_SIZE),
                 ) -> tuple[Need, Need, float]:
  """(device, host, compile seconds): one task's needs as lines in members per device.

  The device line goes through the compiled peaks (`compiled_peak`) of the
  task's epoch program for `small` members per device, built from `cells`
  with consecutive seeds. The host line counts the data's host copy, two
  copies of the stacked state (a snapshot, and the checkpointer's while it
  writes it during the next epoch) and the histories. The compiler's and
  the runtime's own memory is not counted: the compilations for the estimate
  take it from what `check_fits` then finds available.
  `data_sizes`: (pool, test), the runs' data (each member its rows of the pool; default
  MNIST's whole training pool, counted once in each line although the program takes it as
  both its train and valid arguments), or (train, valid, test) for one shared split.
  `rows`: (train, valid) rows of the pool per member (the pool's data sizes only).
  Cached per (task, cells, configs, sizes, small, rows): the program's static
  description (pass `representative_cells`' cells so that runs of the same
  network share it); the device count is the process's.
  """
  data = abstract_task_data(task, *data_sizes)
  devices = jax.device_count()
  start = time.perf_counter()
  peaks, engine = [], None
  for m in small:
    n = m * devices
    members = [(cells[i % len(cells)], i // len(cells)) for i in range(n)]
    engine = engine_lib.Engine(task, members, config, execution, progress=lambda _: None,
                               splits=(functools.partial(_shape_splits, rows=rows)
                                       if len(data_sizes) == 2 else None))
    peaks.append(compiled_peak(engine, data))
  compile_s = time.perf_counter() - start
  (m1, m2), (p1, p2) = small, peaks
  slope = max(0, math.ceil((p2 - p1) / (m2 - m1)))
  # The pool's valid arrays are its train arrays (`TaskData.from_pool`): one buffer, which
  # the memory analysis counts as two arguments.
  same = _nbytes((data.x_valid, data.t_valid)) if len(data_sizes) == 2 else 0
  device = Need(shared=p1 - slope * m1 - same, per_member=slope)
  state_per_member = _nbytes(engine.state_template()) // (small[1] * devices)
  history = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize
                for shape, dtype in engine.diagnostic_shapes().values())
  history += 4 + 4 + 1 + 8          # train loss, valid metric, trained, non-finite count
  host = Need(shared=_nbytes(data) - same,
              per_member=2 * state_per_member + config.max_epochs * history)
  return device, host, compile_s


def estimate(task: str, cells: Sequence, members: int, config, execution) -> Estimate:
  """The compiled estimate for `members` members per device of `cells` of `task`.

  `config`, `execution`: the run's program.EngineConfig and ExecutionConfig.
  """
  before = program_need.cache_info().hits
  device, host, compile_s = program_need(task, representative_cells(cells), config, execution)
  cached = program_need.cache_info().hits > before
  return Estimate(members=members, device=device, host=host,
                  shared_memory=jax.devices()[0].platform == "cpu",
                  source="compiled program", compile_s=0.0 if cached else compile_s)


# ---------------------------------------------------------------------------
# What is available, and the check.


def host_available_bytes() -> tuple[int, str]:
  """(bytes, what they are): the host's MemAvailable (Linux), else its physical memory."""
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


def available_bytes() -> tuple[int, str]:
  """(bytes available, what they are) on the default device: an accelerator's free memory
  (its memory_stats: what JAX may use of it, less what is in use), else the host's."""
  device = jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
      free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
      return free, f"free memory JAX may use on one {device.device_kind}"
  return host_available_bytes()


def check_fits(cells_per_task: dict[str, Sequence], seeds: int, config, execution, *,
               member_mode: str, devices: int = 1,
               available: tuple[int, str] | None = None,
               host_available: tuple[int, str] | None = None) -> Estimate:
  """The largest task's Estimate; raises DoesNotFit when it needs more than is available.

  Args:
    cells_per_task: task -> the cells (studies.Cell) the run trains in it.
    seeds: seeds per cell.
    config, execution: the run's program.EngineConfig and ExecutionConfig.
    member_mode: the resolved member mode, "loop" or "vmap".
    devices: the members are sharded over this many devices (each holds its share).
    available: (bytes, description) of one device; default `available_bytes()`.
    host_available: the host's, for an accelerator's host copies; default
      `host_available_bytes()`. Unused on a CPU, whose device memory is the host's.
  """
  avail, what = available if available is not None else available_bytes()
  platform = jax.devices()[0].platform
  eval_rows = execution.eval_examples or (32 if platform == "cpu" else 4096)
  rough = {}
  for task, cells in cells_per_task.items():
    rough[task] = byte_count(task, -(-len(cells) * seeds // devices),
                             depth=max(c.depth for c in cells), batch_size=config.batch_size,
                             max_epochs=config.max_epochs, member_mode=member_mode,
                             optimizer=config.optimizer, eval_rows=eval_rows)
  worst = None
  # The largest first: a run that cannot fit is refused after compiling for one task only.
  for task in sorted(rough, key=lambda t: -rough[t].total):
    cells = list(cells_per_task[task])
    members = rough[task].members
    if rough[task].total <= SCREEN * avail:
      e = rough[task]
    else:
      e = estimate(task, cells, members, config, execution)
      if available is None and e.compile_s:   # what compiling kept is in use now
        avail, what = available_bytes()
      if e.total > avail:
        raise _refusal(task, len(cells), seeds, devices, e, e.first, avail, what)
      if not e.shared_memory:
        host, host_what = (host_available if host_available is not None
                           else host_available_bytes())
        # The host holds every device's members.
        per_host = Need(e.host.shared, e.host.per_member * devices)
        if per_host.at(members) > host:
          raise _refusal(task, len(cells), seeds, devices, e, per_host, host, host_what,
                         host_side=True)
    if worst is None or e.total > worst.total:
      worst = e
  if worst is None:
    raise ValueError("no task to check")
  return worst


def _refusal(task: str, cells: int, seeds: int, devices: int, e: Estimate, need: Need,
             avail: int, what: str, host_side: bool = False) -> DoesNotFit:
  """The refusal; `need` is a line in members per device (of the host's memory if host_side)."""
  fit = need.most(avail) * devices // cells            # seeds per cell
  per_member = need.per_member // devices if host_side else need.per_member
  on_each = f" on each of {devices} devices" if devices > 1 and not host_side else ""
  accelerator = not e.shared_memory and not host_side
  return DoesNotFit(
      f"this run does not fit in memory: task {task} trains {cells} cells x {seeds} seeds = "
      f"{cells * seeds:,} members in one program, which needs about "
      f"{_size(need.at(e.members))}{on_each} ({_size(per_member)} per member and "
      f"{_size(need.shared)} for the data and the program, estimated from the compiled "
      f"program) and the {what} is {_size(avail)}. "
      + (f"At most {fit * cells:,} members fit: use --seeds={fit} or fewer cells"
         if fit else "Not even one seed per cell fits: train fewer cells (--task, --head, --loss)")
      + (f", give JAX more of a GPU's memory (it takes 75% by default; set {MEM_FRACTION_ENV}"
         "=.95 before the run: docs/devices.md)" if accelerator else "")
      + ", or run on a machine with more memory.")


def _size(n: float) -> str:
  return f"{n / GIB:,.1f} GiB" if n >= GIB / 10 else f"{n / 2 ** 20:,.1f} MiB"
