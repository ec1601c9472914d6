"""The study grids of PROTOCOL section 8, and the cells a user's flags select.

A *cell* is one trainable configuration (task, head, loss, regression target
treatment, loss convention). A *member* of the engine is a cell trained with
one seed. A study is an ordered list of rows per task; each row names a cell
and whether the source documents recommend it or call it a misuse.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

from jaxact.model import losses as losses_lib
from jaxact.model import network as model_lib
from jaxact.data import tasks as tasks_lib

STUDIES = ("activation", "loss", "hidden")
# The names a cell may take, from the registries that implement them.
HEADS = tuple(losses_lib.HEADS)
LOSSES = losses_lib.LOSSES
CONVENTIONS = losses_lib.CONVENTIONS
INITS = model_lib.INITS
HIDDEN = tuple(model_lib.HIDDEN_ACTIVATIONS)
DEPTHS = (1, 2, 4, 8, 16, 32)                             # the hidden study's depth sweep
MAX_DEPTH = 64


def _continuous(task: str) -> bool:
  """Whether `task`'s target is a value (`tasks.Task.continuous`): it has norm and
  sigmoid_method choices and no cce. False for a task this version does not define."""
  t = tasks_lib.REGISTRY.get(task)
  return t is not None and t.continuous


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
  """One configuration of the final layer, the loss and the targets.

  Attributes:
    task: one of tasks.TASKS.
    head: final activation, one of HEADS.
    loss: loss name, one of LOSSES.
    norm: regression only: targets standardised with the train mean/std.
    sigmoid_method: regression only: the "sigmoid method" of the activation study (sigmoid
      on targets and on the output, logit of the output to predict).
    convention: "torch" (PROTOCOL section 6) or "logits".
    init: the parameter initialisation, one of INITS (PROTOCOL: torch).
    hidden: the dense hidden layers' activation, one of HIDDEN (PROTOCOL: sigmoid).
    batch_norm: batch norm in the dense hidden layers (PROTOCOL: none).
    depth: the number of dense hidden layers (PROTOCOL: 1).
    learning_rate, weight_decay, eps, head_bias_init: a training arm: this
      cell's value of the training option of that name, or None for the run's
      (`program.EngineConfig`). Set where a run trains several values of an
      option as members of one program (`TrainingChoice`).
  init .. depth describe the network; the key and label name them only
  where they differ from PROTOCOL's network, and the training arm where it
  is set.
  """
  task: str
  head: str
  loss: str
  norm: bool = False
  sigmoid_method: bool = False
  convention: str = "torch"
  init: str = "torch"
  hidden: str = "sigmoid"
  batch_norm: bool = False
  depth: int = 1
  learning_rate: float | None = None
  weight_decay: float | None = None
  eps: float | None = None
  head_bias_init: str | None = None

  @property
  def network(self) -> tuple[str, bool, int]:
    """What the dense part computes with: (hidden, batch_norm, depth)."""
    return (self.hidden, self.batch_norm, self.depth)

  def _network_parts(self) -> list[tuple[str, str]]:
    """(key part, label part) for each network field that differs from PROTOCOL's."""
    parts = []
    if self.init != "torch":
      parts.append((f"init={self.init}", f"{self.init} init"))
    if self.hidden != "sigmoid":
      parts.append((f"hidden={self.hidden}", f"{self.hidden} hidden"))
    if self.batch_norm:
      parts.append(("bn", "batch norm"))
    if self.depth != 1:
      parts.append((f"depth={self.depth}", f"depth {self.depth}"))
    return parts

  def _training_parts(self) -> list[tuple[str, str]]:
    """(key part, label part) for each training option this cell sets (its arm)."""
    parts = []
    if self.learning_rate is not None:
      parts.append((f"lr={self.learning_rate:g}", f"lr {self.learning_rate:g}"))
    if self.weight_decay is not None:
      parts.append((f"wd={self.weight_decay:g}", f"weight decay {self.weight_decay:g}"))
    if self.eps is not None:
      parts.append((f"eps={self.eps:g}", f"eps {self.eps:g}"))
    if self.head_bias_init is not None:
      parts.append((f"bias={self.head_bias_init}", f"{self.head_bias_init} head bias"))
    return parts

  @property
  def arm(self) -> dict:
    """The training options this cell sets: name -> value (empty: the run's training)."""
    return {n: getattr(self, n) for n in TRAINING_OPTIONS if getattr(self, n) is not None}

  @property
  def key(self) -> str:
    """A stable string id, e.g. 'binary/sigmoid+bce' or 'regression/none+mse/norm'."""
    parts = [self.task, f"{self.head}+{self.loss}"]
    if _continuous(self.task):
      parts.append("norm" if self.norm else "raw")
      if self.sigmoid_method:
        parts.append("sigmoid_method")
    if self.convention != "torch":
      parts.append(self.convention)
    parts += [k for k, _ in self._network_parts() + self._training_parts()]
    return "/".join(parts)

  @property
  def label(self) -> str:
    """A human label for tables, e.g. 'sigmoid + bce' or 'sigmoid method (standardised)'."""
    if self.sigmoid_method:
      text = f"sigmoid method + {self.loss}"
    else:
      text = f"{self.head} + {self.loss}"
    if _continuous(self.task):
      text += ", standardised" if self.norm else ", raw targets"
    if self.convention != "torch":
      text += f" [{self.convention}]"
    net = [label for _, label in self._network_parts() + self._training_parts()]
    if net:
      text += " (" + ", ".join(net) + ")"
    return text

  @property
  def network_label(self) -> str:
    """The network alone, e.g. 'relu hidden, he init, batch norm, depth 4'."""
    return ", ".join([f"{self.hidden} hidden", f"{self.init} init"]
                     + (["batch norm"] if self.batch_norm else [])
                     + ([f"depth {self.depth}"] if self.depth != 1 else []))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Cell":
    return cls(**d)   # results written before the network fields get their defaults


# The training options a cell may set for itself (its arm), as EngineConfig names them.
TRAINING_OPTIONS = ("learning_rate", "weight_decay", "eps", "head_bias_init")


# `--arms`: the short names of what one arm may change, and the Cell field each sets.
ARM_FIELDS = {"lr": "learning_rate", "wd": "weight_decay", "eps": "eps",
              "bias": "head_bias_init", "init": "init", "hidden": "hidden"}
PROTOCOL_ARM = "protocol"


def parse_arm(spec: str) -> dict[str, Any]:
  """Cell field -> value of one `--arms` entry: 'protocol' (no change) or changes joined by
  '+', e.g. 'lr=0.0003', 'lr=0.1+wd=0', 'init=he'. ValueError names a bad entry and the fix."""
  if spec == PROTOCOL_ARM:
    return {}
  out: dict[str, Any] = {}
  for part in spec.split("+"):
    name, sep, value = part.partition("=")
    if not sep or name not in ARM_FIELDS or not value:
      raise ValueError(
          f"--arms entry {spec!r}: {part!r} is not NAME=VALUE with NAME one of "
          f"{', '.join(ARM_FIELDS)}; write e.g. --arms=protocol,lr=0.0003,lr=0.1+wd=0,init=he")
    field = ARM_FIELDS[name]
    if field in ("learning_rate", "weight_decay", "eps"):
      try:
        out[field] = float(value)
      except ValueError:
        raise ValueError(f"--arms entry {spec!r}: {name} takes a number, not {value!r}") from None
    else:
      out[field] = value
  return out


@dataclasses.dataclass(frozen=True)
class TrainingChoice:
  """Training arms: every cell is trained under each arm, as members of one program, paired
  by seed.

  Two ways to give arms. Options given several values (`learning_rate`, ...: None or a
  tuple of one value means the run's EngineConfig value) are crossed: every combination
  is an arm. Or `listed`: the `--arms` entries, each one arm that changes what it names
  (`parse_arm`: training options, init, hidden activation) against the run's training
  and network; 'protocol' changes nothing. A cell's arm stores a training value only where
  it differs from the run's (`variants`), so the reference arm keeps the cells' plain keys.
  """
  learning_rate: tuple[float, ...] | None = None
  weight_decay: tuple[float, ...] | None = None
  eps: tuple[float, ...] | None = None
  head_bias_init: tuple[str, ...] | None = None
  listed: tuple[str, ...] | None = None

  def listed_arms(self) -> list[dict[str, Any]]:
    """The `listed` arms, parsed (ValueError for a bad entry)."""
    return [parse_arm(spec) for spec in self.listed or ()]

  def arms(self) -> dict[str, tuple]:
    """name -> values, for the options given more than one value."""
    return {n: tuple(dict.fromkeys(getattr(self, n))) for n in TRAINING_OPTIONS
            if getattr(self, n) and len(set(getattr(self, n))) > 1}

  def variants(self, cell: Cell, base) -> list[Cell]:
    """`cell` under every arm; `base` (an EngineConfig) is the run's training."""
    if self.listed:
      return list(dict.fromkeys(
          dataclasses.replace(cell, **{
              k: (None if k in TRAINING_OPTIONS and v == getattr(base, k) else v)
              for k, v in arm.items()})
          for arm in self.listed_arms()))
    out = [cell]
    for name, values in self.arms().items():
      out = [dataclasses.replace(c, **{name: None if v == getattr(base, name) else v})
             for c in out for v in values]
    return out


@dataclasses.dataclass(frozen=True)
class Row:
  cell: Cell
  recommended: bool | None   # None: the study recommends nothing (the hidden study)


@dataclasses.dataclass(frozen=True)
class NetworkChoice:
  """The user's network flags: for each field, the values asked for (None: not given).

  For the activation and loss studies, the values given SET the network:
  every cell is trained once per combination (e.g. init=("torch", "he")
  trains every cell under both). For the hidden study, they FILTER its rows.
  """
  init: tuple[str, ...] | None = None
  hidden: tuple[str, ...] | None = None
  batch_norm: tuple[bool, ...] | None = None
  depth: tuple[int, ...] | None = None

  def check(self) -> None:
    """Raises ValueError naming an unknown value and the choices."""
    for name, values, allowed in (("init", self.init, INITS), ("hidden", self.hidden, HIDDEN)):
      for v in values or ():
        if v not in allowed:
          raise ValueError(f"unknown --{name} {v!r}: choose one or more of {', '.join(allowed)}.")
    for d in self.depth or ():
      if not isinstance(d, int) or not 1 <= d <= MAX_DEPTH:
        raise ValueError(f"--depth takes numbers of dense hidden layers from 1 to {MAX_DEPTH}, "
                         f"got {d!r}.")

  def variants(self, cell: Cell) -> list[Cell]:
    """`cell` under every combination of the values given (fields not given kept)."""
    out = [cell]
    for name in ("init", "hidden", "batch_norm", "depth"):
      values = getattr(self, name)
      if values:
        out = [dataclasses.replace(c, **{name: v}) for c in out for v in dict.fromkeys(values)]
    return out

  def admits(self, cell: Cell) -> bool:
    return all(getattr(self, n) is None or getattr(cell, n) in getattr(self, n)
               for n in ("init", "hidden", "batch_norm", "depth"))


def _rows(task: str, recommended: Iterable[tuple], misused: Iterable[tuple]) -> list[Row]:
  out = []
  for flag, specs in ((True, recommended), (False, misused)):
    for spec in specs:
      head, loss, *rest = spec
      kw = dict(zip(("norm", "sigmoid_method"), rest))
      out.append(Row(Cell(task, head, loss, **kw), flag))
  return out


def activation_grid() -> dict[str, list[Row]]:
  """The activation study's grid (PROTOCOL section 8); regression always uses MSE."""
  return {
      "regression": _rows(
          "regression",
          [("none", "mse", True), ("none", "mse", False),
           ("relu", "mse", True), ("relu", "mse", False)],
          [("sigmoid", "mse", True, True), ("sigmoid", "mse", False, True)]),
      "probability": _rows("probability", [("sigmoid", "bce")],
                           [("softmax", "bce"), ("softmax", "cce")]),
      "binary": _rows("binary", [("softmax", "cce")],
                      [("sigmoid", "bce"), ("sigmoid", "cce")]),
      "multiclass": _rows("multiclass", [("softmax", "cce")],
                          [("sigmoid", "bce"), ("sigmoid", "cce")]),
      "multilabel": _rows("multilabel", [("sigmoid", "bce")],
                          [("softmax", "bce"), ("softmax", "cce")]),
  }


def loss_grid() -> dict[str, list[Row]]:
  """The loss study's final grid (PROTOCOL section 8); regression is standardised, head none."""
  return {
      "regression": _rows(
          "regression",
          [("none", "mse", True), ("none", "mae", True), ("none", "rmse", True)],
          [("none", "bce", True), ("none", "bce_logits", True)]),
      "probability": _rows(
          "probability", [("sigmoid", "bce")],
          [("none", "mse"), ("sigmoid", "mse"), ("none", "mae"), ("sigmoid", "mae"),
           ("none", "rmse"), ("sigmoid", "rmse"), ("softmax", "cce")]),
      "binary": _rows(
          "binary", [("softmax", "cce")],
          [("softmax", "bce"), ("sigmoid", "bce"), ("softmax", "bce_logits"),
           ("softmax", "mse"), ("sigmoid", "mse")]),
      "multiclass": _rows(
          "multiclass", [("softmax", "cce")],
          [("softmax", "bce"), ("sigmoid", "bce"), ("softmax", "bce_logits"),
           ("softmax", "mse"), ("sigmoid", "mse")]),
      "multilabel": _rows(
          "multilabel", [("sigmoid", "bce")],
          [("softmax", "mse"), ("sigmoid", "mse"), ("softmax", "cce")]),
  }


def hidden_grid() -> dict[str, list[Row]]:
  """The hidden-layer study, on multiclass with softmax + cce.

  Two parts, all rows of one program:
  - every hidden activation x initialisation {he, xavier, torch} x batch norm
    {off, on}, PROTOCOL's depth 1;
  - the depth sweep: every hidden activation at depths DEPTHS[1:] (depth 1 is
    in the first part), under PyTorch's default init and under the init the
    seeds recommend for it (matched_init), no batch norm.
  Rows are neither recommended nor misused (recommended=None).
  """
  rows = [Row(Cell("multiclass", "softmax", "cce", init=init, hidden=h, batch_norm=bn), None)
          for h in HIDDEN for init in ("he", "xavier", "torch") for bn in (False, True)]
  rows += [Row(Cell("multiclass", "softmax", "cce", init=init, hidden=h, depth=d), None)
           for h in HIDDEN for init in ("torch", matched_init(h)) for d in DEPTHS[1:]]
  return {"multiclass": rows}


def matched_init(hidden: str) -> str:
  """The initialisation the hidden-layer study recommends: Xavier for sigmoid / tanh, He for the ReLU family."""
  return "xavier" if hidden in ("sigmoid", "tanh") else "he"


def grid(study: str) -> dict[str, list[Row]]:
  if study == "activation":
    return activation_grid()
  if study == "loss":
    return loss_grid()
  if study == "hidden":
    return hidden_grid()
  raise ValueError(f"unknown study {study!r}: choose one of {', '.join(STUDIES)}, or 'all'")


def with_convention(cell: Cell, convention: str) -> Cell:
  return dataclasses.replace(cell, convention=convention)


def recommended_cell(task: str) -> Cell:
  """The task's recommended cell in the activation study (the reference of a filtered run)."""
  return next(r.cell for r in activation_grid()[task] if r.recommended)


def check_cell(cell: Cell) -> None:
  """Raises ValueError, naming the problem and the fix, for a cell that cannot be run.

  Allowed: any head with any loss for any task, except
  - cce on regression (a continuous target is neither a class nor a distribution);
  - norm / sigmoid_method outside regression;
  - the sigmoid method with a head other than sigmoid.
  A cell that can run but fails (bce on raw outputs) is allowed: the engine
  reports it as invalid, as PyTorch refused it.
  """
  tasks_lib.get_task(cell.task)
  if cell.head not in HEADS:
    raise ValueError(f"unknown head {cell.head!r}: choose one of {', '.join(HEADS)}")
  if cell.loss not in LOSSES:
    raise ValueError(f"unknown loss {cell.loss!r}: choose one of {', '.join(LOSSES)}")
  if cell.convention not in CONVENTIONS:
    raise ValueError(
        f"unknown convention {cell.convention!r}: choose one of {', '.join(CONVENTIONS)}")
  if _continuous(cell.task) and cell.loss == "cce":
    raise ValueError(
        "loss cce cannot be used for the regression task: its target is a continuous "
        "value, neither a class index nor a distribution over classes. Use mse, mae or "
        "rmse (or bce / bce_logits to see them fail).")
  if not _continuous(cell.task) and (cell.norm or cell.sigmoid_method):
    raise ValueError(
        f"--norm and --sigmoid_method apply to the regression task only, not {cell.task!r}: "
        "drop them or use --task=regression.")
  if cell.sigmoid_method and cell.head != "sigmoid":
    raise ValueError(
        f"the sigmoid method puts a sigmoid on the output, so it needs --head=sigmoid, "
        f"not {cell.head!r}.")
  NetworkChoice(init=(cell.init,), hidden=(cell.hidden,), depth=(cell.depth,)).check()


def select_cells(study: str | None, task: str | Sequence[str] | None, head: str | None = None,
                 loss: str | None = None, norm: bool | None = None,
                 sigmoid_method: bool | None = None,
                 conventions: Sequence[str] = ("torch",),
                 network: NetworkChoice = NetworkChoice()) -> dict[str, list[Cell]]:
  """The cells to train, per task, for a user's flags.

  With no head/loss/norm/sigmoid_method filter: every cell of the study (or of
  both studies when study is None or "all"), once each. With filters: the
  grid's cells that match them plus the task's recommended cell as reference;
  if head AND loss are both given and no grid cell matches, that off-grid cell
  is run (after check_cell) with the reference.

  `network` sets the network of the activation / loss studies' cells (every
  cell once per combination) and filters the hidden study's rows; see
  NetworkChoice. "all" means the activation and loss studies (the hidden
  study is a separate question: ask for it by name).

  Returns:
    task -> cells, in grid order, each cell once, for every convention given.
  """
  network.check()
  studies = ("activation", "loss") if study in (None, "all") else (study,)
  for s in studies:
    grid(s)  # validates the name
  wanted_tasks = _wanted_tasks(studies, task, norm, sigmoid_method)
  if head is not None and head not in HEADS:
    raise ValueError(f"unknown head {head!r}: choose one of {', '.join(HEADS)}")
  if loss is not None and loss not in LOSSES:
    raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
  out: dict[str, list[Cell]] = {}
  for t in wanted_tasks:
    cells = _task_cells(studies, t, head, loss, norm, sigmoid_method, network)
    # A cell whose loss is the same in both conventions is trained once, under
    # the first convention asked for, and reported in every convention's table.
    out[t] = [with_convention(c, conv) for i, conv in enumerate(conventions) for c in cells
              if i == 0 or losses_lib.convention_matters(c.head, c.loss)]
    for c in out[t]:
      check_cell(c)
  return out


def _wanted_tasks(studies: Sequence[str], task: str | Sequence[str] | None,
                  norm: bool | None, sigmoid_method: bool | None) -> tuple[str, ...]:
  """The tasks asked for, among those the studies train; ValueError naming a bad request."""
  in_grids = {t for s in studies for t in grid(s)}
  if task is None:
    wanted_tasks = tuple(t for t in tasks_lib.TASKS if t in in_grids)
  else:
    names = (task,) if isinstance(task, str) else tuple(task)
    wanted_tasks = tuple(tasks_lib.get_task(t).name for t in names)
    missing = [t for t in wanted_tasks if t not in in_grids]
    if missing:
      raise ValueError(
          f"the {'/'.join(studies)} study has no {', '.join(missing)} task: it trains "
          f"{', '.join(t for t in tasks_lib.TASKS if t in in_grids)}. Drop --task or choose "
          "another --study.")
  if norm is not None or sigmoid_method is not None:
    if task is None:
      wanted_tasks = tuple(t for t in tasks_lib.TASKS if _continuous(t))
    elif any(not _continuous(t) for t in wanted_tasks):
      raise ValueError(
          "--norm and --sigmoid_method apply to the regression task only: drop them or "
          "use --task=regression.")
  return wanted_tasks


def _task_cells(studies: Sequence[str], t: str, head: str | None, loss: str | None,
                norm: bool | None, sigmoid_method: bool | None,
                network: NetworkChoice) -> list[Cell]:
  """One task's cells for the filters (see select_cells), in grid order, each once."""
  filtered = any(v is not None for v in (head, loss, norm, sigmoid_method))
  cells: list[Cell] = []
  for s in studies:
    for row in grid(s).get(t, ()):
      c = row.cell
      if filtered and not ((head is None or c.head == head) and (loss is None or c.loss == loss)
                           and (norm is None or c.norm == norm)
                           and (sigmoid_method is None or c.sigmoid_method == sigmoid_method)):
        continue
      for v in ([c] if s == "hidden" else network.variants(c)):
        if s == "hidden" and not network.admits(v):
          continue
        if v not in cells:
          cells.append(v)
  if filtered and not cells:
    if head is None or loss is None:
      raise ValueError(
          f"no cell of the {'/'.join(studies)} grid for task {t!r} matches "
          f"head={head} loss={loss}: give both --head and --loss to run an off-grid cell.")
    off = Cell(t, head, loss, bool(norm) if _continuous(t) else False,
               bool(sigmoid_method) if _continuous(t) else False)
    check_cell(off)
    cells.extend(network.variants(off))
  if filtered:
    for ref in reversed(network.variants(recommended_cell(t))):
      if ref not in cells:
        cells.insert(0, ref)
  if not cells:
    raise ValueError(
        f"no cell of the {'/'.join(studies)} grid for task {t!r} matches the network flags "
        f"(--init/--hidden/--batch_norm/--depth): the hidden study's depth sweep has no "
        f"batch norm and uses torch init and the matched init (xavier for sigmoid/tanh, he "
        f"otherwise); its depths are {', '.join(map(str, DEPTHS))}.")
  return cells


def rows_for(study: str, task: str) -> list[Row]:
  """The ordered table rows of `study` for `task`."""
  return grid(study)[task]
