r"""Compile time of the hidden-layer study's program against the number of network variants.

A first look at the hidden study (`--study=hidden --seeds=1 --max_epochs=1`) is
almost all compilation: its 128 cells are one multiclass program whose members
differ by network (8 hidden activations x batch norm x depth, and 4
initialisations that change only the initial weights). This measures
`Engine.compile_ahead` (the epoch and the test programs, lowered and compiled
for the real shapes) for growing subsets of the study's cells, one seed per
cell, every measurement in a fresh subprocess with no compilation cache:

  * `--subsets=depth1`: the depth-1 cells of the first k hidden activations
    (each activation: 3 inits x batch norm off/on = 6 cells, 2 networks);
  * `--subsets=depth`: the depth sweep of the first k activations (2 inits x
    5 depths = 10 cells, 5 networks, 62 dense layers per activation);
  * `--subsets=all`: the whole study (128 cells, 56 networks).

Usage (from the repository root; synthetic data, as compile time does not
depend on the values):
  python -m benchmarks.compile_time --subsets=depth1,depth --ks=1,2,4,8
  python -m benchmarks.compile_time --subsets=all

The markdown table goes to stdout and to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARK = "BENCH_JSON "


def subset_cells(subset: str, k: int):
  """The hidden study's cells of one subset (see the module docstring)."""
  from jaxact.model import cells as studies  # pylint: disable=g-import-not-at-top
  cells = [r.cell for r in studies.hidden_grid()["multiclass"]]
  hidden = studies.HIDDEN[:k]
  if subset == "depth1":
    return [c for c in cells if c.depth == 1 and c.hidden in hidden]
  if subset == "depth":
    return [c for c in cells if c.depth > 1 and c.hidden in hidden]
  if subset == "all":
    return cells
  raise ValueError(f"unknown subset {subset!r}: choose depth1, depth or all")


def measure(subset: str, k: int, member_mode: str) -> dict:
  """Seconds to compile the epoch and test programs of one subset, in this process."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxact.engine import engine as engine_lib  # pylint: disable=g-import-not-at-top
  from jaxact.engine import program as program_lib  # pylint: disable=g-import-not-at-top

  cells = subset_cells(subset, k)
  eng = engine_lib.Engine("multiclass", [(c, 0) for c in cells],
                          program_lib.EngineConfig(max_epochs=1),
                          program_lib.ExecutionConfig(member_mode=member_mode))
  data = jax.block_until_ready(program_lib.TaskData.from_split(common.synthetic_arrays(), "multiclass"))
  t0 = time.perf_counter()
  eng.compile_ahead(data)
  compile_s = time.perf_counter() - t0
  return dict(subset=subset, k=k if subset != "all" else None, cells=len(cells),
              networks=len({c.network for c in cells}),
              dense_layers=sum(d for _, _, d in {c.network for c in cells}),
              branches=len(getattr(eng, "branches", getattr(eng, "_cells", ()))),
              member_mode=eng.member_mode, compile_s=compile_s)


def _run_worker(subset: str, k: int, member_mode: str) -> dict:
  env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  cmd = [sys.executable, "-m", "benchmarks.compile_time", "--worker", "--subsets", subset,
         "--ks", str(k), "--member_mode", member_mode]
  out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
  line = next(l for l in out.stdout.splitlines() if l.startswith(_MARK))
  return json.loads(line[len(_MARK):])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--subsets", default="depth1,depth")
  parser.add_argument("--ks", default="1,2,4,8")
  parser.add_argument("--member_mode", default="auto")
  parser.add_argument("--out", default=None)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  ks = [int(k) for k in args.ks.split(",")]
  if args.worker:
    print(_MARK + json.dumps(measure(args.subsets, ks[0], args.member_mode)), flush=True)
    return
  from jaxact.store import provenance  # pylint: disable=g-import-not-at-top
  rows = []
  for subset in args.subsets.split(","):
    for k in ([None] if subset == "all" else ks):
      r = _run_worker(subset, k or 0, args.member_mode)
      print(json.dumps(r), file=sys.stderr, flush=True)
      rows.append(r)
  lines = [
      f"Command: `python -m benchmarks.compile_time {' '.join(argv or sys.argv[1:])}`  ",
      f"Machine: {provenance.machine_description()}  ",
      f"Commit: {provenance.git_revision()}, {time.strftime('%Y-%m-%d')}",
      "",
      "| subset | activations | cells | networks | dense layers | member mode | switch branches "
      "| compile s |",
      "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['subset']} | {r['k'] if r['k'] else 8} | {r['cells']} | {r['networks']} "
                 f"| {r['dense_layers']} | {r['member_mode']} | {r['branches']} | {r['compile_s']:.1f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
