"""Tests for jaxact.analysis.stats against independent values: tables, closed forms, enumeration."""

import itertools
import math
import random
import warnings

import pytest

from jaxact.analysis import stats

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
    (c,) = stats.compare_family([([0.9] * n, [0.9] * n)], margin=0.01)
    assert c.p_equivalence == 0.0                     # no spread, inside the margin
    assert stats.verdict(c, True) == "equivalent within ±0.01"


def _one(a, b, margin=0.5, alpha=0.05):
  """The verdict of a family of one comparison, a against b."""
  return stats.compare_family([(a, b)], margin)[0]


def test_verdicts_both_directions():
  up_a = [1.0, 1.1, 1.2, 0.9, 1.0, 1.3]
  up = _one(up_a, [0.0] * 6)                       # p = 2/64, far outside +-0.5
  down = _one([0.0] * 6, up_a)
  assert up.test.p_value < 0.05 and up.p_adjusted == up.test.p_value   # a family of one
  assert stats.verdict(up, higher_is_better=True) == "better"
  assert stats.verdict(up, higher_is_better=False) == "worse"     # a larger MSE
  assert stats.verdict(down, higher_is_better=True) == "worse"
  assert stats.verdict(down, higher_is_better=False) == "better"
  five = _one([1.0, 1.0, 1.0, 1.0, 1.1], [0.0] * 5)                 # p = 0.0625
  assert stats.verdict(five, True) == "inconclusive"
  assert stats.verdict(five, True, alpha=0.1) == "better"
  mixed = _one([1.0, -1.0, 0.5, -0.4], [0.0] * 4)
  assert stats.verdict(mixed, False) == "inconclusive"
  small = _one([0.1, 0.11, 0.12, 0.09, 0.1, 0.13], [0.0] * 6)     # significant, and inside +-0.5
  assert stats.verdict(small, True, margin_text="0.50 points") == "better (within ±0.50 points)"


def test_holm_on_a_known_p_vector():
  # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> max 0.06.
  assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  out = stats.holm([0.01, NAN, 0.04])                 # NaN is outside the family (m = 2)
  assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
  assert stats.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])   # capped at 1
  assert stats.holm([]) == []


def _t3_cdf(t):
  """Student t CDF with 3 degrees of freedom, closed form."""
  u = t / math.sqrt(3)
  return 0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi


def test_tost_against_a_hand_computed_case():
  d = [0.1, 0.2, 0.3, 0.4]                     # mean 0.25, sd sqrt(1/60), n 4, df 3
  se = math.sqrt(1 / 60) / 2
  p_low = 1 - _t3_cdf((0.25 + 0.5) / se)       # H01: mu <= -0.5
  p_high = _t3_cdf((0.25 - 0.5) / se)          # H02: mu >= +0.5
  p = stats.equivalence_p(d, [0.0] * 4, margin=0.5)
  assert p == pytest.approx(max(p_low, p_high), rel=1e-9) and p == pytest.approx(p_high)
  assert 0.01 < p < 0.05                       # the 90% interval [0.10, 0.40] is inside +-0.5
  # A margin of 0.3: t2 = (0.25 - 0.3) / se, the mean is too close to the margin.
  assert stats.equivalence_p(d, [0.0] * 4, margin=0.3) == pytest.approx(_t3_cdf(-0.05 / se))
  assert stats.equivalence_p([0.1, NAN, 0.2, 0.3, 0.4], [0.0, 1.0, 0.0, 0.0, 0.0], 0.5) == p
  assert math.isnan(stats.equivalence_p([1.0], [0.0], 0.5))
  assert stats.equivalence_p([1.0, 1.0], [0.0, 0.0], 0.5) == 1.0   # constant 1, outside
  with pytest.raises(ValueError, match="positive finite margin"):
    stats.equivalence_p(d, d, 0.0)


def test_family_adjusts_differences_and_equivalences_apart():
  rng = random.Random(5)
  base = [rng.gauss(97.0, 0.2) for _ in range(10)]
  same = [b + rng.gauss(0.0, 0.05) for b in base]
  worse = [b - 1.0 + rng.gauss(0.0, 0.05) for b in base]
  noisy = [b + rng.gauss(0.0, 1.0) for b in base]
  fam = stats.compare_family([(same, base), (worse, base), (noisy, base), ([NAN] * 10, base)],
                             margin=0.5)
  raw = [c.test.p_value for c in fam[:3]]
  assert [c.p_adjusted for c in fam[:3]] == pytest.approx(stats.holm(raw))
  assert [c.p_equivalence_adjusted for c in fam[:3]] == pytest.approx(
      stats.holm([c.p_equivalence for c in fam[:3]]))
  assert all(c.family_size == 3 for c in fam)
  words = [stats.verdict(c, True, margin_text="0.5") for c in fam]
  assert words == ["equivalent within ±0.5", "worse", "inconclusive", "too few pairs"]


def test_prediction_interval_formula():
  xs = [97.1, 97.3, 97.2, 97.7, 97.4, 97.5, 97.6, 97.35, 97.45, 97.55]
  mean, sd = _mean_sd(xs)
  half = T_975[9] * sd * math.sqrt(1 + 1 / 10)
  iv = stats.prediction_interval(xs + [NAN])
  assert iv.n == 10 and iv.estimate == pytest.approx(mean)
  assert (iv.low, iv.high) == pytest.approx((mean - half, mean + half), rel=1e-9)
  ci = stats.mean_interval(xs)
  assert iv.high - iv.low == pytest.approx((ci.high - ci.low) * math.sqrt(11), rel=1e-9)
  one = stats.prediction_interval([0.5])
  assert one.n == 1 and math.isnan(one.low) and math.isnan(one.high)


def test_fisher_against_known_tables():
  # Lady tasting tea, [[3, 1], [1, 3]]: (1 + 16 + 16 + 1) / 70 over the tables no likelier.
  assert stats.fisher_exact(3, 4, 1, 4) == pytest.approx(34 / 70, rel=1e-9)
  # 10/10 against 4/10: the two extreme tables, each C(14, 10) C(6, 0) / C(20, 10).
  assert stats.fisher_exact(10, 10, 4, 10) == pytest.approx(
      2 * math.comb(14, 10) / math.comb(20, 10), rel=1e-9)
  assert stats.fisher_exact(5, 10, 5, 10) == 1.0
  assert math.isnan(stats.fisher_exact(0, 0, 1, 3))
  with pytest.raises(ValueError, match="0 <= k <= n"):
    stats.fisher_exact(4, 3, 1, 3)


def test_modes_on_synthetic_data():
  nine_and_one = [78.8, 78.47, 78.55, 78.66, 76.89, 78.71, 78.87, 78.92, 79.02, 79.32]
  assert stats.split_modes(nine_and_one) == [[1, 2, 3, 5, 0, 6, 7, 8, 9], [4]]
  # Modes near 0 (8 values), 10 and 100 (4 each): the largest gap (10 to 100) splits first,
  # then the 12 values below it split at 0 to 10; largest mode first.
  three = [0.0, 0.1, 0.2, 0.15, 0.05, 0.12, 0.08, 0.03, 10.0, 10.1, 9.9, 10.05, 100.0, 100.2,
           99.9, 100.1]
  modes = stats.split_modes(three)
  assert [min(three[i] for i in g) for g in modes] == [0.0, 99.9, 9.9]
  assert [len(g) for g in modes] == [8, 4, 4]
  # Three equidistant modes stay one: each first split leaves two modes in one group, whose
  # spread hides the gap (the rule's documented limit).
  equidistant = [1.0, 1.1, 0.9, 1.05, 5.0, 5.1, 4.9, 5.05, 9.0, 9.1, 8.9, 9.05]
  assert len(stats.split_modes(equidistant)) == 1
  rng = random.Random(11)
  normal = [rng.gauss(97.0, 0.2) for _ in range(10)]
  assert stats.split_modes(normal) == [sorted(range(10), key=lambda i: normal[i])]
  few = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 9.0]               # 7 values: never split
  assert len(stats.split_modes(few)) == 1
  exact = [11.35] * 8 + [9.8, 9.8]                        # no spread inside either mode
  assert [len(g) for g in stats.split_modes(exact)] == [8, 2]
  assert stats.split_modes([NAN, None]) == []
  assert stats.split_modes([5.0] * 10) == [list(range(10))]


def test_modes_rarely_split_normal_samples():
  assert stats.false_mode_rate(10, samples=2000, seed=1) < 0.01


def test_too_few_pairs_without_warnings():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    zero = stats.paired_test([NAN, 1.0], [1.0, NAN])
    one = stats.paired_test([NAN, 1.0], [0.5, 0.25])
    empty = stats.paired_test([], [])
    fam = stats.compare_family([([NAN, 1.0], [1.0, NAN]), ([NAN, 1.0], [0.5, 0.25])], 0.5)
  for t in (zero, empty):
    assert t.n == 0 and t.test == stats.TEST_NONE
    assert all(math.isnan(v) for v in (t.mean_difference, t.low, t.high, t.p_value))
  assert one.n == 1 and one.mean_difference == 0.75 and one.p_value == 1.0
  assert math.isnan(one.low) and math.isnan(one.high)
  assert [stats.verdict(c, True) for c in fam] == ["too few pairs", "too few pairs"]
  assert fam[1].family_size == 0 and math.isnan(fam[1].p_adjusted)
