"""Named presets: the runs people make, as flag values (`--preset=NAME`).

A preset fills in flags the command line leaves unset; a flag given on the
command line wins. A run made with a preset is the same run as one with its
flags spelled out (the same identity, resumable either way); `run.json`
records the command, hence the preset and the overrides.

  python -m jaxact.main --preset=smoke --data_dir=../shared/data/mnist
  python -m jaxact.main --preset=smoke --study=loss      # the loss study's tasks instead
  python -m jaxact.main --preset=activation --seeds=3    # a preset with one override
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named set of flag values.

  Attributes:
    name: what `--preset` takes.
    description: one line for `--help` and docs/flags.md.
    flags: flag name -> value, as absl holds it (lists for list flags).
  """
  name: str
  description: str
  flags: Mapping[str, Any]


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("activation", "the activation study as committed: every cell, 10 seeds, 100 epochs "
           "at most", dict(study="activation", seeds=10, max_epochs=100)),
    Preset("loss", "the loss study as committed: every cell, 10 seeds, 100 epochs at most",
           dict(study="loss", seeds=10, max_epochs=100)),
    Preset("hidden", "the hidden-layer study (hidden activation x init x batch norm, and the "
           "depth sweep; multiclass): 3 seeds, 30 epochs at most",
           dict(study="hidden", seeds=3, max_epochs=30)),
    Preset("smoke", "a first look that checks the whole pipeline: every task and cell of "
           "--study (default activation), 1 seed, 1 epoch, no checkpoints",
           dict(seeds=1, max_epochs=1, checkpoint_every=0)),
)}


def get_preset(name: str) -> Preset:
  """The preset called `name`; ValueError naming the choices otherwise."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
  return PRESETS[name]


def apply_preset(name: str, flag_values) -> dict[str, Any]:
  """Sets the preset's flags in `flag_values` (absl FlagValues) where the command line
  did not; returns the values it set."""
  preset = get_preset(name)
  applied = {}
  for flag, value in preset.flags.items():
    if not flag_values[flag].present:
      flag_values[flag].value = value
      applied[flag] = value
  return applied
