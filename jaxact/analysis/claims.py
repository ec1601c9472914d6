"""The hidden-layer study's claims about hidden activations, checked against a hidden-study run.

Each claim gets the measurement that tests it, from the members' results and
in-program diagnostics (`engine.Engine.diagnostic_shapes`), and a verdict.
Claims about accuracy compare two cells member by member: members with the same
seed share initial weights and batch order, so each comparison is a paired test
of the test-accuracy differences (`jaxact.analysis.stats.paired_test`: mean difference
in points with its 95% t interval, two-sided p of an exact sign-flip
permutation test, Wilcoxon signed-rank above 16 pairs). Every paired test of one
claims table is one declared family: its p-values are Holm-adjusted together, and so
are the p-values of the equivalence tests (TOST within +-MARGIN_POINTS). A
difference counts when its adjusted p < ALPHA; a claim resting on one comparison
is "held" / "not held" when the test finds the claimed / the opposite
direction, "not held: equivalent within ..." when the adjusted TOST p < ALPHA,
else "inconclusive" (or "too few pairs"). Cells without a seed in common are not
compared. Plain Python on the results records (jaxact.store.records); the report calls it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from jaxact.store import records
from jaxact.analysis import stats
from jaxact.model import cells as studies
from jaxact.model.cells import Cell

MemberRecord = records.MemberRecord
Members = list[MemberRecord]   # a cell's members

ALPHA = 0.05              # family-wise significance level of the paired tests
MARGIN_POINTS = 100 * stats.EQUIVALENCE_MARGIN_ACCURACY   # equivalence margin, accuracy points
MARGIN_TEXT = f"{MARGIN_POINTS:.2f} points"
VANISHING_DROP = 100.0    # the gradient ratio shrinks at least this much from depth 1 to the deepest
RELU_FAMILY = ("relu", "leaky_relu", "elu", "gelu", "silu", "mish")


@dataclasses.dataclass(frozen=True)
class Claim:
  claim: str
  measurement: str
  verdict: str


def _find(groups: dict[Cell, Members], **fields) -> list[MemberRecord]:
  """The members of the multiclass softmax + cce cell with these network fields ([] if absent).

  `groups` holds one loss convention's cells (`hidden_claims` splits them).
  """
  want = dict(dict(init="torch", hidden="sigmoid", batch_norm=False, depth=1), **fields)
  for cell, members in groups.items():
    if (cell.task == "multiclass" and cell.head == "softmax" and cell.loss == "cce"
        and all(getattr(cell, k) == v for k, v in want.items())):
      return members
  return []


def _test_points(members: Members) -> list[float]:
  """The members' finite test accuracies, in %."""
  return [v for v in map(_points, members) if math.isfinite(v)]


def _acc(members: Members) -> str:
  """'98.05% [97.41, 98.69]': mean test accuracy over seeds with its 95% t interval."""
  iv = stats.mean_interval(_test_points(members))
  if iv.n == 0:
    return "n/a"
  if iv.n == 1:
    return f"{iv.estimate:.2f}% (1 seed)"
  return f"{iv.estimate:.2f}% [{iv.low:.2f}, {iv.high:.2f}]"


def _ratio_at_init(members: Members, layer: str = "hidden1") -> float:
  """Median over seeds of ||grad layer|| / ||grad out|| on the first batch at initialisation."""
  out = []
  for m in members:
    d = m.diagnostics
    names, first = d.get("layers"), d.get("grad_norm_first")
    if not names or not first or not first[0] or layer not in names:
      continue
    g = first[0]
    if g[names.index(layer)] is not None and g[-1]:
      out.append(g[names.index(layer)] / g[-1])
  return float(np.median(out)) if out else math.nan


def _dead(members: Members) -> float:
  """Mean over seeds of the largest dead-unit fraction over hidden layers, at the best epoch."""
  out = []
  for m in members:
    d = m.diagnostics.get("dead")
    e = m.best_epoch
    if d and e is not None and 0 <= e < len(d) and d[e]:
      out.append(max(x for x in d[e] if x is not None))
  return float(np.mean(out)) if out else math.nan


def by_seed(members: Members) -> dict[Any, MemberRecord]:
  """seed -> member, for the members that record a seed (the first of a repeated seed)."""
  out: dict[Any, MemberRecord] = {}
  for m in members:
    if m.seed is not None:
      out.setdefault(m.seed, m)
  return out


class _Family:
  """The paired comparisons of one claims table, Holm-adjusted together.

  The claims are computed twice: the first pass (`adjusted` None) records every pair of
  test accuracies in the order the claims compare them and returns a comparison adjusted
  alone; `hidden_claims` then adjusts the recorded family and the second pass returns, in
  the same order, the adjusted comparisons.
  """

  def __init__(self, adjusted: list[stats.Comparison] | None = None):
    self.pairs: list[tuple[list[float], list[float]]] = []
    self.adjusted = adjusted

  def compare(self, a: Members, b: Members) -> stats.Comparison:
    """Test accuracy a - b in points over the seeds both cells have, as a family member."""
    sa, sb = by_seed(a), by_seed(b)
    seeds = [s for s in sa if s in sb]
    pair = ([_points(sa[s]) for s in seeds], [_points(sb[s]) for s in seeds])
    k = len(self.pairs)
    self.pairs.append(pair)
    if self.adjusted is None:
      return stats.compare_family([pair], MARGIN_POINTS)[0]
    return self.adjusted[k]


def _points(member: MemberRecord) -> float:
  """The member's test accuracy in %, NaN if missing or not a number."""
  return 100 * member.value("test")


def _short_test(test: str) -> str:
  return {stats.TEST_SIGN_FLIP: "exact sign-flip", stats.TEST_WILCOXON: "Wilcoxon"}.get(test, test)


def _p_text(p: float) -> str:
  return "n/a" if math.isnan(p) else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _diff_text(c: stats.Comparison) -> str:
  """'difference +1.00 points [+0.95, +1.05], p = 0.031, Holm 0.25 (exact sign-flip, 6 pairs)'."""
  t = c.test
  if t.n == 0:
    return "no seed with a finite test accuracy in both cells"
  ci = "" if t.n < 2 else f" [{t.low:+.2f}, {t.high:+.2f}]"
  return (f"difference {t.mean_difference:+.2f} points{ci}, p = {_p_text(t.p_value)}, Holm "
          f"{_p_text(c.p_adjusted)} ({_short_test(t.test)}, {t.n} "
          f"{'pair' if t.n == 1 else 'pairs'})")


def _words(c: stats.Comparison, want_positive: bool = True) -> str:
  return stats.verdict(c, higher_is_better=want_positive, alpha=ALPHA, margin_text=MARGIN_TEXT)


def _verdict(tests: list[stats.Comparison], want_positive: bool = True) -> str:
  """The claim's verdict from its paired tests; want_positive: the claim says a - b > 0."""
  measured = [t for t in tests if t.test.n >= 2]
  if not measured:
    return "not tested (fewer than 2 seeds in both cells)"
  words = [_words(t, want_positive) for t in measured]
  if len(tests) == 1:
    w = words[0]
    if w.startswith("better"):
      return "held"
    if w.startswith("worse"):
      return "not held"
    return f"not held: {w}" if w.startswith("equivalent") else w
  clear = [w for w in words if w.startswith(("better", "worse"))]
  equivalent = sum(1 for w in words if w.startswith("equivalent"))
  if not clear:
    if equivalent == len(words):
      return f"not held: equivalent within ±{MARGIN_TEXT} in all {len(words)}"
    return (f"inconclusive (no Holm-adjusted p < {ALPHA:g}; equivalent within ±{MARGIN_TEXT} "
            f"in {equivalent} of {len(words)})")
  good = sum(1 for w in clear if w.startswith("better"))
  if good == len(clear):
    return "held"
  if not good:
    return "not held"
  return f"mixed ({good} of {len(clear)} clear differences agree)"


def _direction_counts(tests: list[stats.Comparison]) -> tuple[int, int, int, int]:
  """(significantly above, significantly below, equivalent, inconclusive) over the tests
  (Holm-adjusted in the table's family)."""
  words = [_words(t) for t in tests]
  up = sum(1 for w in words if w.startswith("better"))
  down = sum(1 for w in words if w.startswith("worse"))
  same = sum(1 for w in words if w.startswith("equivalent"))
  return up, down, same, len(words) - up - down - same


def depth_sweep(groups: dict[Cell, Members]) -> dict[tuple[str, str], dict[int, Members]]:
  """(hidden, init) -> depth -> members, for the depth sweep's cells (no batch norm) with >1 depth.

  `groups` must hold one loss convention (see `by_convention`): the two conventions'
  cells of the same network would otherwise land on the same key.
  """
  conventions = {c.convention for c in groups}
  if len(conventions) > 1:
    raise ValueError(f"depth_sweep takes the cells of one convention, got {sorted(conventions)}")
  sweep: dict[tuple[str, str], dict[int, Members]] = {}
  for cell, members in groups.items():
    if cell.task == "multiclass" and cell.head == "softmax" and not cell.batch_norm:
      sweep.setdefault((cell.hidden, cell.init), {})[cell.depth] = members
  return {k: dict(sorted(v.items())) for k, v in sweep.items() if len(v) > 1}


def by_convention(groups: dict[Cell, Members]) -> dict[str, dict[Cell, Members]]:
  """convention -> that convention's cells, in order of first appearance."""
  out: dict[str, dict[Cell, Members]] = {}
  for cell, members in groups.items():
    out.setdefault(cell.convention, {})[cell] = members
  return out


def hidden_claims(groups: dict[Cell, Members], result: records.TaskResults | None = None
                  ) -> list[Claim]:
  """The claims that the run's cells can test (none for a run without hidden-study cells).

  Each loss convention's cells are measured on their own: the torch convention's softmax +
  cce is the original's double softmax, which changes what the claims measure (READING.md,
  He init). With both conventions in the run, each claim is made once per convention and
  its text names it ("[logits] ...").
  """
  del result
  first = _Family()
  _claims(groups, first)
  family = _Family(stats.compare_family(first.pairs, MARGIN_POINTS))
  return _claims(groups, family)


def _claims(groups: dict[Cell, Members], family: _Family) -> list[Claim]:
  per_convention = by_convention(groups)
  if len(per_convention) <= 1:
    return _claims_of_one_convention(groups, family)
  return [dataclasses.replace(claim, claim=f"[{conv}] {claim.claim}")
          for conv, conv_groups in per_convention.items()
          for claim in _claims_of_one_convention(conv_groups, family)]


def _claims_of_one_convention(groups: dict[Cell, Members], family: _Family
                              ) -> list[Claim]:
  """The claims of one loss convention's cells, in the order of the table."""
  return (_vanishing_claims(groups) + _dying_relu_claims(groups, family)
          + _init_claims(groups, family) + _batch_norm_claims(groups, family))


def _vanishing_claims(groups: dict[Cell, Members]) -> list[Claim]:
  """1. Vanishing gradients with depth: per activation and init with a depth sweep."""
  claims = []
  sweep = depth_sweep(groups)
  for h in ("sigmoid", "tanh") + RELU_FAMILY:
    for init in dict.fromkeys(("torch", studies.matched_init(h))):
      by_depth = sweep.get((h, init))
      if not by_depth:
        continue
      d0, d1 = min(by_depth), max(by_depth)
      r0, r1 = _ratio_at_init(by_depth[d0]), _ratio_at_init(by_depth[d1])
      drop = r0 / r1 if r1 > 0 else math.inf
      saturating = h in ("sigmoid", "tanh")
      claim = (f"{h} hidden layers make the gradient vanish as depth grows" if saturating else
               f"{h} avoids the vanishing gradient as depth grows")
      meas = (f"{init} init: at initialisation, gradient norm of hidden layer 1 / output layer "
              f"{r0:.2g} at depth {d0}, {r1:.2g} at depth {d1} ({drop:.3g}x smaller); test "
              f"accuracy {_acc(by_depth[d0])} at depth {d0}, {_acc(by_depth[d1])} at depth {d1}")
      if math.isnan(drop):
        verdict = "not measured"
      elif saturating:
        verdict = "held" if drop >= VANISHING_DROP else "not held"
      else:
        verdict = "held" if drop < VANISHING_DROP else "not held"
      claims.append(Claim(claim, meas, verdict))
  return claims


def _dying_relu_claims(groups: dict[Cell, Members], family: _Family
                       ) -> list[Claim]:
  """2. Dying ReLU (the largest dead fraction), and its fixes paired against ReLU."""
  relu_cells = [(c, ms) for c, ms in groups.items() if c.hidden == "relu"]
  if not relu_cells:
    return []
  worst = max(relu_cells, key=lambda cm: -1 if math.isnan(_dead(cm[1])) else _dead(cm[1]))
  frac = _dead(worst[1])
  claims = [Claim("ReLU units can die (output 0 for every input)",
                  f"largest mean dead fraction of a hidden layer at the best epoch: {frac:.1%} "
                  f"({worst[0].network_label}); a unit is dead when its derivative is 0 on "
                  "every valid example", "held" if frac > 0 else "not held")]
  fixes, dead_fracs = [], []
  for h in RELU_FAMILY[1:]:
    cells = [(c, ms) for c, ms in groups.items() if c.hidden == h]
    if not cells:
      continue
    dead = max((_dead(ms) for _, ms in cells if not math.isnan(_dead(ms))), default=math.nan)
    pairs = [family.compare(ms, _find(groups, init=c.init, hidden="relu", batch_norm=c.batch_norm,
                                depth=c.depth)) for c, ms in cells
             if _find(groups, init=c.init, hidden="relu", batch_norm=c.batch_norm,
                      depth=c.depth)]
    dead_fracs.append(dead)
    better, worse, same, neither = _direction_counts(pairs)
    fixes.append(f"{h}: dead {dead:.1%}, test accuracy above ReLU's (Holm-adjusted paired p "
                 f"< {ALPHA:g}) in {better}, below in {worse}, equivalent within "
                 f"±{MARGIN_TEXT} in {same}, inconclusive in {neither} of {len(pairs)} "
                 "configurations")
  if fixes:
    measured = [d for d in dead_fracs if not math.isnan(d)]
    claims.append(Claim("Leaky ReLU / ELU / GELU / SiLU / Mish fix dying ReLU", "; ".join(fixes),
                        "not measured" if not measured else
                        "held (no dead units)" if max(measured) == 0
                        else "not held (some units dead)"))
  return claims


def _init_claims(groups: dict[Cell, Members], family: _Family) -> list[Claim]:
  """3. Initialisation matched to the activation, against the other one (depth 1, with and
  without batch norm) and against torch's (the depth sweep)."""
  claims = []
  sweep = depth_sweep(groups)
  for h in ("sigmoid", "tanh") + RELU_FAMILY:
    good, bad = studies.matched_init(h), ("he" if studies.matched_init(h) == "xavier" else "xavier")
    diffs, parts = [], []
    for bn in (False, True):
      a, b = _find(groups, init=good, hidden=h, batch_norm=bn), _find(groups, init=bad, hidden=h,
                                                                      batch_norm=bn)
      if a and b:
        diffs.append(family.compare(a, b))
        parts.append(f"depth 1{' + batch norm' if bn else ''}: {good} {_acc(a)} vs {bad} "
                     f"{_acc(b)}, {_diff_text(diffs[-1])}")
    by_depth = sweep.get((h, good)), sweep.get((h, "torch"))
    if by_depth[0] and by_depth[1]:
      for d in sorted(set(by_depth[0]) & set(by_depth[1])):
        if d > 1:
          diffs.append(family.compare(by_depth[0][d], by_depth[1][d]))
          parts.append(f"depth {d}: {good} {_acc(by_depth[0][d])} vs torch "
                       f"{_acc(by_depth[1][d])}, {_diff_text(diffs[-1])}")
    if parts:
      claims.append(Claim(f"{good.capitalize()} initialisation suits {h}", "; ".join(parts),
                          _verdict(diffs)))
  return claims


def _batch_norm_claims(groups: dict[Cell, Members], family: _Family) -> list[Claim]:
  """4. Batch norm helps: on against off, per (activation, init) at depth 1."""
  diffs = []
  for h in ("sigmoid", "tanh") + RELU_FAMILY:
    for init in ("he", "xavier", "torch"):
      on, off = _find(groups, init=init, hidden=h, batch_norm=True), _find(
          groups, init=init, hidden=h, batch_norm=False)
      if on and off:
        diffs.append(family.compare(on, off))
  if not diffs:
    return []
  up, down, same, neither = _direction_counts(diffs)
  measured = [t.test for t in diffs if t.test.n > 0]
  mean = (f"mean of the paired mean differences "
          f"{np.mean([t.mean_difference for t in measured]):+.2f} points" if measured
          else "no pair of cells with a seed in common")
  return [Claim(
      "Batch norm helps",
      f"depth 1, batch norm on - off, test accuracy paired by seed: {mean} over "
      f"{len(diffs)} (activation, init) pairs of cells; significantly better (Holm-adjusted "
      f"paired p < {ALPHA:g}) in {up}, significantly worse in {down}, equivalent within "
      f"±{MARGIN_TEXT} in {same}, inconclusive in {neither}",
      _verdict(diffs))]


def render(claims: list[Claim]) -> list[str]:
  """The claims as a Markdown table (under a heading)."""
  esc: Callable[[str], str] = lambda t: " ".join(str(t).split()).replace("|", "\\|")
  lines = ["### Claims of the hidden-layer study, measured", "",
           "Verdicts: accuracies are the mean test accuracy over seeds [95% t interval]. Two "
           "cells are compared seed by seed (same seed: same initial weights and batch order): "
           "the mean of the paired differences in points [95% t interval] and the two-sided p "
           "of an exact sign-flip permutation test of that mean (Wilcoxon signed-rank above "
           "16 pairs). Every paired test of this table is one family: a difference counts "
           f"when its Holm-adjusted p < {ALPHA:g}; two cells are equivalent when the "
           f"Holm-adjusted p of two one-sided t tests (TOST) within ±{MARGIN_TEXT} is below "
           f"{ALPHA:g}; neither is \"inconclusive\". With n seeds an exact test cannot go below "
           "2 / 2^n, so fewer than 6 seeds never give a clear difference, and a family of k "
           "tests needs 2 / 2^n < 0.05 / k for its smallest p. A gradient vanishes when its "
           f"ratio to the output layer's shrinks {VANISHING_DROP:g}x or more from the "
           "shallowest to the deepest network.", "",
           "| claim | measurement | held here? |", "|---|---|---|"]
  lines += [f"| {esc(c.claim)} | {esc(c.measurement)} | {esc(c.verdict)} |" for c in claims]
  return lines
