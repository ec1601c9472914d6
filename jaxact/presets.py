"""Named presets: the runs people make, as flag values (`--preset=NAME`).

A preset fills in flags the command line leaves unset; a flag given on the
command line wins. A run made with a preset is the same run as one with its
flags spelled out (the same identity, resumable either way); `run.json`
records the command, hence the preset and the overrides.

  python -m jaxact.main --preset=smoke --data_dir=../shared/data/mnist
  python -m jaxact.main --preset=smoke --study=loss      # the loss study's tasks instead
  python -m jaxact.main --preset=activation --seeds=3    # a preset with one override

The other way round, `describe` names the preset and the overrides of a run
that was made without one (the committed runs under experiments/):

  python -m jaxact.presets experiments/collapse_interventions/protocol
  # experiments/collapse_interventions/protocol: --preset=all --task=multiclass --head=sigmoid
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags


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
    Preset("all", "both grids as committed (the activation and the loss study, each cell "
           "trained once): 10 seeds, 100 epochs at most",
           dict(study="all", seeds=10, max_epochs=100)),
    Preset("hidden", "the hidden-layer study (hidden activation x init x batch norm, and the "
           "depth sweep; multiclass): 3 seeds, 30 epochs at most",
           dict(study="hidden", seeds=3, max_epochs=30)),
    Preset("interventions", "the interventions on the multi-class sigmoid-head collapse as one "
           "program: the protocol arm and one arm per change (learning rate, eps, weight decay, "
           "prior head bias, He / Xavier / Flax init, tanh / ReLU hidden units), 10 seeds, 100 "
           "epochs at most (SGD, another optimizer family, is a run of its own)",
           dict(study="all", task=["multiclass"], head="sigmoid", seeds=10, max_epochs=100,
                arms=["protocol", "lr=0.0001", "lr=0.0003", "lr=0.003", "eps=0.001", "wd=0",
                      "bias=prior", "init=he", "init=xavier", "init=flax", "hidden=tanh",
                      "hidden=relu"])),
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
  from jaxact import studies   # light, but keeps this module's import free of the model stack
  return "both" if tuple(conventions) == tuple(studies.CONVENTIONS) else ",".join(conventions)


# Identity keys (checkpoint.config_identity) that flags of `python -m jaxact.main`
# set under another name or shape; the others are named as their flags.
_NETWORK_FLAGS = ("init", "hidden", "batch_norm", "depth")
_TRISTATE_FLAGS = ("norm", "sigmoid_method")


def _flag_value(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return ",".join(_flag_value(v) for v in value)
  if isinstance(value, float):
    return format(value, "g")
  return "" if value is None else str(value)


def identity_flags(key: str, value: Any) -> list[str]:
  """The command-line flags that give identity key `key` the value `value`.

  Raises:
    ValueError: no flag sets `key` (e.g. AdamW's b1, which only the Python API sets).
  """
  if key == "conventions":
    return ["--convention=" + convention_spelling(value)]
  if key == "network":
    value = value or {}
    out = []
    for name in _NETWORK_FLAGS:
      v = value.get(name)
      out.append(f"--{name}=" + (tristate_spelling(v) if name == "batch_norm" else _flag_value(v)))
    return out
  if key == "arms":   # the training options given several values (studies.TrainingChoice)
    return [f"--{'arms' if name == 'listed' else name}={_flag_value(v)}"
            for name, v in (value or {}).items() if v]
  if key == "task" and isinstance(value, str):
    value = [value]
  if key in _TRISTATE_FLAGS:
    return [f"--{key}={tristate_spelling(value)}"]
  if isinstance(value, bool):
    return [f"--{key}" if value else f"--no{key}"]
  if key in ("b1", "b2"):
    raise ValueError(f"{key} has no flag of python -m jaxact.main")
  return [f"--{key}={_flag_value(value)}"]


def _overrides(identity: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
  out = []
  arms = {k for k, v in (identity.get("arms") or {}).items() if v and k != "listed"}
  for key, value in identity.items():
    if key in arms:      # its flag lists every arm (below), the first being this value
      continue
    if key == "network":
      network, base_network = value or {}, base.get("network") or {}
      out += [flag for flag, name in zip(identity_flags(key, network), _NETWORK_FLAGS)
              if network.get(name) != base_network.get(name)]
    elif value != base.get(key):
      out += identity_flags(key, value)
  return out


# Fields of early run.json files, from before the network flags; these values are
# what the network flags' defaults give.
LEGACY_DEFAULTS = {"init": "torch", "hidden_activation": "sigmoid", "dense_layers": 1}


def _candidate(preset: Preset, identity: Mapping[str, Any]) -> bool:
  """Whether `preset` may name a run: a study preset for its own study only; a preset
  without a study (smoke) only where every value it sets is the run's."""
  arms = (identity.get("arms") or {}).get("listed")
  if list(preset.flags.get("arms") or []) != list(arms or []):
    return False          # a preset's arms are the run's, or the preset does not name it
  if "study" in preset.flags:
    return preset.flags["study"] == identity["study"]
  return all(identity.get(k, v) == v for k, v in preset.flags.items())


def describe(config: Mapping[str, Any]) -> list[str]:
  """The preset and the overrides that make the run of `config` (a run.json's "config").

  The preset that spells the run in the fewest flags, or none where no preset
  shortens it; given to `python -m jaxact.main` with the run's --data_dir and
  --workdir, the flags make a run of the same identity. E.g. ["--preset=all",
  "--task=multiclass", "--head=sigmoid"].

  Raises:
    ValueError: the run set an option that no flag sets (b1, b2).
  """
  from jaxact import checkpoint, train   # the training stack: only when describing a run
  default = checkpoint.config_identity(train.RunConfig().to_dict())
  # A run.json without "split" predates per-member splits: its run used the fixed split.
  identity = {**default, "split": "fixed", **checkpoint.config_identity(dict(config))}
  for key, value in LEGACY_DEFAULTS.items():
    if identity.get(key) == value:
      del identity[key]
  if isinstance(identity.get("task"), str):
    identity["task"] = [identity["task"]]
  best = _overrides(identity, default)
  for preset in PRESETS.values():
    if not _candidate(preset, identity):
      continue
    flags = [f"--preset={preset.name}"] + _overrides(
        identity, {**default, **{k: v for k, v in preset.flags.items() if k in default}})
    if len(flags) < len(best):
      best = flags
  return best


def run_dirs(paths: Sequence[str]) -> list[str]:
  """The workdirs of `paths`: each path that holds a run.json, else the runs below it, sorted."""
  out = []
  for path in paths:
    if os.path.exists(os.path.join(path, "run.json")):
      out.append(path)
      continue
    for root, dirs, files in os.walk(path):
      dirs.sort()
      if "run.json" in files:
        out.append(root)
  return out


def main(argv: Sequence[str]) -> None:
  """`python -m jaxact.presets [--markdown] PATH...`: each run as a preset and its overrides.

  PATH is a workdir, or a directory whose runs (the workdirs below it) are all
  described; --markdown prints a table of them (experiments/README.md holds one).
  """
  paths = list(argv[1:])
  if not paths:
    raise app.UsageError("give one or more workdirs, or directories that hold runs")
  workdirs = run_dirs(paths)
  if not workdirs:
    sys.stderr.write(f"no run.json in or below {', '.join(paths)}: give the workdir of a run\n")
    sys.exit(2)
  markdown = flags.FLAGS.markdown
  if markdown:
    print("| run | as a preset and its overrides |\n|---|---|")
  status = 0
  for workdir in workdirs:
    try:
      with open(os.path.join(workdir, "run.json"), encoding="utf-8") as f:
        config = json.load(f)["config"]
      described = " ".join(describe(config)) or "(no flags: the defaults)"
    except (OSError, ValueError, KeyError) as err:
      sys.stderr.write(f"{workdir}: no readable run.json with a config ({err}); give the "
                       "workdir of a run\n")
      status = 2
      continue
    print(f"| `{workdir}` | `{described}` |" if markdown else f"{workdir}: {described}")
  sys.exit(status)


if __name__ == "__main__":
  # Defined here, not at import: jaxact.main imports this module and owns the global flags.
  flags.DEFINE_bool("markdown", False, "Print a Markdown table (experiments/README.md's).")
  app.run(main)
