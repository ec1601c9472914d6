"""The training engine: every cell x seed of one task in ONE jitted program.

A *member* is one (cell, seed). All members of a task share the network's
shapes, so their training states are stacked along a leading member axis
and trained together; `Engine` composes the parts:
- program.py: the pure JAX functions (the initial `TrainState`, one epoch:
  the training scan, the valid pass, early stopping; evaluation);
- layout.py: how the program is mapped over the members (`member_mode`);
- probes.py: the diagnostics recorded every epoch;
- runner.py: the host loop (histories, compaction, snapshots, progress,
  results).
It keeps one jitted epoch function per task (plus one per compacted layout)
and hands the runner what it needs (`run_spec`); every other name lives in
the module that defines it (program, runner, layout, probes).

An Engine takes two configurations: `EngineConfig`, the training
hyper-parameters (what is trained), and `ExecutionConfig`, how it is computed
(member mode, matmul precision, convolutions, compaction, evaluation chunks).

How the members share the machine (`ExecutionConfig.member_mode`):
- "vmap": every step is one vmapped computation over all members (batched
  matmuls): what fills a GPU or a TPU. Stopped members are frozen but still
  computed until the last member stops; with `ExecutionConfig.compact`, the
  runner instead drops them from the stacked state (runner.py).
- "loop": inside the same jitted epoch, the members run one after another
  (`lax.map`), each its whole epoch: its working set stays in the CPU's
  caches, a stopped member is skipped (`lax.cond`), and the cell-specific
  part (dense layers, head, loss) is chosen by `lax.switch` on the member's
  cell, so only its own branch runs. On a CPU this is faster than "vmap"
  (vmapped batch-32 matmuls and large evaluation chunks run out of cache;
  measured in benchmarks/ and BUILD_NOTES.md). One device only.
- "auto" (default): "loop" on a single CPU device, "vmap" otherwise.
Both modes compute the same function; their results agree to float rounding.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from importlib import metadata
from typing import Any, Callable, Sequence

import jax
from absl import logging

from jaxact.engine import layout as layout_lib
from jaxact.model import network as model_lib
from jaxact.engine import program as program_lib
from jaxact.engine import runner as runner_lib
from jaxact.engine import sharding
from jaxact.engine.background import BackgroundCompile
from jaxact.data import tasks as tasks_lib
from jaxact.engine.layout import Groups
from jaxact.engine.program import (EngineConfig, ExecutionConfig, HEAD_BIAS_INITS, MEMBER_MODES,
                            TaskData, TrainState, branch_cell, with_matmul_precision)
from jaxact.engine.runner import Outcome, RunSpec, Snapshot
from jaxact.model.cells import Cell


TEST_COMPILE_THREAD = "jaxact-compile-test"   # the thread `compiling_in_background` starts


class Engine:
  """Trains members (cell, seed) of ONE task together.

  Usage:
    engine = Engine(task, members, config, execution)
    results = engine.run(data).members      # runner.Outcome
    # resumable: engine.run(data, restore=snapshot, on_epoch_end=hook), see `run`

  `engine.traces` counts how often the epoch function was traced, over all
  layouts: one compilation per task (it stays 1 however many epochs run),
  plus one per compaction with `execution.compact`.

  Seams (for the runner, tests and benchmarks): `epoch_fn` (jitted, all
  stacked members), `layout_epoch_fn(groups)` and `layout_epoch_fns` (the
  compacted layouts), `epoch_program()` (the epoch before jit),
  `initial_state(data)` (the stacked `TrainState` on the mesh), `test_fn`
  and `evaluate`.
  """

  def __init__(self, task: str, members: Sequence[tuple[Cell, int]],
               config: EngineConfig = EngineConfig(),
               execution: ExecutionConfig = ExecutionConfig(),
               progress: Callable[[str], None] | None = None,
               splits: Callable[[int], tuple[Any, Any]] | None = None):
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
    self.stacked_members = sharding.pad_members(self.members, self.mesh.size)
    self.groups = self.layout_groups(range(len(self.stacked_members)))
    self.config = config
    self.execution = execution
    self.progress = progress or logging.info
    self.splits = splits
    _check_choices(config, execution, [c for c, _ in self.members])
    platform = self.mesh.devices.flat[0].platform
    mode = execution.member_mode
    if mode == "auto":
      mode = "loop" if platform == "cpu" and self.mesh.size == 1 else "vmap"
    if mode == "loop" and self.mesh.size > 1:
      raise ValueError(f"member_mode 'loop' runs on one device, this run has "
                       f"{self.mesh.size}: use 'vmap' (or 'auto') to shard the members")
    self.member_mode = mode
    self.eval_rows = execution.eval_examples or (32 if platform == "cpu" else 4096)
    # The program's network carries the most dense layers any member uses, and
    # batch-norm layers if any member uses them (see model.CNN).
    self.program = program_lib.Program(self.task, order, config, self.eval_rows,
                                       conv=execution.conv)
    self.max_depth = self.program.max_depth
    self.has_batch_norm = self.program.has_batch_norm
    self.loss_fns = self.program.loss_fns
    self.tx = self.program.tx
    self.graphdef = self.program.graphdef
    # "loop" mode: the distinct branches of the member switch, and each stacked member's
    # index into them. Cells that differ only in their initialisation share a branch.
    self.branches = tuple(dict.fromkeys(branch_cell(c) for c in order))
    self.layout = (layout_lib.Looped(self.branches, [self.branches.index(branch_cell(c))
                                                     for c, _ in self.stacked_members])
                   if mode == "loop" else layout_lib.Vmapped(self.groups))
    self.traces = 0
    self.epoch_fn = jax.jit(self.epoch_program(), donate_argnums=(0,))   # all members
    self.layout_epoch_fns: dict[Groups, Callable] = {}                  # compacted layouts
    self.test_fn = jax.jit(self._precise(self._test_of(self.layout)))

  @property
  def num_members(self) -> int:
    return len(self.members)

  def numerics(self) -> dict[str, Any]:
    """What decides a member's numbers besides its own cell, seed and split, as JSON values.

    Two members with equal `numerics` (and the same cell, seed, split and
    training) compute the same numbers; `numerics["fingerprint"]` is a short hash
    of the rest. In "loop" mode a member computes the same in every program
    (layout.SwitchedCell); in "vmap" mode the program's cells and member count
    change its rounding, so they are part of it.
    """
    device = self.mesh.devices.flat[0]
    out = {
        "member_mode": self.member_mode,
        "matmul_precision": self.execution.matmul_precision,
        "conv": self.execution.conv,
        "eval_rows": self.eval_rows,
        "platform": device.platform,
        "device_kind": getattr(device, "device_kind", ""),
        "devices": int(self.mesh.size),
        "versions": {name: metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")},
    }
    if self.member_mode == "vmap":
      out["program"] = {"cells": [c.key for c, _, _ in self.groups],
                        "members": len(self.stacked_members)}
    digest = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:16]
    return {**out, "fingerprint": digest}

  def _precise(self, fn: Callable) -> Callable:
    return with_matmul_precision(fn, self.execution.matmul_precision)

  def layout_groups(self, indices: Sequence[int]) -> Groups:
    """Static per-cell slices (cell, start, stop) of the stacked members `indices`.

    `indices` are increasing positions in `self.stacked_members` (`self.members`,
    then its pads; grouped by cell), so each cell's members are contiguous;
    cells without a member in `indices` have no slice.
    """
    groups, start = [], 0
    for cell, same in itertools.groupby(self.stacked_members[i][0] for i in indices):
      n = len(list(same))
      groups.append((cell, start, start + n))
      start += n
    return tuple(groups)

  def epoch_program(self, layout=None) -> Callable:
    """The epoch of the stacked members of `layout` (default: all, `self.layout`), not jitted.

    `(state, data) -> (state, metrics)`: `program.Program.epoch` mapped over the
    members by the layout, traced under the configured matmul precision; every
    trace counts in `self.traces`.
    """
    layout = self.layout if layout is None else layout
    prog = self.program

    def epoch(state: TrainState, data: TaskData):
      self.traces += 1
      now = state.epoch

      def one(st, cells):
        new, metrics = prog.epoch(st.replace(epoch=now), data, cells)
        return new.replace(epoch=None), metrics

      new, metrics = layout.map(
          one, state.replace(epoch=None),
          skip=(lambda st: st.active[0], lambda st: (st, prog.skipped_metrics(1))))
      return new.replace(epoch=now + 1), metrics

    return self._precise(epoch)

  def _test_of(self, layout) -> Callable:
    prog = self.program

    def test(params, x, t, mean, std, stats=None):
      """(metric (M,), non-finite predictions (M,)) of parameters stacked like the state's;
      mean and std are scalars, or (M,) per member (`MemberRows`)."""
      stats = {} if stats is None else stats
      if jax.numpy.ndim(mean) == 0:
        return layout.map(lambda ps, cells: prog.test(*ps, x, t, mean, std, cells),
                          (params, stats))
      return layout.map(lambda ps, cells: prog.test(ps[0], ps[1], x, t, ps[2], ps[3], cells),
                        (params, stats, mean, std))
    return test

  def layout_epoch_fn(self, groups: Groups) -> Callable:
    """The jitted epoch function of a compacted layout ("vmap" mode), cached per layout."""
    if groups not in self.layout_epoch_fns:
      self.layout_epoch_fns[groups] = jax.jit(
          self.epoch_program(layout_lib.Vmapped(groups)), donate_argnums=(0,))
    return self.layout_epoch_fns[groups]

  def evaluate(self, params, stats, x, t, mean, std, diagnostics: bool = False):
    """`program.Program.evaluate` of all stacked members as static slices (not jitted)."""
    return self.program.evaluate(params, stats, x, t, mean, std,
                                 layout_lib.StaticCells(self.groups), diagnostics=diagnostics)

  def diagnostic_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
    """name -> (per-member shape, dtype) of the diagnostics recorded every epoch.

    The probes' (probes.PROBES, in that order); L = len(layer_names(max_depth))
    layers, D = max_depth dense hidden layers (a member's values beyond its own
    depth are 0 and dropped from results):
      grad_norm (L,), grad_norm_first (L,), param_norm (L,), saturated (D,),
      dead (D,), mean_abs_pre (D,), spread (), head_saturated (),
      argmax_minority (); see each probe's class.
    """
    return self.program.diagnostic_shapes()

  # -- state ---------------------------------------------------------------

  def state_template(self) -> dict[str, Any]:
    """ShapeDtypeStructs of `init_state`'s output (they do not depend on the data)."""
    return jax.eval_shape(lambda: self._init(None, self._rows(None)).to_dict())

  def init_state(self, data: TaskData | None = None) -> dict[str, Any]:
    """The stacked training state of the real members, as `TrainState.to_dict`.

    Member m's keys come from its seed alone, and with `splits`, its split
    from its seed too. `data` gives the training targets' mean for
    `head_bias_init="prior"` and for the members' own splits (ValueError
    without it); the "torch" bias and one shared split need none.
    """
    if self.splits is not None and data is None:
      raise ValueError("per-member splits need the task's data (the pool): init_state(data)")
    rows = self._rows(data)
    bias = self.program.prior_bias([c for c, _ in self.members], data, rows)
    return self._init(bias, rows).to_dict()

  def _rows(self, data: TaskData | None) -> program_lib.MemberRows | None:
    """The real members' `MemberRows` (None without `splits`; zero means without data)."""
    if self.splits is None:
      return None
    return program_lib.member_rows(
        [self.splits(s) for _, s in self.members],
        None if data is None else jax.device_get(data.t_train))

  def _init(self, bias, rows) -> TrainState:
    return self.program.init_state([s for _, s in self.members],
                                   self.layout_groups(range(self.num_members)), bias, rows)

  def initial_state(self, data: TaskData | None = None) -> TrainState:
    """`init_state`, padded to the stacked members and placed on the mesh."""
    return sharding.shard_members(
        sharding.pad_leading(TrainState.from_dict(self.init_state(data)),
                             len(self.stacked_members)), self.mesh)

  # -- running ---------------------------------------------------------------

  def run(self, data: TaskData, restore: Snapshot | None = None,
          on_epoch_end: Callable[[int, Callable[[], Snapshot]], None] | None = None,
          on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
          ) -> Outcome:
    """Trains every member to its early stop (or the cap); returns the `runner.Outcome`.

    The outcome holds the per-member results (`.members`, in `self.members`
    order), the compactions of the task's whole history (restored runs
    included), the real members' final state and histories. The engine keeps
    none of it: `run` may be called again (e.g. with another `restore`).

    With `execution.compact` ("vmap" mode), the runner drops finished members
    from the stacked state (runner.py). The state lives on `self.mesh`
    (sharding.py): the real members, then pads; snapshots, the final state
    and the results hold the real members only.

    Args:
      data: the task's data.
      restore: a `Snapshot` to continue from instead of starting at epoch 0
        (its compacted layout, if any, is rebuilt and compiled again).
      on_epoch_end: called on the host after every epoch that does not end the
        run, as `on_epoch_end(epochs_done, snapshot)`, after any compaction;
        `snapshot()` builds the `Snapshot` of that moment (a host copy; call it
        only when you need it). The engine does no file I/O itself.
      on_epoch: called on the host after EVERY epoch (the last one included,
        before `on_epoch_end`), as `on_epoch(epochs_done, host)`; cheap.
        `host` holds fresh numpy copies over the real members in
        `self.members` order, what the loop fetched anyway (nothing is copied
        off the devices for it): see `runner.epoch_report`.
    """
    data = sharding.replicate(data, self.mesh)
    state = self.initial_state(data)
    test_fn = compiling_in_background(self.test_fn, program_lib.test_arguments(state, data),
                                      f"task {self.task.name}: the test pass")
    return runner_lib.run(self.run_spec(test_fn), data, state, restore, on_epoch_end, on_epoch)

  def run_spec(self, test_fn: Callable | None = None) -> RunSpec:
    """What the runner needs of this engine (`runner.RunSpec`); `test_fn` replaces the
    plain jitted test pass (`compiling_in_background`)."""
    return RunSpec(
        task=self.task, config=self.config, members=self.members,
        stacked=len(self.stacked_members), groups=self.groups, mesh=self.mesh,
        member_mode=self.member_mode, compact=self.execution.compact,
        probes=self.program.probes, diagnostic_shapes=self.diagnostic_shapes(),
        max_depth=self.max_depth,
        invalid_reasons={c: self.loss_fns[c].invalid_reason for c, _ in self.members},
        epoch_fn=self.epoch_fn,
        layout_epoch_fn=lambda positions: self.layout_epoch_fn(self.layout_groups(positions)),
        test_fn=test_fn or self.test_fn, progress=self.progress)

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
    state = self.initial_state(data)
    data = sharding.replicate(data, self.mesh)
    self.epoch_fn.lower(state, data).compile()
    self.test_fn.lower(*program_lib.test_arguments(state, data)).compile()


def _check_choices(config: EngineConfig, execution: ExecutionConfig, cells: Sequence[Cell]):
  """ValueError for a named choice the engine does not know (for callers of the Python API;
  the command line checks its flags before, study/options.py)."""
  choices = [("head_bias_init", c.head_bias_init, HEAD_BIAS_INITS)
             for c in [config] + [program_lib.cell_config(config, c) for c in cells]]
  choices += [("conv", execution.conv, model_lib.CONV_IMPLS),
              ("member_mode", execution.member_mode, MEMBER_MODES)]
  for name, value, known in choices:
    if value not in known:
      raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(known)}")


def compiling_in_background(fn: Callable, args: tuple, what: str) -> Callable:
  """`fn` (jitted), its program for `args` compiling in a thread from now on.

  Traced here, compiled (background.py) beside the first epoch's compilation
  and the training, so that the test pass does not compile on the critical
  path after the last epoch (the hidden study's first look:
  benchmarks/results_cpu_2core_compile.md). A call waits for the thread, then
  finds the executable in jax's cache. Single-process runs only (in a cluster
  every process compiles in step).
  """
  if jax.process_count() > 1:
    return fn
  compiling = BackgroundCompile(fn.lower(*args).compile, what, TEST_COMPILE_THREAD)

  def call(*call_args):
    compiling.wait()
    return fn(*call_args)
  return call
