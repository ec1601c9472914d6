"""The evaluation pass of a task's stacked members: the metric, non-finite predictions and
the "valid" probes on a set of examples.

`Evaluation.evaluate` runs in chunks of examples (`lax.scan`), so memory stays
bounded; the last chunk is padded and masked. The program (program.py) calls
it for the valid pass of every epoch (with the diagnostics), the engine for
the test pass. Pure functions of their arguments; the cells come as a
layout's cells object (layout.py).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxact.model import losses as losses_lib
from jaxact.model import network as model_lib
from jaxact.engine import probes as probes_lib
from jaxact.engine.stacked import (Network, member_scale, members_of, network_groups, predictions,
                            train_targets)


def _cat(xs):
  return jnp.concatenate(xs, axis=0)


class Evaluation:
  """The evaluation of one task's stacked members.

  Attributes:
    network: the stacked members' `stacked.Network`.
    task: the task (tasks.Task): its per-example score and single_label.
    eval_rows: about how many (member x example) rows one chunk holds.
    probes: the diagnostics recorded (the "valid" ones are computed here).
    dims: the probes' static sizes (probes.Dims).
  """

  def __init__(self, network: Network, task, eval_rows: int,
               probes: tuple[probes_lib.Probe, ...], dims: probes_lib.Dims):
    self.network = network
    self.task = task
    self.eval_rows = eval_rows
    self.probes = probes
    self.dims = dims

  def evaluate(self, params, stats, x, t, mean, std, cells, diagnostics=False, rows=None):
    """Metric (M,), count of non-finite predictions (M,) and diagnostics on (x, t).

    With `diagnostics`, the third value holds the "valid" probes' values
    (probes.PROBES), each (M, ...); else it is {}.

    Args:
      params, stats: parameters and batch-norm statistics stacked on axis 0
        ({} for stats without batch norm).
      x: (N, 28, 28, 1) images; t: (N, C) targets in original units.
      mean, std: the training targets' mean and std: scalars, or (M,) per member.
      cells: the members' cells (layout.py).
      diagnostics: also compute the diagnostics.
      rows: None (every member is evaluated on all of x), or int32 (M, n):
        member m is evaluated on the rows rows[m] of x and t.
    """
    m = jax.tree_util.tree_leaves(params)[0].shape[0]
    n, xs, ts, ms = self._chunks(x, t, rows, m)
    valid_probes = probes_lib.of_phase("valid", self.probes) if diagnostics else ()
    # Closed over, not passed through the cells (a switch's operands must be arrays).
    chunk_sums = functools.partial(self._chunk_sums, mean=mean, std=std, shared=rows is None,
                                   valid_probes=valid_probes)

    def one(carry, args):
      xc, tc, mc = args
      if rows is None:
        xc = xc.reshape((-1,) + x.shape[1:])
      else:                                # (M, chunk) rows -> (M, chunk, 28, 28, 1), (M, chunk, C)
        xc, tc = x[xc], t[tc]
      feats = self.network.trunk(params, stats, xc)
      res = cells.per_cell(chunk_sums, params, stats, feats, tc, mc)
      new = dict(score=carry["score"] + res["score"], inf=carry["inf"] + res["inf"])
      if valid_probes:
        new["probes"] = {p.name: p.merge(carry["probes"][p.name], res["probes"][p.name])
                         for p in valid_probes}
      return new, None

    carry = dict(score=jnp.zeros((m,), jnp.float32), inf=jnp.zeros((m,), jnp.float32))
    if valid_probes:
      carry["probes"] = {p.name: p.init(self.dims, m) for p in valid_probes}
    acc, _ = jax.lax.scan(one, carry, (xs, ts, ms))
    metric, n_inf = acc["score"] / n, acc["inf"].astype(jnp.int32)
    if not diagnostics:
      return metric, n_inf, {}
    totals = probes_lib.Totals(n=n, width=self.dims.width, applied=None,
                               target_spread=self._target_spread(cells, t, mean, std, rows),
                               single_label=self.task.single_label)
    return metric, n_inf, {p.name: p.finalize(acc["probes"][p.name], totals)
                           for p in valid_probes}

  def _chunks(self, x, t, rows, m: int) -> tuple[int, Any, Any, Any]:
    """(n, xs, ts, ms): the examples (or each member's rows) in nc balanced chunks.

    xs (nc, chunk, 784) pixels and ts (nc, chunk, C) targets, or with `rows`
    both the rows (nc, M, chunk); ms (nc, chunk) 1.0 for real rows, 0.0 for pads.
    """
    n = x.shape[0] if rows is None else rows.shape[1]
    target = max(8, min(n, self.eval_rows // m))
    nc = -(-n // target)
    chunk = -(-n // nc)                    # balanced chunks: the padding stays below nc rows
    pad = nc * chunk - n
    # Padded as rows of pixels: padding the (n, 28, 28, 1) images themselves got a
    # layout that XLA:CPU then copied, about 10 ms of every epoch's valid pass.
    if rows is None:
      xs = jnp.pad(x.reshape(n, -1), ((0, pad), (0, 0))).reshape((nc, chunk, -1))
      ts = jnp.pad(t, ((0, pad), (0, 0))).reshape(nc, chunk, t.shape[-1])
    else:                 # each chunk's rows, gathered in the scan: (nc, M, chunk)
      xs = ts = jnp.pad(rows, ((0, 0), (0, pad))).reshape(m, nc, chunk).swapaxes(0, 1)
    ms = jnp.pad(jnp.ones((n,), jnp.float32), (0, pad)).reshape(nc, chunk)
    return n, xs, ts, ms

  def _chunk_sums(self, groups, params, stats, feats, tc, mc, *, mean, std, shared: bool,
                  valid_probes) -> dict[str, Any]:
    """Per-chunk sums of one layout (static groups), from the trunk's features.

    tc: the chunk's targets, (chunk, C) shared by every member (`shared`) or
    (M, chunk, C); mc (chunk,) its mask.
    """
    net = self.network
    z, pre, _ = net.dense(groups, params, stats, feats, train=False)   # (M, chunk, C)
    scores, infs, outs, heads = [], [], [], []
    for cell, a, b in groups:
      pred = predictions(cell, z[a:b], member_scale(mean, a, b), member_scale(std, a, b))
      s = self.task.per_example_score(pred, tc[None] if shared else members_of(tc, a, b))
      scores.append(jnp.sum(s * mc, axis=1))
      bad = jnp.any(~jnp.isfinite(pred), axis=-1)
      infs.append(jnp.sum(bad * mc, axis=1))
      outs.append(losses_lib.apply_head(cell.head, z[a:b]))
      heads.append(losses_lib.head_jacobian_max(cell.head, z[a:b]))       # (Mg, chunk)
    res = dict(score=_cat(scores), inf=_cat(infs))
    if valid_probes:
      deriv = _cat([model_lib.activation_derivative(hidden, pre[a:b])
                    / net.max_derivative[hidden]
                    for (hidden, _, _), a, b in network_groups(groups)])    # (M, D, chunk, W)
      obs = probes_lib.ValidObservation(pre=pre, deriv=deriv, out=_cat(outs),
                                        head_jac=_cat(heads), mask=mc)
      res["probes"] = {p.name: p.update(obs) for p in valid_probes}
    return res

  @staticmethod
  def _target_spread(cells, t, mean, std, rows):
    """(M,) std over examples of the targets each member's loss sees, averaged over outputs."""
    if rows is None:
      return cells.per_cell(lambda groups, t: _cat([
          jnp.full((b - a,), jnp.mean(jnp.std(train_targets(cell, t, mean, std), axis=0)))
          for cell, a, b in groups]), t)
    # each member's own valid targets (M, n, C)
    return cells.per_cell(lambda groups, tm: _cat([
        jnp.mean(jnp.std(train_targets(cell, members_of(tm, a, b), member_scale(mean, a, b),
                                       member_scale(std, a, b)), axis=1), axis=-1)
        for cell, a, b in groups]), t[rows])

  def test(self, params, stats, x, t, mean, std, cells):
    """(metric (M,), non-finite predictions (M,)) of parameters stacked like the state's."""
    return self.evaluate(params, stats, x, t, mean, std, cells)[:2]
