"""In-program diagnostics: per-member measurements recorded every epoch.

Each diagnostic is a small `Probe` with four pure functions, in the manner of
`nnx.Metric`:
  init(dims, m)      the empty accumulator of m members;
  update(obs)        the accumulator of ONE observation (a training batch, a
                     valid chunk), computed where the observation is (for the
                     valid pass: inside the member's cell branch, see layout.py);
  merge(acc, part)   two accumulators combined (sums add; `Spread` uses Chan
                     et al.'s parallel update of the moments);
  finalize(acc, end) the per-member value (M, ...) of the epoch.
A probe observes one `phase`: "train" (every update of the training scan:
`TrainObservation`), "valid" (every chunk of the valid pass:
`ValidObservation`) or "end" (the state after the epoch: `EndObservation`).
`PROBES` is the set recorded, in the order the histories and results list
them; `shapes` derives the recorded shapes from it. A new diagnostic is one
class added there.

Saturation: a hidden unit is *saturated* when its activation's derivative is
below SATURATION_RATIO x the activation's largest derivative on at least
SATURATION_SHARE of the valid examples (a sigmoid unit with |h| > 6.9 on 99%
of them); a unit is *dead* when its activation's derivative is exactly 0 on
EVERY valid example (a ReLU unit with a negative pre-activation everywhere:
it passes no gradient, whatever the input). Smooth activations die only
through float32 rounding: a sigmoid's computed derivative is exactly 0 once
its output rounds to 1 (pre-activation above about 17) or underflows to 0.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxact.model import losses as losses_lib

SATURATION_RATIO = 0.01
SATURATION_SHARE = 0.99


def layer_names(depth: int) -> list[str]:
  """The names of the layers whose norms are recorded, input to output."""
  return ["conv1", "conv2", "conv3"] + [f"hidden{i + 1}" for i in range(depth)] + ["out"]


def layer_sq_norms(tree, depth: int) -> jax.Array:
  """(M, L) squared L2 norms of each layer's kernel and bias, for params stacked on axis 0.

  L = len(layer_names(depth)); batch-norm scales and shifts are not included.
  """
  def sq(sub):
    return sum(jnp.sum(jnp.square(l.reshape(l.shape[0], -1)), axis=1)
               for l in jax.tree_util.tree_leaves(sub))
  cols = ([sq(tree[k]) for k in ("conv1", "conv2", "conv3")]
          + [sq(tree["hidden"][i]) for i in range(depth)] + [sq(tree["out"])])
  return jnp.stack(cols, axis=1)


class Dims(NamedTuple):
  """The static sizes of a program's diagnostics.

  layers: L = len(layer_names(depth)); depth: D, the most dense hidden layers
  of any member; width: the hidden layers' width; outputs: C.
  """
  layers: int
  depth: int
  width: int
  outputs: int


class TrainObservation(NamedTuple):
  """One update of the training scan: sq_norms (M, L) the per-layer squared
  gradient norms; applied (M,) bool, the members whose update was applied;
  first () bool, the epoch's first batch."""
  sq_norms: jax.Array
  applied: jax.Array
  first: jax.Array


class ValidObservation(NamedTuple):
  """One chunk of the valid pass, of the members of one layout.

  pre (M, D, B, W): pre-activations (zero beyond a member's depth); deriv:
  their activation's derivative over its largest; out (M, B, C): the head's
  outputs (the space the loss sees); head_jac (M, B): the head's largest
  Jacobian entry; mask (B,): the chunk's real rows (1.0) and pads (0.0).
  """
  pre: jax.Array
  deriv: jax.Array
  out: jax.Array
  head_jac: jax.Array
  mask: jax.Array


class EndObservation(NamedTuple):
  """The members' parameters (stacked on axis 0) after the epoch, of a
  network with `depth` dense hidden layers."""
  params: Any
  depth: int


class Totals(NamedTuple):
  """What `finalize` may need besides the accumulator.

  n: valid examples; width: the hidden layers' width; applied: (M,) updates
  applied in the epoch; target_spread: (M,) std over valid examples of the targets the loss sees,
  averaged over outputs; single_label: the task has one label per example.
  """
  n: int
  width: int
  applied: jax.Array
  target_spread: jax.Array
  single_label: bool


# The axes a probe's per-member value may have, and their sizes.
AXES = {
    "layer": lambda dims: dims.layers,    # L: layer_names(depth), conv1 to out
    "hidden": lambda dims: dims.depth,    # D: the dense hidden layers
}


class Probe:
  """A per-member measurement of one epoch (see the module docstring).

  `axes` declares the per-member value's axes, each a key of AXES: () for a
  scalar, ("layer",) for one value per layer, ("hidden",) per hidden layer.
  """
  name: str = ""
  phase: str = "valid"
  axes: tuple[str, ...] = ()

  def shape(self, dims: Dims) -> tuple[int, ...]:
    """The per-member shape of the finalized value (its dtype is float32)."""
    return tuple(AXES[a](dims) for a in self.axes)

  def init(self, dims: Dims, m: int):
    return jnp.zeros((m,) + self.shape(dims))

  def update(self, obs):
    raise NotImplementedError

  def merge(self, acc, part):
    return acc + part

  def finalize(self, acc, totals: Totals) -> jax.Array:
    return acc


class GradNorm(Probe):
  """(L,) root mean square over the epoch's updates of the per-batch gradient
  L2 norm of each layer's kernel + bias."""
  name, phase, axes = "grad_norm", "train", ("layer",)

  def init(self, dims, m):
    return jnp.zeros((m, dims.layers), jnp.float32)

  def update(self, obs: TrainObservation):
    return jnp.where(obs.applied[:, None], obs.sq_norms, 0.0)

  def finalize(self, acc, totals):
    return jnp.sqrt(acc / jnp.maximum(totals.applied, 1)[:, None])


class GradNormFirst(Probe):
  """(L,) the same for the epoch's first batch only (in epoch 0: the gradient
  at initialisation). The accumulator is (seen, norms)."""
  name, phase, axes = "grad_norm_first", "train", ("layer",)

  def init(self, dims, m):
    return jnp.zeros((), bool), jnp.zeros((m, dims.layers), jnp.float32)

  def update(self, obs: TrainObservation):
    return obs.first, jnp.sqrt(obs.sq_norms)

  def merge(self, acc, part):
    return acc[0] | part[0], jnp.where(part[0], part[1], acc[1])

  def finalize(self, acc, totals):
    return acc[1]


class ParamNorm(Probe):
  """(L,) each layer's parameter L2 norm after the epoch."""
  name, phase, axes = "param_norm", "end", ("layer",)

  def update(self, obs: EndObservation):
    return jnp.sqrt(layer_sq_norms(obs.params, obs.depth))

  def merge(self, acc, part):
    return part


def _rows(obs: ValidObservation) -> jax.Array:
  return obs.mask[None, None, :, None]


class _UnitShare(Probe):
  """(D,) the share of each hidden layer's units that `flags` (on the derivative
  over its largest) on `enough` of the valid examples."""
  axes = ("hidden",)

  def init(self, dims, m):
    return jnp.zeros((m, dims.depth, dims.width))

  def update(self, obs: ValidObservation):
    return jnp.sum(self.flags(obs.deriv) * _rows(obs), axis=2)               # (M, D, W)

  def finalize(self, acc, totals):
    return jnp.mean(self.enough(acc, totals.n), axis=2)

  def flags(self, deriv: jax.Array) -> jax.Array:
    raise NotImplementedError

  def enough(self, count: jax.Array, n: int) -> jax.Array:
    raise NotImplementedError


class Saturated(_UnitShare):
  """(D,) fraction of units of each hidden layer saturated on the valid set."""
  name = "saturated"

  def flags(self, deriv):
    return deriv < SATURATION_RATIO

  def enough(self, count, n):
    return count >= SATURATION_SHARE * n


class Dead(_UnitShare):
  """(D,) fraction of units of each hidden layer dead on the valid set."""
  name = "dead"

  def flags(self, deriv):
    return deriv == 0

  def enough(self, count, n):
    return count == n


class MeanAbsPre(Probe):
  """(D,) mean |pre-activation| of each hidden layer on the valid set."""
  name, axes = "mean_abs_pre", ("hidden",)

  def init(self, dims, m):
    return jnp.zeros((m, dims.depth))

  def update(self, obs: ValidObservation):
    return jnp.sum(jnp.abs(obs.pre) * _rows(obs), axis=(2, 3))              # (M, D)

  def finalize(self, acc, totals):
    return acc / (totals.n * totals.width)


class Spread(Probe):
  """() std over valid examples of the head's outputs (the space the loss
  sees), averaged over outputs, divided by the same for the targets: about 0
  for a constant predictor. The accumulator is (count, mean, M2) per output."""
  name = "spread"

  def init(self, dims, m):
    return (jnp.zeros(()), jnp.zeros((m, dims.outputs)), jnp.zeros((m, dims.outputs)))

  def update(self, obs: ValidObservation):
    wc = obs.mask[None, :, None]
    n = jnp.sum(obs.mask)
    mean = jnp.sum(obs.out * wc, axis=1) / n
    return n, mean, jnp.sum(jnp.square(obs.out - mean[:, None]) * wc, axis=1)

  def merge(self, acc, part):
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = acc, part
    delta = mean_b - mean_a
    n = n_a + n_b
    return n, mean_a + delta * n_b / n, m2_a + m2_b + jnp.square(delta) * n_a * n_b / n

  def finalize(self, acc, totals):
    return (jnp.mean(jnp.sqrt(acc[2] / totals.n), axis=1)
            / jnp.maximum(totals.target_spread, 1e-12))


class HeadSaturated(Probe):
  """() share of valid examples on which the head is saturated
  (losses.HEAD_SATURATION): in the torch convention, 1 means that no gradient
  passes the head on any example."""
  name = "head_saturated"

  def update(self, obs: ValidObservation):
    return jnp.sum((obs.head_jac <= losses_lib.HEAD_SATURATION) * obs.mask, axis=1)   # (M,)

  def finalize(self, acc, totals):
    return acc / totals.n


class ArgmaxMinority(Probe):
  """() share of valid examples whose argmax is not the most frequent one (0
  for a constant predictor; NaN for single-output tasks). The accumulator is
  the histogram of the argmax (M, C)."""
  name = "argmax_minority"

  def init(self, dims, m):
    return jnp.zeros((m, dims.outputs))

  def update(self, obs: ValidObservation):
    c = obs.out.shape[-1]
    return jnp.sum(jax.nn.one_hot(jnp.argmax(obs.out, axis=-1), c)
                   * obs.mask[None, :, None], axis=1)

  def finalize(self, acc, totals):
    if not totals.single_label:
      return jnp.full(acc.shape[:1], jnp.nan)
    return (totals.n - jnp.max(acc, axis=1)) / totals.n


# The diagnostics recorded, in the order of the histories and results.
PROBES: tuple[Probe, ...] = (GradNorm(), GradNormFirst(), ParamNorm(), Saturated(), Dead(),
                             MeanAbsPre(), Spread(), HeadSaturated(), ArgmaxMinority())


def of_phase(phase: str, probes: tuple[Probe, ...] = PROBES) -> tuple[Probe, ...]:
  return tuple(p for p in probes if p.phase == phase)


def shapes(dims: Dims, probes: tuple[Probe, ...] = PROBES
           ) -> dict[str, tuple[tuple[int, ...], Any]]:
  """name -> (per-member shape, dtype) of the diagnostics `probes` record."""
  return {p.name: (p.shape(dims), np.float32) for p in probes}


def member_part(value: np.ndarray, axes: tuple[str, ...], depth: int, max_depth: int,
                leading: int = 0) -> np.ndarray:
  """A recorded value cut to the layers of a member with `depth` dense hidden layers.

  The program records every member with the most layers any member has
  (`max_depth`; a member's values beyond its own depth are 0). `value` has
  `leading` axes (e.g. epochs), then the probe's declared `axes`: a "layer"
  axis keeps conv1-3, the member's hidden layers and out; a "hidden" axis its
  hidden layers.
  """
  keep = {"layer": list(range(3 + depth)) + [3 + max_depth], "hidden": list(range(depth))}
  for k, axis in enumerate(axes):
    value = np.take(value, keep[axis], axis=leading + k)
  return value
