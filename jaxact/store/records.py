"""The results format: typed records of a task's results, the one module that writes and reads them.

A finished task is written once, to WORKDIR/results/<task>.json, as a
`TaskResults`: how the task was trained (split, training, numerics, command,
machine, revision), its reference levels (chance, the multi-label softmax
ceiling, the ReLU clamp bound) and one `MemberRecord` per member (cell x seed):
its metrics, per-epoch histories, in-program diagnostics and its `Diagnosis`.
The diagnosis is made once, by `task_results` when the file is written
(jaxact.store.diagnostics), and stored; the readers (report, figures, compare, claims,
variance, the CSVs) use the stored one.

Layouts:
  SCHEMA_VERSION (1): the files written since 2026-12-07; "schema_version" is
      their first key, every other key is as before.
  0 (no "schema_version"): the files written before. Read by the same code:
      keys they lack read as None (metric_name and higher_is_better as the
      task's); a member that carries diagnostics but no diagnosis is diagnosed
      once, at load, with this version's rules.

Keys this version does not know are kept (`extra`) and written back where they
were, so a record read and written again gives the same file. When the rules
of jaxact.store.diagnostics change, `python -m jaxact.store.records rediagnose WORKDIR...`
classifies the saved members again and rewrites their stored diagnoses.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

from jaxact.engine import labels as labels_lib
from jaxact.engine import program as program_lib
from jaxact.store import diagnostics as diagnostics_lib
from jaxact.store import files
from jaxact.model import cells as studies
from jaxact.data import tasks as tasks_lib

Cell = studies.Cell
Diagnosis = diagnostics_lib.Diagnosis

SCHEMA_VERSION = 1
RESULTS_DIR = "results"


def as_float(v: Any) -> float:
  """`v` as a float; NaN for None and whatever float() refuses (a results file's null)."""
  try:
    return float(v)
  except (TypeError, ValueError):
    return float("nan")


def _fields(cls) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls)
               if f.name not in ("extra", "order", "cell_dict"))


def _cell_of(value: Any) -> Cell:
  """A Cell from its dict; keys a newer writer may add are ignored."""
  if isinstance(value, Cell):
    return value
  d = dict(value)
  names = {f.name for f in dataclasses.fields(Cell)}
  return Cell.from_dict({k: v for k, v in d.items() if k in names})


def _diagnosis_of(value: Any) -> Diagnosis | None:
  if isinstance(value, Diagnosis):
    return value
  if isinstance(value, dict) and value.get("kind"):
    return Diagnosis(str(value["kind"]), str(value.get("evidence") or ""))
  return None


# ---------------------------------------------------------------------------
# A member's record.


@dataclasses.dataclass(frozen=True)
class MemberRecord:
  """One member (cell x seed) of a finished task, as its results file holds it.

  Metrics are in the task's units (accuracy as a fraction, MSE in original
  units); epochs are 0-based; a value a file lacks or holds as null is None.

  Attributes:
    cell, seed: which member.
    best_valid, test: the best valid metric and the test metric at its epoch.
    best_epoch: the epoch of best_valid (-1: never finite); epochs_trained.
    status: how training ended (ok, hit_cap, nonfinite, invalid), with
      status_reason and status_epoch.
    train_loss, valid_metric: (epochs_trained,) per-epoch histories.
    n_infinite_valid, n_infinite_test: non-finite predictions at the best epoch.
    diagnostics: name -> per-epoch lists (`engine.Engine.diagnostic_shapes`).
    key, label: the cell's key and its label (naming non-PROTOCOL training).
    split_seed: the seed of the member's data split.
    relu_clamp_bound_test: regression: its split's ReLU clamp bound.
    diagnosis: its Diagnosis (None: not diagnosed).
    extra: keys this version does not know, kept as read.
    order: the keys in file order (to write a read record back unchanged).
    cell_dict: the cell as the file spelled it (older files: other keys or their order).
  """
  cell: Cell
  seed: int | None = None
  best_valid: float | None = None
  test: float | None = None
  best_epoch: int | None = None
  epochs_trained: int | None = None
  status: str | None = None
  status_reason: str | None = None
  status_epoch: int | None = None
  train_loss: list = dataclasses.field(default_factory=list)
  valid_metric: list = dataclasses.field(default_factory=list)
  n_infinite_valid: int | None = None
  n_infinite_test: int | None = None
  diagnostics: dict = dataclasses.field(default_factory=dict)
  key: str | None = None
  label: str | None = None
  split_seed: int | None = None
  relu_clamp_bound_test: float | None = None
  diagnosis: Diagnosis | None = None
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  order: tuple[str, ...] = ()
  cell_dict: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False,
                                                           repr=False)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "MemberRecord":
    """Reads a member of a results file (either layout); ValueError if it has no cell."""
    if not isinstance(d, Mapping) or not isinstance(d.get("cell"), (dict, Cell)):
      raise ValueError("a member record without a cell")
    known = set(_fields(cls))
    values = {k: v for k, v in d.items() if k in known}
    values["cell"] = _cell_of(d["cell"])
    values["diagnosis"] = _diagnosis_of(d.get("diagnosis"))
    for name in ("train_loss", "valid_metric"):
      values[name] = list(values.get(name) or [])
    values["diagnostics"] = dict(values.get("diagnostics") or {})
    return cls(**values, extra={k: v for k, v in d.items() if k not in known},
               order=tuple(d), cell_dict=dict(d["cell"]) if isinstance(d["cell"], dict) else None)

  @classmethod
  def from_result(cls, result: Any, label: str, **fields: Any) -> "MemberRecord":
    """The record of an engine MemberResult (a dataclass), with its label and `fields`
    (split_seed, relu_clamp_bound_test), not yet diagnosed."""
    d = dataclasses.asdict(result)
    d["cell"] = result.cell.to_dict()
    d["key"] = result.cell.key
    d["label"] = label
    d.update(fields)
    return cls.from_dict(d)

  def to_dict(self) -> dict[str, Any]:
    """The member as its results file holds it: the keys in `order`, then the diagnosis."""
    out = {}
    for k in self.order or _fields(type(self)):
      if k in self.extra:
        out[k] = self.extra[k]
      elif k == "cell":
        out[k] = dict(self.cell_dict) if self.cell_dict is not None else self.cell.to_dict()
      elif k == "diagnosis":
        out[k] = None if self.diagnosis is None else self.diagnosis.to_dict()
      else:
        out[k] = getattr(self, k)
    if "diagnosis" not in out and self.diagnosis is not None:
      out["diagnosis"] = self.diagnosis.to_dict()
    return out

  @property
  def kind(self) -> str | None:
    """The diagnosis kind; without a diagnosis, the status when that is a failure kind
    (invalid, nonfinite), else None (not diagnosed)."""
    if self.diagnosis is not None and self.diagnosis.kind:
      return self.diagnosis.kind
    return self.status if self.status in diagnostics_lib.FAILURES else None

  def value(self, field: str) -> float:
    """A metric field (best_valid, test) as a float, NaN where missing."""
    return as_float(getattr(self, field))


# ---------------------------------------------------------------------------
# A task's results.


@dataclasses.dataclass(frozen=True)
class TaskResults:
  """A finished task's results file: how it was trained, its references, its members.

  Attributes:
    task, study: what was trained.
    members: one MemberRecord per member, in training order.
    metric_name, higher_is_better: the task's metric (from the task where an
      older file lacks them).
    split, split_seed, split_fingerprint: the data split.
    numerics: the program's numerics record; training: the training record
      (its "label" names non-PROTOCOL training); max_epochs, patience.
    wall_time_s, compilations: cost of the task.
    command, machine, git_revision, jaxact_version: provenance.
    chance_valid: the constant predictor's valid metric; softmax_ceiling_test
      (multilabel), relu_clamp_bound_test (regression on a fixed split).
    n_valid, n_test, init: written by older versions only.
    schema_version: 0 for the older layout.
    extra, order: as MemberRecord's.
  """
  task: str
  members: tuple[MemberRecord, ...] = ()
  schema_version: int = SCHEMA_VERSION
  study: str | None = None
  metric_name: str | None = None
  higher_is_better: bool | None = None
  split: str | None = None
  split_seed: int | None = None
  split_fingerprint: str | None = None
  numerics: dict | None = None
  max_epochs: int | None = None
  patience: int | None = None
  training: dict | None = None
  wall_time_s: float | None = None
  compilations: int | None = None
  command: str | None = None
  machine: str | None = None
  git_revision: str | None = None
  jaxact_version: str | None = None
  chance_valid: float | None = None
  softmax_ceiling_test: float | None = None
  relu_clamp_bound_test: float | None = None
  n_valid: int | None = None
  n_test: int | None = None
  init: str | None = None
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  order: tuple[str, ...] = ()

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], task: str | None = None) -> "TaskResults":
    """Reads a results file's content (either layout); `task` where the file does not name it.

    Raises:
      ValueError: a newer schema, or a member this version cannot read.
    """
    version = d.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
      raise ValueError(f"schema version {version!r}, newer than this jaxact reads "
                       f"({SCHEMA_VERSION}): read it with the jaxact version that wrote it "
                       "(its jaxact_version) or a newer one")
    known = set(_fields(cls))
    values = {k: v for k, v in d.items() if k in known and k != "members"}
    values["task"] = str(d.get("task") or task or "")
    values["schema_version"] = version
    raw = d.get("members") or []
    if not isinstance(raw, list):
      raise ValueError("its members are not a list")
    members = []
    for i, m in enumerate(raw):
      try:
        members.append(MemberRecord.from_dict(m))
      except (TypeError, ValueError) as err:
        raise ValueError(f"member {i} cannot be read ({err})") from None
    if values.get("metric_name") is None:
      values["metric_name"] = _default_metric(values["task"])
    if "higher_is_better" in d:
      values["higher_is_better"] = bool(d["higher_is_better"])
    else:
      values["higher_is_better"] = str(values["metric_name"]).lower() != "mse"
    out = cls(**values, members=tuple(members),
              extra={k: v for k, v in d.items() if k not in known},
              order=tuple(d))
    return _diagnose_missing(out) if version == 0 else out

  def to_dict(self) -> dict[str, Any]:
    """The results file's content: the keys in `order` (a new record: schema_version first)."""
    out = {}
    for k in self.order or ("schema_version",) + _fields(type(self)):
      if k in self.extra:
        out[k] = self.extra[k]
      elif k == "members":
        out[k] = [m.to_dict() for m in self.members]
      else:
        out[k] = getattr(self, k)
    return out

  @property
  def is_accuracy(self) -> bool:
    """Whether the task's metric is an accuracy, i.e. not the MSE."""
    return str(self.metric_name).lower() != "mse"

  def groups(self) -> dict[Cell, list[MemberRecord]]:
    """Cell -> its members sorted by seed, cells in order of first appearance."""
    out: dict[Cell, list[MemberRecord]] = collections.OrderedDict()
    for m in self.members:
      out.setdefault(m.cell, []).append(m)
    for ms in out.values():
      ms.sort(key=lambda m: (m.seed is None, m.seed or 0))
    return out

  def studies(self, info: dict | None = None) -> tuple[str, ...]:
    """The studies whose tables to show: the run's (this file, else run.json), else all."""
    study = self.study or ((info or {}).get("config") or {}).get("study")
    if study in studies.STUDIES:
      return (study,)
    if study == "hidden":
      return ("hidden",)
    return ("activation", "loss") if study == "all" or study is None else studies.STUDIES


def _default_metric(task: str) -> str:
  try:
    return tasks_lib.get_task(task).metric_name
  except ValueError:
    return "mse" if task == "regression" else "accuracy"


def _diagnose_missing(result: TaskResults) -> TaskResults:
  """An older file's members that carry diagnostics but no diagnosis, diagnosed now."""
  todo = [i for i, m in enumerate(result.members) if m.diagnostics and m.diagnosis is None]
  if not todo:
    return result
  diags = classify_members(result, [result.members[i] for i in todo])
  if diags is None:
    return result
  members = list(result.members)
  for i, d in zip(todo, diags):
    members[i] = dataclasses.replace(members[i], diagnosis=d)
  return dataclasses.replace(result, members=tuple(members))


def classify_members(result: TaskResults, members: Sequence[MemberRecord]
                     ) -> list[Diagnosis] | None:
  """jaxact.store.diagnostics' classification of `members` (the run's best cell among them as
  reference), with `result`'s chance level, ceiling and clamp bound; None where this version
  cannot (an unknown task, a record it cannot read)."""
  if result.task not in tasks_lib.TASKS:
    return None
  dicts = [dict(m.to_dict(), diagnosis=None) for m in members]
  try:
    return diagnostics_lib.diagnose_task(dicts, result.task, result.chance_valid,
                                         result.softmax_ceiling_test,
                                         result.relu_clamp_bound_test)
  except (KeyError, TypeError, ValueError):
    return None


def task_results(task: str, members: Sequence[MemberRecord], **fields: Any) -> TaskResults:
  """A new task's results with every member diagnosed (the one classification it gets).

  Args:
    task: the task's name.
    members: its undiagnosed member records (`MemberRecord.from_result`).
    **fields: TaskResults' other fields, in the order the file lists them.
  """
  result = TaskResults(task=task, members=tuple(members), **fields,
                       order=("schema_version", "task") + tuple(fields) + ("members",))
  diags = diagnostics_lib.diagnose_task([m.to_dict() for m in members], task,
                                        result.chance_valid, result.softmax_ceiling_test,
                                        result.relu_clamp_bound_test)
  members = [dataclasses.replace(m, diagnosis=d) for m, d in zip(members, diags)]
  return dataclasses.replace(result, members=tuple(members))


# ---------------------------------------------------------------------------
# Files.


def task_results_path(workdir: str, task: str) -> str:
  """WORKDIR/results/<task>.json, a finished task's results file."""
  return os.path.join(workdir, RESULTS_DIR, f"{task}.json")


def saved_results(workdir: str) -> list[str]:
  """The names of the results files in WORKDIR/results, sorted."""
  d = os.path.join(workdir, RESULTS_DIR)
  names = sorted(os.listdir(d)) if os.path.isdir(d) else []
  return [n for n in names if n.endswith(".json") and not n.startswith(".")]


def write_task_results(path: str, result: TaskResults) -> None:
  """Writes the results file atomically (call it on process 0 only)."""
  files.write_json_atomic(path, result.to_dict())


def read_task_results(path: str, task: str | None = None) -> TaskResults:
  """Reads one results file.

  Raises:
    FileNotFoundError: it is missing.
    ValueError: it is not valid JSON, not an object, or a record it holds cannot be read;
      the message names the file.
  """
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except ValueError as e:
      raise ValueError(f"results file {path!r} is not valid JSON: {e}") from None
  if not isinstance(data, dict):
    raise ValueError(f"results file {path!r} does not hold a JSON object")
  try:
    return TaskResults.from_dict(data, task or os.path.basename(path)[:-len(".json")])
  except ValueError as e:
    raise ValueError(f"results file {path!r}: {e}") from None


def load_run_info(workdir: str) -> dict:
  """Returns WORKDIR/run.json parsed, or {} when it is missing or unreadable."""
  return files.read_json_object(os.path.join(workdir, "run.json")) or {}


def load_results(workdir: str) -> dict[str, TaskResults]:
  """Reads every WORKDIR/results/<task>.json.

  Returns:
    task -> its TaskResults, in tasks.TASKS order (unknown tasks last, sorted by name).

  Raises:
    FileNotFoundError: the workdir, its results/ directory or any results file in it is
      missing.
    ValueError: a results file cannot be read (`read_task_results`).
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir!r} does not exist or is not a directory")
  results_dir = os.path.join(workdir, RESULTS_DIR)
  names = saved_results(workdir)
  if not names:
    raise FileNotFoundError(
        f"no results in {results_dir!r}: expected results/<task>.json files written by "
        "`python -m jaxact.main --workdir=...`")
  out = {}
  for name in names:
    result = read_task_results(os.path.join(results_dir, name))
    out[result.task] = result
  return {t: out[t] for t in _ordered_tasks(out)}


def _ordered_tasks(tasks: Iterable[str]) -> list[str]:
  tasks = list(tasks)
  known = [t for t in tasks_lib.TASKS if t in tasks]
  return known + sorted(t for t in tasks if t not in tasks_lib.TASKS)


# ---------------------------------------------------------------------------
# Diagnosing saved results again (after the rules changed).


def rediagnose_file(path: str) -> int:
  """Classifies the members of a results file that carry diagnostics again, with this version's
  rules, and rewrites their stored diagnoses where they changed (nothing else in the file
  changes). Returns how many changed."""
  result = read_task_results(path)
  todo = [i for i, m in enumerate(result.members) if m.diagnostics]
  diags = classify_members(result, [result.members[i] for i in todo]) if todo else None
  if diags is None:
    return 0
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  changed = 0
  for i, d in zip(todo, diags):
    if data["members"][i].get("diagnosis") != d.to_dict():
      data["members"][i]["diagnosis"] = d.to_dict()
      changed += 1
  if changed:
    files.write_json_atomic(path, data)
  return changed


def main(argv: Sequence[str]) -> int:
  """`python -m jaxact.store.records rediagnose WORKDIR...`: `rediagnose_file` on every results file."""
  if len(argv) < 3 or argv[1] != "rediagnose":
    print("usage: python -m jaxact.store.records rediagnose WORKDIR... (classifies the saved members "
          "again with this version's rules and rewrites their stored diagnoses)",
          file=sys.stderr)
    return 2
  for workdir in argv[2:]:
    try:
      load_results(workdir)   # every file readable before any is rewritten
      for name in saved_results(workdir):
        path = os.path.join(workdir, RESULTS_DIR, name)
        print(f"{path}: {rediagnose_file(path)} diagnoses changed")
    except (FileNotFoundError, ValueError, files.WriteError) as e:
      print(f"jaxact.store.records: error: {e}", file=sys.stderr)
      return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))


def training_label_of(training: dict[str, Any], cell: Cell) -> str:
  """The training label of a results file's "training" record, less what `cell`'s own arm
  sets (its label names it); a record that holds only its label gives that label."""
  if not any(k in training for k in studies.TRAINING_OPTIONS):
    return str(training.get("label") or "")
  names = {f.name for f in dataclasses.fields(program_lib.EngineConfig)}
  config = program_lib.EngineConfig(**{k: v for k, v in training.items()
                                       if k in names and v is not None})
  config = dataclasses.replace(config, **{k: getattr(program_lib.PROTOCOL, k) for k in cell.arm})
  return labels_lib.training_label(config)
