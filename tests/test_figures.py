"""Tests for jaxact.analysis.figures on synthetic results written into tmp_path (no training)."""

import ast
import dataclasses
import json
import os
import sys

import numpy as np
import pytest

from jaxact.analysis import figures
from jaxact.store import records
from jaxact.model import cells as studies

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_COMMAND = "python -m jaxact.main --workdir=/tmp/w --study=activation --task=binary"
TASK_COMMAND = "python -m jaxact.main --workdir=/tmp/w --study=hidden --seeds=2"
MACHINE = "Linux x86_64, test box"
FINISHED = "2025-01-01T01:00:00"


def _member(cell, seed, curve, test, best_epoch=0, status="ok"):
  return {"cell": cell.to_dict(), "key": cell.key, "label": cell.label, "seed": seed,
          "best_valid": max(curve) if curve else float("nan"), "test": test,
          "best_epoch": best_epoch if curve else -1, "epochs_trained": len(curve),
          "status": status, "status_reason": None if curve else "no epoch",
          "status_epoch": None, "train_loss": [0.5] * len(curve), "valid_metric": curve}


def _write_results(workdir, task, members, **extra):
  os.makedirs(os.path.join(workdir, "results"), exist_ok=True)
  data = {"task": task, "metric_name": "accuracy", "higher_is_better": True,
          "max_epochs": 30, "patience": 10, "members": members, **extra}
  with open(os.path.join(workdir, "results", f"{task}.json"), "w") as f:
    json.dump(data, f)


def _write_run(workdir, command=RUN_COMMAND):
  with open(os.path.join(workdir, "run.json"), "w") as f:
    json.dump({"command": command, "argv": command.split()[2:], "machine": "run.json box",
               "started": "2025-01-01T00:00:00", "finished": FINISHED}, f)


def _binary_members():
  """Three activation-study cells; seeds stop at different epochs."""
  out = []
  for head, loss, curves in (("softmax", "cce", [[0.90, 0.95, 0.97], [0.92, 0.96]]),
                             ("sigmoid", "bce", [[0.50, 0.51], [0.52, 0.50, 0.50, 0.49]]),
                             ("sigmoid", "cce", [[], []])):
    cell = studies.Cell("binary", head, loss)
    out += [_member(cell, s, c, c[-1] if c else float("nan")) for s, c in enumerate(curves)]
  return out


def _hidden_cell(hidden, init, bn=False, depth=1, convention="torch"):
  return studies.Cell("multiclass", "softmax", "cce", convention=convention, init=init,
                      hidden=hidden, batch_norm=bn, depth=depth)


def _test_acc(h, init, bn, depth, seed):
  """A distinct test accuracy per cell and seed, so each heatmap entry is checkable."""
  return round(0.5 + 0.05 * studies.HIDDEN.index(h) + 0.01 * ("torch", "he", "xavier").index(
      init) + 0.002 * bn + 0.001 * depth + 0.0005 * seed, 6)


def _hidden_members(hiddens=("sigmoid", "relu", "tanh"), inits=("torch", "he", "xavier"),
                    depths=(2, 4), convention="torch", seeds=2):
  members = []
  for h in hiddens:
    for init in inits:
      for bn in (False, True):
        for s in range(seeds):
          members.append(_member(_hidden_cell(h, init, bn, convention=convention), s,
                                 [0.5, 0.9], _test_acc(h, init, bn, 1, s)))
    for init in ("torch", studies.matched_init(h)):
      for d in depths:
        for s in range(seeds):
          members.append(_member(_hidden_cell(h, init, depth=d, convention=convention), s,
                                 [0.3, 0.6], _test_acc(h, init, False, d, s)))
  return members


@pytest.fixture
def workdir(tmp_path):
  """binary: activation study trained by run.json's command, no chance level recorded;
  multiclass: a hidden-study run (depth 1 grid and a depth sweep, 30 cells) trained by
  another command, with its chance level."""
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  _write_run(wd)
  _write_results(wd, "binary", _binary_members())
  _write_results(wd, "multiclass", _hidden_members(), study="hidden", command=TASK_COMMAND,
                 machine=MACHINE, chance_valid=0.113)
  return wd


def _png(path):
  with open(path, "rb") as f:
    data = f.read()
  return data.startswith(PNG_SIGNATURE) and len(data) > 1000


# ---------------------------------------------------------------------------
# Files.


def test_plot_curves_writes_curves_and_heatmaps(workdir):
  paths = figures.plot_curves(workdir)
  assert [os.path.basename(p) for p in paths] == [
      "curves_binary.png", "heatmap_multiclass.png", "heatmap_depth_multiclass.png"]
  assert all(_png(p) for p in paths)
  assert not os.path.exists(os.path.join(workdir, "curves_multiclass.png"))
  assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]


def test_heatmap_figures_names_the_files_written(workdir):
  results = records.load_results(workdir)
  groups = results["multiclass"].groups()
  assert len(groups) == 30 > figures.CURVES_MAX_CELLS
  links = figures.heatmap_figures("multiclass", groups)
  assert [name for _, name in links] == ["heatmap_multiclass.png",
                                         "heatmap_depth_multiclass.png"]
  assert all(alt.startswith("mean test accuracy by hidden activation") for alt, _ in links)
  assert figures.curves_figure("multiclass", groups) is None
  binary = results["binary"].groups()
  assert figures.heatmap_figures("binary", binary) == []      # heads and losses differ
  assert figures.curves_figure("binary", binary) == "curves_binary.png"
  figures.plot_curves(workdir)
  for _, name in links:
    assert _png(os.path.join(workdir, name))


def test_small_hidden_task_gets_curves_and_heatmap(tmp_path):
  """At most CURVES_MAX_CELLS cells: the curves are drawn too; one depth: no depth heatmap."""
  wd = str(tmp_path)
  members = [_member(_hidden_cell(h, init), 0, [0.5, 0.9], 0.9)
             for h in ("sigmoid", "relu") for init in ("torch", "he")]
  _write_results(wd, "multiclass", members, study="hidden")
  paths = figures.plot_curves(wd)
  assert [os.path.basename(p) for p in paths] == ["curves_multiclass.png",
                                                  "heatmap_multiclass.png"]
  assert all(_png(p) for p in paths)


def test_both_conventions_one_heatmap_each(tmp_path):
  wd = str(tmp_path)
  members = (_hidden_members(("sigmoid", "relu"), ("torch", "he"), (2,), "torch", 1)
             + _hidden_members(("sigmoid", "relu"), ("torch", "he"), (2,), "logits", 1))
  _write_results(wd, "multiclass", members, study="hidden")
  groups = records.load_results(wd)["multiclass"].groups()
  names = [n for _, n in figures.heatmap_figures("multiclass", groups)]
  assert names == ["heatmap_multiclass_torch.png", "heatmap_depth_multiclass_torch.png",
                   "heatmap_multiclass_logits.png", "heatmap_depth_multiclass_logits.png"]
  paths = figures.plot_curves(wd)
  assert sorted(os.path.basename(p) for p in paths) == sorted(names)


def test_plot_diagnostics_and_gradients_depth(tmp_path):
  wd = str(tmp_path)
  members = []
  for depth in (1, 2):
    for seed, stop in ((0, 3), (1, 2)):
      m = _member(_hidden_cell("relu", "torch", depth=depth), seed, [0.5] * stop, 0.9)
      m["diagnostics"] = dict(grad_norm_first=[[1e-3] * (4 + depth)] * stop,
                              saturated=[[0.5] * depth] * stop, spread=[0.5] * stop)
      members.append(m)
  _write_results(wd, "multiclass", members, study="hidden", command=TASK_COMMAND)
  _write_run(wd)
  paths = figures.plot_diagnostics(wd)
  assert [os.path.basename(p) for p in paths] == ["saturation_multiclass.png",
                                                  "gradients_depth_multiclass.png"]
  assert all(_png(p) for p in paths)


# ---------------------------------------------------------------------------
# The made-by caption.


def test_made_by_names_the_tasks_own_command():
  info = {"command": RUN_COMMAND, "machine": "run.json box", "finished": FINISHED}
  text = figures.made_by_text(_task("binary", command=TASK_COMMAND, machine=MACHINE), info)
  assert text.splitlines() == [f"made by: {TASK_COMMAND}", f"on {MACHINE}"]
  assert RUN_COMMAND not in text and FINISHED not in text   # run.json's run did not train it


def test_made_by_same_command_names_the_date():
  info = {"command": RUN_COMMAND, "machine": "run.json box", "finished": FINISHED}
  text = figures.made_by_text(_task("binary", command=RUN_COMMAND, machine=MACHINE), info)
  assert text.splitlines() == [f"made by: {RUN_COMMAND}",
                               f"on {MACHINE}; run finished {FINISHED}"]


def test_made_by_falls_back_to_run_json():
  info = {"command": RUN_COMMAND, "machine": "run.json box", "finished": FINISHED}
  assert figures.made_by_text(_task("binary"), info).splitlines() == [
      f"made by: {RUN_COMMAND}", f"on run.json box; run finished {FINISHED}"]
  assert figures.made_by_text(_task("binary"), {}).startswith("made by: unknown command")


def test_made_by_wraps_a_long_command_over_two_lines():
  command = "python -m jaxact.main " + " ".join(f"--flag{i}=value{i}" for i in range(40))
  lines = figures.made_by_text(_task("binary", command=command), {}).splitlines()
  assert len(lines) == 2 and all(len(line) <= 110 for line in lines)
  assert lines[0].startswith("made by: python -m jaxact.main --flag0=value0")
  assert lines[1].endswith("…")


def test_each_figure_names_its_tasks_command(workdir):
  results = records.load_results(workdir)
  info = records.load_run_info(workdir)
  curves = figures.curves_figure_object("binary", results["binary"], info)
  title = curves._suptitle.get_text()
  assert f"made by: {RUN_COMMAND}" in title and f"run finished {FINISHED}" in title
  groups = results["multiclass"].groups()
  heat = figures.heatmap_figure_object("multiclass", results["multiclass"], info,
                                       figures._init_panels(groups), "x", "initialisation")
  title = heat._suptitle.get_text()
  assert f"made by: {TASK_COMMAND}" in title and f"on {MACHINE}" in title
  assert RUN_COMMAND not in title and FINISHED not in title


# ---------------------------------------------------------------------------
# Curves: carried-forward mean, chance line, shared y-axis.


def _rec(**fields) -> records.MemberRecord:
  """A member record of a multi-class cell with `fields`."""
  return records.MemberRecord(cell=studies.Cell("multiclass", "softmax", "cce"), **fields)


def _task(task: str, **fields) -> records.TaskResults:
  return records.TaskResults(task=task, **fields)


def test_carried_forward_mean_by_hand():
  members = [_rec(valid_metric=[0.1, 0.2, 0.3, 0.4]),
             _rec(valid_metric=[0.3, 0.5]),                    # stopped after epoch 2
             _rec(valid_metric=[0.2, float("inf"), 0.6]),      # a non-finite epoch
             _rec(valid_metric=[])]                            # no epoch: left out
  mat = figures.carried_forward(members, scale=10.0)
  nan = np.nan
  np.testing.assert_allclose(mat, [[1, 2, 3, 4], [3, 5, 5, 5], [2, nan, 6, 6],
                                   [nan, nan, nan, nan]])
  np.testing.assert_allclose(figures.mean_curve(members, scale=10.0),
                             [2.0, 3.5, 14 / 3, 5.0])
  # The mean a member's stop would have made jump (epoch 3: 0.45 without carrying).
  assert figures.mean_curve(members[:2]).tolist() == pytest.approx([0.2, 0.35, 0.4, 0.45])
  assert figures.mean_curve([]).shape == (0,)


def _data_axes(fig):
  return [ax for ax in fig.axes if ax.lines]


def test_curves_share_y_limits_and_draw_chance_on_every_panel(tmp_path):
  wd = str(tmp_path)
  low = studies.Cell("binary", "sigmoid", "bce")
  high = studies.Cell("binary", "softmax", "cce")
  _write_results(wd, "binary", [_member(low, 0, [0.10, 0.12], 0.1),
                                _member(high, 0, [0.95, 0.99, 0.98], 0.98),
                                _member(high, 1, [0.96, 0.97], 0.97)],
                 chance_valid=0.5)
  result = records.load_results(wd)["binary"]
  fig = figures.curves_figure_object("binary", result, {})
  axes = _data_axes(fig)
  assert len(axes) == 2
  assert axes[0].get_ylim() == axes[1].get_ylim()
  lo, hi = axes[0].get_ylim()
  assert lo <= 10.0 and hi >= 99.0 and 0.0 <= lo and hi <= 100.0
  for ax in axes:
    chance = [line for line in ax.lines if line.get_label() == figures.CHANCE_TEXT]
    assert len(chance) == 1 and chance[0].get_linestyle() == "--"
    assert list(chance[0].get_ydata()) == [50.0, 50.0]
  # The mean line of the two-seed cell is the carried-forward mean; the seeds are thin.
  (two,) = [ax for ax in axes if ax.get_title().startswith("softmax + cce")]
  mean = [line for line in two.lines if line.get_label() == figures.CARRIED_TEXT]
  np.testing.assert_allclose(mean[0].get_ydata(), [95.5, 98.0, 97.5])
  seeds = [line for line in two.lines if line.get_label() == "one seed"]
  assert len(seeds) == 2 and all(s.get_linewidth() < mean[0].get_linewidth() for s in seeds)
  # One figure legend, each label once.
  (legend,) = fig.legends
  labels = [t.get_text() for t in legend.get_texts()]
  assert labels.count(figures.CHANCE_TEXT) == 1 and labels.count(figures.CARRIED_TEXT) == 1


def test_curves_mse_log_scale_shared(tmp_path):
  wd = str(tmp_path)
  a = studies.Cell("regression", "none", "mse", norm=True)
  b = studies.Cell("regression", "sigmoid", "mse", sigmoid_method=True)
  _write_results(wd, "regression", [_member(a, 0, [2.0, 1.0, 0.5], 0.5),
                                    _member(b, 0, [5000.0, 4000.0], 4000.0)],
                 metric_name="mse", higher_is_better=False, chance_valid=3.0)
  fig = figures.curves_figure_object("regression", records.load_results(wd)["regression"], {})
  axes = _data_axes(fig)
  assert len(axes) == 2
  assert {ax.get_yscale() for ax in axes} == {"log"}
  assert axes[0].get_ylim() == pytest.approx(axes[1].get_ylim())
  lo, hi = axes[0].get_ylim()
  assert lo < 0.5 and hi > 5000.0


# ---------------------------------------------------------------------------
# Heatmaps.


def test_heatmap_matrix_by_hand():
  a, b = _rec(test=0.9), _rec(test=0.8)
  cells = {("relu", "he"): [a, b], ("relu", "torch"): [a, _rec(test=float("nan"))],
           ("tanh", "he"): [_rec(test=None)]}
  mean, n, total = figures.heatmap_matrix(cells, ["relu", "tanh"], ["torch", "he"])
  np.testing.assert_allclose(mean, [[90.0, 85.0], [np.nan, np.nan]])
  np.testing.assert_array_equal(n, [[1, 2], [0, 0]])
  np.testing.assert_array_equal(total, [[2, 2], [0, 1]])


def test_heatmap_panels_of_a_hidden_run(workdir):
  groups = records.load_results(workdir)["multiclass"].groups()
  panels = figures._init_panels(groups)
  assert [p[0] for p in panels] == ["depth 1, no batch norm", "depth 1, with batch norm"]
  for (_, rows, cols, cells), bn in zip(panels, (False, True)):
    assert rows == ["sigmoid", "tanh", "relu"]                   # studies.HIDDEN order
    assert cols == ["torch", "he", "xavier"]                     # studies.INITS order
    mean, n, total = figures.heatmap_matrix(cells, rows, cols)
    expected = [[100 * (_test_acc(h, i, bn, 1, 0) + _test_acc(h, i, bn, 1, 1)) / 2
                 for i in cols] for h in rows]
    np.testing.assert_allclose(mean, expected)
    assert (n == 2).all() and (total == 2).all()
  depth = figures._depth_panels(groups)
  assert [p[0].split(" (")[0] for p in depth] == ["torch init", "matched init"]
  for (_, rows, cols, cells), kind in zip(depth, ("torch", "matched")):
    assert cols == [1, 2, 4]
    mean, n, _ = figures.heatmap_matrix(cells, rows, cols)
    init = {h: "torch" if kind == "torch" else studies.matched_init(h) for h in rows}
    expected = [[100 * (_test_acc(h, init[h], False, d, 0) + _test_acc(h, init[h], False, d, 1))
                 / 2 for d in cols] for h in rows]
    np.testing.assert_allclose(mean, expected)
    assert (n == 2).all()


def test_heatmap_figure_annotates_values_and_seeds(workdir):
  results = records.load_results(workdir)
  result = results["multiclass"]
  members = list(result.members)                    # sigmoid, torch, no bn, seed 0
  members[0] = dataclasses.replace(members[0], test=float("nan"))
  result = dataclasses.replace(result, members=tuple(members))
  groups = result.groups()
  fig = figures.heatmap_figure_object("multiclass", result, {}, figures._init_panels(groups),
                                      "hidden activation and initialisation", "initialisation")
  texts = [t.get_text() for t in fig.axes[0].texts]
  assert len(texts) == 9
  assert texts[0] == f"{_test_acc('sigmoid', 'torch', False, 1, 1) * 100:.1f}\nn=1/2"
  both = float(np.mean([_test_acc("sigmoid", "he", False, 1, s) for s in (0, 1)])) * 100
  assert texts[1] == f"{both:.1f}\nn=2"
  assert "chance (constant predictor, valid) 11.3%" in fig._suptitle.get_text()


# ---------------------------------------------------------------------------
# The user's matplotlib backend.


def test_plotting_leaves_the_backend_alone(workdir):
  import matplotlib  # pylint: disable=g-import-not-at-top
  original = matplotlib.rcParams._get("backend")
  had_pyplot = "matplotlib.pyplot" in sys.modules
  figs_before = (sys.modules["matplotlib.pyplot"].get_fignums() if had_pyplot else None)
  matplotlib.rcParams["backend"] = "pdf"                # a user's choice, not Agg
  try:
    figures.plot_curves(workdir)
    assert matplotlib.get_backend() == "pdf"
    assert matplotlib.rcParams._get("backend") == "pdf"
    if had_pyplot:   # no figure left in pyplot's registry
      assert sys.modules["matplotlib.pyplot"].get_fignums() == figs_before
    else:            # pyplot (which would pick a backend) was not even imported
      assert "matplotlib.pyplot" not in sys.modules
  finally:
    matplotlib.rcParams._set("backend", original)


def test_figures_module_uses_no_pyplot():
  """Nowhere in the module (inside functions included) is pyplot imported or a backend set."""
  with open(figures.__file__, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      assert not any("pyplot" in a.name for a in node.names)
    if isinstance(node, ast.ImportFrom):
      assert "pyplot" not in (node.module or "")
      assert not any(a.name in ("pyplot", "use") for a in node.names)
    if isinstance(node, ast.Attribute):
      assert node.attr not in ("use", "pyplot", "switch_backend")


def test_importing_does_not_import_matplotlib_eagerly():
  # Module level of figures imports only numpy and jaxact; matplotlib comes with plotting.
  with open(figures.__file__, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
  names = {a.name for n in top for a in n.names} | {
      n.module for n in top if isinstance(n, ast.ImportFrom)}
  assert not any(str(n).startswith("matplotlib") for n in names)


def test_saturation_figure_splits_classes_and_marks_the_clipped_spread(tmp_path, monkeypatch):
  """A cell with a healthy and a collapsed member: two lines, never their mean; the collapsed
  member's spread of 0 is drawn at the floor and marked, not clipped silently."""
  wd = str(tmp_path)
  cell = _hidden_cell("relu", "torch")
  healthy = _member(cell, 0, [0.5, 0.9, 0.95], 0.95)
  healthy["diagnostics"] = dict(saturated=[[0.1]] * 3, spread=[0.5, 0.6, 0.7])
  healthy["diagnosis"] = {"kind": "healthy", "evidence": "synthetic"}
  collapsed = _member(cell, 1, [0.11, 0.11, 0.11], 0.11)
  collapsed["diagnostics"] = dict(saturated=[[1.0]] * 3, spread=[0.3, 0.0, 0.0])
  collapsed["diagnosis"] = {"kind": "collapsed", "evidence": "synthetic"}
  _write_results(wd, "multiclass", [healthy, collapsed], study="hidden", command=TASK_COMMAND)
  _write_run(wd)
  saved = {}
  original = figures._save

  def keep(fig, path):
    saved[os.path.basename(path)] = fig
    return original(fig, path)

  monkeypatch.setattr(figures, "_save", keep)
  figures.plot_diagnostics(wd)
  ax_s, ax_o = saved["saturation_multiclass.png"].axes[:2]
  by_label = {l.get_label(): l for l in ax_s.get_lines()}
  assert set(by_label) == {f"{cell.label} [1 healthy]", f"{cell.label} [1 collapsed]"}
  assert list(by_label[f"{cell.label} [1 collapsed]"].get_ydata()) == [1.0, 1.0, 1.0]
  assert list(by_label[f"{cell.label} [1 healthy]"].get_ydata()) == [0.1, 0.1, 0.1]
  assert by_label[f"{cell.label} [1 healthy]"].get_linestyle() != by_label[
      f"{cell.label} [1 collapsed]"].get_linestyle()
  marks = [l for l in ax_o.get_lines() if l.get_marker() == "v"]
  assert len(marks) == 1 and list(marks[0].get_xdata()) == [2, 3]
  assert list(marks[0].get_ydata()) == [figures.SPREAD_FLOOR] * 2
  assert "▼: below 1e-06" in ax_o.get_title()
