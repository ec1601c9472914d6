"""Tests for jaxact.report on hand-written workdirs (no training, no JAX compute)."""

import itertools
import json
import math
import os
import subprocess
import sys

import pytest

from jaxact.store import diagnostics
from jaxact.analysis import figures
from jaxact.analysis import report
from jaxact.store import records as records_lib
from jaxact.model import cells as studies

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMMAND = "python -m jaxact.main --workdir=/tmp/w --study=all --seeds=3"
# Student t 0.975 quantiles (table) and the standard normal 0.975 quantile.
T_975 = {8: 2.3060041352, 1: 12.7062047362, 2: 4.3026527297, 5: 2.5705818366, 6: 2.4469118511, 9: 2.2621571628}
Z_975 = 1.959963984540054


def _member(task, head, loss, seed, valid, test, *, norm=False, sigmoid_method=False,
            convention="torch", status="ok", reason=None, status_epoch=None,
            curve=None, best_epoch=None, n_inf_test=0):
  cell = studies.Cell(task, head, loss, norm, sigmoid_method, convention)
  curve = [valid - 0.01, valid, valid - 0.005] if curve is None else curve
  if best_epoch is None:
    best_epoch = 1 if curve else -1
  return {
      "cell": cell.to_dict(), "key": cell.key, "label": cell.label, "seed": seed,
      "best_valid": valid, "test": test, "best_epoch": best_epoch,
      "epochs_trained": len(curve), "status": status, "status_reason": reason,
      "status_epoch": status_epoch, "train_loss": [0.5] * len(curve),
      "valid_metric": curve, "n_infinite_valid": 0, "n_infinite_test": n_inf_test,
  }


def _write_results(workdir, task, members, metric="accuracy", higher=True):
  os.makedirs(os.path.join(workdir, "results"), exist_ok=True)
  data = {"task": task, "metric_name": metric, "higher_is_better": higher, "init": "torch",
          "split_seed": 0, "split_fingerprint": "ab12cd", "max_epochs": 200,
          "patience": 10, "wall_time_s": 12.5, "members": members}
  with open(os.path.join(workdir, "results", f"{task}.json"), "w") as f:
    json.dump(data, f)  # NaN is written as the bare token NaN, as the trainer does.


def _write_run(workdir):
  with open(os.path.join(workdir, "run.json"), "w") as f:
    json.dump({"argv": COMMAND.split()[2:], "command": COMMAND,
               "machine": "Linux x86_64, cpu, jax cpu:0", "started": "2025-01-01T00:00:00",
               "finished": "2025-01-01T01:00:00", "jaxact_version": "0.1.0",
               "config": {"seeds": 3}}, f)


@pytest.fixture
def workdir(tmp_path):
  """A workdir with binary (torch + logits), multilabel and regression results."""
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  _write_run(wd)
  nan = float("nan")
  binary = []
  for seed, (v, t) in enumerate([(0.97, 0.96), (0.98, 0.97), (0.99, 0.98)]):
    binary.append(_member("binary", "softmax", "cce", seed, v, t))  # recommended
  for seed, v in enumerate([0.90, 0.91, 0.92]):
    binary.append(_member("binary", "sigmoid", "bce", seed, v, v,
                          status="hit_cap" if seed == 2 else "ok"))
  for seed in range(3):  # all invalid, no epoch finished
    binary.append(_member("binary", "sigmoid", "cce", seed, nan, nan, status="invalid",
                          reason="all-invalid-reason-xyz", status_epoch=0, curve=[]))
  binary.append(_member("binary", "relu", "mae", 0, 0.5, 0.5))  # off every grid
  for seed, v in enumerate([0.95, 0.96]):
    binary.append(_member("binary", "softmax", "cce", seed, v, v, convention="logits"))
  _write_results(wd, "binary", binary)
  multilabel = [_member("multilabel", "sigmoid", "bce", 0, 0.9, 0.9,
                        curve=[0.8, float("inf"), 0.9], status="nonfinite", status_epoch=1)]
  _write_results(wd, "multilabel", multilabel)
  regression = [
      _member("regression", "sigmoid", "mse", s, 0.5 + s, float("inf") if s == 1 else 0.6,
              norm=True, sigmoid_method=True, curve=[100.0, 1.0, 0.5 + s],
              n_inf_test=7 if s == 1 else 0)
      for s in range(2)]
  _write_results(wd, "regression", regression, metric="mse", higher=False)
  return wd


def _table_rows(text, heading, which=0):
  """The rows of table `which` (0: the first) under the first heading containing `heading`."""
  lines = text.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith("#") and heading in l)
  tables, current = [], None
  for line in lines[start + 1:]:
    if line.startswith("#"):
      break
    if line.startswith("|"):
      if current is None:
        current = []
        tables.append(current)
      current.append([c.strip() for c in line.strip("|").split(" | ")])
    else:
      current = None
  return tables[which] if which < len(tables) else []


def _t_ci(values):
  """(mean, low, high) of the Student t 95% interval, from the table quantiles."""
  n = len(values)
  mean = sum(values) / n
  sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
  half = T_975[n - 1] * sd / math.sqrt(n)
  return mean, mean - half, mean + half


def _wilson(k, n, z=Z_975):
  p = k / n
  centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def _sign_flip_p(d):
  """Two-sided exact sign-flip p of the mean, by enumerating all 2^n sign vectors."""
  observed = abs(sum(d)) / len(d)
  hits = sum(abs(sum(s * x for s, x in zip(signs, d))) / len(d) >= observed - 1e-9
             for signs in itertools.product((1, -1), repeat=len(d)))
  return hits / 2 ** len(d)


def _diagnosed(member, kind):
  member["diagnosis"] = {"kind": kind, "evidence": f"synthetic {kind}"}
  return member


def test_summarize_known_values():
  s = report.summarize([1.0, 2.0, 3.0, 4.0])
  assert s["mean"] == pytest.approx(2.5)
  assert s["std"] == pytest.approx(math.sqrt(1.25))  # population std
  assert (s["min"], s["max"], s["n"], s["n_nonfinite"]) == (1.0, 4.0, 4, 0)


def test_summarize_skips_nonfinite():
  s = report.summarize([float("nan"), 2.0, float("inf"), 4.0, None])
  assert s["mean"] == pytest.approx(3.0)
  assert s["std"] == pytest.approx(1.0)
  assert (s["min"], s["max"], s["n"], s["n_nonfinite"]) == (2.0, 4.0, 2, 3)


def test_summarize_nothing_finite():
  s = report.summarize([float("nan")])
  assert s["n"] == 0 and s["n_nonfinite"] == 1 and math.isnan(s["mean"])
  assert report.summarize([])["n"] == 0


def test_load_results_order_and_errors(workdir, tmp_path):
  assert list(records_lib.load_results(workdir)) == ["regression", "binary", "multilabel"]
  with pytest.raises(FileNotFoundError, match="no results"):
    records_lib.load_results(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    records_lib.load_results(str(tmp_path / "missing"))


def test_header(workdir):
  text = report.render_markdown(workdir)
  assert f"Made by: `{COMMAND}`" in text
  assert "Machine: Linux x86_64, cpu, jax cpu:0" in text
  assert "2025-01-01T01:00:00" in text
  assert f"python -m jaxact.report --workdir={workdir}" in text
  assert "## How to read" in text


def test_header_without_run_json(workdir):
  os.remove(os.path.join(workdir, "run.json"))
  text = report.render_markdown(workdir)
  assert "Made by: unknown" in text and "Machine: unknown" in text


def test_activation_table_numbers_markers_and_status(workdir):
  text = report.render_markdown(workdir)
  assert "## binary: accuracy, higher is better" in text
  rows = _table_rows(text, "binary: final-activation study, torch convention")
  header, body = rows[0], rows[2:]
  assert "n seeds" in header
  # Grid order: softmax + cce (recommended), sigmoid + bce, sigmoid + cce (misused).
  assert [(r[0], r[1]) for r in body] == [
      ("✅", "softmax + cce"), ("❌", "sigmoid + bce"), ("❌", "sigmoid + cce")]
  assert header[10] == "stopping" and header[3].startswith("diagnosis")
  assert "mean [95% CI]" in header[4] and "mean [95% CI]" in header[6]
  rec = body[0]
  assert rec[2] == "3"
  assert rec[3] == "3 not diagnosed"   # no in-program diagnostics in this run
  mean, low, high = _t_ci([97.0, 98.0, 99.0])
  assert rec[4] == f"{mean:.2f} [{low:.2f}, {high:.2f}]" == "98.00 [95.52, 100.48]"
  assert rec[5] == "median 98.00; 97.00–99.00"
  mean, low, high = _t_ci([96.0, 97.0, 98.0])
  assert rec[6] == f"{mean:.2f} [{low:.2f}, {high:.2f}]"
  assert rec[7] == "median 97.00; 96.00–98.00"
  assert rec[8] == "2.0"  # best_epoch 1 (0-based) shown 1-based
  assert rec[9] == "3.0"
  assert rec[10] == "3 early-stopped"
  assert body[1][10] == "2 early-stopped, 1 hit cap"
  invalid = body[2]
  assert invalid[3] == "3 invalid"
  assert invalid[4] == "invalid: all-invalid-reason-xyz"
  assert invalid[6] == "invalid: all-invalid-reason-xyz"
  assert invalid[10] == "3 invalid"
  # Paired differences to the recommended cell, below the table.
  paired = _table_rows(text, "binary: final-activation study, torch convention", 1)
  assert [r[:3] for r in paired[2:]] == [["sigmoid + bce", "softmax + cce", "3"],
                                        ["sigmoid + cce", "softmax + cce", "0 of 3 common seeds"]]
  # Differences -6, -6, -6 points: 2 of the 8 sign vectors reach |mean| 6.
  # The task's family holds the one comparison with a p-value: Holm leaves it as it is; the
  # differences have no spread and lie outside +-0.5 points, so TOST gives 1.
  assert paired[2][3:] == ["-6.00 [-6.00, -6.00]", "0.250 (exact sign-flip)", "0.250", "1.000",
                           "inconclusive"]
  assert paired[3][3:] == ["no finite pair", "–", "–", "–", "too few pairs"]


def test_loss_study_table_and_other_cells(workdir):
  text = report.render_markdown(workdir)
  rows = _table_rows(text, "binary: loss study, torch convention")
  assert [(r[0], r[1]) for r in rows[2:]] == [("✅", "softmax + cce"), ("❌", "sigmoid + bce")]
  other = _table_rows(text, "binary: Other cells")
  assert other[0][0] == "variant"  # no ✅/❌ column
  assert [r[0] for r in other[2:]] == ["relu + mae"]
  assert "✅" not in "".join(other[2][0]) and "❌" not in other[2][0]


def test_conventions_get_separate_tables(workdir):
  text = report.render_markdown(workdir)
  torch_rows = _table_rows(text, "binary: final-activation study, torch convention")
  logits_rows = _table_rows(text, "binary: final-activation study, logits convention")
  assert len(torch_rows) == 5
  assert [(r[0], r[1], r[4]) for r in logits_rows[2:]] == [
      ("✅", "softmax + cce [logits]", "95.50 [89.15, 101.85]")]   # t_{0.975, 1} = 12.71
  # Only torch cells in the multilabel results: no logits table there.
  assert "multilabel: final-activation study, logits" not in text


def test_regression_mse_infinite_predictions(workdir):
  text = report.render_markdown(workdir)
  assert "## regression: MSE in original units, lower is better" in text
  rows = _table_rows(text, "regression: final-activation study, torch convention")
  assert rows[0][-1] == "note"
  row = rows[2]
  assert row[0] == "❌" and row[1] == "sigmoid method + mse, standardised"
  mean, low, high = _t_ci([0.5, 1.5])   # MSE values, 4 significant digits
  assert row[4] == f"{mean:#.4g} [{low:#.4g}, {high:#.4g}]" == "1.000 [-5.353, 7.353]"
  assert row[5] == "median 1.000; 0.5000–1.500"
  assert row[6] == "0.6000 [1 seed, no CI] (+1 inf)"
  assert "7/10000 test predictions infinite (seed 1)" in row[-1]


def test_original_numbers_column(workdir, monkeypatch):
  cell = studies.Cell("binary", "softmax", "cce")
  monkeypatch.setitem(report.ORIGINAL_NUMBERS, ("activation", cell.key), (0.9707, 0.9757))
  text = report.render_markdown(workdir)
  rows = _table_rows(text, "binary: final-activation study, torch convention")
  assert rows[0][-2:] == ["original (source document): valid / test",
                          "jaxact's 95% prediction interval for one run: valid / test, the "
                          "original"]
  assert rows[2][-2] == "97.07 / 97.57"
  # Prediction intervals over the 3 seeds: valid 97, 98, 99 and test 96, 97, 98 (sd 1),
  # mean +- t_{0.975, 2} sqrt(1 + 1/3) = +-4.968.
  half = 4.3026527297 * math.sqrt(1 + 1 / 3)
  assert rows[2][-1] == (f"[{98 - half:.2f}, {98 + half:.2f}] inside / "
                         f"[{97 - half:.2f}, {97 + half:.2f}] inside")
  assert rows[3][-2:] == ["", ""]
  loss_rows = _table_rows(text, "binary: loss study, torch convention")
  assert not any(h.startswith("original") for h in loss_rows[0])
  assert ("The original's single-run values (source document) inside jaxact's 95% prediction "
          "interval for one new run: **2 of 2**." in text)
  monkeypatch.setitem(report.ORIGINAL_NUMBERS, ("activation", cell.key), (0.9707, 0.9000))
  text = report.render_markdown(workdir)
  assert "for one new run: **1 of 2**; outside: softmax + cce test 90.00." in text


def test_image_links(workdir):
  text = report.render_markdown(workdir)
  for task in ("regression", "binary", "multilabel"):
    assert f"![valid curves](curves_{task}.png)" in text


def test_plot_curves_writes_pngs(workdir):
  paths = figures.plot_curves(workdir)
  assert sorted(os.path.basename(p) for p in paths) == [
      "curves_binary.png", "curves_multilabel.png", "curves_regression.png"]
  for p in paths:
    with open(p, "rb") as f:
      data = f.read()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_plot_curves_single_invalid_member(tmp_path):
  wd = str(tmp_path)
  _write_results(wd, "probability", [
      _member("probability", "softmax", "bce", 0, float("nan"), float("nan"),
              status="invalid", reason="r", curve=[])])
  (path,) = figures.plot_curves(wd)
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE


def test_write_report(workdir):
  path = report.write_report(workdir)
  assert path == os.path.join(workdir, "report.md")
  with open(path, encoding="utf-8") as f:
    assert f.read() == report.render_markdown(workdir)
  assert os.path.exists(os.path.join(workdir, "curves_binary.png"))
  assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxact.analysis.report", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_rebuilds_report(workdir):
  proc = _cli(f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr
  with open(os.path.join(workdir, "report.md"), encoding="utf-8") as f:
    assert "98.00 [95.52, 100.48]" in f.read()


def test_cli_missing_workdir(tmp_path):
  proc = _cli(f"--workdir={tmp_path / 'nope'}")
  assert proc.returncode != 0
  assert "nope" in proc.stderr and "does not exist" in proc.stderr
  assert "Traceback" not in proc.stderr
  empty = _cli(f"--workdir={tmp_path}")
  assert empty.returncode != 0 and "no results" in empty.stderr
  assert "Traceback" not in empty.stderr


def test_original_numbers_name_cells_of_their_study():
  """Every number transcribed from the source documents belongs to a real grid row."""
  assert report.ORIGINAL_NUMBERS
  for (study, key), (valid, test) in report.ORIGINAL_NUMBERS.items():
    keys = {row.cell.key for rows in studies.grid(study).values() for row in rows}
    assert key in keys
    assert 0.0 < valid < 1.0 and 0.0 < test < 1.0


def test_cell_shared_by_both_conventions_appears_in_both_tables(tmp_path):
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  members = [_member("probability", "sigmoid", "bce", 0, 0.97, 0.96),
             _member("probability", "sigmoid", "bce", 0, 0.95, 0.94, convention="logits"),
             _member("probability", "sigmoid", "mse", 0, 0.93, 0.92)]
  _write_results(wd, "probability", members)
  text = report.render_markdown(wd)
  torch_rows = _table_rows(text, "probability: loss study, torch convention")
  logits_rows = _table_rows(text, "probability: loss study, logits convention")
  assert [r[1] for r in torch_rows[2:]] == ["sigmoid + bce", "sigmoid + mse"]
  assert [r[1] for r in logits_rows[2:]] == ["sigmoid + bce [logits]", "sigmoid + mse"]
  assert logits_rows[3][4].startswith("93.00")
  assert "Other cells" not in text


def test_render_summary_one_row_per_cell(workdir):
  text = report.render_summary(workdir, study="activation")
  rows = [line for line in text.splitlines() if line.startswith("| binary |")]
  assert rows and rows[0].startswith(
      "| binary | ✅ | softmax + cce | 3 | 3 not diagnosed | 98.00% [95.52, 100.48] | "
      "97.00% [94.52, 99.48] | 3 early-stopped |")
  assert all("[logits]" not in r for r in rows)


def test_depth_sweep_figures_per_convention(tmp_path, monkeypatch):
  """A run with a depth sweep in both conventions gets one gradients figure per convention."""
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  _write_run(wd)
  members = []
  for convention, grad in (("torch", 1e-6), ("logits", 1.0)):
    for depth in (1, 2):
      cell = studies.Cell("multiclass", "softmax", "cce", convention=convention, depth=depth)
      for seed in range(2):
        m = _member("multiclass", "softmax", "cce", seed, 0.9, 0.9, convention=convention)
        m.update(cell=cell.to_dict(), key=cell.key, label=cell.label)
        m["diagnostics"] = dict(
            layers=["conv1", "conv2", "conv3"] + [f"hidden{i + 1}" for i in range(depth)] + ["out"],
            grad_norm_first=[[grad] * (4 + depth)] * 3, saturated=[[0.5] * depth] * 3,
            spread=[0.5] * 3, head_saturated=[0.1, 0.5, None])
        members.append(m)
  _write_results(wd, "multiclass", members)
  plotted = {}
  original = figures._plot_gradients_depth

  def spy(path, task, convention, sweep, command, plt):
    plotted[os.path.basename(path)] = {
        m.cell.convention
        for by_depth in sweep.values() for ms in by_depth.values() for m in ms}
    return original(path, task, convention, sweep, command, plt)

  monkeypatch.setattr(figures, "_plot_gradients_depth", spy)
  report.write_report(wd)
  assert plotted == {"gradients_depth_multiclass_torch.png": {"torch"},
                     "gradients_depth_multiclass_logits.png": {"logits"}}
  text = open(os.path.join(wd, "report.md"), encoding="utf-8").read()
  for name in plotted:
    with open(os.path.join(wd, name), "rb") as f:
      assert f.read(8) == PNG_SIGNATURE
    assert f"({name})" in text
  assert not os.path.exists(os.path.join(wd, "gradients_depth_multiclass.png"))
  with open(os.path.join(wd, "saturation_multiclass.png"), "rb") as f:   # with the head panel
    assert f.read(8) == PNG_SIGNATURE
  from jaxact.analysis import claims  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="one convention"):
    claims.depth_sweep({studies.Cell.from_dict(m["cell"]): [m] for m in members})


# -- statistics in the tables: classes, confidence intervals, paired tests, rates -----------


def _collapse_run(tmp_path):
  """multiclass, 10 seeds: softmax + cce all healthy; sigmoid + bce with seeds 2, 5, 8 collapsed."""
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  _write_run(wd)
  rec_test = [0.970 + 0.001 * s for s in range(10)]
  mis_test = [0.1135 if s in (2, 5, 8) else rec_test[s] + (0.002 if s % 2 else -0.001)
              for s in range(10)]
  members = []
  for s in range(10):
    members.append(_diagnosed(_member("multiclass", "softmax", "cce", s, rec_test[s] + 0.004,
                                      rec_test[s]), "healthy"))
    kind = "collapsed" if s in (2, 5, 8) else "healthy"
    members.append(_diagnosed(_member("multiclass", "sigmoid", "bce", s, mis_test[s] + 0.003,
                                      mis_test[s]), kind))   # status "ok": stopped early
  _write_results(wd, "multiclass", members)
  return wd, rec_test, mis_test


def test_collapsed_members_are_counted_and_left_out_of_the_healthy_statistics(tmp_path):
  wd, rec_test, mis_test = _collapse_run(tmp_path)
  text = report.render_markdown(wd)
  rows = _table_rows(text, "multiclass: final-activation study, torch convention")
  rec, mis = rows[2], rows[3]
  assert (rec[1], mis[1]) == ("softmax + cce", "sigmoid + bce")
  assert rec[3] == "10 healthy" and mis[3] == "7 healthy, 3 collapsed"
  assert mis[10] == "10 early-stopped"   # stopping, not health
  # All-healthy row: plain statistics over the 10 seeds (t_{0.975, 9}).
  mean, low, high = _t_ci([100 * v for v in rec_test])
  assert rec[6] == f"{mean:.2f} [{low:.2f}, {high:.2f}]"
  # Mixed row: the class counts, then the 7 healthy members' statistics, labelled.
  healthy = [100 * mis_test[s] for s in range(10) if s not in (2, 5, 8)]
  mean, low, high = _t_ci(healthy)
  assert mis[6] == f"7 healthy: {mean:.2f} [{low:.2f}, {high:.2f}]"
  median = sorted(healthy)[3]
  assert mis[7] == f"median {median:.2f}; {min(healthy):.2f}–{max(healthy):.2f}"
  valid = [100 * (mis_test[s] + 0.003) for s in range(10) if s not in (2, 5, 8)]
  mean, low, high = _t_ci(valid)
  assert mis[4] == f"7 healthy: {mean:.2f} [{low:.2f}, {high:.2f}]"


def test_paired_difference_uses_all_pairs_and_matches_enumeration(tmp_path):
  wd, rec_test, mis_test = _collapse_run(tmp_path)
  text = report.render_markdown(wd)
  paired = _table_rows(text, "multiclass: final-activation study, torch convention", 1)
  assert paired[0][3] == "test difference in accuracy points: mean [95% CI]"
  (row,) = paired[2:]
  d = [100 * (m - r) for m, r in zip(mis_test, rec_test)]   # collapsed pairs included
  mean, low, high = _t_ci(d)
  p = _sign_flip_p(d)
  assert row[:3] == ["sigmoid + bce", "softmax + cce", "10"]
  assert row[3] == f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
  assert row[4] == f"{p:.3f} (exact sign-flip)"
  assert row[5] == f"{p:.3f}"   # a family of one
  # Three collapses dominate the mean, but 10 pairs can tell neither a direction at 0.05 nor
  # an equivalence within +-0.5 points.
  assert p > 0.05 and row[7] == "inconclusive"


def test_rates_with_wilson_intervals(tmp_path):
  wd, _, _ = _collapse_run(tmp_path)
  text = report.render_markdown(wd)
  rates = _table_rows(text, "multiclass: failure and hit-cap rates")
  assert rates[0] == ["variant", "n seeds", "k/n = share [95% CI]"]
  low, high = _wilson(3, 10)
  assert rates[2:] == [["sigmoid + bce", "10",
                        f"collapsed 3/10 = 30.0% [{100 * low:.1f}, {100 * high:.1f}]"]]
  assert f"[{100 * low:.1f}, {100 * high:.1f}]" == "[10.8, 60.3]"


def test_summary_shows_intervals_and_diagnosis(tmp_path):
  wd, _, mis_test = _collapse_run(tmp_path)
  text = report.render_summary(wd)
  (row,) = [l for l in text.splitlines() if "sigmoid + bce" in l]
  healthy = [100 * mis_test[s] for s in range(10) if s not in (2, 5, 8)]
  mean, low, high = _t_ci(healthy)
  cols = [c.strip() for c in row.strip("|").split(" | ")]
  assert cols[3:5] == ["10", "7 healthy, 3 collapsed"]
  assert cols[6] == f"7 healthy: {mean:.2f}% [{low:.2f}, {high:.2f}]"
  assert "±" not in text


def test_statistics_of_failed_and_mixed_non_failure_classes(tmp_path):
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  kind = next(k for k in diagnostics.FAILURES if "_" in k)   # e.g. no_gradient
  members = []
  for s, v in enumerate([0.11, 0.12, 0.10]):   # every member failed: its class is named
    members.append(_diagnosed(_member("binary", "sigmoid", "bce", s, v, v), kind))
  for s, v in enumerate([0.95, 0.96, 0.97]):   # healthy and hit cap: one (not failed) class
    members.append(_diagnosed(_member("binary", "softmax", "cce", s, v, v,
                                      status="hit_cap" if s else "ok"),
                              "hit_cap" if s else "healthy"))
  members.append(_diagnosed(_member("binary", "softmax", "cce", 3, 0.5, 0.5), "collapsed"))
  _write_results(wd, "binary", members)
  text = report.render_markdown(wd)
  rows = _table_rows(text, "binary: final-activation study, torch convention")
  rec, mis = rows[2], rows[3]
  name = kind.replace("_", " ")
  assert mis[3] == f"3 {name}"
  mean, low, high = _t_ci([11.0, 12.0, 10.0])
  assert mis[6] == f"3 {name}: {mean:.2f} [{low:.2f}, {high:.2f}]"
  assert rec[3] == "1 healthy, 2 hit cap, 1 collapsed"   # healthy first, then KINDS order
  mean, low, high = _t_ci([95.0, 96.0, 97.0])
  assert rec[6] == f"3 healthy or hit cap: {mean:.2f} [{low:.2f}, {high:.2f}]"
  rates = _table_rows(text, "binary: failure and hit-cap rates")
  by_variant = {r[0]: r[2] for r in rates[2:]}
  low, high = _wilson(1, 4)
  assert by_variant["softmax + cce"] == (
      f"collapsed 1/4 = 25.0% [{100 * low:.1f}, {100 * high:.1f}]; "
      f"hit cap 2/4 = 50.0% [{100 * _wilson(2, 4)[0]:.1f}, {100 * _wilson(2, 4)[1]:.1f}]")
  assert by_variant["sigmoid + bce"].startswith(f"{name} 3/3 = 100.0% [")


def test_paired_verdict_follows_the_metric_direction_for_mse(tmp_path):
  """Regression: a larger MSE is worse; each misused cell meets the recommended cell with
  its target treatment."""
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  members = []
  for s in range(7):
    for norm, base in ((True, 0.50), (False, 40.0)):
      members.append(_member("regression", "none", "mse", s, base, base + 0.01 * s, norm=norm))
      members.append(_member("regression", "sigmoid", "mse", s, 2 * base, 2 * base + 0.02 * s,
                             norm=norm, sigmoid_method=True))
  _write_results(wd, "regression", members, metric="mse", higher=False)
  text = report.render_markdown(wd)
  paired = _table_rows(text, "regression: final-activation study, torch convention", 1)
  rows = {r[0]: r for r in paired[2:]}
  std = rows["sigmoid method + mse, standardised"]
  assert std[1] == "none + mse, standardised"
  d = [0.50 + 0.01 * s for s in range(7)]   # misused minus recommended, MSE units
  mean, low, high = _t_ci(d)
  assert std[3] == f"{mean:+#.4g} [{low:+#.4g}, {high:+#.4g}]"
  assert std[4] == f"{_sign_flip_p(d):.3f} (exact sign-flip)" == "0.016 (exact sign-flip)"
  # Two comparisons in the task's family, both p = 2/128: Holm 2 x 2/128.
  assert std[5] == "0.031" and std[7] == "worse"
  raw = rows["sigmoid method + mse, raw targets"]
  assert raw[1] == "none + mse, raw targets" and raw[7] == "worse"


def test_how_to_read_explains_the_statistics(workdir):
  text = report.render_markdown(workdir)
  how = text[text.index("## How to read"):]
  for phrase in ("Student's t", "ddof 1", "over its seeds", "sign-flip permutation test",
                 "Wilcoxon signed-rank", "Wilson", "failed members included", "same seed",
                 "Stopping (how training ended"):
    assert phrase in how, phrase
  for kind in diagnostics.KINDS:
    assert f"**{kind.replace('_', ' ')}**" in how


def test_a_cell_in_two_modes_is_shown_as_its_modes(tmp_path):
  """Nine members near 78.8% and one at 76.9% (the multi-label softmax + cce of the torch
  grid): two modes, each with its count and mean, not one mean over both."""
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  tests = [0.7847, 0.7855, 0.7866, 0.7871, 0.7880, 0.7887, 0.7892, 0.7902, 0.7932, 0.7689]
  members = [_diagnosed(_member("multilabel", "softmax", "cce", s, v, v), "ceiling")
             for s, v in enumerate(tests)]
  members += [_diagnosed(_member("multilabel", "sigmoid", "bce", s, 0.984, 0.984 + 0.0001 * s),
                         "healthy") for s in range(10)]
  _write_results(wd, "multilabel", members)
  text = report.render_markdown(wd)
  rows = {r[1]: r for r in _table_rows(text, "multilabel: loss study, torch convention")[2:]}
  nine = [100 * v for v in tests[:9]]
  mean, low, high = _t_ci(nine)
  assert rows["softmax + cce"][6] == (f"10 ceiling: 2 modes: 9 at {mean:.2f} [{low:.2f}, "
                                      f"{high:.2f}]; 1 at 76.89")
  median = sorted(100 * v for v in tests)[4:6]
  assert rows["softmax + cce"][7] == f"median {sum(median) / 2:.2f}; 76.89–79.32"
  assert "modes" not in rows["sigmoid + bce"][6]


def test_console_table_puts_the_diagnosis_first_and_never_says_ok(tmp_path):
  from jaxact.study import train
  from jaxact.store import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  wd, _, _ = _collapse_run(tmp_path)
  with open(os.path.join(wd, "results", "multiclass.json"), encoding="utf-8") as f:
    records = json.load(f)["members"]
  results = {"multiclass": [workdir_lib.member_from_record(records_lib.MemberRecord.from_dict(r))
                            for r in records]}
  text = train.format_results_table(results, workdir=wd)
  (line,) = [l for l in text.splitlines() if "sigmoid + bce" in l]
  assert "[10 seeds: 7 healthy, 3 collapsed] valid 7 healthy: " in line
  assert line.endswith("stopping: 10 early-stopped") and " ok" not in line
  bare = train.format_results_table(results)          # no workdir: no diagnosis to show
  assert "[10 seeds: 10 not diagnosed]" in bare and " ok" not in bare
