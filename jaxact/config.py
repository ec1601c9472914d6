"""A run's configuration: `RunConfig`, its one validator, and its identity.

`RunConfig` (frozen) holds every option of a run: what is trained (the study,
its filters, seeds, data) at its top level, the training hyper-parameters in
its `engine` group (`program.EngineConfig`) and how each task's program is
computed in its `execution` group (`program.ExecutionConfig`: speed only). The
command line's flags take their defaults from it (jaxact/main.py); `validate`
checks it, with the messages the command line shows; `run_identity` is what
makes two runs the same run (a workdir resumes only under the same identity).
The run-level choices that are no part of a task's program (checkpoints,
compiling ahead, the compilation cache, TensorBoard) are arguments of
`train.train_and_evaluate`. jaxact.train re-exports `RunConfig`, `UserError`,
`validate` and `run_identity` under its own name, the names the API documents.
"""

from __future__ import annotations

import dataclasses
import math

import jax

from jaxact import checkpoint as checkpoint_lib
from jaxact import data as data_lib
from jaxact import model as model_lib
from jaxact import program
from jaxact import studies
from jaxact import tasks as tasks_lib


# Member seeds become jax.random.key(uint32): first_seed + seeds - 1 may not exceed this.
MAX_SEED = 2**32 - 1


class UserError(Exception):
  """A problem with the user's request; str() names the problem and the fix."""


SPLITS = ("per_seed", "fixed")


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
    split: one of SPLITS: "per_seed" (each member draws its own 2,000 / 3,000
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

  The command line's flags take their defaults from this class (jaxact/main.py),
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
  Python API alike; the cells the filters select are checked by `plan`.
  """
  if config.study not in studies.STUDIES + ("all", None):
    raise UserError(f"unknown --study {config.study!r}: choose one of "
                    f"{', '.join(studies.STUDIES)} or all.")
  for task in (config.task,) if isinstance(config.task, str) else config.task or ():
    if task not in tasks_lib.TASKS:
      raise UserError(f"unknown --task {task!r}: choose one of {', '.join(tasks_lib.TASKS)}.")
  for conv in config.conventions:
    if conv not in studies.CONVENTIONS:
      raise UserError(f"unknown convention {conv!r}: choose one of "
                      f"{', '.join(studies.CONVENTIONS)}, or 'both'.")
  if config.seeds < 1:
    raise UserError(f"--seeds must be a positive number of seeds per cell, got {config.seeds}.")
  if config.first_seed < 0 or config.split_seed < 0:
    raise UserError("--first_seed and --split_seed must be non-negative integers.")
  last_seed = config.first_seed + config.seeds - 1
  if last_seed > MAX_SEED:
    raise UserError(
        f"the member seeds run from --first_seed={config.first_seed} to {last_seed}, past "
        f"{MAX_SEED}, the largest seed jax.random.key takes (an unsigned 32-bit integer): "
        f"lower --first_seed to at most {MAX_SEED - config.seeds + 1}, or --seeds to at most "
        f"{MAX_SEED - config.first_seed + 1}.")
  if config.split not in SPLITS:
    raise UserError(f"unknown --split {config.split!r}: choose per_seed (each member its own "
                    "split, seeded by its seed) or fixed (one split for all, --split_seed).")
  if config.split == "per_seed" and config.split_seed != 0:
    raise UserError(f"--split_seed={config.split_seed} chooses the one split of --split=fixed, "
                    "and with --split=per_seed each member's split seed is its own seed: add "
                    "--split=fixed, or leave --split_seed out.")
  try:
    listed = config.arms.listed_arms()
    network = studies.NetworkChoice(
        init=tuple(a["init"] for a in listed if "init" in a) or None,
        hidden=tuple(a["hidden"] for a in listed if "hidden" in a) or None)
    network.check()
  except ValueError as err:
    raise UserError(str(err)) from None
  if listed and config.arms.arms():
    raise UserError(f"--arms lists the arms one by one, and --{next(iter(config.arms.arms()))} "
                    "with several values crosses them: give one of the two.")
  trainings = [{name: v} for name, values in config.arms.arms().items() for v in values] + [
      {k: v for k, v in arm.items() if k in studies.TRAINING_OPTIONS} for arm in listed]
  for e in [config.engine] + [dataclasses.replace(config.engine, **t) for t in trainings]:
    _validate_training(e)
  _check_execution(config)


def _validate_training(e: program.EngineConfig) -> None:
  """UserError for the first bad training option of `e` (one arm's training)."""
  if e.max_epochs < 1:
    raise UserError(f"--max_epochs must be positive, got {e.max_epochs}.")
  if e.patience < 1:
    raise UserError(f"--patience must be positive, got {e.patience}.")
  if e.optimizer not in program.OPTIMIZERS:
    raise UserError(f"unknown --optimizer {e.optimizer!r}: choose one of "
                    f"{', '.join(program.OPTIMIZERS)}.")
  if not (math.isfinite(e.learning_rate) and e.learning_rate > 0):
    raise UserError(f"--learning_rate must be a positive number, got {e.learning_rate}.")
  if not (math.isfinite(e.weight_decay) and e.weight_decay >= 0):
    raise UserError(f"--weight_decay must be 0 or a positive number, got {e.weight_decay}.")
  if not (math.isfinite(e.eps) and e.eps > 0):
    raise UserError(f"--eps must be a positive number, got {e.eps}.")
  if e.optimizer != "adamw" and e.eps != program.PROTOCOL.eps:
    raise UserError(f"--eps is AdamW's: leave it out with --optimizer={e.optimizer}, or use "
                    "--optimizer=adamw.")
  if not 0 <= e.momentum < 1:
    raise UserError(f"--momentum must be in [0, 1), got {e.momentum}.")
  if e.optimizer != "sgd" and e.momentum != program.PROTOCOL.momentum:
    raise UserError(f"--momentum is SGD's: add --optimizer=sgd, or leave --momentum out "
                    f"(AdamW's moments are b1 = {e.b1}, b2 = {e.b2}).")
  if not 1 <= e.batch_size <= data_lib.TRAIN_SIZE:
    raise UserError(f"--batch_size must be from 1 to the {data_lib.TRAIN_SIZE} training "
                    f"examples, got {e.batch_size}.")
  if e.head_bias_init not in program.HEAD_BIAS_INITS:
    raise UserError(f"unknown --head_bias_init {e.head_bias_init!r}: choose one of "
                    f"{', '.join(program.HEAD_BIAS_INITS)}.")


def _check_execution(config: RunConfig) -> None:
  """UserError for the first bad execution option of `config`."""
  x = config.execution
  if x.member_mode not in program.MEMBER_MODES:
    raise UserError(f"unknown --member_mode {x.member_mode!r}: choose one of "
                    f"{', '.join(program.MEMBER_MODES)}.")
  if x.matmul_precision not in program.MATMUL_PRECISIONS:
    raise UserError(f"unknown --matmul_precision {x.matmul_precision!r}: choose one of "
                    f"{', '.join(program.MATMUL_PRECISIONS)}.")
  if x.conv not in model_lib.CONV_IMPLS:
    raise UserError(f"unknown --conv {x.conv!r}: choose one of "
                    f"{', '.join(model_lib.CONV_IMPLS)}.")
  if x.eval_examples is not None and x.eval_examples < 0:
    raise UserError(f"eval_examples must be a positive number of rows, or None (or 0) for the "
                    f"backend's default, got {x.eval_examples}.")
  if x.member_mode == "loop" and jax.device_count() > 1:
    raise UserError(f"--member_mode=loop runs on one device and this run has "
                    f"{jax.device_count()}: use --member_mode=vmap (or auto) to shard the "
                    "members over them.")


def run_identity(config: RunConfig) -> dict:
  """What makes two runs the same run: every field of `config` that changes results.

  A flat JSON dict (checkpoint.config_identity): the top-level fields without
  data_dir / tfds_dir, the training group's fields and the execution group's
  compact and matmul_precision.
  """
  return checkpoint_lib.config_identity(config.to_dict())


# The identity of the defaults: fills in the keys that an older run.json lacks. A run.json
# without "split" was written before per-member splits: its run used the fixed split.
DEFAULT_IDENTITY = {**run_identity(RunConfig()), "split": "fixed"}
