"""The member axis sharded over every device of every process, and multi-host helpers.

The engine stacks its members (cell x seed) along a leading axis. This module
lays that axis out over a 1-D mesh of all devices (`jax.devices()`: every
device of every process), axis name 'member':

- every leaf of a stacked training state with a leading member axis of size
  M gets `NamedSharding(mesh, P('member'))`, so each device holds M / D
  members (D = the number of devices) and computes only those;
- scalars (the epoch counter) and the task's data are replicated, `P()`;
- M must be a multiple of D: the engine pads its member list by repeating
  its LAST member (same cell, same seed) until it is (`pad_members`). A pad
  is the same computation as the last member, lands in the last cell's
  group, and is never reported: results, progress lines, the final state and
  checkpoints only ever hold the real members (`unpad`);
- with compaction, a compacted layout is padded with members that have
  already stopped (`pad_indices`): they are frozen, so computing them changes
  nothing.

With one device nothing is padded or placed: the engine runs exactly as
without this module.

Multi-host (e.g. a TPU pod slice): every host runs the SAME command with
`--distributed`; `initialize_distributed` then calls
`jax.distributed.initialize()`, which finds the coordinator, the number of
processes and this process's id itself on Cloud TPU (and on SLURM, Open MPI
and Kubernetes clusters; elsewhere the three are flags). Every process builds
the same state and data from the same seeds and files, places its part of
them on its own devices, and takes part in every jitted epoch. Host values
(per-member metrics, the final state, snapshots) are gathered with `to_host`.
Only process 0 writes files (`is_primary`); the workdir must be on a file
system all hosts see (orbax's checkpoints need that too). It has run as 2
processes on one machine (tests/test_multiprocess.py), not yet on several hosts.
"""

from __future__ import annotations

from typing import Any, Sequence, TypeVar

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "member"

T = TypeVar("T")


# -- processes -----------------------------------------------------------------


def initialize_distributed(enabled: bool, coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins the multi-process JAX cluster when `enabled` (the --distributed flag).

  Must run before anything touches a device (it is the first thing `main`
  does). With `enabled` False nothing happens: one process, its local devices.
  On a multi-host TPU slice every host runs the same command with
  --distributed; `jax.distributed.initialize()` detects the coordinator, the
  number of processes and the process id there (also on SLURM, Open MPI and
  Kubernetes clusters). Elsewhere (machines of your own, or several processes
  on one machine) give all three: `coordinator_address` ("host:port" of
  process 0, the same for every process), `num_processes`, and this process's
  `process_id` (0 ... num_processes - 1). On CPUs the processes exchange
  arrays through gloo, JAX's default CPU collectives.

  Raises:
    ValueError: the three are given only in part, or without `enabled`, or
      out of range, or the cluster cannot be found or joined; the message
      names the fix.
  """
  given = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
           "--process_id": process_id}
  named = [k for k, v in given.items() if v is not None]
  if named and not enabled:
    raise ValueError(f"{', '.join(named)} {'needs' if len(named) == 1 else 'need'} "
                     "--distributed: add it, or drop them for a single-process run.")
  if not enabled:
    return
  if named and len(named) < 3:
    missing = [k for k in given if k not in named]
    raise ValueError(f"--distributed with {', '.join(named)} also needs {', '.join(missing)}: "
                     "give all three (every process the same --coordinator_address and "
                     "--num_processes, each its own --process_id), or none to let JAX detect "
                     "them on a TPU slice or a SLURM / Open MPI / Kubernetes cluster.")
  if named and num_processes < 1:
    raise ValueError(f"--num_processes must be at least 1, got {num_processes}.")
  if named and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id must be in 0 ... --num_processes - 1 "
                     f"({num_processes - 1}), got {process_id}.")
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except Exception as err:  # pylint: disable=broad-except
    if named:   # e.g. a process that never came within JAX's 300 s initialization timeout
      raise ValueError(
          f"process {process_id} of {num_processes} could not join the cluster at "
          f"{coordinator_address} ({type(err).__name__}: {err}). Start all "
          f"{num_processes} processes with the same --coordinator_address (process 0's "
          "host and a free port) and --num_processes, each with its own --process_id."
      ) from err
    raise ValueError(
        f"--distributed could not find its cluster ({err}). Outside a TPU slice or a "
        "SLURM / Open MPI / Kubernetes cluster, give --coordinator_address=HOST:PORT "
        "(process 0's), --num_processes and --process_id to every process.") from err
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def is_primary() -> bool:
  """Whether this process writes files: process 0, or the only process.

  Without `jax.distributed` (no --distributed) there is one process and no
  device is touched (so a bad flag is still refused before JAX starts).
  """
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (nothing without `jax.distributed`)."""
  if jax.distributed.is_initialized() and jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


# -- the mesh and padding ------------------------------------------------------


def member_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh, axis 'member', over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


def padded_count(m: int, n_devices: int) -> int:
  """`m` rounded up to a multiple of `n_devices` (m >= 1, n_devices >= 1)."""
  if m < 1 or n_devices < 1:
    raise ValueError(f"need m >= 1 and n_devices >= 1, got {m}, {n_devices}")
  return -(-m // n_devices) * n_devices


def pad_members(members: Sequence[T], n_devices: int) -> list[T]:
  """`members` followed by copies of its last one, up to a multiple of `n_devices`."""
  members = list(members)
  return members + [members[-1]] * (padded_count(len(members), n_devices) - len(members))


def pad_indices(keep: np.ndarray, size: int, n_devices: int) -> np.ndarray:
  """`keep` plus the fewest other positions of range(size), smallest first, to a multiple.

  Used for compacted layouts: `keep` are the stacked positions still
  training, every other position is a stopped (frozen) member, so adding some
  of them changes no result.

  Args:
    keep: (K,) distinct positions in range(size).
    size: the number of positions to choose from.
    n_devices: the multiple.

  Returns:
    (K',) increasing positions, K <= K' = padded_count(K, n_devices) when
    size allows it (at most size).
  """
  keep = np.asarray(keep, np.int64)
  want = min(size, padded_count(max(len(keep), 1), n_devices))
  others = np.setdiff1d(np.arange(size), keep)[:max(0, want - len(keep))]
  return np.sort(np.concatenate([keep, others]))


def pad_leading(tree: Any, size: int) -> Any:
  """Every non-scalar leaf (numpy or jax, PRNG keys included) padded along axis 0 to `size`.

  The padding repeats each leaf's LAST row: (M, ...) -> (size, ...), size >= M;
  scalars are left alone. The identity when nothing is missing.
  """
  def pad(a):
    if np.ndim(a) == 0 or a.shape[0] == size:
      return a
    if a.shape[0] > size:
      raise ValueError(f"cannot pad {a.shape[0]} rows to {size}")
    return a[np.minimum(np.arange(size), a.shape[0] - 1)]
  return jax.tree_util.tree_map(pad, tree)


def unpad(tree: Any, m: int) -> Any:
  """Every non-scalar leaf cut to its first `m` rows (the real members); the identity if equal."""
  return jax.tree_util.tree_map(
      lambda a: a if np.ndim(a) == 0 or a.shape[0] == m else a[:m], tree)


# -- placement -----------------------------------------------------------------


def is_key(a) -> bool:
  """Whether `a` (an array or a ShapeDtypeStruct) holds typed PRNG keys."""
  return hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def _put(a, sharding: NamedSharding):
  """One leaf onto `sharding`, from this process's value or from a global array."""
  if is_key(a):
    return jax.random.wrap_key_data(_put(jax.random.key_data(a), sharding),
                                    impl=jax.random.key_impl(a))
  if jax.process_count() > 1 and getattr(a, "is_fully_addressable", True):
    # A value every process computed alike (same seeds, same files): device_put checks
    # that it is the same everywhere and keeps each process's part.
    a = np.asarray(a)
  return jax.device_put(a, sharding)


def shard_members(tree: Any, mesh: Mesh) -> Any:
  """A stacked state on `mesh`: leading member axis over 'member', scalars replicated.

  Every non-scalar leaf must have a leading axis that is a multiple of
  mesh.size. With a 1-device mesh the tree is returned as it is.
  """
  if mesh.size == 1:
    return tree
  for a in jax.tree_util.tree_leaves(tree):
    if np.ndim(a) and a.shape[0] % mesh.size:
      raise ValueError(f"member axis {a.shape[0]} is not a multiple of {mesh.size} devices")
  member, replicated = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
  return jax.tree_util.tree_map(
      lambda a: _put(a, member if np.ndim(a) else replicated), tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Every jax.Array leaf of `tree` replicated on `mesh` (Python scalars left alone)."""
  if mesh.size == 1:
    return tree
  replicated = NamedSharding(mesh, P())
  return jax.tree_util.tree_map(
      lambda a: _put(a, replicated) if isinstance(a, (jax.Array, np.ndarray)) else a, tree)


def to_host(tree: Any) -> Any:
  """Host (numpy) values of a tree of arrays, gathered from every process when needed.

  With one process this is `jax.device_get(tree)`. With several, fully
  addressable leaves go through `jax.device_get` and arrays spread over other
  processes' devices through `multihost_utils.process_allgather` (a
  collective: every process must call `to_host` on the same tree); PRNG key
  arrays among those come back as their key data.
  """
  if jax.process_count() == 1:
    return jax.device_get(tree)

  def get(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      if is_key(a):
        a = jax.random.key_data(a)
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return jax.device_get(a)
  return jax.tree_util.tree_map(get, tree)
