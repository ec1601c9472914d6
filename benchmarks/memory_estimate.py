r"""jaxact.engine.memory's estimate against the measured peak memory of a training run.

For each member count M, a fresh child process trains M seeds of the
multiclass softmax + cce cell for `--epochs` epochs with `Engine.run`, saving
a checkpoint after every epoch (asynchronously, as `train_and_evaluate` does,
so a snapshot of the state lives while the next epoch runs). Its resident set
size is read once its programs are compiled (`Engine.compile_ahead`) and its
high-water mark (VmHWM) after training; the measured peak is their difference
plus the resident size of the data, made before compiling (the memory check
runs before a run loads its data, so its estimate counts them). What the
compiler and the runtime kept (the resident growth from the data to the
compiled programs) is shown apart: the memory check compiles its own
small programs before it reads the available memory, so that share is
already in use when it compares. In this process, the estimate
the memory check makes (`memory.program_need`: the epoch program compiled for
4 and 8 members, extrapolated, plus the host's copies) and the rough
`memory.byte_count` are computed for the same program and data sizes.

On a CPU the devices are the host's memory, so the resident set holds both;
on an accelerator the device's peak (`memory_stats`' peak_bytes_in_use) is
compared with the device line alone.

The data are synthetic, as memory does not depend on the values: with
`--sizes=POOL,TEST`, the path of every run (`TaskData.from_pool`): a pool of
POOL images from which each member draws its own `--rows` train and valid rows
(`Engine(..., splits=...)`); with `--sizes=TRAIN,VALID,TEST`, one split shared
by every member (`TaskData.from_split`).

Usage (from the repository root):
  python -m benchmarks.memory_estimate --members=128,512,2048 --member_mode=loop \
      --sizes=60000,256 --rows=64,64 --out=benchmarks/results_cpu_2core_memory_estimate.md

The markdown goes to stdout and is appended to `--out` (one section per call).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARK = "BENCH_JSON "
TASK = "multiclass"


def configs(epochs: int, member_mode: str):
  """The EngineConfig and ExecutionConfig of the runs: `epochs` epochs, no early stop."""
  from jaxact.engine import program as program_lib  # pylint: disable=g-import-not-at-top
  return (program_lib.EngineConfig(max_epochs=epochs, patience=epochs + 1),
          program_lib.ExecutionConfig(member_mode=member_mode))


def measure(members: int, epochs: int, member_mode: str, sizes: tuple[int, ...],
            rows: tuple[int, int]) -> dict:
  """Trains `members` seeds in this process; its resident memory before and at the peak.

  sizes: (pool, test) images, each member `rows` (train, valid) rows of the pool, or
  (train, valid, test) of one shared split.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jaxact.store import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from jaxact.engine import engine as engine_lib  # pylint: disable=g-import-not-at-top
  from jaxact.model import cells as studies  # pylint: disable=g-import-not-at-top
  from jaxact.engine import program as program_lib  # pylint: disable=g-import-not-at-top
  from jaxact.data import mnist as data_lib  # pylint: disable=g-import-not-at-top

  jax.devices()
  baseline = common.rss_bytes()
  config, execution = configs(epochs, member_mode)
  cell = studies.recommended_cell(TASK)
  splits = None
  if len(sizes) == 2:   # the run keeps the pool on the host, as `RunData` does
    a = common.synthetic_arrays(sizes[0], 0, sizes[1])
    pool = data_lib.Pool(x=a.x_train, y=a.y_train, x_test=a.x_test, y_test=a.y_test,
                         source=a.source, mnist={}, n_train=rows[0], n_valid=rows[1])
    splits, data = pool.split_rows, program_lib.TaskData.from_pool(pool, TASK)
  else:
    arrays = common.synthetic_arrays(*sizes)
    data = program_lib.TaskData.from_split(arrays, TASK)
    del arrays   # the run keeps the split on the host: the estimate counts one copy (`data`)
  loaded = common.rss_bytes()
  eng = engine_lib.Engine(TASK, [(cell, s) for s in range(members)], config, execution,
                          progress=lambda _: None, splits=splits)
  eng.compile_ahead(data)
  compiled = common.rss_bytes()
  common.reset_peak_rss()
  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = checkpoint_lib.TaskCheckpointer(os.path.join(tmp, TASK), every=1,
                                           identity={"benchmark": "memory_estimate"})
    try:
      results = eng.run(data, on_epoch_end=ckpt).members
    finally:
      ckpt.close()
  wall = time.perf_counter() - t0
  device_after = common.device_memory_stats()
  out = dict(members=members, epochs=epochs, member_mode=eng.member_mode,
             backend=jax.default_backend(), baseline=baseline, loaded=loaded, compiled=compiled,
             peak=common.peak_rss_bytes(), wall_s=wall,
             statuses=sorted({r.status for r in results}))
  out["peak_growth"] = out["peak"] - compiled + loaded - baseline
  if device_after and "peak_bytes_in_use" in device_after:
    out["device_peak_growth"] = device_after["peak_bytes_in_use"]   # the data's included
  return out


def _run_worker(members: int, args) -> dict:
  cmd = [sys.executable, "-m", "benchmarks.memory_estimate", "--worker",
         "--members", str(members), "--epochs", str(args.epochs),
         "--member_mode", args.member_mode, "--sizes", args.sizes, "--rows", args.rows]
  out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"worker for {members} members failed:\n{out.stderr[-3000:]}")
  line = next(l for l in out.stdout.splitlines() if l.startswith(_MARK))
  return json.loads(line[len(_MARK):])


def estimate_line(args, sizes, rows) -> dict:
  """The memory check's lines for the benchmark's program, and the rough byte count's."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxact.engine import memory  # pylint: disable=g-import-not-at-top
  from jaxact.model import cells as studies  # pylint: disable=g-import-not-at-top
  config, execution = configs(args.epochs, args.member_mode)
  cells = memory.representative_cells([studies.recommended_cell(TASK)])
  t0 = time.perf_counter()
  device, host, _ = memory.program_need(TASK, cells, config, execution, sizes, rows=rows)
  mode = execution.member_mode
  if mode == "auto":
    mode = "loop" if jax.default_backend() == "cpu" and jax.device_count() == 1 else "vmap"
  return dict(device=device, host=host, seconds=time.perf_counter() - t0,
              shared_memory=jax.default_backend() == "cpu",
              rough=lambda m: memory.byte_count(
                  TASK, m, batch_size=config.batch_size, max_epochs=config.max_epochs,
                  member_mode=mode, n_examples=sum(sizes),
                  eval_rows=execution.eval_examples or (
                      32 if jax.default_backend() == "cpu" else 4096)).total)


def main(argv=None) -> None:
  from jaxact.data import mnist as data_lib  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--members", default="128,512,2048")
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--member_mode", default="loop")
  parser.add_argument("--sizes", default="64,64,256",
                      help="pool,test images (each member its --rows of the pool) or "
                           "train,valid,test of one shared split")
  parser.add_argument("--rows", default=f"{data_lib.TRAIN_SIZE},{data_lib.VALID_SIZE}",
                      help="train,valid rows of the pool per member (with --sizes=POOL,TEST)")
  parser.add_argument("--out", default=None)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  sizes = tuple(int(n) for n in args.sizes.split(","))
  rows = tuple(int(n) for n in args.rows.split(","))
  ms = [int(m) for m in args.members.split(",")]
  if args.worker:
    r = measure(ms[0], args.epochs, args.member_mode, sizes, rows)
    print(_MARK + json.dumps(r), flush=True)
    return
  from jaxact.engine import memory  # pylint: disable=g-import-not-at-top
  from jaxact.store import provenance  # pylint: disable=g-import-not-at-top
  line = estimate_line(args, sizes, rows)
  table = []
  for m in ms:
    r = _run_worker(m, args)
    print(json.dumps(r), file=sys.stderr, flush=True)
    device_only = not line["shared_memory"] and "device_peak_growth" in r
    need = line["device"] if device_only else line["device"] + line["host"]
    measured = r["device_peak_growth"] if device_only else r["peak_growth"]
    table.append((m, r["compiled"] - r["loaded"], measured, need.at(m), line["rough"](m),
                  r["wall_s"]))
  mib = lambda n: f"{n / 2 ** 20:,.0f}"
  dev, host = line["device"], line["host"]
  lines = [
      f"## {args.member_mode} mode, {args.epochs} epochs, " + (
          f"a pool of {sizes[0]:,} and {sizes[1]:,} test images, each member its own "
          f"{rows[0]:,} train and {rows[1]:,} valid rows" if len(sizes) == 2
          else f"split {args.sizes} (train, valid, test)"),
      "",
      f"Command: `python -m benchmarks.memory_estimate {' '.join(argv or sys.argv[1:])}`  ",
      f"Machine: {provenance.machine_description()}  ",
      f"Commit: {provenance.git_revision()}, {time.strftime('%Y-%m-%d')}",
      "",
      f"Estimate (`memory.program_need`, compiled for {memory.SMALL_MEMBERS[0]} and "
      f"{memory.SMALL_MEMBERS[1]} members in {line['seconds']:.0f} s): device "
      f"{mib(dev.shared)} MiB + {dev.per_member / 2 ** 20:.2f} MiB per member; host copies "
      f"{mib(host.shared)} MiB + {host.per_member / 2 ** 20:.2f} MiB per member.",
      "",
      "| members | compiler and runtime MiB | measured peak MiB | estimate MiB "
      "| estimate / measured | byte count MiB | byte count / measured | run s |",
      "|---|---|---|---|---|---|---|---|"]
  for m, compiler, measured, est, rough, wall in table:
    lines.append(f"| {m:,} | {mib(compiler)} | {mib(measured)} | {mib(est)} "
                 f"| {est / measured:.2f} | {mib(rough)} | {rough / measured:.2f} | {wall:.0f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out, "a") as f:
      f.write("\n" + text)


if __name__ == "__main__":
  main()
