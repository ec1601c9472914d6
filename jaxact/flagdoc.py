r"""The flag reference of `python -m jaxact.main`, generated from its absl flags.

docs/flags.md is this module's output, so the reference cannot drift from the
command line:

  python -m jaxact.flagdoc > docs/flags.md

`render()` imports jaxact.main (which defines its flags on absl's global
`flags.FLAGS`), takes the flags defined there
(`flags.FLAGS.get_flags_for_module("jaxact.main")`, in definition order) and
renders one Markdown table per group: the study's options (what is trained and
how: they change results), then the options that change only speed or where
results go (SPEED_AND_PLACE). tests/test_docs.py checks that docs/flags.md
equals the output, so a new or changed flag fails CI until the file is
regenerated.

Run it in a process of its own: jaxact.main and jaxact.compare both define
--task, and absl refuses a second definition in one process.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Sequence

from absl import flags

MODULE = "jaxact.main"
COMMAND = "python -m jaxact.flagdoc > docs/flags.md"

# The flags of program.ExecutionConfig's fields: how each task's program is computed.
EXECUTION = ("member_mode", "conv", "matmul_precision", "compact")
# The flags that change only speed or where results go: the execution group, then the
# run-level ones (what is compiled when, where files go, the processes). Every other flag
# of jaxact.main is one of the study's options.
SPEED_AND_PLACE = EXECUTION + (
    "compile_ahead", "compilation_cache_dir", "checkpoint_every", "restart", "workdir",
    "data_dir", "tfds_dir", "tensorboard", "tensorboard_members", "distributed",
    "coordinator_address", "num_processes", "process_id")

_HEADER = f"""\
# Flags of `python -m jaxact.main`

<!-- Generated from jaxact/main.py's absl flags by `{COMMAND}`.
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


def main_flags() -> list[Any]:
  """The absl flags defined in jaxact.main, in definition order (imports jaxact.main)."""
  importlib.import_module(MODULE)   # defines the flags
  return list(flags.FLAGS.get_flags_for_module(MODULE))


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


def render(flag_list: Sequence[Any] | None = None) -> str:
  """docs/flags.md: the flags of jaxact.main as two Markdown tables.

  Args:
    flag_list: the flags to document (absl Flag objects); default `main_flags()`.

  Returns:
    The Markdown text, ending in a newline.

  Raises:
    ValueError: a name in SPEED_AND_PLACE is not one of the flags (renamed or
      removed in jaxact.main without updating the grouping).
  """
  flag_list = main_flags() if flag_list is None else list(flag_list)
  names = {f.name for f in flag_list}
  unknown = [n for n in SPEED_AND_PLACE if n not in names]
  if unknown:
    raise ValueError(f"jaxact.flagdoc.SPEED_AND_PLACE names flags that {MODULE} does not "
                     f"define: {', '.join(unknown)}; update the grouping.")
  study = [f for f in flag_list if f.name not in SPEED_AND_PLACE]
  place = [f for f in flag_list if f.name in SPEED_AND_PLACE]
  lines = [_HEADER]
  for (title, lead), group in zip(_GROUPS, (study, place)):
    lines += [f"## {title}", "", lead, "", *_table(group), ""]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  argv = sys.argv if argv is None else argv
  if len(argv) > 1:
    sys.exit(f"usage: {COMMAND}  (no arguments)")
  sys.stdout.write(render())


if __name__ == "__main__":
  main()
