"""Named presets: the runs people make, as values of their options (`--preset=NAME`).

A preset is a set of option values (jaxact.study.options) on top of the defaults:
from Python, `get_preset("all").config(task="multiclass")` is its `RunConfig`
with one override, and `arguments()` the run's other arguments it sets (e.g.
smoke's checkpoint_every) for `train.train_and_evaluate`. The command line
applies the same values to the options it is not given: a flag given on the
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

from jaxact.study import config as config_lib
from jaxact.study import options as options_lib


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named set of option values.

  Attributes:
    name: what `--preset` takes.
    description: one line for `--help` and docs/flags.md.
    values: option name -> value, as `options.with_values` takes them; an
      option without a RunConfig field (checkpoint_every) is an argument of
      the run (`arguments`).
  """
  name: str
  description: str
  values: Mapping[str, Any]

  def config(self, **overrides: Any) -> config_lib.RunConfig:
    """The RunConfig of the preset's values with `overrides` (option name -> value) on top.

    Raises:
      ValueError: an override names no option of the configuration.
    """
    own = {k: v for k, v in self.values.items() if options_lib.get(k).field is not None}
    return options_lib.with_values(config_lib.RunConfig(), {**own, **overrides})

  def arguments(self) -> dict[str, Any]:
    """The preset's values of the run's arguments (`train.train_and_evaluate`'s keywords)."""
    return {k: v for k, v in self.values.items() if options_lib.get(k).field is None}


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
           dict(study="all", task=("multiclass",), head="sigmoid", seeds=10, max_epochs=100,
                arms=("protocol", "lr=0.0001", "lr=0.0003", "lr=0.003", "eps=0.001", "wd=0",
                      "bias=prior", "init=he", "init=xavier", "init=flax", "hidden=tanh",
                      "hidden=relu"))),
    Preset("smoke", "a first look that checks the whole pipeline: every task and cell of "
           "--study (default activation), 1 seed, 1 epoch, no checkpoints",
           dict(seeds=1, max_epochs=1, checkpoint_every=0)),
)}


def get_preset(name: str) -> Preset:
  """The preset called `name`; ValueError naming the choices otherwise."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
  return PRESETS[name]


# --preset: an option of the command line, the first of its flags.
OPTION = options_lib.Option(
    "preset", "study", "A named run that fills in the flags left unset (given flags win): "
    + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()) + ".",
    choices=tuple(PRESETS))


def command_line() -> tuple[options_lib.Option, ...]:
  """The options of `python -m jaxact.main` in --help's and docs/flags.md's order."""
  return (OPTION,) + tuple(o for o in options_lib.OPTIONS if o.flag)


def _flag_value(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return ",".join(_flag_value(v) for v in value)
  if isinstance(value, float):
    return format(value, "g")
  return "" if value is None else str(value)


def _flag(name: str, kind: options_lib.Kind | None, value: Any) -> str:
  """The flag `--name` that gives the option (of `kind`; None: unknown) the value `value`."""
  if kind is options_lib.BOOL or (kind is None and isinstance(value, bool)):
    return f"--{name}" if value else f"--no{name}"
  if kind in (options_lib.TRISTATE_KIND, options_lib.CONVENTIONS):
    return f"--{name}={kind.spell(value)}"
  return f"--{name}={_flag_value(value)}"


def _network_options() -> list[options_lib.Option]:
  return [o for o in options_lib.OPTIONS if o.identity_key == "network"]


def identity_flags(key: str, value: Any) -> list[str]:
  """The command-line flags that give identity key `key` the value `value`.

  Raises:
    ValueError: no flag sets `key` (e.g. AdamW's b1, which only the Python API sets).
  """
  if key == "network":
    value = value or {}
    return [_flag(o.name, o.kind, value.get(o.leaf)) for o in _network_options()]
  if key == "arms":   # the training options given several values (studies.TrainingChoice)
    return [f"--{'arms' if name == 'listed' else name}={_flag_value(v)}"
            for name, v in (value or {}).items() if v]
  option = next((o for o in options_lib.OPTIONS if o.identity_key == key), None)
  if option is None:   # a key of an older run.json that no option declares
    return [_flag(key, None, value)]
  if not option.flag:
    raise ValueError(f"{key} has no flag of python -m jaxact.main")
  return [_flag(option.name, option.kind, value)]


def _overrides(identity: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
  out = []
  arms = {k for k, v in (identity.get("arms") or {}).items() if v and k != "listed"}
  for key, value in identity.items():
    if key in arms:      # its flag lists every arm (below), the first being this value
      continue
    if key == "network":
      network, base_network = value or {}, base.get("network") or {}
      out += [flag for flag, o in zip(identity_flags(key, network), _network_options())
              if network.get(o.leaf) != base_network.get(o.leaf)]
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
  if list(preset.values.get("arms") or []) != list(arms or []):
    return False          # a preset's arms are the run's, or the preset does not name it
  if "study" in preset.values:
    return preset.values["study"] == identity["study"]
  return all(identity.get(k, v) == v for k, v in preset.values.items())


def describe(config: Mapping[str, Any]) -> list[str]:
  """The preset and the overrides that make the run of `config` (a run.json's "config").

  The preset that spells the run in the fewest flags, or none where no preset
  shortens it; given to `python -m jaxact.main` with the run's --data_dir and
  --workdir, the flags make a run of the same identity. E.g. ["--preset=all",
  "--task=multiclass", "--head=sigmoid"].

  Raises:
    ValueError: the run set an option that no flag sets (b1, b2).
  """
  default = config_lib.run_identity(config_lib.RunConfig())
  # A run.json without "split" predates per-member splits: its run used the fixed split.
  identity = {**default, "split": "fixed", **options_lib.config_identity(dict(config))}
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
        identity, config_lib.run_identity(preset.config()))
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


def run() -> None:
  """`python -m jaxact.presets`."""
  # Defined here, not at import: jaxact.main imports this module and owns the global flags.
  flags.DEFINE_bool("markdown", False, "Print a Markdown table (experiments/README.md's).")
  app.run(main)


if __name__ == "__main__":
  run()
