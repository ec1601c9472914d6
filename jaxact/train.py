"""`train_and_evaluate`: train the selected cells of a study and write everything to a workdir.

The flow, top to bottom: `plan` validates the configuration (jaxact.config)
and lists the members (cell, seed) per task; `train_and_evaluate` prepares the
workdir (jaxact.workdir: its layout, resuming, the results records), records
run.json, then for each task loads the data once, builds the task's `Engine`,
restores its latest checkpoint, trains it (`Engine.run`) with the live outputs
(metrics.jsonl, TensorBoard, progress), and writes its results file and the
report. Finished tasks of an earlier run of the same configuration are reused.

`RunConfig`, `UserError`, `validate` and `run_identity` are jaxact.config's,
re-exported here under the names the API documents.

Only this module, jaxact.workdir, jaxact.checkpoint, jaxact.metrics_writer and
jaxact.report do I/O; the engine is pure JAX. With several processes
(multi-host, `--distributed`), every process trains and only process 0 writes
files; the workdir must be on a file system all hosts see.
"""

from __future__ import annotations

import datetime
import logging as std_logging
import math
import os
import shutil
import sys
import time
from typing import Sequence

import jax
from absl import logging

from jaxact import checkpoint as checkpoint_lib
from jaxact import compile_ahead as compile_ahead_lib
from jaxact import data as data_lib
from jaxact import engine as engine_lib
from jaxact import files
from jaxact import memory as memory_lib
from jaxact import diagnostics as diagnostics_lib
from jaxact import metrics_writer
from jaxact import provenance
from jaxact import sharding
from jaxact import studies
from jaxact import tasks as tasks_lib
from jaxact import workdir as workdir_lib
from jaxact.config import RunConfig, UserError, run_identity, validate

from jaxact import __version__


# train_and_evaluate's checkpoint interval, in epochs (--checkpoint_every's default too).
CHECKPOINT_EVERY = 5

COMPILATION_CACHE_ENV = "JAXACT_COMPILATION_CACHE_DIR"
DEFAULT_COMPILATION_CACHE_DIR = "~/.cache/jaxact/xla"


def enable_compilation_cache(path: str | None) -> str | None:
  """Turns on jax's persistent compilation cache in `path`; returns the directory used.

  path None: $JAXACT_COMPILATION_CACHE_DIR, else ~/.cache/jaxact/xla; "" turns
  the cache off (returns None). A rerun of the same program (a resumed run, the
  same grid in another workdir) then loads the compiled epoch instead of
  compiling it again: the same executable, so the same results. Call it before
  anything is compiled.
  """
  if path is None:
    path = os.environ.get(COMPILATION_CACHE_ENV, DEFAULT_COMPILATION_CACHE_DIR)
  if not path:
    return None
  path = os.path.abspath(os.path.expanduser(path))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as err:
    raise UserError(f"cannot create the compilation cache directory {path}: {err.strerror}. "
                    "Fix: give a writable --compilation_cache_dir, or '' to run without "
                    "the cache.") from None
  jax.config.update("jax_compilation_cache_dir", path)
  # Programs that compile faster than this are not worth a file (jax's default is 1 s).
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


def plan(config: RunConfig) -> dict[str, list[tuple[studies.Cell, int]]]:
  """The members (cell, seed) to train, per task. Raises UserError for bad requests.

  `validate`s the options, then selects the cells (UserError where the filters
  select none or an impossible one) and checks that the largest task fits in
  memory (`check_memory`).
  """
  validate(config)
  try:
    cells = studies.select_cells(config.study, config.task, config.head, config.loss,
                                 config.norm, config.sigmoid_method, config.conventions,
                                 config.network)
  except ValueError as err:
    raise UserError(str(err)) from None
  check_memory(config, cells)
  seeds = range(config.first_seed, config.first_seed + config.seeds)
  return {t: [(c, s) for c in cs for s in seeds] for t, cs in cells.items()}


def check_memory(config: RunConfig, cells: dict[str, list[studies.Cell]]) -> None:
  """Refuses, before anything is trained, a run whose largest task cannot fit (jaxact.memory)."""
  # The first call starts the backends; jax logs at INFO each one it cannot start (no TPU on a
  # CPU machine), which would precede a one-paragraph refusal on stderr.
  xla_bridge = std_logging.getLogger("jax._src.xla_bridge")
  level = xla_bridge.level
  xla_bridge.setLevel(std_logging.WARNING)
  try:
    platform_name = jax.devices()[0].platform
  finally:
    xla_bridge.setLevel(level)
  mode = config.execution.member_mode
  if mode == "auto":
    mode = "loop" if platform_name == "cpu" and jax.device_count() == 1 else "vmap"
  try:
    e = memory_lib.check_fits(cells, config.seeds, config.engine, config.execution,
                              member_mode=mode,
                              devices=jax.device_count() if mode == "vmap" else 1)
  except memory_lib.DoesNotFit as err:
    raise UserError(str(err)) from None
  if e.compile_s:   # after the check: a refusal is one paragraph with no line before it
    logging.info("memory: the largest task needs about %.1f GiB for %d members per device, "
                 "estimated from its program compiled for %d and %d members in %.0f s",
                 e.total / memory_lib.GIB, e.members, *memory_lib.SMALL_MEMBERS, e.compile_s)


def train_and_evaluate(config: RunConfig, workdir: str,
                       command: Sequence[str] | None = None, *,
                       checkpoint_every: int = CHECKPOINT_EVERY,
                       restart: bool = False, compile_ahead: bool = False,
                       tensorboard: bool = False, tensorboard_members: bool = False,
                       ) -> dict[str, list[engine_lib.MemberResult]]:
  """Trains every planned member, task by task, writing results as each task ends.

  Resumable: rerun with the same configuration and workdir and finished tasks
  are not trained again (their results/<task>.json is reused), and a task
  that was interrupted continues from its latest checkpoint, giving the same
  results as an uninterrupted run. A workdir with results or checkpoints of
  another configuration is refused unless `restart`.

  While a task trains, WORKDIR/metrics.jsonl gets one line per member and
  epoch (metrics_writer.MetricsLog). A task that starts at epoch k (k = 0
  without a checkpoint) first loses its lines of later epochs, so a resumed
  run has each (task, key, seed, epoch) once; a fresh run (a workdir without
  results or checkpoints) starts a new metrics.jsonl and tensorboard/.

  Args:
    config: what to train.
    workdir: where everything is written (created if needed).
    command: the command line to record (default: sys.argv).
    checkpoint_every: save the running task's state every this many epochs
      into WORKDIR/checkpoints/<task> (0: never); a task's checkpoints are
      deleted once its results are written.
    restart: first delete the workdir's results, checkpoints and report.
    compile_ahead: while a task trains, compile the next task's programs in a
      background thread (jaxact.compile_ahead, `Engine.compile_ahead`). Same
      results; it pays where the host is idle during training (an
      accelerator) and competes with training for the cores on a CPU.
      Single-process runs only.
    tensorboard: also write TensorBoard scalars per cell under
      WORKDIR/tensorboard/ (metrics_writer.TensorBoardLog; needs tensorboardX).
    tensorboard_members: with `tensorboard`, also each member's scalars.

  Returns:
    task -> list of MemberResult.
  """
  members = plan(config)
  if checkpoint_every < 0:
    raise UserError(f"--checkpoint_every must be 0 (never) or a positive number of epochs, "
                    f"got {checkpoint_every}.")
  if tensorboard_members and not tensorboard:
    raise UserError("--tensorboard_members adds each member's curves to --tensorboard's: add "
                    "--tensorboard, or leave --tensorboard_members out.")
  if tensorboard and not metrics_writer.tensorboard_available():
    raise UserError("--tensorboard writes its event files with the tensorboardX package, which "
                    f"is not installed: run {metrics_writer.TENSORBOARD_INSTALL} (or pip "
                    "install tensorboardX), or leave --tensorboard out.")
  primary = sharding.is_primary()   # multi-host: only process 0 writes files
  if primary:
    workdir_lib.prepare_workdir(workdir)
  if restart:
    logging.info("--restart: deleting the results and checkpoints in %s", workdir)
    if primary:
      workdir_lib.remove_run_outputs(workdir)
    sharding.sync("jaxact: --restart done")
    previous = None
  else:
    previous = workdir_lib.check_workdir_config(workdir, config)
    if previous is None and primary:   # nothing to resume: start the live outputs afresh
      metrics_writer.remove_live_outputs(workdir)
  now = datetime.datetime.now().isoformat(timespec="seconds")
  run_info = {
      "command": " ".join(["python -m jaxact.main"] + list((command or sys.argv)[1:])),
      "argv": list(command or sys.argv),
      "machine": provenance.machine_description(),
      "jaxact_version": __version__,
      "git_revision": provenance.git_revision(),
      "versions": provenance.package_versions(),
      "started": now,
      "finished": None,
      "config": config.to_dict(),
  }
  if previous is not None:
    run_info["started"] = previous.get("started", now)
    run_info["resumed"] = list(previous.get("resumed") or []) + [now]
    if previous.get("split_fingerprint"):
      run_info["split_fingerprint"] = previous["split_fingerprint"]
  run_path = workdir_lib.run_json_path(workdir)
  workdir_lib.write_json_atomic(run_path, run_info)
  logging.info("jaxact: %s", run_info["machine"])

  if compile_ahead and jax.process_count() > 1:
    logging.warning("--compile_ahead is for single-process runs; this run has %d processes: "
                    "each task compiles when it starts", jax.process_count())
    compile_ahead = False
  ahead = compile_ahead_lib.CompileAhead()
  try:
    return _train_tasks(config, workdir, members, run_info, run_path, checkpoint_every,
                        ahead if compile_ahead else None, tensorboard, tensorboard_members)
  finally:
    ahead.wait()


def _train_tasks(config: RunConfig, workdir: str,
                 members: dict[str, list[tuple[studies.Cell, int]]], run_info: dict,
                 run_path: str, checkpoint_every: int,
                 ahead: compile_ahead_lib.CompileAhead | None,
                 tensorboard: bool = False, tensorboard_members: bool = False,
                 ) -> dict[str, list[engine_lib.MemberResult]]:
  """The task loop of `train_and_evaluate` (see there)."""
  from jaxact import report as report_lib  # matplotlib is imported lazily

  primary = sharding.is_primary()
  split = None
  out = {}
  order = list(members)
  for task, task_members in members.items():
    results_path = workdir_lib.task_results_path(workdir, task)
    ckpt_dir = os.path.join(workdir_lib.checkpoints_dir(workdir), task)
    if os.path.exists(results_path):
      out[task] = workdir_lib.reuse_results(results_path, task, task_members)
      saved_fp = (files.read_json_object(results_path) or {}).get("split_fingerprint")
      if saved_fp and not run_info.get("split_fingerprint"):
        run_info["split_fingerprint"] = saved_fp   # a run.json written before it was recorded
      logging.info("task %s: already done, results kept from %s (not trained again)",
                   task, results_path)
      if primary and os.path.isdir(ckpt_dir):
        shutil.rmtree(ckpt_dir, ignore_errors=True)
      if primary:
        if not os.path.exists(os.path.splitext(results_path)[0] + ".csv"):
          metrics_writer.write_task_csv(results_path)   # a workdir from before the CSVs
        metrics_writer.write_run_csv(workdir)
      continue
    if split is None:
      split = data_lib.load_split(data_lib.resolve_data_dir(config.data_dir), config.split_seed,
                                  tfds_dir=config.tfds_dir)
      logging.info("data: %d train / %d valid / %d test from a pool of %d (%s), split seed %d",
                   len(split.y_train), len(split.y_valid), len(split.y_test),
                   split.train_pool_size, split.source, config.split_seed)
      workdir_lib.check_split(workdir, run_info, split)
      if run_info.get("split_fingerprint") != split.fingerprint:
        run_info["split_fingerprint"] = split.fingerprint
        workdir_lib.write_json_atomic(run_path, run_info)
    cells = list(dict.fromkeys(c for c, _ in task_members))
    logging.info("task %s: %d cells x %d seeds = %d members in one program",
                 task, len(cells), config.seeds, len(task_members))
    start = time.perf_counter()
    prepared = ahead.take(task) if ahead is not None else None
    if prepared is not None:
      engine, task_data = prepared
    else:
      engine = engine_lib.Engine(task, task_members, config.engine, config.execution)
      task_data = engine_lib.TaskData.from_split(split, task)
    if ahead is not None:
      later = [t for t in order[order.index(task) + 1:]
               if not os.path.exists(workdir_lib.task_results_path(workdir, t))]
      if later:
        ahead.start(later[0], engine_lib.Engine(later[0], members[later[0]], config.engine,
                                                config.execution),
                    engine_lib.TaskData.from_split(split, later[0]))
    checkpointer = checkpoint_lib.TaskCheckpointer(
        ckpt_dir, every=checkpoint_every, identity={
            "config": run_identity(config), "split_fingerprint": split.fingerprint,
            "task": task, "members": [[c.key, s] for c, s in engine.members]})
    checkpointer.session_start = start
    live = []                        # this task's on_epoch hooks, closed when it ends
    try:
      try:
        snapshot = checkpointer.restore(engine)
      except checkpoint_lib.CheckpointError as err:
        raise UserError(str(err)) from None
      if snapshot is not None:
        logging.info("task %s: resumed from epoch %d (checkpoint in %s)", task, snapshot.epoch,
                     ckpt_dir)
      if primary:
        live = _live_outputs(workdir, task, engine, config, checkpointer.elapsed,
                             snapshot.epoch if snapshot is not None else 0, tensorboard,
                             tensorboard_members)
      bars = [h for h in live if isinstance(h, metrics_writer.ProgressBar)]
      engine.progress = bars[0].log if bars else logging.info
      results = engine.run(task_data, restore=snapshot,
                           on_epoch_end=checkpointer if checkpoint_every else None,
                           on_epoch=metrics_writer.compose(*live))
    finally:
      checkpointer.close()   # waits for pending saves, also on errors and interrupts
      for hook in live:
        hook.close()
    wall = checkpointer.elapsed()
    t = tasks_lib.get_task(task)
    chance = diagnostics_lib.chance_level(task, tasks_lib.make_targets(task, split.y_valid))
    ceiling = (diagnostics_lib.multilabel_softmax_ceiling(
        tasks_lib.make_targets(task, split.y_test)) if task == "multilabel" else None)
    workdir_lib.write_json_atomic(results_path, {
        "task": task, "study": config.study, "metric_name": t.metric_name,
        "higher_is_better": t.higher_is_better,
        "split_seed": config.split_seed,
        "split_fingerprint": split.fingerprint, "max_epochs": config.engine.max_epochs,
        "patience": config.engine.patience,
        "training": engine_lib.training_record(config.engine), "wall_time_s": round(wall, 2),
        # Layouts compiled before an interruption count once; the one resumed in is traced again.
        "compilations": engine.traces + (snapshot.compactions if snapshot is not None else 0),
        "command": run_info["command"], "machine": run_info["machine"],
        "chance_valid": chance, "softmax_ceiling_test": ceiling,
        "members": workdir_lib.diagnosed_records(results, task, chance, ceiling, config.engine),
    })
    checkpointer.delete()   # the results file is the durable record now
    logging.info("task %s done in %.1f s", task, wall)
    if primary:
      metrics_writer.write_task_csv(results_path)
      metrics_writer.write_run_csv(workdir)
      report_lib.write_report(workdir)
    out[task] = results

  run_info["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
  workdir_lib.write_json_atomic(run_path, run_info)
  if primary:
    logging.info("report: %s", report_lib.write_report(workdir))
  return out


def _live_outputs(workdir: str, task: str, engine: engine_lib.Engine, config: RunConfig,
                  clock, start_epoch: int, tensorboard: bool, tensorboard_members: bool,
                  ) -> list:
  """The on_epoch hooks of a task starting at `start_epoch` (process 0 only).

  metrics.jsonl loses the task's lines after `start_epoch` first (those of an
  interrupted run after its last checkpoint); TensorBoard gets a purge
  step; a tqdm bar is added where stderr is a terminal.
  """
  path = os.path.join(workdir, metrics_writer.METRICS_FILE)
  dropped = metrics_writer.drop_task_lines(path, task, start_epoch)
  if dropped:
    logging.info("task %s: dropped %d lines after epoch %d from %s (they are trained again)",
                 task, dropped, start_epoch, path)
  hooks = []
  try:
    hooks.append(metrics_writer.MetricsLog(path, task, engine.members, config.engine, clock))
    if tensorboard:
      hooks.append(metrics_writer.TensorBoardLog(
          os.path.join(workdir, metrics_writer.TENSORBOARD_DIR), task, engine.members,
          start_epoch, per_member=tensorboard_members))
    if metrics_writer.ProgressBar.wanted():
      hooks.append(metrics_writer.ProgressBar(task, config.engine.max_epochs, start_epoch,
                                              engine.num_members))
  except BaseException:
    for hook in hooks:
      hook.close()
    raise
  return hooks


def format_results_table(results: dict[str, list[engine_lib.MemberResult]],
                         config: engine_lib.EngineConfig = engine_lib.PROTOCOL) -> str:
  """A compact plain-text table of mean best-valid / test metric per cell, for the console."""
  lines = []
  for task, rs in results.items():
    t = tasks_lib.get_task(task)
    scale, unit = (100.0, "%") if t.higher_is_better else (1.0, "")
    lines.append(f"{task} ({t.metric_name})")
    for cell in dict.fromkeys(r.cell for r in rs):
      mine = [r for r in rs if r.cell == cell]
      finite = [r for r in mine if math.isfinite(r.best_valid)]
      statuses = sorted({r.status for r in mine})
      if finite:
        v = sum(r.best_valid for r in finite) / len(finite) * scale
        te = sum(r.test for r in finite if math.isfinite(r.test)) / max(
            1, sum(math.isfinite(r.test) for r in finite)) * scale
        lines.append(f"  {engine_lib.cell_label(cell, config):<40} valid {v:8.4g}{unit}  "
                     f"test {te:8.4g}{unit}  "
                     f"[{len(mine)} seeds: {', '.join(statuses)}]")
      else:
        lines.append(f"  {engine_lib.cell_label(cell, config):<40} {', '.join(statuses)}: "
                     f"{mine[0].status_reason}")
  return "\n".join(lines)
