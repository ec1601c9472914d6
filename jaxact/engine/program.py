"""The training program: pure JAX functions of one task's stacked members.

A *member* is one (cell, seed). All members of a task share the network's
shapes (the output width C is the task's), so their parameters and optimizer
states are stacked along a leading member axis in one `TrainState`. The
program is built once per task (`Program`, after purejaxrl's `make_train`):
`init_state` makes the initial state, `epoch` runs one epoch (a `lax.scan`
over the batches with the data resident on the device, a pass over the
valid set in chunks, the early-stopping update), `evaluate` and `test` the
metric of stacked parameters. It composes its parts by job: the network of
the stacked members (`stacked.Network`), the valid and test passes
(`evaluation.Evaluation`) and the training arms' optimizers (`Optimizers`).
Each takes the members' cells as a layout's cells object (layout.py: static
per-cell slices, or one member's cell picked at run time); layout.py maps it
over the members, and the engine jits it. Nothing here does I/O or keeps
state between calls.

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
from typing import Any, Callable, NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxact.model import losses as losses_lib
from jaxact.model import network as model_lib
from jaxact.engine import probes as probes_lib
from jaxact.data import tasks as tasks_lib
from jaxact.model.cells import Cell
from jaxact.engine.evaluation import Evaluation
from jaxact.engine.stacked import Network, member_scale, slice_members, train_targets

class Status(enum.IntEnum):
  TRAINING = 0
  OK = 1          # early-stopped normally
  INVALID = 2     # the loss refused its input (PyTorch raised)
  NONFINITE = 3   # loss or parameters became NaN/inf
  HIT_CAP = 4     # still improving when --max_epochs was reached


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Training hyper-parameters (PROTOCOL section 3 by default): what is trained, not how fast.

  Attributes:
    max_epochs: epoch cap (the original had none); members still training
      when it is reached get status HIT_CAP.
    patience: early-stopping rounds.
    batch_size: training batch size; the last partial batch is kept (masked).
    learning_rate, b1, b2, eps, weight_decay: AdamW, decoupled weight decay on
      every parameter, multiplied by the learning rate as in PyTorch. For
      "sgd", weight_decay is PyTorch SGD's L2 term (added to the gradient)
      and b1, b2, eps are unused.
    optimizer: one of OPTIMIZERS: "adamw" (PROTOCOL: torch.optim.AdamW) or
      "sgd" (torch.optim.SGD with momentum; see `make_optimizer`).
    momentum: "sgd" only: the heavy-ball momentum (PyTorch's, no dampening).
    head_bias_init: one of HEAD_BIAS_INITS: "torch" (the output layer's bias
      as the `init` scheme draws it) or "prior" (set so that the network's
      output, before its last weights contribute, is the training targets'
      mean: `prior_output_bias`).
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


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
  """How one task's program is computed: choices that change speed, not what is trained.

  Every choice computes the same function; results agree to float rounding,
  except `matmul_precision` beyond float32 on an accelerator. `matmul_precision`
  and `compact` are part of a run's identity all the same (checkpoint.py).

  Attributes:
    member_mode: one of MEMBER_MODES: "vmap", "loop" or "auto" (see engine.py).
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
    compact: ("vmap" mode) drop finished members from the stacked state once
      at most half of it is still training, so later epochs compute only the
      members still training (one extra compilation per compaction, at most
      about log2(M)). Results are those of the uncompacted run up to float
      rounding of the batched matmuls. "loop" mode skips finished members
      anyway and ignores it.
    eval_examples: about how many (member x example) rows one evaluation chunk
      holds; bounds the memory of the valid/test passes. None: 32 on a CPU
      (larger chunks run out of its caches: the valid pass of one member takes
      about 2x longer at 200 rows, 8x at 3,000), 4096 on an accelerator.
  """
  member_mode: str = "auto"
  matmul_precision: str = "float32"
  conv: str = "im2col"
  compact: bool = False
  eval_examples: int | None = None


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

  @classmethod
  def from_pool(cls, pool, task: str) -> "TaskData":
    """The data of `--split=per_seed`: the whole pool as both train and valid sets.

    Each member's rows of it are in its `TrainState.rows` (`member_rows`); the
    pool's images are held once on the device (x_train and x_valid are one
    array). target_mean and target_std are NaN: each member standardises with
    its own train split's (`MemberRows`).
    """
    x = jnp.asarray(pool.x)
    t = jnp.asarray(tasks_lib.make_targets(task, pool.y))
    return cls(x_train=x, t_train=t, x_valid=x, t_valid=t,
               x_test=jnp.asarray(pool.x_test),
               t_test=jnp.asarray(tasks_lib.make_targets(task, pool.y_test)),
               target_mean=float("nan"), target_std=float("nan"))


@flax.struct.dataclass
class MemberRows:
  """Each member's own split of the pool (`--split=per_seed`); leaves (M, ...).

  train: int32 (M, n_train) and valid: int32 (M, n_valid) rows of the pool
  (`TaskData.from_pool`); target_mean, target_std: float32 (M,) the mean and
  population std of the member's train targets (regression standardisation),
  computed on the host as `TaskData.from_split` computes them, so that a
  member equals the run of its split alone.
  """
  train: jax.Array
  valid: jax.Array
  target_mean: jax.Array
  target_std: jax.Array


def member_rows(splits: Sequence[tuple[np.ndarray, np.ndarray]],
                pool_targets: np.ndarray | None) -> MemberRows:
  """The stacked `MemberRows` of members whose (train rows, valid rows) are `splits`.

  pool_targets: (P, C) the task's targets of the pool (tasks.make_targets), or
  None for a state template (means 0, stds 1).
  """
  stats = []
  for train, _ in splits:
    if pool_targets is None:
      stats.append((0.0, 1.0))
    else:
      t = np.asarray(pool_targets)[train]
      stats.append((float(np.mean(t)), float(np.std(t))))
  return MemberRows(train=jnp.asarray(np.stack([a for a, _ in splits]), jnp.int32),
                    valid=jnp.asarray(np.stack([b for _, b in splits]), jnp.int32),
                    target_mean=jnp.asarray([m for m, _ in stats], jnp.float32),
                    target_std=jnp.asarray([d for _, d in stats], jnp.float32))


def target_scale(state: "TrainState", data: TaskData) -> tuple[Any, Any]:
  """(mean, std) of the training targets: the data's, or each member's (M,) with `rows`."""
  if state.rows is None:
    return data.target_mean, data.target_std
  return state.rows.target_mean, state.rows.target_std


def test_arguments(state: "TrainState", data: TaskData) -> tuple:
  """The test pass's arguments for `state`'s best weights: (best_params, x_test, t_test,
  mean, std, best_stats), as the engine's `test_fn` takes them."""
  return (state.best_params, data.x_test, data.t_test, *target_scale(state, data),
          state.best_stats)


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
  """`cell` as the traced program sees it: the initialisation and the output bias's start
  change only the initial weights.

  Cells equal up to their `init` and `head_bias_init` compute the same epoch
  from their state, so "loop" mode compiles one branch of its member switch
  for all of them.
  """
  return dataclasses.replace(cell, init="torch", head_bias_init=None)


def cell_config(config: EngineConfig, cell: Cell) -> EngineConfig:
  """The training of `cell`'s members: the run's `config` with the cell's arm (`Cell.arm`)."""
  return dataclasses.replace(config, **cell.arm) if cell.arm else config


def optimizer_groups(config: EngineConfig, groups) -> list[tuple[EngineConfig, int, int]]:
  """Consecutive cell slices with the same optimizer merged: [(training config, start, stop)]."""
  out: list[tuple[EngineConfig, int, int]] = []
  for cell, a, b in groups:
    cfg = dataclasses.replace(cell_config(config, cell), head_bias_init=PROTOCOL.head_bias_init)
    if out and out[-1][0] == cfg and out[-1][2] == a:
      out[-1] = (cfg, out[-1][1], b)
    else:
      out.append((cfg, a, b))
  return out



def where_members(mask: jax.Array, new, old):
  """Per member: new where mask[m] else old, for pytrees stacked on axis 0."""
  def pick(a, b):
    return jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
  return jax.tree_util.tree_map(pick, new, old)


def all_finite_per_member(tree) -> jax.Array:
  """(M,) bool: every leaf of member m is finite. Leaves (M, ...)."""
  # sum(x * 0) is 0 if every x is finite and NaN otherwise (inf * 0 is NaN, and
  # a sum keeps a NaN). On XLA:CPU it is one fused reduction; all(isfinite(x))
  # wrote a bool array and reduced it in stages, about 2% of a training step
  # (measured 2026-11-30). Not max |x|: XLA:CPU's fused max-reduction drops NaNs.
  leaves = jax.tree_util.tree_leaves(tree)
  zeros = [jnp.sum(l.reshape(l.shape[0], -1) * 0.0, axis=1) for l in leaves]
  return jnp.isfinite(jnp.stack(zeros)).all(axis=0)


class Optimizers:
  """The optimizers of a program's training arms (`Cell.arm`), applied member by member.

  Attributes:
    config: the run's EngineConfig.
    tx: the run's optimizer (`make_optimizer(config)`): it makes every member's
      initial optimizer state.
    txs: training config -> its optimizer, one per distinct arm (`optimizer_groups`).
  """

  def __init__(self, config: EngineConfig, cells: Sequence[Cell]):
    self.config = config
    self.tx = make_optimizer(config)
    self.txs = {g[0]: make_optimizer(g[0])
                for g in optimizer_groups(config, [(c, 0, 1) for c in cells])}
    # One jitted (so traced once) update per arm: a loop-mode program calls it in each of
    # its branches, and tracing AdamW over every layer anew in each of the hidden study's
    # 56 branches took about half of its epoch's tracing (benchmarks/results_cpu_2core_compile.md).
    # XLA inlines the call: the compiled program is the same.
    self.updates = {cfg: jax.jit(jax.vmap(tx.update)) for cfg, tx in self.txs.items()}

  def update(self, cells, grads, opt_state, params):
    """(updates, new optimizer state) of every stacked member, each with its cell's optimizer.

    Through the layout's cells (layout.py): in "vmap" mode one vmapped call per
    run of consecutive cells with the same optimizer (one call for a program of
    one arm); in "loop" mode inside the member's branch of its switch, as the
    loss, so that a member computes the same whatever other arms share its program.
    """
    def per_group(groups, grads, opt_state, params):
      outs = [self.updates[cfg](*(slice_members(t, a, b)
                                               for t in (grads, opt_state, params)))
              for cfg, a, b in optimizer_groups(self.config, groups)]
      return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)
    return cells.per_cell(per_group, grads, opt_state, params)


# ---------------------------------------------------------------------------
# The state and the scan's carry.


@flax.struct.dataclass
class TrainState:
  """The training state of stacked members: every leaf but `epoch` is (M, ...).

  Attributes:
    params, opt_state: the parameters (a nested dict of the network's layers)
      and the optimizer's state.
    best_params: the parameters after each member's best epoch so far.
    best_score: (M,) float32 the best valid metric so far, signed so that
      higher is better (-inf before any).
    best_epoch: (M,) int32 its 0-based epoch (-1: none).
    active: (M,) bool still training.
    status: (M,) int32 the `Status` (TRAINING while active).
    status_epoch: (M,) int32 the epoch the status was set in (-1: none).
    epochs_trained: (M,) int32 epochs each member trained.
    shuffle_keys: (M,) PRNG keys of the members' shuffle orders.
    epoch: () int32 epochs done, shared by all members.
    rows: each member's own split (`MemberRows`, `--split=per_seed`), or
      None when every member uses the data's own train and valid sets.
    stats, best_stats: batch-norm running statistics now and at the best
      epoch; {} when no member uses batch norm.
  """
  params: Any
  opt_state: Any
  best_params: Any
  best_score: jax.Array
  best_epoch: jax.Array
  active: jax.Array
  status: jax.Array
  status_epoch: jax.Array
  epochs_trained: jax.Array
  shuffle_keys: jax.Array
  epoch: Any
  stats: Any = dataclasses.field(default_factory=dict)
  best_stats: Any = dataclasses.field(default_factory=dict)
  rows: MemberRows | None = None

  def to_dict(self) -> dict[str, Any]:
    """The state as the flat dict of its fields that snapshots and checkpoints
    hold ("stats" and "best_stats" only with batch norm, "rows" only with
    per-member splits)."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    if not jax.tree_util.tree_leaves(self.stats):
      del out["stats"], out["best_stats"]
    if self.rows is None:
      del out["rows"]
    return out

  @classmethod
  def from_dict(cls, state: dict[str, Any]) -> "TrainState":
    """The inverse of `to_dict`."""
    return cls(**state)


class StepCarry(NamedTuple):
  """The training scan's carry (leaves (M, ...)): what a step updates."""
  params: Any
  stats: Any
  opt_state: Any
  active: jax.Array      # (M,) bool: the member's last update was applied
  status: jax.Array
  status_epoch: jax.Array
  loss_sum: jax.Array    # (M,) sum of the applied updates' losses
  probes: dict[str, Any]  # name -> accumulator of the "train" probes


@flax.struct.dataclass
class EpochMetrics:
  """What one epoch reports per member (leaves (M, ...)).

  train_loss: float32 the mean training loss over the epoch's batches (the
  updates not applied count as 0); valid_metric: float32 the valid metric
  after the epoch; n_infinite: int32 non-finite valid predictions; trained:
  bool the member trained in this epoch; diag: name -> the epoch's
  diagnostics (`probes.PROBES`).
  """
  train_loss: jax.Array
  valid_metric: jax.Array
  n_infinite: jax.Array
  trained: jax.Array
  diag: dict[str, jax.Array]


# ---------------------------------------------------------------------------


class Program:
  """The pure functions of one task's training, built once (after purejaxrl's `make_train`).

  Holds only static things (the task, the configuration, the network's graph,
  the losses); its methods are pure functions of their arguments. `cells` is
  a layout's cells object (layout.py), through which the cell-specific parts
  (dense layers, head, loss) are computed.

  Attributes:
    task: the task (tasks.Task).
    config: the EngineConfig.
    network: the stacked members' network (`stacked.Network`: trunk, dense part).
    max_depth, has_batch_norm, graphdef: the network's (see `stacked.Network`).
    loss_fns: cell -> its loss (losses.get_loss), for the members' cells and
      their branch cells.
    optimizers: every training arm's optimizer (`Optimizers`); tx: the run's.
    probes: the diagnostics recorded (probes.PROBES); dims: their sizes.
    evaluation: the valid and test passes (`evaluation.Evaluation`).
  """

  def __init__(self, task, cells: Sequence[Cell], config: EngineConfig, eval_rows: int,
               probes: tuple[probes_lib.Probe, ...] = probes_lib.PROBES, conv: str = "im2col"):
    self.task = task
    self.config = config
    self.network = Network(task.num_outputs, cells, conv=conv)
    self.max_depth = self.network.max_depth
    self.has_batch_norm = self.network.has_batch_norm
    self.graphdef = self.network.graphdef
    self.loss_fns = {c: losses_lib.get_loss(c.head, c.loss, c.convention)
                     for c in dict.fromkeys(list(cells) + [branch_cell(c) for c in cells])}
    self.optimizers = Optimizers(config, cells)
    self.tx = self.optimizers.tx
    self.probes = probes
    self.dims = probes_lib.Dims(layers=len(probes_lib.layer_names(self.max_depth)),
                                depth=self.max_depth, width=model_lib.HIDDEN_WIDTH,
                                outputs=task.num_outputs)
    self.evaluation = Evaluation(self.network, task, eval_rows, probes, self.dims)

  def diagnostic_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
    """name -> (per-member shape, dtype) of the diagnostics recorded every epoch."""
    return probes_lib.shapes(self.dims, self.probes)

  # -- state ---------------------------------------------------------------

  def init_state(self, seeds: Sequence[int], groups, bias: np.ndarray | None = None,
                 rows: MemberRows | None = None) -> TrainState:
    """The stacked initial state; member m's keys come from its seed alone.

    Args:
      seeds: (M,) the members' seeds.
      groups: static per-cell slices (cell, start, stop) of the members (the
        initialisation and depth are static).
      bias: (M, C) output biases to start from (head_bias_init="prior"; a NaN
        row keeps that member's initial bias), or None for the initialisation's.
      rows: each member's own split (`member_rows`), or None: every member
        trains on the data's train set.
    """
    seeds = jnp.asarray(seeds, jnp.uint32)
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s)))(seeds)
    init_keys, shuffle_keys = keys[:, 0], keys[:, 1]
    params, stats = self.network.initial_parameters(init_keys, groups)
    if bias is not None:           # NaN rows: members that keep the initialisation's bias
      bias = jnp.asarray(bias, params["out"]["bias"].dtype)
      out = dict(params["out"], bias=jnp.where(jnp.isnan(bias), params["out"]["bias"], bias))
      params = dict(params, out=out)
    m = len(seeds)
    extra = dict(stats=stats, best_stats=jax.tree_util.tree_map(jnp.copy, stats)
                 ) if self.has_batch_norm else {}
    return TrainState(
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
        rows=rows,
    )

  def prior_bias(self, cells: Sequence[Cell], data: TaskData | None,
                 rows: MemberRows | None = None) -> np.ndarray | None:
    """(M, C) the members' output biases at initialisation, or None if every one keeps its
    initialisation's.

    A member whose training (`cell_config`) has head_bias_init="prior" gets
    `prior_output_bias` of its own train split (`rows`, else the data's); the
    others get a row of NaN (their initialisation's bias).
    """
    prior = [cell_config(self.config, c).head_bias_init == "prior" for c in cells]
    if not any(prior):
      return None
    if data is None:
      raise ValueError('head_bias_init="prior" needs the task\'s data: init_state(data)')
    t_train = np.asarray(data.t_train)
    out = np.full((len(cells), self.task.num_outputs), np.nan, np.float32)
    for i, cell in enumerate(cells):
      if not prior[i]:
        continue
      if rows is None:
        out[i] = prior_output_bias(cell, t_train, data.target_mean, data.target_std)
      else:
        out[i] = prior_output_bias(cell, t_train[np.asarray(rows.train[i])],
                                   float(rows.target_mean[i]), float(rows.target_std[i]))
    return out

  # -- the network -----------------------------------------------------------

  def member_losses(self, params, stats, x, t, mask, mean, std, cells):
    """Per-member batch losses (M,), input validity (M,) and new batch-norm stats, x (M, B, ...)."""
    feats = self.network.trunk(params, stats, x)

    def dense_and_loss(groups, params, stats, feats, t, mask):
      z, _, new_stats = self.network.dense(groups, params, stats, feats, mask, train=True)
      losses, valid = [], []
      for cell, a, b in groups:
        fn = self.loss_fns[cell]
        tt = train_targets(cell, t[a:b], member_scale(mean, a, b), member_scale(std, a, b))
        pe = jax.vmap(fn.per_example)(z[a:b], tt)                        # (S, B)
        mean_pe = jnp.sum(pe * mask[a:b], axis=1) / jnp.sum(mask[a:b], axis=1)
        losses.append(jax.vmap(fn.finalize)(mean_pe))
        if fn.valid_input is None:
          valid.append(jnp.ones((b - a,), bool))
        else:
          ok = jax.vmap(fn.valid_input)(z[a:b])                          # (S, B)
          valid.append(jnp.all(ok | (mask[a:b] == 0), axis=1))
      return jnp.concatenate(losses), jnp.concatenate(valid), new_stats

    return cells.per_cell(dense_and_loss, params, stats, feats, t, mask)

  # -- one epoch -------------------------------------------------------------

  def epoch(self, state: TrainState, data: TaskData, cells) -> tuple[TrainState, EpochMetrics]:
    """One epoch of the stacked members of `state`: (new state, per-member metrics).

    The training scan over the batches (a frozen member's update is computed
    and discarded), the valid pass with the diagnostics, the early-stopping
    update. `cells`: the members' cells (layout.py).
    """
    rows = state.rows
    carry, applied, nb = self.train_scan(state, data, cells)
    params, stats, still = carry.params, carry.stats, carry.active
    train_loss = carry.loss_sum / nb
    mean, std = ((data.target_mean, data.target_std) if rows is None
                 else (rows.target_mean, rows.target_std))
    valid_metric, n_inf, diag = self.evaluate(
        params, stats, data.x_valid, data.t_valid, mean, std, cells, diagnostics=True,
        rows=None if rows is None else rows.valid)
    totals = probes_lib.Totals(n=0, width=self.dims.width,
                               applied=jnp.sum(applied, axis=0), target_spread=None,  # (M,)
                               single_label=self.task.single_label)
    train_probes = probes_lib.of_phase("train", self.probes)
    for p in train_probes:
      diag[p.name] = p.finalize(carry.probes[p.name], totals)
    end = probes_lib.EndObservation(params=params, depth=self.max_depth)
    for p in probes_lib.of_phase("end", self.probes):
      diag[p.name] = p.finalize(p.update(end), totals)
    diag = {p.name: diag[p.name] for p in self.probes}
    new_state = self.early_stopping(state, carry, valid_metric)
    metrics = EpochMetrics(train_loss=train_loss, valid_metric=valid_metric,
                           n_infinite=n_inf, trained=still, diag=diag)
    return new_state, metrics

  def shuffled_batches(self, state: TrainState, n: int):
    """(perms, masks): each member's epoch order of its n training rows in batches.

    perms int32 (nb, M, batch) row indices, masks float32 (nb, M, batch) 1.0
    for real rows; the last partial batch is padded (masked).
    """
    cfg = self.config
    m = state.best_score.shape[0]
    nb = -(-n // cfg.batch_size)
    epoch = state.epoch
    perms = jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, epoch), n))(
        state.shuffle_keys)                                             # (M, N)
    pad = nb * cfg.batch_size - n
    perms = jnp.pad(perms, ((0, 0), (0, pad)))
    masks = jnp.pad(jnp.ones((m, n), jnp.float32), ((0, 0), (0, pad)))
    perms = perms.reshape(m, nb, cfg.batch_size).swapaxes(0, 1)
    masks = masks.reshape(m, nb, cfg.batch_size).swapaxes(0, 1)
    return perms, masks

  def train_scan(self, state: TrainState, data: TaskData, cells):
    """The training scan of one epoch: (final `StepCarry`, applied (nb, M) bool, nb)."""
    m = state.best_score.shape[0]
    rows = state.rows
    n = data.x_train.shape[0] if rows is None else rows.train.shape[1]
    perms, masks = self.shuffled_batches(state, n)
    nb = perms.shape[0]
    epoch = state.epoch
    mean, std = ((data.target_mean, data.target_std) if rows is None
                 else (rows.target_mean, rows.target_std))
    train_probes = probes_lib.of_phase("train", self.probes)

    def grad_fn(params, stats, x, t, mask):
      def total(p):
        l, v, st = self.member_losses(p, stats, x, t, mask, mean, std, cells)
        return jnp.sum(jnp.where(jnp.isfinite(l), l, 0.0)), (l, v, st)
      return jax.grad(total, has_aux=True)(params)

    def step(carry: StepCarry, batch):
      idx, mask, i = batch                                              # idx (M, B)
      if rows is not None:                                              # rows of the pool
        idx = jnp.take_along_axis(rows.train, idx, axis=1)
      x, t = data.x_train[idx], data.t_train[idx]
      grads, (loss, valid, new_stats) = grad_fn(carry.params, carry.stats, x, t, mask)
      updates, new_opt = self.optimizers.update(cells, grads, carry.opt_state, carry.params)
      new_params = optax.apply_updates(carry.params, updates)
      finite = jnp.isfinite(loss) & all_finite_per_member(new_params)
      active = carry.active
      invalid_now = active & ~valid
      nonfinite_now = active & valid & ~finite
      apply = active & valid & finite
      status = jnp.where(invalid_now, Status.INVALID, carry.status)
      status = jnp.where(nonfinite_now, Status.NONFINITE, status)
      obs = probes_lib.TrainObservation(
          sq_norms=probes_lib.layer_sq_norms(grads, self.max_depth), applied=apply, first=i == 0)
      return StepCarry(
          params=where_members(apply, new_params, carry.params),
          stats=where_members(apply, new_stats, carry.stats),
          opt_state=where_members(apply, new_opt, carry.opt_state),
          active=apply, status=status,
          status_epoch=jnp.where(invalid_now | nonfinite_now, epoch, carry.status_epoch),
          loss_sum=carry.loss_sum + jnp.where(apply, loss, 0.0),
          probes={p.name: p.merge(carry.probes[p.name], p.update(obs)) for p in train_probes},
      ), apply

    carry = StepCarry(state.params, state.stats, state.opt_state, state.active, state.status,
                      state.status_epoch, jnp.zeros((m,), jnp.float32),
                      {p.name: p.init(self.dims, m) for p in train_probes})
    carry, applied = jax.lax.scan(step, carry, (perms, masks, jnp.arange(nb)))
    return carry, applied, nb

  def early_stopping(self, state: TrainState, carry: StepCarry, valid_metric) -> TrainState:
    """The state after the epoch: the best weights and score kept, members stopped after
    `patience` epochs without strict improvement of the valid metric."""
    cfg, epoch, rows = self.config, state.epoch, state.rows
    params, stats, still = carry.params, carry.stats, carry.active
    score = valid_metric if self.task.higher_is_better else -valid_metric
    score = jnp.where(jnp.isnan(score), -jnp.inf, score)
    improved = still & (score > state.best_score)
    best_score = jnp.where(improved, score, state.best_score)
    best_epoch = jnp.where(improved, epoch, state.best_epoch)
    best_params = where_members(improved, params, state.best_params)
    best_stats = where_members(improved, stats, state.best_stats)
    stop = still & (epoch - best_epoch >= cfg.patience)
    status = jnp.where(stop, Status.OK, carry.status)
    status_epoch = jnp.where(stop, epoch, carry.status_epoch)
    epochs_trained = jnp.where(still, epoch + 1, state.epochs_trained)
    new_state = TrainState(
        params=params, opt_state=carry.opt_state, best_params=best_params,
        best_score=best_score, best_epoch=best_epoch, active=still & ~stop,
        status=status, status_epoch=status_epoch, epochs_trained=epochs_trained,
        shuffle_keys=state.shuffle_keys, epoch=epoch + 1, stats=stats, best_stats=best_stats,
        rows=rows)
    return new_state

  def skipped_metrics(self, m: int) -> EpochMetrics:
    """The metrics of m members that did not train in an epoch: NaN, none trained."""
    nan = jnp.full((m,), jnp.nan, jnp.float32)
    return EpochMetrics(train_loss=nan, valid_metric=nan,
                        n_infinite=jnp.zeros((m,), jnp.int32), trained=jnp.zeros((m,), bool),
                        diag={k: jnp.full((m,) + shape, jnp.nan, dtype)
                              for k, (shape, dtype) in self.diagnostic_shapes().items()})

  # -- evaluation ------------------------------------------------------------

  def evaluate(self, params, stats, x, t, mean, std, cells, diagnostics=False, rows=None):
    """`evaluation.Evaluation.evaluate`: metric (M,), non-finite predictions (M,), diagnostics."""
    return self.evaluation.evaluate(params, stats, x, t, mean, std, cells,
                                    diagnostics=diagnostics, rows=rows)

  def test(self, params, stats, x, t, mean, std, cells):
    """(metric (M,), non-finite predictions (M,)) of parameters stacked like the state's."""
    return self.evaluation.evaluate(params, stats, x, t, mean, std, cells)[:2]
