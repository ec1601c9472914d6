"""The network of a task's stacked members, and the per-member pieces around it.

A *member* is one (cell, seed); a task's members share the network's shapes,
so their parameters are stacked along a leading member axis (program.py).
`Network` computes the conv trunk and the dense part of every stacked member
(the dense part per run of cells with the same network, `network_groups`);
`train_targets` and `predictions` map targets into the space a cell's loss
sees and outputs back to original units. Pure functions; nothing here keeps
state between calls.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxact.model import losses as losses_lib
from jaxact.model import network as model_lib
from jaxact.model.cells import Cell


class Network:
  """The CNN of a task's stacked members: the most dense layers any member uses, and
  batch-norm layers if any member uses them (see model.CNN).

  Attributes:
    num_outputs: C, the task's output width.
    max_depth: the most dense hidden layers of any member.
    has_batch_norm: any member uses batch norm (the network has the layers).
    conv: how the convolutions are computed (ExecutionConfig.conv).
    graphdef: the network's graph (nnx.split).
    max_derivative: hidden activation -> its derivative's largest value.
  """

  def __init__(self, num_outputs: int, cells: Sequence[Cell], conv: str = "im2col"):
    self.num_outputs = num_outputs
    self.max_depth = max(c.depth for c in cells)
    self.has_batch_norm = any(c.batch_norm for c in cells)
    self.conv = conv
    abstract = nnx.eval_shape(lambda: self.make_model(jax.random.key(0), cells[0]))
    self.graphdef, _, _ = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    self.max_derivative = {h: model_lib.max_derivative(h)
                           for h in dict.fromkeys(c.hidden for c in cells)}

  @staticmethod
  def init_group(cell: Cell) -> tuple:
    """What a member's initial weights depend on besides its key: the initialisation
    scheme and the layers used (the hidden activation, head and loss do not enter)."""
    return cell.init, cell.depth, cell.batch_norm

  def initial_parameters(self, keys, groups) -> tuple[Any, Any]:
    """(params, batch-norm stats) of the stacked members, each leaf (M, ...): member m's
    drawn from keys[m] for its cell (groups: static per-cell slices (cell, start, stop)).

    One vmapped (eager) initialisation per distinct initial network (`init_group`), over
    all its members: a member's draws depend on its key alone.
    """
    same_init: dict[Any, tuple[Cell, list[int]]] = {}
    for cell, a, b in groups:
      same_init.setdefault(self.init_group(cell), (cell, []))[1].extend(range(a, b))
    parts, order = [], []
    for cell, members in same_init.values():
      def make(k, cell=cell):
        _, p, st = nnx.split(self.make_model(k, cell), nnx.Param, nnx.BatchStat)
        return nnx.to_pure_dict(p), nnx.to_pure_dict(st)
      # In batches of powers of two (6 = 4 + 2): each new batch size compiles every eager op
      # of the initialisation again, so the sizes stay few.
      start = 0
      for bit in reversed(range(len(members).bit_length())):
        if len(members) >> bit & 1:
          chunk = members[start:start + (1 << bit)]
          parts.append(jax.vmap(make)(keys[np.asarray(chunk)]))
          start += 1 << bit
      order += members
    params, stats = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)
    if order != sorted(order):     # back to the members' order
      back = np.argsort(np.asarray(order))
      params, stats = jax.tree_util.tree_map(lambda x: x[back], (params, stats))
    return params, stats

  def make_model(self, key, cell: Cell) -> model_lib.CNN:
    return model_lib.CNN(self.num_outputs, init=cell.init, hidden_activation=cell.hidden,
                         dense_layers=cell.depth, batch_norm=cell.batch_norm,
                         max_dense_layers=self.max_depth,
                         with_batch_norm=self.has_batch_norm, conv=self.conv,
                         rngs=nnx.Rngs(params=key))
  def trunk(self, params, stats, x):
    """The conv trunk of every stacked member: x (M, B, 28, 28, 1), or
    (B, 28, 28, 1) shared -> features (M, B, 1024)."""
    return vmap_members(lambda p, s, xx: nnx.merge(self.graphdef, p, s).trunk(xx),
                        in_axes=(0, 0, None if x.ndim == 4 else 0))(params, stats, x)

  def dense(self, groups, params, stats, feats, mask=None, *, train: bool):
    """The dense part of every stacked member, for static `groups`.

    Args:
      groups: the per-cell slices of the stacked members.
      params, stats: parameters and batch-norm statistics stacked on axis 0 (M).
      feats: (M, B, 1024) the trunk's features.
      mask: (M, B) the real rows of padded batches (train only).
      train: batch norm on batch statistics (and updating them).

    Returns:
      z (M, B, C); the pre-activations (M, max_depth, B, width), zero beyond a
      member's depth; the new batch-norm statistics.
    """
    zs, pres, new_stats = [], [], []
    for (hidden, batch_norm, depth), a, b in network_groups(groups):
      def one(p, s, f, mk, hidden=hidden, batch_norm=batch_norm, depth=depth):
        model = nnx.merge(self.graphdef, p, s)
        z, pre = model.dense(f, activation=hidden, depth=depth, batch_norm=batch_norm,
                             train=train, mask=mk)
        pre = jnp.stack(pre + [jnp.zeros_like(pre[0])] * (self.max_depth - depth))
        return z, pre, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
      z, pre, st = vmap_members(one, in_axes=(0, 0, 0, None if mask is None else 0))(
          slice_members(params, a, b), slice_members(stats, a, b), feats[a:b],
          None if mask is None else mask[a:b] > 0)
      zs.append(z)
      pres.append(pre)
      new_stats.append(st)
    cat = lambda *xs: jnp.concatenate(xs, axis=0)
    return (cat(*zs), cat(*pres),
            jax.tree_util.tree_map(cat, *new_stats) if self.has_batch_norm else stats)


def network_groups(groups) -> list[tuple[tuple[str, bool, int], int, int]]:
  """Consecutive cell slices with the same network merged: [(cell.network, start, stop)]."""
  out: list[tuple[tuple[str, bool, int], int, int]] = []
  for cell, a, b in groups:
    if out and out[-1][0] == cell.network and out[-1][2] == a:
      out[-1] = (cell.network, out[-1][1], b)
    else:
      out.append((cell.network, a, b))
  return out


def vmap_members(fn: Callable, in_axes) -> Callable:
  """`jax.vmap(fn, in_axes)`, except that ONE member is computed unbatched.

  A vmap over a member axis of size 1 turns every matmul into a batched one
  with batch 1, which XLA:CPU runs about 15% slower than the plain matmul
  ("loop" mode computes one member at a time). Outputs get the member axis back.
  """
  batched = jax.vmap(fn, in_axes=in_axes)

  def call(*args):
    sizes = {leaf.shape[ax] for arg, ax in zip(args, in_axes) if ax is not None
             for leaf in jax.tree_util.tree_leaves(arg)}
    if sizes != {1}:
      return batched(*args)
    one = [a if ax is None else jax.tree_util.tree_map(lambda l: l[0], a)
           for a, ax in zip(args, in_axes)]
    return jax.tree_util.tree_map(lambda l: l[None], fn(*one))
  return call


def slice_members(tree, a: int, b: int):
  """Members a:b of a pytree stacked on axis 0."""
  return jax.tree_util.tree_map(lambda l: l[a:b], tree)


def members_of(v: jax.Array, a: int, b: int) -> jax.Array:
  """Members a:b of a stack (M, ...); a stack of one (loop mode) is not sliced."""
  return v if v.shape[0] == 1 else v[a:b]


def member_scale(v, a: int, b: int):
  """A target mean or std for members a:b, shaped to broadcast over (S, rows, C).

  `v` is a scalar (one split for all members) or (M,) (`MemberRows`); a
  stack of one member (loop mode) gives its scalar, so that the member
  computes exactly what a run of its split alone computes.
  """
  v = jnp.asarray(v)
  if v.ndim == 0:
    return v
  if v.shape[0] == 1:
    return v[0]
  return v[a:b].reshape(-1, 1, 1)


# Per-cell target transforms (regression standardisation, sigmoid method).


def train_targets(cell: Cell, t: jax.Array, mean: float, std: float) -> jax.Array:
  """Targets in the space the loss sees: standardised and/or squashed by a sigmoid."""
  if cell.norm:
    t = (t - mean) / std
  if cell.sigmoid_method:
    t = jax.nn.sigmoid(t)
  return t


def predictions(cell: Cell, z: jax.Array, mean: float, std: float) -> jax.Array:
  """The head's output mapped back to original target units, (..., C).

  For the sigmoid method, logit(sigmoid(z)) is computed from the float32
  sigmoid output as the original method prescribes: outputs that round to
  exactly 0 or 1 give -inf / +inf predictions (counted, not hidden).
  """
  out = losses_lib.apply_head(cell.head, z)
  if cell.sigmoid_method:
    out = jnp.log(out) - jnp.log1p(-out)
  if cell.norm:
    out = out * std + mean
  return out
