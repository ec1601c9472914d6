"""What a run writes while it trains, and its results as CSV (host side, plain Python).

Files in the workdir (only process 0 writes them):
  metrics.jsonl           one JSON line per member and trained epoch, appended and
                          flushed after every epoch (`MetricsLog`)
  tensorboard/<cell key>/ with --tensorboard: TensorBoard event files, one run per
                          cell (`TensorBoardLog`)
  results/<task>.csv      one row per member, beside results/<task>.json (`write_task_csv`)
  results.csv             the rows of every finished task (`write_run_csv`)

Resuming never duplicates a line of metrics.jsonl: before a task trains from
epoch k (0: from scratch), its lines of later epochs are dropped
(`drop_task_lines`), and TensorBoard is told to discard that task's events
from step k + 1 on (an event file with a purge step, as
tensorboardX.SummaryWriter(purge_step=...) writes it). A fresh run (a
workdir without results or checkpoints) and --restart delete these files first
(`remove_live_outputs`).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Callable, Sequence

from jaxact.engine import labels as labels_lib
from jaxact.store import files
from jaxact.store import records
from jaxact.model import cells as studies
from jaxact.data import tasks as tasks_lib
from jaxact.engine import program as program_lib
from jaxact.engine import runner as runner_lib

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
RUN_CSV = "results.csv"
TENSORBOARD_INSTALL = "pip install 'jaxact[tensorboard]'"

# The scalar diagnostics a metrics line carries (engine.Engine.diagnostic_shapes).
LINE_DIAGNOSTICS = ("spread", "head_saturated")

# The diagnosis (what the member learned: healthy, collapsed, ...) comes before the metrics;
# "stopping" says how training ended (early_stopped, hit_cap, nonfinite, invalid), never "ok",
# which a failed member that stopped early would otherwise read.
CSV_COLUMNS = ("task", "metric", "key", "label", "head", "loss", "convention", "norm",
               "sigmoid_method", "init", "hidden", "batch_norm", "depth", "seed",
               "diagnosis", "best_valid", "test", "best_epoch", "epochs_trained", "stopping",
               "status_reason")
_STOPPING = {"ok": "early_stopped"}   # the results file's status -> the CSV's stopping

EpochCallback = Callable[[int, dict[str, Any]], None]

_EVENT_FILES = itertools.count()


def _number(x, digits: int = 7) -> float | None:
  """`x` as a float to `digits` significant digits (float32 holds about 7); None if not finite."""
  x = float(x)
  return float(f"{x:.{digits}g}") if math.isfinite(x) else None


def _status_name(code: int, active: bool, epoch: int, max_epochs: int) -> str:
  if active and epoch >= max_epochs:
    return "hit_cap"
  return program_lib.Status(int(code)).name.lower()


# -- metrics.jsonl -------------------------------------------------------------


def drop_task_lines(path: str, task: str, after_epoch: int) -> int:
  """Removes `task`'s lines with epoch > `after_epoch` from a metrics file; returns how many.

  Also removes lines that are not complete JSON objects (what a process
  killed in the middle of a write leaves). The file is rewritten atomically,
  and only if a line goes: a reader following it with `tail -F` sees it
  replaced, one with `tail -f` should be restarted.
  """
  if not os.path.exists(path):
    return 0
  keep, dropped = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line) if line.endswith("\n") else None
      except ValueError:
        record = None
      if not isinstance(record, dict) or (
          record.get("task") == task and int(record.get("epoch") or 0) > after_epoch):
        dropped += 1
      else:
        keep.append(line)
  if dropped:
    files.atomic_write(path, lambda f: f.writelines(keep))
  return dropped


class MetricsLog:
  """`Engine.run`'s on_epoch hook that appends a task's lines to WORKDIR/metrics.jsonl.

  One line per member that trained in the epoch, e.g.
    {"task": "binary", "key": "binary/sigmoid+bce", "label": "sigmoid + bce",
     "seed": 0, "epoch": 3, "train_loss": 0.2113, "valid_metric": 0.9405,
     "n_infinite": 0, "trained": true, "status": "training", "best_valid": 0.9405,
     "best_epoch": 3, "wall_s": 41.2, "spread": 0.93, "head_saturated": 0.0}
  epoch and best_epoch are 1-based; status is the member's so far (training,
  ok, invalid, nonfinite, or hit_cap in the last epoch of the cap); wall_s
  the seconds since the task started (its compilation and the earlier
  runs of a resumed task included); non-finite numbers are null. The file is flushed after every
  epoch, so `tail -f` or `pandas.read_json(path, lines=True)` see it grow.
  """

  def __init__(self, path: str, task: str, members: Sequence[tuple[studies.Cell, int]],
               config: program_lib.EngineConfig, clock: Callable[[], float]):
    """Opens `path` for appending.

    Args:
      path: the metrics file.
      task: the task's name.
      members: the engine's members (cell, seed), in its order.
      config: the engine's training configuration (labels, the epoch cap).
      clock: seconds since the task started.
    """
    self.task, self.config, self.clock = task, config, clock
    self._ids = [(cell.key, labels_lib.cell_label(cell, config), int(seed))
                 for cell, seed in members]
    self._file = open(path, "a", encoding="utf-8")

  def __call__(self, epoch: int, host: dict[str, Any]) -> None:
    wall = round(self.clock(), 2)
    lines = []
    for i, (key, label, seed) in enumerate(self._ids):
      if not host["trained"][i]:
        continue
      best_epoch = int(host["best_epoch"][i])
      record = {
          "task": self.task, "key": key, "label": label, "seed": seed, "epoch": epoch,
          "train_loss": _number(host["train_loss"][i]),
          "valid_metric": _number(host["valid_metric"][i]),
          "n_infinite": int(host["n_infinite"][i]), "trained": True,
          "status": _status_name(host["status"][i], host["active"][i], epoch,
                                 self.config.max_epochs),
          "best_valid": _number(host["best_valid"][i]),
          "best_epoch": best_epoch + 1 if best_epoch >= 0 else None,
          "wall_s": wall}
      for name in LINE_DIAGNOSTICS:
        if name in host.get("diag", {}):
          record[name] = _number(host["diag"][name][i], 4)
      lines.append(json.dumps(record) + "\n")
    self._file.writelines(lines)
    self._file.flush()

  def close(self) -> None:
    self._file.close()


# -- TensorBoard ---------------------------------------------------------------


def tensorboard_available() -> bool:
  """Whether tensorboardX can be imported."""
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  del tensorboardX   # imported only to see that it can be
  return True


class TensorBoardLog:
  """`Engine.run`'s on_epoch hook writing TensorBoard scalars under WORKDIR/tensorboard/.

  One TensorBoard run per cell, in tensorboard/<cell key>/ (e.g.
  tensorboard/binary/sigmoid+bce), so that TensorBoard overlays the cells of
  a task in one chart per tag. Tags, at step = epoch (1-based), over the
  cell's members that trained in the epoch:
    valid/<metric>           mean valid metric (finite values only)
    train/loss               mean training loss (finite values only)
    train/members_training   how many of them trained
  and with `members`, per member: valid_by_seed/seed_<seed> and
  train_loss_by_seed/seed_<seed>. When the task ends, `write_hparams` adds
  each cell's choices and final means for TensorBoard's HPARAMS tab.

  Written through tensorboardX's `SummaryWriter`, one per cell, flushed
  every epoch. Each one starts its event file with a purge event at
  `start_epoch + 1` (`SummaryWriter(purge_step=...)`), which makes
  TensorBoard discard the events of later steps an interrupted run had
  written.
  """

  def __init__(self, logdir: str, task: str, members: Sequence[tuple[studies.Cell, int]],
               start_epoch: int = 0, per_member: bool = False):
    """Creates one SummaryWriter (one event file) per cell.

    Args:
      logdir: WORKDIR/tensorboard.
      task: the task's name.
      members: the engine's members (cell, seed), in its order.
      start_epoch: the epochs already done (a restored checkpoint's), 0 for a fresh task.
      per_member: also write each member's scalars.
    """
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self.metric = tasks_lib.get_task(task).metric_name
    self.per_member = per_member
    cells = list(dict.fromkeys(c for c, _ in members))
    self._rows = {c: [i for i, (c2, _) in enumerate(members) if c2 == c] for c in cells}
    self._seeds = [int(s) for _, s in members]
    self._writers = {}
    # Event file names hold the time in whole seconds and the host; the suffix
    # keeps a resumed run's file apart from one written in the same second.
    suffix = f".{os.getpid()}.{next(_EVENT_FILES)}.jaxact"
    for cell in cells:
      self._writers[cell] = SummaryWriter(
          logdir=os.path.join(logdir, *cell.key.split("/")), purge_step=start_epoch + 1,
          filename_suffix=suffix)

  def __call__(self, epoch: int, host: dict[str, Any]) -> None:
    wall = time.time()
    for cell, rows in self._rows.items():
      writer = self._writers[cell]
      trained = [i for i in rows if host["trained"][i]]
      if not trained:
        continue
      writer.add_scalar("train/members_training", len(trained), epoch, walltime=wall)
      for tag, name in ((f"valid/{self.metric}", "valid_metric"), ("train/loss", "train_loss")):
        values = [float(host[name][i]) for i in trained if math.isfinite(host[name][i])]
        if values:
          writer.add_scalar(tag, sum(values) / len(values), epoch, walltime=wall)
      if self.per_member:
        for i in trained:
          for tag, name in (("valid_by_seed", "valid_metric"),
                            ("train_loss_by_seed", "train_loss")):
            if math.isfinite(host[name][i]):
              writer.add_scalar(f"{tag}/seed_{self._seeds[i]}", float(host[name][i]), epoch,
                                walltime=wall)
      writer.flush()

  def write_hparams(self, results: Sequence[runner_lib.MemberResult],
                    training: dict[str, Any]) -> None:
    """Adds each cell's hyper-parameters and final means (HPARAMS tab), once its task ended.

    Hyper-parameters: the cell's fields (head, loss, convention, network, ...)
    and `training` (runner.training_record: optimizer, learning rate, ...);
    metrics: hparam/best_valid_<metric> and hparam/test_<metric>, means over
    the cell's members with a finite value, and hparam/members. tensorboardX
    writes them into a run of their own, tensorboard/<cell key>/hparams.
    """
    for cell, rows in self._rows.items():
      params = {k: v for k, v in {**cell.to_dict(), **training}.items()
                if isinstance(v, (bool, str, int, float))}
      mine = [results[i] for i in rows]
      metrics = {"hparam/members": float(len(mine))}
      for name, attr in ((f"best_valid_{self.metric}", "best_valid"),
                         (f"test_{self.metric}", "test")):
        values = [float(getattr(m, attr)) for m in mine if math.isfinite(getattr(m, attr))]
        if values:
          metrics[f"hparam/{name}"] = sum(values) / len(values)
      self._writers[cell].add_hparams(params, metrics, name="hparams")

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers = {}


# -- the progress bar ----------------------------------------------------------


class ProgressBar:
  """A tqdm bar over a task's epochs, for a person at a terminal or in a notebook.

  `log(line)` logs a progress line through absl without tearing the bar
  (tqdm's external_write_mode); as the engine's `on_epoch` hook the bar
  advances and shows the members training and the engine's ETA estimate.
  """

  def __init__(self, task: str, max_epochs: int, start_epoch: int, n_members: int):
    from tqdm import auto as tqdm  # a widget in a notebook  # pylint: disable=g-import-not-at-top
    self.n_members = n_members
    self._bar = tqdm.tqdm(
        total=max_epochs, initial=start_epoch, desc=task, unit="epoch", file=sys.stderr,
        dynamic_ncols=True, leave=False,
        # tqdm's own estimate would assume every epoch up to the cap is run.
        bar_format="{desc}: {n_fmt}/{total_fmt} epochs |{bar}| {elapsed}{postfix}")

  @staticmethod
  def wanted() -> bool:
    """Whether to show a bar: in a Jupyter kernel (Colab) or where stderr is a terminal (never
    in tests, CI or a log file)."""
    if "ipykernel" in sys.modules:
      return True
    try:
      return sys.stderr.isatty()
    except (AttributeError, ValueError):
      return False

  def log(self, line: str) -> None:
    from absl import logging  # pylint: disable=g-import-not-at-top
    with self._bar.external_write_mode():
      logging.info(line)

  def __call__(self, epoch: int, host: dict[str, Any]) -> None:
    n = int(host["active"].sum())
    eta = f", eta ~{self._bar.format_interval(host['eta_s'])}" if n else ""
    self._bar.set_postfix_str(f"{n}/{self.n_members} training{eta}", refresh=False)
    self._bar.update(epoch - self._bar.n)
    self._bar.refresh()      # update() redraws at most every 0.1 s; an epoch is one event

  def close(self) -> None:
    self._bar.close()


def compose(*hooks: EpochCallback | None) -> EpochCallback | None:
  """One on_epoch hook calling each of `hooks` (None ones left out) in order; None if none."""
  hooks = tuple(h for h in hooks if h is not None)
  if not hooks:
    return None

  def call(epoch: int, host: dict[str, Any]) -> None:
    for hook in hooks:
      hook(epoch, host)
  return call


# -- results as CSV ------------------------------------------------------------


def _cell_value(v) -> Any:
  if isinstance(v, float):
    return repr(v) if math.isfinite(v) else ""
  return "" if v is None else v


def csv_rows(result: records.TaskResults) -> list[dict[str, Any]]:
  """The CSV rows (CSV_COLUMNS) of a task's results, one per member.

  best_epoch is 1-based ('' when the member never had a finite valid
  metric); non-finite numbers are ''; diagnosis is the stored diagnosis's kind;
  stopping is the status, "ok" written as "early_stopped".
  """
  rows = []
  for m in result.members:
    cell = m.cell.to_dict()
    best_epoch = m.best_epoch
    row = {
        "task": result.task, "metric": result.metric_name, "key": m.key, "label": m.label,
        **{k: cell.get(k) for k in ("head", "loss", "convention", "norm", "sigmoid_method",
                                    "init", "hidden", "batch_norm", "depth")},
        "seed": m.seed, "best_valid": m.best_valid, "test": m.test,
        "best_epoch": best_epoch + 1 if isinstance(best_epoch, int) and best_epoch >= 0 else None,
        "epochs_trained": m.epochs_trained,
        "stopping": _STOPPING.get(m.status, m.status),
        "status_reason": m.status_reason,
        "diagnosis": m.diagnosis.kind if m.diagnosis is not None else None,
    }
    rows.append({k: _cell_value(row[k]) for k in CSV_COLUMNS})
  return rows


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
  def write(f):
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  files.atomic_write(path, write)


def write_task_csv(json_path: str) -> str:
  """Writes results/<task>.csv beside results/<task>.json (atomically); returns its path."""
  path = os.path.splitext(json_path)[0] + ".csv"
  _write_csv(path, csv_rows(records.read_task_results(json_path)))
  return path


def write_run_csv(workdir: str) -> str:
  """Writes WORKDIR/results.csv: the rows of every results/<task>.json, in tasks.TASKS order."""
  rows = []
  for task in tasks_lib.TASKS:
    path = os.path.join(workdir, "results", f"{task}.json")
    if not os.path.exists(path):
      continue
    try:
      rows += csv_rows(records.read_task_results(path, task))
    except (OSError, ValueError):
      continue
  out = os.path.join(workdir, RUN_CSV)
  _write_csv(out, rows)
  return out


def remove_live_outputs(workdir: str) -> None:
  """Deletes metrics.jsonl, results.csv, results/*.csv and tensorboard/ (a fresh start)."""
  for name in (METRICS_FILE, RUN_CSV):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      os.unlink(path)
  results = os.path.join(workdir, "results")
  for name in os.listdir(results) if os.path.isdir(results) else ():
    if name.endswith(".csv"):
      os.unlink(os.path.join(results, name))
  shutil.rmtree(os.path.join(workdir, TENSORBOARD_DIR), ignore_errors=True)
