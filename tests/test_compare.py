"""jaxact.analysis.compare: arms from several runs, paired by seed with the protocol arm."""

import dataclasses
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxact.analysis import compare
from jaxact.model import cells as studies


def _member(head, loss, seed, test, kind, saturated, *, init="torch", hidden="sigmoid"):
  cell = studies.Cell("multiclass", head, loss, init=init, hidden=hidden)
  return {"cell": cell.to_dict(), "key": cell.key, "label": cell.label, "seed": seed,
          "best_valid": test, "test": test, "best_epoch": 1, "epochs_trained": 3,
          "status": "ok", "train_loss": [1.0] * 3, "valid_metric": [test] * 3,
          "diagnostics": {"saturated": [[s] for s in saturated]},
          "diagnosis": {"kind": kind, "evidence": "synthetic"}}


def _write(workdir, members, training_label="", command="python -m jaxact.main ...",
           fingerprint="loop-cpu-a"):
  os.makedirs(os.path.join(workdir, "results"), exist_ok=True)
  with open(os.path.join(workdir, "results", "multiclass.json"), "w") as f:
    json.dump({"task": "multiclass", "metric_name": "accuracy", "higher_is_better": True,
               "command": command, "training": {"label": training_label},
               "numerics": None if fingerprint is None else {"fingerprint": fingerprint},
               "members": members}, f)


@pytest.fixture
def runs(tmp_path):
  protocol = [_member("sigmoid", "bce", s, 0.1135, "collapsed", [0.2, 1.0, 1.0])
              for s in range(6)]
  protocol += [_member("softmax", "cce", s, 0.97 + 0.001 * s, "healthy", [0.0] * 3)
               for s in range(6)]
  prior = [_member("sigmoid", "bce", s, 0.96 + 0.002 * s, "healthy", [0.0] * 3)
           for s in range(5)]
  prior.append(_member("sigmoid", "bce", 5, 0.1135, "collapsed", [0.0, 0.0, 0.7]))
  prior += [_member("softmax", "cce", s, 0.971 + 0.001 * s, "healthy", [0.0] * 3)
            for s in range(6)]
  tanh = [_member("sigmoid", "bce", s, 0.95, "healthy", [0.0] * 3, hidden="tanh")
          for s in range(6)]
  paths = [str(tmp_path / n) for n in ("protocol", "prior", "tanh")]
  _write(paths[0], protocol)
  _write(paths[1], prior, "prior head bias")
  _write(paths[2], tanh)
  return paths


def test_arms_are_runs_and_network_variants(runs):
  arms = compare.load_arms(runs, "multiclass")
  assert [a.label for a in arms] == ["", "prior head bias", "tanh hidden"]
  assert arms[0].is_protocol and not arms[1].is_protocol
  assert set(arms[0].members) == {("sigmoid", "bce", "torch"), ("softmax", "cce", "torch")}
  assert [m.seed for m in arms[1].members[("sigmoid", "bce", "torch")]] == list(range(6))


def test_fc1_saturation_epoch_is_the_first_at_half():
  member = lambda **d: compare.records.MemberRecord(
      cell=studies.Cell("multiclass", "sigmoid", "bce"), diagnostics=d)
  assert compare.fc1_saturation_epoch(member(saturated=[[0.2], [0.5], [1.0]])) == 2
  assert compare.fc1_saturation_epoch(member(saturated=[[0.49], [None]])) is None
  assert compare.fc1_saturation_epoch(member()) is None


def test_arm_statistics_and_the_paired_test(runs):
  arms = compare.load_arms(runs, "multiclass")
  base = arms[0].members[("sigmoid", "bce", "torch")]
  s = compare.arm_cell(arms[1].members[("sigmoid", "bce", "torch")], base)
  assert s.n == 6 and s.rates["collapsed"].estimate == pytest.approx(1 / 6)
  assert s.fc1_saturated == 1 and s.fc1_epochs == [3]
  d = np.array([0.96 + 0.002 * k - 0.1135 for k in range(5)] + [0.0])
  assert s.paired.mean_difference == pytest.approx(d.mean())
  # The exact sign-flip p-value, by enumerating the 2^6 sign vectors here.
  flips = [abs(np.mean(np.array(signs) * d)) >= abs(d.mean()) - 1e-12
           for signs in itertools.product((-1, 1), repeat=6)]
  assert s.paired.p_value == pytest.approx(sum(flips) / 64)
  assert s.paired.n == 6


def test_render_names_every_arm_and_verdict(runs):
  text = compare.render(compare.load_arms(runs, "multiclass"), "multiclass")
  assert "## multiclass: sigmoid + bce" in text and "## multiclass: softmax + cce" in text
  assert "| protocol | 6 | 6 collapsed | 6/6" in text
  assert "| prior head bias | 6 | 5 healthy, 1 collapsed | 1/6" in text
  # The mixed arm's test accuracy is over its 5 healthy members (0.96 + 0.002 k), not all 6.
  assert "| 5 healthy: 96.40 [" in text
  # One family per cell type. sigmoid + bce: prior (5 positive pairs and a zero, p = 4/64)
  # and tanh (6 positive pairs, p = 2/64); Holm: 2 x 2/64 and max(.., 1 x 4/64), both 0.0625.
  assert "| 0.0625 | 0.0625 | 1 | inconclusive |" in text
  # tanh: every difference +83.65 points, no spread, outside the margin: TOST 1.
  assert "| +83.65 [+83.65, +83.65] | 0.0312 | 0.0625 | 1 | inconclusive |" in text
  # softmax + cce: prior alone in its family, every difference +0.1 points: p = 2/64, and
  # inside the margin by TOST (no spread).
  assert "| 0.0312 | 0.0312 | 0 | better (within ±0.50 points) |" in text
  # Collapse rates, Fisher's exact test against the protocol's 6/6: prior 1/6 has the two
  # extreme tables, 2 x C(7, 1) / C(12, 6) = 14/924; tanh 0/6: 2/924. Holm within the
  # sigmoid + bce table: 2/924 x 2, max(.., 14/924 x 1).
  assert f"| 1/6 [3, 56%] | {14 / 924:.3g} ({14 / 924:.3g}) |" in text
  assert f"| 0/6 [0, 39%] | {2 / 924:.3g} ({4 / 924:.3g}) |" in text
  assert "| tanh hidden | 6 |" in text


def test_cli_refuses_pairs_across_programs_unless_asked(runs, tmp_path):
  """Runs whose numerics differ, or are not recorded, are paired only with
  --allow_other_programs, and the report then says so."""
  assert compare.program_mismatch(runs, None) is None
  _write(runs[2], [], fingerprint="vmap-gpu-b")
  assert "fingerprints differ" in compare.program_mismatch(runs, ["multiclass"])
  _write(runs[2], [], fingerprint=None)
  assert "record no numerics fingerprint" in compare.program_mismatch(runs, None)
  assert compare.program_mismatch(runs[:1] * 2, None) is None   # one run: one program
  out = tmp_path / "cmp.md"
  args = [sys.executable, "-m", "jaxact.analysis.compare", f"--workdirs={','.join(runs[:2])},{runs[2]}",
          f"--out={out}"]
  proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "--allow_other_programs" in proc.stderr
  assert "Traceback" not in proc.stderr and not out.exists()
  proc = subprocess.run(args + ["--allow_other_programs"], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert out.read_text().startswith("> **Pairs across programs**")


def test_cli_refuses_a_workdir_without_the_task(runs, tmp_path):
  proc = subprocess.run([sys.executable, "-m", "jaxact.analysis.compare", f"--workdirs={runs[0]}",
                         "--task=binary"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "holds no results of task 'binary'" in proc.stderr
  out = tmp_path / "cmp.md"
  proc = subprocess.run([sys.executable, "-m", "jaxact.analysis.compare", f"--workdirs={','.join(runs)}",
                         f"--out={out}"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert out.read_text().startswith("# Interventions on multiclass: 3 arms")


def _conv_member(head, loss, convention, seed, test, kind="healthy", best_epoch=4):
  cell = studies.Cell("binary", head, loss, convention=convention)
  return {"cell": cell.to_dict(), "key": cell.key, "label": cell.label, "seed": seed,
          "best_valid": test, "test": test, "best_epoch": best_epoch, "epochs_trained": 14,
          "train_loss": [0.5 if loss == "mse" or convention == "torch" else 0.01] * 14,
          "valid_metric": [test] * 14,
          "status": "ok", "diagnosis": {"kind": kind, "evidence": "synthetic"}}


@pytest.fixture
def conventions(tmp_path):
  """A torch run and a logits run of binary: sigmoid + mse trains the same numbers in both,
  sigmoid + cce collapses in the logits convention only, softmax + cce exists in torch only."""
  torch_members, logits_members = [], []
  for s in range(5):
    for head, loss in (("sigmoid", "mse"), ("sigmoid", "cce"), ("softmax", "cce")):
      torch_members.append(_conv_member(head, loss, "torch", s, 0.97 + 0.001 * s))
    logits_members.append(_conv_member("sigmoid", "mse", "logits", s, 0.97 + 0.001 * s))
    logits_members.append(_conv_member("sigmoid", "cce", "logits", s, 0.5 - 0.002 * s,
                                       "collapsed", best_epoch=1))
  paths = []
  for name, members in (("torch", torch_members), ("logits", logits_members)):
    path = tmp_path / name
    os.makedirs(path / "results")
    (path / "results" / "binary.json").write_text(json.dumps(
        {"task": "binary", "metric_name": "accuracy", "higher_is_better": True,
         "command": f"python -m jaxact.main --convention={name}",
         "numerics": {"fingerprint": "loop-cpu-a"}, "members": members}))
    paths.append(str(path))
  return paths


def test_conventions_pair_cells_that_differ_in_the_convention_alone(conventions):
  base, other = (compare.records.load_results(p)["binary"] for p in conventions)
  pairs = compare.pair_conventions(base, other)
  assert [(p.cell.head, p.cell.loss, p.cell.convention) for p in pairs] == [
      ("sigmoid", "mse", "logits"), ("sigmoid", "cce", "logits")]
  same, collapsed = pairs
  assert same.identical == 5 and same.paired.test.mean_difference == 0.0
  assert same.paired.test.p_value == 1.0 and same.paired.p_equivalence == 0.0
  assert collapsed.identical == 0 and collapsed.paired.test.n == 5
  # Equal metrics with another training loss (two runs collapsing to one constant) are not
  # identical training.
  b = base.members[1]
  members = list(other.members)
  members[1] = dataclasses.replace(members[1], test=b.test, best_valid=b.test,
                                   valid_metric=b.valid_metric, best_epoch=b.best_epoch)
  other = dataclasses.replace(other, members=tuple(members))
  assert compare.pair_conventions(base, other)[1].identical == 0
  d = [(0.5 - 0.002 * s) - (0.97 + 0.001 * s) for s in range(5)]
  assert collapsed.paired.test.mean_difference == pytest.approx(np.mean(d))
  assert collapsed.paired.test.p_value == pytest.approx(2 / 32)  # all 5 differences negative
  # One family per task: the two cells' p-values Holm-adjusted together (1 stays 1).
  assert collapsed.paired.p_adjusted == pytest.approx(2 * 2 / 32)
  assert same.paired.p_adjusted == 1.0 and collapsed.paired.family_size == 2
  assert [m.seed for m in collapsed.baseline] == list(range(5))


def test_conventions_report_and_its_errors(conventions, tmp_path):
  text = compare.load_conventions(conventions, None)
  assert text.startswith("# The logits convention against the torch convention")
  assert "| sigmoid + mse | 5 | 5 healthy |" in text and "| 5/5 |" in text
  assert "| equivalent within ±0.50 points | 5/5 |" in text
  assert "| +0.00 [+0.00, +0.00] | 1 | 1 | 0 |" in text
  assert "| sigmoid + cce | 5 | 5 healthy |" in text and "| 5 collapsed |" in text
  assert "| 0/5 |" in text and "softmax + cce" not in text
  assert "--convention=logits" in text
  with pytest.raises(ValueError, match="pairs two runs, got 1"):
    compare.load_conventions(conventions[:1], None)
  with pytest.raises(ValueError, match="task multiclass is not in both runs"):
    compare.load_conventions(conventions, ["multiclass"])
  out = tmp_path / "vs.md"
  proc = subprocess.run([sys.executable, "-m", "jaxact.analysis.compare", "--by=convention",
                         f"--workdirs={','.join(conventions)}", f"--out={out}"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert out.read_text() == text
