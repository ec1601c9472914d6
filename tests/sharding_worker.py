"""Runs small engines on however many devices this process has; writes what it saw as JSON.

Used by tests/test_sharding.py in subprocesses started with
XLA_FLAGS=--xla_force_host_platform_device_count=D (the pytest process has
already initialised JAX with one device, so it cannot change that itself):

  python tests/sharding_worker.py OUT.json

Three runs of the same 5 members (2 cells) of the multiclass task on
synthetic data (tests/test_engine.py's `_synthetic`): without compaction,
with compaction, and the compacted run resumed from its snapshot after epoch
2. For each: per-member results, progress lines (times removed), traces,
compactions, the shapes of the snapshots and of the final state, and, for
every call of an epoch function, how its state and data were laid out.
"""

import dataclasses
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from jaxact.engine import engine  # pylint: disable=g-import-not-at-top
from jaxact.model import cells as studies
from jaxact.engine import program
from test_engine import _synthetic

CFG = program.EngineConfig(max_epochs=4, patience=1, batch_size=32)
VMAP = program.ExecutionConfig(member_mode="vmap")


def members():
  """5 members, 2 cells: sigmoid + cce seeds 0, 1 (one of them trains longest), softmax + cce 0-2."""
  cells = studies.select_cells("activation", "multiclass")["multiclass"]
  softmax_cce, sigmoid_cce = cells[0], cells[2]
  return [(sigmoid_cce, 0), (sigmoid_cce, 1)] + [(softmax_cce, s) for s in (0, 1, 2)]


def layout_of(a) -> dict:
  """How one array is laid out: shape, partition spec, devices, rows per device."""
  s = a.sharding
  spec = getattr(s, "spec", None)
  return {
      "shape": list(a.shape),
      "spec": None if spec is None else [None if p is None else str(p) for p in spec],
      "devices": len(s.device_set),
      "shard_rows": sorted({sh.data.shape[0] if sh.data.ndim else -1
                            for sh in a.addressable_shards}),
      "replicated": bool(s.is_fully_replicated),
  }


def spy(calls: list, fn):
  """`fn` (an epoch function) recording the layout of its state and data on every call."""
  def wrapped(state, data):
    seen = {k: layout_of(v) for k, v in (   # before the call: the state is donated
        ("kernel", state.params["out"]["kernel"]), ("keys", state.shuffle_keys),
        ("active", state.active), ("epoch", state.epoch))}
    new_state, metrics = fn(state, data)
    calls.append({
        "in": seen,
        "out": {"kernel": layout_of(new_state.params["out"]["kernel"]),
                "metric": layout_of(metrics.valid_metric)},
        "data": layout_of(data.x_train),
    })
    return new_state, metrics
  return wrapped


def run(data, compact: bool, restore=None, keep_snapshot_at=None) -> tuple[dict, object]:
  lines, calls, snaps = [], [], {}
  eng = engine.Engine("multiclass", members(), CFG, dataclasses.replace(VMAP, compact=compact),
                      progress=lambda l: lines.append(re.sub(r"[\d.]+s;", "", l)))
  eng.epoch_fn = spy(calls, eng.epoch_fn)
  layout_fn = eng.layout_epoch_fn
  eng.layout_epoch_fn = lambda groups: spy(calls, layout_fn(groups))

  def hook(epoch, snapshot):
    if epoch == keep_snapshot_at:
      snaps[epoch] = snapshot()

  outcome = eng.run(data, restore=restore, on_epoch_end=hook)
  results = outcome.members
  snap = snaps.get(keep_snapshot_at)
  out = {
      "results": [dict(dataclasses.asdict(r), cell=r.cell.key) for r in results],
      "lines": lines,
      "traces": eng.traces,
      "compactions": outcome.compactions,
      "layouts": [[[c.key, a, b] for c, a, b in g] for g in eng.layout_epoch_fns],
      "calls": calls,
      "final_rows": sorted({np.shape(l)[0] for l in jax.tree_util.tree_leaves(outcome.final_state)
                            if np.ndim(l)}),
      "members": [[c.key, s] for c, s in eng.members],
      "mesh": eng.mesh.size,
  }
  if snap is not None:
    out["snapshot"] = {
        "epoch": snap.epoch, "stacked": snap.stacked.tolist(),
        "state_rows": sorted({np.shape(l)[0] for l in jax.tree_util.tree_leaves(snap.state)
                              if np.ndim(l)}),
        "hist_shape": list(snap.hist_loss.shape),
    }
  return out, snap


def main(path: str) -> None:
  data = _synthetic("multiclass")
  out = {"devices": jax.device_count()}
  out["plain"], _ = run(data, compact=False)
  out["compact"], snap = run(data, compact=True, keep_snapshot_at=2)
  out["resumed"], _ = run(data, compact=True, restore=snap)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(out, f, default=str)


if __name__ == "__main__":
  main(sys.argv[1])
