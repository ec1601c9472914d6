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

  `verdict` turns a paired test into words: "better" / "worse" (a relative to
  b, by the sign of the mean difference and the metric's direction) when
  p < alpha, else "not distinguishable at n = N"; fewer than 2 pairs are "too
  few pairs". No correction for multiple comparisons is applied: a report with
  m tests at alpha = 0.05 expects about 0.05 m false "better"/"worse" verdicts
  among the cells that truly do not differ.

References:
  Student (1908). The probable error of a mean. Biometrika 6(1), 1-25.
  E. B. Wilson (1927). Probable inference, the law of succession, and
    statistical inference. JASA 22(158), 209-212.
  R. A. Fisher (1935). The Design of Experiments, section 21.
  E. J. G. Pitman (1937). Significance tests which may be applied to samples
    from any populations. JRSS Suppl. 4(1), 119-130.
  F. Wilcoxon (1945). Individual comparisons by ranking methods. Biometrics
    Bulletin 1(6), 80-83.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from scipy import stats as scipy_stats

EXACT_MAX_SIGN_VECTORS = 100_000   # the exact sign-flip test enumerates at most this many
TEST_SIGN_FLIP = "exact sign-flip permutation"
TEST_WILCOXON = "Wilcoxon signed-rank"
TEST_NONE = "none"

_NAN = float("nan")


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
  a_arr = np.array([_as_float(v) for v in a], dtype=np.float64).reshape(-1)
  b_arr = np.array([_as_float(v) for v in b], dtype=np.float64).reshape(-1)
  if a_arr.shape != b_arr.shape:
    raise ValueError(f"paired_test needs as many values in a as in b, got {a_arr.size} and "
                     f"{b_arr.size}")
  keep = np.isfinite(a_arr) & np.isfinite(b_arr)
  d = a_arr[keep] - b_arr[keep]
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


def verdict(test: PairedTest, higher_is_better: bool, alpha: float = 0.05) -> str:
  """The paired test in words, for a relative to b.

  Args:
    test: a `paired_test(a, b)` result.
    higher_is_better: the metric's direction (True for accuracy, False for MSE).
    alpha: the significance level.

  Returns:
    "better" or "worse" (a relative to b) when p < alpha, by the sign of the
    mean difference; "not distinguishable at n = N" otherwise; "too few pairs"
    when n < 2.
  """
  if test.n < 2:
    return "too few pairs"
  if (math.isfinite(test.p_value) and test.p_value < alpha and math.isfinite(test.mean_difference)
      and test.mean_difference != 0.0):
    return "better" if (test.mean_difference > 0) == bool(higher_is_better) else "worse"
  return f"not distinguishable at n = {test.n}"
