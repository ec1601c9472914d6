"""Compares runs that differ in one intervention: an arm per run (and per network variant).

An *arm* is one training and network setting: a workdir's run (its training
choices, `results/<task>.json`'s "training") combined with one network variant
of its cells (`--hidden`, `--init`, ...). The *protocol* arm is the one with
PROTOCOL's training and network. Every arm trains the same cells (head, loss,
convention) with the same seeds, so each arm's member of seed s is paired
with the protocol arm's member of seed s in the same cell.

  python -m jaxact.compare --task=multiclass \
      --workdirs=experiments/collapse_interventions/protocol,experiments/... \
      --out=experiments/collapse_interventions/report.md

For each cell and arm the report gives the diagnosis counts, the collapse
rate (k/n with a Wilson 95% interval), when the first dense hidden layer
(fc1) saturated, the test accuracy (mean with its t interval) and the paired
difference to the protocol arm (mean with its t interval, exact sign-flip
p-value, verdict). It trains nothing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Sequence

from absl import app
from absl import flags
import numpy as np

from jaxact import files
from jaxact import report as report_lib
from jaxact import results_io
from jaxact import stats as stats_lib
from jaxact import studies

FC1_SATURATED_SHARE = 0.5   # fc1 counts as saturated once half of its units are (engine's rule per unit)
FAILURE_RATES = ("collapsed", "dead_head", "no_learning", "nonfinite", "invalid")


@dataclasses.dataclass(frozen=True)
class Arm:
  """One intervention arm: its label ('' for the protocol), workdir and members per cell type.

  members: (head, loss, convention) -> the members, sorted by seed.
  """
  label: str
  workdir: str
  command: str
  members: dict[tuple[str, str, str], list[dict]]

  @property
  def is_protocol(self) -> bool:
    return not self.label


def _network_label(cell: studies.Cell) -> str:
  """The network fields of `cell` that differ from PROTOCOL's, e.g. 'tanh hidden'."""
  base = studies.Cell(cell.task, cell.head, cell.loss, cell.norm, cell.sigmoid_method,
                      cell.convention)
  return cell.label[len(base.label):].strip(" ()")


def load_arms(workdirs: Sequence[str], task: str) -> list[Arm]:
  """The arms of `workdirs`' runs of `task`, in the order given, network variants in run order.

  Raises:
    FileNotFoundError, ValueError: a workdir without results of `task`
      (results_io.load_results's errors, or one naming the task).
  """
  arms = []
  for workdir in workdirs:
    results = results_io.load_results(workdir)
    if task not in results:
      raise ValueError(f"{workdir!r} holds no results of task {task!r} (it has "
                       f"{', '.join(results)}): choose --task, or drop that workdir.")
    result = results[task]
    training = (result.get("training") or {}).get("label") or ""
    variants: dict[str, dict[tuple[str, str, str], list[dict]]] = {}
    for cell, members in results_io.group_members(result).items():
      network = _network_label(cell)
      key = (cell.head, cell.loss, cell.convention)
      variants.setdefault(network, {})[key] = members
    for network, members in variants.items():
      label = ", ".join(p for p in (training, network) if p)
      arms.append(Arm(label, workdir, str(result.get("command") or ""), members))
  labels = [a.label for a in arms]
  if len(set(labels)) != len(labels):
    raise ValueError(f"two workdirs hold the same arm ({labels}): give each arm once.")
  return arms


def fc1_saturation_epoch(member: dict) -> int | None:
  """The first epoch (1-based) after which >= FC1_SATURATED_SHARE of fc1's units were
  saturated on the valid set, or None (never, or not recorded)."""
  saturated = (member.get("diagnostics") or {}).get("saturated") or []
  for epoch, layers in enumerate(saturated):
    if layers and layers[0] is not None and layers[0] >= FC1_SATURATED_SHARE:
      return epoch + 1
  return None


@dataclasses.dataclass(frozen=True)
class ArmCell:
  """One arm's statistics in one cell (fractions for accuracies, epochs 1-based).

  test: the test-accuracy cell as the report writes it (`report.metric_cells`): mean [95% t
  interval] in %, over the members not failed when failed ones are mixed in, with their count
  and class ("8 hit cap: ...").
  """
  n: int
  diagnosis: str
  rates: dict[str, stats_lib.Interval]
  fc1_saturated: int
  fc1_epochs: list[int]
  test: str
  paired: stats_lib.PairedTest | None


def arm_cell(members: list[dict], protocol: list[dict] | None) -> ArmCell:
  """The statistics of one arm's members in one cell, paired with the protocol's by seed."""
  kinds = [results_io.kind_of(m) for m in members]
  n = len(members)
  rates = {k: stats_lib.wilson_interval(kinds.count(k), n) for k in FAILURE_RATES
           if k in kinds or k == "collapsed"}
  epochs = [e for e in (fc1_saturation_epoch(m) for m in members) if e is not None]
  paired = None
  if protocol is not None:
    paired, _ = report_lib.paired_by_seed(members, protocol, "test")
  return ArmCell(
      n=n, diagnosis=report_lib.diagnosis_counts(members),
      rates=rates, fc1_saturated=len(epochs), fc1_epochs=epochs,
      test=report_lib.metric_cells(members, "test", accuracy=True)[0],
      paired=paired)


def _rate(iv: stats_lib.Interval) -> str:
  k = int(round(iv.estimate * iv.n)) if iv.n else 0
  return f"{k}/{iv.n} [{100 * iv.low:.0f}, {100 * iv.high:.0f}%]"


def _epochs_text(s: ArmCell) -> str:
  if not s.fc1_saturated:
    return f"never (0/{s.n})"
  e = np.asarray(s.fc1_epochs)
  return (f"{s.fc1_saturated}/{s.n}: epoch {int(np.median(e))} median "
          f"({int(e.min())}–{int(e.max())})")


def _paired_text(p: stats_lib.PairedTest | None) -> tuple[str, str, str]:
  if p is None:
    return "(protocol)", "", ""
  if p.n == 0:
    return "no finite pair", "–", ""
  ci = f"[{100 * p.low:+.2f}, {100 * p.high:+.2f}]" if p.n > 1 else "[1 pair]"
  return (f"{100 * p.mean_difference:+.2f} {ci}",
          f"{p.p_value:.3g}" if math.isfinite(p.p_value) else "–",
          stats_lib.verdict(p, higher_is_better=True))


def render(arms: list[Arm], task: str) -> str:
  """The comparison as Markdown: one table per cell type, one row per arm."""
  protocol = next((a for a in arms if a.is_protocol), None)
  lines = [f"# Interventions on {task}: {len(arms)} arms", ""]
  lines += ["Each arm changes one thing against the protocol (AdamW, lr 0.001, PyTorch's "
            "initialisation, sigmoid hidden layer). Members of the same seed share their "
            "initial weights (except what the arm changes) and batch order, so arms are "
            "compared pair by pair.", "",
            "- **collapsed**: k/n members diagnosed as collapsed to a constant output "
            "(jaxact.diagnostics), Wilson 95% interval.",
            f"- **fc1 saturated**: members in which at least {FC1_SATURATED_SHARE:.0%} of the "
            "dense hidden layer's units were saturated on the valid set after some epoch, and "
            "the first such epoch (1-based: 1 = during the first epoch).",
            "- **test accuracy**: mean with its t 95% interval, as in the run reports: where "
            "failed members (collapsed, ...) and others are mixed, over the others only, "
            "prefixed with their count and class; the paired difference uses every pair.",
            "- **vs protocol**: the paired difference of test accuracy to the protocol arm, "
            "same cell, same seeds (accuracy points, t 95% interval), the p-value of the exact "
            "sign-flip test (Wilcoxon signed-rank above 16 pairs) and the verdict at "
            "alpha = 0.05, without correction for the many comparisons.", ""]
  if protocol is None:
    lines += ["No protocol arm among these runs: paired differences are left out.", ""]
  cell_types = list(dict.fromkeys(k for a in arms for k in a.members))
  for head, loss, convention in cell_types:
    title = f"{head} + {loss}" + ("" if convention == "torch" else f" [{convention}]")
    lines += [f"## {task}: {title}", "",
              "| arm | n | diagnosis | collapsed [95% CI] | fc1 saturated | test accuracy % "
              "[95% CI] | vs protocol (points) [95% CI] | p | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    base = protocol.members.get((head, loss, convention)) if protocol else None
    for arm in arms:
      members = arm.members.get((head, loss, convention))
      if not members:
        continue
      s = arm_cell(members, None if arm.is_protocol or base is None else base)
      diff, p, verdict = _paired_text(s.paired)
      lines.append(f"| {arm.label or 'protocol'} | {s.n} | {s.diagnosis} | "
                   f"{_rate(s.rates['collapsed'])} | {_epochs_text(s)} | {s.test} | {diff} | {p} | "
                   f"{verdict} |")
    lines.append("")
  lines += ["## How each arm was made", ""]
  for arm in arms:
    lines.append(f"- {arm.label or 'protocol'}: `{arm.command}`")
  return "\n".join(lines) + "\n"


_TASK = flags.DEFINE_string("task", "multiclass", "The task to compare.")
_WORKDIRS = flags.DEFINE_list("workdirs", None, "The runs' workdirs, the protocol's among them.")
_OUT = flags.DEFINE_string("out", None, "Where to write the Markdown report (default: stdout).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIRS.value:
    raise app.UsageError("--workdirs: give the runs to compare, comma-separated.")
  try:
    text = render(load_arms(_WORKDIRS.value, _TASK.value), _TASK.value)
  except (FileNotFoundError, ValueError) as err:
    print(f"jaxact.compare: error: {err}", file=sys.stderr)
    sys.exit(2)
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    files.atomic_write(_OUT.value, lambda f: f.write(text))
    print(f"wrote {_OUT.value}")
  else:
    print(text)


if __name__ == "__main__":
  app.run(main)
