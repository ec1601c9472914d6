"""The member axis sharded over devices (jaxact/engine/sharding.py): padding, placement, equal results.

The engine runs on 4 devices in subprocesses (tests/sharding_worker.py) with
XLA_FLAGS=--xla_force_host_platform_device_count=4, because this pytest
process has initialised JAX with one CPU device already. The reference is the
same worker on 1 device, also in a subprocess, so that both sides run the
same code path.

Tolerance: on 4 devices each device computes 2 of the 8 stacked members, on 1
device one program computes all 5, so XLA batches the per-member matmuls
differently and float rounding differs (about 1e-6 relative in the train
losses here; accuracies came out bitwise equal). Float results are compared
with rtol 1e-5; everything discrete (best epoch, epochs trained, status,
status epoch, the progress lines) must be equal, and a resumed 4-device run
must be bitwise equal to the uninterrupted one.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import numpy as np
import pytest

from jaxact.engine import sharding

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "sharding_worker.py"
N_REAL = 5


# -- the padding helpers (pure numpy; this process) ---------------------------


def test_padded_count():
  assert [sharding.padded_count(m, 4) for m in (1, 3, 4, 5, 8, 9)] == [4, 4, 4, 8, 8, 12]
  assert sharding.padded_count(5, 1) == 5
  with pytest.raises(ValueError):
    sharding.padded_count(0, 4)


def test_pad_members_repeats_the_last_member():
  members = [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2)]
  assert sharding.pad_members(members, 4) == members + [("b", 2)] * 3
  assert sharding.pad_members(members, 1) == members
  assert sharding.pad_members(members[:4], 4) == members[:4]


def test_pad_indices_adds_the_smallest_others():
  np.testing.assert_array_equal(sharding.pad_indices(np.array([1]), 8, 4), [0, 1, 2, 3])
  np.testing.assert_array_equal(sharding.pad_indices(np.array([5, 6]), 8, 4), [0, 1, 5, 6])
  np.testing.assert_array_equal(sharding.pad_indices(np.array([6, 2, 7]), 8, 4), [0, 2, 6, 7])
  np.testing.assert_array_equal(sharding.pad_indices(np.array([0, 3, 4, 7]), 8, 4), [0, 3, 4, 7])
  # Five kept of eight: the padded set is everything (the engine then does not compact).
  assert len(sharding.pad_indices(np.array([0, 1, 2, 3, 4]), 8, 4)) == 8
  np.testing.assert_array_equal(sharding.pad_indices(np.array([3, 1]), 8, 1), [1, 3])


def test_pad_leading_and_unpad():
  tree = {"w": np.arange(6.0).reshape(3, 2), "k": np.array([[1, 2], [3, 4], [5, 6]], np.uint32),
          "epoch": np.int32(7)}
  padded = sharding.pad_leading(tree, 4)
  np.testing.assert_array_equal(padded["w"], [[0, 1], [2, 3], [4, 5], [4, 5]])
  np.testing.assert_array_equal(padded["k"][3], [5, 6])
  assert padded["epoch"] == 7
  back = sharding.unpad(padded, 3)
  chex.assert_trees_all_equal(back, tree)
  assert sharding.pad_leading(tree, 3)["w"] is tree["w"]   # nothing missing: the same arrays
  with pytest.raises(ValueError):
    sharding.pad_leading(tree, 2)


def test_one_device_places_nothing():
  mesh = sharding.member_mesh()
  assert mesh.size == 1 and mesh.axis_names == ("member",)
  tree = {"w": np.ones((3, 2))}
  assert sharding.shard_members(tree, mesh) is tree
  assert sharding.replicate(tree, mesh) is tree
  assert sharding.is_primary()


def test_shard_members_refuses_an_axis_that_does_not_divide():
  class FourDevices:  # only .size is read before the check
    size = 4
  with pytest.raises(ValueError, match="not a multiple of 4"):
    sharding.shard_members({"w": np.ones((5, 2))}, FourDevices())


# -- the engine on 4 devices against 1 device (subprocesses) ------------------


def _start(devices: int, out: Path) -> subprocess.Popen:
  env = dict(os.environ,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             # XLA:CPU runs collectives on a thread pool sized by the core count; with 4
             # virtual devices on a 2-core machine, two devices blocked in an all-reduce
             # can hold every thread and the run aborts after a 40 s rendezvous timeout
             # (seen here). PJRT_NPROC sets the pool's size.
             PJRT_NPROC="8",
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  return subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env, cwd=str(REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{devices: what tests/sharding_worker.py saw} for 4 and 1 devices (run concurrently)."""
  d = tmp_path_factory.mktemp("sharding")
  procs = {n: (_start(n, d / f"d{n}.json"), d / f"d{n}.json") for n in (4, 1)}
  out = {}
  for n, (proc, path) in procs.items():
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    out[n] = json.loads(path.read_text())
  return out


def test_worker_saw_the_device_counts(runs):
  assert runs[4]["devices"] == 4 and runs[1]["devices"] == 1
  assert runs[4]["plain"]["mesh"] == 4 and runs[1]["plain"]["mesh"] == 1


def test_state_is_sharded_over_four_devices(runs):
  for name in ("plain", "compact", "resumed"):
    calls = runs[4][name]["calls"]
    assert calls
    for call in calls:
      kernel = call["in"]["kernel"]
      rows = kernel["shape"][0]
      assert rows % 4 == 0                           # 5 members padded to 8 (4 when compacted)
      assert kernel["spec"] == ["member"] and kernel["devices"] == 4
      assert kernel["shard_rows"] == [rows // 4] and not kernel["replicated"]
      assert call["in"]["keys"]["spec"] == ["member"]          # PRNG keys too
      assert call["in"]["epoch"]["replicated"] and call["in"]["epoch"]["devices"] == 4
      assert call["out"]["kernel"]["spec"] == ["member"]      # jit keeps the layout
      assert call["out"]["metric"]["shard_rows"] == [rows // 4]
      assert call["data"]["replicated"] and call["data"]["devices"] == 4
  assert [c["in"]["kernel"]["shape"][0] for c in runs[4]["plain"]["calls"]] == [8] * 4
  assert [c["in"]["kernel"]["shape"][0] for c in runs[1]["plain"]["calls"]] == [5] * 4


def test_compacted_layout_is_padded_with_stopped_members(runs):
  four, one = runs[4]["compact"], runs[1]["compact"]
  # After epoch 2 only member 0 (sigmoid + cce, seed 0) trains: 1 device keeps it alone,
  # 4 devices keep it with the stopped members 1, 2 and 3.
  assert one["layouts"] == [[["multiclass/sigmoid+cce", 0, 1]]]
  assert four["layouts"] == [[["multiclass/sigmoid+cce", 0, 2], ["multiclass/softmax+cce", 2, 4]]]
  assert [c["in"]["kernel"]["shape"][0] for c in four["calls"]] == [8, 8, 4, 4]
  assert four["compactions"] == one["compactions"] == 1
  assert four["traces"] == one["traces"] == 2


def test_only_real_members_are_exposed(runs):
  for n in (4, 1):
    for name in ("plain", "compact", "resumed"):
      r = runs[n][name]
      assert len(r["results"]) == len(r["members"]) == N_REAL
      assert r["final_rows"] == [N_REAL]
      assert all(f"/{N_REAL} training" in line for line in r["lines"])
    snap = runs[n]["compact"]["snapshot"]
    assert snap["state_rows"] == [N_REAL] and snap["hist_shape"] == [4, N_REAL]
  assert runs[4]["compact"]["snapshot"]["stacked"] == [True, True, True, True, False]


def _assert_same_results(a, b, rtol):
  for x, y in zip(a, b, strict=True):
    for key in ("cell", "seed", "best_epoch", "epochs_trained", "status", "status_epoch",
                "status_reason", "n_infinite_valid", "n_infinite_test"):
      assert x[key] == y[key], (key, x, y)
    assert len(x["train_loss"]) == len(y["train_loss"])
    if rtol == 0:
      assert x == y
    else:
      chex.assert_trees_all_close(
          (x["best_valid"], x["test"], x["train_loss"], x["valid_metric"]),
          (y["best_valid"], y["test"], y["train_loss"], y["valid_metric"]), rtol=rtol, atol=0)


@pytest.mark.parametrize("name", ["plain", "compact", "resumed"])
def test_four_devices_match_one_device(runs, name):
  _assert_same_results(runs[4][name]["results"], runs[1][name]["results"], rtol=1e-5)
  assert runs[4][name]["lines"] == runs[1][name]["lines"]
  statuses = [r["status"] for r in runs[4][name]["results"]]
  assert statuses == ["hit_cap"] + ["ok"] * 4   # members that stop at different epochs


def test_resumed_run_is_bitwise_the_uninterrupted_one(runs):
  for n in (4, 1):
    _assert_same_results(runs[n]["resumed"]["results"], runs[n]["compact"]["results"], rtol=0)
    assert runs[n]["resumed"]["lines"] == runs[n]["compact"]["lines"][2:]
