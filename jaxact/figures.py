"""Figures of a run's saved results: validation curves, hidden-layer diagnostics, depth sweeps.

Reads the same workdir files as `jaxact.report` (which calls `plot_curves`
and `plot_diagnostics` from `write_report`) and writes PNGs beside them:

  WORKDIR/curves_<task>.png           validation metric per epoch, one panel per cell;
  WORKDIR/saturation_<task>.png       hidden-unit saturation and gradients per epoch;
  WORKDIR/gradients_depth_<task>.png  the gradient reaching each layer against depth.

matplotlib is imported inside the plotting functions, so importing this
module (or jaxact.report) does not import it.
"""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from typing import Sequence

import numpy as np

from jaxact import diagnostics as diagnostics_lib
from jaxact import claims as claims_lib
from jaxact import losses as losses_lib
from jaxact import studies
from jaxact.report import (_COMMAND_CHARS, _KIND_TEXT, _as_float, _depth_sweep_figures,
                           _group_members, _is_accuracy, _other_cells, _plural, _studies_of,
                           _study_tables, atomic_write, load_results, load_run_info)

Cell = studies.Cell


def _plot_cells(task: str, groups: dict[Cell, list[dict]],
                which: Sequence[str] = studies.STUDIES) -> list[tuple[Cell, bool | None]]:
  """Every cell of the task once, in table order, with its recommendation (or None)."""
  out: list[tuple[Cell, bool | None]] = []
  seen = set()
  for _, _, rows, _ in _study_tables(task, groups, which=which):
    for cell, recommended, _ in rows:
      if cell not in seen:
        seen.add(cell)
        out.append((cell, recommended))
  return out + [(c, None) for c in _other_cells(task, groups, which)]


def _truncate(text: str, n: int = _COMMAND_CHARS) -> str:
  return text if len(text) <= n else text[:n - 1] + "…"


def _curve_matrix(members: list[dict], scale: float) -> np.ndarray:
  """(members, max epochs) valid metric, NaN past a member's end."""
  length = max((len(m.get("valid_metric") or []) for m in members), default=0)
  mat = np.full((len(members), length), np.nan)
  for i, m in enumerate(members):
    v = np.array([_as_float(x) for x in (m.get("valid_metric") or [])], np.float64)
    mat[i, :v.size] = v * scale
  return mat


def _draw_cell(ax, cell: Cell, recommended: bool | None, members: list[dict],
               accuracy: bool) -> None:
  """Draws one cell's valid curves (every seed, mean, min–max band) on `ax`."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  mark = {True: " (recommended)", False: " (misused)", None: ""}[recommended]
  ax.set_title(f"{cell.label}{mark}", fontsize=9)
  ax.set_xlabel("epoch", fontsize=8)
  ax.set_ylabel("valid accuracy (%)" if accuracy else "valid MSE", fontsize=8)
  ax.tick_params(labelsize=7)
  mat = _curve_matrix(members, 100.0 if accuracy else 1.0)
  notes = []
  n_empty = sum(1 for m in members if not m.get("valid_metric"))
  if mat.shape[1] == 0 or n_empty == len(members):
    ax.text(0.5, 0.55, "invalid", ha="center", va="center", transform=ax.transAxes,
            fontsize=12, color="tab:red")
    reasons = sorted({str(m.get("status_reason")) for m in members if m.get("status_reason")})
    if reasons:
      ax.text(0.5, 0.35, textwrap.fill(_truncate("; ".join(reasons), 160), 45), ha="center",
              va="top", transform=ax.transAxes, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    return
  if n_empty:
    notes.append(f"{_plural(n_empty, 'seed')} invalid")
  n_bad = sum(1 for m in members if m.get("status") == "nonfinite" or not all(
      math.isfinite(_as_float(x)) for x in (m.get("valid_metric") or [])))
  if n_bad:
    notes.append(f"{_plural(n_bad, 'seed')} non-finite")
  finite = np.where(np.isfinite(mat), mat, np.nan)
  epochs = np.arange(1, mat.shape[1] + 1)
  for row in finite:
    ax.plot(epochs, row, color="tab:blue", alpha=0.25, linewidth=0.7)
  with warnings.catch_warnings(), np.errstate(all="ignore"):
    warnings.simplefilter("ignore", RuntimeWarning)
    mean = np.nanmean(finite, axis=0)
    lo = np.nanmin(finite, axis=0)
    hi = np.nanmax(finite, axis=0)
  ax.fill_between(epochs, lo, hi, color="tab:blue", alpha=0.2, linewidth=0,
                  label="min–max")
  ax.plot(epochs, mean, color="tab:blue", linewidth=1.5, label="mean")
  for m in members:
    b = m.get("best_epoch")
    if isinstance(b, (int, float)) and b >= 0:
      ax.axvline(b + 1, color="gray", linestyle=":", linewidth=0.8, alpha=0.6)
  vals = finite[np.isfinite(finite)]
  if not accuracy:
    pos = vals[vals > 0]
    if pos.size and pos.max() / pos.min() > 100.0:
      ax.set_yscale("log")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  if notes:
    # In the corner the curves move away from: accuracy rises, MSE falls.
    y, va = (0.02, "bottom") if accuracy else (0.98, "top")
    ax.text(0.98, y, "; ".join(notes), ha="right", va=va, transform=ax.transAxes, fontsize=8,
            color="tab:red", bbox=dict(facecolor="white", alpha=0.8, edgecolor="none"))


def plot_curves(workdir: str) -> list[str]:
  """Writes WORKDIR/curves_<task>.png, one per task: valid metric per epoch per cell.

  Each subplot is one cell: every seed drawn faintly, the mean over the seeds
  still training at each epoch (non-finite values skipped) as a line, with a
  min–max band and each seed's best epoch dotted.

  Returns:
    The paths written, in task order.

  Raises:
    FileNotFoundError, ValueError: as load_results.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  results = load_results(workdir)
  info = load_run_info(workdir)
  command = info.get("command") or "unknown command (no run.json)"
  paths = []
  for task, result in results.items():
    groups = _group_members(result)
    cells = _plot_cells(task, groups, _studies_of(result, info))
    accuracy = _is_accuracy(result, task)
    n = max(len(cells), 1)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows + 1.0),
                             squeeze=False)
    try:
      flat = axes.ravel()
      for ax, (cell, recommended) in zip(flat, cells):
        _draw_cell(ax, cell, recommended, groups[cell], accuracy)
      for ax in flat[len(cells):]:
        ax.axis("off")
      if not cells:
        flat[0].text(0.5, 0.5, "no members", ha="center", va="center")
      metric = "accuracy (%)" if accuracy else "MSE (original units)"
      fig.suptitle(f"{task}: valid {metric} per epoch, mean over seeds with min–max band\n"
                   f"made by: {_truncate(command)}", fontsize=10)
      fig.tight_layout(rect=(0, 0, 1, 0.97 - 0.02 / nrows))
      path = os.path.join(workdir, f"curves_{task}.png")
      atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)
    finally:
      plt.close(fig)
    paths.append(path)
  return paths


def _mean_history(members: list[dict], name: str, layer: int | None = 0) -> np.ndarray:
  """(max epochs,) mean over seeds of a per-epoch diagnostic (layer `layer` if per-layer)."""
  rows = []
  for m in members:
    h = (m.get("diagnostics") or {}).get(name) or []
    rows.append([np.nan if v is None else (_as_float(v[layer]) if layer is not None and
                                           isinstance(v, list) else _as_float(v)) for v in h])
  n = max((len(r) for r in rows), default=0)
  mat = np.full((len(rows), n), np.nan)
  for i, r in enumerate(rows):
    mat[i, :len(r)] = r
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmean(mat, axis=0) if n else np.zeros((0,))


def _saturation_cells(groups: dict[Cell, list[dict]]) -> list[Cell]:
  """The cells to draw: all if at most 12, else the depth-1, no-batch-norm, torch-init ones
  plus every cell with a failure diagnosis."""
  cells = list(groups)
  if len(cells) <= 12:
    return cells
  def failing(c):
    return any((m.get("diagnosis") or {}).get("kind") in diagnostics_lib.FAILURES
               for m in groups[c])
  keep = [c for c in cells if (c.depth == 1 and not c.batch_norm and c.init == "torch")]
  return keep + [c for c in cells if c not in keep and failing(c)][:12]


def plot_diagnostics(workdir: str) -> list[str]:
  """Writes saturation_<task>.png per task and gradients_depth_<task>.png where a depth sweep ran.

  saturation: per cell, the mean over seeds of the saturated fraction of hidden
  layer 1's units on the valid set, of the output spread (1 = as varied as
  the targets, 0 = a constant predictor) and, where recorded, of the share of
  valid examples on which the head is saturated, per epoch. gradients_depth: for each
  activation and init of the depth sweep, the gradient norm of every layer at
  initialisation (first batch, median over seeds) for each depth.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  results = load_results(workdir)
  command = load_run_info(workdir).get("command") or "unknown command (no run.json)"
  paths = []
  for task, result in results.items():
    groups = _group_members(result)
    if not any((m.get("diagnostics") or {}).get("saturated") for ms in groups.values()
               for m in ms):
      continue
    has_head = any((m.get("diagnostics") or {}).get("head_saturated")
                   for ms in groups.values() for m in ms)      # absent from older results
    fig, axes = plt.subplots(1, 3 if has_head else 2, figsize=(19 if has_head else 13, 5))
    ax_s, ax_o = axes[0], axes[1]
    try:
      for i, cell in enumerate(_saturation_cells(groups)):
        style = dict(color=f"C{i % 10}", linestyle=("-", "--", ":")[i // 10 % 3], linewidth=1.2)
        kinds = diagnostics_lib.count_kinds(
            [m["diagnosis"] for m in groups[cell] if isinstance(m.get("diagnosis"), dict)])
        label = f"{cell.label} [{', '.join(_KIND_TEXT[k] for k in kinds)}]"
        sat = _mean_history(groups[cell], "saturated")
        ax_s.plot(np.arange(1, sat.size + 1), sat, label=label, **style)
        spread = _mean_history(groups[cell], "spread", None)
        ax_o.plot(np.arange(1, spread.size + 1), np.maximum(spread, 1e-6), **style)
        if has_head:
          head = _mean_history(groups[cell], "head_saturated", None)
          axes[2].plot(np.arange(1, head.size + 1), head, **style)
      ax_s.set(xlabel="epoch", ylabel="saturated fraction of hidden layer 1",
               ylim=(-0.03, 1.03), title="hidden units saturated (valid set)")
      ax_o.set(xlabel="epoch", ylabel="output spread / target spread", yscale="log",
               title="output spread across inputs (low = constant predictor)")
      if has_head:
        axes[2].set(xlabel="epoch", ylabel="share of valid examples", ylim=(-0.03, 1.03),
                    title="head saturated (no Jacobian entry above "
                          f"{losses_lib.HEAD_SATURATION:g})")
      fig.legend(loc="lower center", ncol=2, fontsize=7, frameon=False)
      fig.suptitle(f"{task}: hidden-unit saturation, output spread"
                   f"{' and head saturation' if has_head else ''}, mean over seeds\n"
                   f"made by: {_truncate(command)}", fontsize=10)
      n_leg = len(_saturation_cells(groups))
      fig.tight_layout(rect=(0, min(0.45, 0.035 * math.ceil(n_leg / 2) + 0.02), 1, 0.93))
      path = os.path.join(workdir, f"saturation_{task}.png")
      atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)
      paths.append(path)
    finally:
      plt.close(fig)
    per_convention = claims_lib.by_convention(groups)
    for conv, name in _depth_sweep_figures(task, groups):
      paths.append(_plot_gradients_depth(
          os.path.join(workdir, name), task, conv, claims_lib.depth_sweep(per_convention[conv]),
          command, plt))
  return paths



def _plot_gradients_depth(path, task, convention, sweep, command, plt) -> str:
  hiddens = list(dict.fromkeys(h for h, _ in sweep))
  inits = ["torch", "matched"]
  fig, axes = plt.subplots(2, len(hiddens), figsize=(max(8.0, 2.6 * len(hiddens)), 6.0), squeeze=False,
                           sharey=True)
  try:
    for j, h in enumerate(hiddens):
      for i, which in enumerate(inits):
        init = "torch" if which == "torch" else studies.matched_init(h)
        ax = axes[i, j]
        ax.set_title(f"{h}, {init} init", fontsize=8)
        by_depth = sweep.get((h, init)) or {}
        for k, (depth, members) in enumerate(by_depth.items()):
          firsts = [((m.get("diagnostics") or {}).get("grad_norm_first") or [None])[0]
                    for m in members]
          firsts = [np.array([np.nan if v is None else v for v in f]) for f in firsts if f]
          if not firsts:
            continue
          g = np.nanmedian(np.stack(firsts), axis=0)[3:]      # hidden1 .. hiddenD, out
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
                 f"(first batch, median over seeds) against depth\nmade by: "
                 f"{_truncate(command)}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)
  finally:
    plt.close(fig)
  return path
