"""The host loop of a task: epochs, histories, compaction, snapshots, progress, results.

`run(engine, data)` calls the engine's jitted epoch function once per epoch
and fetches only a few (M,) vectors per epoch: the histories (train loss,
valid metric, diagnostics) are kept here, on the host, and so are the
progress line, the `on_epoch` / `on_epoch_end` hooks (snapshots for
checkpoints; the runner does no file I/O itself) and the `MemberResult`s.

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
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxact.study import options as options_lib
from jaxact.engine import probes as probes_lib
from jaxact.engine import program as program_lib
from jaxact.engine import sharding
from jaxact.engine.program import EngineConfig, PROTOCOL, Status, TaskData, TrainState
from jaxact.model.cells import Cell


def training_label(config: EngineConfig) -> str:
  """The training choices of `config` that differ from PROTOCOL's, e.g. 'sgd (momentum 0.9), lr 0.01'.

  '' for PROTOCOL's training; cells' labels carry it where it is not ''. Each
  training option's part is declared with it (jaxact.options).
  """
  return ", ".join(options_lib.training_parts(config))


def cell_label(cell: Cell, config: EngineConfig) -> str:
  """`cell.label`, followed by the run's training choices that differ from PROTOCOL's, if any.

  The options the cell's own arm sets (`Cell.arm`) are named by `cell.label` and left out
  of the run's part, e.g. 'sigmoid + bce (lr 0.1) [sgd (momentum 0.9)]' in a run whose
  reference arm has lr 0.01.
  """
  training = training_label(dataclasses.replace(
      config, **{k: getattr(PROTOCOL, k) for k in cell.arm}))
  return f"{cell.label} [{training}]" if training else cell.label


def training_record(config: EngineConfig) -> dict[str, Any]:
  """The training choices a results file records (every field `training_label` may name)."""
  return {**options_lib.training_fields(config), "label": training_label(config)}

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
      ranked.append((sign * float(f"{mean:.4g}"), -i, cell_label(cell, config), mean))
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


def run(engine, data: TaskData, restore: Snapshot | None = None,
        on_epoch_end: Callable[[int, Callable[[], Snapshot]], None] | None = None,
        on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
        ) -> list[MemberResult]:
  """`engine.run`: trains every member to its early stop (or the cap); returns per-member results.

  `engine` is the task's `Engine` (engine.py): its members, configuration,
  mesh and jitted functions (`epoch_fn`, `layout_epoch_fn`, `test_fn`). Sets
  its `compactions` as they happen and its `final_state` at the end. See
  `Engine.run` for the arguments.
  """
  cfg = engine.config
  r, m = engine.num_members, len(engine.stacked_members)   # real members; stacked, pads included
  data = sharding.replicate(data, engine.mesh)
  state = engine.initial_state(data)
  full = None                      # full-size state, from the first compaction on
  layout = np.arange(m)
  epoch_fn = engine.epoch_fn
  active = np.ones((m,), bool)     # host copies over all members, for progress
  best = np.full((m,), -np.inf, np.float32)
  best_epoch = np.full((m,), -1, np.int64)
  status = np.full((m,), int(Status.TRAINING), np.int64)
  hist_loss = np.full((cfg.max_epochs, m), np.nan, np.float32)
  hist_valid = np.full((cfg.max_epochs, m), np.nan, np.float32)
  hist_trained = np.zeros((cfg.max_epochs, m), bool)
  hist_inf = np.zeros((cfg.max_epochs, m), np.int64)
  hist_diag = {name: np.full((cfg.max_epochs, m) + shape, np.nan, dtype)
               for name, (shape, dtype) in engine.diagnostic_shapes().items()}
  epoch = 0
  engine.compactions = 0
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
    restored = sharding.shard_members(TrainState.from_dict(state_from_host(
        sharding.pad_leading(restore.state, m), state.to_dict())), engine.mesh)
    layout = np.flatnonzero(np.asarray(restore.stacked, bool))
    if not 0 < len(layout) <= r:
      raise ValueError(f"snapshot stacks {len(layout)} of {r} members")
    if len(layout) < r and engine.member_mode == "vmap":
      full = restored
      layout = sharding.pad_indices(layout, m, engine.mesh.size)
      state = sharding.shard_members(take_members(full, layout), engine.mesh)
      epoch_fn = engine.layout_epoch_fn(engine.layout_groups(layout))
    else:
      layout = np.arange(m)
      state = restored
    active = sharding.pad_leading(np.asarray(restore.state["active"], bool), m).copy()
    best = sharding.pad_leading(np.asarray(restore.state["best_score"], np.float32), m).copy()
    best_epoch = sharding.pad_leading(np.asarray(restore.state["best_epoch"], np.int64), m).copy()
    status = sharding.pad_leading(np.asarray(restore.state["status"], np.int64), m).copy()
    epoch = int(restore.epoch)
    engine.compactions = int(restore.compactions)

  def snapshot() -> Snapshot:
    now = state if full is None else put_members(full, state, layout)
    stacked = np.zeros((m,), bool)
    stacked[layout] = True
    return Snapshot(epoch=epoch, state=state_to_host(sharding.unpad(now, r).to_dict()),
                    stacked=stacked[:r], compactions=engine.compactions,
                    hist_loss=hist_loss[:, :r].copy(), hist_valid=hist_valid[:, :r].copy(),
                    hist_trained=hist_trained[:, :r].copy(), hist_inf=hist_inf[:, :r].copy(),
                    hist_diag={k: v[:, :r].copy() for k, v in hist_diag.items()})

  start = last = time.perf_counter()
  durations = []                   # seconds of each epoch of this call, for the ETA
  sign = 1.0 if engine.task.higher_is_better else -1.0
  while epoch < cfg.max_epochs:
    state, metrics = epoch_fn(state, data)
    host = sharding.to_host(dict(
        train_loss=metrics.train_loss, valid_metric=metrics.valid_metric,
        n_infinite=metrics.n_infinite, trained=metrics.trained, diag=metrics.diag,
        active=state.active, best=state.best_score, best_epoch=state.best_epoch,
        status=state.status))
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
    engine.progress(progress_line(engine.task, cfg, engine.groups, r, epoch, active, best,
                                  now - start, eta))
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
    keep = sharding.pad_indices(np.flatnonzero(host["active"]), len(layout), engine.mesh.size)
    if (engine.execution.compact and engine.member_mode == "vmap" and epoch < cfg.max_epochs
        and 2 * n_active <= len(layout) and len(keep) < len(layout)):
      full = state if full is None else put_members(full, state, layout)
      state = sharding.shard_members(take_members(state, keep), engine.mesh)
      layout = layout[keep]
      epoch_fn = engine.layout_epoch_fn(engine.layout_groups(layout))
      engine.compactions += 1
    if on_epoch_end is not None and epoch < cfg.max_epochs:
      on_epoch_end(epoch, snapshot)
  state = state if full is None else put_members(full, state, layout)
  state = state.replace(status=jnp.where(state.active, Status.HIT_CAP, state.status))
  engine.final_state = sharding.unpad(state, r).to_dict()
  test_metric, test_inf = sharding.to_host(engine.test_fn(
      state.best_params, data.x_test, data.t_test, *program_lib.target_scale(state, data),
      state.best_stats))
  return collect(engine, sharding.to_host(state.to_dict()), np.asarray(test_metric),
                 np.asarray(test_inf), hist_loss, hist_valid, hist_trained, hist_inf,
                 hist_diag, epoch)


def collect(engine, state, test_metric, test_inf, hist_loss, hist_valid, hist_trained,
            hist_inf, hist_diag, epochs_run) -> list[MemberResult]:
  """Every real member's `MemberResult`, from the final host state and the histories.

  Args:
    engine: the task's Engine (members, loss_fns, config, task, max_depth).
    state: the final state as a host dict (`TrainState.to_dict`), M stacked.
    test_metric, test_inf: (M,) the best weights' test metric and non-finite
      test predictions.
    hist_*: the histories (max_epochs, M, ...) of `run`.
    epochs_run: epochs run by the task.
  """
  sign = 1.0 if engine.task.higher_is_better else -1.0
  results = []
  for i, (cell, seed) in enumerate(engine.members):
    status = Status(int(state["status"][i]))
    best_epoch = int(state["best_epoch"][i])
    trained = hist_trained[:epochs_run, i]
    reason = None
    status_epoch = int(state["status_epoch"][i])
    if status == Status.INVALID:
      reason = engine.loss_fns[cell].invalid_reason
    elif status == Status.NONFINITE:
      reason = f"loss or parameters became non-finite in epoch {status_epoch}"
    elif status == Status.HIT_CAP:
      reason = f"still improving at the epoch cap ({engine.config.max_epochs})"
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
        diagnostics=member_diagnostics(cell, engine.max_depth, hist_diag, i, trained),
    ))
  return results


def member_diagnostics(cell: Cell, max_depth: int, hist_diag, i: int, trained
                       ) -> dict[str, Any]:
  """Member i's diagnostics over the epochs it trained, as lists, cut to its depth.

  Returns {"layers": names, name: [per-epoch value or per-layer list], ...},
  values rounded to 4 significant digits (None for NaN).
  """
  n = len(trained)
  keep_layers = list(range(3 + cell.depth)) + [3 + max_depth]
  out: dict[str, Any] = {"layers": probes_lib.layer_names(cell.depth)}
  for name, h in hist_diag.items():
    v = h[:n, i][trained]
    if v.ndim == 2:
      v = v[:, keep_layers] if v.shape[1] == 4 + max_depth else v[:, :cell.depth]
    out[name] = round_list(v)
  return out


def round_list(a: np.ndarray):
  """A nested list of `a`'s values to 4 significant digits, NaN as None."""
  if a.ndim == 0:
    x = float(a)
    return None if not np.isfinite(x) else float(f"{x:.4g}")
  return [round_list(v) for v in a]

