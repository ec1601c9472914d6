"""Every option of a run, declared once (`OPTIONS`), and what is generated from the declarations.

An `Option` names where its value lives in a `config.RunConfig` (`field`, e.g.
"engine.max_epochs"; None for an argument of the run, such as --workdir), how
the command line writes it (`kind`: a string, a comma list, a tri-state, ...),
its allowed values (`choices`, taken from the registry that implements them)
or another `check`, its help text, its group (`GROUPS`) and whether it is part
of a run's identity. The default of an option with a field is the
configuration's (the dataclasses' field defaults); an option without one
declares its own.

Generated from the declarations:
- the absl flags of `python -m jaxact.main` (`define_flags`) and the parsing of
  their values (`Kind.parse`);
- the per-option checks of `config.validate` (`problems`);
- docs/flags.md (jaxact/cli/flagdoc.py renders the flags `define_flags` makes);
- a run's identity (`config_identity`);
- a configuration from option values, as the command line and the presets
  build it (`with_values`);
(A training option's part of the training label and record of a results file is
declared beside the engine, in jaxact/engine/labels.py, which the engine's
progress lines use too.)

Adding a training option is one declaration here, its field in
`program.EngineConfig` (with its default) and its use in the program.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

from absl import flags

from jaxact.data import mnist as data_lib
from jaxact.model import losses as losses_lib
from jaxact.model import network as model_lib
from jaxact.engine import program
from jaxact.model import cells as studies
from jaxact.data import tasks as tasks_lib

# The groups of options: what is trained (study, network, training: they change results), how
# it is computed (execution: speed only) and the run's own arguments (run: files, processes).
GROUPS = ("study", "network", "training", "execution", "run")

# The RunConfig groups whose fields are options of their own: a run's identity names them at
# its top level (as their flags). The network and arms groups are one identity entry each.
FLATTENED = ("engine", "execution")
# Names that older run.json files hold and that never were part of the identity
# (ExecutionConfig.compact_in_background, removed after 30ce5cb).
LEGACY_NOT_IDENTITY = ("compact_in_background",)


# -- how the command line writes values ------------------------------------------------

# How the command line spells the on / off / both filters (--norm, --sigmoid_method, --batch_norm).
TRISTATE = {"": None, "on": True, "off": False}


def tristate_spelling(value) -> str:
  """The --norm / --sigmoid_method / --batch_norm spelling of a filter value (None: '')."""
  if isinstance(value, (tuple, list)):   # NetworkChoice.batch_norm: None or one value
    if len(value) != 1:
      return ""   # both values: what '' says
    (value,) = value
  return {v: k for k, v in TRISTATE.items()}[value]


def convention_spelling(conventions) -> str:
  """The --convention spelling of RunConfig.conventions ('both' for all of them)."""
  return ("both" if tuple(conventions) == tuple(losses_lib.CONVENTIONS)
          else ",".join(conventions))


def _same(name: str, value: Any) -> Any:
  del name
  return value


def _as_is(value: Any) -> Any:
  return value


def _tuple(value: Any) -> tuple | None:
  """None, one value or several, as a tuple (None stays None)."""
  if value is None:
    return None
  return (value,) if isinstance(value, (str, int, float, bool)) else tuple(value)


def _list_spelling(value: Any) -> list[str] | None:
  """A DEFINE_list value for a tuple of values (None stays None)."""
  if value is None:
    return None
  return [format(v, "g") if isinstance(v, float) else str(v) for v in _tuple(value)]


def _words(name: str, value: list[str]) -> tuple[str, ...] | None:
  del name
  return tuple(value) or None


def _needed_words(name: str, value: list[str]) -> tuple[str, ...]:
  if not value:
    raise ValueError(f"--{name} needs a value, e.g. --{name}=torch,prior.")
  return tuple(value)


def _numbers(name: str, value: list[str]) -> tuple[float, ...]:
  try:
    out = tuple(float(v) for v in value)
  except ValueError:
    raise ValueError(f"--{name} takes one or more (comma-separated) numbers, e.g. "
                     f"--{name}=1e-3,3e-4, not {','.join(value)!r}.") from None
  if not out:
    raise ValueError(f"--{name} needs a value: one or more (comma-separated) numbers, e.g. "
                     f"--{name}=1e-3,3e-4.")
  return out


def _whole_numbers(name: str, value: list[str]) -> tuple[int, ...] | None:
  try:
    return tuple(int(v) for v in value) or None
  except ValueError:
    raise ValueError(f"--{name} takes whole numbers (comma-separated), e.g. --{name}=1,4,16, "
                     f"not {','.join(value)!r}.") from None


def _tristate(name: str, value: str) -> bool | None:
  if value not in TRISTATE:
    raise ValueError(f"--{name} takes 'on', 'off' or '' (both), not {value!r}.")
  return TRISTATE[value]


def _conventions(name: str, value: Any) -> tuple[str, ...]:
  del name
  return tuple(losses_lib.CONVENTIONS) if value == "both" else _tuple(value)


@dataclasses.dataclass(frozen=True)
class Kind:
  """How the command line writes an option's values.

  Attributes:
    define: the absl DEFINE_* function of its flag.
    parse: (option name, the flag's value) -> the option's value; ValueError
      naming the problem and the fix for a value of the wrong form.
    spell: an option's value -> its flag's value (the flag's default).
    coerce: a value given from Python -> the option's value (e.g. one number
      to a 1-tuple).
    several: the option's value is a tuple (or None) whose elements are checked.
  """
  define: Callable[..., Any]
  parse: Callable[[str, Any], Any] = _same
  spell: Callable[[Any], Any] = _as_is
  coerce: Callable[[Any], Any] = _as_is
  several: bool = False


STRING = Kind(flags.DEFINE_string)
INTEGER = Kind(flags.DEFINE_integer)
FLOAT = Kind(flags.DEFINE_float)
BOOL = Kind(flags.DEFINE_bool)
WORDS = Kind(flags.DEFINE_list, _words, _list_spelling, _tuple, several=True)
NEEDED_WORDS = Kind(flags.DEFINE_list, _needed_words, _list_spelling, _tuple, several=True)
NUMBERS = Kind(flags.DEFINE_list, _numbers, _list_spelling,
               lambda v: tuple(float(x) for x in _tuple(v)), several=True)
WHOLE_NUMBERS = Kind(flags.DEFINE_list, _whole_numbers, _list_spelling, _tuple, several=True)
TRISTATE_KIND = Kind(flags.DEFINE_string, _tristate, tristate_spelling)
CONVENTIONS = Kind(flags.DEFINE_string, _conventions, convention_spelling,
                   lambda v: _conventions("convention", v), several=True)


# -- the declaration ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Option:
  """One option of a run.

  Attributes:
    name: its flag's name (`--name`), and its name in `with_values` and the presets.
    group: one of GROUPS.
    help: its flag's help text (docs/flags.md shows it).
    kind: how the command line writes it.
    field: where its value lives in a RunConfig ("study", "network.init",
      "engine.max_epochs", ...); None for an argument of the run (not a field).
    default: the default of an option without a field (the others take the
      RunConfig's).
    choices: the allowed values (of each element, for a `several` kind), or None.
    check: value (or element) -> the problem as one sentence, or None where fine.
    identity: whether the option is part of a run's identity (changes results).
    flag: False for an option only the Python API sets.
    arms: a training option whose several values train as arms
      (studies.TrainingChoice): the first is the run's (`engine`), all of them
      the `arms` group's field of the same name.
    wrap, unwrap: the option's value -> the field's, and back, where they differ.
  """
  name: str
  group: str
  help: str
  kind: Kind = STRING
  field: str | None = None
  default: Any = None
  choices: Sequence[Any] | None = None
  check: Callable[[Any], str | None] | None = None
  identity: bool = True
  flag: bool = True
  arms: bool = False
  wrap: Callable[[Any], Any] = _as_is
  unwrap: Callable[[Any], Any] = _as_is

  @property
  def leaf(self) -> str | None:
    """The field's last part: the EngineConfig field of a training option."""
    return None if self.field is None else self.field.rpartition(".")[2]

  @property
  def identity_key(self) -> str | None:
    """Its key in a run's identity (`config_identity`); None when it is not part of it."""
    if self.field is None or not self.identity:
      return None
    group, _, leaf = self.field.partition(".")
    return leaf if leaf and group in FLATTENED else group

  def get(self, config: Any) -> Any:
    """The option's value in `config` (a RunConfig)."""
    value = config
    for part in self.field.split("."):
      value = getattr(value, part)
    if self.arms:
      return tuple(getattr(config.arms, self.leaf) or (value,))
    return self.unwrap(value)

  def fields(self, value: Any) -> dict[str, Any]:
    """field path -> value that give the option `value` (coerced already)."""
    if self.arms:
      several = tuple(dict.fromkeys(value))
      return {self.field: value[0], f"arms.{self.leaf}": several if len(several) > 1 else None}
    return {self.field: self.wrap(value)}

  def default_in(self, defaults: Any) -> Any:
    """Its default: its value in `defaults` (a RunConfig), or its own without a field."""
    return self.default if self.field is None else self.get(defaults)



def _one_of(choices: Sequence[Any]) -> str:
  return ", ".join(str(c) for c in choices)


def _at_least(name: str, lowest: int, what: str) -> Callable[[Any], str | None]:
  return lambda v: None if v >= lowest else f"--{name} must be {what}, got {v}."


def _positive_number(name: str) -> Callable[[Any], str | None]:
  return lambda v: (None if math.isfinite(v) and v > 0
                    else f"--{name} must be a positive number, got {v}.")


def _check_study(value: Any) -> str | None:
  if value in studies.STUDIES + ("all", None):
    return None
  return f"unknown --study {value!r}: choose one of {_one_of(studies.STUDIES)} or all."


def _check_convention(value: Any) -> str | None:
  if value in losses_lib.CONVENTIONS:
    return None
  return (f"unknown convention {value!r}: choose one of {_one_of(losses_lib.CONVENTIONS)}, "
          "or 'both'.")


def _check_split(value: Any) -> str | None:
  if value in data_lib.SPLITS:
    return None
  return (f"unknown --split {value!r}: choose per_seed (each member its own split, seeded by "
          "its seed) or fixed (one split for all, --split_seed).")


def _check_depth(value: Any) -> str | None:
  if isinstance(value, int) and 1 <= value <= studies.MAX_DEPTH:
    return None
  return (f"--depth takes numbers of dense hidden layers from 1 to {studies.MAX_DEPTH}, "
          f"got {value!r}.")


def _check_weight_decay(value: float) -> str | None:
  if math.isfinite(value) and value >= 0:
    return None
  return f"--weight_decay must be 0 or a positive number, got {value}."


def _check_momentum(value: float) -> str | None:
  return None if 0 <= value < 1 else f"--momentum must be in [0, 1), got {value}."


def _check_batch_size(value: int) -> str | None:
  if 1 <= value <= data_lib.TRAIN_SIZE:
    return None
  return (f"--batch_size must be from 1 to the {data_lib.TRAIN_SIZE} training examples, "
          f"got {value}.")


def _check_eval_examples(value: int | None) -> str | None:
  if value is None or value >= 0:
    return None
  return ("eval_examples must be a positive number of rows, or None (or 0) for the backend's "
          f"default, got {value}.")


def _one_value(value: bool | None) -> tuple[bool, ...] | None:
  return None if value is None else (value,)


def _the_value(values: tuple[bool, ...] | None) -> bool | None:
  return values[0] if values and len(values) == 1 else None


_ARMS_HELP = (" Several (comma-separated) train every cell under each, as members of one "
              "program paired by seed; the first is the reference arm.")

_STUDY_OPTIONS = (
    Option("study", "study", "activation (the final-activation study), loss (the loss study), "
           "all (both), or hidden (the hidden-layer study: hidden activation x init x batch "
           "norm, and a depth sweep; multiclass).", field="study", check=_check_study),
    Option("task", "study", f"One or more (comma-separated) of {_one_of(tasks_lib.TASKS)}; "
           "default all.", WORDS, field="task", choices=tasks_lib.TASKS),
    Option("head", "study", f"Only cells with this head ({_one_of(studies.HEADS)}).",
           field="head", choices=studies.HEADS),
    Option("loss", "study", f"Only cells with this loss ({_one_of(studies.LOSSES)}).",
           field="loss", choices=studies.LOSSES),
    Option("norm", "study", "Regression: 'on' standardised targets only, 'off' raw targets "
           "only, '' both.", TRISTATE_KIND, field="norm"),
    Option("sigmoid_method", "study", "Regression: 'on' the sigmoid method only, 'off' without "
           "it, '' both.", TRISTATE_KIND, field="sigmoid_method"),
    Option("convention", "study", "Loss convention: torch (the original's), logits, or both.",
           CONVENTIONS, field="conventions", check=_check_convention),
    Option("seeds", "study", "Seeds per cell (members per cell).", INTEGER, field="seeds",
           check=_at_least("seeds", 1, "a positive number of seeds per cell")),
    Option("first_seed", "study", "The first member seed.", INTEGER, field="first_seed",
           check=_at_least("first_seed", 0, "a non-negative integer")),
    Option("split", "study", "per_seed: each member draws its own 2,000/3,000 train/valid "
           "split from MNIST's training pool, seeded by its seed (a pair of cells shares it); "
           "fixed: one split for every member, drawn with --split_seed (the original's single "
           "split).", field="split", check=_check_split),
    Option("split_seed", "study", "--split=fixed: seed of the shared 2,000/3,000 split.",
           INTEGER, field="split_seed",
           check=_at_least("split_seed", 0, "a non-negative integer")),
)

_NETWORK_OPTIONS = (
    Option("init", "network", f"Initialisation(s), of {_one_of(model_lib.INITS)}; default "
           "torch (PyTorch's). Several train every cell under each, as members of one "
           "program. For --study=hidden: keep only these rows.", WORDS, field="network.init",
           choices=model_lib.INITS),
    Option("hidden", "network", "Hidden activation(s) of the dense layers, of "
           f"{_one_of(model_lib.HIDDEN_ACTIVATIONS)}; default sigmoid (the original's). Sets "
           "or, for --study=hidden, filters, like --init.", WORDS, field="network.hidden",
           choices=tuple(model_lib.HIDDEN_ACTIVATIONS)),
    Option("batch_norm", "network", "'on': batch norm in the dense hidden layers, 'off': "
           "without, '' (default) without, or for --study=hidden both.", TRISTATE_KIND,
           field="network.batch_norm", wrap=_one_value, unwrap=_the_value),
    Option("depth", "network", f"Number(s) of dense hidden layers (1-{studies.MAX_DEPTH}); "
           "default 1 (the original's). Sets or, for --study=hidden, filters, like --init.",
           WHOLE_NUMBERS, field="network.depth", check=_check_depth),
)

_TRAINING_OPTIONS = (
    Option("optimizer", "training", f"Optimizer, of {_one_of(program.OPTIMIZERS)}: adamw "
           "(PROTOCOL: torch.optim.AdamW) or sgd (torch.optim.SGD with --momentum; "
           "--weight_decay is then its L2 term).", field="engine.optimizer",
           choices=program.OPTIMIZERS),
    Option("learning_rate", "training", "Learning rate(s) (PROTOCOL: 1e-3)." + _ARMS_HELP,
           NUMBERS, field="engine.learning_rate", check=_positive_number("learning_rate"),
           arms=True),
    Option("momentum", "training", "--optimizer=sgd: heavy-ball momentum, in [0, 1).", FLOAT,
           field="engine.momentum", check=_check_momentum),
    Option("weight_decay", "training", "Weight decay(s) (PROTOCOL: 0.01, AdamW's decoupled "
           "decay)." + _ARMS_HELP, NUMBERS, field="engine.weight_decay",
           check=_check_weight_decay, arms=True),
    Option("eps", "training", "AdamW's epsilon, added to the root of the second-moment "
           "estimate (PROTOCOL: 1e-8). A large one (e.g. 1e-3) makes the step of a parameter "
           "whose gradients are smaller than it proportional to the gradient, as in SGD, "
           "instead of normalised to about the learning rate." + _ARMS_HELP, NUMBERS,
           field="engine.eps", check=_positive_number("eps"), arms=True),
    Option("batch_size", "training", "Training batch size (PROTOCOL: 32).", INTEGER,
           field="engine.batch_size", check=_check_batch_size),
    Option("arms", "training", "Training arms listed one by one, each a change against the "
           "run's training and network: 'protocol' (none) or NAME=VALUE joined by '+', NAME "
           f"one of {_one_of(studies.ARM_FIELDS)}; e.g. --arms=protocol,lr=0.0003,eps=0.001,"
           "bias=prior,init=he,hidden=relu. Every cell is trained under each, as members of one "
           "program paired by seed. Not with several values of --learning_rate, "
           "--weight_decay, --eps or --head_bias_init (which cross them).", WORDS,
           field="arms.listed"),
    Option("head_bias_init", "training", "Output-layer bias at initialisation, of "
           f"{_one_of(program.HEAD_BIAS_INITS)}: torch (as the --init scheme draws it) or prior "
           "(the training targets' mean through the head: logit of each class's share for a "
           "sigmoid, its log for a softmax)." + _ARMS_HELP, NEEDED_WORDS,
           field="engine.head_bias_init", choices=program.HEAD_BIAS_INITS, arms=True),
    Option("max_epochs", "training", "Epoch cap (the original had none); members that reach "
           "it are reported.", INTEGER, field="engine.max_epochs",
           check=_at_least("max_epochs", 1, "positive")),
    Option("patience", "training", "Early-stopping rounds (PROTOCOL: 10).", INTEGER,
           field="engine.patience", check=_at_least("patience", 1, "positive")),
    Option("b1", "training", "AdamW's first-moment decay (PROTOCOL: 0.9).", FLOAT,
           field="engine.b1", flag=False),
    Option("b2", "training", "AdamW's second-moment decay (PROTOCOL: 0.999).", FLOAT,
           field="engine.b2", flag=False),
)

_EXECUTION_OPTIONS = (
    Option("compact", "execution", "vmap mode: drop early-stopped members from the stacked "
           "state between epochs (fewer FLOPs once half the members have stopped; costs a "
           "recompilation each time). Loop mode skips stopped members anyway. Experimental: no "
           "gain measured yet (on one H100 each compaction's 20-25 s compilation cost more "
           "than it saved; docs/speed.md).", BOOL, field="execution.compact"),
    Option("member_mode", "execution", "How the members share the machine: 'vmap' (one "
           "batched computation per step: GPUs, TPUs, several devices), 'loop' (one member "
           "after another inside the jitted epoch, stopped members skipped: faster on a CPU), "
           "'auto' (loop on one CPU device, else vmap). Results agree to float rounding.",
           field="execution.member_mode", choices=program.MEMBER_MODES, identity=False),
    Option("matmul_precision", "execution", "Precision of the matmuls (the convolutions are "
           "matmuls): float32 (full, on every backend), tensorfloat32 (TF32 tensor cores, "
           "recent NVIDIA GPUs), bfloat16, or default (the backend's choice: TF32 on recent "
           "NVIDIA GPUs, bf16 passes on TPUs). docs/speed.md says what TF32 changes in the "
           "results.", field="execution.matmul_precision", choices=program.MATMUL_PRECISIONS),
    Option("conv", "execution", "How the convolutions are computed: im2col (patches + one "
           "matmul; the default on every backend) or native (XLA's convolution and "
           "reduce-window max-pool, a grouped convolution over vmapped members; meant for GPUs "
           "and TPUs, not yet measured there; on a CPU its gradients are 10-20x slower). "
           "Results agree to float rounding. native is experimental: no gain measured on any "
           "machine yet (docs/speed.md).", field="execution.conv",
           choices=model_lib.CONV_IMPLS, identity=False),
    Option("eval_examples", "execution", "About how many (member x example) rows one "
           "evaluation chunk holds; None: the backend's default.", INTEGER,
           field="execution.eval_examples", check=_check_eval_examples, identity=False,
           flag=False),
)

_RUN_OPTIONS = (
    Option("workdir", "run", "Where results, report, plots and checkpoints go. Rerunning the "
           "same command with the same workdir resumes the run.", default="workdir"),
    Option("checkpoint_every", "run", "Save the running task's whole state every this many "
           "epochs into WORKDIR/checkpoints/<task> (the latest 2 are kept; deleted when the "
           "task ends); 0: never.", INTEGER, default=5),
    Option("restart", "run", "Delete the workdir's results, checkpoints and report first and "
           "train from scratch (needed to reuse a workdir with another configuration).", BOOL,
           default=False),
    Option("data_dir", "run", "Directory with the four MNIST IDX files (.gz or raw); default "
           "$JAXACT_DATA_DIR, else tensorflow-datasets downloads MNIST.", field="data_dir",
           identity=False),
    Option("tfds_dir", "run", "Where tensorflow-datasets keeps prepared data.",
           field="tfds_dir", identity=False),
    Option("compilation_cache_dir", "run", "Where compiled programs are kept between runs "
           "(jax's persistent compilation cache): a resumed run or a rerun of the same grid "
           "skips compilation. Default $JAXACT_COMPILATION_CACHE_DIR, else ~/.cache/jaxact/xla; "
           "'' turns it off."),
    Option("compile_ahead", "run", "While a task trains, compile the next task's program in a "
           "background thread (same results). For accelerators, where the host idles during "
           "training; on a CPU it competes with training for the cores (measured slower "
           "there). Experimental: not yet measured on an accelerator (docs/speed.md).", BOOL,
           default=False),
    Option("tensorboard", "run", "Also write TensorBoard scalars under WORKDIR/tensorboard/, "
           "one run per cell (mean valid metric and train loss of its members training). Needs "
           "tensorboardX: pip install 'jaxact[tensorboard]'.", BOOL, default=False),
    Option("tensorboard_members", "run", "With --tensorboard: also each member's (cell x seed) "
           "curves.", BOOL, default=False),
    Option("distributed", "run", "Multi-process (multi-host) run: call "
           "jax.distributed.initialize() first. Run the same command on every host; only "
           "process 0 writes files.", BOOL, default=False),
    Option("coordinator_address", "run", "With --distributed, where no cluster manager tells "
           "JAX: HOST:PORT of process 0, the same for every process (with --num_processes, "
           "--process_id)."),
    Option("num_processes", "run", "With --distributed and --coordinator_address: how many "
           "processes.", INTEGER),
    Option("process_id", "run", "With --distributed and --coordinator_address: this process's "
           "id, 0 (the coordinator, which writes the files) ... --num_processes - 1.", INTEGER),
)

# Every option, in the order of --help and docs/flags.md.
OPTIONS: tuple[Option, ...] = (_STUDY_OPTIONS + _NETWORK_OPTIONS + _TRAINING_OPTIONS
                               + _EXECUTION_OPTIONS + _RUN_OPTIONS)


def get(name: str) -> Option:
  """The option called `name`; KeyError naming the options otherwise."""
  for option in OPTIONS:
    if option.name == name:
      return option
  raise KeyError(f"no option {name!r}: the options are {_one_of(o.name for o in OPTIONS)}")


# -- what is generated from the declarations ----------------------------------------------


def define_flags(option_list: Iterable[Option], defaults: Any,
                 flag_values: flags.FlagValues = flags.FLAGS,
                 module_name: str | None = None) -> dict[str, flags.FlagHolder]:
  """Defines the absl flag of every option of `option_list` that has one.

  Args:
    option_list: the options, in the order of --help.
    defaults: the RunConfig whose values are the flags' defaults.
    flag_values: where to define them (absl's global FLAGS by default).
    module_name: the module --help lists them under (default: the caller's).

  Returns:
    option name -> its flag's holder.
  """
  holders = {}
  for option in option_list:
    if option.flag:
      holders[option.name] = option.kind.define(
          option.name, option.kind.spell(option.default_in(defaults)), option.help,
          flag_values=flag_values, module_name=module_name)
  return holders


def with_values(base: Any, values: Mapping[str, Any]) -> Any:
  """`base` (a RunConfig) with the options of `values` (option name -> value) set.

  A value is what the option holds (`Option.get`), or one value where it holds
  several (e.g. learning_rate=3e-4 for (3e-4,)). ValueError for a name that is
  no option of the configuration.
  """
  by_name = {o.name: o for o in OPTIONS if o.field is not None}
  unknown = [name for name in values if name not in by_name]
  if unknown:
    raise ValueError(f"no option of the run's configuration is called {_one_of(unknown)}: "
                     f"choose among {_one_of(by_name)}")
  changes: dict[str, dict[str, Any]] = {}
  for name, value in values.items():
    option = by_name[name]
    for path, v in option.fields(option.kind.coerce(value)).items():
      group, _, leaf = path.rpartition(".")
      changes.setdefault(group, {})[leaf] = v
  top = changes.pop("", {})
  for group, fields in changes.items():
    top[group] = dataclasses.replace(getattr(base, group), **fields)
  return dataclasses.replace(base, **top)


def _checked_values(option: Option, config: Any, engines: Sequence[Any]) -> list[Any]:
  """The values of `option` that `problems` checks: each arm's, and each element of a tuple."""
  if option.field.startswith("engine."):
    return list(dict.fromkeys(getattr(e, option.leaf) for e in engines))
  value = config
  for part in option.field.split("."):
    value = getattr(value, part)
  if option.kind.several:
    return [value] if isinstance(value, str) else list(value or ())
  return [value]


def problems(config: Any, engines: Sequence[Any]) -> list[str]:
  """The problem of each bad option value of `config` (a RunConfig), in declaration order.

  `engines` are the EngineConfigs of the run's arms (its own first): a
  training option is checked in each.
  """
  out = []
  for option in OPTIONS:
    if option.field is None or (option.choices is None and option.check is None):
      continue
    for value in _checked_values(option, config, engines):
      if option.choices is not None and value is not None and value not in option.choices:
        out.append(f"unknown --{option.name} {value!r}: choose one of "
                   f"{_one_of(option.choices)}.")
      elif option.check is not None and option.check(value) is not None:
        out.append(option.check(value))
  return out


def _left_out() -> set[str]:
  return {o.leaf for o in OPTIONS if o.field is not None and not o.identity} | set(
      LEGACY_NOT_IDENTITY)


def config_identity(config_dict: Mapping[str, Any]) -> dict[str, Any]:
  """A run's identity: everything in a `RunConfig.to_dict()` that changes results, as JSON.

  The fields of the FLATTENED groups are named at the top level (as their
  flags, e.g. `max_epochs`); the fields of options declared `identity=False`
  (where the data are read from, the execution choices that keep results to
  float rounding) are left out. A run.json written before "execution" was a
  group of its own (30ce5cb and earlier: everything under "engine") gives the
  same identity as today's RunConfig of the same flags; keys no option
  declares (older run.json files) are kept.
  """
  left_out = _left_out()
  out = {}
  for key, value in config_dict.items():
    if key in left_out:
      continue
    if key in FLATTENED and isinstance(value, dict):
      out.update({k: v for k, v in value.items() if k not in left_out})
    else:
      out[key] = value
  return json.loads(json.dumps(out))
