"""Tests for jaxact.stats against independent values: tables, closed forms, enumeration."""

import itertools
import math
import random
import warnings

import pytest

from jaxact import stats

NAN = float("nan")
Z_975 = 1.959963984540054         # standard normal 0.975 quantile
T_975 = {9: 2.2621571628, 2: 4.3026527297, 4: 2.7764451052}   # Student t 0.975 quantiles (table)


def _mean_sd(xs):
  n = len(xs)
  mean = sum(xs) / n
  return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))


@pytest.mark.parametrize("xs", [
    [97.1, 97.3, 97.2, 97.7, 97.4, 97.5, 97.6, 97.35, 97.45, 97.55],   # df 9
    [1.0, 2.0, 4.0],                                                  # df 2
    [0.5, -0.25, 0.125, 3.0, 1.0],                                    # df 4
])
def test_mean_interval_matches_t_table(xs):
  iv = stats.mean_interval(xs)
  mean, sd = _mean_sd(xs)
  half = T_975[len(xs) - 1] * sd / math.sqrt(len(xs))
  assert iv.n == len(xs)
  assert iv.estimate == pytest.approx(mean, rel=1e-12)
  assert iv.low == pytest.approx(mean - half, rel=1e-9)
  assert iv.high == pytest.approx(mean + half, rel=1e-9)


def test_mean_interval_drops_nonfinite_and_other_confidence():
  iv = stats.mean_interval([1.0, NAN, 2.0, float("inf"), 4.0, None, float("-inf")])
  ref = stats.mean_interval([1.0, 2.0, 4.0])
  assert iv == ref and iv.n == 3
  # 90%: t_{0.95, 2} = 2.9199855804 (table).
  iv90 = stats.mean_interval([1.0, 2.0, 4.0], confidence=0.90)
  mean, sd = _mean_sd([1.0, 2.0, 4.0])
  assert iv90.high == pytest.approx(mean + 2.9199855804 * sd / math.sqrt(3), rel=1e-9)


def test_mean_interval_small_n_without_warnings():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    one = stats.mean_interval([0.97])
    none = stats.mean_interval([NAN, float("inf")])
    empty = stats.mean_interval([])
    same = stats.mean_interval([0.5, 0.5, 0.5])
  assert (one.estimate, one.n) == (0.97, 1) and math.isnan(one.low) and math.isnan(one.high)
  for iv in (none, empty):
    assert iv.n == 0 and all(math.isnan(v) for v in (iv.estimate, iv.low, iv.high))
  assert (same.estimate, same.low, same.high) == (0.5, 0.5, 0.5)


def _wilson_closed_form(k, n, z=Z_975):
  p = k / n
  centre = p + z * z / (2 * n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (1, 3), (7, 20)])
def test_wilson_interval_matches_closed_form(k, n):
  iv = stats.wilson_interval(k, n)
  low, high = _wilson_closed_form(k, n)
  assert iv.estimate == pytest.approx(k / n) and iv.n == n
  assert iv.low == pytest.approx(low, abs=1e-12)
  assert iv.high == pytest.approx(high, abs=1e-12)


def test_wilson_interval_known_values_and_errors():
  # 3/10 at 95%: [0.1078, 0.6032] (e.g. Newcombe 1998, table I style; closed form above).
  iv = stats.wilson_interval(3, 10)
  assert (round(iv.low, 4), round(iv.high, 4)) == (0.1078, 0.6032)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    empty = stats.wilson_interval(0, 0)
  assert empty.n == 0 and math.isnan(empty.estimate) and math.isnan(empty.low)
  for k, n in ((4, 3), (-1, 3), (0, -1)):
    with pytest.raises(ValueError):
      stats.wilson_interval(k, n)


def _brute_force_sign_flip(d):
  """Two-sided exact p of the mean by enumerating all 2^n sign vectors."""
  observed = abs(sum(d) / len(d))
  hits = 0
  for signs in itertools.product((1, -1), repeat=len(d)):
    m = abs(sum(s * x for s, x in zip(signs, d)) / len(d))
    hits += m >= observed - 1e-9 * max(1.0, observed)
  return hits / 2 ** len(d)


def test_sign_flip_all_positive_closed_form():
  t = stats.paired_test([1.1, 2.0, 3.5, 4.0, 5.0], [0.1, 0.2, 0.3, 0.4, 0.5])
  assert t.test == stats.TEST_SIGN_FLIP and t.n == 5
  assert t.p_value == pytest.approx(2 / 32)
  assert stats.paired_test([1.0] * 6, [0.0] * 6).p_value == pytest.approx(2 / 64)


@pytest.mark.parametrize("seed", range(6))
def test_sign_flip_matches_enumeration(seed):
  rng = random.Random(seed)
  n = rng.randint(2, 11)
  a = [rng.gauss(0.3, 1.0) for _ in range(n)]
  b = [rng.gauss(0.0, 1.0) for _ in range(n)]
  if seed == 0:   # ties in |d| and a zero difference
    a, b = [1.0, -1.0, 2.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.5, 0.0]
  t = stats.paired_test(a, b)
  d = [x - y for x, y in zip(a, b)]
  assert t.test == stats.TEST_SIGN_FLIP and t.n == len(d)
  assert t.p_value == pytest.approx(_brute_force_sign_flip(d), abs=1e-12)
  mean, sd = _mean_sd(d)
  assert t.mean_difference == pytest.approx(mean, rel=1e-12, abs=1e-15)
  if len(d) - 1 in T_975:
    assert t.high == pytest.approx(mean + T_975[len(d) - 1] * sd / math.sqrt(len(d)), rel=1e-9)


def test_paired_test_drops_nonfinite_pairs():
  a = [1.0, NAN, 3.0, 4.0, float("inf"), 2.5]
  b = [0.5, 1.0, NAN, 3.0, 1.0, 2.0]
  t = stats.paired_test(a, b)
  d = [0.5, 1.0, 0.5]
  assert t.n == 3 and t.mean_difference == pytest.approx(sum(d) / 3)
  assert t.p_value == pytest.approx(_brute_force_sign_flip(d))   # 2/8
  with pytest.raises(ValueError, match="as many"):
    stats.paired_test([1.0, 2.0], [1.0])


def _wilcoxon_exact_p(d):
  """Two-sided exact Wilcoxon p from the subset-sum count of the null distribution of W+."""
  n = len(d)
  ranks = sorted(range(n), key=lambda i: abs(d[i]))
  w_plus = sum(r + 1 for r, i in enumerate(ranks) if d[i] > 0)
  total = n * (n + 1) // 2
  counts = [1] + [0] * total          # counts[w] = #subsets of {1..n} summing to w
  for r in range(1, n + 1):
    for w in range(total, r - 1, -1):
      counts[w] += counts[w - r]
  below = sum(counts[:w_plus + 1]) / 2 ** n
  above = sum(counts[w_plus:]) / 2 ** n
  return min(1.0, 2 * min(below, above))


def test_wilcoxon_branch_exact_null_by_counting():
  rng = random.Random(7)
  a = [rng.gauss(0.4, 1.0) for _ in range(20)]
  b = [rng.gauss(0.0, 1.0) for _ in range(20)]
  t = stats.paired_test(a, b)
  assert t.test == stats.TEST_WILCOXON and t.n == 20   # 2^20 > 100_000
  assert 0.0 < t.p_value <= 1.0
  assert t.p_value == pytest.approx(_wilcoxon_exact_p([x - y for x, y in zip(a, b)]), rel=1e-9)


def test_wilcoxon_branch_normal_approximation_for_large_n():
  rng = random.Random(3)
  d = [rng.gauss(0.3, 1.0) for _ in range(80)]
  t = stats.paired_test(d, [0.0] * 80)
  n = len(d)
  ranks = sorted(range(n), key=lambda i: abs(d[i]))
  w_plus = sum(r + 1 for r, i in enumerate(ranks) if d[i] > 0)
  z = (w_plus - n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
  assert t.test == stats.TEST_WILCOXON
  assert t.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-6)


def test_all_differences_zero_gives_p_one():
  for n in (3, 20):
    t = stats.paired_test([0.9] * n, [0.9] * n)
    assert t.p_value == 1.0 and t.mean_difference == 0.0 and t.n == n
    assert stats.verdict(t, True) == f"not distinguishable at n = {n}"


def test_verdicts_both_directions():
  up = stats.paired_test([1.0, 1.1, 1.2, 0.9, 1.0, 1.3], [0.0] * 6)     # p = 2/64
  down = stats.paired_test([0.0] * 6, [1.0, 1.1, 1.2, 0.9, 1.0, 1.3])
  assert up.p_value < 0.05 and down.p_value < 0.05
  assert stats.verdict(up, higher_is_better=True) == "better"
  assert stats.verdict(up, higher_is_better=False) == "worse"     # a larger MSE
  assert stats.verdict(down, higher_is_better=True) == "worse"
  assert stats.verdict(down, higher_is_better=False) == "better"
  five = stats.paired_test([1.0] * 5, [0.0] * 5)                    # p = 0.0625
  assert stats.verdict(five, True) == "not distinguishable at n = 5"
  assert stats.verdict(five, True, alpha=0.1) == "better"
  mixed = stats.paired_test([1.0, -1.0, 0.5, -0.4], [0.0] * 4)
  assert stats.verdict(mixed, False) == "not distinguishable at n = 4"


def test_too_few_pairs_without_warnings():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    zero = stats.paired_test([NAN, 1.0], [1.0, NAN])
    one = stats.paired_test([NAN, 1.0], [0.5, 0.25])
    empty = stats.paired_test([], [])
  for t in (zero, empty):
    assert t.n == 0 and t.test == stats.TEST_NONE
    assert all(math.isnan(v) for v in (t.mean_difference, t.low, t.high, t.p_value))
    assert stats.verdict(t, True) == "too few pairs"
  assert one.n == 1 and one.mean_difference == 0.75 and one.p_value == 1.0
  assert math.isnan(one.low) and math.isnan(one.high)
  assert stats.verdict(one, True) == "too few pairs"
