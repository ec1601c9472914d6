"""The host loop of a task: epochs, histories, compaction, snapshots, progress, results.

`run(spec, data, state)` takes what it needs of the task's program as a
`RunSpec` (built by the engine: members, configuration, mesh, jitted
functions), calls the epoch function once per epoch and fetches only a few
(M,) vectors per epoch: the histories (train loss, valid metric,
diagnostics: `Histories`) are kept here, on the host, and so are the
progress line and the `on_epoch` / `on_epoch_end` hooks (snapshots for
checkpoints; the runner does no file I/O itself). It returns an `Outcome`:
the `MemberResult`s, the compactions, the final state and the histories.
The runner imports nothing of the engine and writes nothing into it.

With `ExecutionConfig.compact` ("vmap" mode) the runner drops finished members
from the stacked state whenever at most half of the stacked members are
still training, and switches to an epoch function compiled for the
remaining members (a *layout*); finished members keep their results in a
full-size copy of the state. At most about log2(M) extra compilations per
task, each where the loop first calls its layout: the runner starts no thread.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxact.engine import labels as labels_lib
from jaxact.engine import probes as probes_lib
from jaxact.engine import program as program_lib
from jaxact.engine import sharding
from jaxact.engine.program import EngineConfig, Status, TaskData, TrainState
from jaxact.model.cells import Cell
from jaxact.data import tasks as tasks_lib
from jaxact.engine.layout import Groups


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

def take_members(state: TrainState, idx: np.ndarray) -> TrainState:
  """The training state of the stacked members at positions `idx` (the epoch is shared)."""
  # mode="clip": the indices are in bounds; the default "fill" mode has no fill value for PRNG
  # key arrays in jax 0.8.0-0.8.1 ("Unsupported dtype for gather fill_value").
  part = jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0, mode="clip"),
                                state.replace(epoch=None))
  return part.replace(epoch=state.epoch)


def put_members(full: TrainState, part: TrainState, idx: np.ndarray) -> TrainState:
  """`full` with its members at positions `idx` replaced by the stacked `part`."""
  new = jax.tree_util.tree_map(lambda a, b: a.at[idx].set(b), full.replace(epoch=None),
                               part.replace(epoch=None))
  return new.replace(epoch=part.epoch)


def format_duration(s: float) -> str:
  """'12.3s', '845s', then '1h02m' or '16m40s'."""
  if s < 10:
    return f"{s:.1f}s"
  if s < 1000:
    return f"{s:.0f}s"
  minutes, seconds = divmod(int(round(s)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def progress_line(task, config: EngineConfig, groups, num_members: int, epoch: int,
                  active: np.ndarray, best: np.ndarray, elapsed: float, eta: float) -> str:
  """One short line: the epoch, members training, time, ETA, the best and the worst cell.

  Its length does not grow with the grid (about 200 characters). The cells
  are ranked by the mean over their members of the best valid metric so
  far (members without a finite one left out), compared at 4 significant
  digits so that float rounding does not reorder ties. Times as
  `format_duration`.

  Args:
    task: the task (tasks.Task).
    config: the EngineConfig (the cap, the cells' labels).
    groups: the per-cell slices (cell, start, stop) of the stacked members.
    num_members: R, the real members (the pads at the end of the last group
      are not shown).
    epoch: epochs done.
    active: (M,) bool, the stacked members still training.
    best: (M,) the signed best score (higher is better; -inf before any).
    elapsed: seconds since `run` started.
    eta: estimated seconds until the task ends (see `run`'s on_epoch).
  """
  def short(label: str, width: int = 60) -> str:
    return label if len(label) <= width else label[:width - 3] + "..."

  sign = 1.0 if task.higher_is_better else -1.0
  r = num_members
  n_active = int(active[:r].sum())
  ranked = []                      # (signed rounded mean, position, label, mean)
  for i, (cell, a, b) in enumerate(groups):
    scores = best[a:min(b, r)]
    scores = scores[np.isfinite(scores)]
    if a < r and scores.size:
      mean = sign * float(np.mean(scores))
      ranked.append((sign * float(f"{mean:.4g}"), -i, labels_lib.cell_label(cell, config), mean))
  metric = f"mean best valid {task.metric_name}"
  if not ranked:
    cells = f"{metric}: none yet"
  elif len(ranked) == 1:
    cells = f"{metric}: {short(ranked[0][2])} {ranked[0][3]:.4g}"
  else:
    hi, lo = max(ranked), min(ranked, key=lambda x: (x[0], -x[1]))
    cells = (f"{metric}: best {short(hi[2])} {hi[3]:.4g}, "
             f"worst {short(lo[2])} {lo[3]:.4g}")
  done = n_active == 0 or epoch >= config.max_epochs
  return (f"{task.name} epoch {epoch}: (cap {config.max_epochs}) "
          f"{n_active}/{r} training; elapsed {format_duration(elapsed)}; "
          f"{'done;' if done else f'eta ~{format_duration(eta)};'} {cells}")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What the host loop needs of a task's program: its members, configuration and functions.

  Built by the engine (`Engine.run_spec`); the runner reads nothing else.

  Attributes:
    task: the task (tasks.Task).
    config: the EngineConfig (the cap, patience, the cells' labels).
    members: the R real members (cell, seed), grouped by cell.
    stacked: M, the stacked members: the real ones, then pads (sharding.py).
    groups: the per-cell slices (cell, start, stop) of the M stacked members.
    mesh: the devices the stacked members are sharded over.
    member_mode: "vmap" or "loop" (resolved, never "auto").
    compact: drop finished members from the stacked state ("vmap" mode only).
    probes: the diagnostics recorded (probes.Probe, each declaring its axes).
    diagnostic_shapes: name -> (per-member shape, dtype) of the probes' values.
    max_depth: D, the most dense hidden layers of any member.
    invalid_reasons: cell -> why its loss refuses an input (None: never).
    epoch_fn: the jitted epoch of all M stacked members, (state, data) -> (state, metrics).
    layout_epoch_fn: stacked positions (increasing) -> the jitted epoch of those members.
    test_fn: the jitted test pass, (best_params, x, t, mean, std, best_stats) ->
      (metric (M,), non-finite predictions (M,)).
    progress: receives the progress line after every epoch.
  """
  task: tasks_lib.Task
  config: EngineConfig
  members: Sequence[tuple[Cell, int]]
  stacked: int
  groups: Groups
  mesh: jax.sharding.Mesh
  member_mode: str
  compact: bool
  probes: tuple[probes_lib.Probe, ...]
  diagnostic_shapes: dict[str, tuple[tuple[int, ...], Any]]
  max_depth: int
  invalid_reasons: dict[Cell, str | None]
  epoch_fn: Callable
  layout_epoch_fn: Callable[[np.ndarray], Callable]
  test_fn: Callable
  progress: Callable[[str], None]


# Histories' fields and the `Snapshot` fields that hold them.
_SNAPSHOT_FIELDS = {"train_loss": "hist_loss", "valid_metric": "hist_valid",
                    "trained": "hist_trained", "n_infinite": "hist_inf"}


class Histories(NamedTuple):
  """Per-epoch host histories of stacked members; every array is (max_epochs, M, ...).

  train_loss, valid_metric: float32 (NaN where a member did not train);
  trained: bool the member trained in that epoch; n_infinite: int64
  non-finite valid predictions; diag: name -> the probes' values (NaN likewise).
  """
  train_loss: np.ndarray
  valid_metric: np.ndarray
  trained: np.ndarray
  n_infinite: np.ndarray
  diag: dict[str, np.ndarray]

  @classmethod
  def empty(cls, epochs: int, m: int, diagnostic_shapes) -> "Histories":
    return cls(train_loss=np.full((epochs, m), np.nan, np.float32),
               valid_metric=np.full((epochs, m), np.nan, np.float32),
               trained=np.zeros((epochs, m), bool),
               n_infinite=np.zeros((epochs, m), np.int64),
               diag={name: np.full((epochs, m) + shape, np.nan, dtype)
                     for name, (shape, dtype) in diagnostic_shapes.items()})

  def record(self, epoch: int, positions: np.ndarray, host: dict[str, Any]) -> None:
    """Writes one epoch's fetched metrics of the stacked members at `positions` (in place)."""
    for name in _SNAPSHOT_FIELDS:
      getattr(self, name)[epoch, positions] = host[name]
    for name, value in host["diag"].items():
      self.diag[name][epoch, positions] = value

  def load(self, snapshot: "Snapshot", r: int) -> None:
    """Fills the first `r` members from a snapshot's histories and the pads with copies of
    the last member (in place); ValueError if a shape or dtype differs."""
    epochs = self.train_loss.shape[0]
    for name, field in _SNAPSHOT_FIELDS.items():
      h, saved = getattr(self, name), getattr(snapshot, field)
      if saved.shape != (epochs, r) or saved.dtype != h.dtype:
        raise ValueError(f"snapshot {field} is {saved.shape} {saved.dtype}, "
                         f"expected {(epochs, r)} {h.dtype}")
      h[:, :r], h[:, r:] = saved, saved[:, -1:]
    for name, h in self.diag.items():
      saved = snapshot.hist_diag.get(name)
      if saved is None or saved.shape != (epochs, r) + h.shape[2:] or saved.dtype != h.dtype:
        raise ValueError(f"snapshot diagnostics {name} missing or of another shape")
      h[:, :r], h[:, r:] = saved, saved[:, -1:]

  def real(self, r: int) -> "Histories":
    """A copy of the first `r` (real) members' histories."""
    return Histories(*(a[:, :r].copy() for a in self[:4]),
                     diag={k: v[:, :r].copy() for k, v in self.diag.items()})

  def snapshot_fields(self) -> dict[str, Any]:
    """The histories as `Snapshot`'s keyword arguments (hist_loss, ..., hist_diag)."""
    return {**{field: getattr(self, name) for name, field in _SNAPSHOT_FIELDS.items()},
            "hist_diag": self.diag}


class Standing(NamedTuple):
  """Host copies of each stacked member's standing after the last epoch, (M,) each.

  active: bool still training; best: float32 the signed best score (higher is
  better; -inf before any); best_epoch: int64 (-1: none); status: int64 `Status`.
  """
  active: np.ndarray
  best: np.ndarray
  best_epoch: np.ndarray
  status: np.ndarray

  @classmethod
  def initial(cls, m: int) -> "Standing":
    return cls(active=np.ones((m,), bool), best=np.full((m,), -np.inf, np.float32),
               best_epoch=np.full((m,), -1, np.int64),
               status=np.full((m,), int(Status.TRAINING), np.int64))

  @classmethod
  def of_state(cls, state: dict[str, Any], m: int) -> "Standing":
    """The standing held in a host state (`Snapshot.state`, R members), padded to `m`."""
    def col(key, dtype):
      return sharding.pad_leading(np.asarray(state[key], dtype), m).copy()
    return cls(active=col("active", bool), best=col("best_score", np.float32),
               best_epoch=col("best_epoch", np.int64), status=col("status", np.int64))

  def record(self, positions: np.ndarray, host: dict[str, Any]) -> None:
    """Writes the fetched standing of the stacked members at `positions` (in place)."""
    for name in self._fields:
      getattr(self, name)[positions] = host[name]


class Outcome(NamedTuple):
  """What `run` returns.

  members: every real member's `MemberResult`, in `RunSpec.members` order;
  compactions: compactions in the task's whole history (restored runs included);
  final_state: the real members' final training state (`TrainState.to_dict`,
  on the devices); histories: the real members' `Histories` (max_epochs, R, ...);
  epochs: epochs the task ran.
  """
  members: list[MemberResult]
  compactions: int
  final_state: dict[str, Any]
  histories: Histories
  epochs: int


class _Layout(NamedTuple):
  """Where the stacked state stands: `state` holds the stacked members at `positions`
  (of the M); `full` is the full-size state once compacted (None before); `epoch_fn`
  is the jitted epoch of `positions`."""
  state: TrainState
  full: TrainState | None
  positions: np.ndarray
  epoch_fn: Callable

  def merged(self) -> TrainState:
    """The full-size state of all M stacked members."""
    return self.state if self.full is None else put_members(self.full, self.state, self.positions)


def run(spec: RunSpec, data: TaskData, state: TrainState, restore: Snapshot | None = None,
        on_epoch_end: Callable[[int, Callable[[], Snapshot]], None] | None = None,
        on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> Outcome:
  """Trains every member of `spec` to its early stop (or the cap); returns the `Outcome`.

  `data` is the task's data on `spec.mesh`, `state` the initial stacked state
  (M members, on the mesh; with `restore`, the template the snapshot's state
  is loaded into). See `Engine.run` for the hooks.
  """
  cfg, r, m = spec.config, len(spec.members), spec.stacked
  hist = Histories.empty(cfg.max_epochs, m, spec.diagnostic_shapes)
  now_at = _Layout(state, None, np.arange(m), spec.epoch_fn)
  standing, epoch, compactions = Standing.initial(m), 0, 0
  if restore is not None:
    now_at, standing = _restore(spec, restore, state, hist)
    epoch, compactions = int(restore.epoch), int(restore.compactions)

  def snapshot() -> Snapshot:
    stacked = np.zeros((m,), bool)
    stacked[now_at.positions] = True
    return Snapshot(epoch=epoch, state=state_to_host(sharding.unpad(now_at.merged(), r).to_dict()),
                    stacked=stacked[:r], compactions=compactions,
                    **hist.real(r).snapshot_fields())

  start = last = time.perf_counter()
  durations = []                   # seconds of each epoch of this call, for the ETA
  while epoch < cfg.max_epochs:
    new, metrics = now_at.epoch_fn(now_at.state, data)
    now_at = now_at._replace(state=new)
    host = sharding.to_host(dict(
        train_loss=metrics.train_loss, valid_metric=metrics.valid_metric,
        n_infinite=metrics.n_infinite, trained=metrics.trained, diag=metrics.diag,
        active=new.active, best=new.best_score, best_epoch=new.best_epoch, status=new.status))
    hist.record(epoch, now_at.positions, host)
    standing.record(now_at.positions, host)
    epoch += 1
    now = time.perf_counter()
    durations.append(now - last)
    last = now
    eta = _eta(durations, standing, cfg, epoch, r)
    spec.progress(progress_line(spec.task, cfg, spec.groups, r, epoch, standing.active,
                                standing.best, now - start, eta))
    if on_epoch is not None:
      on_epoch(epoch, epoch_report(spec.task, hist, standing, epoch, r, now - start, eta))
    if not standing.active[:r].any():       # pads are not waited for
      break
    if spec.compact and spec.member_mode == "vmap" and epoch < cfg.max_epochs:
      compacted = _compacted(spec, now_at, host["active"])
      if compacted is not None:
        now_at, compactions = compacted, compactions + 1
    if on_epoch_end is not None and epoch < cfg.max_epochs:
      on_epoch_end(epoch, snapshot)
  return _finish(spec, data, now_at.merged(), hist, epoch, compactions)


def _restore(spec: RunSpec, restore: Snapshot, template: TrainState, hist: Histories
             ) -> tuple[_Layout, Standing]:
  """The layout and standing of a snapshot; fills `hist` from it (in place).

  A compacted snapshot ("vmap" mode) gets its layout back (compiled again).
  """
  r, m = len(spec.members), spec.stacked
  hist.load(restore, r)
  restored = sharding.shard_members(TrainState.from_dict(state_from_host(
      sharding.pad_leading(restore.state, m), template.to_dict())), spec.mesh)
  positions = np.flatnonzero(np.asarray(restore.stacked, bool))
  if not 0 < len(positions) <= r:
    raise ValueError(f"snapshot stacks {len(positions)} of {r} members")
  if len(positions) < r and spec.member_mode == "vmap":
    positions = sharding.pad_indices(positions, m, spec.mesh.size)
    layout = _Layout(sharding.shard_members(take_members(restored, positions), spec.mesh),
                     restored, positions, spec.layout_epoch_fn(positions))
  else:
    layout = _Layout(restored, None, np.arange(m), spec.epoch_fn)
  return layout, Standing.of_state(restore.state, m)


def _compacted(spec: RunSpec, now_at: _Layout, active: np.ndarray) -> _Layout | None:
  """The layout of the members of `now_at` still `active` (padded to the devices), or None
  while more than half of its members train or nothing would be dropped."""
  keep = sharding.pad_indices(np.flatnonzero(active), len(now_at.positions), spec.mesh.size)
  if 2 * int(active.sum()) > len(now_at.positions) or len(keep) >= len(now_at.positions):
    return None
  positions = now_at.positions[keep]
  return _Layout(sharding.shard_members(take_members(now_at.state, keep), spec.mesh),
                 now_at.merged(), positions, spec.layout_epoch_fn(positions))


def _eta(durations: list[float], standing: Standing, cfg: EngineConfig, epoch: int,
         r: int) -> float:
  """Seconds until the task ends if no member improved again (see `Engine.run`'s on_epoch)."""
  active = standing.active[:r]
  last_best = int(np.max(standing.best_epoch[:r][active])) if active.any() else 0
  left = 0 if not active.any() else min(cfg.max_epochs - epoch,
                                        last_best + cfg.patience + 1 - epoch)
  return float(np.mean((durations[1:] or durations)[-5:])) * left


def epoch_report(task, hist: Histories, standing: Standing, epoch: int, r: int,
                 elapsed: float, eta: float) -> dict[str, Any]:
  """The `on_epoch` hook's `host` dict after `epoch` epochs (`Engine.run`).

  Numpy arrays over the R real members in `RunSpec.members` order, fresh
  copies the callee may keep:
    train_loss (R,) float32: mean training loss of the epoch (NaN for a
      member that did not train in it);
    valid_metric (R,) float32: the valid metric after it (NaN likewise);
    n_infinite (R,) int: non-finite valid predictions;
    trained (R,) bool: the member trained in this epoch;
    active (R,) bool: it is still training after it;
    status (R,) int: its `Status` so far (TRAINING while active);
    best_valid (R,) float32: its best valid metric so far, in the metric's
      units (NaN before any finite one);
    best_epoch (R,) int: the 0-based epoch of that best (-1: none);
    diag: name -> (R, ...) this epoch's diagnostics (`RunSpec.diagnostic_shapes`);
  and two floats: elapsed_s, the seconds since `run` started, and eta_s, an
  estimate of the seconds until the task ends: the mean duration of the
  recent epochs (the first one, which compiles, left out once there are
  others) times the epochs until the last active member would stop if none
  improved again (capped by max_epochs). It is low while members still
  improve; 0.0 once none trains.
  """
  e = epoch - 1
  sign = 1.0 if task.higher_is_better else -1.0
  best_epoch = standing.best_epoch[:r]
  return dict(
      train_loss=hist.train_loss[e, :r].copy(), valid_metric=hist.valid_metric[e, :r].copy(),
      n_infinite=hist.n_infinite[e, :r].copy(), trained=hist.trained[e, :r].copy(),
      active=standing.active[:r].copy(), status=standing.status[:r].copy(),
      best_valid=np.where(best_epoch >= 0, sign * standing.best[:r], np.nan).astype(np.float32),
      best_epoch=best_epoch.copy(),
      diag={k: v[e, :r].copy() for k, v in hist.diag.items()},
      elapsed_s=elapsed, eta_s=eta)


def _finish(spec: RunSpec, data: TaskData, state: TrainState, hist: Histories, epochs: int,
            compactions: int) -> Outcome:
  """The test pass of every member's best weights, and the `Outcome`."""
  r = len(spec.members)
  state = state.replace(status=jnp.where(state.active, Status.HIT_CAP, state.status))
  test_metric, test_inf = sharding.to_host(spec.test_fn(*program_lib.test_arguments(state, data)))
  members = collect(spec, sharding.to_host(state.to_dict()), np.asarray(test_metric),
                    np.asarray(test_inf), hist, epochs)
  return Outcome(members=members, compactions=compactions,
                 final_state=sharding.unpad(state, r).to_dict(), histories=hist.real(r),
                 epochs=epochs)


_STATUS_NAMES = {Status.OK: "ok", Status.INVALID: "invalid", Status.NONFINITE: "nonfinite",
                 Status.HIT_CAP: "hit_cap", Status.TRAINING: "hit_cap"}


def collect(spec: RunSpec, state, test_metric, test_inf, hist: Histories, epochs_run: int
            ) -> list[MemberResult]:
  """Every real member's `MemberResult`, from the final host state and the histories.

  Args:
    spec: the task's `RunSpec` (members, task, config, invalid reasons, probes).
    state: the final state as a host dict (`TrainState.to_dict`), M stacked.
    test_metric, test_inf: (M,) the best weights' test metric and non-finite
      test predictions.
    hist: the `Histories` (max_epochs, M, ...) of `run`.
    epochs_run: epochs run by the task.
  """
  sign = 1.0 if spec.task.higher_is_better else -1.0
  axes = {p.name: p.axes for p in spec.probes}
  results = []
  for i, (cell, seed) in enumerate(spec.members):
    status = Status(int(state["status"][i]))
    best_epoch = int(state["best_epoch"][i])
    trained = hist.trained[:epochs_run, i]
    reason = None
    status_epoch = int(state["status_epoch"][i])
    if status == Status.INVALID:
      reason = spec.invalid_reasons[cell]
    elif status == Status.NONFINITE:
      reason = f"loss or parameters became non-finite in epoch {status_epoch}"
    elif status == Status.HIT_CAP:
      reason = f"still improving at the epoch cap ({spec.config.max_epochs})"
      status_epoch = epochs_run - 1
    found = best_epoch >= 0
    results.append(MemberResult(
        cell=cell, seed=seed,
        best_valid=float(sign * state["best_score"][i]) if found else float("nan"),
        test=float(test_metric[i]) if found else float("nan"),
        best_epoch=best_epoch,
        epochs_trained=int(state["epochs_trained"][i]),
        status=_STATUS_NAMES[status],
        status_reason=reason,
        status_epoch=status_epoch if status_epoch >= 0 else None,
        train_loss=[float(v) for v in hist.train_loss[:epochs_run, i][trained]],
        valid_metric=[float(v) for v in hist.valid_metric[:epochs_run, i][trained]],
        n_infinite_valid=int(hist.n_infinite[best_epoch, i]) if found else 0,
        n_infinite_test=int(test_inf[i]) if found else 0,
        diagnostics=member_diagnostics(cell, spec.max_depth, hist.diag, axes, i, trained),
    ))
  return results


def member_diagnostics(cell: Cell, max_depth: int, hist_diag, axes, i: int, trained
                       ) -> dict[str, Any]:
  """Member i's diagnostics over the epochs it trained, as lists, cut to its depth.

  `axes`: name -> the probe's declared axes (`probes.Probe.axes`). Returns
  {"layers": names, name: [per-epoch value or per-layer list], ...}, values
  rounded to 4 significant digits (None for NaN).
  """
  n = len(trained)
  out: dict[str, Any] = {"layers": probes_lib.layer_names(cell.depth)}
  for name, h in hist_diag.items():
    out[name] = round_list(probes_lib.member_part(h[:n, i][trained], axes[name], cell.depth,
                                                  max_depth, leading=1))
  return out


def round_list(a: np.ndarray):
  """A nested list of `a`'s values to 4 significant digits, NaN as None."""
  if a.ndim == 0:
    x = float(a)
    return None if not np.isfinite(x) else float(f"{x:.4g}")
  return [round_list(v) for v in a]

