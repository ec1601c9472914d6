"""Statistics over seeds: confidence intervals, rates and paired tests for the report.

A cell of a study is trained once per seed; its members' metrics are a small
sample (typically 3 to 10 values), so the report gives intervals and tests that
are valid for small n. All functions take plain numbers on the host and return
floats; NaN marks what cannot be computed (too few values). Non-finite inputs
(NaN, +-inf, None) are dropped before anything is computed.

Formulas (confidence level c, default 0.95):

  Mean with a Student t interval (`mean_interval`), over the n finite values
  x_1..x_n:
      mean = sum(x_i) / n,  s = sqrt(sum((x_i - mean)^2) / (n - 1))   (ddof 1),
      mean +- t_{(1 + c) / 2, n - 1} * s / sqrt(n),
  where t_{q, df} is the q-quantile of Student's t distribution with df
  degrees of freedom (Student 1908). n = 1 has no interval (low = high = NaN).

  Wilson score interval of a proportion (`wilson_interval`), k successes in n
  trials, p = k / n, z = the (1 + c) / 2 quantile of the standard normal:
      (p + z^2 / 2n +- z * sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)
  (Wilson 1927). Unlike the normal ("Wald") interval it stays inside [0, 1] and
  is not empty at k = 0 or k = n: 0 collapsed members out of 10 still allows a
  rate up to 27.8% at 95%.

  Paired comparison of two cells (`paired_test`): member i of cell a and
  member i of cell b share a seed (same initial weights and batch order), so
  the test works on the differences d_i = a_i - b_i of the pairs where both are
  finite. The interval is the t interval of the d_i above. The two-sided
  p-value is
  - for 2^n <= EXACT_MAX_SIGN_VECTORS (n <= 16): the exact sign-flip
    permutation test of the mean difference (Fisher 1935; Pitman 1937): under
    the null hypothesis that each difference is as likely positive as negative,
    all 2^n sign vectors s are equally likely, and
        p = #{s : |mean(s_i d_i)| >= |mean(d_i)|} / 2^n.
    With all n differences of one sign, p = 2 / 2^n: n = 5 seeds can never give
    p below 0.0625, n = 6 gives at best 0.03125.
  - for larger n: the Wilcoxon signed-rank test (Wilcoxon 1945) of the
    differences (zero differences dropped; scipy's exact null distribution for
    n <= 50 without ties, its normal approximation otherwise). It tests
    symmetry about 0 (a median shift), a close but not identical null to the
    sign-flip test's.
  All differences exactly 0 give p = 1.

  Equivalence of two cells (`equivalence_p`): two one-sided t tests (TOST,
  Schuirmann 1987) of the paired differences against a margin m > 0:
      H01: mu <= -m, t1 = (mean(d) + m) / (s_d / sqrt(n)), p1 = 1 - F_{n-1}(t1),
      H02: mu >= +m, t2 = (mean(d) - m) / (s_d / sqrt(n)), p2 = F_{n-1}(t2),
      p = max(p1, p2),
  F_{n-1} the Student t CDF; p < alpha exactly when the (1 - 2 alpha) t
  interval of the mean difference lies inside (-m, +m). With s_d = 0 (every
  difference the same) p is 0 when |mean(d)| < m, else 1.

  Families and Holm's adjustment (`compare_family`): the comparisons a report
  reads together (its declared family: a task's misuses against its
  recommended cells, the arms against the protocol arm, the rows of a claims
  table) get Holm's step-down adjustment (Holm 1979), p_(i) sorted ascending,
      adjusted p_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)),
  (statsmodels.stats.multitest.multipletests, method "holm"), over the m
  comparisons with a p-value, separately for the difference p-values and for
  the equivalence p-values. It controls the family-wise error rate at alpha
  for any dependence between the tests.

  `verdict` turns an adjusted comparison into words: "better" / "worse" (a
  relative to b, by the sign of the mean difference and the metric's
  direction) when the Holm-adjusted p of the difference < alpha; else
  "equivalent within ±m" when the Holm-adjusted TOST p < alpha; else
  "inconclusive". Fewer than 2 pairs are "too few pairs". A difference that
  is significant and also inside the margin reads "better (within ±m)".

  Prediction interval for one new run (`prediction_interval`), from the n
  finite values: mean +- t_{(1 + c) / 2, n - 1} * s * sqrt(1 + 1 / n). It
  covers a single further draw from the same distribution with probability c
  (for normal data), unlike the interval of the mean, which shrinks with n.

  Rates of two cells (`fisher_exact`): the two-sided p-value of Fisher's
  exact test (Fisher 1935) on the 2x2 table [[k1, n1 - k1], [k2, n2 - k2]]
  (scipy.stats.fisher_exact): conditional on the margins, the sum of the
  hypergeometric probabilities of the tables no more likely than the
  observed one.

  Modes of a cell (`split_modes`): the sorted values are split at their
  largest gap when it exceeds MODE_GAP_FACTOR times the pooled within-group
  standard deviation of the two groups it makes (sum of squared deviations
  from each group's mean over n - 2), for at least MODE_MIN_VALUES values;
  each group with at least MODE_MIN_VALUES values is split again by the same
  rule. For n normal values the rule splits by chance in 0.9% of samples at
  n = 8 and 0.2% at n = 10 (`false_mode_rate(n)`: 20,000 samples, seed 0).
  It finds two modes, and more where each split leaves a group whose own
  spread is small against the gap; three equidistant modes stay one (the first
  split's groups hold two modes, whose spread hides the gap).

References:
  Student (1908). The probable error of a mean. Biometrika 6(1), 1-25.
  E. B. Wilson (1927). Probable inference, the law of succession, and
    statistical inference. JASA 22(158), 209-212.
  R. A. Fisher (1935). The Design of Experiments, section 21.
  E. J. G. Pitman (1937). Significance tests which may be applied to samples
    from any populations. JRSS Suppl. 4(1), 119-130.
  F. Wilcoxon (1945). Individual comparisons by ranking methods. Biometrics
    Bulletin 1(6), 80-83.
  S. Holm (1979). A simple sequentially rejective multiple test procedure.
    Scandinavian Journal of Statistics 6(2), 65-70.
  D. J. Schuirmann (1987). A comparison of the two one-sided tests procedure
    and the power approach for assessing the equivalence of average
    bioavailability. J. Pharmacokinetics and Biopharmaceutics 15(6), 657-680.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats import multitest

EXACT_MAX_SIGN_VECTORS = 100_000   # the exact sign-flip test enumerates at most this many
TEST_SIGN_FLIP = "exact sign-flip permutation"
TEST_WILCOXON = "Wilcoxon signed-rank"
TEST_NONE = "none"

_NAN = float("nan")

# Equivalence margins, in the metric's units (accuracy as a fraction, MSE in the targets'
# original units): the TOST's +-m. One fixed number per metric, at least twice the median
# between-seed standard deviation of a healthy cell's test metric on every task of the
# committed 10-seed torch grid (docs/statistics.md gives the measurement and its command).
EQUIVALENCE_MARGIN_ACCURACY = 0.005   # 0.5 accuracy points
EQUIVALENCE_MARGIN_MSE = 0.01
MODE_GAP_FACTOR = 6.0     # a gap between modes exceeds this many pooled within-mode SDs
MODE_MIN_VALUES = 8       # fewer values are never split into modes


@dataclasses.dataclass(frozen=True)
class Interval:
  """An estimate with its confidence interval.

  Attributes:
    estimate: the point estimate (a mean, or a proportion in [0, 1]), in the
      units of the input; NaN when n == 0.
    low: the interval's lower bound (NaN when it cannot be computed).
    high: the interval's upper bound (NaN when it cannot be computed).
    n: the number of values (finite values, or trials) it is computed from.
  """
  estimate: float
  low: float
  high: float
  n: int


@dataclasses.dataclass(frozen=True)
class PairedTest:
  """A paired comparison of two cells, a - b over pairs.

  Attributes:
    n: the number of pairs where both values are finite.
    mean_difference: mean of a_i - b_i over those pairs, in the input's units.
    low: the lower bound of its t interval (NaN for n < 2).
    high: the upper bound of its t interval (NaN for n < 2).
    p_value: the two-sided p-value of `test` (NaN for n == 0).
    test: TEST_SIGN_FLIP, TEST_WILCOXON, or TEST_NONE for n == 0.
  """
  n: int
  mean_difference: float
  low: float
  high: float
  p_value: float
  test: str


def _finite(values: Any) -> np.ndarray:
  """The finite values of `values` (numbers; None and non-numbers count as NaN), float64 (n,)."""
  out = []
  for v in values:
    try:
      out.append(float(v))
    except (TypeError, ValueError):
      out.append(_NAN)
  arr = np.asarray(out, dtype=np.float64).reshape(-1)
  return arr[np.isfinite(arr)]


def _t_interval(x: np.ndarray, confidence: float) -> Interval:
  """Mean of the finite values `x` (n,) with its Student t interval (sample std, ddof 1)."""
  n = int(x.size)
  if n == 0:
    return Interval(_NAN, _NAN, _NAN, 0)
  mean = float(np.mean(x))
  if n == 1:
    return Interval(mean, _NAN, _NAN, 1)
  sd = float(np.std(x, ddof=1))
  half = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)
  return Interval(mean, mean - half, mean + half, n)


def mean_interval(values: Sequence[Any], confidence: float = 0.95) -> Interval:
  """The mean of the finite values with its Student t confidence interval.

  Args:
    values: (n,) numbers, e.g. one metric of a cell's members (one per seed);
      NaN, +-inf and None are dropped.
    confidence: the interval's confidence level, in (0, 1).

  Returns:
    Interval(mean, mean - h, mean + h, n) with h = t_{(1+c)/2, n-1} s / sqrt(n),
    s the sample std (ddof 1), n the number of finite values; in the units of
    `values`. n == 1: low = high = NaN; n == 0: all NaN.
  """
  return _t_interval(_finite(values), confidence)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> Interval:
  """The proportion k / n with its Wilson score confidence interval.

  Args:
    k: the number of successes (e.g. collapsed members), 0 <= k <= n.
    n: the number of trials (members of the cell).
    confidence: the interval's confidence level, in (0, 1).

  Returns:
    Interval(k / n, low, high, n), bounds in [0, 1]; all NaN when n == 0.

  Raises:
    ValueError: k or n negative, or k > n.
  """
  k, n = int(k), int(n)
  if n < 0 or k < 0 or k > n:
    raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
  if n == 0:
    return Interval(_NAN, _NAN, _NAN, 0)
  ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
  return Interval(k / n, float(ci.low), float(ci.high), n)


def _mean_statistic(x: np.ndarray, axis: int) -> np.ndarray:
  return np.mean(x, axis=axis)


def paired_test(a: Sequence[Any], b: Sequence[Any], confidence: float = 0.95) -> PairedTest:
  """Compares two cells pair by pair: the mean of a_i - b_i, its t interval and a p-value.

  Args:
    a: (m,) one metric of cell a's members, in pair order (e.g. by seed).
    b: (m,) the same metric of cell b's members, in the same order; pair i is
      (a[i], b[i]). Pairs where either value is not finite are dropped.
    confidence: the interval's confidence level, in (0, 1).

  Returns:
    The PairedTest, in the metric's units: the exact sign-flip permutation test
    of the mean when 2**n <= EXACT_MAX_SIGN_VECTORS, else the Wilcoxon
    signed-rank test; p = 1.0 when every difference is 0; NaNs (test "none")
    when no pair is finite.

  Raises:
    ValueError: a and b differ in length.
  """
  d = _pairs(a, b)
  n = int(d.size)
  if n == 0:
    return PairedTest(0, _NAN, _NAN, _NAN, _NAN, TEST_NONE)
  interval = _t_interval(d, confidence)
  exact = 2.0 ** n <= EXACT_MAX_SIGN_VECTORS
  test = TEST_SIGN_FLIP if exact else TEST_WILCOXON
  if not np.any(d != 0.0) or n == 1:
    # Every sign vector gives the same |mean| (n == 1), or the data carry no difference.
    p = 1.0
  elif exact:
    res = scipy_stats.permutation_test(
        (d,), _mean_statistic, permutation_type="samples", vectorized=True,
        n_resamples=np.inf, alternative="two-sided")
    p = float(res.pvalue)
  else:
    p = float(scipy_stats.wilcoxon(d, alternative="two-sided").pvalue)
  return PairedTest(n, interval.estimate, interval.low, interval.high, min(p, 1.0), test)


def _as_float(v: Any) -> float:
  try:
    return float(v)
  except (TypeError, ValueError):
    return _NAN


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A paired comparison as one member of a declared family of comparisons.

  Attributes:
    test: the paired test of a - b (`paired_test`).
    margin: the equivalence margin m > 0, in the metric's units.
    p_equivalence: the TOST p-value against +-margin (`equivalence_p`; NaN for n < 2).
    p_adjusted: Holm-adjusted `test.p_value` within the family (NaN where it is NaN).
    p_equivalence_adjusted: Holm-adjusted `p_equivalence` within the family.
    family_size: the number of comparisons of the family with a finite p-value.
  """
  test: PairedTest
  margin: float
  p_equivalence: float
  p_adjusted: float
  p_equivalence_adjusted: float
  family_size: int


def _pairs(a: Sequence[Any], b: Sequence[Any]) -> np.ndarray:
  """The differences a_i - b_i (n,) over the pairs where both are finite."""
  a_arr = np.array([_as_float(v) for v in a], dtype=np.float64).reshape(-1)
  b_arr = np.array([_as_float(v) for v in b], dtype=np.float64).reshape(-1)
  if a_arr.shape != b_arr.shape:
    raise ValueError(f"a paired comparison needs as many values in a as in b, got {a_arr.size} "
                     f"and {b_arr.size}")
  keep = np.isfinite(a_arr) & np.isfinite(b_arr)
  return a_arr[keep] - b_arr[keep]


def equivalence_p(a: Sequence[Any], b: Sequence[Any], margin: float) -> float:
  """The TOST p-value that the mean of a_i - b_i lies inside (-margin, +margin).

  Args:
    a, b: (m,) paired values as for `paired_test`; pairs with a non-finite value are dropped.
    margin: the equivalence margin m > 0, in the values' units.

  Returns:
    max(p1, p2) of the two one-sided t tests (module docstring); NaN for fewer than 2 pairs.

  Raises:
    ValueError: a and b differ in length, or margin is not a positive number.
  """
  if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
    raise ValueError(f"equivalence_p needs a positive finite margin, got {margin!r}")
  d = _pairs(a, b)
  n = int(d.size)
  if n < 2:
    return _NAN
  mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
  if sd == 0.0:
    return 0.0 if abs(mean) < margin else 1.0
  se = sd / math.sqrt(n)
  p_low = float(scipy_stats.t.sf((mean + margin) / se, n - 1))     # H01: mu <= -m
  p_high = float(scipy_stats.t.cdf((mean - margin) / se, n - 1))   # H02: mu >= +m
  return max(p_low, p_high)


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm-adjusted p-values (statsmodels' multipletests, method "holm"), input order.

  Args:
    p_values: (m,) p-values of one family; NaN marks a comparison without a p-value,
      which is left out of the family and stays NaN.

  Returns:
    (m,) adjusted p-values in [0, 1], NaN where the input is not finite.
  """
  p = np.array([_as_float(v) for v in p_values], dtype=np.float64).reshape(-1)
  out = np.full(p.shape, _NAN)
  finite = np.isfinite(p)
  if finite.any():
    out[finite] = multitest.multipletests(np.clip(p[finite], 0.0, 1.0), method="holm")[1]
  return [float(v) for v in out]


def compare_family(pairs: Sequence[tuple[Sequence[Any], Sequence[Any]]], margin: float,
                   confidence: float = 0.95) -> list[Comparison]:
  """Paired tests, TOST and Holm's adjustment over one declared family of comparisons.

  Args:
    pairs: the family's comparisons, each (a, b) as for `paired_test`.
    margin: the equivalence margin, in the values' units (the same for the whole family).
    confidence: the level of the paired tests' intervals.

  Returns:
    One Comparison per pair, in the order given.
  """
  tests = [paired_test(a, b, confidence) for a, b in pairs]
  p_equiv = [equivalence_p(a, b, margin) for a, b in pairs]
  adjusted = holm([t.p_value if t.n >= 2 else _NAN for t in tests])
  adjusted_equiv = holm(p_equiv)
  size = sum(1 for p in adjusted if math.isfinite(p))
  return [Comparison(t, float(margin), pe, pa, pea, size)
          for t, pe, pa, pea in zip(tests, p_equiv, adjusted, adjusted_equiv)]


def verdict(comparison: Comparison, higher_is_better: bool, alpha: float = 0.05,
            margin_text: str | None = None) -> str:
  """A family member's comparison in words, for a relative to b.

  Args:
    comparison: a `compare_family` result.
    higher_is_better: the metric's direction (True for accuracy, False for MSE).
    alpha: the family-wise significance level.
    margin_text: the margin as the table prints it (e.g. "0.50 points"); default `margin:g`.

  Returns:
    "better" / "worse" when the Holm-adjusted p < alpha (with " (within ±m)" added when the
    adjusted TOST p < alpha too), else "equivalent within ±m" when the adjusted TOST p <
    alpha, else "inconclusive"; "too few pairs" when fewer than 2 pairs are finite.
  """
  test = comparison.test
  if test.n < 2:
    return "too few pairs"
  margin = margin_text or f"{comparison.margin:g}"
  equivalent = (math.isfinite(comparison.p_equivalence_adjusted)
                and comparison.p_equivalence_adjusted < alpha)
  if (math.isfinite(comparison.p_adjusted) and comparison.p_adjusted < alpha
      and math.isfinite(test.mean_difference) and test.mean_difference != 0.0):
    word = "better" if (test.mean_difference > 0) == bool(higher_is_better) else "worse"
    return f"{word} (within ±{margin})" if equivalent else word
  return f"equivalent within ±{margin}" if equivalent else "inconclusive"


def prediction_interval(values: Sequence[Any], confidence: float = 0.95) -> Interval:
  """The t prediction interval for one new value from the same distribution as `values`.

  Args:
    values: (n,) numbers, e.g. one metric of a cell's members; NaN, +-inf, None are dropped.
    confidence: the interval's level, in (0, 1).

  Returns:
    Interval(mean, mean - h, mean + h, n) with h = t_{(1+c)/2, n-1} s sqrt(1 + 1/n), s the
    sample std (ddof 1); low = high = NaN for n < 2; all NaN for n == 0.
  """
  x = _finite(values)
  n = int(x.size)
  if n < 2:
    return Interval(float(np.mean(x)) if n else _NAN, _NAN, _NAN, n)
  mean, sd = float(np.mean(x)), float(np.std(x, ddof=1))
  half = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd * math.sqrt(1.0 + 1.0 / n)
  return Interval(mean, mean - half, mean + half, n)


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
  """The two-sided p-value of Fisher's exact test that two rates k1/n1 and k2/n2 are equal.

  Args:
    k1, n1: events and trials of the first cell (e.g. collapsed members and members).
    k2, n2: the same for the second cell.

  Returns:
    The p-value in [0, 1]; NaN when either n is 0.

  Raises:
    ValueError: a count negative, or k > n.
  """
  k1, n1, k2, n2 = int(k1), int(n1), int(k2), int(n2)
  if min(k1, n1, k2, n2) < 0 or k1 > n1 or k2 > n2:
    raise ValueError(f"fisher_exact needs 0 <= k <= n, got {k1}/{n1} and {k2}/{n2}")
  if n1 == 0 or n2 == 0:
    return _NAN
  return float(scipy_stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def _gap_ratio(x: np.ndarray) -> tuple[int, float]:
  """(index of the largest gap of the sorted x, that gap / the pooled within-group SD)."""
  gaps = np.diff(x)
  i = int(np.argmax(gaps))
  low, high = x[:i + 1], x[i + 1:]
  ss = float(np.sum((low - low.mean()) ** 2) + np.sum((high - high.mean()) ** 2))
  sd = math.sqrt(ss / (x.size - 2))
  return i, (math.inf if sd == 0.0 and gaps[i] > 0 else float(gaps[i]) / sd if sd else 0.0)


def split_modes(values: Sequence[Any]) -> list[list[int]]:
  """The modes of a cell's values: groups of indices into `values`, by the gap rule.

  Args:
    values: (n,) numbers; non-finite ones belong to no mode.

  Returns:
    Index lists (into `values`), one per mode, the mode with the most values first (ties: the
    higher values first); one group of every finite value when the rule does not split them
    (fewer than MODE_MIN_VALUES finite values, or no gap larger than MODE_GAP_FACTOR x the
    pooled within-group SD); [] when none is finite.
  """
  x = np.array([_as_float(v) for v in values], dtype=np.float64).reshape(-1)
  order = [int(i) for i in np.argsort(x, kind="stable") if math.isfinite(x[i])]

  def split(idx: list[int]) -> list[list[int]]:
    if len(idx) < MODE_MIN_VALUES:
      return [idx]
    i, ratio = _gap_ratio(x[idx])
    if ratio <= MODE_GAP_FACTOR:
      return [idx]
    return split(idx[:i + 1]) + split(idx[i + 1:])

  if not order:
    return []
  modes = split(order)
  return sorted(modes, key=lambda g: (-len(g), -float(np.mean(x[g]))))


def false_mode_rate(n: int, samples: int = 20_000, seed: int = 0) -> float:
  """The share of `samples` samples of n standard normal values that `split_modes` splits."""
  rng = np.random.default_rng(seed)
  return float(np.mean([len(split_modes(v)) > 1 for v in rng.standard_normal((samples, n))]))
