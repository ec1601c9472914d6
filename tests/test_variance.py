"""jaxact.analysis.variance: the split's and the seed's shares of a cell's variance."""

import json
import os

import numpy as np
import pytest

from jaxact.model import cells as studies
from jaxact.analysis import variance


def test_additive_table_gives_the_sample_variances():
  """y = mu + a_i + b_j exactly: the split's component is the sample variance of a, the
  seed's that of b, the residual 0."""
  a = np.array([0.3, -0.1, 0.5, 0.0])
  b = np.array([0.02, -0.04, 0.01, 0.05, -0.03])
  c = variance.decompose(0.9 + a[:, None] + b[None, :])
  assert c.mean == pytest.approx(0.9 + a.mean() + b.mean())
  assert c.split == pytest.approx(np.var(a, ddof=1))
  assert c.seed == pytest.approx(np.var(b, ddof=1))
  assert c.resid == pytest.approx(0.0, abs=1e-15)
  assert c.share("split") + c.share("seed") + c.share("resid") == pytest.approx(1.0)


def test_moments_match_the_anova_by_hand():
  y = np.array([[1.0, 2.0, 4.0], [2.0, 2.0, 5.0]])
  # Row means 7/3, 3; column means 1.5, 2, 4.5; grand 8/3.
  ms_split = 3 * ((7 / 3 - 8 / 3) ** 2 + (3 - 8 / 3) ** 2) / 1
  ms_seed = 2 * ((1.5 - 8 / 3) ** 2 + (2 - 8 / 3) ** 2 + (4.5 - 8 / 3) ** 2) / 2
  resid = y - np.array([[7 / 3], [3]]) - np.array([[1.5, 2, 4.5]]) + 8 / 3
  ms_resid = np.sum(resid ** 2) / 2
  c = variance.decompose(y)
  assert c.resid == pytest.approx(ms_resid)
  assert c.split == pytest.approx(max(0.0, (ms_split - ms_resid) / 3))
  assert c.seed == pytest.approx((ms_seed - ms_resid) / 2)


def test_bootstrap_brackets_a_dominant_split_effect():
  rng = np.random.default_rng(1)
  y = 5.0 * rng.normal(size=(5, 1)) + 0.1 * rng.normal(size=(5, 5))
  c = variance.decompose(y)
  iv = variance.bootstrap_shares(y, n=300)
  assert c.share("split") > 0.9
  assert iv["split"][0] <= c.share("split") <= iv["split"][1]
  assert iv["seed"][1] < 0.2
  lo, hi = variance.prediction_interval(c)
  assert lo < c.mean < hi


def test_needs_a_finite_table_of_two_by_two():
  with pytest.raises(ValueError, match="at least 2 x 2"):
    variance.decompose(np.ones((1, 5)))
  with pytest.raises(ValueError, match="finite"):
    variance.decompose(np.array([[1.0, np.nan], [1.0, 2.0]]))


def _run(path, split, tests, split_mode="fixed"):
  cell = studies.Cell("multiclass", "softmax", "cce")
  members = [{"cell": cell.to_dict(), "key": cell.key, "label": cell.label, "seed": s,
              "best_valid": t, "test": t, "status": "ok",
              "diagnosis": {"kind": "healthy", "evidence": "synthetic"}}
             for s, t in enumerate(tests)]
  os.makedirs(path / "results")
  (path / "results" / "multiclass.json").write_text(json.dumps(
      {"task": "multiclass", "study": "loss", "higher_is_better": True, "split": split_mode,
       "split_seed": split if split_mode == "fixed" else None, "members": members}))
  return str(path)


def test_report_reads_one_fixed_split_run_per_split(tmp_path):
  runs = [_run(tmp_path / f"s{k}", k, [0.97 + 0.002 * k + 0.001 * s for s in range(3)])
          for k in range(3)]
  tables, splits, seeds, _ = variance.load_tables(runs, "multiclass")
  assert splits == [0, 1, 2] and seeds == [0, 1, 2]
  np.testing.assert_allclose(tables["softmax + cce"][1], [0.972, 0.973, 0.974])
  text = variance.render(runs, "multiclass", n_boot=50)
  assert "| softmax + cce | 97.3 |" in text
  assert "97.57" in text          # the loss study's printed test accuracy of that cell
  other = _run(tmp_path / "per_seed", 0, [0.97] * 3, split_mode="per_seed")
  with pytest.raises(ValueError, match="not a fixed-split run"):
    variance.load_tables(runs[:1] + [other], "multiclass")
  with pytest.raises(ValueError, match="two runs of split seed 0"):
    variance.load_tables(runs[:1] * 2, "multiclass")
