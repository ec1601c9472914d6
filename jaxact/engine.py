"""The training engine: every cell x seed of one task in ONE jitted program.

A *member* is one (cell, seed). All members of a task share the network's
shapes (the output width C is the task's), so their parameters and AdamW
states are stacked along a leading member axis. Members are grouped by cell
(contiguous, static slices). In "vmap" mode the forward and backward passes
run over all members at once (`jax.vmap` of one model) and only the tiny
head + loss differ per group, so no `lax.switch` (whose vmapped `select`
would run every branch for every member) is needed; "loop" mode (below)
runs the members one after another instead.

One epoch is one call of a jitted function: a `lax.scan` over the batches
with the data resident on the device, then a batched pass over the valid
set and the early-stopping update. The host loop only fetches a few (M,)
vectors per epoch for progress and stops when no member is training.

How the members share the machine (`EngineConfig.member_mode`):
- "vmap": every step is one vmapped computation over all members (batched
  matmuls): what fills a GPU or a TPU. Stopped members are frozen but still
  computed until the last member stops; with `EngineConfig.compact`, the
  host loop instead drops them from the stacked state whenever at most half
  of the stacked members are still training, and switches to an epoch
  function compiled for the remaining members (a *layout*); finished members
  keep their results in a full-size copy of the state. At most about
  log2(M) extra compilations per task.
- "loop": inside the same jitted epoch, the members run one after another
  (`lax.map`), each its whole epoch: its working set stays in the CPU's
  caches, a stopped member is skipped (`lax.cond`), and the cell-specific
  part (dense layers, head, loss) is chosen by `lax.switch` on the member's
  cell, so only its own branch runs. On a CPU this is faster than "vmap"
  (vmapped batch-32 matmuls and large evaluation chunks run out of cache;
  measured in benchmarks/ and BUILD_NOTES.md). One device only.
- "auto" (default): "loop" on a single CPU device, "vmap" otherwise.
Both modes compute the same function; their results agree to float rounding.

Per member (PROTOCOL section 3):
- its own initialisation and shuffle order, both from `jax.random.key(seed)`
  (so member k equals a single run with seed k, whatever else is in the grid);
- early stopping on the valid metric with strict improvement, stop when
  `epoch - best_epoch >= patience`; a stopped member is frozen (its
  parameters and optimizer state no longer change) and its best-epoch
  weights give the test metric;
- a member whose loss receives inputs outside the loss's domain (bce on raw
  outputs) is marked invalid before any update of that batch, as PyTorch
  raised there; a member whose loss or parameters go non-finite is marked
  with the epoch and frozen at its last finite state. Neither affects the
  others.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from jaxact import losses as losses_lib
from jaxact import model as model_lib
from jaxact import sharding
from jaxact import tasks as tasks_lib
from jaxact.studies import Cell


class Status(enum.IntEnum):
  TRAINING = 0
  OK = 1          # early-stopped normally
  INVALID = 2     # the loss refused its input (PyTorch raised)
  NONFINITE = 3   # loss or parameters became NaN/inf
  HIT_CAP = 4     # still improving when --max_epochs was reached


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Training hyper-parameters (PROTOCOL section 3 by default).

  Attributes:
    max_epochs: epoch cap (the original had none); members still training
      when it is reached get status HIT_CAP.
    patience: early-stopping rounds.
    batch_size: training batch size; the last partial batch is kept (masked).
    optimizer: one of OPTIMIZERS: "adamw" (PROTOCOL: torch.optim.AdamW) or
      "sgd" (torch.optim.SGD with momentum; see `make_optimizer`).
    learning_rate, b1, b2, eps, weight_decay: AdamW, decoupled weight decay on
      every parameter, multiplied by the learning rate as in PyTorch. For
      "sgd", weight_decay is PyTorch SGD's L2 term (added to the gradient)
      and b1, b2, eps are unused.
    momentum: "sgd" only: the heavy-ball momentum (PyTorch's, no dampening).
    head_bias_init: one of HEAD_BIAS_INITS: "torch" (the output layer's bias
      as the `init` scheme draws it) or "prior" (set so that the network's
      output, before its last weights contribute, is the training targets'
      mean: `prior_output_bias`).
    eval_examples: about how many (member x example) rows one evaluation chunk
      holds; bounds the memory of the valid/test passes. None: 32 on a CPU
      (larger chunks run out of its caches: the valid pass of one member takes
      about 2x longer at 200 rows, 8x at 3,000), 4096 on an accelerator.
    compact: ("vmap" mode) drop finished members from the stacked state once
      at most half of it is still training, so later epochs compute only the
      members still training (one extra compilation per compaction, at most
      about log2(M)). Results are those of the uncompacted run up to float
      rounding of the batched matmuls. "loop" mode skips finished members
      anyway and ignores it.
    compact_in_background: with `compact`, compile each smaller layout in a
      background thread while the current layout keeps training, and switch
      at the first epoch end after it is ready (the members that stopped in
      between are carried frozen, which changes nothing). Takes the
      recompilation off the critical path where the host idles during an
      epoch (an accelerator); the results are the same as `compact`'s. Not
      part of a run's identity.
    member_mode: "vmap", "loop" or "auto" (see the module docstring).
    matmul_precision: the precision of the float32 matmuls (the convolutions
      are matmuls here), one of MATMUL_PRECISIONS: "float32" (default: full
      float32 on every backend, what PyTorch computes on a CPU),
      "tensorfloat32" (TF32 tensor cores on NVIDIA GPUs since Ampere; a 10-bit
      mantissa for the products), "bfloat16" (bf16 products), or "default"
      (the backend's own choice: TF32 on recent NVIDIA GPUs, bf16 passes on
      TPUs, float32 on CPUs). XLA:CPU computes float32 for every choice
      (measured: the same 2.9e-7 relative error against float64 for all four).
      Part of a run's identity: on an accelerator the results differ beyond
      rounding order.
    conv: how the convolutions are computed, one of model.CONV_IMPLS: "im2col"
      (the default on every backend) or "native" (XLA's convolution and
      reduce-window max-pool; vmapped members become a grouped convolution).
      The same function and parameters, so results agree to float rounding
      and a run may resume under the other. For accelerators, where im2col
      materialises nine shifted copies of every convolution's input; not yet
      measured on one (`benchmarks/gpu_suite.sh conv`). On a CPU its
      gradients inside the training scan are 10-20x slower (jax-ml/jax#12868).
  """
  max_epochs: int = 100
  patience: int = 10
  batch_size: int = 32
  learning_rate: float = 1e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.01
  optimizer: str = "adamw"
  momentum: float = 0.9
  head_bias_init: str = "torch"
  eval_examples: int | None = None
  compact: bool = False
  compact_in_background: bool = False
  member_mode: str = "auto"
  matmul_precision: str = "float32"
  conv: str = "im2col"


MEMBER_MODES = ("auto", "vmap", "loop")
OPTIMIZERS = ("adamw", "sgd")
HEAD_BIAS_INITS = ("torch", "prior")
PROTOCOL = EngineConfig()   # PROTOCOL section 3's training


def make_optimizer(config: EngineConfig) -> optax.GradientTransformation:
  """The optimizer of `config`, as PyTorch's optimizer of the same name computes it.

  "adamw": torch.optim.AdamW(lr, betas=(b1, b2), eps, weight_decay), the
  decay decoupled and multiplied by the learning rate (optax.adamw).
  "sgd": torch.optim.SGD(lr, momentum, weight_decay): g + weight_decay * w
  enters the momentum buffer v = momentum * v + g, and w -= lr * v.
  """
  if config.optimizer == "adamw":
    return optax.adamw(config.learning_rate, b1=config.b1, b2=config.b2,
                       eps=config.eps, weight_decay=config.weight_decay)
  if config.optimizer == "sgd":
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(config.learning_rate, momentum=config.momentum or None))
  raise ValueError(f"unknown optimizer {config.optimizer!r}: choose one of "
                   f"{', '.join(OPTIMIZERS)}")


def training_label(config: EngineConfig) -> str:
  """The training choices of `config` that differ from PROTOCOL's, e.g. 'sgd (momentum 0.9), lr 0.01'.

  '' for PROTOCOL's training; cells' labels carry it where it is not ''.
  """
  parts = []
  if config.optimizer != PROTOCOL.optimizer:
    parts.append(f"{config.optimizer} (momentum {config.momentum:g})"
                 if config.optimizer == "sgd" else config.optimizer)
  if config.learning_rate != PROTOCOL.learning_rate:
    parts.append(f"lr {config.learning_rate:g}")
  if config.weight_decay != PROTOCOL.weight_decay:
    parts.append(f"weight decay {config.weight_decay:g}")
  if config.batch_size != PROTOCOL.batch_size:
    parts.append(f"batch {config.batch_size}")
  if config.head_bias_init != PROTOCOL.head_bias_init:
    parts.append(f"{config.head_bias_init} head bias")
  return ", ".join(parts)


def cell_label(cell: Cell, config: EngineConfig) -> str:
  """`cell.label`, followed by the training choices that differ from PROTOCOL's, if any."""
  training = training_label(config)
  return f"{cell.label} [{training}]" if training else cell.label


def training_record(config: EngineConfig) -> dict[str, Any]:
  """The training choices a results file records (every field `training_label` may name)."""
  return {"optimizer": config.optimizer, "learning_rate": config.learning_rate,
          "momentum": config.momentum if config.optimizer == "sgd" else None,
          "weight_decay": config.weight_decay, "batch_size": config.batch_size,
          "head_bias_init": config.head_bias_init, "label": training_label(config)}
MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16", "default")


def with_matmul_precision(fn: Callable, precision: str) -> Callable:
  """`fn` traced under `jax.default_matmul_precision(precision)` ("default": as is)."""
  if precision not in MATMUL_PRECISIONS:
    raise ValueError(f"unknown matmul_precision {precision!r}: choose one of "
                     f"{', '.join(MATMUL_PRECISIONS)}")
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    if precision == "default":
      return fn(*args, **kwargs)
    with jax.default_matmul_precision(precision):
      return fn(*args, **kwargs)
  if isinstance(fn, functools.partial):   # the name jit, logs and HLO dumps show
    traced.__name__ = getattr(fn.func, "__name__", traced.__name__)
  return traced


# Diagnostics recorded per member and epoch (see `Engine.diagnostic_shapes`).
# Saturation: a hidden unit is *saturated* when its activation's derivative
# is below SATURATION_RATIO x the activation's largest derivative on at least
# SATURATION_SHARE of the valid examples (a sigmoid unit with |h| > 6.9 on 99%
# of them); a unit is *dead* when its activation's derivative is exactly 0 on
# EVERY valid example (a ReLU unit with a negative pre-activation everywhere:
# it passes no gradient, whatever the input). Smooth activations die only
# through float32 rounding: a sigmoid's computed derivative is exactly 0 once
# its output rounds to 1 (pre-activation above about 17) or underflows to 0.
SATURATION_RATIO = 0.01
SATURATION_SHARE = 0.99


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TaskData:
  """One task's data, resident on the device.

  x_*: (N, 28, 28, 1) float32 pixels in [-1, 1]; t_*: (N, C) float32 dense
  targets in original units (tasks.make_targets). target_mean / target_std:
  the TRAIN targets' mean and population std (regression standardisation).
  """
  x_train: jax.Array
  t_train: jax.Array
  x_valid: jax.Array
  t_valid: jax.Array
  x_test: jax.Array
  t_test: jax.Array
  target_mean: float
  target_std: float

  @classmethod
  def from_split(cls, split, task: str) -> "TaskData":
    t_train = tasks_lib.make_targets(task, split.y_train)
    return cls(
        x_train=jnp.asarray(split.x_train), t_train=jnp.asarray(t_train),
        x_valid=jnp.asarray(split.x_valid),
        t_valid=jnp.asarray(tasks_lib.make_targets(task, split.y_valid)),
        x_test=jnp.asarray(split.x_test),
        t_test=jnp.asarray(tasks_lib.make_targets(task, split.y_test)),
        target_mean=float(np.mean(t_train)), target_std=float(np.std(t_train)))


@dataclasses.dataclass
class MemberResult:
  """What one member produced (host side, plain Python / numpy)."""
  cell: Cell
  seed: int
  best_valid: float
  test: float
  best_epoch: int
  epochs_trained: int
  status: str
  status_reason: str | None
  status_epoch: int | None
  train_loss: list[float]
  valid_metric: list[float]
  n_infinite_valid: int
  n_infinite_test: int
  diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Snapshot:
  """Everything `Engine.run` needs to go on with a task after `epoch` epochs.

  Built on the host (numpy) between epochs by `Engine.run` for its
  `on_epoch_end` hook; `Engine.run(data, restore=snapshot)` continues from it
  with bitwise the same state (see checkpoint.py for the files).

  Attributes:
    epoch: epochs completed.
    state: the full-size training state in the original member order, as
      numpy arrays; PRNG key arrays are replaced by their raw key data
      (`jax.random.key_data`).
    stacked: (M,) bool, the members stacked in the current layout (all of
      them without compaction).
    compactions: compactions so far (each one compiled a layout).
    hist_loss, hist_valid, hist_trained, hist_inf: (max_epochs, M) per-epoch
      histories of every member (train loss, valid metric, trained in that
      epoch, non-finite valid predictions).
    hist_diag: name -> (max_epochs, M, ...) per-epoch diagnostics
      (`Engine.diagnostic_shapes`).
  """
  epoch: int
  state: dict[str, Any]
  stacked: np.ndarray
  compactions: int
  hist_loss: np.ndarray
  hist_valid: np.ndarray
  hist_trained: np.ndarray
  hist_inf: np.ndarray
  hist_diag: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def state_to_host(state: dict[str, Any]) -> dict[str, Any]:
  """A host copy of a training state: numpy arrays, PRNG keys as their key data."""
  raw = jax.tree_util.tree_map(
      lambda a: jax.random.key_data(a) if sharding.is_key(a) else a, state)
  return jax.tree_util.tree_map(lambda a: np.array(a, copy=True), sharding.to_host(raw))


def state_from_host(host: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
  """The device state of `state_to_host`'s output, with the avals of `template`.

  Keys are wrapped back with the template's key implementation; weakly typed
  leaves stay weakly typed (so the epoch function is not traced again).
  Raises ValueError if the structure, a shape or a dtype differs.
  """
  t_leaves, treedef = jax.tree_util.tree_flatten(template)
  h_leaves, h_def = jax.tree_util.tree_flatten(host)
  if h_def != treedef:
    raise ValueError(f"state structure differs: {h_def} vs {treedef}")

  def one(h, t):
    h = np.asarray(h)
    if sharding.is_key(t):
      want = jax.random.key_data(t)
      if h.shape != want.shape or h.dtype != want.dtype:
        raise ValueError(f"key data {h.shape} {h.dtype}, expected {want.shape} {want.dtype}")
      return jax.random.wrap_key_data(jnp.asarray(h), impl=jax.random.key_impl(t))
    if h.shape != t.shape or h.dtype != t.dtype:
      raise ValueError(f"array {h.shape} {h.dtype}, expected {t.shape} {t.dtype}")
    return t.at[...].set(h) if t.weak_type else jnp.asarray(h)

  return treedef.unflatten([one(h, t) for h, t in zip(h_leaves, t_leaves)])


# ---------------------------------------------------------------------------
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


def prior_output_bias(cell: Cell, t_train: np.ndarray, mean: float, std: float) -> np.ndarray:
  """(C,) the output bias of head_bias_init="prior": the targets' mean through the link.

  The link is the function between the output layer and the loss's
  probabilities or values: the head where it is a sigmoid or a softmax, else
  what the loss applies (cce: a softmax, bce_logits: a sigmoid), else none.
  With p the mean over training examples of the targets the loss sees
  (`train_targets`), the bias is logit(p) for a sigmoid, log(p) for a
  softmax and p itself otherwise, so that a network whose last weights
  contribute nothing predicts the prior (Lin et al. 2017, Focal Loss,
  section 3.3). p is kept in [1e-6, 1 - 1e-6] for the logarithms.
  """
  p = np.mean(np.asarray(train_targets(cell, jnp.asarray(t_train), mean, std)), axis=0)
  link = cell.head if cell.head in ("sigmoid", "softmax") else {
      "cce": "softmax", "bce_logits": "sigmoid"}.get(cell.loss, "none")
  if link == "none":
    return p.astype(np.float32)
  q = np.clip(p, 1e-6, 1 - 1e-6)
  return (np.log(q) - np.log1p(-q) if link == "sigmoid" else np.log(q)).astype(np.float32)


# ---------------------------------------------------------------------------


def branch_cell(cell: Cell) -> Cell:
  """`cell` as the traced program sees it: the initialisation changes only the initial weights.

  Cells equal up to their `init` compute the same epoch from their state, so
  "loop" mode compiles one branch of its member switch for all of them.
  """
  return dataclasses.replace(cell, init="torch")


def _where_members(mask: jax.Array, new, old):
  """Per member: new where mask[m] else old, for pytrees stacked on axis 0."""
  def pick(a, b):
    return jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
  return jax.tree_util.tree_map(pick, new, old)


def _all_finite_per_member(tree) -> jax.Array:
  """(M,) bool: every leaf of member m is finite. Leaves (M, ...)."""
  # sum(x * 0) is 0 if every x is finite and NaN otherwise (inf * 0 is NaN, and
  # a sum keeps a NaN). On XLA:CPU it is one fused reduction; all(isfinite(x))
  # wrote a bool array and reduced it in stages, about 2% of a training step
  # (measured 2026-11-30). Not max |x|: XLA:CPU's fused max-reduction drops NaNs.
  leaves = jax.tree_util.tree_leaves(tree)
  zeros = [jnp.sum(l.reshape(l.shape[0], -1) * 0.0, axis=1) for l in leaves]
  return jnp.isfinite(jnp.stack(zeros)).all(axis=0)


def _take_members(state: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
  """The training state of the stacked members at positions `idx` (the epoch is shared)."""
  return {k: v if k == "epoch" else jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), v)
          for k, v in state.items()}


def _network_groups(groups: tuple[tuple[Cell, int, int], ...]
                    ) -> list[tuple[tuple[str, bool, int], int, int]]:
  """Consecutive cell slices with the same network merged: [(cell.network, start, stop)]."""
  out: list[tuple[tuple[str, bool, int], int, int]] = []
  for cell, a, b in groups:
    if out and out[-1][0] == cell.network and out[-1][2] == a:
      out[-1] = (cell.network, out[-1][1], b)
    else:
      out.append((cell.network, a, b))
  return out


def _vmap_members(fn: Callable, in_axes) -> Callable:
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


def _slice_members(tree, a: int, b: int):
  return jax.tree_util.tree_map(lambda l: l[a:b], tree)


def layer_names(depth: int) -> list[str]:
  """The names of the layers whose norms are recorded, input to output."""
  return ["conv1", "conv2", "conv3"] + [f"hidden{i + 1}" for i in range(depth)] + ["out"]


def _layer_sq_norms(tree, depth: int) -> jax.Array:
  """(M, L) squared L2 norms of each layer's kernel and bias, for params stacked on axis 0.

  L = len(layer_names(depth)); batch-norm scales and shifts are not included.
  """
  def sq(sub):
    return sum(jnp.sum(jnp.square(l.reshape(l.shape[0], -1)), axis=1)
               for l in jax.tree_util.tree_leaves(sub))
  cols = ([sq(tree[k]) for k in ("conv1", "conv2", "conv3")]
          + [sq(tree["hidden"][i]) for i in range(depth)] + [sq(tree["out"])])
  return jnp.stack(cols, axis=1)


def _put_members(full: dict[str, Any], part: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
  """`full` with its members at positions `idx` replaced by the stacked `part`."""
  return {k: part[k] if k == "epoch" else
          jax.tree_util.tree_map(lambda a, b: a.at[idx].set(b), full[k], part[k])
          for k in full}


class _OneMember:
  """The layout of ONE member whose cell is chosen at run time ("loop" mode).

  Where a static layout is a tuple of per-cell slices (cell, start, stop),
  this holds `index`, a traced int32 into `cells`; `Engine._per_cell` runs the
  cell-specific code through `lax.switch` on it.
  """

  def __init__(self, index: jax.Array, cells: tuple[Cell, ...]):
    self.index, self.cells = index, cells


class Engine:
  """Trains members (cell, seed) of ONE task together.

  Usage:
    engine = Engine(task, members, config)
    results = engine.run(data)
    # resumable: engine.run(data, restore=snapshot, on_epoch_end=hook), see `run`

  `engine.traces` counts how often the epoch function was traced, over all
  layouts: one compilation per task (it stays 1 however many epochs run),
  plus one per compaction with `config.compact`.
  """

  def __init__(self, task: str, members: Sequence[tuple[Cell, int]],
               config: EngineConfig = EngineConfig(),
               progress: Callable[[str], None] | None = None):
    self.task = tasks_lib.get_task(task)
    if not members:
      raise ValueError("no members to train")
    for cell, _ in members:
      if cell.task != self.task.name:
        raise ValueError(f"member cell {cell.key} is not of task {task!r}")
    # Group members by cell, and cells by network (so that each network's dense
    # part is one vmapped call over a contiguous slice), keeping first appearances.
    order = list(dict.fromkeys(c for c, _ in members))
    nets = list(dict.fromkeys(c.network for c in order))
    order.sort(key=lambda c: nets.index(c.network))
    self.members = [(c, s) for c0 in order for c, s in members if c == c0]
    # Stacked members: the real ones, then copies of the last one up to a multiple of the
    # device count (sharding.py); the copies are never reported.
    self.mesh = sharding.member_mesh()
    self._stacked = sharding.pad_members(self.members, self.mesh.size)
    self.groups = self._layout_groups(range(len(self._stacked)))
    self.config = config
    self.progress = progress or logging.info
    self.loss_fns = {c: losses_lib.get_loss(c.head, c.loss, c.convention)
                     for c in dict.fromkeys(order + [branch_cell(c) for c in order])}
    self.tx = make_optimizer(config)
    if config.head_bias_init not in HEAD_BIAS_INITS:
      raise ValueError(f"unknown head_bias_init {config.head_bias_init!r}: choose one of "
                       f"{', '.join(HEAD_BIAS_INITS)}")
    # The program's network carries the most dense layers any member uses, and
    # batch-norm layers if any member uses them (see model.CNN).
    self.max_depth = max(c.depth for c in order)
    self.has_batch_norm = any(c.batch_norm for c in order)
    if config.conv not in model_lib.CONV_IMPLS:
      raise ValueError(f"unknown conv {config.conv!r}: choose one of "
                       f"{', '.join(model_lib.CONV_IMPLS)}")
    abstract = nnx.eval_shape(lambda: self._make_model(jax.random.key(0), order[0]))
    self.graphdef, _, _ = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    if config.member_mode not in MEMBER_MODES:
      raise ValueError(f"unknown member_mode {config.member_mode!r}: choose one of "
                       f"{', '.join(MEMBER_MODES)}")
    platform = self.mesh.devices.flat[0].platform
    mode = config.member_mode
    if mode == "auto":
      mode = "loop" if platform == "cpu" and self.mesh.size == 1 else "vmap"
    if mode == "loop" and self.mesh.size > 1:
      raise ValueError(f"member_mode 'loop' runs on one device, this run has "
                       f"{self.mesh.size}: use 'vmap' (or 'auto') to shard the members")
    self.member_mode = mode
    self.eval_rows = config.eval_examples or (32 if platform == "cpu" else 4096)
    # "loop" mode: the distinct branches of the member switch, and each stacked member's
    # index into them. Cells that differ only in their initialisation share a branch.
    self.branches = tuple(dict.fromkeys(branch_cell(c) for c in order))
    self._cell_index = np.asarray([self.branches.index(branch_cell(c)) for c, _ in self._stacked],
                                  np.int32)
    self.traces = 0
    self.compactions = 0             # in the task's whole history, restored runs included
    self._precise = functools.partial(with_matmul_precision, precision=config.matmul_precision)
    self._epoch_fn = jax.jit(self._precise(self._epoch_loop if mode == "loop" else self._epoch),
                             donate_argnums=(0,))                # all members
    self._layout_epoch_fns: dict[tuple, Callable] = {}           # compacted layouts
    self._test_fn = jax.jit(self._precise(self._test))
    self._max_derivative = {h: model_lib.max_derivative(h)
                            for h in dict.fromkeys(c.hidden for c in order)}

  @property
  def num_members(self) -> int:
    return len(self.members)

  def _layout_groups(self, indices: Sequence[int]) -> tuple[tuple[Cell, int, int], ...]:
    """Static per-cell slices (cell, start, stop) of the stacked members `indices`.

    `indices` are increasing positions in `self._stacked` (`self.members`, then
    its pads; grouped by cell), so each cell's members are contiguous; cells
    without a member in `indices` have no slice.
    """
    groups, start = [], 0
    for cell, same in itertools.groupby(self._stacked[i][0] for i in indices):
      n = len(list(same))
      groups.append((cell, start, start + n))
      start += n
    return tuple(groups)

  def _layout_epoch_fn(self, groups: tuple[tuple[Cell, int, int], ...]) -> Callable:
    """The jitted epoch function of a compacted layout, cached per layout."""
    if groups not in self._layout_epoch_fns:
      self._layout_epoch_fns[groups] = jax.jit(
          self._precise(functools.partial(self._epoch, groups=groups)), donate_argnums=(0,))
    return self._layout_epoch_fns[groups]

  def _make_model(self, key, cell: Cell) -> model_lib.CNN:
    return model_lib.CNN(self.task.num_outputs, init=cell.init, hidden_activation=cell.hidden,
                         dense_layers=cell.depth, batch_norm=cell.batch_norm,
                         max_dense_layers=self.max_depth,
                         with_batch_norm=self.has_batch_norm, conv=self.config.conv,
                         rngs=nnx.Rngs(params=key))

  def diagnostic_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
    """name -> (per-member shape, dtype) of the diagnostics recorded every epoch.

    L = len(layer_names(max_depth)) layers, D = max_depth dense hidden layers
    (a member's values beyond its own depth are 0 and dropped from results):
      grad_norm (L,): root mean square over the epoch's updates of the
        per-batch gradient L2 norm of each layer's kernel + bias;
      grad_norm_first (L,): the same for the epoch's first batch only (in
        epoch 0: the gradient at initialisation);
      param_norm (L,): each layer's parameter L2 norm after the epoch;
      saturated (D,), dead (D,): fraction of units of each hidden layer that
        are saturated / dead on the valid set (SATURATION_RATIO, _SHARE);
      mean_abs_pre (D,): mean |pre-activation| of each hidden layer on the valid set;
      spread (): std over valid examples of the head's outputs (the space the
        loss sees), averaged over outputs, divided by the same for the
        targets: about 0 for a constant predictor;
      head_saturated (): share of valid examples on which the head is
        saturated (losses.HEAD_SATURATION): in the torch convention, 1 means that no
        gradient passes the head on any example;
      argmax_minority (): share of valid examples whose argmax is not the most
        frequent one (0 for a constant predictor; NaN for single-output tasks).
    """
    nl, d = len(layer_names(self.max_depth)), self.max_depth
    f32 = np.float32
    return {"grad_norm": ((nl,), f32), "grad_norm_first": ((nl,), f32),
            "param_norm": ((nl,), f32), "saturated": ((d,), f32), "dead": ((d,), f32),
            "mean_abs_pre": ((d,), f32), "spread": ((), f32), "head_saturated": ((), f32),
            "argmax_minority": ((), f32)}

  def _per_cell(self, groups, fn: Callable, *args):
    """`fn(static_groups, *args)` for a layout: called as is for static groups;
    for a `_OneMember`, through `lax.switch` over its candidate cells, each
    branch `fn(((cell, 0, 1),), *args)`, so only the member's own cell runs."""
    if not isinstance(groups, _OneMember):
      return fn(groups, *args)
    branches = [functools.partial(fn, ((c, 0, 1),)) for c in groups.cells]
    if len(branches) == 1:
      return branches[0](*args)
    return jax.lax.switch(groups.index, branches, *args)

  def _trunk(self, params, stats, x):
    """The conv trunk of every stacked member: x (M, B, 28, 28, 1), or
    (B, 28, 28, 1) shared -> features (M, B, 1024)."""
    return _vmap_members(lambda p, s, xx: nnx.merge(self.graphdef, p, s).trunk(xx),
                         in_axes=(0, 0, None if x.ndim == 4 else 0))(params, stats, x)

  def _dense(self, groups, params, stats, feats, mask=None, *, train: bool):
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
    for (hidden, batch_norm, depth), a, b in _network_groups(groups):
      def one(p, s, f, mk, hidden=hidden, batch_norm=batch_norm, depth=depth):
        model = nnx.merge(self.graphdef, p, s)
        z, pre = model.dense(f, activation=hidden, depth=depth, batch_norm=batch_norm,
                             train=train, mask=mk)
        pre = jnp.stack(pre + [jnp.zeros_like(pre[0])] * (self.max_depth - depth))
        return z, pre, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
      z, pre, st = _vmap_members(one, in_axes=(0, 0, 0, None if mask is None else 0))(
          _slice_members(params, a, b), _slice_members(stats, a, b), feats[a:b],
          None if mask is None else mask[a:b] > 0)
      zs.append(z)
      pres.append(pre)
      new_stats.append(st)
    cat = lambda *xs: jnp.concatenate(xs, axis=0)
    return (cat(*zs), cat(*pres),
            jax.tree_util.tree_map(cat, *new_stats) if self.has_batch_norm else stats)

  # -- state ---------------------------------------------------------------

  def state_template(self) -> dict[str, Any]:
    """ShapeDtypeStructs of `init_state`'s output (they do not depend on the data)."""
    return jax.eval_shape(lambda: self.init_state(_shapes_only=True))

  def init_state(self, data: TaskData | None = None, *, _shapes_only: bool = False
                 ) -> dict[str, Any]:
    """The stacked training state; member m's keys come from its seed alone.

    `data` gives the training targets' mean for `head_bias_init="prior"`
    (ValueError without it); the "torch" bias needs none.
    """
    seeds = jnp.asarray([s for _, s in self.members], jnp.uint32)
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s)))(seeds)
    init_keys, shuffle_keys = keys[:, 0], keys[:, 1]
    parts = []
    for cell, a, b in self._layout_groups(range(self.num_members)):   # static init and depth
      def make(k, cell=cell):
        _, p, st = nnx.split(self._make_model(k, cell), nnx.Param, nnx.BatchStat)
        return nnx.to_pure_dict(p), nnx.to_pure_dict(st)
      parts.append(jax.vmap(make)(init_keys[a:b]))
    params, stats = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)
    if self.config.head_bias_init == "prior" and not _shapes_only:
      params = self._with_prior_bias(params, data)
    m = self.num_members
    extra = dict(stats=stats, best_stats=jax.tree_util.tree_map(jnp.copy, stats)
                 ) if self.has_batch_norm else {}
    return dict(
        **extra,
        params=params,
        opt_state=jax.vmap(self.tx.init)(params),
        best_params=jax.tree_util.tree_map(jnp.copy, params),
        best_score=jnp.full((m,), -jnp.inf, jnp.float32),
        best_epoch=jnp.full((m,), -1, jnp.int32),
        active=jnp.ones((m,), bool),
        status=jnp.full((m,), Status.TRAINING, jnp.int32),
        status_epoch=jnp.full((m,), -1, jnp.int32),
        epochs_trained=jnp.zeros((m,), jnp.int32),
        shuffle_keys=shuffle_keys,
        epoch=jnp.zeros((), jnp.int32),
    )

  def _with_prior_bias(self, params: dict[str, Any], data: TaskData | None) -> dict[str, Any]:
    """`params` with every member's output bias set to its cell's `prior_output_bias`."""
    if data is None:
      raise ValueError('head_bias_init="prior" needs the task\'s data: init_state(data)')
    t_train = np.asarray(data.t_train)
    bias = np.stack([prior_output_bias(cell, t_train, data.target_mean, data.target_std)
                     for cell, _ in self.members])
    out = dict(params["out"], bias=jnp.asarray(bias, params["out"]["bias"].dtype))
    return dict(params, out=out)

  # -- the pure, jitted parts ------------------------------------------------

  def _member_losses(self, params, stats, x, t, mask, mean, std, groups):
    """Per-member batch losses (M,), input validity (M,) and new batch-norm stats, x (M, B, ...)."""
    feats = self._trunk(params, stats, x)

    def dense_and_loss(groups, params, stats, feats, t, mask):
      z, _, new_stats = self._dense(groups, params, stats, feats, mask, train=True)
      losses, valid = [], []
      for cell, a, b in groups:
        fn = self.loss_fns[cell]
        tt = train_targets(cell, t[a:b], mean, std)
        pe = jax.vmap(fn.per_example)(z[a:b], tt)                        # (S, B)
        mean_pe = jnp.sum(pe * mask[a:b], axis=1) / jnp.sum(mask[a:b], axis=1)
        losses.append(jax.vmap(fn.finalize)(mean_pe))
        if fn.valid_input is None:
          valid.append(jnp.ones((b - a,), bool))
        else:
          ok = jax.vmap(fn.valid_input)(z[a:b])                          # (S, B)
          valid.append(jnp.all(ok | (mask[a:b] == 0), axis=1))
      return jnp.concatenate(losses), jnp.concatenate(valid), new_stats

    return self._per_cell(groups, dense_and_loss, params, stats, feats, t, mask)

  def _epoch(self, state, data: TaskData, groups=None):
    """One epoch of every stacked member: (new state, per-member metrics).

    `groups` are the static per-cell slices of the stacked members (a
    compacted layout); None means all members (`self.groups`).
    """
    self.traces += 1
    cfg = self.config
    groups = self.groups if groups is None else groups
    m = state["best_score"].shape[0]
    n = data.x_train.shape[0]
    nb = -(-n // cfg.batch_size)
    epoch = state["epoch"]
    perms = jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), n))(
        state["shuffle_keys"])                                          # (M, N)
    pad = nb * cfg.batch_size - n
    perms = jnp.pad(perms, ((0, 0), (0, pad)))
    masks = jnp.pad(jnp.ones((m, n), jnp.float32), ((0, 0), (0, pad)))
    perms = perms.reshape(m, nb, cfg.batch_size).swapaxes(0, 1)
    masks = masks.reshape(m, nb, cfg.batch_size).swapaxes(0, 1)
    mean, std = data.target_mean, data.target_std
    stats = state.get("stats", {})
    nl = len(layer_names(self.max_depth))

    def grad_fn(params, stats, x, t, mask):
      def total(p):
        l, v, st = self._member_losses(p, stats, x, t, mask, mean, std, groups)
        return jnp.sum(jnp.where(jnp.isfinite(l), l, 0.0)), (l, v, st)
      return jax.grad(total, has_aux=True)(params)

    def step(carry, batch):
      (params, stats, opt_state, active, status, status_epoch, loss_sum, grad_sq,
       grad_first) = carry
      idx, mask, i = batch
      x, t = data.x_train[idx], data.t_train[idx]
      grads, (loss, valid, new_stats) = grad_fn(params, stats, x, t, mask)
      updates, new_opt = jax.vmap(self.tx.update)(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      finite = jnp.isfinite(loss) & _all_finite_per_member(new_params)
      invalid_now = active & ~valid
      nonfinite_now = active & valid & ~finite
      apply = active & valid & finite
      params = _where_members(apply, new_params, params)
      stats = _where_members(apply, new_stats, stats)
      opt_state = _where_members(apply, new_opt, opt_state)
      status = jnp.where(invalid_now, Status.INVALID, status)
      status = jnp.where(nonfinite_now, Status.NONFINITE, status)
      status_epoch = jnp.where(invalid_now | nonfinite_now, epoch, status_epoch)
      loss_sum = loss_sum + jnp.where(apply, loss, 0.0)
      g2 = _layer_sq_norms(grads, self.max_depth)                      # (M, L)
      grad_sq = grad_sq + jnp.where(apply[:, None], g2, 0.0)
      grad_first = jnp.where(i == 0, jnp.sqrt(g2), grad_first)
      return (params, stats, opt_state, apply, status, status_epoch, loss_sum, grad_sq,
              grad_first), apply

    zeros_ml = jnp.zeros((m, nl), jnp.float32)
    carry = (state["params"], stats, state["opt_state"], state["active"], state["status"],
             state["status_epoch"], jnp.zeros((m,), jnp.float32), zeros_ml, zeros_ml)
    carry, applied = jax.lax.scan(step, carry, (perms, masks, jnp.arange(nb)))
    params, stats, opt_state, still, status, status_epoch, loss_sum, grad_sq, grad_first = carry
    train_loss = loss_sum / nb
    n_applied = jnp.sum(applied, axis=0)                                # (M,)
    grad_norm = jnp.sqrt(grad_sq / jnp.maximum(n_applied, 1)[:, None])

    valid_metric, n_inf, diag = self._evaluate(params, stats, data.x_valid, data.t_valid,
                                               mean, std, groups, diagnostics=True)
    diag.update(grad_norm=grad_norm, grad_norm_first=grad_first,
                param_norm=jnp.sqrt(_layer_sq_norms(params, self.max_depth)))
    score = valid_metric if self.task.higher_is_better else -valid_metric
    score = jnp.where(jnp.isnan(score), -jnp.inf, score)
    improved = still & (score > state["best_score"])
    best_score = jnp.where(improved, score, state["best_score"])
    best_epoch = jnp.where(improved, epoch, state["best_epoch"])
    best_params = _where_members(improved, params, state["best_params"])
    extra = dict(stats=stats, best_stats=_where_members(improved, stats, state["best_stats"])
                 ) if self.has_batch_norm else {}
    stop = still & (epoch - best_epoch >= cfg.patience)
    status = jnp.where(stop, Status.OK, status)
    status_epoch = jnp.where(stop, epoch, status_epoch)
    epochs_trained = jnp.where(still, epoch + 1, state["epochs_trained"])
    new_state = dict(
        **extra, params=params, opt_state=opt_state, best_params=best_params,
        best_score=best_score, best_epoch=best_epoch, active=still & ~stop,
        status=status, status_epoch=status_epoch, epochs_trained=epochs_trained,
        shuffle_keys=state["shuffle_keys"], epoch=epoch + 1)
    metrics = dict(train_loss=train_loss, valid_metric=valid_metric, n_infinite=n_inf,
                   trained=still, diag=diag)
    return new_state, metrics

  def _epoch_loop(self, state, data: TaskData):
    """`_epoch` in "loop" mode: the stacked members one after another.

    Each member runs its whole epoch (training scan and valid pass) as a
    one-member layout whose cell is picked at run time (`_OneMember`); a
    member that stopped before this epoch is skipped: its state is returned
    unchanged, its metrics are NaN and `trained` is False (the host keeps a
    member's histories for its trained epochs only, in both modes).
    """
    epoch = state["epoch"]
    diag_shapes = self.diagnostic_shapes()

    def one(st, layout):
      def train(st):
        new, metrics = self._epoch(dict(st, epoch=epoch), data, layout)
        del new["epoch"]
        return new, metrics

      def skip(st):
        nan = jnp.full((1,), jnp.nan, jnp.float32)
        return st, dict(train_loss=nan, valid_metric=nan,
                        n_infinite=jnp.zeros((1,), jnp.int32), trained=jnp.zeros((1,), bool),
                        diag={k: jnp.full((1,) + shape, jnp.nan, dtype)
                              for k, (shape, dtype) in diag_shapes.items()})

      return jax.lax.cond(st["active"][0], train, skip, st)

    new, metrics = self._each_member(one, {k: v for k, v in state.items() if k != "epoch"})
    return dict(new, epoch=epoch + 1), metrics

  def _each_member(self, fn: Callable, stacked):
    """`lax.map` over the stacked members: `fn(member, layout)` one member at a time.

    `member` is `stacked` cut to that member, with a member axis of size 1;
    `layout` its `_OneMember`. `fn`'s outputs have that axis too; the result
    stacks them over all members.
    """
    def one(args):
      member, index = args
      out = fn(jax.tree_util.tree_map(lambda a: a[None], member), _OneMember(index, self.branches))
      return jax.tree_util.tree_map(lambda a: a[0], out)
    return jax.lax.map(one, (stacked, jnp.asarray(self._cell_index)))

  def _test(self, params, x, t, mean, std, stats=None):
    """(metric (M,), non-finite predictions (M,)) of parameters stacked like the state's."""
    stats = {} if stats is None else stats
    if self.member_mode == "vmap":
      return self._evaluate(params, stats, x, t, mean, std)[:2]

    return self._each_member(
        lambda ps, layout: self._evaluate(*ps, x, t, mean, std, layout)[:2], (params, stats))

  def _evaluate(self, params, stats, x, t, mean, std, groups=None, diagnostics=False):
    """Metric (M,), count of non-finite predictions (M,) and diagnostics on (x, t).

    Runs in chunks of examples (`lax.scan`) so memory stays bounded; the last
    chunk is padded and masked. `groups` as in `_epoch` (None: all members).
    With `diagnostics`, the third value holds the valid-set entries of
    `diagnostic_shapes` (saturated, dead, mean_abs_pre, spread,
    head_saturated, argmax_minority), each (M, ...); else it is {}.
    """
    groups = self.groups if groups is None else groups
    m = jax.tree_util.tree_leaves(params)[0].shape[0]
    n = x.shape[0]
    c = t.shape[-1]
    target = max(8, min(n, self.eval_rows // m))
    nc = -(-n // target)
    chunk = -(-n // nc)                    # balanced chunks: the padding stays below nc rows
    pad = nc * chunk - n
    # Padded as rows of pixels: padding the (n, 28, 28, 1) images themselves got a
    # layout that XLA:CPU then copied, about 10 ms of every epoch's valid pass.
    xs = jnp.pad(x.reshape(n, -1), ((0, pad), (0, 0))).reshape((nc, chunk, -1))
    ts = jnp.pad(t, ((0, pad), (0, 0))).reshape(nc, chunk, t.shape[-1])
    ms = jnp.pad(jnp.ones((n,), jnp.float32), (0, pad)).reshape(nc, chunk)
    width = model_lib.HIDDEN_WIDTH
    cat = lambda xs: jnp.concatenate(xs, axis=0)

    def chunk_stats(groups, params, stats, feats, tc, mc):
      """Per-chunk sums of one layout (static groups), from the trunk's features."""
      z, pre, _ = self._dense(groups, params, stats, feats, train=False)  # (M, chunk, C)
      scores, infs, outs, heads = [], [], [], []
      for cell, a, b in groups:
        pred = predictions(cell, z[a:b], mean, std)
        s = tasks_lib.per_example_score(self.task.name, pred, tc[None])
        scores.append(jnp.sum(s * mc, axis=1))
        bad = jnp.any(~jnp.isfinite(pred), axis=-1)
        infs.append(jnp.sum(bad * mc, axis=1))
        outs.append(losses_lib.apply_head(cell.head, z[a:b]))
        heads.append(losses_lib.head_jacobian_max(cell.head, z[a:b]))       # (Mg, chunk)
      res = dict(score=cat(scores), inf=cat(infs))
      if diagnostics:
        # Hidden units, on the pre-activations (M, D, chunk, width).
        deriv = cat([model_lib.activation_derivative(hidden, pre[a:b])
                     / self._max_derivative[hidden]
                     for (hidden, _, _), a, b in _network_groups(groups)])   # (M, D, chunk, W)
        w = mc[None, None, :, None]
        res["sat"] = jnp.sum((deriv < SATURATION_RATIO) * w, axis=2)        # (M, D, W)
        res["zero"] = jnp.sum((deriv == 0) * w, axis=2)
        res["abs"] = jnp.sum(jnp.abs(pre) * w, axis=(2, 3))                  # (M, D)
        res["out"] = cat(outs)                                               # (M, chunk, C)
        res["head_sat"] = jnp.sum((cat(heads) <= losses_lib.HEAD_SATURATION) * mc, axis=1)   # (M,)
      return res

    def one(carry, args):
      xc, tc, mc = args
      xc = xc.reshape((-1,) + x.shape[1:])
      feats = self._trunk(params, stats, xc)
      res = self._per_cell(groups, chunk_stats, params, stats, feats, tc, mc)
      new = dict(score=carry["score"] + res["score"], inf=carry["inf"] + res["inf"])
      if diagnostics:
        for k in ("sat", "zero", "abs", "head_sat"):
          new[k] = carry[k] + res[k]
        # Output moments per output, merged over chunks (Chan et al.'s update).
        out = res["out"]
        wc = mc[None, :, None]
        n_c = jnp.sum(mc)
        mean_c = jnp.sum(out * wc, axis=1) / n_c
        m2_c = jnp.sum(jnp.square(out - mean_c[:, None]) * wc, axis=1)
        n_a = carry["n"]
        delta = mean_c - carry["mean"]
        new["n"] = n_a + n_c
        new["mean"] = carry["mean"] + delta * n_c / new["n"]
        new["m2"] = carry["m2"] + m2_c + jnp.square(delta) * n_a * n_c / new["n"]
        new["hist"] = carry["hist"] + jnp.sum(
            jax.nn.one_hot(jnp.argmax(out, axis=-1), c) * wc, axis=1)          # (M, C)
      return new, None

    d = self.max_depth
    carry = dict(score=jnp.zeros((m,), jnp.float32), inf=jnp.zeros((m,), jnp.float32))
    if diagnostics:
      carry.update(sat=jnp.zeros((m, d, width)), zero=jnp.zeros((m, d, width)),
                   abs=jnp.zeros((m, d)), head_sat=jnp.zeros((m,)), n=jnp.zeros(()),
                   mean=jnp.zeros((m, c)),
                   m2=jnp.zeros((m, c)), hist=jnp.zeros((m, c)))
    acc, _ = jax.lax.scan(one, carry, (xs, ts, ms))
    metric, n_inf = acc["score"] / n, acc["inf"].astype(jnp.int32)
    if not diagnostics:
      return metric, n_inf, {}
    target_spread = self._per_cell(groups, lambda groups, t: cat([
        jnp.full((b - a,), jnp.mean(jnp.std(train_targets(cell, t, mean, std), axis=0)))
        for cell, a, b in groups]), t)
    spread = jnp.mean(jnp.sqrt(acc["m2"] / n), axis=1) / jnp.maximum(target_spread, 1e-12)
    minority = (n - jnp.max(acc["hist"], axis=1)) / n
    diag = dict(
        saturated=jnp.mean(acc["sat"] >= SATURATION_SHARE * n, axis=2),
        dead=jnp.mean(acc["zero"] == n, axis=2),
        mean_abs_pre=acc["abs"] / (n * width),
        spread=spread,
        head_saturated=acc["head_sat"] / n,
        argmax_minority=minority if self.task.single_label else jnp.full((m,), jnp.nan))
    return metric, n_inf, diag

  # -- the host loop -------------------------------------------------------

  def run(self, data: TaskData, restore: Snapshot | None = None,
          on_epoch_end: Callable[[int, Callable[[], Snapshot]], None] | None = None,
          on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
          ) -> list[MemberResult]:
    """Trains every member to its early stop (or the cap); returns per-member results.

    With `config.compact`, after an epoch in which at most half of the
    stacked members are still training, the state is cut down to those
    members (`layout` maps stacked position -> index in `self.members`) and
    the others' final state is kept in `full`, the full-size state in the
    original member order, which the test pass and `final_state` use.

    The state lives on `self.mesh` (sharding.py): stacked positions are the
    real members then the pads; a compacted layout is padded with stopped
    members to a multiple of the device count. Snapshots, `final_state` and
    the results hold the real members only.

    Args:
      data: the task's data.
      restore: a `Snapshot` to continue from instead of starting at epoch 0
        (its compacted layout, if any, is rebuilt and compiled again).
      on_epoch_end: called on the host after every epoch that does not end the
        run, as `on_epoch_end(epochs_done, snapshot)`, after any compaction;
        `snapshot()` builds the `Snapshot` of that moment (a host copy; call it
        only when you need it). The engine does no file I/O itself.
      on_epoch: called on the host after EVERY epoch (the last one included,
        before `on_epoch_end`), as `on_epoch(epochs_done, host)`, with what the
        loop fetched anyway; cheap, nothing is copied off the devices for it.
        `host` holds numpy arrays over the real members in `self.members`
        order, R of them, fresh copies the callee may keep:
          train_loss (R,) float32: mean training loss of the epoch (NaN for a
            member that did not train in it);
          valid_metric (R,) float32: the valid metric after it (NaN likewise);
          n_infinite (R,) int: non-finite valid predictions;
          trained (R,) bool: the member trained in this epoch;
          active (R,) bool: it is still training after it;
          status (R,) int: its `Status` so far (TRAINING while active);
          best_valid (R,) float32: its best valid metric so far, in the
            metric's units (NaN before any finite one);
          best_epoch (R,) int: the 0-based epoch of that best (-1: none);
          diag: name -> (R, ...) this epoch's diagnostics (`diagnostic_shapes`);
        and two floats: elapsed_s, the seconds since this call started, and
        eta_s, an estimate of the seconds until the task ends: the mean
        duration of the recent epochs (the first one, which compiles, left
        out once there are others) times the epochs until the last active
        member would stop if none improved again (capped by max_epochs). It
        is low while members still improve; 0.0 once none trains.
    """
    cfg = self.config
    r, m = self.num_members, len(self._stacked)   # real members; stacked, pads included
    data = sharding.replicate(data, self.mesh)
    state = self._initial_state(data)
    full = None                      # full-size state, from the first compaction on
    layout = np.arange(m)
    epoch_fn = self._epoch_fn
    active = np.ones((m,), bool)     # host copies over all members, for progress
    best = np.full((m,), -np.inf, np.float32)
    best_epoch = np.full((m,), -1, np.int64)
    status = np.full((m,), int(Status.TRAINING), np.int64)
    hist_loss = np.full((cfg.max_epochs, m), np.nan, np.float32)
    hist_valid = np.full((cfg.max_epochs, m), np.nan, np.float32)
    hist_trained = np.zeros((cfg.max_epochs, m), bool)
    hist_inf = np.zeros((cfg.max_epochs, m), np.int64)
    hist_diag = {name: np.full((cfg.max_epochs, m) + shape, np.nan, dtype)
                 for name, (shape, dtype) in self.diagnostic_shapes().items()}
    epoch = 0
    self.compactions = 0
    if restore is not None:
      for name, h in (("hist_loss", hist_loss), ("hist_valid", hist_valid),
                      ("hist_trained", hist_trained), ("hist_inf", hist_inf)):
        saved = getattr(restore, name)
        if saved.shape != (cfg.max_epochs, r) or saved.dtype != h.dtype:
          raise ValueError(f"snapshot {name} is {saved.shape} {saved.dtype}, "
                           f"expected {(cfg.max_epochs, r)} {h.dtype}")
        h[:, :r], h[:, r:] = saved, saved[:, -1:]       # pads: copies of the last member
      for name, h in hist_diag.items():
        saved = restore.hist_diag.get(name)
        if saved is None or saved.shape != (cfg.max_epochs, r) + h.shape[2:] or (
            saved.dtype != h.dtype):
          raise ValueError(f"snapshot diagnostics {name} missing or of another shape")
        h[:, :r], h[:, r:] = saved, saved[:, -1:]
      restored = sharding.shard_members(
          state_from_host(sharding.pad_leading(restore.state, m), state), self.mesh)
      layout = np.flatnonzero(np.asarray(restore.stacked, bool))
      if not 0 < len(layout) <= r:
        raise ValueError(f"snapshot stacks {len(layout)} of {r} members")
      if len(layout) < r and self.member_mode == "vmap":
        full = restored
        layout = sharding.pad_indices(layout, m, self.mesh.size)
        state = sharding.shard_members(_take_members(full, layout), self.mesh)
        epoch_fn = self._layout_epoch_fn(self._layout_groups(layout))
      else:
        layout = np.arange(m)
        state = restored
      active = sharding.pad_leading(np.asarray(restore.state["active"], bool), m).copy()
      best = sharding.pad_leading(np.asarray(restore.state["best_score"], np.float32), m).copy()
      best_epoch = sharding.pad_leading(np.asarray(restore.state["best_epoch"], np.int64), m).copy()
      status = sharding.pad_leading(np.asarray(restore.state["status"], np.int64), m).copy()
      epoch = int(restore.epoch)
      self.compactions = int(restore.compactions)

    def snapshot() -> Snapshot:
      now = dict(state) if full is None else _put_members(full, state, layout)
      stacked = np.zeros((m,), bool)
      stacked[layout] = True
      return Snapshot(epoch=epoch, state=state_to_host(sharding.unpad(now, r)),
                      stacked=stacked[:r], compactions=self.compactions,
                      hist_loss=hist_loss[:, :r].copy(), hist_valid=hist_valid[:, :r].copy(),
                      hist_trained=hist_trained[:, :r].copy(), hist_inf=hist_inf[:, :r].copy(),
                      hist_diag={k: v[:, :r].copy() for k, v in hist_diag.items()})

    start = last = time.perf_counter()
    durations = []                   # seconds of each epoch of this call, for the ETA
    sign = 1.0 if self.task.higher_is_better else -1.0
    pending = None                   # a layout compiling in the background (compact_in_background)
    while epoch < cfg.max_epochs:
      state, metrics = epoch_fn(state, data)
      host = sharding.to_host(dict(metrics, active=state["active"], best=state["best_score"],
                                   best_epoch=state["best_epoch"], status=state["status"]))
      hist_loss[epoch, layout] = host["train_loss"]
      hist_valid[epoch, layout] = host["valid_metric"]
      hist_trained[epoch, layout] = host["trained"]
      hist_inf[epoch, layout] = host["n_infinite"]
      for name, value in host["diag"].items():
        hist_diag[name][epoch, layout] = value
      active[layout] = host["active"]
      best[layout] = host["best"]
      best_epoch[layout] = host["best_epoch"]
      status[layout] = host["status"]
      epoch += 1
      now = time.perf_counter()
      durations.append(now - last)
      last = now
      # Epochs until the last active member would stop if no member improved again.
      left = 0 if not active[:r].any() else min(
          cfg.max_epochs - epoch,
          int(np.max(best_epoch[:r][active[:r]])) + cfg.patience + 1 - epoch)
      eta = float(np.mean((durations[1:] or durations)[-5:])) * left
      self.progress(self._progress_line(epoch, dict(active=active, best=best), now - start, eta))
      if on_epoch is not None:
        on_epoch(epoch, dict(
            train_loss=hist_loss[epoch - 1, :r].copy(),
            valid_metric=hist_valid[epoch - 1, :r].copy(),
            n_infinite=hist_inf[epoch - 1, :r].copy(), trained=hist_trained[epoch - 1, :r].copy(),
            active=active[:r].copy(), status=status[:r].copy(),
            best_valid=np.where(best_epoch[:r] >= 0, sign * best[:r], np.nan).astype(np.float32),
            best_epoch=best_epoch[:r].copy(),
            diag={k: v[epoch - 1, :r].copy() for k, v in hist_diag.items()},
            elapsed_s=now - start, eta_s=eta))
      n_active = int(host["active"].sum())
      if not active[:r].any():       # pads are not waited for
        break
      keep = sharding.pad_indices(np.flatnonzero(host["active"]), len(layout), self.mesh.size)
      compacting = cfg.compact and self.member_mode == "vmap" and epoch < cfg.max_epochs
      ready = None                   # positions in `layout` to compact to now
      if (compacting and pending is None and 2 * n_active <= len(layout)
          and len(keep) < len(layout)):
        if cfg.compact_in_background:
          # The compacted state of this moment gives the shapes and shardings only.
          fn = self._layout_epoch_fn(self._layout_groups(layout[keep]))
          shapes = sharding.shard_members(_take_members(state, keep), self.mesh)
          pending = keep, BackgroundCompile(
              lambda fn=fn, shapes=shapes: fn.lower(shapes, data).compile(),
              f"{self.task.name}: a layout of {len(keep)} members", "jaxact-compact-compile")
        else:
          ready = keep
      if compacting and pending is not None and pending[1].done():
        ready, pending = pending[0], None
      if ready is not None:
        full = state if full is None else _put_members(full, state, layout)
        state = sharding.shard_members(_take_members(state, ready), self.mesh)
        layout = layout[ready]
        epoch_fn = self._layout_epoch_fn(self._layout_groups(layout))
        self.compactions += 1
      if on_epoch_end is not None and epoch < cfg.max_epochs:
        on_epoch_end(epoch, snapshot)
    state = dict(state) if full is None else _put_members(full, state, layout)
    state["status"] = jnp.where(state["active"], Status.HIT_CAP, state["status"])
    self.final_state = sharding.unpad(state, r)
    test_metric, test_inf = sharding.to_host(self._test_fn(*self._test_args(state, data)))
    return self._collect(sharding.to_host(state), np.asarray(test_metric),
                         np.asarray(test_inf), hist_loss, hist_valid, hist_trained, hist_inf,
                         hist_diag, epoch)

  def _initial_state(self, data: TaskData | None = None) -> dict[str, Any]:
    """`init_state`, padded to the stacked members and placed on the mesh."""
    return sharding.shard_members(
        sharding.pad_leading(self.init_state(data), len(self._stacked)), self.mesh)

  @staticmethod
  def _test_args(state: dict[str, Any], data: TaskData) -> tuple:
    return (state["best_params"], data.x_test, data.t_test, data.target_mean,
            data.target_std, state.get("best_stats"))

  def compile_ahead(self, data: TaskData) -> None:
    """Compiles the programs `run(data)` starts with, so that `run` compiles nothing.

    Lowers and compiles the epoch of all members and the test pass for `data`'s
    shapes; jax keeps the executables in its in-memory cache, where `run`'s
    first calls find them (a snapshot restored into a compacted layout still
    compiles that layout). Builds and drops one initial state on the devices.

    Safe to call from a background thread while another engine trains: that
    is how `train_and_evaluate(..., compile_ahead=True)` hides a task's
    compilation behind the previous task's epochs.
    """
    state = self._initial_state(data)
    data = sharding.replicate(data, self.mesh)
    self._epoch_fn.lower(state, data).compile()
    self._test_fn.lower(*self._test_args(state, data)).compile()

  def _progress_line(self, epoch: int, host: dict, elapsed: float, eta: float) -> str:
    """One short line: the epoch, members training, time, ETA, the best and the worst cell.

    Its length does not grow with the grid (about 200 characters). The cells
    are ranked by the mean over their members of the best valid metric so
    far (members without a finite one left out), compared at 4 significant
    digits so that float rounding does not reorder ties. Times are formatted
    as '12.3s', '845s', then '1h02m' or '16m40s'.

    Args:
      epoch: epochs done.
      host: active (M,) bool and best (M,) the signed best score (higher is
        better; -inf before any), over the stacked members.
      elapsed: seconds since `run` started.
      eta: estimated seconds until the task ends (see `run`'s on_epoch).
    """
    def duration(s: float) -> str:
      if s < 10:
        return f"{s:.1f}s"
      if s < 1000:
        return f"{s:.0f}s"
      minutes, seconds = divmod(int(round(s)), 60)
      hours, minutes = divmod(minutes, 60)
      return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"

    def short(label: str, width: int = 60) -> str:
      return label if len(label) <= width else label[:width - 3] + "..."

    sign = 1.0 if self.task.higher_is_better else -1.0
    r = self.num_members             # the pads at the end of the last group are not shown
    n_active = int(host["active"][:r].sum())
    ranked = []                      # (signed rounded mean, position, label, mean)
    for i, (cell, a, b) in enumerate(self.groups):
      scores = host["best"][a:min(b, r)]
      scores = scores[np.isfinite(scores)]
      if a < r and scores.size:
        mean = sign * float(np.mean(scores))
        ranked.append((sign * float(f"{mean:.4g}"), -i, cell_label(cell, self.config), mean))
    metric = f"mean best valid {self.task.metric_name}"
    if not ranked:
      cells = f"{metric}: none yet"
    elif len(ranked) == 1:
      cells = f"{metric}: {short(ranked[0][2])} {ranked[0][3]:.4g}"
    else:
      hi, lo = max(ranked), min(ranked, key=lambda x: (x[0], -x[1]))
      cells = (f"{metric}: best {short(hi[2])} {hi[3]:.4g}, "
               f"worst {short(lo[2])} {lo[3]:.4g}")
    done = n_active == 0 or epoch >= self.config.max_epochs
    return (f"{self.task.name} epoch {epoch}: (cap {self.config.max_epochs}) "
            f"{n_active}/{r} training; elapsed {duration(elapsed)}; "
            f"{'done;' if done else f'eta ~{duration(eta)};'} {cells}")

  def _collect(self, state, test_metric, test_inf, hist_loss, hist_valid, hist_trained,
               hist_inf, hist_diag, epochs_run) -> list[MemberResult]:
    sign = 1.0 if self.task.higher_is_better else -1.0
    results = []
    for i, (cell, seed) in enumerate(self.members):
      status = Status(int(state["status"][i]))
      best_epoch = int(state["best_epoch"][i])
      trained = hist_trained[:epochs_run, i]
      reason = None
      status_epoch = int(state["status_epoch"][i])
      if status == Status.INVALID:
        reason = self.loss_fns[cell].invalid_reason
      elif status == Status.NONFINITE:
        reason = f"loss or parameters became non-finite in epoch {status_epoch}"
      elif status == Status.HIT_CAP:
        reason = f"still improving at the epoch cap ({self.config.max_epochs})"
        status_epoch = epochs_run - 1
      n_inf_valid = int(hist_inf[best_epoch, i]) if best_epoch >= 0 else 0
      results.append(MemberResult(
          cell=cell, seed=seed,
          best_valid=float(sign * state["best_score"][i]) if best_epoch >= 0 else float("nan"),
          test=float(test_metric[i]) if best_epoch >= 0 else float("nan"),
          best_epoch=best_epoch,
          epochs_trained=int(state["epochs_trained"][i]),
          status={Status.OK: "ok", Status.INVALID: "invalid", Status.NONFINITE: "nonfinite",
                  Status.HIT_CAP: "hit_cap", Status.TRAINING: "hit_cap"}[status],
          status_reason=reason,
          status_epoch=status_epoch if status_epoch >= 0 else None,
          train_loss=[float(v) for v in hist_loss[:epochs_run, i][trained]],
          valid_metric=[float(v) for v in hist_valid[:epochs_run, i][trained]],
          n_infinite_valid=n_inf_valid,
          n_infinite_test=int(test_inf[i]) if best_epoch >= 0 else 0,
          diagnostics=self._member_diagnostics(cell, hist_diag, i, trained),
      ))
    return results

  def _member_diagnostics(self, cell: Cell, hist_diag, i: int, trained) -> dict[str, Any]:
    """Member i's diagnostics over the epochs it trained, as lists, cut to its depth.

    Returns {"layers": names, name: [per-epoch value or per-layer list], ...},
    values rounded to 4 significant digits (None for NaN).
    """
    n = len(trained)
    keep_layers = list(range(3 + cell.depth)) + [3 + self.max_depth]
    out: dict[str, Any] = {"layers": layer_names(cell.depth)}
    for name, h in hist_diag.items():
      v = h[:n, i][trained]
      if v.ndim == 2:
        v = v[:, keep_layers] if v.shape[1] == 4 + self.max_depth else v[:, :cell.depth]
      out[name] = _round_list(v)
    return out


class BackgroundCompile:
  """Runs `compile_fn` (lowerings and compilations) in a thread; a failure is logged, not raised.

  For compilations that can overlap training: `Engine.run`'s smaller layouts
  (`compact_in_background`) and `train_and_evaluate`'s next task
  (`compile_ahead`). jax keeps what it compiles in its in-memory cache, so the
  first call of the same jitted function on the same shapes finds it there; if
  compiling here failed, that call compiles it, and only time is lost. The
  thread is not a daemon: a process that ends while it compiles waits for it.
  """

  def __init__(self, compile_fn: Callable[[], Any], what: str, name: str = "jaxact-compile"):
    def work():
      t0 = time.perf_counter()
      try:
        compile_fn()
      except Exception as err:  # pylint: disable=broad-except
        logging.warning("%s: compiling in the background failed (%s: %s); it compiles when "
                        "first needed instead", what, type(err).__name__, err)
      else:
        logging.info("%s: compiled in the background in %.1f s", what, time.perf_counter() - t0)

    self._thread = threading.Thread(target=work, name=name)
    self._thread.start()

  def done(self) -> bool:
    return not self._thread.is_alive()

  def wait(self) -> None:
    self._thread.join()


def _round_list(a: np.ndarray):
  """A nested list of `a`'s values to 4 significant digits, NaN as None."""
  if a.ndim == 0:
    x = float(a)
    return None if not np.isfinite(x) else float(f"{x:.4g}")
  return [_round_list(v) for v in a]
