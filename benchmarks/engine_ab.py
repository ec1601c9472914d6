r"""The engine at another git revision against the working tree's, interleaved in one process.

On a shared machine whose speed drifts by 10-30% within minutes (BUILD_NOTES.md, *Speed*),
two benchmark runs minutes apart cannot show a change of a few percent. This script
measures one such change: it imports the `jaxact` package of `--base` (a git revision,
extracted with `git archive` into a temporary directory and imported as `jaxact_base`)
beside the working tree's `jaxact`, compiles one epoch of each, then alternates their
epochs (base, working tree, base, ...) and reports the median of the paired ratios
(working tree / base, epoch by epoch) with its quartiles. Both train the same cell and
seed on the same data; whether their results agree exactly is reported too.

Usage (from the repository root; needs git):
  python -m benchmarks.engine_ab --base=7334dcd --data_dir=../shared/data/mnist \
      [--epochs=40] [--task=multiclass] [--members=1] [--member_mode=loop]
  Without --data_dir it uses synthetic images of the real shapes (--n_train, --n_valid).
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_PACKAGE = "jaxact_base"


def extract_base(rev: str, into: str) -> str:
  """Writes `rev`'s jaxact/ to into/jaxact_base/, its imports renamed; returns `rev`'s hash."""
  try:
    full = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT,
                          check=True, capture_output=True, text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", full, "jaxact"], cwd=ROOT, check=True,
                             capture_output=True).stdout
  except (OSError, subprocess.CalledProcessError) as e:
    err = getattr(e, "stderr", b"") or b""
    err = err.decode() if isinstance(err, bytes) else err
    raise SystemExit(f"engine_ab: cannot read revision {rev!r} with git ({err.strip() or e}); "
                     "run from a git checkout and name a commit, e.g. --base=HEAD~1") from e
  with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
    # The "data" filter (Python >= 3.11.4, 3.10.12) refuses links and paths outside `into`.
    tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
  pkg = os.path.join(into, BASE_PACKAGE)
  os.rename(os.path.join(into, "jaxact"), pkg)
  pattern = re.compile(r"\b(from|import) jaxact\b")
  for root, _, names in os.walk(pkg):   # the sub-packages too (after 59bc533)
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        with open(path, encoding="utf-8") as f:
          src = f.read()
        with open(path, "w", encoding="utf-8") as f:
          f.write(pattern.sub(rf"\1 {BASE_PACKAGE}", src))
  return full


def _module(pkg: str, *names: str):
  """The first of `pkg`'s modules `names` that the revision has (its layout changed after
  59bc533: sub-packages) and that defines something of use here."""
  for name in names:
    try:
      module = importlib.import_module(f"{pkg}.{name}")
    except ImportError:
      continue
    if not hasattr(module, "__path__"):   # a module, not a package
      return module
  raise ImportError(f"{pkg} has none of {', '.join(names)}")


def prepare(pkg: str, arrays, task: str, members: int, member_mode: str):
  """(epoch function, state after one compiled epoch, data) of package `pkg`'s engine."""
  engine_lib = _module(pkg, "engine.engine", "engine")
  # Where the revision defines its configurations and TaskData: program.py (the engine
  # re-exported them up to 59bc533), else engine.py.
  defs = _module(pkg, "engine.program", "program", "engine")
  defs = defs if hasattr(defs, "EngineConfig") else engine_lib
  studies = _module(pkg, "model.cells", "studies")
  cell = studies.recommended_cell(task)
  config = defs.EngineConfig(max_epochs=10**6, patience=10**6)
  if hasattr(defs, "ExecutionConfig"):
    execution = {"execution": defs.ExecutionConfig(member_mode=member_mode)}
  else:   # revisions up to 30ce5cb: member_mode was a field of EngineConfig
    config = defs.EngineConfig(max_epochs=10**6, patience=10**6, member_mode=member_mode)
    execution = {}
  eng = engine_lib.Engine(task, [(cell, s) for s in range(members)], config,
                          progress=lambda _: None, **execution)
  data = jax.block_until_ready(defs.TaskData.from_split(arrays, task))
  # The public seams where the revision has them, else the engine's private ones.
  epoch_fn = getattr(eng, "epoch_fn", None) or eng._epoch_fn     # pylint: disable=protected-access
  initial = getattr(eng, "initial_state", None) or eng._initial_state   # pylint: disable=protected-access
  state, _ = epoch_fn(initial(), data)
  return epoch_fn, jax.block_until_ready(state), data


def params_of(state):
  """The parameters of an engine's state: a `TrainState` or (older revisions) a dict."""
  return state["params"] if isinstance(state, dict) else state.params


def paired_summary(base_s: list[float], new_s: list[float]) -> dict:
  """Medians and the paired ratios new / base (epoch i against epoch i)."""
  ratios = sorted(n / b for b, n in zip(base_s, new_s))
  q = lambda f: ratios[round(f * (len(ratios) - 1))]
  return dict(base_median_s=statistics.median(base_s), new_median_s=statistics.median(new_s),
              ratio_median=statistics.median(ratios), ratio_q25=q(0.25), ratio_q75=q(0.75),
              pairs=len(ratios))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--base", required=True, help="git revision whose engine is the baseline")
  p.add_argument("--data_dir", default=None, help="MNIST IDX directory (default: synthetic)")
  p.add_argument("--n_train", type=int, default=2000, help="synthetic training images")
  p.add_argument("--n_valid", type=int, default=3000, help="synthetic valid images")
  p.add_argument("--epochs", type=int, default=40, help="timed epochs of each")
  p.add_argument("--task", default="multiclass")
  p.add_argument("--members", type=int, default=1)
  p.add_argument("--member_mode", default="loop", choices=("loop", "vmap"))
  args = p.parse_args(argv)
  if args.epochs < 2:
    p.error(f"--epochs={args.epochs}: need at least 2 timed epochs of each")

  arrays = (common.load_arrays(args.data_dir) if args.data_dir else
            common.synthetic_arrays(n_train=args.n_train, n_valid=args.n_valid))
  with tempfile.TemporaryDirectory(prefix="engine_ab_") as tmp:
    full = extract_base(args.base, tmp)
    sys.path.insert(0, tmp)
    runs = {name: prepare(name, arrays, args.task, args.members, args.member_mode)
            for name in (BASE_PACKAGE, "jaxact")}
    times = {name: [] for name in runs}
    for _ in range(args.epochs):
      for name, (fn, state, data) in runs.items():
        t0 = time.perf_counter()
        state, _ = fn(state, data)
        jax.block_until_ready(state)
        times[name].append(time.perf_counter() - t0)
        runs[name] = (fn, state, data)
    last = {name: jax.device_get(run[1]) for name, run in runs.items()}
  same = all(np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(params_of(last[BASE_PACKAGE])),
      jax.tree_util.tree_leaves(params_of(last["jaxact"]))))
  s = paired_summary(times[BASE_PACKAGE], times["jaxact"])
  print(f"engine_ab: {args.task}, {args.members} member(s), {args.member_mode}, "
        f"{s['pairs']} interleaved epochs of each after one compiled epoch")
  print(f"  base {args.base} ({full[:10]}): median {s['base_median_s']:.4f} s / epoch")
  print(f"  working tree:           median {s['new_median_s']:.4f} s / epoch")
  print(f"  working tree / base, epoch by epoch: median {s['ratio_median']:.3f} "
        f"(quartiles {s['ratio_q25']:.3f}-{s['ratio_q75']:.3f})")
  print(f"  parameters after the last epoch {'bitwise equal' if same else 'DIFFER'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
