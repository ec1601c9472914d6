"""`train_and_evaluate`: train the selected cells of a study and write everything to a workdir.

The flow, top to bottom: `plan` validates the configuration (jaxact.study.config)
and lists the members (cell, seed) per task; `train_and_evaluate` checks what
the workdir holds, loads the data once if a task is left to train (before
anything is written, so bad data leave no files behind), prepares the workdir
(jaxact.store.workdir: its layout, resuming, the results records), records run.json
with a new segment (jaxact.store.provenance), then for each task builds its `Engine`,
restores its latest checkpoint, trains it (`Engine.run`) with the live outputs
(metrics.jsonl, TensorBoard, progress), and writes its results file and the
report. Finished tasks of an earlier run of the same configuration are reused.

`RunConfig`, `UserError`, `validate` and `run_identity` are jaxact.study.config's,
re-exported here under the names the API documents.

Only this module, jaxact.store.workdir, jaxact.store.checkpoint, jaxact.store.metrics_writer and
jaxact.report do I/O; the engine is pure JAX. With several processes
(multi-host, `--distributed`), every process trains and only process 0 writes
files; the workdir must be on a file system all hosts see.
"""

from __future__ import annotations

import logging as std_logging
import os
import shutil
import sys
import time
from typing import Sequence

import jax
from absl import logging

from jaxact.engine import labels as labels_lib
from jaxact.study import config as config_lib
from jaxact.store import checkpoint as checkpoint_lib
from jaxact.engine import compile_ahead as compile_ahead_lib
from jaxact.data import mnist as data_lib
from jaxact.engine import engine as engine_lib
from jaxact.engine import memory as memory_lib
from jaxact.store import diagnostics as diagnostics_lib
from jaxact.store import metrics_writer
from jaxact.study import options as options_lib
from jaxact.store import provenance
from jaxact.store import records as records_lib
from jaxact.engine import runner as runner_lib
from jaxact.engine import sharding
from jaxact.model import cells as studies
from jaxact.data import tasks as tasks_lib
from jaxact.store import workdir as workdir_lib
from jaxact.study.config import RunConfig, UserError, run_identity, validate
from jaxact.engine import program as program_lib

from jaxact import __version__


# train_and_evaluate's checkpoint interval, in epochs: --checkpoint_every's declared default.
CHECKPOINT_EVERY = options_lib.get("checkpoint_every").default

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
  cells = {t: [v for c in cs for v in config.arms.variants(c, config.engine)]
           for t, cs in cells.items()}
  check_memory(config, cells)
  seeds = range(config.first_seed, config.first_seed + config.seeds)
  return {t: [(c, s) for c in cs for s in seeds] for t, cs in cells.items()}


def check_memory(config: RunConfig, cells: dict[str, list[studies.Cell]]) -> None:
  """Refuses, before anything is trained, a run whose largest task cannot fit (jaxact.engine.memory)."""
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
                       ) -> dict[str, list[runner_lib.MemberResult]]:
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
      background thread (jaxact.engine.compile_ahead, `Engine.compile_ahead`). Same
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
  _check_run_arguments(checkpoint_every, tensorboard, tensorboard_members)
  clock = time.perf_counter()
  primary = sharding.is_primary()   # multi-host: only process 0 writes files
  previous = None if restart else config_lib.check_workdir_config(workdir, config)
  run_info = _run_record(config, command or sys.argv, previous)
  segment = run_info["segments"][-1]
  # The data before anything is written: a bad --data_dir or tfds cache leaves no files behind.
  split = _load_data(config, workdir, members, run_info, restart)
  if primary:
    workdir_lib.prepare_workdir(workdir)
  if restart:
    logging.info("--restart: deleting the results and checkpoints in %s", workdir)
    if primary:
      workdir_lib.remove_run_outputs(workdir)
    sharding.sync("jaxact: --restart done")
  elif previous is None and primary:   # nothing to resume: start the live outputs afresh
    metrics_writer.remove_live_outputs(workdir)
  run_path = workdir_lib.run_json_path(workdir)
  workdir_lib.write_json_atomic(run_path, run_info)
  logging.info("jaxact: %s", run_info["machine"])

  ahead = compile_ahead_lib.CompileAhead()
  try:
    return _train_tasks(config, workdir, members, split, run_info, run_path, checkpoint_every,
                        ahead if _compiles_ahead(compile_ahead) else None, tensorboard,
                        tensorboard_members, clock)
  except BaseException as err:
    # The segment ends here too; a write that fails now (a full disk) must not hide `err`.
    segment["ended"] = provenance.now()
    segment["stopped_by"] = type(err).__name__
    try:
      workdir_lib.write_json_atomic(run_path, run_info)
    except OSError:
      pass
    raise
  finally:
    ahead.wait()


def _compiles_ahead(compile_ahead: bool) -> bool:
  """--compile_ahead, for a single-process run (a warning where there are several)."""
  if compile_ahead and jax.process_count() > 1:
    logging.warning("--compile_ahead is for single-process runs; this run has %d processes: "
                    "each task compiles when it starts", jax.process_count())
    return False
  return compile_ahead


def _check_run_arguments(checkpoint_every: int, tensorboard: bool,
                         tensorboard_members: bool) -> None:
  """UserError for run arguments that are not options of the configuration."""
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


def _load_data(config: RunConfig, workdir: str, members, run_info: dict,
               restart: bool) -> data_lib.RunData | None:
  """The run's data when a task is left to train (None otherwise), checked against the data
  a resumed run was trained on."""
  pending = [t for t in members
             if restart or not os.path.exists(workdir_lib.task_results_path(workdir, t))]
  if not pending:
    return None
  split = data_lib.load_run_data(
      data_lib.resolve_data_dir(config.data_dir), config.tfds_dir, config.split,
      config.split_seed, range(config.first_seed, config.first_seed + config.seeds))
  logging.info("data: %s", split.describe())
  if not restart:
    workdir_lib.check_split(workdir, {"split_fingerprint": _saved_fingerprint(
        workdir, run_info, members)}, split)
  return split


def _run_record(config: RunConfig, argv: Sequence[str], previous: dict | None) -> dict:
  """run.json's content at the start of a run: the earlier segments (if any) and this one.

  The top level holds the command, the configuration, the first start and the
  last finish, and the machine and jaxact version of the latest segment (what
  the report names); "segments" one `provenance.segment` per start, so a run
  resumed at another revision, on another machine or under other packages
  names each. A resume under other package versions than the previous
  segment's is logged as a warning.
  """
  command = " ".join(["python -m jaxact.main"] + list(argv[1:]))
  segment = provenance.segment(command)
  segments = (provenance.segments_of(previous) if previous is not None else []) + [segment]
  before = next((s["versions"] for s in reversed(segments[:-1]) if s.get("versions")), None)
  diffs = provenance.version_differences(before, segment["versions"])
  if diffs:
    logging.warning("run.json: this run resumes one made under other package versions (%s); "
                    "tasks trained now may differ from earlier ones in float rounding",
                    provenance.summarize_versions(diffs))
  run_info = {
      "command": command, "argv": list(argv), "machine": segment["machine"],
      "jaxact_version": __version__, "started": segments[0].get("started") or segment["started"],
      "finished": None, "config": config.to_dict(), "segments": segments,
  }
  if previous is not None and previous.get("split_fingerprint"):
    run_info["split_fingerprint"] = previous["split_fingerprint"]
  return run_info


def _saved_fingerprint(workdir: str, run_info: dict, tasks) -> str | None:
  """The split fingerprint the workdir's run was trained on: run.json's, else a results file's."""
  if run_info.get("split_fingerprint"):
    return run_info["split_fingerprint"]
  for task in tasks:
    try:
      saved = records_lib.read_task_results(workdir_lib.task_results_path(workdir, task), task)
    except (OSError, ValueError):
      continue
    if saved.split_fingerprint:
      return saved.split_fingerprint
  return None


def compile_line(task: str, n_members: int, elapsed: float, background: bool = False) -> str:
  """The line logged before a task's first epoch (its compilation is most of the wait).

  `elapsed` is the seconds since the run started; `background`: --compile_ahead
  compiled it while the previous task trained.
  """
  members = f"{n_members} member{'' if n_members == 1 else 's'}"
  if background:
    return (f"task {task}: the program for {members} was compiled in the background; "
            f"run elapsed {runner_lib.format_duration(elapsed)}")
  return (f"task {task}: compiling the program for {members}; "
          f"run elapsed {runner_lib.format_duration(elapsed)}")


def run_line(done: Sequence[str], pending: Sequence[str], elapsed: float,
             left: float | None) -> str:
  """The run-level line logged after each task: tasks done, time since the run started, time left.

  The epoch lines' "elapsed" counts from the task's start; "run elapsed" from the run's.

  Args:
    done: the finished tasks, in order (reused ones included).
    pending: the tasks still to train.
    elapsed: seconds since the run started (this start of it).
    left: estimated seconds for `pending` (None: no estimate yet).
  """
  fmt = runner_lib.format_duration
  total = len(done) + len(pending)
  if left is not None:
    left = max(left, 0.0)
  line = (f"run: {len(done)}/{total} tasks done ({', '.join(done) or 'none'}); "
          f"run elapsed {fmt(elapsed)}")
  if not pending:
    return line + "; all done"
  eta = f"about {fmt(left)} left" if left is not None else "no estimate yet"
  return line + f"; {eta} for {', '.join(pending)}"


def _train_tasks(config: RunConfig, workdir: str,
                 members: dict[str, list[tuple[studies.Cell, int]]], split, run_info: dict,
                 run_path: str, checkpoint_every: int,
                 ahead: compile_ahead_lib.CompileAhead | None,
                 tensorboard: bool = False, tensorboard_members: bool = False,
                 clock: float | None = None,
                 ) -> dict[str, list[runner_lib.MemberResult]]:
  """The task loop of `train_and_evaluate` (see there); `split` is loaded if a task trains.

  `clock` is `time.perf_counter()` at the run's start, for the progress lines.
  """
  # Imported here for import time: the report brings matplotlib, which only a run's end needs.
  from jaxact.analysis import report as report_lib  # pylint: disable=g-import-not-at-top (import time)

  primary = sharding.is_primary()
  clock = time.perf_counter() if clock is None else clock
  segment = run_info["segments"][-1]
  out = {}
  trained_s, trained_members = 0.0, 0   # this start's trained tasks, for the run's ETA
  for task, task_members in members.items():
    results_path = workdir_lib.task_results_path(workdir, task)
    if os.path.exists(results_path):
      out[task] = _reuse_task(workdir, task, task_members, run_info)
      continue
    if run_info.get("split_fingerprint") != split.fingerprint:
      run_info["split_fingerprint"] = split.fingerprint
      workdir_lib.write_json_atomic(run_path, run_info)
    start = time.perf_counter()
    engine, task_data, background = _task_engine(config, workdir, task, members, split, ahead)
    checkpointer = checkpoint_lib.TaskCheckpointer(
        os.path.join(workdir_lib.checkpoints_dir(workdir), task), every=checkpoint_every,
        identity={"config": run_identity(config), "split_fingerprint": split.fingerprint,
                  "task": task, "members": [[c.key, s] for c, s in engine.members]})
    checkpointer.session_start = start
    results, snapshot = _run_task(config, workdir, task, engine, task_data, checkpointer,
                                  tensorboard, tensorboard_members,
                                  compile_line(task, engine.num_members,
                                               time.perf_counter() - clock, background))
    wall = checkpointer.elapsed()
    saved = _task_results(config, task, split, engine, snapshot, results, wall, run_info)
    if primary:
      records_lib.write_task_results(results_path, saved)
    checkpointer.delete()   # the results file is the durable record now
    logging.info("task %s done in %.1f s", task, wall)
    segment["ended"] = provenance.now()
    segment["tasks"] = segment.get("tasks", []) + [task]
    workdir_lib.write_json_atomic(run_path, run_info)
    if primary:
      metrics_writer.write_task_csv(results_path)
      metrics_writer.write_run_csv(workdir)
      report_lib.write_report(workdir)
    out[task] = results
    trained_s += time.perf_counter() - start
    trained_members += len(task_members)
    logging.info("%s", _progress_line(workdir, members, task, trained_s / trained_members,
                                      time.perf_counter() - clock))

  run_info["finished"] = segment["ended"] = provenance.now()
  workdir_lib.write_json_atomic(run_path, run_info)
  if primary:
    logging.info("report: %s", report_lib.write_report(workdir))
  return out


def _reuse_task(workdir: str, task: str, task_members: list[tuple[studies.Cell, int]],
                run_info: dict) -> list[runner_lib.MemberResult]:
  """A finished task's MemberResults from its results file; its checkpoints are removed and
  its CSVs written where missing (process 0)."""
  results_path = workdir_lib.task_results_path(workdir, task)
  saved, results = workdir_lib.reuse_results(results_path, task, task_members)
  if saved.split_fingerprint and not run_info.get("split_fingerprint"):
    run_info["split_fingerprint"] = saved.split_fingerprint   # a run.json written before it was
  logging.info("task %s: already done, results kept from %s (not trained again)",
               task, results_path)
  if sharding.is_primary():
    ckpt_dir = os.path.join(workdir_lib.checkpoints_dir(workdir), task)
    if os.path.isdir(ckpt_dir):
      shutil.rmtree(ckpt_dir, ignore_errors=True)
    if not os.path.exists(os.path.splitext(results_path)[0] + ".csv"):
      metrics_writer.write_task_csv(results_path)   # a workdir from before the CSVs
    metrics_writer.write_run_csv(workdir)
  return results


def _task_engine(config: RunConfig, workdir: str, task: str,
                 members: dict[str, list[tuple[studies.Cell, int]]], split,
                 ahead: compile_ahead_lib.CompileAhead | None,
                 ) -> tuple[engine_lib.Engine, program_lib.TaskData, bool]:
  """The task's Engine and data (compiled in the background if --compile_ahead prepared it,
  the third value then True); with `ahead`, starts compiling the next task left to train."""
  logging.info("task %s: %d cells x %d seeds = %d members in one program", task,
               len(dict.fromkeys(c for c, _ in members[task])), config.seeds,
               len(members[task]))
  prepared = ahead.take(task) if ahead is not None else None
  if prepared is not None:
    engine, task_data = prepared
  else:
    engine = engine_lib.Engine(task, members[task], config.engine, config.execution,
                               splits=split.member_splits)
    task_data = program_lib.TaskData.from_pool(split.pool, task)
  if ahead is not None:
    order = list(members)
    later = [t for t in order[order.index(task) + 1:]
             if not os.path.exists(workdir_lib.task_results_path(workdir, t))]
    if later:
      ahead.start(later[0], engine_lib.Engine(later[0], members[later[0]], config.engine,
                                              config.execution, splits=split.member_splits),
                  program_lib.TaskData.from_pool(split.pool, later[0]))
  return engine, task_data, prepared is not None


def _run_task(config: RunConfig, workdir: str, task: str, engine: engine_lib.Engine,
              task_data: program_lib.TaskData, checkpointer: checkpoint_lib.TaskCheckpointer,
              tensorboard: bool, tensorboard_members: bool, first_line: str,
              ) -> tuple[list[runner_lib.MemberResult], object | None]:
  """Trains one task from its latest checkpoint with the live outputs; returns its
  MemberResults and the snapshot it resumed from (None: a fresh start)."""
  live = []                        # this task's on_epoch hooks, closed when it ends
  try:
    try:
      snapshot = checkpointer.restore(engine)
    except checkpoint_lib.CheckpointError as err:
      raise UserError(str(err)) from None
    if snapshot is not None:
      logging.info("task %s: resumed from epoch %d (checkpoint in %s)", task, snapshot.epoch,
                   checkpointer.directory)
    if sharding.is_primary():
      live = _live_outputs(workdir, task, engine, config, checkpointer.elapsed,
                           snapshot.epoch if snapshot is not None else 0, tensorboard,
                           tensorboard_members)
    bars = [h for h in live if isinstance(h, metrics_writer.ProgressBar)]
    engine.progress = bars[0].log if bars else logging.info
    engine.progress(first_line)
    results = engine.run(task_data, restore=snapshot,
                         on_epoch_end=checkpointer if checkpointer.every else None,
                         on_epoch=metrics_writer.compose(*live)).members
    for hook in live:
      if isinstance(hook, metrics_writer.TensorBoardLog):
        hook.write_hparams(results, labels_lib.training_record(config.engine))
  finally:
    checkpointer.close()   # waits for pending saves, also on errors and interrupts
    for hook in live:
      hook.close()
  return results, snapshot


def _reference_levels(task: str, split, results: Sequence[runner_lib.MemberResult]
                      ) -> tuple[float, float | None, list[dict]]:
  """(chance, ceiling, per-member fields) of a finished task, from its split's labels.

  chance: the constant predictor's valid metric; ceiling: multilabel's softmax ceiling on the
  test labels; per member: its split seed and, for regression, its split's ReLU clamp bound
  (its train targets' mean).
  """
  t = tasks_lib.get_task(task)
  chance = t.chance_level(t.targets(split.valid_labels))
  ceiling = (diagnostics_lib.multilabel_softmax_ceiling(
      t.targets(split.test_labels)) if t.multi_label else None)
  extra = [{"split_seed": split.split_seed_of(r.seed)} for r in results]
  if t.continuous:   # each split's own bound (its train targets' mean)
    pool_t = tasks_lib.make_targets(task, split.pool.y)
    test_t = tasks_lib.make_targets(task, split.test_labels)
    bounds = {s: diagnostics_lib.relu_clamp_bound(pool_t[split.member_splits(s)[0]], test_t)
              for s in dict.fromkeys(r.seed for r in results)}
    for fields, r in zip(extra, results):
      fields["relu_clamp_bound_test"] = bounds[r.seed]
  return chance, ceiling, extra


def _task_results(config: RunConfig, task: str, split, engine: engine_lib.Engine, snapshot,
                  results: Sequence[runner_lib.MemberResult], wall: float, run_info: dict
                  ) -> records_lib.TaskResults:
  """The finished task's results record, its members diagnosed (jaxact.store.records)."""
  t = tasks_lib.get_task(task)
  chance, ceiling, extra = _reference_levels(task, split, results)
  members = [records_lib.MemberRecord.from_result(
      r, labels_lib.cell_label(r.cell, config.engine), **fields)
             for r, fields in zip(results, extra)]
  return records_lib.task_results(
      task, members, study=config.study, metric_name=t.metric_name,
      higher_is_better=t.higher_is_better, split=config.split,
      split_seed=config.split_seed if config.split == "fixed" else None,
      split_fingerprint=split.fingerprint, numerics=engine.numerics(),
      max_epochs=config.engine.max_epochs, patience=config.engine.patience,
      training=labels_lib.training_record(config.engine), wall_time_s=round(wall, 2),
      # Layouts compiled before an interruption count once; the one resumed in is traced again.
      compilations=engine.traces + (snapshot.compactions if snapshot is not None else 0),
      command=run_info["command"], machine=run_info["machine"],
      git_revision=run_info["segments"][-1]["git_revision"], jaxact_version=__version__,
      chance_valid=chance, softmax_ceiling_test=ceiling,
      relu_clamp_bound_test=(extra[0]["relu_clamp_bound_test"]
                             if t.continuous and config.split == "fixed" else None))


def _progress_line(workdir: str, members: dict[str, list[tuple[studies.Cell, int]]], task: str,
                   per_member_s: float, elapsed: float) -> str:
  """`run_line` after `task`: this start's time per trained member times the members left."""
  order = list(members)
  pending = [t for t in order[order.index(task) + 1:]
             if not os.path.exists(workdir_lib.task_results_path(workdir, t))]
  return run_line([t for t in order if t not in pending], pending, elapsed,
                  per_member_s * sum(len(members[t]) for t in pending))


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


def format_results_table(results: dict[str, list[runner_lib.MemberResult]],
                         config: program_lib.EngineConfig = program_lib.PROTOCOL,
                         workdir: str | None = None) -> str:
  """A compact plain-text table per cell, for the console: the diagnosis first, then metrics.

  Each cell's line: its members per diagnosis class ("7 healthy, 3 collapsed", from the
  workdir's results, as stored there; "not diagnosed" without a workdir), the mean
  best-valid and test metric (over the members that did not fail when failed ones are mixed
  in, labelled, as the report's `metric_cells`), and how training
  stopped ("10 early-stopped"): no failed member reads "ok".
  """
  from jaxact.analysis import report as report_lib  # pylint: disable=g-import-not-at-top (import time)
  saved: dict[str, records_lib.TaskResults] = {}
  if workdir:
    try:
      saved = records_lib.load_results(workdir)
    except (FileNotFoundError, ValueError):
      saved = {}
  lines = []
  for task, rs in results.items():
    t = tasks_lib.get_task(task)
    unit = "%" if t.higher_is_better else ""
    lines.append(f"{task} ({t.metric_name})")
    stored = {(m.key, m.seed): m for m in saved[task].members} if task in saved else {}
    for cell in dict.fromkeys(r.cell for r in rs):
      mine = [r for r in rs if r.cell == cell]
      label = labels_lib.cell_label(cell, config)
      members = [stored.get((cell.key, r.seed))
                 or records_lib.MemberRecord.from_result(r, label) for r in mine]
      head = f"  {label:<40} [{len(mine)} seeds: {report_lib.diagnosis_counts(members)}]"
      if all(m.status == "invalid" for m in members):
        lines.append(f"{head} invalid: {mine[0].status_reason}")
        continue
      valid = report_lib.metric_cells(members, "best_valid", t.higher_is_better, unit)[0]
      test = report_lib.metric_cells(members, "test", t.higher_is_better, unit)[0]
      lines.append(f"{head} valid {valid}; test {test}; stopping: "
                   f"{report_lib.status_counts(members)}")
  return "\n".join(lines)
