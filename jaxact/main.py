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

Members are sharded over every device (jaxact/sharding.py). On a multi-host
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

from jaxact import data as data_lib
from jaxact import program as program_lib
from jaxact import files
from jaxact import model as model_lib
from jaxact import presets as presets_lib
from jaxact import sharding
from jaxact import studies
from jaxact import tasks as tasks_lib
from jaxact import train

_TRISTATE = presets_lib.TRISTATE

# Every flag that sets a RunConfig field takes its default from RunConfig (or the
# training / execution group inside it), so the command line and the Python API agree.
DEFAULTS = train.RunConfig()


_tristate_flag = presets_lib.tristate_spelling
_convention_flag = presets_lib.convention_spelling


def _list_flag(values) -> list[str] | None:
  """A DEFINE_list default for a str, number or tuple field (None stays None)."""
  if values is None:
    return None
  if isinstance(values, float):
    return [format(values, "g")]
  return [values] if isinstance(values, str) else [str(v) for v in values]


_PRESET = flags.DEFINE_string(
    "preset", None, "A named run that fills in the flags left unset (given flags win): "
    + "; ".join(f"{p.name}: {p.description}" for p in presets_lib.PRESETS.values()) + ".")

_STUDY = flags.DEFINE_string(
    "study", DEFAULTS.study, "activation (the final-activation study), loss (the loss study), "
    "all (both), or hidden (the hidden-layer study: hidden activation x init x batch norm, and "
    "a depth sweep; multiclass).")
_TASK = flags.DEFINE_list(
    "task", _list_flag(DEFAULTS.task),
    f"One or more (comma-separated) of {', '.join(tasks_lib.TASKS)}; default all.")
_HEAD = flags.DEFINE_string(
    "head", DEFAULTS.head, f"Only cells with this head ({', '.join(studies.HEADS)}).")
_LOSS = flags.DEFINE_string(
    "loss", DEFAULTS.loss, f"Only cells with this loss ({', '.join(studies.LOSSES)}).")
_NORM = flags.DEFINE_string(
    "norm", _tristate_flag(DEFAULTS.norm),
    "Regression: 'on' standardised targets only, 'off' raw targets only, '' both.")
_SIGMOID_METHOD = flags.DEFINE_string(
    "sigmoid_method", _tristate_flag(DEFAULTS.sigmoid_method),
    "Regression: 'on' the sigmoid method only, 'off' without it, '' both.")
_CONVENTION = flags.DEFINE_string(
    "convention", _convention_flag(DEFAULTS.conventions),
    "Loss convention: torch (the original's), logits, or both.")
_SEEDS = flags.DEFINE_integer("seeds", DEFAULTS.seeds, "Seeds per cell (members per cell).")
_FIRST_SEED = flags.DEFINE_integer("first_seed", DEFAULTS.first_seed, "The first member seed.")
_SPLIT = flags.DEFINE_string(
    "split", DEFAULTS.split,
    "per_seed: each member draws its own 2,000/3,000 train/valid split from MNIST's training "
    "pool, seeded by its seed (a pair of cells shares it); fixed: one split for every member, "
    "drawn with --split_seed (the original's single split).")
_SPLIT_SEED = flags.DEFINE_integer("split_seed", DEFAULTS.split_seed,
                                   "--split=fixed: seed of the shared 2,000/3,000 split.")
_INIT = flags.DEFINE_list(
    "init", _list_flag(DEFAULTS.network.init),
    f"Initialisation(s), of {', '.join(model_lib.INITS)}; default torch (PyTorch's). Several "
    "train every cell under each, as members of one program. For --study=hidden: keep only "
    "these rows.")
_HIDDEN = flags.DEFINE_list(
    "hidden", _list_flag(DEFAULTS.network.hidden),
    f"Hidden activation(s) of the dense layers, of "
    f"{', '.join(model_lib.HIDDEN_ACTIVATIONS)}; default sigmoid (the original's). Sets or, "
    "for --study=hidden, filters, like --init.")
_BATCH_NORM = flags.DEFINE_string(
    "batch_norm", _tristate_flag(DEFAULTS.network.batch_norm),
    "'on': batch norm in the dense hidden layers, 'off': without, '' (default) without, or for "
    "--study=hidden both.")
_DEPTH = flags.DEFINE_list(
    "depth", _list_flag(DEFAULTS.network.depth),
    "Number(s) of dense hidden layers (1-64); default 1 (the original's). Sets or, for "
    "--study=hidden, filters, like --init.")
_OPTIMIZER = flags.DEFINE_string(
    "optimizer", DEFAULTS.engine.optimizer,
    f"Optimizer, of {', '.join(program_lib.OPTIMIZERS)}: adamw (PROTOCOL: torch.optim.AdamW) or "
    "sgd (torch.optim.SGD with --momentum; --weight_decay is then its L2 term).")
_ARMS_HELP = (" Several (comma-separated) train every cell under each, as members of one "
              "program paired by seed; the first is the reference arm.")
_LEARNING_RATE = flags.DEFINE_list(
    "learning_rate", _list_flag(DEFAULTS.engine.learning_rate),
    "Learning rate(s) (PROTOCOL: 1e-3)." + _ARMS_HELP)
_MOMENTUM = flags.DEFINE_float(
    "momentum", DEFAULTS.engine.momentum, "--optimizer=sgd: heavy-ball momentum, in [0, 1).")
_WEIGHT_DECAY = flags.DEFINE_list(
    "weight_decay", _list_flag(DEFAULTS.engine.weight_decay),
    "Weight decay(s) (PROTOCOL: 0.01, AdamW's decoupled decay)." + _ARMS_HELP)
_EPS = flags.DEFINE_list(
    "eps", _list_flag(DEFAULTS.engine.eps),
    "AdamW's epsilon, added to the root of the second-moment estimate (PROTOCOL: 1e-8). A "
    "large one (e.g. 1e-3) makes the step of a parameter whose gradients are smaller than it "
    "proportional to the gradient, as in SGD, instead of normalised to about the learning "
    "rate." + _ARMS_HELP)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", DEFAULTS.engine.batch_size, "Training batch size (PROTOCOL: 32).")
_ARMS = flags.DEFINE_list(
    "arms", None,
    "Training arms listed one by one, each a change against the run's training and network: "
    "'protocol' (none) or NAME=VALUE joined by '+', NAME one of lr, wd, eps, bias, init, "
    "hidden; e.g. --arms=protocol,lr=0.0003,eps=0.001,bias=prior,init=he,hidden=relu. Every "
    "cell is trained under each, as members of one program paired by seed. Not with several "
    "values of --learning_rate, --weight_decay, --eps or --head_bias_init (which cross them).")
_HEAD_BIAS_INIT = flags.DEFINE_list(
    "head_bias_init", _list_flag(DEFAULTS.engine.head_bias_init),
    f"Output-layer bias at initialisation, of {', '.join(program_lib.HEAD_BIAS_INITS)}: torch "
    "(as the --init scheme draws it) or prior (the training targets' mean through the head: "
    "logit of each class's share for a sigmoid, its log for a softmax)." + _ARMS_HELP)
_MAX_EPOCHS = flags.DEFINE_integer(
    "max_epochs", DEFAULTS.engine.max_epochs,
    "Epoch cap (the original had none); members that reach it are reported.")
_PATIENCE = flags.DEFINE_integer(
    "patience", DEFAULTS.engine.patience, "Early-stopping rounds (PROTOCOL: 10).")
_COMPACT = flags.DEFINE_bool(
    "compact", DEFAULTS.execution.compact,
    "vmap mode: drop early-stopped members from the stacked state between "
    "epochs (fewer FLOPs once half the members have stopped; costs a recompilation each time). "
    "Loop mode skips stopped members anyway. Experimental: no gain measured yet (on one H100 "
    "each compaction's 20-25 s compilation cost more than it saved; docs/speed.md).")
_MEMBER_MODE = flags.DEFINE_string(
    "member_mode", DEFAULTS.execution.member_mode,
    "How the members share the machine: 'vmap' (one batched computation per step: GPUs, "
    "TPUs, several devices), 'loop' (one member after another inside the jitted epoch, "
    "stopped members skipped: faster on a CPU), 'auto' (loop on one CPU device, else vmap). "
    "Results agree to float rounding.")
_MATMUL_PRECISION = flags.DEFINE_string(
    "matmul_precision", DEFAULTS.execution.matmul_precision,
    "Precision of the matmuls (the convolutions are matmuls): float32 (full, on every "
    "backend), tensorfloat32 (TF32 tensor cores, recent NVIDIA GPUs), bfloat16, or default "
    "(the backend's choice: TF32 on recent NVIDIA GPUs, bf16 passes on TPUs). docs/speed.md "
    "says what TF32 changes in the results.")
_CONV = flags.DEFINE_string(
    "conv", DEFAULTS.execution.conv,
    "How the convolutions are computed: im2col (patches + one matmul; the default on every "
    "backend) or native (XLA's convolution and reduce-window max-pool, a grouped convolution "
    "over vmapped members; meant for GPUs and TPUs, not yet measured there; on a CPU its "
    "gradients are 10-20x slower). Results agree to float rounding. native is experimental: "
    "no gain measured on any machine yet (docs/speed.md).")
_WORKDIR = flags.DEFINE_string(
    "workdir", "workdir", "Where results, report, plots and checkpoints go. Rerunning the same "
    "command with the same workdir resumes the run.")
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", train.CHECKPOINT_EVERY,
    "Save the running task's whole state every this many epochs into "
    "WORKDIR/checkpoints/<task> (the latest 2 are kept; deleted when the task ends); 0: never.")
_RESTART = flags.DEFINE_bool(
    "restart", False, "Delete the workdir's results, checkpoints and report first and train "
    "from scratch (needed to reuse a workdir with another configuration).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", DEFAULTS.data_dir, "Directory with the four MNIST IDX files (.gz or raw); default "
    "$JAXACT_DATA_DIR, else tensorflow-datasets downloads MNIST.")
_TFDS_DIR = flags.DEFINE_string("tfds_dir", DEFAULTS.tfds_dir,
                                "Where tensorflow-datasets keeps prepared data.")
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None, "Where compiled programs are kept between runs (jax's "
    "persistent compilation cache): a resumed run or a rerun of the same grid skips "
    "compilation. Default $JAXACT_COMPILATION_CACHE_DIR, else ~/.cache/jaxact/xla; '' turns "
    "it off.")
_COMPILE_AHEAD = flags.DEFINE_bool(
    "compile_ahead", False, "While a task trains, compile the next task's program in a "
    "background thread (same results). For accelerators, where the host idles during "
    "training; on a CPU it competes with training for the cores (measured slower there). "
    "Experimental: not yet measured on an accelerator (docs/speed.md).")
_TENSORBOARD = flags.DEFINE_bool(
    "tensorboard", False, "Also write TensorBoard scalars under WORKDIR/tensorboard/, one run "
    "per cell (mean valid metric and train loss of its members training). Needs tensorboardX: "
    "pip install 'jaxact[tensorboard]'.")
_TENSORBOARD_MEMBERS = flags.DEFINE_bool(
    "tensorboard_members", False, "With --tensorboard: also each member's (cell x seed) curves.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-process (multi-host) run: call jax.distributed.initialize() "
    "first. Run the same command on every host; only process 0 writes files.")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "With --distributed, where no cluster manager tells JAX: "
    "HOST:PORT of process 0, the same for every process (with --num_processes, --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --distributed and --coordinator_address: how many processes.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --distributed and --coordinator_address: this process's id, "
    "0 (the coordinator, which writes the files) ... --num_processes - 1.")


def _tristate(name: str, value: str):
  if value not in _TRISTATE:
    raise train.UserError(f"--{name} takes 'on', 'off' or '' (both), not {value!r}.")
  return _TRISTATE[value]


def _numbers(name: str, values: list[str]) -> tuple[float, ...]:
  try:
    out = tuple(float(v) for v in values)
  except ValueError:
    raise train.UserError(f"--{name} takes one or more (comma-separated) numbers, e.g. "
                          f"--{name}=1e-3,3e-4, not {','.join(values)!r}.") from None
  if not out:
    raise train.UserError(f"--{name} needs a value, e.g. --{name}={_list_flag(getattr(DEFAULTS.engine, name))}.")
  return out


def config_from_flags() -> train.RunConfig:
  """The RunConfig of the parsed flags; UserError for values that are not even of the right form.

  Only the parsing of strings into values happens here (the tristates, --depth's
  numbers, --convention=both); every check of the values is `train.validate`'s
  (called by `train.plan`), shared with the Python API.
  """
  conv = _CONVENTION.value
  conventions = tuple(studies.CONVENTIONS) if conv == "both" else (conv,)
  try:
    depth = tuple(int(d) for d in _DEPTH.value) if _DEPTH.value else None
  except ValueError:
    raise train.UserError(f"--depth takes whole numbers of dense hidden layers, e.g. "
                          f"--depth=1,4,16, not {','.join(_DEPTH.value)!r}.") from None
  bn = _tristate("batch_norm", _BATCH_NORM.value)
  lr, wd, eps = (_numbers(name, flag.value) for name, flag in (
      ("learning_rate", _LEARNING_RATE), ("weight_decay", _WEIGHT_DECAY), ("eps", _EPS)))
  bias = tuple(_HEAD_BIAS_INIT.value) or (DEFAULTS.engine.head_bias_init,)
  arms = studies.TrainingChoice(learning_rate=lr, weight_decay=wd, eps=eps, head_bias_init=bias)
  arms = studies.TrainingChoice(**{n: arms.arms().get(n) for n in studies.TRAINING_OPTIONS},
                                listed=tuple(_ARMS.value) if _ARMS.value else None)
  network = studies.NetworkChoice(
      init=tuple(_INIT.value) if _INIT.value else None,
      hidden=tuple(_HIDDEN.value) if _HIDDEN.value else None,
      batch_norm=None if bn is None else (bn,), depth=depth)
  return train.RunConfig(
      study=_STUDY.value, task=tuple(_TASK.value) if _TASK.value else None, head=_HEAD.value,
      loss=_LOSS.value, norm=_tristate("norm", _NORM.value),
      sigmoid_method=_tristate("sigmoid_method", _SIGMOID_METHOD.value),
      conventions=conventions, network=network, seeds=_SEEDS.value, first_seed=_FIRST_SEED.value,
      split=_SPLIT.value, split_seed=_SPLIT_SEED.value, data_dir=_DATA_DIR.value, tfds_dir=_TFDS_DIR.value,
      engine=program_lib.EngineConfig(max_epochs=_MAX_EPOCHS.value, patience=_PATIENCE.value,
                                      optimizer=_OPTIMIZER.value,
                                      learning_rate=lr[0],
                                      momentum=_MOMENTUM.value,
                                      weight_decay=wd[0],
                                      eps=eps[0],
                                      batch_size=_BATCH_SIZE.value,
                                      head_bias_init=bias[0]),
      arms=arms,
      execution=program_lib.ExecutionConfig(member_mode=_MEMBER_MODE.value,
                                            matmul_precision=_MATMUL_PRECISION.value,
                                            conv=_CONV.value, compact=_COMPACT.value))


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
    sharding.initialize_distributed(_DISTRIBUTED.value, _COORDINATOR_ADDRESS.value,
                                    _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as err:
    sys.stderr.write(f"jaxact: error: {err}\n")
    sys.exit(2)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietOrbax())
  signal.signal(signal.SIGTERM, _terminate)   # like Ctrl-C: pending checkpoints are finished
  try:
    if _PRESET.value:
      try:
        presets_lib.apply_preset(_PRESET.value, flags.FLAGS)
      except ValueError as err:
        raise train.UserError(f"--preset: {err}.") from None
    config = config_from_flags()
    # Before plan: its memory estimate may compile, and jax settles whether it uses the
    # persistent cache at the first compilation.
    train.enable_compilation_cache(_COMPILATION_CACHE_DIR.value)
    train.plan(config)  # validate everything before touching data or the workdir
    results = train.train_and_evaluate(config, _WORKDIR.value, command=sys.argv,
                                       checkpoint_every=_CHECKPOINT_EVERY.value,
                                       restart=_RESTART.value,
                                       compile_ahead=_COMPILE_AHEAD.value,
                                       tensorboard=_TENSORBOARD.value,
                                       tensorboard_members=_TENSORBOARD_MEMBERS.value)
  except (train.UserError, data_lib.DataError) as err:
    sys.stderr.write(f"jaxact: error: {err}\n")
    sys.exit(2)
  except OSError as err:
    if not isinstance(err, files.WriteError) and err.errno not in files.DISK_ERRNOS:
      raise
    sys.stderr.write(f"jaxact: error: {write_failure(err, _WORKDIR.value)}\n")
    sys.exit(2)
  except KeyboardInterrupt:
    every = _CHECKPOINT_EVERY.value
    where = (f"from the running task's latest checkpoint (saved every {every} epochs)" if every
             else "(checkpoints were off, --checkpoint_every=0: the running task starts over)")
    sys.stderr.write(
        f"jaxact: interrupted. Finished tasks' results are in {_WORKDIR.value}/results; rerun "
        f"the same command to go on {where}.\n")
    sys.exit(130)
  if sharding.is_primary():
    print(train.format_results_table(results, config.engine, _WORKDIR.value))
    print(f"\nreport: {_WORKDIR.value}/report.md")


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
