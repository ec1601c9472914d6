"""Which cells of a run make which table: a task's study tables and its cells on no grid.

The report's tables and its figures lay a task's cells out the same way: per
study grid (jaxact.model.cells), loss convention and network variant, each row a
grid row's cell with its members (`study_tables`); the cells on no grid apart
(`other_cells`). Also the words both print (`KIND_TEXT`, `plural`) and the
file names of the depth-sweep figures. Plain Python over `jaxact.store.records`.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

from jaxact.analysis import claims as claims_lib
from jaxact.store import diagnostics as diagnostics_lib
from jaxact.model import losses as losses_lib
from jaxact.store import records
from jaxact.model import cells as studies

Cell = studies.Cell
Members = list[records.MemberRecord]   # a cell's members
KIND_TEXT = {k: k.replace("_", " ") for k in diagnostics_lib.KINDS}   # kind -> its words


def conventions_of(groups: dict[Cell, Members]) -> list[str]:
  """The loss conventions of the cells, studies.CONVENTIONS' first."""
  present = {c.convention for c in groups}
  return ([c for c in studies.CONVENTIONS if c in present]
          + sorted(c for c in present if c not in studies.CONVENTIONS))


def study_tables(task: str, groups: dict[Cell, Members],
                 conventions: Sequence[str] | None = None,
                 which: Sequence[str] = studies.STUDIES):
  """Yields (study, convention, [(cell, recommended, members)]) for every table of a task.

  `conventions` (default: those of the task's members) lets a workdir trained
  with both conventions show both tables for a task whose cells were all
  trained once because their loss is the same in both (regression).
  """
  for study in which:
    rows = studies.grid(study).get(task, [])
    variants = [None] if study == "hidden" else network_variants(groups)
    for conv, variant in itertools.product(conventions or conventions_of(groups), variants):
      present = []
      for row in rows:
        cell = studies.with_convention(row.cell, conv)
        if variant is not None:
          cell = dataclasses.replace(cell, **variant)
        if cell in groups:
          present.append((cell, row.recommended, groups[cell]))
          continue
        # Trained once under another convention because the loss is the same in both.
        if not losses_lib.convention_matters(cell.head, cell.loss):
          twin = next((c for c in groups if c.convention != conv
                       and studies.with_convention(c, conv) == cell), None)
          if twin is not None:
            present.append((twin, row.recommended, groups[twin]))
      if present:
        yield study, conv, present, variant


_NETWORK_FIELDS = ("init", "hidden", "batch_norm", "depth")


def network_variants(groups: dict[Cell, Members]) -> list[dict[str, Any]]:
  """The networks of the cells present, as field dicts, PROTOCOL's first."""
  seen = list(dict.fromkeys(tuple(getattr(c, f) for f in _NETWORK_FIELDS) for c in groups))
  default = tuple(getattr(Cell("", "", ""), f) for f in _NETWORK_FIELDS)
  seen.sort(key=lambda v: v != default)
  return [dict(zip(_NETWORK_FIELDS, v)) for v in seen]


def is_default(variant: dict[str, Any] | None) -> bool:
  """Whether a network variant is PROTOCOL's."""
  default = Cell("", "", "")
  return not variant or all(variant[f] == getattr(default, f) for f in _NETWORK_FIELDS)


def other_cells(task: str, groups: dict[Cell, Members],
                which: Sequence[str] = studies.STUDIES) -> list[Cell]:
  """The cells of `groups` on none of the `which` studies' grids (any convention, network)."""
  on_grid = set()
  for study in which:
    variants = [{}] if study == "hidden" else network_variants(groups)
    for row in studies.grid(study).get(task, []):
      for conv in set(conventions_of(groups)) | set(studies.CONVENTIONS):
        for v in variants:
          on_grid.add(dataclasses.replace(studies.with_convention(row.cell, conv), **v))
  return [c for c in groups if c not in on_grid]


def depth_sweep_figures(task: str, groups: dict[Cell, Members]
                        ) -> list[tuple[str, str]]:
  """(convention, file name) of each gradients-against-depth figure of a task.

  One figure per loss convention with a depth sweep: gradients_depth_<task>.png when the
  run has one convention, gradients_depth_<task>_<convention>.png when it has both.
  """
  per_convention = claims_lib.by_convention(groups)
  return [(conv, f"gradients_depth_{task}.png" if len(per_convention) == 1
           else f"gradients_depth_{task}_{conv}.png")
          for conv, conv_groups in per_convention.items() if claims_lib.depth_sweep(conv_groups)]


def plural(n: int, word: str) -> str:
  """'1 seed', '3 seeds'."""
  return f"{n} {word}" if n == 1 else f"{n} {word}s"
