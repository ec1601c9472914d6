"""Member layouts: how one program is mapped over the stacked members.

The program (program.py) is written for a stack of members (a leading member
axis on every leaf) and reaches the cell-specific parts of its computation
(dense layers, head, loss) through `Cells.per_cell`. A layout decides how the
members share the machine (`ExecutionConfig.member_mode`):
- `Vmapped`: every member at once; cells are static, contiguous slices of the
  stack, so the per-cell code is a Python loop over them and each slice is one
  vmapped call (no `lax.switch`, whose vmapped `select` would run every branch
  for every member). Stopped members are frozen but still computed.
- `Looped`: the members one after another (`lax.map`), each as a stack of one
  whose cell is picked at run time by `lax.switch` over the distinct branches,
  so only its own branch runs; a member can be skipped (`lax.cond`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxact.model.cells import Cell

Groups = tuple[tuple[Cell, int, int], ...]   # static per-cell slices (cell, start, stop)


class StaticCells:
  """The cells of a stack of members as static slices `groups`."""

  def __init__(self, groups: Groups):
    self.groups = groups

  def per_cell(self, fn: Callable, *args):
    """`fn(groups, *args)`."""
    return fn(self.groups, *args)


class SwitchedCell:
  """ONE member (a stack of one) whose cell is `branches[index]`, `index` traced."""

  def __init__(self, index: jax.Array, branches: tuple[Cell, ...]):
    self.index, self.branches = index, branches

  def per_cell(self, fn: Callable, *args):
    """`fn(((cell, 0, 1),), *args)` for the member's cell, through `lax.switch`
    over the branches (so only that one runs).

    One branch is switched too (against a branch that returns zeros and is
    never taken): XLA then compiles the program around the switch alike
    whatever the branches, and a member computes bit for bit what it computes
    in any other program, its run alone included (tests/test_member_axes.py).
    """
    fns = [functools.partial(fn, ((c, 0, 1),)) for c in self.branches]
    if len(fns) == 1:
      fns.append(functools.partial(_zeros_like_output, fns[0]))
    return jax.lax.switch(self.index, fns, *args)


def _zeros_like_output(fn: Callable, *args):
  """Zeros shaped like `fn(*args)`'s output: the branch a one-branch switch never takes
  (cheaper to compile than a second copy of `fn`)."""
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *args))


class Vmapped:
  """Every stacked member at once, the cells as the static slices `groups`."""

  def __init__(self, groups: Groups):
    self.groups = groups

  def map(self, fn: Callable, stacked, *, skip=None):
    """`fn(stacked, cells)` once for all members; `skip` is ignored (stopped
    members are computed and frozen by the program's masks)."""
    del skip
    return fn(stacked, StaticCells(self.groups))


class Looped:
  """The stacked members one after another; member m's cell is
  `branches[cell_index[m]]`."""

  def __init__(self, branches: tuple[Cell, ...], cell_index: Sequence[int]):
    self.branches = branches
    self.cell_index = np.asarray(cell_index, np.int32)

  def map(self, fn: Callable, stacked, *,
          skip: tuple[Callable[[Any], jax.Array], Callable[[Any], Any]] | None = None):
    """`lax.map` over the stacked members: `fn(member, cells)` one at a time.

    `member` is `stacked` cut to that member with a member axis of size 1,
    `cells` its `SwitchedCell`; `fn`'s outputs have that axis too, and the
    result stacks them over all members. With `skip = (runs, skipped)`, a
    member for which `runs(member)` is False gets `skipped(member)` instead of
    `fn`'s outputs, and `fn` is not computed for it.
    """
    def one(args):
      member, index = args
      member = jax.tree_util.tree_map(lambda a: a[None], member)
      cells = SwitchedCell(index, self.branches)
      if skip is None:
        out = fn(member, cells)
      else:
        runs, skipped = skip
        out = jax.lax.cond(runs(member), lambda st: fn(st, cells), skipped, member)
      return jax.tree_util.tree_map(lambda a: a[0], out)
    return jax.lax.map(one, (stacked, jnp.asarray(self.cell_index)))
