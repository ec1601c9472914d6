"""Figures of a run's saved results: validation curves, hidden-study heatmaps, diagnostics.

Reads the same workdir files as `jaxact.analysis.report`, through `jaxact.store.records`
(report calls `plot_curves` and `plot_diagnostics` from `write_report`), and
writes PNGs beside them:

  WORKDIR/curves_<task>.png           validation metric per epoch, one panel per cell;
  WORKDIR/heatmap_<task>.png          hidden-study tasks: mean test metric by hidden
                                      activation x init, without / with batch norm (depth 1);
  WORKDIR/heatmap_depth_<task>.png    ... and by hidden activation x depth, where several
                                      depths ran;
  WORKDIR/saturation_<task>.png       hidden-unit saturation and gradients per epoch;
  WORKDIR/gradients_depth_<task>.png  the gradient reaching each layer against depth.

Heatmaps or curves (`heatmap_figures`, `curves_figure`): a task whose cells
all share one head, loss and target treatment and differ in the hidden
activation or the init (the hidden study's shape) gets the heatmaps; if it
also has more than CURVES_MAX_CELLS cells, its curves are not drawn (48 panels
of curves cannot be read; the heatmaps show every cell). A heatmap and a
depth-sweep figure exist per loss convention: with both conventions in the run
their names end in _torch / _logits.

Each figure says which command trained its task (the task's results file
names it; run.json's only where it does not), and on which machine.

matplotlib is imported inside the plotting functions, so importing this
module (or jaxact.report) does not import it; figures are built with
matplotlib's object API (`matplotlib.figure.Figure`, saved by its own Agg
canvas), never with pyplot, so a user's backend (a notebook's) is untouched.
"""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from typing import Any, Hashable, Sequence

import numpy as np

from jaxact.store import diagnostics as diagnostics_lib
from jaxact.analysis import claims as claims_lib
from jaxact.store import files
from jaxact.model import losses as losses_lib
from jaxact.store import records
from jaxact.model import cells as studies
from jaxact.analysis import tables

Members = list[records.MemberRecord]   # a cell's members

Cell = studies.Cell

CURVES_MAX_CELLS = 12     # a hidden-study task with more cells gets heatmaps instead of curves
CARRIED_TEXT = "mean over seeds, a stopped member's last value carried forward"
CHANCE_TEXT = "chance / constant predictor (valid)"
_DPI = 100
_COMMAND_CHARS = 100   # a caption's command is cut to this length


# ---------------------------------------------------------------------------
# Shared pieces: the figure, saving it, the made-by caption.


def _figure(**kwargs):
  """A bare matplotlib Figure (no pyplot, no backend switch: savefig uses Agg for PNG)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(**kwargs)


def _save(fig, path: str) -> str:
  files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=_DPI), binary=True)
  return path


def _truncate(text: str, n: int = _COMMAND_CHARS) -> str:
  return text if len(text) <= n else text[:n - 1] + "…"


def made_by_text(result: records.TaskResults, info: dict, width: int = 110) -> str:
  """The caption line(s) naming what made a task's figure.

  The command is the task's own (its results file's `command`); run.json's
  only when the results file has none (older results). The machine is the
  results file's; run.json's machine and finishing date are named only when
  run.json's command is the one that trained the task (or the results file
  names none): a task trained into the workdir by another command ran elsewhere
  or at another time.
  """
  own = result.command
  run_command = info.get("command") or (" ".join(map(str, info["argv"])) if info.get("argv")
                                        else None)
  command = own or run_command
  text = (f"made by: {command}" if command
          else "made by: unknown command (none in the results file or run.json)")
  lines = textwrap.wrap(text, width=width, max_lines=2, placeholder=" …",
                        break_on_hyphens=False)
  same_run = not own or own == run_command
  where = []
  machine = result.machine or (info.get("machine") if same_run else None)
  if machine:
    where.append(f"on {machine}")
  if info.get("finished") and same_run:
    where.append(f"run finished {info['finished']}")
  return "\n".join(lines + (["; ".join(where)] if where else []))


def _chance(result: records.TaskResults) -> float | None:
  v = records.as_float(result.chance_valid)
  return v if math.isfinite(v) else None


def _conv_suffix(per_convention: dict) -> dict[str, str]:
  return {c: "" if len(per_convention) == 1 else f"_{c}" for c in per_convention}


# ---------------------------------------------------------------------------
# Validation curves.


def _plot_cells(task: str, groups: dict[Cell, Members],
                which: Sequence[str] = studies.STUDIES) -> list[tuple[Cell, bool | None]]:
  """Every cell of the task once, in table order, with its recommendation (or None)."""
  out: list[tuple[Cell, bool | None]] = []
  seen = set()
  for _, _, rows, _ in tables.study_tables(task, groups, which=which):
    for cell, recommended, _ in rows:
      if cell not in seen:
        seen.add(cell)
        out.append((cell, recommended))
  return out + [(c, None) for c in tables.other_cells(task, groups, which) if c not in seen]


def _curve_matrix(curves: list[list], scale: float) -> np.ndarray:
  """(curves, longest) the per-epoch values as recorded, NaN past a curve's end."""
  length = max((len(c) for c in curves), default=0)
  mat = np.full((len(curves), length), np.nan)
  for i, c in enumerate(curves):
    v = np.array([records.as_float(x) for x in c], np.float64)
    mat[i, :v.size] = v * scale
  return mat


def _valid_curves(members: Members) -> list[list]:
  return [m.valid_metric for m in members]


def _carried(curves: list[list], scale: float) -> np.ndarray:
  """`_curve_matrix` with a stopped curve's last value repeated to the end, NaN for non-finite."""
  mat = _curve_matrix(curves, scale)
  for i, c in enumerate(curves):
    n = len(c)
    if 0 < n < mat.shape[1]:
      mat[i, n:] = mat[i, n - 1]
  return np.where(np.isfinite(mat), mat, np.nan)


def carried_forward(members: Members, scale: float = 1.0) -> np.ndarray:
  """(members, max epochs) valid metric, a stopped member's last value repeated to the end.

  A member that stopped early (early stopping, a non-finite value) keeps its
  final state, so the mean over seeds does not jump when it stops. Non-finite
  values (and a non-finite last value carried forward) are NaN; a member with
  no epoch is all NaN.
  """
  return _carried(_valid_curves(members), scale)


def _nan_stat(fn, mat: np.ndarray) -> np.ndarray:
  with warnings.catch_warnings(), np.errstate(all="ignore"):
    warnings.simplefilter("ignore", RuntimeWarning)
    return fn(mat, axis=0)


def _mean_of(curves: list[list], scale: float = 1.0) -> np.ndarray:
  mat = _carried(curves, scale)
  return _nan_stat(np.nanmean, mat) if mat.shape[1] else np.zeros((0,))


def mean_curve(members: Members, scale: float = 1.0) -> np.ndarray:
  """(max epochs,) mean over seeds of `carried_forward`, non-finite values left out."""
  return _mean_of(_valid_curves(members), scale)


def _curve_limits(mats: list[np.ndarray], chance: float | None, accuracy: bool
                  ) -> tuple[tuple[float, float], str]:
  """The y-limits and scale shared by a task's panels: all finite values and chance in view."""
  vals = np.concatenate([m[np.isfinite(m)] for m in mats] + [np.zeros((0,))])
  if chance is not None:
    vals = np.append(vals, chance)
  if vals.size == 0:
    return ((0.0, 100.0) if accuracy else (0.0, 1.0)), "linear"
  lo, hi = float(vals.min()), float(vals.max())
  if not accuracy:
    pos = vals[vals > 0]
    if pos.size and pos.max() / pos.min() > 100.0:
      lo, hi = float(pos.min()), float(pos.max())
      return (lo / 1.3, hi * 1.3), "log"
  pad = 0.04 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1.0 if accuracy else 1e-3)
  lo, hi = lo - pad, hi + pad
  if accuracy:
    lo, hi = max(lo, 0.0), min(hi, 100.0)
  return (lo, hi), "linear"


def _draw_cell(ax, cell: Cell, recommended: bool | None, members: Members,
               accuracy: bool, chance: float | None) -> bool:
  """Draws one cell's valid curves on `ax`; False (a note drawn instead) if none is valid.

  Every seed thin as recorded, a dot where a seed stopped before the longest,
  the mean over seeds (`carried_forward`) with a min–max band over the same
  matrix, each seed's best epoch dotted, and the chance level dashed.
  """
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  mark = {True: " (recommended)", False: " (misused)", None: ""}[recommended]
  ax.set_title(textwrap.fill(f"{cell.label}{mark}", 48), fontsize=9)
  ax.set_xlabel("epoch", fontsize=8)
  ax.set_ylabel("valid accuracy (%)" if accuracy else "valid MSE", fontsize=8)
  ax.tick_params(labelsize=7)
  scale = 100.0 if accuracy else 1.0
  raw = _curve_matrix(_valid_curves(members), scale)
  notes = []
  n_empty = sum(1 for m in members if not m.valid_metric)
  if raw.shape[1] == 0 or n_empty == len(members):
    ax.text(0.5, 0.55, "invalid", ha="center", va="center", transform=ax.transAxes,
            fontsize=12, color="tab:red")
    reasons = sorted({str(m.status_reason) for m in members if m.status_reason})
    if reasons:
      ax.text(0.5, 0.35, textwrap.fill(_truncate("; ".join(reasons), 160), 45), ha="center",
              va="top", transform=ax.transAxes, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    return False
  if n_empty:
    notes.append(f"{tables.plural(n_empty, 'seed')} invalid")
  n_bad = sum(1 for m in members if m.status == "nonfinite" or not all(
      math.isfinite(records.as_float(x)) for x in (m.valid_metric)))
  if n_bad:
    notes.append(f"{tables.plural(n_bad, 'seed')} non-finite")
  finite_raw = np.where(np.isfinite(raw), raw, np.nan)
  carried = carried_forward(members, scale)
  epochs = np.arange(1, raw.shape[1] + 1)
  for m, row in zip(members, finite_raw):
    ax.plot(epochs, row, color="tab:blue", alpha=0.45, linewidth=0.6, label="one seed")
    n = len(m.valid_metric)
    if 0 < n < raw.shape[1] and np.isfinite(row[n - 1]):
      ax.plot([n], [row[n - 1]], linestyle="none", marker="o", markersize=2.5,
              color="tab:blue", alpha=0.7, label="a seed stopped")
  mean = _nan_stat(np.nanmean, carried)
  ax.fill_between(epochs, _nan_stat(np.nanmin, carried), _nan_stat(np.nanmax, carried),
                  color="tab:blue", alpha=0.15, linewidth=0, label="min–max over seeds")
  ax.plot(epochs, mean, color="tab:blue", linewidth=1.8, label=CARRIED_TEXT)
  for m in members:
    b = m.best_epoch
    if isinstance(b, (int, float)) and b >= 0:
      ax.axvline(b + 1, color="gray", linestyle=":", linewidth=0.8, alpha=0.6,
                 label="a seed's best epoch")
  if chance is not None:
    ax.axhline(chance * scale, color="black", linestyle="--", linewidth=1.0, alpha=0.7,
               label=CHANCE_TEXT)
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  if notes:
    # In the corner the curves move away from: accuracy rises, MSE falls.
    y, va = (0.02, "bottom") if accuracy else (0.98, "top")
    ax.text(0.98, y, "; ".join(notes), ha="right", va=va, transform=ax.transAxes, fontsize=8,
            color="tab:red", bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))
  return True


def _figure_legend(fig, axes, **kwargs) -> None:
  """One legend for the figure, each label once (the chance line is drawn on every panel)."""
  handles: dict[str, Any] = {}
  for ax in axes:
    for h, label in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(label, h)
  if handles:
    fig.legend(list(handles.values()), list(handles), **kwargs)


def curves_figure_object(task: str, result: records.TaskResults, info: dict):
  """The curves Figure of one task (not saved): one panel per cell, y-axis shared."""
  groups = result.groups()
  cells = _plot_cells(task, groups, result.studies(info))
  accuracy = result.is_accuracy
  chance = _chance(result)
  n = max(len(cells), 1)
  ncols = min(4, n)
  nrows = math.ceil(n / ncols)
  fig = _figure(figsize=(4.2 * ncols, 3.2 * nrows + 1.6), layout="constrained")
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  drawn = []
  for ax, (cell, recommended) in zip(axes, cells):
    if _draw_cell(ax, cell, recommended, groups[cell], accuracy, chance):
      drawn.append(ax)
  for ax in axes[len(cells):]:
    ax.axis("off")
  if not cells:
    axes[0].text(0.5, 0.5, "no members", ha="center", va="center")
  scale = 100.0 if accuracy else 1.0
  ylim, yscale = _curve_limits([_curve_matrix(_valid_curves(groups[c]), scale) for c, _ in cells],
                               chance, accuracy)
  for ax in drawn:
    ax.set_yscale(yscale)
    ax.set_ylim(*ylim)
  _figure_legend(fig, drawn, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
  metric = "accuracy (%)" if accuracy else "MSE (original units)"
  fig.suptitle(f"{task}: valid {metric} per epoch, one panel per cell, y-axis shared; "
               f"{CARRIED_TEXT}\n{made_by_text(result, info)}", fontsize=10)
  return fig


def _one_head_and_loss(groups: dict[Cell, Members]) -> bool:
  return len({(c.task, c.head, c.loss, c.norm, c.sigmoid_method) for c in groups}) == 1


def curves_figure(task: str, groups: dict[Cell, Members]) -> str | None:
  """The curves figure's file name, or None where the task gets heatmaps instead.

  None for a task with heatmaps (`heatmap_figures`) and more than
  CURVES_MAX_CELLS cells.
  """
  if len(groups) > CURVES_MAX_CELLS and heatmap_figures(task, groups):
    return None
  return f"curves_{task}.png"


def plot_curves(workdir: str) -> list[str]:
  """Writes WORKDIR/curves_<task>.png per task, and the heatmaps of hidden-study tasks.

  Curves: each panel is one cell: every seed drawn thin, the mean over seeds
  (a stopped member's last value carried forward, non-finite values skipped)
  with a min–max band, each seed's best epoch dotted and the chance level
  (constant predictor, `chance_valid`) dashed; all panels share the y-axis.
  A hidden-study task with more than CURVES_MAX_CELLS cells gets its heatmaps
  only (see `curves_figure` and `heatmap_figures`).

  Returns:
    The paths written, in task order.

  Raises:
    FileNotFoundError, ValueError: as records.load_results.
  """
  results = records.load_results(workdir)
  info = records.load_run_info(workdir)
  paths = []
  for task, result in results.items():
    groups = result.groups()
    name = curves_figure(task, groups)
    if name is not None:
      paths.append(_save(curves_figure_object(task, result, info), os.path.join(workdir, name)))
    paths += plot_heatmaps(workdir, task, result, info)
  return paths


# ---------------------------------------------------------------------------
# Hidden-study heatmaps.


def _ordered(values, order: Sequence) -> list:
  """The distinct `values` in `order`'s order, any others after them (sorted)."""
  values = set(values)
  return [v for v in dict.fromkeys(order) if v in values] + sorted((v for v in values if v not in order),
                                                    key=str)


def _init_kind(cell: Cell) -> str:
  """'torch', 'matched' (the init the seeds recommend for the cell's activation), else the init."""
  if cell.init == "torch":
    return "torch"
  return "matched" if cell.init == studies.matched_init(cell.hidden) else cell.init


_KIND_TITLES = {"torch": "torch init (PyTorch's default)",
                "matched": "matched init (xavier for sigmoid / tanh, he for the others)"}

# A panel: (title, row values, column values, {(row, column): members}).
Panel = tuple[str, list, list, dict[tuple[Hashable, Hashable], Members]]


def _init_panels(groups: dict[Cell, Members]) -> list[Panel]:
  """Depth-1 cells by hidden activation x init, one panel per batch-norm setting.

  Empty unless the depth-1 cells vary in the hidden activation or the init.
  """
  cells = [c for c in groups if c.depth == 1]
  rows = _ordered({c.hidden for c in cells}, studies.HIDDEN)
  cols = _ordered({c.init for c in cells}, studies.INITS)
  if len(rows) * len(cols) < 2:
    return []
  panels = []
  for bn in _ordered({c.batch_norm for c in cells}, (False, True)):
    members = {(c.hidden, c.init): groups[c] for c in cells if c.batch_norm == bn}
    panels.append((f"depth 1, {'with' if bn else 'no'} batch norm", rows, cols, members))
  return panels


def _depth_panels(groups: dict[Cell, Members]) -> list[Panel]:
  """Cells by hidden activation x depth, one panel per init kind (and batch norm) with >1 depth."""
  keys: dict[tuple[str, bool], dict[tuple[str, int], Members]] = {}
  for c in groups:
    keys.setdefault((_init_kind(c), c.batch_norm), {})[(c.hidden, c.depth)] = groups[c]
  keys = {k: v for k, v in keys.items() if len({d for _, d in v}) > 1}
  if not keys:
    return []
  rows = _ordered({h for v in keys.values() for h, _ in v}, studies.HIDDEN)
  cols = sorted({d for v in keys.values() for _, d in v})
  order = _ordered({k for k, _ in keys}, ("torch", "matched") + studies.INITS)
  panels = []
  for kind in order:
    for bn in (False, True):
      if (kind, bn) in keys:
        title = _KIND_TITLES.get(kind, f"{kind} init") + (", batch norm" if bn else "")
        panels.append((title, rows, cols, keys[(kind, bn)]))
  return panels


def heatmap_matrix(cells: dict[tuple[Hashable, Hashable], Members],
                   rows: Sequence,
                   cols: Sequence, field: str = "test", scale: float = 100.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean, n, total): per (row, column), the mean over seeds of member[field] * scale.

  mean is NaN where no seed has a finite value (or the cell did not run); n
  counts the seeds with a finite value, total the seeds that ran.
  """
  mean = np.full((len(rows), len(cols)), np.nan)
  n = np.zeros((len(rows), len(cols)), np.int64)
  total = np.zeros((len(rows), len(cols)), np.int64)
  for i, r in enumerate(rows):
    for j, c in enumerate(cols):
      members = cells.get((r, c)) or []
      vals = np.array([m.value(field) for m in members], np.float64)
      vals = vals[np.isfinite(vals)]
      total[i, j] = len(members)
      n[i, j] = vals.size
      if vals.size:
        mean[i, j] = float(np.mean(vals)) * scale
  return mean, n, total


def heatmap_figures(task: str, groups: dict[Cell, Members]
                    ) -> list[tuple[str, str]]:
  """(alt text, file name) of each heatmap figure of a task, in the order they are drawn.

  A task whose cells share one head, loss and target treatment (the hidden
  study's shape) gets, per loss convention, heatmap_<task>.png where its
  depth-1 cells vary in the hidden activation or the init, and
  heatmap_depth_<task>.png where a hidden activation ran at several depths;
  with both conventions in the run the names end in _torch / _logits.
  """
  if not groups or not _one_head_and_loss(groups):
    return []
  metric = "accuracy" if records.TaskResults(task).is_accuracy else "MSE"
  per_convention = claims_lib.by_convention(groups)
  suffix = _conv_suffix(per_convention)
  out = []
  for conv, conv_groups in per_convention.items():
    conv_text = f", {conv} convention" if len(per_convention) > 1 else ""
    if _init_panels(conv_groups):
      out.append((f"mean test {metric} by hidden activation and initialisation, without and "
                  f"with batch norm{conv_text}", f"heatmap_{task}{suffix[conv]}.png"))
    if _depth_panels(conv_groups):
      out.append((f"mean test {metric} by hidden activation and depth{conv_text}",
                  f"heatmap_depth_{task}{suffix[conv]}.png"))
  return out


def heatmap_figure_object(task: str, result: records.TaskResults, info: dict, panels: list[Panel],
                          what: str, col_label: str, conv_text: str = ""):
  """One heatmap Figure (not saved): a panel per entry of `panels`, one shared colour scale."""
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  accuracy = result.is_accuracy
  scale = 100.0 if accuracy else 1.0
  chance = _chance(result)
  mats = [heatmap_matrix(cells, rows, cols, "test", scale) for _, rows, cols, cells in panels]
  vals = np.concatenate([m[np.isfinite(m)] for m, _, _ in mats] + [np.zeros((0,))])
  if accuracy and chance is not None:
    vals = np.append(vals, chance * scale)
  lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
  if hi <= lo:
    lo, hi = lo - 0.5, hi + 0.5
  norm = colors.Normalize(lo, hi)
  cmap = _colormap("viridis" if accuracy else "viridis_r")
  nrows = len(panels[0][1])
  ncols = max(len(p[2]) for p in panels)
  fig = _figure(figsize=(max(7.5, len(panels) * (1.05 * ncols + 1.4) + 1.6),
                         0.5 * nrows + 2.9), layout="constrained")
  axes = fig.subplots(1, len(panels), squeeze=False).ravel()
  image = None
  for ax, (title, rows, cols, _), (mean, n, total) in zip(axes, panels, mats):
    shown = np.ma.masked_invalid(mean)
    image = ax.imshow(shown, cmap=cmap, norm=norm, aspect="auto")
    ax.set_facecolor("0.85")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=8)
    ax.set_xlabel(col_label, fontsize=8)
    ax.set_ylabel("hidden activation", fontsize=8)
    ax.set_title(title, fontsize=9)
    for i in range(len(rows)):
      for j in range(len(cols)):
        if total[i, j] == 0:
          text, color = "not run", "0.3"
        else:
          seeds = f"n={n[i, j]}" if n[i, j] == total[i, j] else f"n={n[i, j]}/{total[i, j]}"
          if np.isfinite(mean[i, j]):
            value = f"{mean[i, j]:.1f}" if accuracy else f"{mean[i, j]:#.3g}"
            r, g, b, _ = cmap(norm(mean[i, j]))
            color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
          else:
            value, color = "invalid", "tab:red"
          text = f"{value}\n{seeds}"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
  unit = "test accuracy (%)" if accuracy else "test MSE"
  bar = fig.colorbar(image, ax=list(axes), shrink=0.9, pad=0.02)
  bar.set_label(f"mean {unit} over seeds", fontsize=8)
  bar.ax.tick_params(labelsize=7)
  if chance is not None and lo <= chance * scale <= hi:
    bar.ax.axhline(chance * scale, color="red", linestyle="--", linewidth=1.2)
    bar.ax.text(-0.2, chance * scale, "chance", transform=bar.ax.get_yaxis_transform(),
                ha="right", va="center", fontsize=7, color="red")
  chance_note = ("" if chance is None else
                 f"; chance (constant predictor, valid) {_fmt_level(chance, accuracy)}")
  fig.suptitle(f"{task}{conv_text}: mean {unit} over seeds by {what}\n"
               f"n = seeds with a finite test value (of the seeds run){chance_note}\n"
               f"{made_by_text(result, info)}", fontsize=9)
  return fig


def _fmt_level(v: float, accuracy: bool) -> str:
  return f"{100 * v:.1f}%" if accuracy else f"{v:#.3g}"


def _colormap(name: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  return matplotlib.colormaps[name]


def plot_heatmaps(workdir: str, task: str, result: records.TaskResults, info: dict) -> list[str]:
  """Writes the task's heatmap figures (`heatmap_figures`); returns their paths."""
  groups = result.groups()
  names = dict((name, alt) for alt, name in heatmap_figures(task, groups))
  if not names:
    return []
  per_convention = claims_lib.by_convention(groups)
  suffix = _conv_suffix(per_convention)
  paths = []
  for conv, conv_groups in per_convention.items():
    conv_text = f", {conv} convention" if len(per_convention) > 1 else ""
    for name, panels, what, col_label in (
        (f"heatmap_{task}{suffix[conv]}.png", _init_panels(conv_groups),
         "hidden activation and initialisation", "initialisation"),
        (f"heatmap_depth_{task}{suffix[conv]}.png", _depth_panels(conv_groups),
         "hidden activation and depth (dense hidden layers)", "depth")):
      if name in names and panels:
        fig = heatmap_figure_object(task, result, info, panels, what, col_label, conv_text)
        paths.append(_save(fig, os.path.join(workdir, name)))
  return paths


# ---------------------------------------------------------------------------
# Diagnostics: saturation and gradients against depth.


def _mean_history(members: Members, name: str, layer: int | None = 0
                  ) -> np.ndarray:
  """(max epochs,) mean over seeds of a per-epoch diagnostic (layer `layer` if per-layer).

  As the curves: a stopped member's last value is carried forward.
  """
  rows = []
  for m in members:
    h = m.diagnostics.get(name) or []
    rows.append([np.nan if v is None else
                 records.as_float(v[layer] if layer is not None and isinstance(v, list) else v)
                 for v in h])
  return _mean_of(rows)


SPREAD_FLOOR = 1e-6   # the log axis's floor for the output spread; lower values are marked
_CLASS_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "P", "X", "*", "<", ">", "h")
_MARK_EVERY = 5


def class_groups(members: Members) -> list[tuple[str | None, Members]]:
  """The members by diagnosis kind (`MemberRecord.kind`; None: not diagnosed), in
  diagnostics.KINDS order with healthy first and unknown kinds after."""
  by_kind: dict[str | None, Members] = {}
  for m in members:
    by_kind.setdefault(m.kind, []).append(m)
  order = ["healthy"] + [k for k in diagnostics_lib.KINDS if k != "healthy"]
  return sorted(by_kind.items(), key=lambda kv: (
      kv[0] is None, order.index(kv[0]) if kv[0] in order else len(order), str(kv[0])))


def _saturation_cells(groups: dict[Cell, Members]) -> list[Cell]:
  """The cells to draw: all if at most 12, else the depth-1, no-batch-norm, torch-init ones
  plus every cell with a failure diagnosis."""
  cells = list(groups)
  if len(cells) <= 12:
    return cells
  def failing(c):
    return any(m.diagnosis is not None and m.diagnosis.kind in diagnostics_lib.FAILURES
               for m in groups[c])
  keep = [c for c in cells if (c.depth == 1 and not c.batch_norm and c.init == "torch")]
  return keep + [c for c in cells if c not in keep and failing(c)][:12]


def plot_diagnostics(workdir: str) -> list[str]:
  """Writes saturation_<task>.png per task and gradients_depth_<task>.png where a depth sweep ran.

  saturation: per cell and diagnosis class (members of different classes are
  never averaged together), the mean over its seeds (a stopped member's last
  value carried forward) of the saturated fraction of hidden layer 1's units on
  the valid set, of the output spread (1 = as varied as the targets, 0 = a
  constant predictor; values below SPREAD_FLOOR are drawn at it and marked
  with a triangle) and, where recorded, of the share of valid examples on
  which the head is saturated, per epoch. Colour and marker name the cell,
  the line style the class; markers are offset per cell. gradients_depth: for each
  activation and init of the depth sweep, the gradient norm of every layer at
  initialisation (first batch, median over seeds) for each depth.
  """
  results = records.load_results(workdir)
  info = records.load_run_info(workdir)
  paths = []
  for task, result in results.items():
    groups = result.groups()
    made_by = made_by_text(result, info)
    if not any(m.diagnostics.get("saturated") for ms in groups.values()
               for m in ms):
      continue
    has_head = any(m.diagnostics.get("head_saturated")
                   for ms in groups.values() for m in ms)      # absent from older results
    cells = _saturation_cells(groups)
    height = 4.2 + 0.17 * math.ceil(len(cells) / 2) + 0.18 * made_by.count("\n")
    fig = _figure(figsize=(19 if has_head else 13, height), layout="constrained")
    axes = fig.subplots(1, 3 if has_head else 2)
    ax_s, ax_o = axes[0], axes[1]
    clipped_any = False
    for i, cell in enumerate(cells):
      # One line per diagnosis class of the cell: a mean over collapsed and healthy members
      # describes neither. Colour and marker name the cell, the line style the class; the
      # markers sit at epochs offset per cell, so lines that coincide stay told apart.
      for j, (kind, members) in enumerate(class_groups(groups[cell])):
        style = dict(color=f"C{i % 10}", linestyle=_CLASS_STYLES[j % len(_CLASS_STYLES)],
                     marker=_MARKERS[i % len(_MARKERS)], markersize=4, linewidth=1.2,
                     markevery=(i % _MARK_EVERY, _MARK_EVERY))
        words = tables.KIND_TEXT.get(kind, kind or "not diagnosed")
        label = f"{cell.label} [{len(members)} {words}]"
        sat = _mean_history(members, "saturated")
        ax_s.plot(np.arange(1, sat.size + 1), sat, label=label, **style)
        spread = _mean_history(members, "spread", None)
        epochs = np.arange(1, spread.size + 1)
        low = spread < SPREAD_FLOOR
        ax_o.plot(epochs, np.where(low, SPREAD_FLOOR, spread), **style)
        if low.any():   # drawn at the floor, and marked so: not silently clipped
          clipped_any = True
          ax_o.plot(epochs[low], np.full(int(low.sum()), SPREAD_FLOOR), linestyle="none",
                    marker="v", markersize=6, color=f"C{i % 10}")
        if has_head:
          head = _mean_history(members, "head_saturated", None)
          axes[2].plot(np.arange(1, head.size + 1), head, **style)
    ax_s.set(xlabel="epoch", ylabel="saturated fraction of hidden layer 1",
             ylim=(-0.03, 1.03), title="hidden units saturated (valid set)")
    ax_o.set(xlabel="epoch", ylabel="output spread / target spread", yscale="log",
             title="output spread across inputs (low = constant predictor)"
                   + (f"\n▼: below {SPREAD_FLOOR:g} (0 included), drawn at {SPREAD_FLOOR:g}"
                      if clipped_any else ""))
    if has_head:
      axes[2].set(xlabel="epoch", ylabel="share of valid examples", ylim=(-0.03, 1.03),
                  title="head saturated (no Jacobian entry above "
                        f"{losses_lib.HEAD_SATURATION:g})")
    fig.legend(loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    fig.suptitle(f"{task}: hidden-unit saturation, output spread"
                 f"{' and head saturation' if has_head else ''}; {CARRIED_TEXT}\n{made_by}",
                 fontsize=10)
    paths.append(_save(fig, os.path.join(workdir, f"saturation_{task}.png")))
    per_convention = claims_lib.by_convention(groups)
    for conv, name in tables.depth_sweep_figures(task, groups):
      paths.append(_plot_gradients_depth(
          os.path.join(workdir, name), task, conv, claims_lib.depth_sweep(per_convention[conv]),
          made_by, None))
  return paths


def _plot_gradients_depth(path, task, convention, sweep, command, plt) -> str:
  """Writes the gradients-against-depth figure of one convention's sweep; returns `path`.

  `command` is the made-by caption (`made_by_text`); `plt` is unused (None),
  kept so the signature stays that of earlier versions.
  """
  del plt
  hiddens = list(dict.fromkeys(h for h, _ in sweep))
  inits = ["torch", "matched"]
  fig = _figure(figsize=(max(8.0, 2.6 * len(hiddens)), 6.0 + 0.18 * command.count("\n")),
                layout="constrained")
  axes = fig.subplots(2, len(hiddens), squeeze=False, sharey=True)
  for j, h in enumerate(hiddens):
    for i, which in enumerate(inits):
      init = "torch" if which == "torch" else studies.matched_init(h)
      ax = axes[i, j]
      ax.set_title(f"{h}, {init} init", fontsize=8)
      by_depth = sweep.get((h, init)) or {}
      for k, (depth, members) in enumerate(by_depth.items()):
        firsts = [(m.diagnostics.get("grad_norm_first") or [None])[0]
                  for m in members]
        firsts = [np.array([np.nan if v is None else v for v in f]) for f in firsts if f]
        if not firsts:
          continue
        g = _nan_stat(np.nanmedian, np.stack(firsts))[3:]      # hidden1 .. hiddenD, out
        ax.plot(np.arange(1, g.size + 1), np.maximum(g, 1e-30), marker=".", markersize=3,
                linewidth=1, color=f"C{k}", label=f"depth {depth}")
      ax.set_yscale("log")
      ax.set_xscale("log", base=2)
      ax.tick_params(labelsize=7)
      if i == 1:
        ax.set_xlabel("dense layer (1 = first hidden, last = output)", fontsize=7)
      if j == 0:
        ax.set_ylabel("gradient norm at init", fontsize=8)
  axes[0, 0].legend(fontsize=6)
  fig.suptitle(f"{task}, {convention} convention: per-layer gradient norm at initialisation "
               f"(first batch, median over seeds) against depth\n{command}", fontsize=10)
  return _save(fig, path)
