"""What a run shows while it trains: metrics.jsonl, TensorBoard, the progress line, the CSVs,
and the `jaxact` / `python -m jaxact` entry points."""

import collections
import csv
import functools
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxact.engine import labels as labels_lib
from jaxact.engine import engine
from jaxact.store import metrics_writer
from jaxact.engine import runner
from jaxact.model import cells as studies
from jaxact.data import tasks
from jaxact.study import train
from jaxact.store import workdir as workdir_lib
from jaxact.engine import program
from test_engine import _synthetic

REPO = Path(__file__).resolve().parents[1]
_FIELDS = {"task", "key", "label", "seed", "epoch", "train_loss", "valid_metric", "n_infinite",
           "trained", "status", "best_valid", "best_epoch", "wall_s", "spread", "head_saturated"}


def _lines(path: Path) -> list[dict]:
  return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def _events(path: Path) -> list:
  """The Event protos of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  data, out, i = path.read_bytes(), [], 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    out.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
    i += 12 + n + 4
  return out


def _scalars(run_dir: Path) -> dict[str, dict[int, float]]:
  """tag -> step -> value over the event files of one TensorBoard run directory."""
  out = collections.defaultdict(dict)
  for f in sorted(p for p in run_dir.iterdir() if p.name.startswith("events.")):
    for event in _events(f):
      for v in event.summary.value:
        out[v.tag][event.step] = v.simple_value
  return out


# -- the engine's on_epoch hook, on synthetic data -----------------------------

_CFG = program.EngineConfig(max_epochs=4, patience=1, batch_size=32)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
  """A multiclass grid (3 cells x 2 seeds) with MetricsLog and TensorBoardLog as on_epoch hooks.

  After every epoch the metrics file is read back (what a `tail -f` sees mid-run).
  """
  tmp = tmp_path_factory.mktemp("live")
  data = _synthetic("multiclass")
  cells = studies.select_cells("activation", "multiclass")["multiclass"]
  members = [(c, s) for c in cells for s in (0, 1)]
  lines, hosts, seen = [], [], []
  eng = engine.Engine("multiclass", members, _CFG, progress=lines.append)
  path = tmp / "metrics.jsonl"
  log = metrics_writer.MetricsLog(str(path), "multiclass", eng.members, _CFG, lambda: 1.5)
  tb = metrics_writer.TensorBoardLog(str(tmp / "tensorboard"), "multiclass", eng.members,
                                     per_member=True)

  def spy(epoch, host):
    hosts.append((epoch, host))
    seen.append(_lines(path))

  results = eng.run(data, on_epoch=metrics_writer.compose(log, None, tb, spy)).members
  log.close()
  tb.close()
  return dict(eng=eng, results=results, lines=lines, hosts=hosts, seen=seen, path=path,
              tmp=tmp)


def test_on_epoch_is_called_after_every_epoch_with_the_histories(synthetic_run):
  r = synthetic_run
  results = r["results"]
  n_epochs = max(m.epochs_trained for m in results)
  assert [e for e, _ in r["hosts"]] == list(range(1, n_epochs + 1))
  for i, m in enumerate(results):
    trained = [e for e, h in r["hosts"] if h["trained"][i]]
    assert len(trained) == m.epochs_trained
    np.testing.assert_allclose([r["hosts"][e - 1][1]["valid_metric"][i] for e in trained],
                               m.valid_metric, rtol=1e-6)
  last = r["hosts"][-1][1]
  assert not last["active"].any() or n_epochs == _CFG.max_epochs
  np.testing.assert_allclose(last["best_valid"], [m.best_valid for m in results], rtol=1e-6)
  assert list(last["best_epoch"]) == [m.best_epoch for m in results]
  assert last["eta_s"] == 0.0 and all(h["eta_s"] >= 0 for _, h in r["hosts"])


def test_metrics_lines_one_per_member_and_trained_epoch(synthetic_run):
  r = synthetic_run
  lines = _lines(r["path"])
  results = r["results"]
  assert len(lines) == sum(m.epochs_trained for m in results)
  assert all(set(l) == _FIELDS for l in lines)
  by_member = collections.defaultdict(list)
  for l in lines:
    by_member[(l["key"], l["seed"])].append(l)
  for m in results:
    mine = by_member[(m.cell.key, m.seed)]
    assert [l["epoch"] for l in mine] == list(range(1, m.epochs_trained + 1))
    assert all(l["trained"] and l["task"] == "multiclass" and l["wall_s"] == 1.5 for l in mine)
    assert mine[0]["label"] == labels_lib.cell_label(m.cell, _CFG)
    np.testing.assert_allclose([l["valid_metric"] for l in mine], m.valid_metric, rtol=1e-6)
    np.testing.assert_allclose([l["train_loss"] for l in mine], m.train_loss, rtol=1e-6)
    assert all(l["status"] == "training" for l in mine[:-1])
    assert mine[-1]["status"] == m.status
    assert mine[-1]["best_epoch"] == m.best_epoch + 1
    assert mine[-1]["best_valid"] == pytest.approx(m.best_valid, rel=1e-6)


def test_metrics_lines_are_on_disk_when_the_epoch_ends(synthetic_run):
  r = synthetic_run
  for (epoch, host), seen in zip(r["hosts"], r["seen"]):
    assert max(l["epoch"] for l in seen) == epoch
    assert sum(l["epoch"] == epoch for l in seen) == int(host["trained"].sum())


def test_progress_line_is_short_and_names_the_best_and_worst_cells(synthetic_run):
  r = synthetic_run
  results = r["results"]
  assert len(r["lines"]) == len(r["hosts"])
  for line in r["lines"]:
    assert len(line) < 300 and "/6 training" in line and "elapsed" in line
  means = {}
  for m in results:
    means.setdefault(labels_lib.cell_label(m.cell, _CFG), []).append(m.best_valid)
  means = {k: float(np.mean(v)) for k, v in means.items()}
  best, worst = max(means, key=means.get), min(means, key=means.get)
  last, n_active = r["lines"][-1], int(r["hosts"][-1][1]["active"].sum())
  assert last.startswith(f"multiclass epoch {len(r['hosts'])}: (cap 4) {n_active}/6 training;")
  assert f"best {best} {means[best]:.4g}" in last and f"worst {worst} {means[worst]:.4g}" in last
  assert "eta ~" in r["lines"][0] and "done;" in last


def test_progress_line_of_a_48_cell_grid():
  cells = studies.select_cells("hidden", "multiclass")["multiclass"][:48]
  members = [(c, s) for c in cells for s in range(10)]
  cfg = program.EngineConfig(max_epochs=100, patience=10)
  eng = engine.Engine("multiclass", members, cfg, progress=lambda _: None)
  m = len(eng.stacked_members)
  line_of = functools.partial(runner.progress_line, eng.task, cfg, eng.groups, eng.num_members)
  rng = np.random.default_rng(0)
  best = rng.uniform(0.1, 0.99, m).astype(np.float32)
  active = rng.uniform(size=m) < 0.5
  line = line_of(37, active, best, 3725.0, 1234.0)
  means = {labels_lib.cell_label(c, cfg): float(np.mean(best[a:b])) for c, a, b in eng.groups}
  hi, lo = max(means, key=means.get), min(means, key=means.get)
  assert len(line) < 300, line
  assert line.startswith(f"multiclass epoch 37: (cap 100) {int(active[:480].sum())}/480 training;")
  assert "elapsed 1h02m;" in line and "eta ~20m34s;" in line
  assert f"best {hi} {means[hi]:.4g}" in line and f"worst {lo} {means[lo]:.4g}" in line
  # Members without a best yet are left out; a grid without any says so.
  none = line_of(1, active, np.full(m, -np.inf, np.float32), 1.0, 2.0)
  assert none.endswith("mean best valid accuracy: none yet") and "eta ~2.0s;" in none


def _seconds(text: str) -> float:
  """The inverse of runner.format_duration ('5.5s', '49s', '16m40s', '1h02m')."""
  m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?", text)
  assert m and text, text
  h, mins, sec = (float(g) if g else 0.0 for g in m.groups())
  return 3600 * h + 60 * mins + sec


_EPOCH_LINE = re.compile(
    r"(\w+) epoch (\d+): \(cap (\d+)\) (\d+)/(\d+) training; elapsed (\S+); "
    r"(?:eta ~(\S+)|done); mean best valid \w+: (?:best (.+) ([\d.]+), worst (.+) ([\d.]+)"
    r"|(.+) ([\d.]+))")
_COMPILE_LINE = re.compile(r"task (\w+): compiling the program for (\d+) members?; "
                           r"run elapsed (\S+)")
_RUN_LINE = re.compile(r"run: (\d+)/(\d+) tasks done \(([\w, ]+)\); run elapsed (\S+); "
                       r"(?:all done|about (\S+) left for ([\w, ]+))")


def _epoch_line(m: re.Match) -> str:
  """runner.progress_line's output for the numbers of a documented epoch line."""
  task, epoch, cap, n_active, r = m.group(1), *map(int, m.groups()[1:5])
  cfg = program.EngineConfig(max_epochs=cap)
  labels = [g for g in (m.group(8), m.group(10), m.group(12)) if g]
  values = [float(g) for g in (m.group(9), m.group(11), m.group(13)) if g]
  by_label = {labels_lib.cell_label(c, cfg): c
              for c in studies.select_cells("all", task, conventions=("torch", "logits"))[task]}
  per_cell = r // len(labels)
  groups = [(by_label[l], i * per_cell, (i + 1) * per_cell) for i, l in enumerate(labels)]
  best = np.repeat(np.asarray(values, np.float32), per_cell)
  active = np.arange(r) < n_active
  eta = _seconds(m.group(7)) if m.group(7) else 0.0
  return runner.progress_line(tasks.get_task(task), cfg, groups, r, epoch, active, best,
                              _seconds(m.group(6)), eta)


def test_running_md_progress_lines_are_what_the_code_prints():
  text = (REPO / "docs" / "running.md").read_text(encoding="utf-8")
  block = text.split("<!-- progress-lines:begin -->", 1)[1].split("<!-- progress-lines:end -->")[0]
  lines = [l for l in block.splitlines() if l and not l.startswith("```")]
  kinds = collections.Counter()
  for line in lines:
    if m := _EPOCH_LINE.fullmatch(line):
      kinds["epoch"] += 1
      assert _epoch_line(m) == line
    elif m := _COMPILE_LINE.fullmatch(line):
      kinds["compile"] += 1
      assert train.compile_line(m.group(1), int(m.group(2)), _seconds(m.group(3))) == line
    elif m := _RUN_LINE.fullmatch(line):
      kinds["run"] += 1
      done, pending = m.group(3).split(", "), (m.group(6) or "").split(", ") if m.group(6) else []
      assert len(done) == int(m.group(1)) and len(done) + len(pending) == int(m.group(2))
      left = _seconds(m.group(5)) if m.group(5) else None
      assert train.run_line(done, pending, _seconds(m.group(4)), left) == line
    else:
      raise AssertionError(f"docs/running.md shows a line no code prints: {line!r}")
  # Each kind of line is shown, the epoch lines with one and with several cells.
  assert kinds["epoch"] >= 2 and kinds["compile"] >= 1 and kinds["run"] >= 2, kinds


def test_tensorboard_scalars_per_cell_and_member(synthetic_run):
  r = synthetic_run
  root = r["tmp"] / "tensorboard"
  results = r["results"]
  for cell in dict.fromkeys(m.cell for m in results):
    run_dir = root.joinpath(*cell.key.split("/"))
    files = [p for p in run_dir.iterdir() if p.name.startswith("events.")]
    assert len(files) == 1 and files[0].stat().st_size > 0
    scalars = _scalars(run_dir)
    mine = [m for m in results if m.cell == cell]
    n = max(m.epochs_trained for m in mine)
    assert sorted(scalars["valid/accuracy"]) == list(range(1, n + 1))
    for epoch in range(1, n + 1):
      values = [m.valid_metric[epoch - 1] for m in mine if m.epochs_trained >= epoch]
      assert scalars["valid/accuracy"][epoch] == pytest.approx(np.mean(values), rel=1e-5)
      assert scalars["train/members_training"][epoch] == len(values)
    for m in mine:
      per_seed = scalars[f"valid_by_seed/seed_{m.seed}"]
      assert [per_seed[e] for e in sorted(per_seed)] == pytest.approx(m.valid_metric, rel=1e-6)
      assert f"train_loss_by_seed/seed_{m.seed}" in scalars
    # The purge event that makes TensorBoard drop an interrupted session's later steps.
    first = [e for e in _events(files[0]) if e.HasField("session_log")]
    assert [e.step for e in first] == [1]


def test_drop_task_lines_keeps_other_tasks_and_drops_partial_lines(tmp_path):
  path = tmp_path / "metrics.jsonl"
  recs = [{"task": t, "key": "k", "seed": 0, "epoch": e} for t in ("binary", "multiclass")
          for e in (1, 2, 3)]
  path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"task": "multic')
  assert metrics_writer.drop_task_lines(str(path), "multiclass", 1) == 3
  assert [(l["task"], l["epoch"]) for l in _lines(path)] == [
      ("binary", 1), ("binary", 2), ("binary", 3), ("multiclass", 1)]
  before = path.stat().st_mtime_ns
  assert metrics_writer.drop_task_lines(str(path), "multiclass", 1) == 0
  assert path.stat().st_mtime_ns == before              # nothing to drop: not rewritten
  assert metrics_writer.drop_task_lines(str(path), "binary", 0) == 3
  assert metrics_writer.drop_task_lines(str(tmp_path / "absent.jsonl"), "binary", 0) == 0


def test_progress_bar_only_at_a_terminal(monkeypatch):
  assert not metrics_writer.ProgressBar.wanted()       # pytest captures stderr

  class Tty(io.StringIO):
    def isatty(self):
      return True

  fake = Tty()
  monkeypatch.setattr(sys, "stderr", fake)
  assert metrics_writer.ProgressBar.wanted()
  bar = metrics_writer.ProgressBar("binary", 100, 3, 6)
  bar(4, dict(active=np.array([True, False] * 3), eta_s=75.0))
  bar.close()
  assert "binary" in fake.getvalue() and "3/6 training, eta ~01:15" in fake.getvalue()


def test_run_csv_concatenates_tasks_in_order(tmp_path):
  (tmp_path / "results").mkdir()
  for task, metric in (("regression", "mse"), ("binary", "accuracy")):
    cell = studies.select_cells("activation", task)[task][0]
    member = {"cell": cell.to_dict(), "key": cell.key, "label": cell.label, "seed": 3,
              "best_valid": float("nan") if task == "regression" else 0.5, "test": 0.25,
              "best_epoch": -1 if task == "regression" else 4, "epochs_trained": 9,
              "status": "ok", "status_reason": None,
              "diagnosis": {"kind": "learned", "evidence": "x, y"}}
    (tmp_path / "results" / f"{task}.json").write_text(json.dumps(
        {"task": task, "metric_name": metric, "members": [member]}))
  path = metrics_writer.write_run_csv(str(tmp_path))
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["task"] for r in rows] == ["regression", "binary"]   # tasks.TASKS order
  assert rows[0]["best_valid"] == "" and rows[0]["best_epoch"] == ""
  assert rows[1]["best_valid"] == "0.5" and rows[1]["best_epoch"] == "5"
  assert rows[1]["metric"] == "accuracy" and rows[1]["diagnosis"] == "learned"
  assert rows[1]["stopping"] == "early_stopped"            # the file's "ok"
  assert list(rows[0]) == list(metrics_writer.CSV_COLUMNS)
  assert metrics_writer.CSV_COLUMNS.index("diagnosis") < metrics_writer.CSV_COLUMNS.index(
      "best_valid")


# -- train_and_evaluate on real MNIST ------------------------------------------


class _Stop(Exception):
  pass


def _config(mnist_dir, tfds_dir):
  return train.RunConfig(
      study="activation", task="probability", head="sigmoid", loss="bce", seeds=2,
      data_dir=str(mnist_dir), tfds_dir=str(tfds_dir),
      engine=program.EngineConfig(max_epochs=3, patience=10))


def _spying_run(original, workdir: Path, seen: list, stop_at: int | None = None):
  """An Engine.run whose on_epoch hook also records the lines of workdir/metrics.jsonl after
  each epoch, and raises _Stop after epoch `stop_at`."""
  def run(self, data, restore=None, on_epoch_end=None, on_epoch=None):
    def spy(epoch, host):
      on_epoch(epoch, host)
      seen.append((epoch, _lines(workdir / "metrics.jsonl")))
      if epoch == stop_at:
        raise _Stop
    return original(self, data, restore=restore, on_epoch_end=on_epoch_end, on_epoch=spy)
  return run


@pytest.fixture(scope="module")
def mnist_runs(mnist_dir, tfds_dir, tmp_path_factory):
  """A: one uninterrupted run. B: the same run stopped after epoch 2 (its checkpoint of
  epoch 1 saved, its lines of epoch 2 written), then resumed."""
  root = tmp_path_factory.mktemp("live_mnist")
  out = {}
  original = engine.Engine.run
  with pytest.MonkeyPatch.context() as mp:
    for name, stop_at in (("a", None), ("b", 2)):
      seen = []
      mp.setattr(engine.Engine, "run", _spying_run(original, root / name, seen, stop_at))
      kwargs = dict(command=["jaxact", "--test"], checkpoint_every=1, tensorboard=True)
      if stop_at is None:
        results = train.train_and_evaluate(_config(mnist_dir, tfds_dir), str(root / name),
                                           **kwargs)
      else:
        with pytest.raises(_Stop):
          train.train_and_evaluate(_config(mnist_dir, tfds_dir), str(root / name), **kwargs)
        out["b_stopped"] = _lines(root / name / "metrics.jsonl")
        mp.setattr(engine.Engine, "run", _spying_run(original, root / name, seen))
        results = train.train_and_evaluate(_config(mnist_dir, tfds_dir), str(root / name),
                                           **kwargs)
      out[name] = dict(workdir=root / name, results=results, seen=seen)
  return out


def _without_wall(lines):
  return [{k: v for k, v in l.items() if k != "wall_s"} for l in lines]


def test_train_and_evaluate_writes_metrics_while_training(mnist_runs):
  a = mnist_runs["a"]
  lines = _lines(a["workdir"] / "metrics.jsonl")
  assert len(lines) == 2 * 3 and all(set(l) == _FIELDS for l in lines)
  assert [(l["seed"], l["epoch"]) for l in lines] == [(s, e) for e in (1, 2, 3) for s in (0, 1)]
  assert [l["status"] for l in lines] == ["training"] * 4 + ["hit_cap"] * 2
  assert all(l["key"] == "probability/sigmoid+bce" and l["label"] == "sigmoid + bce"
             for l in lines)
  walls = [l["wall_s"] for l in lines]
  assert walls == sorted(walls) and walls[0] > 0
  # Mid-run, each epoch's lines are already in the file when the next epoch starts.
  assert [(e, len(seen)) for e, seen in a["seen"]] == [(1, 2), (2, 4), (3, 6)]
  for r in a["results"]["probability"]:
    mine = [l for l in lines if l["seed"] == r.seed]
    assert [l["valid_metric"] for l in mine] == pytest.approx(r.valid_metric, rel=1e-6)


def test_resumed_run_has_no_duplicate_lines(mnist_runs):
  a, b = mnist_runs["a"], mnist_runs["b"]
  stopped = mnist_runs["b_stopped"]
  assert max(l["epoch"] for l in stopped) == 2            # epoch 2 was written, not checkpointed
  lines = _lines(b["workdir"] / "metrics.jsonl")
  ids = [(l["task"], l["key"], l["seed"], l["epoch"]) for l in lines]
  assert len(ids) == len(set(ids)) == 6
  # The resumed session trained epochs 2 and 3 again, to the same numbers.
  assert [e for e, _ in b["seen"]] == [1, 2, 2, 3]
  assert _without_wall(lines) == _without_wall(_lines(a["workdir"] / "metrics.jsonl"))


def test_tensorboard_runs_of_a_resumed_task(mnist_runs):
  b = mnist_runs["b"]
  run_dir = b["workdir"] / "tensorboard" / "probability" / "sigmoid+bce"
  files = sorted(p for p in run_dir.iterdir() if p.name.startswith("events."))
  assert len(files) == 2 and all(f.stat().st_size > 0 for f in files)
  purges = [[e.step for e in _events(f) if e.HasField("session_log")] for f in files]
  assert sorted(purges) == [[1], [2]]                     # fresh, then resumed after epoch 1
  assert sorted(_scalars(run_dir)["valid/accuracy"]) == [1, 2, 3]


def test_tensorboard_hparams_of_a_finished_task(mnist_runs):
  a = mnist_runs["a"]
  hparams_dir = a["workdir"] / "tensorboard" / "probability" / "sigmoid+bce" / "hparams"
  events = [e for f in sorted(hparams_dir.iterdir()) if f.name.startswith("events.")
            for e in _events(f)]
  plugins = {v.metadata.plugin_data.plugin_name for e in events for v in e.summary.value}
  assert "hparams" in plugins                       # what TensorBoard's HPARAMS tab reads
  scalars = _scalars(hparams_dir)
  results = a["results"]["probability"]
  assert list(scalars["hparam/members"].values()) == [len(results)]
  assert list(scalars["hparam/test_accuracy"].values()) == pytest.approx(
      [np.mean([r.test for r in results])], rel=1e-6)
  assert list(scalars["hparam/best_valid_accuracy"].values()) == pytest.approx(
      [np.mean([r.best_valid for r in results])], rel=1e-6)
  # The hyper-parameters: the cell's fields and the training options, by name.
  text = b"".join(f.read_bytes() for f in hparams_dir.iterdir())
  for name in (b"head", b"loss", b"optimizer", b"learning_rate", b"batch_size"):
    assert name in text


def test_results_csv_match_the_json(mnist_runs):
  wd = mnist_runs["a"]["workdir"]
  saved = json.loads((wd / "results" / "probability.json").read_text())
  with open(wd / "results" / "probability.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  with open(wd / "results.csv", newline="") as f:
    assert list(csv.DictReader(f)) == rows               # the only finished task
  assert len(rows) == len(saved["members"]) == 2
  for row, m in zip(rows, saved["members"]):
    assert row["task"] == "probability" and row["metric"] == saved["metric_name"]
    assert (row["key"], row["label"], int(row["seed"])) == (m["key"], m["label"], m["seed"])
    for k in ("head", "loss", "convention", "init", "hidden"):
      assert row[k] == str(m["cell"][k])
    assert row["norm"] == str(m["cell"]["norm"]) and int(row["depth"]) == m["cell"]["depth"]
    assert float(row["best_valid"]) == m["best_valid"] and float(row["test"]) == m["test"]
    assert int(row["best_epoch"]) == m["best_epoch"] + 1
    assert int(row["epochs_trained"]) == m["epochs_trained"]
    assert row["stopping"] == {"ok": "early_stopped"}.get(m["status"], m["status"]) != "ok"
    assert row["diagnosis"] == m["diagnosis"]["kind"]


def test_restart_removes_the_live_outputs(mnist_runs, tmp_path):
  wd = tmp_path / "wd"
  shutil.copytree(mnist_runs["a"]["workdir"], wd)
  workdir_lib.remove_run_outputs(str(wd))
  assert not (wd / "metrics.jsonl").exists() and not (wd / "results.csv").exists()
  assert not (wd / "tensorboard").exists() and not list((wd / "results").iterdir())


# -- flags and entry points ----------------------------------------------------


def test_tensorboard_without_tensorboardx_stops_before_training(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)     # import tensorboardX fails
  config = train.RunConfig(task="binary", head="sigmoid", loss="bce", seeds=1)
  with pytest.raises(train.UserError) as err:
    train.train_and_evaluate(config, str(tmp_path / "wd"), tensorboard=True)
  message = str(err.value)
  assert "tensorboardX" in message and "pip install 'jaxact[tensorboard]'" in message
  assert "\n" not in message and not (tmp_path / "wd").exists()
  with pytest.raises(train.UserError, match="add --tensorboard"):
    train.train_and_evaluate(config, str(tmp_path / "wd"), tensorboard_members=True)


def _env(prepend=()):
  return dict(os.environ, PYTHONPATH=os.pathsep.join(
      [*prepend, str(REPO), os.environ.get("PYTHONPATH", "")]))


def test_cli_tensorboard_without_tensorboardx(tmp_path):
  blocker = tmp_path / "blocker"
  (blocker / "tensorboardX").mkdir(parents=True)
  (blocker / "tensorboardX" / "__init__.py").write_text("raise ImportError('blocked')\n")
  proc = subprocess.run([sys.executable, "-m", "jaxact", "--task=binary", "--tensorboard",
                         f"--workdir={tmp_path / 'wd'}"], cwd=tmp_path,
                        env=_env(prepend=[str(blocker)]), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "pip install 'jaxact[tensorboard]'" in proc.stderr and "Traceback" not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert not (tmp_path / "wd").exists()


def test_python_dash_m_jaxact(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "jaxact", "--task=ranking"], cwd=tmp_path,
                        env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "unknown --task 'ranking'" in proc.stderr and "Traceback" not in proc.stderr
  helps = [subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
           for module in ("jaxact", "jaxact.cli.main")]
  assert helps[0].returncode == helps[1].returncode      # absl's --help exits with 1
  assert "jaxact command line" in helps[0].stdout and "--tensorboard" in helps[0].stdout
  flag_lines = [[l for l in h.stdout.splitlines() if l.lstrip().startswith("--")] for h in helps]
  assert flag_lines[0] == flag_lines[1] and len(flag_lines[0]) > 30


def test_console_script(tmp_path):
  script = shutil.which("jaxact") or shutil.which("jaxact", path=os.path.dirname(sys.executable))
  if script is None:
    pytest.skip("the jaxact console script is not installed: pip install -e .")
  proc = subprocess.run([script, "--task=ranking"], cwd=tmp_path, env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "unknown --task 'ranking'" in proc.stderr and "Traceback" not in proc.stderr
