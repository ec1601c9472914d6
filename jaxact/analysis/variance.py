"""How much of a cell's spread is the data split's, how much the seed's: a crossed design.

Runs of the same cells with `--split=fixed --split_seed=K` for I split seeds K, each with
the same J seeds, give each cell an I x J table y[i, j] (split i, seed j) of its test
metric. The two-way random-effects model without replication

    y[i, j] = mu + a[i] + b[j] + e[i, j],   a ~ (0, s2_split), b ~ (0, s2_seed), e ~ (0, s2_resid)

is estimated by the method of moments of the two-way ANOVA (Searle, Casella & McCulloch
1992, "Variance Components", section 4.5):

    MS_split = J * sum_i (ybar_i. - ybar..)^2 / (I - 1)
    MS_seed  = I * sum_j (ybar_.j - ybar..)^2 / (J - 1)
    MS_resid = sum_ij (y_ij - ybar_i. - ybar_.j + ybar..)^2 / ((I - 1)(J - 1))
    s2_split = max(0, (MS_split - MS_resid) / J),  s2_seed = max(0, (MS_seed - MS_resid) / I),
    s2_resid = MS_resid

(the residual holds the split x seed interaction: one run per cell of the table). The
intervals of the shares s2_x / (s2_split + s2_seed + s2_resid) come from a two-way
bootstrap that resamples splits and seeds independently with replacement (Owen 2007,
"The pigeonhole bootstrap"), percentile intervals.

  python -m jaxact.variance --task=multiclass \
      --workdirs=experiments/variance_decomposition/multiclass_split0,...split4 \
      --out=experiments/variance_decomposition/multiclass.md

Reads results files only; trains nothing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Sequence

import numpy as np
from absl import app
from absl import flags
from scipy import stats as scipy_stats

from jaxact.store import files
from jaxact.analysis import report as report_lib
from jaxact.store import records


@dataclasses.dataclass(frozen=True)
class Components:
  """The variance components of one I x J table (units: the metric's, squared)."""
  mean: float
  split: float
  seed: float
  resid: float
  n_splits: int
  n_seeds: int

  @property
  def total(self) -> float:
    return self.split + self.seed + self.resid

  def share(self, name: str) -> float:
    """The share of `name` ("split", "seed", "resid") in the total; NaN for a total of 0."""
    return getattr(self, name) / self.total if self.total > 0 else float("nan")


def decompose(y: np.ndarray) -> Components:
  """The method-of-moments components of the crossed table `y` (I splits, J seeds), I, J >= 2."""
  y = np.asarray(y, np.float64)
  i, j = y.shape
  if i < 2 or j < 2 or not np.all(np.isfinite(y)):
    raise ValueError(f"a {i} x {j} table with every value finite is needed (at least 2 x 2)")
  grand = y.mean()
  rows, cols = y.mean(axis=1), y.mean(axis=0)
  ms_split = j * np.sum((rows - grand) ** 2) / (i - 1)
  ms_seed = i * np.sum((cols - grand) ** 2) / (j - 1)
  resid = y - rows[:, None] - cols[None, :] + grand
  ms_resid = np.sum(resid ** 2) / ((i - 1) * (j - 1))
  return Components(mean=float(grand), split=float(max(0.0, (ms_split - ms_resid) / j)),
                    seed=float(max(0.0, (ms_seed - ms_resid) / i)), resid=float(ms_resid),
                    n_splits=i, n_seeds=j)


def bootstrap_shares(y: np.ndarray, n: int = 2000, seed: int = 0, confidence: float = 0.95
                     ) -> dict[str, tuple[float, float]]:
  """Percentile intervals of each share, resampling splits and seeds independently.

  Resamples whose total is 0 are dropped.
  """
  y = np.asarray(y, np.float64)
  rng = np.random.default_rng(seed)
  i, j = y.shape
  draws = {k: [] for k in ("split", "seed", "resid")}
  for _ in range(n):
    rows, cols = rng.integers(0, i, i), rng.integers(0, j, j)
    c = decompose(y[np.ix_(rows, cols)])
    if c.total > 0:
      for k in draws:
        draws[k].append(c.share(k))
  lo, hi = 50 * (1 - confidence), 50 * (1 + confidence)
  return {k: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) if v
          else (float("nan"), float("nan")) for k, v in draws.items()}


def prediction_interval(c: Components, confidence: float = 0.95) -> tuple[float, float]:
  """An approximate interval for one new run on a new split with a new seed:
  mean +- t_{(1+c)/2, (I-1)(J-1)} sqrt(total (1 + 1/(I J)))."""
  dof = max(1, (c.n_splits - 1) * (c.n_seeds - 1))
  half = float(scipy_stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(
      c.total * (1 + 1 / (c.n_splits * c.n_seeds)))
  return c.mean - half, c.mean + half


def load_tables(workdirs: Sequence[str], task: str, field: str = "test"
                ) -> tuple[dict[str, np.ndarray], list[int], list[int], str]:
  """Each cell's (splits x seeds) table of `field` over fixed-split runs `workdirs`.

  Returns (cell label -> table, split seeds, seeds, the first run's study). Cells or seeds
  missing from any run are left out. ValueError: a run that is not a fixed-split run, or
  two runs of the same split.
  """
  by_split: dict[int, records.TaskResults] = {}
  study = ""
  for workdir in workdirs:
    result = records.load_results(workdir).get(task)
    if result is None:
      raise ValueError(f"{workdir!r} holds no results of task {task!r}")
    split = result.split_seed
    if (result.split or "fixed") != "fixed" or split is None:
      raise ValueError(f"{workdir!r} is not a fixed-split run (--split=fixed --split_seed=K)")
    if split in by_split:
      raise ValueError(f"two runs of split seed {split}: give each split once")
    by_split[int(split)] = result
    study = study or str(result.study or "")
  splits = sorted(by_split)
  groups = {s: r.groups() for s, r in by_split.items()}
  cells = [c for c in groups[splits[0]] if all(c in g for g in groups.values())]
  seeds = sorted(set.intersection(*(
      {m.seed for m in groups[s][c]} for s in splits for c in cells))) if cells else []
  tables = {}
  for cell in cells:
    tables[cell.label] = np.array([[next(
        m for m in groups[s][cell] if m.seed == seed).value(field) for seed in seeds]
        for s in splits])
  return tables, splits, seeds, study


def render(workdirs: Sequence[str], task: str, n_boot: int = 2000) -> str:
  """The Markdown report of the decomposition of every cell of `workdirs`' task."""
  tables, splits, seeds, study = load_tables(workdirs, task)
  results = records.load_results(workdirs[0])[task]
  accuracy = bool(results.higher_is_better)
  scale, unit = (100.0, " (accuracy %)") if accuracy else (1.0, " (MSE)")
  originals = {Cell_key: v for (s, Cell_key), v in report_lib.ORIGINAL_NUMBERS.items()
               if s in (study, "loss", "activation")}
  cells = {c.label: c for c in results.groups()}
  lines = [
      f"# Split and seed: the variance of {task}'s test metric, decomposed",
      "",
      f"{len(splits)} splits (split seeds {', '.join(map(str, splits))}) x {len(seeds)} seeds "
      f"({', '.join(map(str, seeds))}), one fixed-split run per split (`python -m "
      f"jaxact.analysis.variance`, method of moments of the two-way random-effects model; shares with "
      f"95% intervals from a two-way bootstrap of {n_boot} resamples; docs/statistics.md). The "
      "residual holds the split x seed interaction. The prediction interval is for one new run "
      "on a new split with a new seed; the original's test value (its source document) is set "
      "against it where it printed one.",
      "",
      f"| cell | mean{unit} | SD, split | SD, seed | SD, residual | split share [95%] | "
      "seed share [95%] | one new run [95%] | original | inside |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for label, y in tables.items():
    if not np.all(np.isfinite(y)):
      lines.append(f"| {label} | non-finite members: not decomposed | | | | | | | | |")
      continue
    c = decompose(y)
    iv = bootstrap_shares(y, n_boot)
    lo, hi = prediction_interval(c)
    original = originals.get(cells[label].key) if label in cells else None
    test = original[1] if original else None
    inside = "" if test is None else ("yes" if lo <= test <= hi else "no")
    sd = lambda v: f"{math.sqrt(v) * scale:.3g}"
    share = lambda k: (f"{c.share(k):.2f} [{iv[k][0]:.2f}, {iv[k][1]:.2f}]"
                       if c.total > 0 else "–")
    lines.append(
        f"| {label} | {c.mean * scale:.4g} | {sd(c.split)} | {sd(c.seed)} | {sd(c.resid)} | "
        f"{share('split')} | {share('seed')} | [{lo * scale:.4g}, {hi * scale:.4g}] | "
        f"{'' if test is None else f'{test * scale:.4g}'} | {inside} |")
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  workdirs, task, out = flags.FLAGS.workdirs, flags.FLAGS.task, flags.FLAGS.out
  if not workdirs or len(workdirs) < 2:
    raise app.UsageError("--workdirs: give two or more fixed-split runs, comma-separated.")
  try:
    text = render(workdirs, task)
  except (FileNotFoundError, ValueError) as err:
    print(f"jaxact.analysis.variance: error: {err}", file=sys.stderr)
    sys.exit(2)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    files.atomic_write(out, lambda f: f.write(text))
    print(f"wrote {out}")
  else:
    print(text)


def run() -> None:
  """`python -m jaxact.variance`."""
  # Defined here, not at import: jaxact.main and jaxact.compare own --task on absl's global
  # flags, and a test process imports them all.
  flags.DEFINE_string("task", "multiclass", "The task to decompose.")
  flags.DEFINE_list("workdirs", None, "The fixed-split runs, one per split seed.")
  flags.DEFINE_string("out", None, "Where to write the Markdown report (default: stdout).")
  app.run(main)


if __name__ == "__main__":
  run()
