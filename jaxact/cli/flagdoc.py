r"""The flag reference of `python -m jaxact.main`, generated from the option declarations.

docs/flags.md is this module's output, so the reference cannot drift from the
command line:

  python -m jaxact.flagdoc > docs/flags.md

`render()` defines the flags of the command line's options
(`presets.command_line()`: --preset, then jaxact.study.options.OPTIONS) on a
FlagValues of its own, with `options.define_flags` as jaxact.main does, and
renders one Markdown table per part: the options that change results (the
groups in STUDY_GROUPS), then those that change only speed or where results
go. tests/test_docs.py checks that docs/flags.md equals the output, so a new
or changed option fails CI until the file is regenerated.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

from absl import flags

from jaxact.study import config as config_lib
from jaxact.study import options as options_lib
from jaxact.study import presets as presets_lib

COMMAND = "python -m jaxact.flagdoc > docs/flags.md"

# The option groups of the first table (they change results); the others (execution, run)
# are the second's.
STUDY_GROUPS = ("study", "network", "training")

_HEADER = f"""\
# Flags of `python -m jaxact.main`

<!-- Generated from the option declarations (jaxact/study/options.py) by `{COMMAND}`.
     Do not edit by hand: tests/test_docs.py fails when this file differs from that output. -->

Every flag is `--name=value` (booleans: `--name` / `--noname`). A run's identity is the set of
options that change results: a workdir refuses to resume under other values of them, with the
list of what differs (see [running.md](running.md#resuming-a-run)). The first table is those
options; the second changes only speed or where results go, and may change between a run and
its resumption, except `--matmul_precision` and `--compact`, which are part of the identity
all the same (TF32 or bfloat16 on an accelerator changes results beyond rounding; a compacted
run rounds differently from an uncompacted one), and `--data_dir`, which chooses the data: a
run resumes only on the same MNIST files.
From Python ([running.md](running.md#from-python)), the first table's options are the fields of
`train.RunConfig` (the training ones in its `engine` group, `program.EngineConfig`), and
`--member_mode`, `--conv`, `--matmul_precision` and `--compact` those of its `execution` group
(`program.ExecutionConfig`); of the rest, `--data_dir` and `--tfds_dir` are `RunConfig` fields
too, and the others arguments of `train.train_and_evaluate` or the command line's own. The
flags take their defaults from those classes.
The options beyond the original protocol (optimizer, learning rate, batch size, head bias) are
explained in [training_options.md](training_options.md); the flag values of the study grids in
[how_it_works.md](how_it_works.md).
"""

_GROUPS = (
    ("The study's options", "What is trained, and how: they change results."),
    ("Options that change only speed or where results go",
     "How the members share the machine, what is compiled when, and where files go."),
)


def option_flags(option_list: Sequence[options_lib.Option] | None = None,
                 defaults: config_lib.RunConfig | None = None) -> list[tuple[Any, Any]]:
  """(option, its absl flag) for each option with a flag, in declaration order.

  Args:
    option_list: default `presets.command_line()`, the command line's.
    defaults: the RunConfig of the flags' defaults (default `RunConfig()`).
  """
  option_list = presets_lib.command_line() if option_list is None else list(option_list)
  flag_values = flags.FlagValues()
  options_lib.define_flags(option_list, defaults or config_lib.RunConfig(), flag_values)
  return [(o, flag_values[o.name]) for o in option_list if o.flag]


def _default(flag: Any) -> str:
  value = flag.default
  if value is None:
    return "unset"
  if isinstance(value, bool):
    return "`true`" if value else "`false`"
  if isinstance(value, (list, tuple)):
    return "`" + ",".join(str(v) for v in value) + "`"
  if value == "":
    return "`''`"
  return f"`{value}`"


def _cell(text: str) -> str:
  """Text fit for one Markdown table cell: one line, pipes escaped."""
  return " ".join(str(text).split()).replace("|", "\\|")


def _table(group: Sequence[Any]) -> list[str]:
  lines = ["| flag | default | meaning |", "|---|---|---|"]
  for flag in group:
    lines.append(f"| `--{flag.name}` | {_default(flag)} | {_cell(flag.help)} |")
  return lines


def render(option_list: Sequence[options_lib.Option] | None = None,
           defaults: config_lib.RunConfig | None = None) -> str:
  """docs/flags.md: the flags of the options as two Markdown tables.

  Args:
    option_list: the options to document; default `presets.command_line()`.
    defaults: the RunConfig of the flags' defaults (default `RunConfig()`).

  Returns:
    The Markdown text, ending in a newline.
  """
  pairs = option_flags(option_list, defaults)
  study = [f for o, f in pairs if o.group in STUDY_GROUPS]
  place = [f for o, f in pairs if o.group not in STUDY_GROUPS]
  lines = [_HEADER]
  for (title, lead), group in zip(_GROUPS, (study, place)):
    lines += [f"## {title}", "", lead, "", *_table(group), ""]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  argv = sys.argv if argv is None else argv
  if len(argv) > 1:
    sys.exit(f"usage: {COMMAND}  (no arguments)")
  sys.stdout.write(render())


def run() -> None:
  """`python -m jaxact.flagdoc`."""
  main()


if __name__ == "__main__":
  run()
