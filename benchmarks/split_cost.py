r"""The cost of per-member data splits: the steady epoch with and without each member's rows.

Three data paths of the same members (M seeds of multiclass softmax + cce), in both member
modes:

  * shared: one split held as its own arrays, every member reads them (`TaskData.from_split`,
    no per-member rows: what every run computed before per-member splits);
  * fixed rows: the pool on the device, every member's rows those of one split
    (`--split=fixed` today);
  * per-seed rows: the pool, each member's own split (`--split=per_seed`, the default).

With `--baseline_tree=DIR` (a checkout of an older revision, e.g. made by `git worktree add`),
the shared path is also measured with that revision's code: the cost of everything that
changed between the two, the switch of a one-branch program in loop mode included.

Each measurement is its own subprocess (cold compile caches, no shared memory peaks);
`--epochs` epochs without early stopping, the steady epoch is the median of all epochs but
the first (which compiles); every number is the median over `--repeats` subprocesses.

Usage (from the repository root; nothing else may run on the machine):
  python -m benchmarks.split_cost --data_dir=../shared/data/mnist \
      --out=benchmarks/results_cpu_2core_splits.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARK = "SPLIT_JSON "
PATHS = ("shared", "fixed_rows", "per_seed_rows")

_WORKER = r"""
import json, sys, time
import jax
from jaxact.data import mnist as data_lib
from jaxact.engine import engine
from jaxact.model import cells as studies
from jaxact.engine import program
path, mode, members, epochs, data_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
task = "multiclass"
cell = studies.Cell(task, "softmax", "cce")
cfg = program.EngineConfig(max_epochs=epochs, patience=epochs + 1)
ex = program.ExecutionConfig(member_mode=mode)
members = [(cell, s) for s in range(members)]
if path == "shared":
  split = data_lib.load_split(data_dir, 0)
  eng = engine.Engine(task, members, cfg, ex)
  data = program.TaskData.from_split(split, task)
else:
  pool = data_lib.load_pool(data_dir)
  splits = pool.split_rows if path == "per_seed_rows" else (lambda _: pool.split_rows(0))
  eng = engine.Engine(task, members, cfg, ex, splits=splits)
  data = program.TaskData.from_pool(pool, task)
times = []
last = [time.perf_counter()]
def hook(epoch, host):
  now = time.perf_counter()
  times.append(now - last[0])
  last[0] = now
eng.progress = lambda line: None
eng.run(data, on_epoch=hook)
print("SPLIT_JSON " + json.dumps({"epoch_s": times}))
"""


def measure(path: str, mode: str, members: int, epochs: int, data_dir: str,
            tree: str = REPO_ROOT) -> list[float]:
  """The epoch times (s) of one subprocess, run with the code of `tree`."""
  env = dict(os.environ, PYTHONPATH=tree, JAXACT_COMPILATION_CACHE_DIR="")
  proc = subprocess.run([sys.executable, "-c", _WORKER, path, mode, str(members), str(epochs),
                         data_dir], cwd=tree, env=env, capture_output=True, text=True,
                        check=False)
  for line in proc.stdout.splitlines():
    if line.startswith(_MARK):
      return json.loads(line[len(_MARK):])["epoch_s"]
  raise RuntimeError(f"worker failed ({path}, {mode}, {tree}):\n{proc.stderr[-3000:]}")


def git_revision(tree: str) -> str:
  return subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                        text=True, check=False).stdout.strip() or "?"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data_dir", required=True)
  p.add_argument("--members", type=int, default=4)
  p.add_argument("--epochs", type=int, default=5)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--modes", default="loop,vmap")
  p.add_argument("--baseline_tree", default=None)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  rows = []
  configs = [(path, REPO_ROOT) for path in PATHS]
  if args.baseline_tree:
    configs.insert(0, ("shared", os.path.abspath(args.baseline_tree)))
  for mode in args.modes.split(","):
    for path, tree in configs:
      steady, first = [], []
      for _ in range(args.repeats):
        times = measure(path, mode, args.members, args.epochs, args.data_dir, tree)
        steady.append(statistics.median(times[1:]))
        first.append(times[0])
      rows.append((mode, path, git_revision(tree), statistics.median(steady), min(steady),
                   max(steady), statistics.median(first)))
      print(rows[-1], file=sys.stderr, flush=True)
  from jaxact.store import provenance   # after the workers: this process's jax stays unused until now
  lines = [
      "# The cost of per-member data splits",
      "",
      f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%MZ')}",
      f"- machine: {provenance.machine_description()}; git {git_revision(REPO_ROOT)}",
      f"- command: `python -m benchmarks.split_cost {' '.join(argv or sys.argv[1:])}`",
      f"- {args.members} members (multiclass softmax + cce, seeds 0-{args.members - 1}), "
      f"{args.epochs} epochs each, steady epoch = median of epochs 2-{args.epochs}, "
      f"median [min, max] of {args.repeats} subprocesses",
      "",
      "| member mode | data path | code (git) | steady epoch (s) | vs shared at this revision "
      "| first epoch, compiling (s) |",
      "|---|---|---|---|---|---|",
  ]
  for mode, path, rev, med, lo, hi, first in rows:
    ref = next(r[3] for r in rows if r[0] == mode and r[1] == "shared" and r[2] == rev) if any(
        r[0] == mode and r[1] == "shared" and r[2] == rev for r in rows) else None
    ratio = f"{(med / ref - 1) * 100:+.1f}%" if ref else "-"
    lines.append(f"| {mode} | {path} | {rev} | {med:.3f} [{lo:.3f}, {hi:.3f}] | {ratio} | "
                 f"{first:.1f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)


if __name__ == "__main__":
  main()
