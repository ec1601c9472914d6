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
rate (k/n with a Wilson 95% interval) with Fisher's exact test against the
protocol arm's, when the first dense hidden layer (fc1) saturated, the test
accuracy (mean with its t interval) and the paired difference to the
protocol arm (mean with its t interval, exact sign-flip p-value, the same
Holm-adjusted over the arms of the cell's table, the adjusted equivalence
p, verdict). It trains nothing.

With --by=convention it pairs two runs of the same cells in two loss conventions
instead (PROTOCOL's torch convention, and logits: the loss computed on the
pre-activation), cell by cell and seed by seed, over every task both ran:

  python -m jaxact.compare --by=convention \
      --workdirs=experiments/all_torch_10seeds,experiments/all_logits_10seeds \
      --out=experiments/all_logits_10seeds/vs_torch.md
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

from jaxact.store import files
from jaxact.analysis import report as report_lib
from jaxact.store import records
from jaxact.analysis import stats as stats_lib
from jaxact.model import cells as studies

Members = list[records.MemberRecord]   # a cell's members

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
  members: dict[tuple[str, str, str], Members]

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
      (records.load_results's errors, or one naming the task).
  """
  arms = []
  for workdir in workdirs:
    results = records.load_results(workdir)
    if task not in results:
      raise ValueError(f"{workdir!r} holds no results of task {task!r} (it has "
                       f"{', '.join(results)}): choose --task, or drop that workdir.")
    result = results[task]
    record = result.training or {}
    variants: dict[str, dict[tuple[str, str, str], Members]] = {}
    for cell, members in result.groups().items():
      network = _network_label(cell)
      training = records.training_label_of(record, cell)
      network = ", ".join(p for p in (training, network) if p)
      key = (cell.head, cell.loss, cell.convention)
      variants.setdefault(network, {})[key] = members
    for label, members in variants.items():
      arms.append(Arm(label, workdir, str(result.command or ""), members))
  labels = [a.label for a in arms]
  if len(set(labels)) != len(labels):
    raise ValueError(f"two workdirs hold the same arm ({labels}): give each arm once.")
  return arms


def fc1_saturation_epoch(member: records.MemberRecord) -> int | None:
  """The first epoch (1-based) after which >= FC1_SATURATED_SHARE of fc1's units were
  saturated on the valid set, or None (never, or not recorded)."""
  saturated = member.diagnostics.get("saturated") or []
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


def arm_cell(members: Members, protocol: Members | None) -> ArmCell:
  """The statistics of one arm's members in one cell, paired with the protocol's by seed."""
  kinds = [m.kind for m in members]
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


def _paired_text(c: stats_lib.Comparison | None, accuracy: bool = True,
                 higher_is_better: bool = True) -> tuple[str, str, str, str, str]:
  """(mean difference [CI], p, p Holm, equivalence p Holm, verdict): accuracy in points, MSE
  as it is."""
  if c is None:
    return "(protocol)", "", "", "", ""
  p = c.test
  if p.n == 0:
    return "no finite pair", "–", "–", "–", "too few pairs"
  scale, fmt = (100.0, "{:+.2f}") if accuracy else (1.0, "{:+#.4g}")
  ci = (f"[{fmt.format(scale * p.low)}, {fmt.format(scale * p.high)}]" if p.n > 1
        else "[1 pair]")
  p_text = lambda v: f"{v:.3g}" if math.isfinite(v) else "–"
  return (f"{fmt.format(scale * p.mean_difference)} {ci}", p_text(p.p_value),
          p_text(c.p_adjusted), p_text(c.p_equivalence_adjusted),
          stats_lib.verdict(c, higher_is_better, margin_text=report_lib.margin_text(accuracy)))


def _collapsed(members: Members) -> int:
  return sum(1 for m in members if m.kind == "collapsed")


def _families(arms: list[Arm], protocol: Arm | None, cell_types: list[tuple]
              ) -> tuple[dict[tuple, stats_lib.Comparison], dict[tuple, tuple[float, float]],
                         list[int]]:
  """Per (cell type, arm index): the paired comparison of test accuracy with the protocol arm
  (Holm and TOST over the cell type's family), and Fisher's p of the collapse rates (raw,
  Holm); and each family's size."""
  family: dict[tuple, stats_lib.Comparison] = {}
  rate_family: dict[tuple, tuple[float, float]] = {}
  sizes = []
  for cell_type in cell_types:   # one family per cell type: its arms against the protocol
    base = protocol.members.get(cell_type) if protocol else None
    keys, pairs, rates = [], [], []
    for i, arm in enumerate(arms):
      members = arm.members.get(cell_type)
      if members and base is not None and not arm.is_protocol:
        keys.append((cell_type, i))
        pairs.append(report_lib.seed_pairs(members, base, "test"))
        rates.append(stats_lib.fisher_exact(_collapsed(members), len(members), _collapsed(base),
                                            len(base)))
    family.update(zip(keys, stats_lib.compare_family(pairs, report_lib.margin_of(True))))
    rate_family.update(zip(keys, zip(rates, stats_lib.holm(rates))))
    sizes.append(len(keys))
  return family, rate_family, sizes


def _legend(size_text: str, margin: str) -> list[str]:
  """The columns of the comparison's tables, explained."""
  return ["Each arm's label names every factor it changes against the protocol (AdamW "
          "with lr 0.001, eps 1e-8 and weight decay 0.01, PyTorch's initialisation and output "
          "bias, sigmoid hidden layer): an arm whose label names several (e.g. SGD's "
          "optimizer, step scale and decay) does not isolate one of them. Members of the "
          "same seed share their "
          "initial weights (except what the arm changes) and batch order, so arms are "
          "compared pair by pair.", "",
          "- **collapsed**: k/n members diagnosed as collapsed to a constant output "
          "(jaxact.store.diagnostics), Wilson 95% interval; beside it the two-sided p of Fisher's "
          "exact test against the protocol arm's rate in the same cell, raw and "
          "Holm-adjusted over the arms of the same table (one family per cell type, "
          f"{size_text} comparisons; read an order of two rates only where the adjusted "
          "p < 0.05).",
          f"- **fc1 saturated**: members in which at least {FC1_SATURATED_SHARE:.0%} of the "
          "dense hidden layer's units were saturated on the valid set after some epoch, and "
          "the first such epoch (1-based: 1 = during the first epoch).",
          "- **test accuracy**: mean with its t 95% interval, as in the run reports: where "
          "failed members (collapsed, ...) and others are mixed, over the others only, "
          "prefixed with their count and class, and values in separate modes shown as their "
          "modes; the paired difference uses every pair.",
          "- **vs protocol**: the paired difference of test accuracy to the protocol arm, "
          "same cell, same seeds (accuracy points, t 95% interval), the p-value of the exact "
          "sign-flip test (Wilcoxon signed-rank above 16 pairs), the same p Holm-adjusted "
          "over the family of the table (every arm against the protocol arm in that cell "
          f"type, {size_text} comparisons), "
          f"and the Holm-adjusted p of the equivalence test (TOST) within ±{margin}. "
          "Verdict at alpha = 0.05: \"better\" / \"worse\" by the adjusted p, else "
          f"\"equivalent within ±{margin}\" by the adjusted TOST p, else \"inconclusive\" "
          "(docs/statistics.md).", ""]


def render(arms: list[Arm], task: str) -> str:
  """The comparison as Markdown: one table per cell type, one row per arm.

  The declared families, one per cell type (table): every arm's test accuracy against the
  protocol arm's in that cell (paired by seed: Holm, TOST), and every arm's collapse rate
  against the protocol arm's (Fisher's exact test: Holm).
  """
  protocol = next((a for a in arms if a.is_protocol), None)
  cell_types = list(dict.fromkeys(k for a in arms for k in a.members))
  family, rate_family, sizes = _families(arms, protocol, cell_types)
  margin = report_lib.margin_text(True)
  size_text = (f"{max(sizes)}" if sizes and min(sizes) == max(sizes)
               else f"{min(sizes or [0])} to {max(sizes or [0])}")
  lines = [f"# Interventions on {task}: {len(arms)} arms", ""] + _legend(size_text, margin)
  if protocol is None:
    lines += ["No protocol arm among these runs: paired differences are left out.", ""]
  for cell_type in cell_types:
    head, loss, convention = cell_type
    title = f"{head} + {loss}" + ("" if convention == "torch" else f" [{convention}]")
    lines += [f"## {task}: {title}", "",
              "| arm | n | diagnosis | collapsed [95% CI] | collapsed vs protocol: Fisher p "
              "(Holm) | fc1 saturated | test accuracy % [95% CI] | vs protocol (points) "
              f"[95% CI] | p | p, Holm | equivalence p (±{margin}), Holm | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, arm in enumerate(arms):
      members = arm.members.get(cell_type)
      if not members:
        continue
      s = arm_cell(members, None)
      diff, p, p_holm, p_equiv, verdict = (
          _paired_text(family.get((cell_type, i))) if arm.is_protocol or (cell_type, i) in family
          else ("no protocol arm in this cell", "", "", "", ""))
      rate = rate_family.get((cell_type, i))
      rate_text = "" if rate is None else (
          "–" if not math.isfinite(rate[0]) else f"{rate[0]:.3g} ({rate[1]:.3g})")
      lines.append(f"| {arm.label or 'protocol'} | {s.n} | {s.diagnosis} | "
                   f"{_rate(s.rates['collapsed'])} | {rate_text} | {_epochs_text(s)} | {s.test} | "
                   f"{diff} | {p} | {p_holm} | {p_equiv} | {verdict} |")
    lines.append("")
  lines += ["## How each arm was made", ""]
  for arm in arms:
    lines.append(f"- {arm.label or 'protocol'}: `{arm.command}`")
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Two loss conventions of the same cells.


@dataclasses.dataclass(frozen=True)
class ConventionPair:
  """One cell in two conventions: the baseline run's members and the other run's, by seed.

  identical: the seeds whose training loss and valid metric per epoch, best epoch and test
  metric are bit for bit equal in both (a cell whose loss is the same in both conventions
  trains the same numbers).
  """
  cell: studies.Cell
  baseline: Members
  other: Members
  paired: stats_lib.Comparison
  identical: int


def _without_convention(cell: studies.Cell) -> studies.Cell:
  """`cell` in the torch convention: the cell it is paired with across conventions."""
  return dataclasses.replace(cell, convention="torch")


def pair_conventions(baseline: records.TaskResults, other: records.TaskResults
                     ) -> list[ConventionPair]:
  """The cells of `other` (one task's results) paired with `baseline`'s cell that differs from
  it in the convention alone, other's cell order; a cell without a counterpart is left out.

  The pairs of the task are one family: their test-metric comparisons are Holm-adjusted
  together, with the task's equivalence margin (`report.margin_of`).
  """
  base_groups = baseline.groups()
  by_key = {_without_convention(c): ms for c, ms in base_groups.items()}
  found = []
  for cell, members in other.groups().items():
    base = by_key.get(_without_convention(cell))
    if base is None:
      continue
    sb = {m.seed: m for m in base}
    fields = ("train_loss", "valid_metric", "best_epoch", "best_valid", "test")
    same = sum(1 for m in members if m.seed in sb
               and all(getattr(m, f) == getattr(sb[m.seed], f) for f in fields))
    found.append((cell, base, members, same))
  margin = report_lib.margin_of(other.is_accuracy)
  family = stats_lib.compare_family(
      [report_lib.seed_pairs(members, base, "test") for _, base, members, _ in found], margin)
  return [ConventionPair(cell, base, members, c, same)
          for (cell, base, members, same), c in zip(found, family)]


def _conventions_of(result: records.TaskResults) -> str:
  return ", ".join(sorted({c.convention for c in result.groups()})) or "?"


def render_conventions(baseline: dict[str, records.TaskResults],
                       other: dict[str, records.TaskResults],
                       commands: tuple[str, str]) -> str:
  """Markdown: per task both runs ran, one row per cell of `other` paired with `baseline`'s.

  Args:
    baseline, other: task -> results (records.load_results) of the two runs.
    commands: the commands that made them (baseline's, other's).
  """
  tasks = [t for t in other if t in baseline]
  base_conv = ", ".join(dict.fromkeys(_conventions_of(baseline[t]) for t in tasks)) or "?"
  other_conv = ", ".join(dict.fromkeys(_conventions_of(other[t]) for t in tasks)) or "?"
  lines = [f"# The {other_conv} convention against the {base_conv} convention", "",
           f"Every cell of the {other_conv} run paired with the same cell (head, loss, targets, "
           f"network) of the {base_conv} run, seed by seed: a seed's member starts from the same "
           "weights and sees the same batches in both, so the difference is the convention's.",
           "",
           "- **test**: mean with its t 95% interval, as in the run reports (failed members "
           "counted apart where they are mixed with others).",
           f"- **{other_conv} − {base_conv}**: the paired difference of the test metric at the "
           "best epoch (accuracy points, or MSE), t 95% interval, the p-value of the exact "
           "sign-flip test (Wilcoxon signed-rank above 16 pairs), the same p Holm-adjusted "
           "over the task's cells (one family per task), the Holm-adjusted p of the "
           f"equivalence test (TOST) within ±{report_lib.margin_text(True)} (accuracy) or "
           f"±{report_lib.margin_text(False)}, and the verdict at alpha = 0.05 for the "
           f"{other_conv} convention against the {base_conv} one: \"better\" / \"worse\" by "
           "the adjusted p, else \"equivalent within ±m\" by the adjusted TOST p, else "
           "\"inconclusive\" (docs/statistics.md).",
           "- **identical seeds**: the seeds whose training loss and valid metric in every "
           "epoch, best epoch and test metric are bit for bit equal in both runs (a cell whose "
           "loss is computed the same way in both conventions trains the same numbers; two "
           "members that collapse to the same constant prediction have equal metrics but not "
           "equal losses).", ""]
  if not tasks:
    lines += ["The two runs share no task.", ""]
  for task in tasks:
    accuracy = other[task].is_accuracy
    higher = other[task].higher_is_better
    unit = "accuracy %" if accuracy else "MSE"
    lines += [f"## {task}", "",
              f"| cell | n pairs | diagnosis ({base_conv}) | test {unit} ({base_conv}) | "
              f"diagnosis ({other_conv}) | test {unit} ({other_conv}) | {other_conv} − "
              f"{base_conv} [95% CI] | p | p, Holm | equivalence p "
              f"(±{report_lib.margin_text(accuracy)}), Holm | verdict | identical seeds |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for pair in pair_conventions(baseline[task], other[task]):
      label = _without_convention(pair.cell).label
      diff, p_text, p_holm, p_equiv, verdict = _paired_text(pair.paired, accuracy, higher)
      lines.append(
          f"| {label} | {pair.paired.test.n} | {report_lib.diagnosis_counts(pair.baseline)} | "
          f"{report_lib.metric_cells(pair.baseline, 'test', accuracy)[0]} | "
          f"{report_lib.diagnosis_counts(pair.other)} | "
          f"{report_lib.metric_cells(pair.other, 'test', accuracy)[0]} | "
          f"{diff} | {p_text} | {p_holm} | {p_equiv} | {verdict} | "
          f"{pair.identical}/{len(pair.other)} |")
    lines.append("")
  lines += ["## How each run was made", "", f"- {base_conv}: `{commands[0]}`",
            f"- {other_conv}: `{commands[1]}`"]
  return "\n".join(lines) + "\n"


def _command_of(results: dict[str, records.TaskResults]) -> str:
  return next((str(r.command) for r in results.values() if r.command), "")


def load_conventions(workdirs: Sequence[str], tasks: Sequence[str] | None) -> str:
  """render_conventions of two workdirs (baseline first), restricted to `tasks` if given.

  Raises:
    ValueError: not two workdirs, or a task neither holds.
    FileNotFoundError, ValueError: records.load_results's errors.
  """
  if len(workdirs) != 2:
    raise ValueError(f"--by=convention pairs two runs, got {len(workdirs)} workdirs: give the "
                     "baseline's (e.g. the torch convention's) and the other's.")
  baseline, other = (records.load_results(w) for w in workdirs)
  if tasks:
    missing = [t for t in tasks if t not in baseline or t not in other]
    if missing:
      raise ValueError(f"task {', '.join(missing)} is not in both runs (baseline has "
                       f"{', '.join(baseline)}; the other {', '.join(other)}): drop it from "
                       "--task, or leave --task out for every shared task.")
    baseline = {t: baseline[t] for t in tasks}
    other = {t: other[t] for t in tasks}
  return render_conventions(baseline, other, (_command_of(baseline), _command_of(other)))


_BY = flags.DEFINE_enum("by", "arm", ["arm", "convention"],
                        "arm: pair every arm with the protocol arm, one task. convention: pair "
                        "two runs' cells (baseline workdir first) that differ in the loss "
                        "convention alone, every task both ran.")
_TASK = flags.DEFINE_list("task", None,
                          "The task to compare (--by=arm: one, default multiclass; "
                          "--by=convention: default every task both runs hold).")
_WORKDIRS = flags.DEFINE_list("workdirs", None, "The runs' workdirs, the protocol's (or the "
                              "baseline convention's) among them.")
_OUT = flags.DEFINE_string("out", None, "Where to write the Markdown report (default: stdout).")
_ALLOW_OTHER_PROGRAMS = flags.DEFINE_bool(
    "allow_other_programs", False,
    "Pair members of runs whose numerics differ or are not recorded (results made before git "
    "7670ff1): their differences then carry the noise of the programs' composition, and the "
    "report says so.")


def program_mismatch(workdirs: Sequence[str], tasks: Sequence[str] | None) -> str | None:
  """Why members of `workdirs` (their `tasks`, default all) may not compute alike, or None.

  Members of different runs are computed alike when every results file records the same
  numerics fingerprint (`Engine.numerics`: member mode, precision, platform, versions, and
  in vmap mode the program's cells); runs made before it was recorded are unknown.
  """
  if len(set(workdirs)) < 2:
    return None
  prints: dict[str, set] = {}
  for workdir in workdirs:
    results = records.load_results(workdir)
    for task in tasks or results:
      if task in results:
        numerics = results[task].numerics or {}
        prints.setdefault(workdir, set()).add(numerics.get("fingerprint"))
  missing = [w for w, p in prints.items() if None in p]
  if missing:
    return ("their results record no numerics fingerprint (made before git 7670ff1): "
            + ", ".join(missing))
  if len({frozenset(p) for p in prints.values()}) > 1:
    return "their numerics fingerprints differ: " + "; ".join(
        f"{w}: {', '.join(sorted(p))}" for w, p in prints.items())
  return None


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIRS.value:
    raise app.UsageError("--workdirs: give the runs to compare, comma-separated.")
  try:
    mismatch = program_mismatch(_WORKDIRS.value, _TASK.value)
    if mismatch and not _ALLOW_OTHER_PROGRAMS.value:
      raise ValueError(
          f"these runs' members may not be computed alike, so pairs across them carry the noise "
          f"of their programs' composition ({mismatch}; docs/how_it_works.md#determinism): "
          "train the arms in one run (--arms, or comma lists of the training options), or pass "
          "--allow_other_programs to pair them anyway (the report then says so).")
    if _BY.value == "convention":
      text = load_conventions(_WORKDIRS.value, _TASK.value)
    else:
      tasks = _TASK.value or ["multiclass"]
      if len(tasks) != 1:
        raise app.UsageError(f"--task: --by=arm compares one task, got {', '.join(tasks)}.")
      text = render(load_arms(_WORKDIRS.value, tasks[0]), tasks[0])
  except (FileNotFoundError, ValueError) as err:
    print(f"jaxact.analysis.compare: error: {err}", file=sys.stderr)
    sys.exit(2)
  if mismatch:
    text = (f"> **Pairs across programs** (`--allow_other_programs`): {mismatch}. A member's "
            "numbers may then depend on the other members of its program, so each paired "
            "difference carries that noise too ([determinism](../../docs/how_it_works.md"
            "#determinism)).\n\n" + text)
  if _OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    files.atomic_write(_OUT.value, lambda f: f.write(text))
    print(f"wrote {_OUT.value}")
  else:
    print(text)


def run() -> None:
  """`python -m jaxact.compare`."""
  app.run(main)


if __name__ == "__main__":
  run()
