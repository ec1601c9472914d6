"""A run's workdir: its layout, what a rerun finds there, and the finished tasks it reuses.

Layout of a workdir:
  run.json               the command, the configuration, start/finish times, and one segment
                         per start (revision, versions, machine: jaxact.store.provenance)
  results/<task>.json    one record per member (cell x seed), written as soon as the task ends
                         (jaxact.store.records: the format, its writer and its reader)
  results/<task>.csv     the same members, one CSV row each (jaxact.store.metrics_writer.CSV_COLUMNS)
  results.csv            the rows of every finished task, rewritten after each task
  metrics.jsonl          one JSON line per member and epoch, appended while a task trains
  tensorboard/<cell key>/  with tensorboard=True: TensorBoard event files, one run per cell
  checkpoints/<task>/    orbax checkpoints of the task still training (deleted when it ends)
  report.md              the tables (jaxact.report), rebuilt after every task
  curves_<task>.png      valid-metric curves per cell

jaxact.study.train writes these through this module (and jaxact.store.records,
jaxact.store.checkpoint, jaxact.store.metrics_writer, jaxact.report). With several processes (multi-host,
`--distributed`), only process 0 writes files (`write_json_atomic`); the
workdir must be on a file system all hosts see.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from jaxact.errors import UserError
from jaxact.store import checkpoint as checkpoint_lib
from jaxact.engine import runner as runner_lib
from jaxact.store import files
from jaxact.store import metrics_writer
from jaxact.store import records as records_lib
from jaxact.engine import sharding
from jaxact.model import cells as studies
from jaxact.data import tasks as tasks_lib

RUN_JSON = "run.json"
RESULTS_DIR = records_lib.RESULTS_DIR



def run_json_path(workdir: str) -> str:
  return os.path.join(workdir, RUN_JSON)


def results_dir(workdir: str) -> str:
  return os.path.join(workdir, RESULTS_DIR)


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(workdir, checkpoint_lib.CHECKPOINTS_DIR)


task_results_path = records_lib.task_results_path
saved_results = records_lib.saved_results


def has_outputs(workdir: str) -> bool:
  """Whether the workdir holds results or checkpoints of an earlier run."""
  ckpt = checkpoints_dir(workdir)
  return bool(saved_results(workdir)) or (os.path.isdir(ckpt) and bool(os.listdir(ckpt)))


def write_json_atomic(path: str, obj) -> None:
  """`files.write_json_atomic` on process 0 (with several processes the others return at once)."""
  if not sharding.is_primary():
    return
  files.write_json_atomic(path, obj)


def prepare_workdir(workdir: str) -> None:
  """Creates the workdir and checks that it can be written; UserError otherwise.

  Also removes the temporary files that a process killed while writing left
  behind in the workdir and results/ (`files.remove_stale_temps`).
  """
  try:
    os.makedirs(results_dir(workdir), exist_ok=True)
    probe = os.path.join(workdir, ".write-probe")
    with open(probe, "w") as f:
      f.write("ok")
    os.unlink(probe)
  except OSError as err:
    raise UserError(f"cannot write to the workdir {workdir!r} ({err.strerror or err}): "
                    "choose a writable directory with --workdir.") from None
  for directory in (workdir, results_dir(workdir)):
    files.remove_stale_temps(directory)


def remove_run_outputs(workdir: str) -> None:
  """--restart: deletes results/*.json, checkpoints/, report.md and the report's figures
  (<kind>_<task>[_<convention>].png), and metrics.jsonl, results.csv, results/*.csv and
  tensorboard/ (metrics_writer.remove_live_outputs), nothing else."""
  shutil.rmtree(checkpoints_dir(workdir), ignore_errors=True)
  metrics_writer.remove_live_outputs(workdir)
  results = results_dir(workdir)
  for name in os.listdir(results) if os.path.isdir(results) else ():
    if name.endswith(".json"):
      os.unlink(os.path.join(results, name))
  figures = {f"{kind}_{t}{suffix}.png" for t in tasks_lib.TASKS
             for kind in ("curves", "saturation", "gradients_depth", "heatmap", "heatmap_depth")
             for suffix in ("",) + tuple(f"_{c}" for c in studies.CONVENTIONS)}
  for name in ["report.md"] + sorted(figures):
    if os.path.exists(os.path.join(workdir, name)):
      os.unlink(os.path.join(workdir, name))


# -- resuming ----------------------------------------------------------------


def check_split(workdir: str, run_info: dict, split) -> None:
  """UserError if `split` (data.Split) is not the data run.json says the run was trained on."""
  before = run_info.get("split_fingerprint")
  if before is not None and before != split.fingerprint:
    raise UserError(
        f"the data differ from those the run in {workdir!r} was trained on (split fingerprint "
        f"{before} before, {split.fingerprint} now): pass the same MNIST files (--data_dir) "
        "to resume it, or pass --restart to delete its results and checkpoints and start over.")


# -- reusing a finished task --------------------------------------------------


def member_from_record(record: records_lib.MemberRecord) -> runner_lib.MemberResult:
  """The engine's MemberResult of a saved member record."""
  names = [f.name for f in dataclasses.fields(runner_lib.MemberResult)]
  values = {n: getattr(record, n) for n in names if n != "cell" and n in record.order}
  return runner_lib.MemberResult(cell=record.cell, **values)


def reuse_results(path: str, task: str, task_members: list[tuple[studies.Cell, int]],
                  ) -> tuple[records_lib.TaskResults, list[runner_lib.MemberResult]]:
  """A finished task's results file and its MemberResults; UserError if it does not fit the plan."""
  try:
    saved = records_lib.read_task_results(path, task)
    results = [member_from_record(r) for r in saved.members]
  except (OSError, TypeError, ValueError):
    results = None
  if results is None or sorted((r.cell.key, r.seed) for r in results) != sorted(
      (c.key, s) for c, s in task_members):
    raise UserError(
        f"the results file {path!r} is unreadable or holds other members than this run plans "
        f"for task {task}: pass --restart to delete the workdir's results and train again, or "
        "choose another --workdir.")
  return saved, results
