"""A run's workdir: its layout, what a rerun finds there, and the results records written to it.

Layout of a workdir:
  run.json               the command, the configuration, start/finish times, and one segment
                         per start (revision, versions, machine: jaxact.provenance)
  results/<task>.json    one record per member (cell x seed), written as soon as the task ends
  results/<task>.csv     the same members, one CSV row each (jaxact.metrics_writer.CSV_COLUMNS)
  results.csv            the rows of every finished task, rewritten after each task
  metrics.jsonl          one JSON line per member and epoch, appended while a task trains
  tensorboard/<cell key>/  with tensorboard=True: TensorBoard event files, one run per cell
  checkpoints/<task>/    orbax checkpoints of the task still training (deleted when it ends)
  report.md              the tables (jaxact.report), rebuilt after every task
  curves_<task>.png      valid-metric curves per cell

jaxact.train writes these through this module (and jaxact.checkpoint,
jaxact.metrics_writer, jaxact.report). With several processes (multi-host,
`--distributed`), only process 0 writes files (`write_json_atomic`); the
workdir must be on a file system all hosts see.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Sequence

from jaxact import checkpoint as checkpoint_lib
from jaxact import config as config_lib
from jaxact import diagnostics as diagnostics_lib
from jaxact import program as program_lib
from jaxact import runner as runner_lib
from jaxact import files
from jaxact import metrics_writer
from jaxact import sharding
from jaxact import studies
from jaxact import tasks as tasks_lib

RUN_JSON = "run.json"
RESULTS_DIR = "results"

UserError = config_lib.UserError


def run_json_path(workdir: str) -> str:
  return os.path.join(workdir, RUN_JSON)


def results_dir(workdir: str) -> str:
  return os.path.join(workdir, RESULTS_DIR)


def checkpoints_dir(workdir: str) -> str:
  return os.path.join(workdir, checkpoint_lib.CHECKPOINTS_DIR)


def task_results_path(workdir: str, task: str) -> str:
  """WORKDIR/results/<task>.json, a finished task's results file."""
  return os.path.join(results_dir(workdir), f"{task}.json")


def saved_results(workdir: str) -> list[str]:
  """The names of the results files in WORKDIR/results, sorted."""
  d = results_dir(workdir)
  names = sorted(os.listdir(d)) if os.path.isdir(d) else []
  return [n for n in names if n.endswith(".json") and not n.startswith(".")]


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


def check_workdir_config(workdir: str, config: config_lib.RunConfig) -> dict | None:
  """The earlier run.json when the workdir holds outputs of this same configuration.

  Returns None when the workdir holds no results or checkpoints (nothing to
  resume or reuse; a fresh run). A run.json of either layout (the execution
  options in their own group or, up to 30ce5cb, under "engine") is read.

  Raises:
    UserError: they belong to another configuration (naming every differing
      key, its old and its new value), or no readable run.json says which.
  """
  if not has_outputs(workdir):
    return None
  previous = files.read_json_object(run_json_path(workdir))
  if previous is None or not isinstance(previous.get("config"), dict):
    raise UserError(
        f"the workdir {workdir!r} holds results or checkpoints but no readable run.json that "
        "says which configuration produced them, so this run cannot resume them: pass "
        "--restart to delete them and start over, or choose another --workdir.")
  old = checkpoint_lib.config_identity(previous["config"])
  diffs = checkpoint_lib.identity_differences(old, config_lib.run_identity(config),
                                              config_lib.DEFAULT_IDENTITY)
  if diffs:
    listed = "; ".join(f"{k}: {checkpoint_lib.format_value(a)} before, "
                       f"{checkpoint_lib.format_value(b)} now" for k, a, b in diffs)
    raise UserError(
        f"the workdir {workdir!r} holds a run with another configuration ({listed}). "
        "Rerun with the same flags to resume or reuse it, choose another --workdir, or pass "
        "--restart to delete its results and checkpoints and start over.")
  return previous


def check_split(workdir: str, run_info: dict, split) -> None:
  """UserError if `split` (data.Split) is not the data run.json says the run was trained on."""
  before = run_info.get("split_fingerprint")
  if before is not None and before != split.fingerprint:
    raise UserError(
        f"the data differ from those the run in {workdir!r} was trained on (split fingerprint "
        f"{before} before, {split.fingerprint} now): pass the same MNIST files (--data_dir) "
        "to resume it, or pass --restart to delete its results and checkpoints and start over.")


# -- results records ---------------------------------------------------------


def member_record(result: runner_lib.MemberResult,
                  config: program_lib.EngineConfig = program_lib.PROTOCOL) -> dict:
  """A member's results record; its label names `config`'s training where it is not PROTOCOL's."""
  d = dataclasses.asdict(result)
  d["cell"] = result.cell.to_dict()
  d["key"] = result.cell.key
  d["label"] = runner_lib.cell_label(result.cell, config)
  return d


def diagnosed_records(results: Sequence[runner_lib.MemberResult], task: str,
                      chance: float | None, ceiling: float | None,
                      config: program_lib.EngineConfig = program_lib.PROTOCOL,
                      clamp_bound: float | None = None,
                      extra: Sequence[dict] | None = None) -> list[dict]:
  """`member_record`s, each with its `diagnosis` ({kind, evidence}, see jaxact.diagnostics).

  `extra`: per result, fields added to its record before the diagnosis (its split seed; its
  own relu_clamp_bound_test where each member has its own split).
  """
  records = [member_record(r, config) for r in results]
  for record, fields in zip(records, extra or ()):
    record.update(fields)
  for record, d in zip(records, diagnostics_lib.diagnose_task(records, task, chance, ceiling,
                                                              clamp_bound)):
    record["diagnosis"] = d.to_dict()
  return records


def member_from_record(record: dict) -> runner_lib.MemberResult:
  """The inverse of `member_record`."""
  names = [f.name for f in dataclasses.fields(runner_lib.MemberResult)]
  values = {n: record[n] for n in names if n != "cell" and n in record}
  return runner_lib.MemberResult(cell=studies.Cell.from_dict(record["cell"]), **values)


def reuse_results(path: str, task: str, task_members: list[tuple[studies.Cell, int]],
                  ) -> list[runner_lib.MemberResult]:
  """The MemberResults of a finished task's results file; UserError if it does not fit the plan."""
  saved = files.read_json_object(path)
  try:
    results = [member_from_record(r) for r in saved["members"]]
  except (TypeError, KeyError, ValueError):
    results = None
  if results is None or sorted((r.cell.key, r.seed) for r in results) != sorted(
      (c.key, s) for c, s in task_members):
    raise UserError(
        f"the results file {path!r} is unreadable or holds other members than this run plans "
        f"for task {task}: pass --restart to delete the workdir's results and train again, or "
        "choose another --workdir.")
  return results
