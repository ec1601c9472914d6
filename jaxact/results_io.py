"""Reading a training run's workdir: run.json, results/<task>.json and their member records.

`jaxact.report` (the tables), `jaxact.figures` and `jaxact.compare` read saved
results through this module:

  WORKDIR/run.json             `load_run_info`: how the run was made;
  WORKDIR/results/<task>.json  `load_results`: every member (cell x seed) of a task,
                               diagnosed again with this version's rules.

A member record is a dict as the trainer wrote it; `group_members` groups a
task's members by `studies.Cell`, and `as_float`, `kind_of`, `is_accuracy`,
`studies_of` read the fields that older or newer writers may lack or spell as
null. Nothing here computes statistics or formats text.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Iterable

from jaxact import diagnostics as diagnostics_lib
from jaxact import files
from jaxact import studies
from jaxact import tasks as tasks_lib

Cell = studies.Cell


# ---------------------------------------------------------------------------
# Loading.


def load_run_info(workdir: str) -> dict:
  """Returns WORKDIR/run.json parsed, or {} when it is missing or unreadable."""
  return files.read_json_object(os.path.join(workdir, "run.json")) or {}


def load_results(workdir: str) -> dict[str, dict]:
  """Reads every WORKDIR/results/<task>.json.

  Args:
    workdir: the directory a training run wrote.

  Returns:
    task -> the parsed results file, in tasks.TASKS order (unknown tasks last,
    sorted by name).

  Raises:
    FileNotFoundError: the workdir, its results/ directory or any results file
      in it is missing.
    ValueError: a results file is not valid JSON.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir!r} does not exist or is not a directory")
  results_dir = os.path.join(workdir, "results")
  names = sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []
  names = [n for n in names if n.endswith(".json") and not n.startswith(".")]
  if not names:
    raise FileNotFoundError(
        f"no results in {results_dir!r}: expected results/<task>.json files written by "
        "`python -m jaxact.main --workdir=...`")
  out = {}
  for name in names:
    path = os.path.join(results_dir, name)
    with open(path, encoding="utf-8") as f:
      try:
        data = json.load(f)
      except ValueError as e:
        raise ValueError(f"results file {path!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
      raise ValueError(f"results file {path!r} does not hold a JSON object")
    task = str(data.get("task") or name[:-len(".json")])
    _rediagnose(data, task)
    out[task] = data
  return {t: out[t] for t in _ordered_tasks(out)}


def rediagnose(result: dict, task: str) -> dict:
  """A copy of a results file's content whose members that carry diagnostics are classified
  again with this version's rules (the others keep their saved diagnosis)."""
  out = dict(result)
  out["members"] = [dict(m) if isinstance(m, dict) else m for m in result.get("members") or []]
  _rediagnose(out, task)
  return out


def _rediagnose(result: dict, task: str) -> None:
  """Classifies again, with this version's rules, the members that carry diagnostics."""
  members = [m for m in result.get("members") or []
             if isinstance(m, dict) and m.get("diagnostics") and "cell" in m]
  if not members or task not in tasks_lib.TASKS:
    return
  try:
    diags = diagnostics_lib.diagnose_task(members, task, result.get("chance_valid"),
                                          result.get("softmax_ceiling_test"),
                                          result.get("relu_clamp_bound_test"))
  except (KeyError, TypeError, ValueError):
    return   # a record this version cannot read: keep what was saved
  for m, d in zip(members, diags):
    m["diagnosis"] = d.to_dict()


def _ordered_tasks(tasks: Iterable[str]) -> list[str]:
  tasks = list(tasks)
  known = [t for t in tasks_lib.TASKS if t in tasks]
  return known + sorted(t for t in tasks if t not in tasks_lib.TASKS)


# ---------------------------------------------------------------------------
# Member records.


def _cell_of(member: dict) -> Cell:
  """The member's Cell; keys a newer writer may add are ignored."""
  d = dict(member["cell"])
  try:
    return Cell.from_dict(d)
  except TypeError:
    names = {f.name for f in dataclasses.fields(Cell)}
    return Cell.from_dict({k: v for k, v in d.items() if k in names})


def group_members(result: dict) -> dict[Cell, list[dict]]:
  """Cell -> its members sorted by seed, cells in order of first appearance."""
  groups: dict[Cell, list[dict]] = collections.OrderedDict()
  for m in result.get("members") or []:
    groups.setdefault(_cell_of(m), []).append(m)
  for ms in groups.values():
    ms.sort(key=lambda m: (m.get("seed") is None, m.get("seed") or 0))
  return groups


def as_float(v: Any) -> float:
  """`v` as a float; NaN for None and whatever float() refuses (a results file's null)."""
  try:
    return float(v)
  except (TypeError, ValueError):
    return float("nan")


def kind_of(member: dict) -> str | None:
  """The member's diagnosis kind; without a diagnosis, its status when that is a failure kind
  (invalid, nonfinite), else None (not diagnosed)."""
  d = member.get("diagnosis")
  if isinstance(d, dict) and d.get("kind"):
    return str(d["kind"])
  status = member.get("status")
  return status if status in diagnostics_lib.FAILURES else None


def is_accuracy(result: dict, task: str) -> bool:
  """Whether the task's metric is an accuracy, i.e. not the MSE (the results file's metric_name)."""
  name = result.get("metric_name")
  if name is None:
    try:
      name = tasks_lib.get_task(task).metric_name
    except ValueError:
      name = "accuracy"   # a task this version does not define
  return str(name).lower() != "mse"


def higher_is_better(result: dict, task: str) -> bool:
  """Whether a larger value of the task's metric is better (as its results file says)."""
  if "higher_is_better" in result:
    return bool(result["higher_is_better"])
  return is_accuracy(result, task)


def studies_of(result: dict, info: dict | None = None) -> tuple[str, ...]:
  """The studies whose tables to show: the run's (results file, else run.json), else all."""
  study = result.get("study") or ((info or {}).get("config") or {}).get("study")
  if study in studies.STUDIES:
    return (study,)
  if study == "hidden":
    return ("hidden",)
  return ("activation", "loss") if study == "all" or study is None else studies.STUDIES
