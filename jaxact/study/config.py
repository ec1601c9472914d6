"""A run's configuration: `RunConfig`, its one validator, and its identity.

`RunConfig` (frozen) holds every option of a run: what is trained (the study,
its filters, seeds, data) at its top level, the training hyper-parameters in
its `engine` group (`program.EngineConfig`) and how each task's program is
computed in its `execution` group (`program.ExecutionConfig`: speed only). Each
option is declared once in jaxact.study.options, which says where in RunConfig it
lives; the command line's flags are generated from the declarations and take
their defaults from RunConfig (jaxact/cli/main.py); `validate` checks it (each
option as declared, then the rules that join several), with the messages the
command line shows; `run_identity` is what
makes two runs the same run (a workdir resumes only under the same identity).
The run-level choices that are no part of a task's program (checkpoints,
compiling ahead, the compilation cache, TensorBoard) are arguments of
`train.train_and_evaluate`. jaxact.study.train re-exports `RunConfig`, `UserError`,
`validate` and `run_identity` under its own name, the names the API documents.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxact.errors import UserError
from jaxact.store import checkpoint as checkpoint_lib
from jaxact.store import files
from jaxact.store import workdir as workdir_lib
from jaxact.study import options as options_lib
from jaxact.engine import program
from jaxact.model import cells as studies


# Member seeds become jax.random.key(uint32): first_seed + seeds - 1 may not exceed this.
MAX_SEED = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What to train.

  Attributes:
    study: "activation", "loss", "hidden" (the three studies) or "all" (activation and loss).
    task: a task, a tuple of tasks, or None for every task.
    head, loss, norm, sigmoid_method: optional filters on the grid (see
      studies.select_cells); None means "any".
    conventions: loss conventions to train, e.g. ("torch",) or ("torch", "logits").
    network: the network flags (--init, --hidden, --batch_norm, --depth):
      they set the network of the activation / loss studies' cells and
      filter the hidden study's (studies.NetworkChoice).
    seeds: number of seeds per cell; the seeds are first_seed .. first_seed + seeds - 1.
    split: one of data.SPLITS: "per_seed" (each member draws its own 2,000 / 3,000
      train / valid split from MNIST's training pool, seeded by its seed, so
      the intervals over seeds cover the data sampling too, and the two cells
      of a pair share their split) or "fixed" (every member trains on the one
      split of `split_seed`, the original's single split).
    split_seed: "fixed" only: the seed of the shared split.
    data_dir: directory with the four MNIST IDX files, or None for the tfds download.
    tfds_dir: where tensorflow-datasets keeps prepared data (None: its default).
    engine: the training hyper-parameters (program.EngineConfig:
      epochs, patience, optimizer, ...): they change results.
    arms: training options given several values (studies.TrainingChoice): every
      cell is trained under each value, as members of one program; `engine`
      holds the first (the reference arm).
    execution: how each task's program is computed (program.ExecutionConfig:
      member mode, matmul precision, convolutions, compaction, evaluation
      chunks): speed only, results agree to float rounding.

  The command line's flags take their defaults from this class (jaxact/cli/main.py),
  `validate` checks every field, and a run's identity is computed from
  `to_dict()` (`run_identity`).
  """
  study: str = "activation"
  task: str | tuple[str, ...] | None = None
  head: str | None = None
  loss: str | None = None
  norm: bool | None = None
  sigmoid_method: bool | None = None
  conventions: tuple[str, ...] = ("torch",)
  network: studies.NetworkChoice = studies.NetworkChoice()
  seeds: int = 3
  first_seed: int = 0
  split: str = "per_seed"
  split_seed: int = 0
  data_dir: str | None = None
  tfds_dir: str | None = None
  engine: program.EngineConfig = program.EngineConfig()
  arms: studies.TrainingChoice = studies.TrainingChoice()
  execution: program.ExecutionConfig = program.ExecutionConfig()

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def validate(config: RunConfig) -> None:
  """Checks every option of `config` that can be checked alone; UserError names the first bad one.

  The one place where options are checked, for the command line and the
  Python API alike: each option as its declaration says (jaxact.study.options), then
  the rules that join several; the cells the filters select are checked by
  `plan`.
  """
  try:
    listed = config.arms.listed_arms()
  except ValueError as err:
    raise UserError(str(err)) from None
  trainings = [{name: v} for name, values in config.arms.arms().items() for v in values] + [
      {k: v for k, v in arm.items() if k in studies.TRAINING_OPTIONS} for arm in listed]
  engines = [config.engine] + [dataclasses.replace(config.engine, **t) for t in trainings]
  problems = options_lib.problems(config, engines)
  if problems:
    raise UserError(problems[0])
  _check_seeds(config)
  _check_arms(config, listed)
  for e in engines:
    _check_optimizer_options(e)
  if config.execution.member_mode == "loop" and jax.device_count() > 1:
    raise UserError(f"--member_mode=loop runs on one device and this run has "
                    f"{jax.device_count()}: use --member_mode=vmap (or auto) to shard the "
                    "members over them.")


def _check_seeds(config: RunConfig) -> None:
  """UserError for member seeds past MAX_SEED, or a split seed that --split ignores."""
  last_seed = config.first_seed + config.seeds - 1
  if last_seed > MAX_SEED:
    raise UserError(
        f"the member seeds run from --first_seed={config.first_seed} to {last_seed}, past "
        f"{MAX_SEED}, the largest seed jax.random.key takes (an unsigned 32-bit integer): "
        f"lower --first_seed to at most {MAX_SEED - config.seeds + 1}, or --seeds to at most "
        f"{MAX_SEED - config.first_seed + 1}.")
  if config.split == "per_seed" and config.split_seed != 0:
    raise UserError(f"--split_seed={config.split_seed} chooses the one split of --split=fixed, "
                    "and with --split=per_seed each member's split seed is its own seed: add "
                    "--split=fixed, or leave --split_seed out.")


def _check_arms(config: RunConfig, listed: list[dict]) -> None:
  """UserError for a listed arm's unknown network value, or arms given both ways."""
  try:
    studies.NetworkChoice(
        init=tuple(a["init"] for a in listed if "init" in a) or None,
        hidden=tuple(a["hidden"] for a in listed if "hidden" in a) or None).check()
  except ValueError as err:
    raise UserError(str(err)) from None
  if listed and config.arms.arms():
    raise UserError(f"--arms lists the arms one by one, and --{next(iter(config.arms.arms()))} "
                    "with several values crosses them: give one of the two.")


def _check_optimizer_options(e: program.EngineConfig) -> None:
  """UserError for an option of one optimizer given with the other (one arm's training)."""
  if e.optimizer != "adamw" and e.eps != program.PROTOCOL.eps:
    raise UserError(f"--eps is AdamW's: leave it out with --optimizer={e.optimizer}, or use "
                    "--optimizer=adamw.")
  if e.optimizer != "sgd" and e.momentum != program.PROTOCOL.momentum:
    raise UserError(f"--momentum is SGD's: add --optimizer=sgd, or leave --momentum out "
                    f"(AdamW's moments are b1 = {e.b1}, b2 = {e.b2}).")


def run_identity(config: RunConfig) -> dict:
  """What makes two runs the same run: every field of `config` that changes results.

  A flat JSON dict (options.config_identity): the top-level fields without
  data_dir / tfds_dir, the training group's fields and the execution group's
  compact and matmul_precision.
  """
  return options_lib.config_identity(config.to_dict())


# The identity of the defaults: fills in the keys that an older run.json lacks. A run.json
# without "split" was written before per-member splits: its run used the fixed split.
DEFAULT_IDENTITY = {**run_identity(RunConfig()), "split": "fixed"}


def check_workdir_config(workdir: str, config: RunConfig) -> dict | None:
  """The earlier run.json when the workdir holds outputs of this same configuration.

  Returns None when the workdir holds no results or checkpoints (nothing to
  resume or reuse; a fresh run). A run.json of either layout (the execution
  options in their own group or, up to 30ce5cb, under "engine") is read.

  Raises:
    UserError: they belong to another configuration (naming every differing
      key, its old and its new value), or no readable run.json says which.
  """
  if not workdir_lib.has_outputs(workdir):
    return None
  previous = files.read_json_object(workdir_lib.run_json_path(workdir))
  if previous is None or not isinstance(previous.get("config"), dict):
    raise UserError(
        f"the workdir {workdir!r} holds results or checkpoints but no readable run.json that "
        "says which configuration produced them, so this run cannot resume them: pass "
        "--restart to delete them and start over, or choose another --workdir.")
  old = options_lib.config_identity(previous["config"])
  diffs = checkpoint_lib.identity_differences(old, run_identity(config),
                                              DEFAULT_IDENTITY)
  if diffs:
    listed = "; ".join(f"{k}: {checkpoint_lib.format_value(a)} before, "
                       f"{checkpoint_lib.format_value(b)} now" for k, a, b in diffs)
    raise UserError(
        f"the workdir {workdir!r} holds a run with another configuration ({listed}). "
        "Rerun with the same flags to resume or reuse it, choose another --workdir, or pass "
        "--restart to delete its results and checkpoints and start over.")
  return previous
