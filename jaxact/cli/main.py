r"""jaxact command line: train a study's cells over many seeds and report.

Examples (`jaxact` and `python -m jaxact` are the same command):
  python -m jaxact.main --preset=smoke --data_dir=../shared/data/mnist   # a first look
  python -m jaxact.main --task=binary --head=sigmoid --data_dir=../shared/data/mnist
  jaxact --study=hidden --tensorboard --workdir=/tmp/h   # tensorboard --logdir=/tmp/h/tensorboard
  python -m jaxact.main --study=activation --seeds=10 --workdir=/tmp/jaxact
  python -m jaxact.main --study=activation --task=multiclass --init=torch,he,xavier
  python -m jaxact.main --study=hidden --depth=1 --seeds=2      # the hidden-layer study
  python -m jaxact.report --workdir=/tmp/jaxact      # rebuild the report only

Rerunning a command with the same --workdir resumes it: finished tasks are
kept, an interrupted task continues from its latest checkpoint.

While a task trains, WORKDIR/metrics.jsonl grows by one JSON line per member
and epoch (`tail -f` it, or pandas.read_json(path, lines=True)); finished
tasks' results are also in WORKDIR/results.csv.

Members are sharded over every device (jaxact/engine/sharding.py). On a multi-host
TPU slice, run the SAME command on every host with --distributed (and a
--workdir on a file system all hosts see); only process 0 writes files.
Without a cluster manager, also give every process --coordinator_address
(process 0's HOST:PORT), --num_processes and its own --process_id.
"""

import errno
import logging as std_logging
import signal
import sys

from absl import app
from absl import flags
from absl import logging

from jaxact.data import idx as idx_lib
from jaxact.store import files
from jaxact.study import options as options_lib
from jaxact.study import presets as presets_lib
from jaxact.engine import sharding
from jaxact.study import train

# Every flag is generated from its option's declaration (jaxact.study.options; --preset's in
# jaxact.presets); a flag that sets a RunConfig field takes its default from RunConfig, so
# the command line and the Python API agree.
DEFAULTS = train.RunConfig()
# --help lists the flags of the module it runs, which absl names by its path when run as
# `python -m jaxact.main`.
FLAGS = options_lib.define_flags(presets_lib.command_line(), DEFAULTS, flags.FLAGS,
                                 module_name=sys.argv[0] if __name__ == "__main__" else __name__)


def _preset(flag_values: flags.FlagValues) -> presets_lib.Preset | None:
  """The --preset of `flag_values`, or None; UserError for an unknown name."""
  name = flag_values["preset"].value
  if not name:
    return None
  try:
    return presets_lib.get_preset(name)
  except ValueError as err:
    raise train.UserError(f"--preset: {err}.") from None


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> train.RunConfig:
  """The RunConfig of the parsed flags; UserError for values that are not even of the right form.

  The options given on the command line, over --preset's values (if any), over
  RunConfig's defaults. Only the parsing of strings into values happens here
  (each option's `Kind.parse`: the tri-states, the comma lists, --convention=both);
  every check of the values is `train.validate`'s (called by `train.plan`),
  shared with the Python API.
  """
  given = {}
  for option in presets_lib.command_line():
    if option.field is not None and flag_values[option.name].present:
      try:
        given[option.name] = option.kind.parse(option.name, flag_values[option.name].value)
      except ValueError as err:
        raise train.UserError(str(err)) from None
  preset = _preset(flag_values)
  if preset is None:
    return options_lib.with_values(DEFAULTS, given)
  return preset.config(**given)


def run_arguments(flag_values: flags.FlagValues = flags.FLAGS) -> dict:
  """The run's own options (no RunConfig field): the flag where given, else --preset's, else
  the flag's default; option name -> value."""
  preset = _preset(flag_values)
  own = preset.arguments() if preset is not None else {}
  return {o.name: (flag_values[o.name].value if flag_values[o.name].present or o.name not in own
                   else own[o.name])
          for o in presets_lib.command_line() if o.field is None and o is not presets_lib.OPTION}


class _QuietOrbax(std_logging.Filter):
  """Drops orbax's INFO chatter (one line per save, restore and deletion) from the log."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def write_failure(err: OSError, workdir: str) -> str:
  """The one paragraph for a file the run could not write (a full disk, a read-only directory)."""
  full = err.errno in (errno.ENOSPC, errno.EDQUOT)
  what = str(err) if isinstance(err, files.WriteError) else (
      f"cannot write {err.filename or 'a file'}: {err.strerror or err} [Errno {err.errno}]")
  fix = ("make room on that disk" if full else "make that directory writable")
  return (f"{what}. Finished tasks' results are kept in {workdir}/results (each is written "
          f"whole or not at all). Fix: {fix} (or move the workdir where it can be written and "
          "point --workdir at it), then rerun the same command: finished tasks are not trained "
          "again, and a task that was running goes on from its latest checkpoint.")


def _terminate(signum, frame):
  del frame
  raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:   # before anything touches a device
    sharding.initialize_distributed(FLAGS["distributed"].value,
                                    FLAGS["coordinator_address"].value,
                                    FLAGS["num_processes"].value, FLAGS["process_id"].value)
  except ValueError as err:
    sys.stderr.write(f"jaxact: error: {err}\n")
    sys.exit(2)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietOrbax())
  signal.signal(signal.SIGTERM, _terminate)   # like Ctrl-C: pending checkpoints are finished
  args = {name: FLAGS[name].value for name in ("workdir", "checkpoint_every")}
  try:
    config = config_from_flags()
    args = run_arguments()
    # Before train_and_evaluate plans (and validates) the run: its memory estimate may
    # compile, and jax settles whether it uses the persistent cache at the first compilation.
    train.enable_compilation_cache(args["compilation_cache_dir"])
    results = train.train_and_evaluate(config, args["workdir"], command=sys.argv,
                                       checkpoint_every=args["checkpoint_every"],
                                       restart=args["restart"],
                                       compile_ahead=args["compile_ahead"],
                                       tensorboard=args["tensorboard"],
                                       tensorboard_members=args["tensorboard_members"])
  except (train.UserError, idx_lib.DataError) as err:
    sys.stderr.write(f"jaxact: error: {err}\n")
    sys.exit(2)
  except OSError as err:
    if not isinstance(err, files.WriteError) and err.errno not in files.DISK_ERRNOS:
      raise
    sys.stderr.write(f"jaxact: error: {write_failure(err, args['workdir'])}\n")
    sys.exit(2)
  except KeyboardInterrupt:
    every = args["checkpoint_every"]
    where = (f"from the running task's latest checkpoint (saved every {every} epochs)" if every
             else "(checkpoints were off, --checkpoint_every=0: the running task starts over)")
    sys.stderr.write(
        f"jaxact: interrupted. Finished tasks' results are in {args['workdir']}/results; rerun "
        f"the same command to go on {where}.\n")
    sys.exit(130)
  if sharding.is_primary():
    print(train.format_results_table(results, config.engine, args["workdir"]))
    print(f"\nreport: {args['workdir']}/report.md")


def run():
  """The `jaxact` console script and `python -m jaxact`: the same as `python -m jaxact.main`."""
  entry = sys.modules["__main__"]
  if entry is not sys.modules[__name__]:
    # absl's --help prints __main__'s docstring and the flags of the module named
    # sys.argv[0]; here __main__ is the console script or jaxact/__main__.py.
    entry.__doc__ = __doc__
    for flag in flags.FLAGS.get_key_flags_for_module(__name__):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)


if __name__ == "__main__":
  run()
