"""The claims of seeds 002-004 about hidden activations, checked against a hidden-study run.

Each claim gets the measurement that tests it, from the members' results and
in-program diagnostics (`engine.Engine.diagnostic_shapes`), and a verdict:
"held", "not held", or "no clear difference" when the effect is within the
seeds' noise (NOISE_SIGMAS x the larger seed std, and at least MIN_POINTS
accuracy points). Plain Python on the results records; the report calls it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from jaxact import studies
from jaxact.studies import Cell

NOISE_SIGMAS = 2.0
MIN_POINTS = 0.2          # accuracy points
VANISHING_DROP = 100.0    # the gradient ratio shrinks at least this much from depth 1 to the deepest
RELU_FAMILY = ("relu", "leaky_relu", "elu", "gelu", "silu", "mish")


@dataclasses.dataclass(frozen=True)
class Claim:
  claim: str
  measurement: str
  verdict: str


def _find(groups: dict[Cell, list[dict]], **fields) -> list[dict]:
  """The members of the multiclass softmax + cce cell with these network fields ([] if absent).

  `groups` holds one loss convention's cells (`hidden_claims` splits them).
  """
  want = dict(dict(init="torch", hidden="sigmoid", batch_norm=False, depth=1), **fields)
  for cell, members in groups.items():
    if (cell.task == "multiclass" and cell.head == "softmax" and cell.loss == "cce"
        and all(getattr(cell, k) == v for k, v in want.items())):
      return members
  return []


def _test(members: list[dict]) -> tuple[float, float]:
  """(mean, std) of the members' test accuracy in %, NaN if none is finite."""
  v = [100 * float(m["test"]) for m in members
       if m.get("test") is not None and math.isfinite(float(m["test"]))]
  return (float(np.mean(v)), float(np.std(v))) if v else (math.nan, math.nan)


def _acc(members: list[dict]) -> str:
  mean, std = _test(members)
  return "n/a" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}%"


def _ratio_at_init(members: list[dict], layer: str = "hidden1") -> float:
  """Median over seeds of ||grad layer|| / ||grad out|| on the first batch at initialisation."""
  out = []
  for m in members:
    d = m.get("diagnostics") or {}
    names, first = d.get("layers"), d.get("grad_norm_first")
    if not names or not first or not first[0] or layer not in names:
      continue
    g = first[0]
    if g[names.index(layer)] is not None and g[-1]:
      out.append(g[names.index(layer)] / g[-1])
  return float(np.median(out)) if out else math.nan


def _dead(members: list[dict]) -> float:
  """Mean over seeds of the largest dead-unit fraction over hidden layers, at the best epoch."""
  out = []
  for m in members:
    d = (m.get("diagnostics") or {}).get("dead")
    e = m.get("best_epoch", -1)
    if d and e is not None and 0 <= e < len(d) and d[e]:
      out.append(max(x for x in d[e] if x is not None))
  return float(np.mean(out)) if out else math.nan


def _compare(a: list[dict], b: list[dict]) -> tuple[float, bool]:
  """(mean test difference a - b in points, whether it exceeds the noise)."""
  (ma, sa), (mb, sb) = _test(a), _test(b)
  diff = ma - mb
  noise = max(MIN_POINTS, NOISE_SIGMAS * max(sa, sb))
  return diff, abs(diff) > noise


def _verdict(diffs: list[tuple[float, bool]], want_positive: bool = True) -> str:
  clear = [d for d, sig in diffs if sig]
  if not clear:
    return "no clear difference"
  good = [d for d in clear if (d > 0) == want_positive]
  if len(good) == len(clear):
    return "held"
  if not good:
    return "not held"
  return f"mixed ({len(good)} of {len(clear)} clear differences agree)"


def depth_sweep(groups: dict[Cell, list[dict]]) -> dict[tuple[str, str], dict[int, list[dict]]]:
  """(hidden, init) -> depth -> members, for the depth sweep's cells (no batch norm) with >1 depth.

  `groups` must hold one loss convention (see `by_convention`): the two conventions'
  cells of the same network would otherwise land on the same key.
  """
  conventions = {c.convention for c in groups}
  if len(conventions) > 1:
    raise ValueError(f"depth_sweep takes the cells of one convention, got {sorted(conventions)}")
  sweep: dict[tuple[str, str], dict[int, list[dict]]] = {}
  for cell, members in groups.items():
    if cell.task == "multiclass" and cell.head == "softmax" and not cell.batch_norm:
      sweep.setdefault((cell.hidden, cell.init), {})[cell.depth] = members
  return {k: dict(sorted(v.items())) for k, v in sweep.items() if len(v) > 1}


def by_convention(groups: dict[Cell, list[dict]]) -> dict[str, dict[Cell, list[dict]]]:
  """convention -> that convention's cells, in order of first appearance."""
  out: dict[str, dict[Cell, list[dict]]] = {}
  for cell, members in groups.items():
    out.setdefault(cell.convention, {})[cell] = members
  return out


def hidden_claims(groups: dict[Cell, list[dict]], result: dict[str, Any] | None = None
                  ) -> list[Claim]:
  """The claims that the run's cells can test (none for a run without hidden-study cells).

  Each loss convention's cells are measured on their own: the torch convention's softmax +
  cce is the original's double softmax, which changes what the claims measure (READING.md,
  He init). With both conventions in the run, each claim is made once per convention and
  its text names it ("[logits] ...").
  """
  del result
  per_convention = by_convention(groups)
  if len(per_convention) <= 1:
    return _claims_of_one_convention(groups)
  return [dataclasses.replace(claim, claim=f"[{conv}] {claim.claim}")
          for conv, conv_groups in per_convention.items()
          for claim in _claims_of_one_convention(conv_groups)]


def _claims_of_one_convention(groups: dict[Cell, list[dict]]) -> list[Claim]:
  claims: list[Claim] = []
  sweep = depth_sweep(groups)

  def add(claim: str, measurement: str, verdict: str) -> None:
    claims.append(Claim(claim, measurement, verdict))

  # 1. Vanishing gradients with depth.
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
      add(claim, meas, verdict)

  # 2. Dying ReLU, and its fixes.
  relu_cells = [(c, ms) for c, ms in groups.items() if c.hidden == "relu"]
  if relu_cells:
    worst = max(relu_cells, key=lambda cm: -1 if math.isnan(_dead(cm[1])) else _dead(cm[1]))
    frac = _dead(worst[1])
    add("ReLU units can die (output 0 for every input)",
        f"largest mean dead fraction of a hidden layer at the best epoch: {frac:.1%} "
        f"({worst[0].network_label}); a unit is dead when its derivative is 0 on every "
        "valid example", "held" if frac > 0 else "not held")
    fixes, dead_fracs = [], []
    for h in RELU_FAMILY[1:]:
      cells = [(c, ms) for c, ms in groups.items() if c.hidden == h]
      if not cells:
        continue
      dead = max((_dead(ms) for _, ms in cells if not math.isnan(_dead(ms))), default=math.nan)
      pairs = [_compare(ms, _find(groups, init=c.init, hidden="relu", batch_norm=c.batch_norm,
                                  depth=c.depth)) for c, ms in cells
               if _find(groups, init=c.init, hidden="relu", batch_norm=c.batch_norm,
                        depth=c.depth)]
      dead_fracs.append(dead)
      better = sum(1 for d, sig in pairs if sig and d > 0)
      worse = sum(1 for d, sig in pairs if sig and d < 0)
      fixes.append(f"{h}: dead {dead:.1%}, test accuracy clearly above ReLU's in {better}, "
                   f"below in {worse} of {len(pairs)} configurations")
    if fixes:
      measured = [d for d in dead_fracs if not math.isnan(d)]
      add("Leaky ReLU / ELU / GELU / SiLU / Mish fix dying ReLU", "; ".join(fixes),
          "not measured" if not measured else
          "held (no dead units)" if max(measured) == 0 else "not held (some units dead)")

  # 3. Initialisation matched to the activation.
  for h in ("sigmoid", "tanh") + RELU_FAMILY:
    good, bad = studies.matched_init(h), ("he" if studies.matched_init(h) == "xavier" else "xavier")
    diffs, parts = [], []
    for bn in (False, True):
      a, b = _find(groups, init=good, hidden=h, batch_norm=bn), _find(groups, init=bad, hidden=h,
                                                                      batch_norm=bn)
      if a and b:
        diffs.append(_compare(a, b))
        parts.append(f"depth 1{' + batch norm' if bn else ''}: {good} {_acc(a)} vs {bad} {_acc(b)}")
    by_depth = sweep.get((h, good)), sweep.get((h, "torch"))
    if by_depth[0] and by_depth[1]:
      for d in sorted(set(by_depth[0]) & set(by_depth[1])):
        if d > 1:
          diffs.append(_compare(by_depth[0][d], by_depth[1][d]))
          parts.append(f"depth {d}: {good} {_acc(by_depth[0][d])} vs torch "
                       f"{_acc(by_depth[1][d])}")
    if parts:
      add(f"{good.capitalize()} initialisation suits {h}", "; ".join(parts), _verdict(diffs))

  # 4. Batch norm.
  diffs, parts = [], []
  for h in ("sigmoid", "tanh") + RELU_FAMILY:
    for init in ("he", "xavier", "torch"):
      on, off = _find(groups, init=init, hidden=h, batch_norm=True), _find(
          groups, init=init, hidden=h, batch_norm=False)
      if on and off:
        diffs.append(_compare(on, off))
  if diffs:
    up = sum(1 for d, sig in diffs if sig and d > 0)
    down = sum(1 for d, sig in diffs if sig and d < 0)
    add("Batch norm helps",
        f"depth 1, batch norm on - off, test accuracy: mean {np.mean([d for d, _ in diffs]):+.2f} "
        f"points over {len(diffs)} (activation, init) pairs; clearly better in {up}, clearly "
        f"worse in {down}", _verdict(diffs))
  return claims


def render(claims: list[Claim]) -> list[str]:
  """The claims as a Markdown table (under a heading)."""
  esc: Callable[[str], str] = lambda t: " ".join(str(t).split()).replace("|", "\\|")
  lines = ["### Claims of seeds 002-004, measured", "",
           f"Verdicts: a difference counts when it exceeds {NOISE_SIGMAS:g} x the larger seed "
           f"std and {MIN_POINTS} points; a gradient vanishes when its ratio to the output "
           f"layer's shrinks {VANISHING_DROP:g}x or more from the shallowest to the deepest "
           "network.", "", "| claim | measurement | held here? |", "|---|---|---|"]
  lines += [f"| {esc(c.claim)} | {esc(c.measurement)} | {esc(c.verdict)} |" for c in claims]
  return lines
