"""Builds a Markdown report and validation-curve figures from a run's saved results.

A training run writes a workdir:

  WORKDIR/run.json             how the run was made (command, machine, times, flags);
  WORKDIR/results/<task>.json  every member (cell x seed) trained for that task.

This module turns them (read through `jaxact.store.records`) into `WORKDIR/report.md`,
with one table per study, task and loss convention laid out like the source
documents (PROTOCOL section 8), and one figure of validation curves per task,
`WORKDIR/curves_<task>.png`. Every statistic is over a cell's seeds
(`jaxact.analysis.stats`): means with 95% t intervals, each misused cell paired by seed
against the recommended one, and failure rates with Wilson intervals; the
report's "How to read" section explains them. It never trains anything, so a
report can be rebuilt from saved results:

  python -m jaxact.report --workdir=DIR
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
from typing import Any, Iterable, Sequence

from absl import app
from absl import flags
import numpy as np

from jaxact.store import diagnostics as diagnostics_lib
from jaxact.analysis import figures
from jaxact.store import files
from jaxact.analysis import claims as claims_lib
from jaxact.store import records
from jaxact.analysis import stats as stats_lib
from jaxact.model import cells as studies
from jaxact.analysis import tables as tables_lib

Cell = studies.Cell
Members = list[records.MemberRecord]   # a cell's members
# The table layout and the words the figures share (jaxact.analysis.tables), under the report's names.
study_tables = tables_lib.study_tables
other_cells = tables_lib.other_cells
depth_sweep_figures = tables_lib.depth_sweep_figures
plural = tables_lib.plural

# The source documents' own single-run numbers, shown in an extra "original (source
# document)" column for the rows that have one. Key: (study, Cell.key of the row,
# convention included, so entries only match torch-convention rows unless a
# key says otherwise); value: (valid, test) in the units of the results files
# (accuracy as a fraction in [0, 1], MSE in original units), either may be
# None; a str value is printed as it is.
#
# The loss study's source document (section 3) printed single-run accuracies for six
# cells; its final layer was a softmax unless the row names a sigmoid, so its
# binary "Binary Cross-Entropy" row is softmax + bce. The activation study's printed none.
ORIGINAL_NUMBERS: dict[tuple[str, str], tuple[Any, Any]] = {
    ("loss", "binary/softmax+bce"): (0.9660, 0.9728),
    ("loss", "binary/softmax+mse"): (0.9733, 0.9785),
    ("loss", "binary/sigmoid+mse"): (0.9693, 0.9767),
    ("loss", "multiclass/softmax+cce"): (0.9707, 0.9757),
    ("loss", "multiclass/softmax+mse"): (0.9687, 0.9730),
    ("loss", "multiclass/sigmoid+mse"): (0.1097, 0.1028),
}

# Split sizes of PROTOCOL section 1, the denominators of the infinite-prediction
# counts; a results file may override them with "n_valid" / "n_test".
N_VALID = 3000
N_TEST = 10000

MARK_RECOMMENDED = "✅"
MARK_MISUSED = "❌"

_STUDY_TITLES = {
    "activation": "final-activation study",
    "loss": "loss study",
    "hidden": "hidden-layer study",
}
KIND_TEXT = tables_lib.KIND_TEXT
_STATUS_ORDER = ("ok", "hit_cap", "nonfinite", "invalid")
# The stopping column says how training ended, not whether the member is healthy
# (that is the diagnosis column): "ok" is shown as "early-stopped".
_STATUS_TEXT = {"ok": "early-stopped", "hit_cap": "hit cap", "nonfinite": "nonfinite",
                "invalid": "invalid"}
_NOT_DIAGNOSED = "not diagnosed"
CONFIDENCE = 0.95   # of every interval in the report
ALPHA = 0.05        # significance level of the paired tests' verdicts


# ---------------------------------------------------------------------------
# Statistics and formatting.


def summarize(values: Sequence[float]) -> dict:
  """Mean, population std (ddof 0), min and max over the finite values.

  Args:
    values: numbers; NaN, +-inf and None count as non-finite.

  Returns:
    {"mean", "std", "min", "max"} (floats, NaN when no value is finite),
    "n" (number of finite values) and "n_nonfinite".
  """
  arr = np.array([records.as_float(v) for v in values], dtype=np.float64)
  finite = arr[np.isfinite(arr)]
  n_nonfinite = int(arr.size - finite.size)
  if finite.size == 0:
    nan = float("nan")
    return dict(mean=nan, std=nan, min=nan, max=nan, n=0, n_nonfinite=n_nonfinite)
  return dict(mean=float(np.mean(finite)), std=float(np.std(finite)),
              min=float(np.min(finite)), max=float(np.max(finite)),
              n=int(finite.size), n_nonfinite=n_nonfinite)


def _fmt(v: Any, accuracy: bool) -> str:
  """Accuracy as a percentage with 2 decimals, MSE with 4 significant digits."""
  if isinstance(v, str):
    return v
  v = records.as_float(v)
  if math.isnan(v):
    return "nan"
  if math.isinf(v):
    return "inf" if v > 0 else "-inf"
  return f"{100.0 * v:.2f}" if accuracy else f"{v:#.4g}"


def _metric_title(result: records.TaskResults, task: str) -> str:
  if result.is_accuracy:
    return "accuracy, higher is better"
  if str(result.metric_name).lower() == "mse":
    return "MSE in original units, lower is better"
  better = "higher" if result.higher_is_better else "lower"
  return f"{result.metric_name}, {better} is better"


def _nonfinite_kinds(members: Members, field: str) -> str:
  """E.g. '1 invalid, 2 inf' for the members whose `field` is not finite."""
  counts: collections.Counter = collections.Counter()
  for m in members:
    v = m.value(field)
    if math.isfinite(v):
      continue
    if math.isnan(v) and m.status == "invalid":
      counts["invalid"] += 1
    elif math.isinf(v):
      counts["inf" if v > 0 else "-inf"] += 1
    else:
      counts["NaN"] += 1
  return ", ".join(f"{k} {kind}" for kind, k in counts.items())


def _is_failure(kind: str | None) -> bool:
  """Whether a kind is a failure (a kind this version does not know counts as one)."""
  return kind is not None and (kind in diagnostics_lib.FAILURES
                               or kind not in diagnostics_lib.KINDS)


def _kind_name(kind: str | None) -> str:
  return _NOT_DIAGNOSED if kind is None else kind.replace("_", " ")


def _ordered_kinds(kinds: Iterable[str | None]) -> list[str | None]:
  """The distinct kinds: healthy, the other non-failures (hit cap), the failure kinds in KINDS
  order, unknown kinds (sorted), None (not diagnosed) last."""
  kinds = set(kinds)
  known = sorted((k for k in diagnostics_lib.KINDS if k in kinds),
                 key=lambda k: (k != "healthy", _is_failure(k), diagnostics_lib.KINDS.index(k)))
  return known + sorted(k for k in kinds if k is not None and k not in known) + (
      [None] if None in kinds else [])


def _class_name(members: Members) -> str:
  """'healthy', 'healthy or hit cap', 'collapsed': the kinds of `members`."""
  return " or ".join(_kind_name(k) for k in _ordered_kinds(m.kind for m in members))


def _fmt_ci(iv: stats_lib.Interval, accuracy: bool, unit: str = "") -> str:
  """'97.41 [97.30, 97.52]' (the unit after the mean); '97.41 [1 seed, no CI]' for n == 1."""
  ci = (f"[{_fmt(iv.low, accuracy)}, {_fmt(iv.high, accuracy)}]" if iv.n > 1
        else "[1 seed, no CI]")
  return f"{_fmt(iv.estimate, accuracy)}{unit} {ci}"


def metric_cells(members: Members, field: str, accuracy: bool,
                  unit: str = "") -> tuple[str, str]:
  """The (mean [95% CI], median; min–max) cells of one metric of one row.

  All finite members of one class (not failed: healthy, hit cap or not diagnosed; or
  failed): their statistics. Failed and not-failed members mixed: the statistics of the
  not-failed ones, prefixed with their count and class ("7 healthy: ..."). Failed members
  only: their statistics, prefixed likewise ("3 collapsed: ..."). Values that fall into
  several modes (`stats.split_modes`) are shown as their modes, each with its count, mean
  and interval ("2 modes: 9 at 78.81 [78.62, 79.00]; 1 at 76.89"), never as one mean.
  """
  finite = [m for m in members if math.isfinite(m.value(field))]
  extra = _nonfinite_kinds(members, field)
  if not finite:
    return f"no finite value ({extra})", ""
  failed = [m for m in finite if _is_failure(m.kind)]
  chosen = [m for m in finite if not _is_failure(m.kind)] or failed
  label = f"{len(chosen)} {_class_name(chosen)}: " if failed else ""
  values = [m.value(field) for m in chosen]
  modes = stats_lib.split_modes(values)
  if len(modes) > 1:
    label += f"{len(modes)} modes: "
    mean = label + "; ".join(
        f"{len(g)} at " + _fmt_ci(stats_lib.mean_interval([values[i] for i in g], CONFIDENCE),
                                  accuracy, unit).replace(" [1 seed, no CI]", "")
        for g in modes)
  else:
    mean = label + _fmt_ci(stats_lib.mean_interval(values, CONFIDENCE), accuracy, unit)
  if extra:
    mean += f" (+{extra})"
  spread = (f"median {_fmt(float(np.median(values)), accuracy)}; "
            f"{_fmt(min(values), accuracy)}–{_fmt(max(values), accuracy)}")
  return mean, spread


def status_counts(members: Members) -> str:
  """'7 early-stopped, 3 hit cap': how the members' training ended (never 'ok')."""
  counts = collections.Counter(str(m.status or "unknown") for m in members)
  order = [s for s in _STATUS_ORDER if s in counts]
  order += sorted(s for s in counts if s not in _STATUS_ORDER)
  return ", ".join(f"{counts[s]} {_STATUS_TEXT.get(s, s)}" for s in order)


def _mean_text(values: list[float]) -> str:
  s = summarize(values)
  return "–" if s["n"] == 0 else f"{s['mean']:.1f}"


def _seeds_text(members: Members) -> str:
  """E.g. 'seed 1' or 'seeds 0, 2'."""
  word = "seed" if len(members) == 1 else "seeds"
  return f"{word} " + ", ".join(_seed_text(m) for m in members)


def _seed_text(m: records.MemberRecord) -> str:
  return "?" if m.seed is None else str(m.seed)


def _epoch_1based(epoch: Any) -> str:
  return str(epoch + 1) if isinstance(epoch, int) and epoch >= 0 else "?"


def _escape(text: Any) -> str:
  """Makes free text safe inside a Markdown table cell."""
  return " ".join(str(text).split()).replace("|", "\\|")


def _invalid_reason(members: Members) -> str:
  reasons = []
  for m in members:
    r = m.status_reason or "reason not recorded"
    if r not in reasons:
      reasons.append(r)
  return _escape("; ".join(reasons))


def _row_notes(members: Members, result: records.TaskResults) -> str:
  """Infinite predictions, non-finite epochs and partial invalidity of one row."""
  notes = []
  n_test = N_TEST if result.n_test is None else result.n_test
  n_valid = N_VALID if result.n_valid is None else result.n_valid
  for field, n, what in (("n_infinite_test", n_test, "test predictions infinite"),
                         ("n_infinite_valid", n_valid,
                          "valid predictions infinite at the best epoch")):
    hit = [m for m in members if (getattr(m, field) or 0) > 0]
    if hit:
      counts = ", ".join(f"{int(getattr(m, field))}/{n}" for m in hit)
      notes.append(f"{counts} {what} ({_seeds_text(hit)})")
  nonfinite = [m for m in members if m.status == "nonfinite"]
  if nonfinite:
    parts = ", ".join(f"seed {_seed_text(m)} at epoch {_epoch_1based(m.status_epoch)}"
                      for m in nonfinite)
    notes.append(f"non-finite: {parts}")
  invalid = [m for m in members if m.status == "invalid"]
  if invalid and len(invalid) < len(members):
    notes.append(f"invalid ({_seeds_text(invalid)}): {_invalid_reason(invalid)}")
  return "; ".join(_escape(n) for n in notes)


def _original_text(study: str | None, cell: Cell, accuracy: bool) -> str | None:
  if study is None:
    return None
  entry = ORIGINAL_NUMBERS.get((study, cell.key))
  if entry is None:
    return None
  valid, test = entry
  show = lambda v: "–" if v is None else _fmt(v, accuracy)
  return f"{show(valid)} / {show(test)}"


def original_inside(study: str | None, cell: Cell, members: Members
                    ) -> list[tuple[str, float, stats_lib.Interval, bool]]:
  """The original's values of a row against jaxact's 95% prediction interval for one run.

  Returns:
    (field, the original's value, the prediction interval over every finite member of the
    row, whether the value lies inside it) for each of best_valid and test the source
    document printed; [] for a row without an original value. A single new run is a draw
    from the whole cell, failed members included, hence every finite member.
  """
  entry = ORIGINAL_NUMBERS.get((study, cell.key)) if study is not None else None
  if entry is None:
    return []
  out = []
  for field, value in zip(("best_valid", "test"), entry):
    if isinstance(value, (int, float)):
      iv = stats_lib.prediction_interval([m.value(field) for m in members],
                                         CONFIDENCE)
      out.append((field, float(value), iv, iv.n > 1 and iv.low <= value <= iv.high))
  return out


def _prediction_text(study: str | None, cell: Cell, members: Members, accuracy: bool
                     ) -> str | None:
  """'[96.21, 97.33] inside / [96.95, 97.81] outside': per original value, jaxact's 95%
  prediction interval for one run and where the original's value lies."""
  checks = original_inside(study, cell, members)
  if not checks:
    return None
  parts = []
  for _, _, iv, inside in checks:
    parts.append("no interval (1 seed)" if iv.n < 2 else
                 f"[{_fmt(iv.low, accuracy)}, {_fmt(iv.high, accuracy)}] "
                 + ("inside" if inside else "outside"))
  return " / ".join(parts)


# ---------------------------------------------------------------------------
# Markdown.


def _table(rows: list[tuple[Cell, bool | None, Members]], task: str, result: records.TaskResults,
           study: str | None) -> list[str]:
  """One Markdown table; `rows` are (cell, recommended or None, members)."""
  accuracy = result.is_accuracy
  unit = "accuracy %" if accuracy else "MSE"
  with_marker = any(r is not None for _, r, _ in rows)
  body = []
  for cell, recommended, members in rows:
    if all(m.status == "invalid" for m in members):
      text = f"invalid: {_invalid_reason(members)}"
      valid, valid_range, test, test_range = text, "", text, ""
    else:
      valid, valid_range = metric_cells(members, "best_valid", accuracy)
      test, test_range = metric_cells(members, "test", accuracy)
    best = [m.best_epoch + 1 for m in members
            if isinstance(m.best_epoch, (int, float)) and m.best_epoch >= 0]
    cols = [_escape(cell.label), str(len(members)), diagnosis_counts(members),
            valid, valid_range, test, test_range, _mean_text(best),
            _mean_text([m.epochs_trained for m in members]), status_counts(members)]
    if with_marker:
      mark = "" if recommended is None else (
          MARK_RECOMMENDED if recommended else MARK_MISUSED)
      cols.insert(0, mark)
    original = _original_text(study, cell, accuracy)
    if original is not None:
      original = (original, _prediction_text(study, cell, members, accuracy) or "")
    body.append((cols, _row_notes(members, result), original))
  header = ["variant", "n seeds", "diagnosis (members per class)",
            f"best valid {unit}: mean [95% CI]", "median; min–max",
            f"test {unit} at best epoch: mean [95% CI]", "median; min–max",
            "best epoch (1-based, mean)", "epochs trained (mean)", "stopping"]
  if with_marker:
    header.insert(0, " ")
  any_note = any(note for _, note, _ in body)
  any_original = any(orig is not None for _, _, orig in body)
  if any_note:
    header.append("note")
  if any_original:
    header += ["original (source document): valid / test",
               "jaxact's 95% prediction interval for one run: valid / test, the original"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for cols, note, orig in body:
    cols = list(cols)
    if any_note:
      cols.append(note)
    if any_original:
      cols += list(orig or ("", ""))
    lines.append("| " + " | ".join(cols) + " |")
  return lines


def paired_by_seed(a: Members, b: Members, field: str
                   ) -> tuple[stats_lib.PairedTest, int]:
  """(paired test of a - b on `field` over the seeds both have, how many seeds both have)."""
  xa, xb = seed_pairs(a, b, field)
  return stats_lib.paired_test(xa, xb, CONFIDENCE), len(xa)


def _reference(cell: Cell, recommended: list[tuple[Cell, Members]]
               ) -> tuple[Cell, Members]:
  """The recommended row a misused cell is compared with: the first with its target treatment."""
  return next((r for r in recommended if r[0].norm == cell.norm), recommended[0])


def _fmt_diff(v: float, accuracy: bool) -> str:
  """A signed difference: accuracy points with 2 decimals, MSE with 4 significant digits."""
  if not math.isfinite(v):
    return _fmt(v, accuracy)
  return f"{100.0 * v:+.2f}" if accuracy else f"{v:+#.4g}"


def _p_text(p: float) -> str:
  return "–" if math.isnan(p) else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


_TEST_SHORT = {stats_lib.TEST_SIGN_FLIP: "exact sign-flip", stats_lib.TEST_WILCOXON: "Wilcoxon"}


def margin_of(accuracy: bool) -> float:
  """The equivalence margin of a metric, in its units (stats.EQUIVALENCE_MARGIN_*)."""
  return (stats_lib.EQUIVALENCE_MARGIN_ACCURACY if accuracy
          else stats_lib.EQUIVALENCE_MARGIN_MSE)


def margin_text(accuracy: bool) -> str:
  """The margin as the tables print it: '0.50 points' or '0.01 MSE'."""
  m = margin_of(accuracy)
  return f"{100.0 * m:.2f} points" if accuracy else f"{m:g} MSE"


Family = dict[tuple[Cell, Cell], stats_lib.Comparison]


def _comparisons(rows: list[tuple[Cell, bool | None, Members]]
                 ) -> list[tuple[Cell, Members, Cell, Members]]:
  """(misused cell, its members, the recommended cell it is compared with, its members)."""
  recommended = [(c, ms) for c, r, ms in rows if r is True]
  if not recommended:
    return []
  return [(c, ms) + _reference(c, recommended) for c, r, ms in rows if r is False]


def task_family(tables: Iterable[list[tuple[Cell, bool | None, Members]]], accuracy: bool
                ) -> Family:
  """The declared family of a task: every misused cell of its tables against its recommended
  cell (each pair once), test metric paired by seed, Holm-adjusted together.

  Args:
    tables: the rows of each of the task's tables (`study_tables`).
    accuracy: whether the metric is an accuracy (it picks the equivalence margin).

  Returns:
    (misused cell, recommended cell) -> its Comparison.
  """
  pairs: dict[tuple[Cell, Cell], tuple[list[float], list[float]]] = {}
  for rows in tables:
    for cell, members, ref_cell, ref_members in _comparisons(rows):
      if (cell, ref_cell) not in pairs:
        pairs[(cell, ref_cell)] = seed_pairs(members, ref_members, "test")
  comparisons = stats_lib.compare_family(list(pairs.values()), margin_of(accuracy), CONFIDENCE)
  return dict(zip(pairs, comparisons))


def seed_pairs(a: Members, b: Members, field: str) -> tuple[list[float], list[float]]:
  """`field` of a's and b's members over the seeds both have, in a's seed order."""
  sa, sb = claims_lib.by_seed(a), claims_lib.by_seed(b)
  seeds = [s for s in sa if s in sb]
  return ([sa[s].value(field) for s in seeds],
          [sb[s].value(field) for s in seeds])


def _paired_table(rows: list[tuple[Cell, bool | None, Members]], task: str,
                  result: records.TaskResults, family: Family) -> list[str]:
  """Each misused row against the table's recommended row, test metric paired by seed, with
  the p-values adjusted in the task's family."""
  comparisons = _comparisons(rows)
  if not comparisons:
    return []
  accuracy = result.is_accuracy
  higher = result.higher_is_better
  unit = "accuracy points" if accuracy else "MSE"
  margin = margin_text(accuracy)
  size = next(iter(family.values())).family_size if family else 0
  lines = [f"Paired by seed: each {MARK_MISUSED} cell minus {MARK_RECOMMENDED}, test metric at "
           "the best epoch, all finite pairs (failed members included). Family: the "
           f"{plural(size, 'comparison')} of {task} in this report (Holm); equivalence "
           f"margin ±{margin}.", "",
           f"| {MARK_MISUSED} variant | compared with {MARK_RECOMMENDED} | pairs | "
           f"test difference in {unit}: mean [95% CI] | p (test) | p, Holm | "
           f"equivalence p (TOST, ±{margin}), Holm | verdict |",
           "|---|---|---|---|---|---|---|---|"]
  for cell, members, ref_cell, ref_members in comparisons:
    comparison = family[(cell, ref_cell)]
    test = comparison.test
    common = len(seed_pairs(members, ref_members, "test")[0])
    pairs = (f"{test.n}" if test.n == common else f"{test.n} of {common} common seeds")
    if test.n == 0:
      diff = "no finite pair" if common else "no seed in both"
      p = "–"
    else:
      ci = (f"[{_fmt_diff(test.low, accuracy)}, {_fmt_diff(test.high, accuracy)}]"
            if test.n > 1 else "[1 pair, no CI]")
      diff = f"{_fmt_diff(test.mean_difference, accuracy)} {ci}"
      p = f"{_p_text(test.p_value)} ({_TEST_SHORT.get(test.test, test.test)})"
    lines.append(f"| {_escape(cell.label)} | {_escape(ref_cell.label)} | {pairs} | {diff} | {p} "
                 f"| {_p_text(comparison.p_adjusted)} | "
                 f"{_p_text(comparison.p_equivalence_adjusted)} | "
                 f"{stats_lib.verdict(comparison, higher, ALPHA, margin)} |")
  return lines


def _originals_count(task: str, tables: Iterable[tuple[str, list]], accuracy: bool
                     ) -> list[str]:
  """The line counting the original's values inside jaxact's prediction intervals, if any."""
  seen, checks = set(), []
  for study, rows in tables:
    for cell, _, members in rows:
      if (study, cell) not in seen:
        seen.add((study, cell))
        checks += [(cell, c) for c in original_inside(study, cell, members)]
  if not checks:
    return []
  inside = sum(1 for _, c in checks if c[3])
  outside = ", ".join(f"{_escape(cell.label)} {'valid' if c[0] == 'best_valid' else 'test'} "
                      f"{_fmt(c[1], accuracy)}" for cell, c in checks if not c[3])
  return [f"The original's single-run values (source document) inside jaxact's 95% prediction "
          f"interval for one new run: **{inside} of {len(checks)}**"
          + (f"; outside: {outside}." if outside else "."), ""]


def _rates_section(task: str, groups: dict[Cell, Members]) -> list[str]:
  """Per cell, the share of members of each failure kind and that hit the cap (Wilson CIs)."""
  body = []
  for cell, members in groups.items():
    n = len(members)
    counts = collections.Counter(m.kind for m in members)
    named = [(_kind_name(k), counts[k]) for k in _ordered_kinds(counts) if _is_failure(k)]
    named.append(("hit cap", sum(1 for m in members if m.status == "hit_cap")))
    parts = [_rate_text(name, k, n) for name, k in named if k]
    if parts:
      body.append(f"| {_escape(cell.label)} | {n} | {'; '.join(parts)} |")
  n_all = sum(len(ms) for ms in groups.values())
  undiagnosed = sum(1 for ms in groups.values() for m in ms if m.kind is None)
  caveat = ("" if not undiagnosed else
            f" {plural(undiagnosed, 'member')} not diagnosed: only invalid and nonfinite are "
            "counted as failures for them.")
  if not body:
    return [f"Rates: no member of {task} failed or hit the epoch cap ({n_all} members)."
            + caveat, ""]
  return [f"### {task}: failure and hit-cap rates", "",
          "Per cell: k/n members of each failure kind (diagnosis) and that hit the epoch cap "
          "(stopping) = share [Wilson 95% CI], cells and kinds with k > 0." + caveat, "",
          "| variant | n seeds | k/n = share [95% CI] |", "|---|---|---|"] + body + [""]


def _rate_text(name: str, k: int, n: int) -> str:
  """'collapsed 3/10 = 30.0% [10.8, 60.3]'."""
  iv = stats_lib.wilson_interval(k, n, CONFIDENCE)
  return f"{name} {k}/{n} = {100 * iv.estimate:.1f}% [{100 * iv.low:.1f}, {100 * iv.high:.1f}]"


def _variant_title(variant: dict[str, Any]) -> str:
  """', he init, relu hidden' for a network other than PROTOCOL's, '' for PROTOCOL's."""
  label = Cell("", "", "", **variant).label
  return ", " + label[label.index("(") + 1:-1] if "(" in label else ""


def diagnosis_counts(members: Members) -> str:
  """'7 healthy, 3 collapsed': the members per diagnosis kind (`_ordered_kinds`).

  A member without a diagnosis counts by its status when that is a failure kind
  (invalid, nonfinite), else as "not diagnosed".
  """
  counts = collections.Counter(m.kind for m in members)
  return ", ".join(f"{counts[k]} {_kind_name(k)}" for k in _ordered_kinds(counts))


def _diagnoses_section(task: str, groups: dict[Cell, Members]) -> list[str]:
  """One line per cell with a failure: its kinds and one seed's evidence per kind."""
  lines = []
  for cell, members in groups.items():
    by_kind: dict[str, Members] = {}
    for m in members:
      if m.diagnosis is not None and m.diagnosis.kind in diagnostics_lib.FAILURES:
        by_kind.setdefault(m.diagnosis.kind, []).append(m)
    for kind, ms in by_kind.items():
      lines.append(f"- **{_escape(cell.label)}**: {KIND_TEXT[kind]} in {len(ms)}/{len(members)} "
                   f"seeds. Seed {_seed_text(ms[0])}: {_escape(ms[0].diagnosis.evidence)}.")
  if not lines:
    return []
  return [f"### {task}: diagnoses of the failing cells", "",
          "Measured in the training program (see *How to read*); one seed's evidence per "
          "cell and kind.", ""] + lines + [""]


def _code(text: str) -> str:
  fence = "``" if "`" in text else "`"
  pad = " " if "`" in text else ""
  return f"{fence}{pad}{text}{pad}{fence}"


def _common(results: dict[str, records.TaskResults], key: str) -> Any:
  values = {json.dumps(getattr(r, key)) for r in results.values()}
  return getattr(next(iter(results.values())), key) if len(values) == 1 else None


# What each diagnosis kind means, for the "How to read" section (kinds not listed here are
# named only; jaxact/store/diagnostics.py defines them all).
_KIND_HELP = {
    "no_gradient": "every gradient exactly 0",
    "vanishing_gradient": "at chance, and the first layer's gradient at initialisation below "
                          "1e-3 of the output layer's",
    "dead_head": "a ReLU head whose output is 0 on every example",
    "collapsed": "a constant predictor at the best epoch; for regression also an MSE equal to "
                 "the constant predictor's",
    "ceiling": "the multi-label softmax bound, computed from the test labels",
    "clamped": "a ReLU head on standardised regression targets, which cannot predict below "
               "the training mean; its least possible MSE is computed from the targets",
    "unbounded_loss": "a loss that should be >= 0 went below 0",
    "no_learning": "at chance level",
    "underperforming": "far below the best cell of the same run",
    "hit_cap": "still improving at the epoch cap, otherwise healthy",
    "invalid": "as the stopping column",
    "nonfinite": "as the stopping column",
}


def _kinds_help() -> str:
  """'**invalid** (...), ..., **healthy**' over diagnostics.KINDS, failures marked."""
  parts = []
  for k in diagnostics_lib.KINDS:
    text = f"**{_kind_name(k)}**"
    if k in _KIND_HELP:
      text += f" ({_KIND_HELP[k]})"
    parts.append(text)
  failures = ", ".join(_kind_name(k) for k in diagnostics_lib.FAILURES)
  return "; ".join(parts) + f". Failure kinds: {failures}."


def _how_to_read(results: dict[str, records.TaskResults]) -> list[str]:
  patience = _common(results, "patience")
  max_epochs = _common(results, "max_epochs")
  patience = f"{patience}" if patience is not None else "`patience`"
  cap = f"--max_epochs ({max_epochs})" if max_epochs is not None else "--max_epochs"
  return [
      "## How to read",
      "",
      _reading_rows(),
      "",
      _reading_pairs(),
      "",
      _reading_modes(),
      "",
      _reading_rates(),
      "",
      _reading_stopping(patience, cap),
      "",
      _reading_diagnosis(),
  ]


def _reading_rows() -> str:
  """How to read: the rows and their statistics."""
  return (
      "Each row is one cell (final activation, loss, target treatment, loss convention) "
      "trained once per seed; all seeds share one data split. Every statistic of a row is "
      "over its seeds (members of that cell), over the finite values only (non-finite ones "
      "are counted next to the mean). Metric columns: the mean with its 95% confidence "
      "interval [low, high] from Student's t distribution, mean ± t(0.975, n-1) · s / √n "
      "with s the sample std (ddof 1) of the n finite values (no interval for one seed; the "
      "interval is not clipped to the metric's range); then the median and min–max. With "
      "few seeds the interval is wide: t(0.975, n-1) is 4.30 for 3 seeds, 2.26 for 10. When "
      "a row's finite members are not all of one class (healthy or hit cap against a failure "
      "kind of the diagnosis column), the statistics are over its members that did not fail "
      "only, prefixed with their count and class (\"7 healthy: ...\"); when all failed, over "
      "all finite members, prefixed with the failure kinds (\"10 collapsed: ...\"). "
      "Accuracies are percentages; MSE is in the targets' original units. The test metric is "
      "measured with each seed's best-valid-epoch weights, not its last epoch's. Epochs are "
      "1-based everywhere in this report (epoch 1 is the first pass over the training "
      "data), so an early-stopped member trained best epoch + patience epochs. "
      f"{MARK_RECOMMENDED} marks what the source documents recommend, {MARK_MISUSED} a misuse. "
      "The torch convention feeds every loss the head's output, as the original PyTorch "
      "code did; the logits convention computes each loss from the pre-activation logits. "
      "Where both conventions compute the same loss (mse, mae and rmse; heads none and "
      "relu), the cell is trained once and its row, without the [logits] tag, appears in "
      "both conventions' tables.")


def _reading_pairs() -> str:
  """How to read: the paired differences, their tests and verdicts."""
  return (
      f"Paired differences (below a table with {MARK_RECOMMENDED} and {MARK_MISUSED} rows): "
      f"each misused cell minus the table's recommended cell (with several, the first with "
      "the same target treatment), on the test metric. Members with the same seed share "
      "initial weights and batch order, so they are compared pair by pair, using every pair "
      "where both values are finite, failed members included: a collapsed member's test "
      "accuracy is part of the misuse's effect. Given: the mean difference (accuracy points, "
      "or MSE) with its 95% t interval over the pairs, and the two-sided p-value of an exact "
      "sign-flip permutation test of the mean difference (Fisher 1935, Pitman 1937: all 2^n "
      "sign patterns of the n differences are equally likely under no effect; used up to 16 "
      "pairs) or, for more pairs, of the Wilcoxon signed-rank test. Every comparison of a "
      "task (all its tables, each pair of cells once) is one family: its p-values are "
      "adjusted together by Holm's step-down method (Holm 1979), which keeps the chance of "
      f"any false \"better\" or \"worse\" in the family below {ALPHA:g}. Beside it, the "
      "equivalence p-value: two one-sided t tests (TOST, Schuirmann 1987) that the mean "
      f"difference lies inside ±{margin_text(True)} (accuracy) or ±{margin_text(False)} "
      "(regression), Holm-adjusted in the same family; the margins are fixed per metric "
      "(docs/statistics.md says why). Verdict: \"worse\" or \"better\" (the misuse against "
      f"the recommended cell, in the metric's direction) when the adjusted p < {ALPHA:g}; "
      f"else \"equivalent within ±m\" when the adjusted equivalence p < {ALPHA:g}; else "
      "\"inconclusive\" (the data can tell neither a difference nor an equivalence). With n "
      "pairs the exact test cannot go below 2 / 2^n, so 5 or fewer seeds never show a "
      "difference at this level, and a family of k comparisons needs 2 / 2^n < 0.05 / k for "
      "its smallest p.")


def _reading_modes() -> str:
  """How to read: modes, and the original's values against the prediction interval."""
  return (
      "Values that fall into separate modes (sorted, a gap larger than "
      f"{stats_lib.MODE_GAP_FACTOR:g} times the pooled spread within the groups it makes, "
      f"for {stats_lib.MODE_MIN_VALUES} or more values) are shown as their modes, each with "
      "its count, mean and interval, e.g. \"2 modes: 9 at 78.81 [78.62, 79.01]; 1 at "
      "76.89\" (the multi-label softmax + cce test accuracy of the 10-seed torch grid). "
      "The original's single-run values (source document) are set against jaxact's "
      "95% prediction interval for one new run, mean ± t(0.975, n-1) · s · √(1 + 1/n) over "
      "every finite member of the row: the question is whether one more run like the "
      "original's is plausible under jaxact's seeds, not where jaxact's mean lies.")


def _reading_rates() -> str:
  """How to read: the failure and cap rates."""
  return (
      "Rates: per cell, k/n members of each failure kind and k/n members that hit the epoch "
      "cap, with a Wilson score 95% interval (Wilson 1927), which stays inside [0, 100]% and "
      "is informative at k = 0 (0/10 still allows up to 27.8%).")


def _reading_stopping(patience: str, cap: str) -> str:
  """How to read: the stopping column."""
  return (
      "Stopping (how training ended, not whether the member learned: that is the diagnosis "
      f"column): **early-stopped**: after {patience} epochs without strict improvement of "
      f"the valid metric; **hit cap**: still improving at {cap}; "
      "**invalid**: the loss refused its input (as PyTorch raised an error), the reason "
      "is given; **nonfinite**: the loss or the parameters became NaN/inf at epoch k "
      "(see the note), the member was frozen at its last finite state.")


def _reading_diagnosis() -> str:
  """How to read: the diagnosis column."""
  return (
      "Diagnosis: the members of the cell per class, e.g. \"7 healthy, 3 collapsed\". Each "
      "member's class comes from what the training program measured every epoch (per-layer "
      "gradient and parameter norms; on the valid set, the share of hidden units saturated "
      "(activation derivative below 1% of its maximum on 99% of the examples) or dead "
      "(derivative exactly 0 on every example), the output spread across inputs, the share "
      "of examples off the most frequent argmax, and the share on which the head is "
      "saturated: no entry of its Jacobian above 1e-6); members of runs without in-program "
      "diagnostics are \"not diagnosed\" unless their stopping was invalid or nonfinite. "
      f"Classes, the first that applies: {_kinds_help()} Definitions and thresholds: "
      "`jaxact/store/diagnostics.py`.")


def _task_section(task: str, result: records.TaskResults, info: dict,
                  workdir_conventions: list[str]) -> list[str]:
  """The report's section of one task: facts, tables, paired tests, rates, diagnoses, claims,
  figure links."""
  groups = result.groups()
  lines = [f"## {task}: {_metric_title(result, task)}", ""]
  facts = []
  for key, name in (("init", "init"), ("split_seed", "split seed"),
                    ("split_fingerprint", "split fingerprint"),
                    ("max_epochs", "max epochs"), ("patience", "patience")):
    if getattr(result, key) is not None:
      facts.append(f"{name} {getattr(result, key)}")
  if isinstance(result.wall_time_s, (int, float)):
    facts.append(f"wall time {result.wall_time_s:.1f} s")
  n_members = sum(len(ms) for ms in groups.values())
  facts.append(f"{plural(n_members, 'member')} in {plural(len(groups), 'cell')}")
  lines += ["; ".join(facts) + ".", ""]
  training = (result.training or {}).get("label")
  if training:
    lines += [f"Training differs from PROTOCOL's (AdamW, lr 0.001, weight decay 0.01, batch "
              f"32, PyTorch's head bias): **{_escape(training)}**; every cell below is "
              "trained so.", ""]
  # A task trained by another command than run.json's (e.g. tasks run as
  # parallel processes into one workdir) says which command and machine made it.
  for key, name in (("command", "Made by"), ("machine", "Machine")):
    value = getattr(result, key)
    if value and value != info.get(key):
      lines += [f"{name}: {_code(value) if key == 'command' else value}", ""]
  which = result.studies(info)
  tables = list(study_tables(task, groups, workdir_conventions, which))
  family = task_family((rows for _, _, rows, _ in tables), result.is_accuracy)
  for study, conv, rows, variant in tables:
    title = _STUDY_TITLES.get(study, f"{study} study")
    net = "" if not variant else _variant_title(variant)
    lines += [f"### {task}: {title}, {conv} convention{net}", ""]
    lines += _table(rows, task, result, study) + [""]
    paired = _paired_table(rows, task, result, family)
    if paired:
      lines += paired + [""]
  lines += _originals_count(task, ((study, rows) for study, _, rows, _ in tables),
                            result.is_accuracy)
  others = other_cells(task, groups, which)
  if others:
    lines += [f"### {task}: Other cells (in no study grid)", ""]
    lines += _table([(c, None, groups[c]) for c in others], task, result, None) + [""]
  lines += _rates_section(task, groups)
  lines += _diagnoses_section(task, groups)
  claims = claims_lib.hidden_claims(groups, result)
  if claims:
    lines += claims_lib.render(claims) + [""]
  if figures.curves_figure(task, groups):
    lines += [f"![valid curves](curves_{task}.png)", ""]
  lines += [s for alt, name in figures.heatmap_figures(task, groups)
            for s in (f"![{alt}]({name})", "")]
  if any(m.diagnostics.get("saturated") for ms in groups.values() for m in ms):
    lines += [f"![hidden-unit saturation](saturation_{task}.png)", ""]
  for conv, name in depth_sweep_figures(task, groups):
    lines += [f"![gradient norm per layer against depth, {conv} convention]({name})", ""]
  return lines


def render_markdown(workdir: str) -> str:
  """The report for the run in `workdir`, as Markdown text (nothing is written).

  Raises:
    FileNotFoundError, ValueError: as records.load_results.
  """
  results = records.load_results(workdir)
  info = records.load_run_info(workdir)
  command = info.get("command") or (" ".join(map(str, info["argv"])) if info.get("argv")
                                    else None)
  lines = [
      "# jaxact report: final-activation and loss misuse on MNIST",
      "",
      f"Made by: {_code(command) if command else 'unknown'}",
      "",
      f"Machine: {_escape(info.get('machine') or 'unknown')}",
      "",
      f"Started: {info.get('started') or 'unknown'}; finished: "
      + (info.get("finished") or ("not recorded (interrupted or still running)"
                                  if info else "unknown")),
      "",
  ]
  if info.get("jaxact_version"):
    lines += [f"jaxact version: {info['jaxact_version']}", ""]
  if isinstance(info.get("config"), dict) and info["config"]:
    cfg = ", ".join(f"{k}={v}" for k, v in sorted(info["config"].items()))
    lines += [f"Flags: {_code(cfg)}", ""]
  lines += [
      "Rebuild this report from the saved results, without training: "
      f"{_code(f'python -m jaxact.report --workdir={workdir}')}",
      "",
  ]
  workdir_conventions = tables_lib.conventions_of(
      {c: [] for r in results.values() for c in r.groups()})
  for task, result in results.items():
    lines += _task_section(task, result, info, workdir_conventions)
  lines += _how_to_read(results)
  return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------
# The README summary, and the figures' file names.


def render_summary(workdir: str, study: str = "activation", convention: str = "torch") -> str:
  """One compact table over all tasks of one study: variant, diagnosis, valid and test, stopping.

  Valid and test are the mean over seeds with its 95% t interval (of the healthy members
  when some failed, labelled; see `metric_cells`). Made for README files; the full tables,
  paired differences and rates are in report.md.
  """
  results = records.load_results(workdir)
  lines = ["| task | | variant | n seeds | diagnosis | best valid: mean [95% CI] "
           "| test at best epoch: mean [95% CI] | stopping |",
           "|---|---|---|---|---|---|---|---|"]
  for task, result in results.items():
    groups = result.groups()
    accuracy = result.is_accuracy
    unit = "%" if accuracy else " MSE"
    for s, conv, rows, variant in study_tables(task, groups, [convention]):
      if not tables_lib.is_default(variant):
        continue   # the summary shows PROTOCOL's network
      if s != study or conv != convention:
        continue
      for cell, recommended, members in rows:
        if all(m.status == "invalid" for m in members):
          valid = test = f"invalid: {_invalid_reason(members)}"
        else:
          valid = metric_cells(members, "best_valid", accuracy, unit)[0]
          test = metric_cells(members, "test", accuracy, unit)[0]
        mark = MARK_RECOMMENDED if recommended else MARK_MISUSED
        lines.append(f"| {task} | {mark} | {_escape(cell.label)} | {len(members)} | "
                     f"{diagnosis_counts(members)} | {valid} | {test} | "
                     f"{status_counts(members)} |")
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Writing and the command line.


def write_report(workdir: str) -> str:
  """Writes WORKDIR/report.md (atomically) and the curve PNGs; returns the report's path."""
  text = render_markdown(workdir)
  figures.plot_curves(workdir)
  figures.plot_diagnostics(workdir)
  path = os.path.join(workdir, "report.md")
  files.atomic_write(path, lambda f: f.write(text))
  return path


def _define_flags() -> None:
  if "workdir" not in flags.FLAGS:
    flags.DEFINE_string("workdir", None,
                        "The directory a training run wrote (run.json, results/).")
  flags.mark_flag_as_required("workdir")


def main(argv: Sequence[str]) -> None:
  """`python -m jaxact.report --workdir=DIR`: rebuilds DIR/report.md without training."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  workdir = flags.FLAGS.workdir
  try:
    path = write_report(workdir)
  except (FileNotFoundError, ValueError, files.WriteError) as e:
    print(f"jaxact.analysis.report: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {path}")


def run() -> None:
  """`python -m jaxact.report`."""
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
