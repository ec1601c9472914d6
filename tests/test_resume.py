"""Resumable runs: checkpoints of a running task, resume after SIGKILL, finished tasks kept,
another configuration refused, --restart."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from jaxact.store import checkpoint
from jaxact.engine import engine
from jaxact.model import cells as studies
from jaxact.study import train
from jaxact.engine import program
from jaxact.engine import runner
from test_engine import _BAD, _GOOD, _synthetic

REPO = Path(__file__).resolve().parents[1]


def _dump(outcome) -> str:
  """A `runner.Outcome`'s results, compactions and epochs as JSON text (NaN-safe exact
  comparison)."""
  return json.dumps([[dataclasses.asdict(r) for r in outcome.members], outcome.compactions,
                     outcome.epochs], default=str)


def _same_final_state(a, b):
  chex.assert_trees_all_equal(runner.state_to_host(a.final_state),
                              runner.state_to_host(b.final_state))


class _Stop(Exception):
  """Simulates a crash right after a checkpoint."""


def _run_until(eng, data, ckpt, stop_after):
  """Runs `eng` with `ckpt` as its hook, raising _Stop after epoch `stop_after`; keeps snapshots."""
  snaps = {}

  def hook(epoch, snapshot):
    snaps[epoch] = snapshot()
    ckpt(epoch, lambda: snaps[epoch])
    if epoch == stop_after:
      raise _Stop

  with pytest.raises(_Stop):
    eng.run(data, on_epoch_end=hook)
  ckpt.close()
  return snaps


# -- checkpoint.py on a synthetic task (no MNIST) -----------------------------

_CELL = studies.recommended_cell("probability")
_MEMBERS = [(_CELL, 0), (_CELL, 1)]
_CFG = program.EngineConfig(max_epochs=5, patience=10)
_ID = {"config": {"seeds": 2}, "split_fingerprint": "abc", "task": "probability"}


@pytest.fixture(scope="module")
def probability_data():
  return _synthetic("probability", n_train=64, n_valid=32, n_test=32)


@pytest.fixture(scope="module")
def uninterrupted(probability_data):
  eng = engine.Engine("probability", _MEMBERS, _CFG, progress=lambda _: None)
  return eng, eng.run(probability_data)


def test_save_restore_round_trip_is_bitwise(probability_data, tmp_path):
  ckpt = checkpoint.TaskCheckpointer(str(tmp_path / "probability"), _ID, every=1)
  eng = engine.Engine("probability", _MEMBERS, _CFG, progress=lambda _: None)
  snaps = _run_until(eng, probability_data, ckpt, stop_after=4)
  assert ckpt.epochs() == [3, 4]          # at most KEEP = 2 checkpoints are kept
  ckpt.close()

  again = checkpoint.TaskCheckpointer(str(tmp_path / "probability"), _ID, every=1)
  restored = again.restore(engine.Engine("probability", _MEMBERS, _CFG))
  again.close()
  saved = snaps[4]
  assert restored.epoch == 4 and restored.compactions == 0
  chex.assert_trees_all_equal(restored.state, saved.state)
  for name in ("stacked", "hist_loss", "hist_valid", "hist_trained", "hist_inf"):
    a, b = getattr(restored, name), getattr(saved, name)
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  assert int(restored.state["epoch"]) == 4
  # PRNG keys: stored as raw key data, wrapped back into typed keys of the same impl.
  init = eng.init_state()
  back = runner.state_from_host(restored.state, init)
  assert jax.dtypes.issubdtype(back["shuffle_keys"].dtype, jax.dtypes.prng_key)
  assert jax.random.key_impl(back["shuffle_keys"]) == jax.random.key_impl(init["shuffle_keys"])
  np.testing.assert_array_equal(jax.random.key_data(back["shuffle_keys"]),
                                jax.random.key_data(init["shuffle_keys"]))
  # Avals (weak types included) are those of a fresh state: no second trace.
  assert jax.tree_util.tree_map(jax.typeof, back) == jax.tree_util.tree_map(jax.typeof, init)


def test_checkpoint_without_a_newer_diagnostic_restores_it_as_nan(probability_data, tmp_path):
  """A checkpoint written before a diagnostic existed resumes; that diagnostic reads NaN."""
  eng = engine.Engine("probability", _MEMBERS, _CFG, progress=lambda _: None)
  snap = None

  def grab(epoch, snapshot):
    nonlocal snap
    snap = snapshot()
    raise _Stop

  with pytest.raises(_Stop):
    eng.run(probability_data, on_epoch_end=grab)
  assert set(checkpoint.LEGACY_DIAGNOSTICS) < set(eng.diagnostic_shapes())
  old = dataclasses.replace(snap, hist_diag={k: v for k, v in snap.hist_diag.items()
                                             if k in checkpoint.LEGACY_DIAGNOSTICS})
  ckpt = checkpoint.TaskCheckpointer(str(tmp_path / "probability"), _ID, every=1)
  ckpt.save(old)
  ckpt.close()
  again = checkpoint.TaskCheckpointer(str(tmp_path / "probability"), _ID, every=1)
  fresh = engine.Engine("probability", _MEMBERS, _CFG, progress=lambda _: None)
  restored = again.restore(fresh)
  assert set(restored.hist_diag) == set(eng.diagnostic_shapes())
  new = sorted(set(eng.diagnostic_shapes()) - set(checkpoint.LEGACY_DIAGNOSTICS))
  for name in new:
    assert restored.hist_diag[name].shape == snap.hist_diag[name].shape
    assert np.isnan(restored.hist_diag[name]).all()
  for name in checkpoint.LEGACY_DIAGNOSTICS:
    np.testing.assert_array_equal(restored.hist_diag[name], snap.hist_diag[name])
  results = fresh.run(probability_data, restore=restored).members
  again.close()
  for r in results:
    values = r.diagnostics["head_saturated"]
    assert values[0] is None and all(v is not None for v in values[1:])


def test_resumed_engine_run_is_bitwise_identical(probability_data, uninterrupted, tmp_path):
  _, ref = uninterrupted
  ckpt = checkpoint.TaskCheckpointer(str(tmp_path / "probability"), _ID, every=2)
  _run_until(engine.Engine("probability", _MEMBERS, _CFG, progress=lambda _: None),
             probability_data, ckpt, stop_after=3)
  assert ckpt.epochs() == [2]             # every=2: epochs 2 and 4 would be saved
  ckpt = checkpoint.TaskCheckpointer(str(tmp_path / "probability"), _ID, every=2)
  eng = engine.Engine("probability", _MEMBERS, _CFG, progress=lambda _: None)
  snapshot = ckpt.restore(eng)
  assert snapshot.epoch == 2
  res = eng.run(probability_data, restore=snapshot, on_epoch_end=ckpt)
  ckpt.close()
  assert ckpt.epochs() == [2, 4]
  assert _dump(res) == _dump(ref)
  _same_final_state(res, ref)
  for a, b in zip(res.histories, ref.histories):
    chex.assert_trees_all_equal(a, b)
  assert eng.traces == 1


# A snapshot's state as the engine wrote it before its state became a `TrainState`, and as
# the checkpoints on disk hold it: a flat dict (with batch norm also "stats", "best_stats").
_DICT_STATE_KEYS = ["active", "best_epoch", "best_params", "best_score", "epoch",
                    "epochs_trained", "opt_state", "params", "shuffle_keys", "status",
                    "status_epoch"]


def test_snapshot_in_the_dict_layout_restores(probability_data, uninterrupted):
  """Snapshots keep the flat dict layout; one built from its keys alone resumes bitwise."""
  _, ref = uninterrupted
  snaps = {}

  def grab(epoch, snapshot):
    snaps[epoch] = snapshot()
    if epoch == 2:
      raise _Stop

  with pytest.raises(_Stop):
    engine.Engine("probability", _MEMBERS, _CFG, progress=lambda _: None).run(
        probability_data, on_epoch_end=grab)
  assert sorted(snaps[2].state) == _DICT_STATE_KEYS
  old = dataclasses.replace(snaps[2], state={k: snaps[2].state[k] for k in _DICT_STATE_KEYS})
  eng = engine.Engine("probability", _MEMBERS, _CFG, progress=lambda _: None)
  res = eng.run(probability_data, restore=old)
  assert _dump(res) == _dump(ref)
  _same_final_state(res, ref)
  bn = dataclasses.replace(_CELL, batch_norm=True)
  template = engine.Engine("probability", [(bn, 0)], _CFG).state_template()
  assert sorted(template) == sorted(_DICT_STATE_KEYS + ["best_stats", "stats"])


def test_resume_inside_a_compacted_layout(tmp_path):
  """A checkpoint taken right after a compaction keeps the layout; the rest is bitwise equal."""
  data = _synthetic("regression")
  members = [(_BAD, 0), (_BAD, 1), (_BAD, 2), (_GOOD, 0)]  # three invalid in epoch 0
  cfg = program.EngineConfig(max_epochs=3, patience=10)
  compact = program.ExecutionConfig(compact=True, member_mode="vmap")
  ref_eng = engine.Engine("regression", members, cfg, compact, progress=lambda _: None)
  ref = ref_eng.run(data)
  assert ref.compactions == 1
  ckpt = checkpoint.TaskCheckpointer(str(tmp_path / "regression"), _ID, every=1)
  snaps = _run_until(engine.Engine("regression", members, cfg, compact, progress=lambda _: None),
                     data, ckpt, stop_after=1)
  np.testing.assert_array_equal(snaps[1].stacked, [False, False, False, True])
  eng = engine.Engine("regression", members, cfg, compact, progress=lambda _: None)
  snapshot = checkpoint.TaskCheckpointer(str(tmp_path / "regression"), _ID, every=1).restore(eng)
  assert snapshot.epoch == 1 and snapshot.compactions == 1
  np.testing.assert_array_equal(snapshot.stacked, snaps[1].stacked)
  res = eng.run(data, restore=snapshot)
  assert _dump(res) == _dump(ref)
  _same_final_state(res, ref)
  assert list(eng.layout_epoch_fns) == [((_GOOD, 0, 1),)]
  assert res.compactions == ref.compactions == 1
  assert eng.traces + snapshot.compactions == ref_eng.traces == 2


def test_restore_refuses_another_identity(probability_data, tmp_path):
  ckpt = checkpoint.TaskCheckpointer(str(tmp_path / "p"), _ID, every=1)
  _run_until(engine.Engine("probability", _MEMBERS, _CFG, progress=lambda _: None),
             probability_data, ckpt, stop_after=1)
  other = dict(_ID, config={"seeds": 3})
  with pytest.raises(checkpoint.CheckpointError, match=r"seeds: 2 before, 3 now.*--restart"):
    checkpoint.TaskCheckpointer(str(tmp_path / "p"), other, every=1).restore(
        engine.Engine("probability", _MEMBERS, _CFG))


def test_partial_tmp_checkpoints_are_ignored_and_removed(probability_data, tmp_path):
  d = tmp_path / "checkpoints" / "p"
  ckpt = checkpoint.TaskCheckpointer(str(d), _ID, every=1)
  _run_until(engine.Engine("probability", _MEMBERS, _CFG, progress=lambda _: None),
             probability_data, ckpt, stop_after=1)
  # What a SIGKILL in the middle of saving epoch 2 leaves behind (the name orbax 0.12 uses).
  partial = d / "2.orbax-checkpoint-tmp"
  (partial / "arrays").mkdir(parents=True)
  (partial / "arrays" / "junk").write_bytes(b"\0" * 10)
  again = checkpoint.TaskCheckpointer(str(d), _ID, every=1)
  assert again.epochs() == [1]
  assert again.restore(engine.Engine("probability", _MEMBERS, _CFG)).epoch == 1
  again.close()
  assert not partial.exists()
  again.delete()
  assert not d.exists() and not d.parent.exists()   # checkpoints/ too, once empty


def test_unreadable_checkpoints_name_the_task_directory_to_delete(probability_data, tmp_path):
  d = tmp_path / "checkpoints" / "p"
  ckpt = checkpoint.TaskCheckpointer(str(d), _ID, every=1)
  _run_until(engine.Engine("probability", _MEMBERS, _CFG, progress=lambda _: None),
             probability_data, ckpt, stop_after=1)
  files = [f for f in (d / "1" / "arrays").rglob("*") if f.is_file()]
  assert files
  for f in files:                      # a disk that lost the arrays' contents
    f.write_bytes(b"not a checkpoint")
  again = checkpoint.TaskCheckpointer(str(d), _ID, every=1)
  with pytest.raises(checkpoint.CheckpointError, match=r"delete '.*checkpoints/p' to train this "
                     r"task again from its first epoch \(finished tasks' results are kept\)"):
    again.restore(engine.Engine("probability", _MEMBERS, _CFG))
  again.close()
  shutil.rmtree(d)                     # what the message says: the task starts over
  fresh = checkpoint.TaskCheckpointer(str(d), _ID, every=1)
  assert fresh.restore(engine.Engine("probability", _MEMBERS, _CFG)) is None
  fresh.close()


def test_identity_ignores_paths_and_names_differences():
  base = train.RunConfig(task="binary", seeds=2, data_dir="/a")
  same = train.run_identity(dataclasses.replace(base, data_dir="/b", tfds_dir="/c"))
  assert same == train.run_identity(base)
  other = dataclasses.replace(base, seeds=3,
                              engine=dataclasses.replace(base.engine, max_epochs=7))
  diffs = checkpoint.identity_differences(train.run_identity(base), train.run_identity(other))
  assert diffs == [("seeds", 2, 3), ("max_epochs", program.PROTOCOL.max_epochs, 7)]
  # TF32 computes other numbers: a run does not resume across precisions. A checkpoint
  # written before the field existed was float32 (the default fills it in).
  tf32 = dataclasses.replace(base, execution=dataclasses.replace(base.execution,
                                                                  matmul_precision="tensorfloat32"))
  assert checkpoint.identity_differences(train.run_identity(base), train.run_identity(tf32)) == [
      ("matmul_precision", "float32", "tensorfloat32")]
  old = {k: v for k, v in train.run_identity(base).items() if k != "matmul_precision"}
  defaults = train.run_identity(train.RunConfig())
  assert checkpoint.identity_differences(old, train.run_identity(base), defaults) == []


# -- the command line on real MNIST: kill -9 and resume -----------------------

_ARGS = ["--task=probability", "--head=sigmoid", "--loss=bce", "--seeds=2", "--max_epochs=4",
         "--patience=10", "--checkpoint_every=1", "--workdir=wd"]


def _env(tfds_dir):
  # PYTHONPATH: the CLI runs in other directories than the checkout.
  return dict(os.environ, JAXACT_TFDS_DIR=str(tfds_dir),
              PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def _cmd(mnist_dir, *extra):
  return [sys.executable, "-m", "jaxact.cli.main", *_ARGS, f"--data_dir={mnist_dir}", *extra]


def _cli(cwd, mnist_dir, tfds_dir, *extra, timeout=600):
  return subprocess.run(_cmd(mnist_dir, *extra), cwd=cwd, env=_env(tfds_dir),
                        capture_output=True, text=True, timeout=timeout)


def _without_wall_time(path: Path) -> dict:
  d = json.loads(path.read_text())
  d.pop("wall_time_s")
  return d


@pytest.fixture(scope="module")
def killed_and_resumed(mnist_dir, tfds_dir, tmp_path_factory):
  """Workdir A: uninterrupted. Workdir B: killed with SIGKILL after its first checkpoint, resumed.

  Both run the same command line (`--workdir=wd`, each in its own directory), so their results
  files may differ only in the wall time.
  """
  root = tmp_path_factory.mktemp("resume")
  a, b = root / "A", root / "B"
  a.mkdir()
  b.mkdir()
  # Prepare the tfds copy first, so the two concurrent runs do not both build it.
  from jaxact.data import mnist as data_lib  # pylint: disable=g-import-not-at-top
  data_lib.load_split(str(mnist_dir), 0, tfds_dir=str(tfds_dir))
  t0 = time.perf_counter()
  with open(b / "killed.log", "w") as log:
    victim = subprocess.Popen(_cmd(mnist_dir), cwd=b, env=_env(tfds_dir), stdout=log,
                              stderr=subprocess.STDOUT)
    ref = subprocess.Popen(_cmd(mnist_dir), cwd=a, env=_env(tfds_dir), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    ckpts = b / "wd" / "checkpoints" / "probability"
    deadline = time.monotonic() + 400
    while not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
      assert victim.poll() is None, (b / "killed.log").read_text()[-3000:]
      assert time.monotonic() < deadline, "no checkpoint appeared"
      time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(60) == -signal.SIGKILL
  assert not (b / "wd" / "results" / "probability.json").exists()
  left = sorted(p.name for p in ckpts.iterdir())
  ref_out, _ = ref.communicate(timeout=600)
  assert ref.returncode == 0, ref_out[-3000:]
  resumed = _cli(b, mnist_dir, tfds_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  return dict(a=a / "wd", b=b / "wd", left=left, resumed=resumed, ref_log=ref_out,
              seconds=time.perf_counter() - t0)


def test_killed_run_resumes_to_identical_results(killed_and_resumed):
  r = killed_and_resumed
  log = r["resumed"].stderr
  assert "resumed from epoch" in log
  k = int(log.split("resumed from epoch ")[1].split()[0])
  assert 0 < k < 4, log[-2000:]
  assert f"probability epoch {k + 1}:" in log and f"probability epoch {k}:" not in log
  assert "resumed from epoch" not in r["ref_log"]
  a = _without_wall_time(r["a"] / "results" / "probability.json")
  b = _without_wall_time(r["b"] / "results" / "probability.json")
  assert len(a["members"]) == 2 and a["members"][0]["epochs_trained"] == 4
  assert a["members"] == b["members"]
  assert a == b
  # The task's checkpoints (and any partial one the kill left) are gone once its results exist.
  assert not (r["b"] / "checkpoints").exists()
  run = json.loads((r["b"] / "run.json").read_text())
  killed, resumed = run["segments"]            # one per start, each with its revision
  assert killed["ended"] is None and "tasks" not in killed     # SIGKILL: no end recorded
  assert resumed["tasks"] == ["probability"] and resumed["ended"] == run["finished"]
  assert killed["git_revision"] == resumed["git_revision"] and run["started"] == killed["started"]
  print(f"kill + resume test: {r['seconds']:.1f} s; left after the kill: {r['left']}")


def test_finished_task_is_not_trained_again(killed_and_resumed, mnist_dir, tfds_dir):
  wd = killed_and_resumed["a"]
  results = wd / "results" / "probability.json"
  before, mtime = results.read_bytes(), results.stat().st_mtime_ns
  t0 = time.perf_counter()
  proc = _cli(wd.parent, mnist_dir, tfds_dir)
  seconds = time.perf_counter() - t0
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "task probability: already done" in proc.stderr
  assert "probability epoch" not in proc.stderr and "data: " not in proc.stderr
  assert "sigmoid + bce" in proc.stdout     # the table, from the kept results
  assert results.read_bytes() == before and results.stat().st_mtime_ns == mtime
  print(f"rerun of a finished workdir: {seconds:.1f} s")


def test_other_configuration_is_refused_until_restart(killed_and_resumed, mnist_dir, tfds_dir,
                                                      tmp_path):
  shutil.copytree(killed_and_resumed["a"], tmp_path / "wd")
  results = tmp_path / "wd" / "results" / "probability.json"
  before = results.read_bytes()
  proc = _cli(tmp_path, mnist_dir, tfds_dir, "--seeds=3")
  assert proc.returncode == 2
  assert "seeds: 2 before, 3 now" in proc.stderr and "--restart" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr   # one paragraph, no log
  assert results.read_bytes() == before
  (tmp_path / "mine.txt").write_text("not jaxact's")
  proc = _cli(tmp_path, mnist_dir, tfds_dir, "--seeds=3", "--max_epochs=1", "--restart")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "probability epoch 1:" in proc.stderr and "already done" not in proc.stderr
  saved = json.loads(results.read_text())
  assert sorted(m["seed"] for m in saved["members"]) == [0, 1, 2]
  assert (tmp_path / "mine.txt").exists()


def test_checkpoint_flag_is_validated(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "jaxact.cli.main", "--task=binary",
                         "--checkpoint_every=-1", f"--workdir={tmp_path}"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "--checkpoint_every must be 0" in proc.stderr and "Traceback" not in proc.stderr
