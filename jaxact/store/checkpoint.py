"""Checkpoints of a running task (orbax), and the differences between two runs' identities.

Inside a workdir:
  checkpoints/<task>/<epoch>/   the latest snapshots of a task still training (at most KEEP)

A checkpoint holds one `runner.Snapshot` (the full-size training state in the
original member order: stacked parameters, AdamW states, best weights and
early-stopping state, the PRNG keys as raw key data, the epoch counter, which
members are stacked in a compacted layout, and the host-side histories) plus
a JSON item with the run's identity (configuration, `options.config_identity`,
and data split), the epoch, and the wall time spent so far.

Orbax writes each checkpoint into a temporary directory and renames it when
complete, so a killed process leaves at most a partial `*.orbax-checkpoint-tmp-*`
directory, which is never read and is removed the next time the task's
checkpoints are opened. Saves are asynchronous; `TaskCheckpointer.close`
waits for them.

Only this module and train.py touch these files; the engine builds and takes
snapshots in memory.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxact import __version__
from jaxact.engine import engine as engine_lib
from jaxact.engine import sharding
from jaxact.engine import runner as runner_lib

CHECKPOINTS_DIR = "checkpoints"
KEEP = 2
FORMAT = 1

_MISSING = object()


class CheckpointError(Exception):
  """Checkpoints that cannot be used; str() says why and what to do."""


def identity_differences(old: dict[str, Any], new: dict[str, Any],
                         defaults: dict[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
  """(key, old value, new value) for every key whose value differs.

  A key absent from `old` (a field added since it was written) takes its value
  from `defaults` when given there.
  """
  defaults = defaults or {}
  diffs = []
  for key in list(new) + [k for k in old if k not in new]:
    before = old.get(key, defaults.get(key, _MISSING))
    after = new.get(key, _MISSING)
    if before != after:
      diffs.append((key, before, after))
  return diffs


def format_value(value: Any) -> str:
  if value is _MISSING:
    return "(absent)"
  if isinstance(value, list):
    return ",".join(str(v) for v in value) or "(none)"
  if value is None:
    return "(any)"
  return str(value)


def describe_differences(old: dict[str, Any], new: dict[str, Any],
                         defaults: dict[str, Any] | None = None) -> str:
  """'key: OLD before, NEW now; ...' for two identities (nested "config" dicts flattened)."""
  def flat(identity):
    out = {k: v for k, v in identity.items() if k != "config"}
    out.update(identity.get("config") or {})
    return out
  diffs = identity_differences(flat(old), flat(new), defaults)
  return "; ".join(f"{k}: {format_value(a)} before, {format_value(b)} now"
                   for k, a, b in diffs) or "no difference in the configuration"


def _one_line(err: BaseException, limit: int = 200) -> str:
  text = " ".join(f"{type(err).__name__}: {err}".split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


# The diagnostics of checkpoints written before their names were recorded in the metadata.
LEGACY_DIAGNOSTICS = ("grad_norm", "grad_norm_first", "param_norm", "saturated", "dead",
                      "mean_abs_pre", "spread", "argmax_minority")


def _leaf_paths(tree) -> list[str]:
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _host_template(engine: engine_lib.Engine) -> dict[str, Any]:
  """ShapeDtypeStructs of `runner_lib.state_to_host(engine.init_state())`."""
  def raw(state):
    return jax.tree_util.tree_map(
        lambda a: jax.random.key_data(a) if sharding.is_key(a) else a, state)
  return jax.eval_shape(raw, engine.state_template())


def _arrays_item(snapshot: runner_lib.Snapshot) -> dict[str, Any]:
  leaves = jax.tree_util.tree_leaves(snapshot.state)
  return {
      "state": {f"{i:04d}": leaf for i, leaf in enumerate(leaves)},
      "stacked": snapshot.stacked,
      "hist_loss": snapshot.hist_loss,
      "hist_valid": snapshot.hist_valid,
      "hist_trained": snapshot.hist_trained,
      "hist_inf": snapshot.hist_inf,
      "hist_diag": dict(snapshot.hist_diag),
  }


class TaskCheckpointer:
  """Saves and restores the snapshots of one task under `directory`.

  Pass the object itself as `Engine.run(..., on_epoch_end=checkpointer)`: it
  saves after every `every` epochs (0: never), asynchronously, keeping the
  latest `keep` checkpoints. `identity` (JSON) is stored in each checkpoint;
  `restore` refuses checkpoints with another identity.

  Attributes:
    elapsed_before: wall time (s) spent on the task before the restored
      checkpoint was saved, 0.0 if nothing was restored.
    session_start: `time.perf_counter()` when this process's work on the task
      began (the constructor's time unless set).
  """

  def __init__(self, directory: str, identity: dict[str, Any], every: int, keep: int = KEEP):
    if every < 0:
      raise ValueError(f"every must be >= 0, got {every}")
    self.directory = os.path.abspath(directory)
    self.identity = json.loads(json.dumps(identity))
    self.every = every
    self.keep = keep
    self.elapsed_before = 0.0
    self.session_start = time.perf_counter()
    self._manager: ocp.CheckpointManager | None = None

  # -- the manager ---------------------------------------------------------

  def _open(self, create: bool) -> ocp.CheckpointManager | None:
    if self._manager is None:
      if not create and not os.path.isdir(self.directory):
        return None
      options = ocp.CheckpointManagerOptions(
          preservation_policy=ocp.checkpoint_managers.LatestN(self.keep),
          cleanup_tmp_directories=True, create=True, enable_async_checkpointing=True)
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    return self._manager

  def epochs(self) -> list[int]:
    """The epochs of the complete checkpoints on disk, increasing."""
    manager = self._open(create=False)
    return sorted(manager.all_steps()) if manager is not None else []

  def wait(self) -> None:
    """Blocks until every started save is complete on disk."""
    if self._manager is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager (safe to call twice)."""
    if self._manager is not None:
      try:
        self._manager.wait_until_finished()
      finally:
        self._manager.close()
        self._manager = None

  def delete(self) -> None:
    """Closes, then removes this task's checkpoints (and checkpoints/ if left empty).

    With several processes every one closes, only process 0 removes.
    """
    self.close()
    if not sharding.is_primary():
      return
    shutil.rmtree(self.directory, ignore_errors=True)
    try:
      os.rmdir(os.path.dirname(self.directory))
    except OSError:
      pass

  # -- saving --------------------------------------------------------------

  def __call__(self, epoch: int, snapshot: Callable[[], runner_lib.Snapshot]) -> None:
    """The engine's `on_epoch_end` hook."""
    if self.every and epoch % self.every == 0:
      self.save(snapshot())

  def elapsed(self) -> float:
    """Wall time spent on the task so far, earlier (interrupted) runs of it included."""
    return self.elapsed_before + (time.perf_counter() - self.session_start)

  def save(self, snapshot: runner_lib.Snapshot) -> None:
    """Starts an asynchronous save of `snapshot` as the checkpoint of its epoch."""
    manager = self._open(create=True)
    if snapshot.epoch in manager.all_steps():
      manager.delete(snapshot.epoch)
    meta = {
        "format": FORMAT,
        "jaxact_version": __version__,
        "identity": self.identity,
        "epoch": int(snapshot.epoch),
        "compactions": int(snapshot.compactions),
        "elapsed_s": self.elapsed(),
        "saved": datetime.datetime.now().isoformat(timespec="seconds"),
        "leaf_paths": _leaf_paths(snapshot.state),
        "diagnostics": sorted(snapshot.hist_diag),
    }
    manager.save(snapshot.epoch, args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(_arrays_item(snapshot)),
        meta=ocp.args.JsonSave(meta)))

  # -- restoring -----------------------------------------------------------

  def restore(self, engine: engine_lib.Engine) -> runner_lib.Snapshot | None:
    """The latest readable snapshot for `engine`, or None if there is no checkpoint.

    Raises:
      CheckpointError: the checkpoints belong to another configuration or
        data split, or were written for another state layout, or none of
        them can be read.
    """
    manager = self._open(create=False)
    if manager is None:
      return None
    steps = sorted(manager.all_steps(), reverse=True)
    errors = []
    for step in steps:
      try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      except Exception as err:  # pylint: disable=broad-except
        errors.append((step, err))
        continue
      if meta.get("identity") != self.identity:
        raise CheckpointError(
            f"the checkpoints in {self.directory!r} were written by another run "
            f"({describe_differences(meta.get('identity') or {}, self.identity)}): rerun with "
            "the flags and data of that run to resume it, or pass --restart to delete them and "
            "start over.")
      template = _host_template(engine)
      if meta.get("leaf_paths") != _leaf_paths(template):
        raise CheckpointError(
            f"the checkpoint of epoch {step} in {self.directory!r} holds a training state "
            f"of another layout (written by jaxact {meta.get('jaxact_version')}, this is "
            f"{__version__}): finish it with that version, or delete {self.directory!r} to train "
            "this task again from its first epoch (finished tasks' results are kept).")
      m, e = engine.num_members, engine.config.max_epochs
      # A diagnostic added to the engine after the checkpoint was written is restored as
      # NaN (not measured) for the epochs before the resume.
      saved_diagnostics = set(meta.get("diagnostics") or LEGACY_DIAGNOSTICS)
      target = {
          "state": {f"{i:04d}": leaf
                    for i, leaf in enumerate(jax.tree_util.tree_leaves(template))},
          "stacked": jax.ShapeDtypeStruct((m,), np.bool_),
          "hist_loss": jax.ShapeDtypeStruct((e, m), np.float32),
          "hist_valid": jax.ShapeDtypeStruct((e, m), np.float32),
          "hist_trained": jax.ShapeDtypeStruct((e, m), np.bool_),
          "hist_inf": jax.ShapeDtypeStruct((e, m), np.int64),
          "hist_diag": {name: jax.ShapeDtypeStruct((e, m) + shape, dtype)
                        for name, (shape, dtype) in engine.diagnostic_shapes().items()
                        if name in saved_diagnostics},
      }
      try:
        arrays = manager.restore(step, args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(target)))["arrays"]
      except Exception as err:  # pylint: disable=broad-except
        errors.append((step, err))
        continue
      treedef = jax.tree_util.tree_structure(template)
      leaves = [np.asarray(arrays["state"][f"{i:04d}"]) for i in range(treedef.num_leaves)]
      for bad, err in errors:   # newer but unreadable: drop them so that saving goes on
        logging.warning("checkpoint of epoch %d in %s is unreadable (%s); deleted", bad,
                        self.directory, err)
        manager.delete(bad)
      self.elapsed_before = float(meta.get("elapsed_s", 0.0))
      return runner_lib.Snapshot(
          epoch=int(meta["epoch"]), state=jax.tree_util.tree_unflatten(treedef, leaves),
          stacked=np.asarray(arrays["stacked"], bool),
          compactions=int(meta.get("compactions", 0)),
          hist_loss=np.asarray(arrays["hist_loss"]),
          hist_valid=np.asarray(arrays["hist_valid"]),
          hist_trained=np.asarray(arrays["hist_trained"]),
          hist_inf=np.asarray(arrays["hist_inf"]),
          hist_diag={name: (np.asarray(arrays["hist_diag"][name]) if name in saved_diagnostics
                            else np.full((e, m) + shape, np.nan, dtype))
                     for name, (shape, dtype) in engine.diagnostic_shapes().items()})
    if errors:
      step, err = errors[0]
      raise CheckpointError(
          f"none of the checkpoints in {self.directory!r} can be read (epoch {step}: "
          f"{_one_line(err)}): delete {self.directory!r} to train this task again from its "
          "first epoch (finished tasks' results are kept), or pass --restart to start the whole "
          "run over.")
    return None
