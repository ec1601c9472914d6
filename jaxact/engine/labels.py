"""How a training configuration and a cell are named: in progress lines and in results files.

A training option's part of the label and of the results' "training" record is
declared here, once, beside nothing else: `LABEL_PARTS` (in the label's order)
and `RECORDED` (in the record's order). The option itself (its flag, check and
identity) is declared in jaxact/study/options.py; its field in
`program.EngineConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxact.engine.program import EngineConfig, PROTOCOL
from jaxact.model.cells import Cell


def _optimizer_label(config: EngineConfig) -> str:
  return (f"{config.optimizer} (momentum {config.momentum:g})" if config.optimizer == "sgd"
          else config.optimizer)


def _momentum_record(config: EngineConfig) -> float | None:
  return config.momentum if config.optimizer == "sgd" else None


# EngineConfig field -> its part of the training label where its value differs from
# PROTOCOL's: a format string of the value, or a function of the EngineConfig.
LABEL_PARTS: dict[str, str | Callable[[Any], str]] = {
    "optimizer": _optimizer_label,
    "learning_rate": "lr {:g}",
    "weight_decay": "weight decay {:g}",
    "eps": "eps {:g}",
    "batch_size": "batch {}",
    "head_bias_init": "{} head bias",
}
# EngineConfig field -> what the results' "training" record holds for it: its value (None)
# or a function of the EngineConfig.
RECORDED: dict[str, Callable[[Any], Any] | None] = {
    "optimizer": None, "learning_rate": None, "momentum": _momentum_record,
    "weight_decay": None, "eps": None, "batch_size": None, "head_bias_init": None,
}


def training_label(config: EngineConfig) -> str:
  """The training choices of `config` that differ from PROTOCOL's, e.g. 'sgd (momentum 0.9), lr 0.01'.

  '' for PROTOCOL's training; cells' labels carry it where it is not ''.
  """
  protocol = type(config)()
  parts = []
  for name, part in LABEL_PARTS.items():
    value = getattr(config, name)
    if value != getattr(protocol, name):
      parts.append(part(config) if callable(part) else part.format(value))
  return ", ".join(parts)


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
  fields = {name: record(config) if record is not None else getattr(config, name)
            for name, record in RECORDED.items()}
  return {**fields, "label": training_label(config)}

