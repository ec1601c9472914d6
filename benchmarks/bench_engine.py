r"""Throughput, scaling, memory and FLOP efficiency of jaxact's engine against PyTorch.

Measured side by side in one run on one machine (every measurement in its own
subprocess, one after the other, so peaks of memory do not mix and compile
caches are cold each time; `--repeats` rounds of the reference followed by
every engine configuration, so that each round compares them within minutes):

  * the PyTorch reference (benchmarks/torch_reference.py): one model, batch 32,
    `--epochs` epochs without early stopping, torch threads = the CPU count;
  * jaxact's Engine at M members (`--members`, default 1,2,4,8,16,32; on a GPU
    pass e.g. 1,8,64,256,1024): M seeds of multiclass softmax + cce, `--epochs`
    epochs without early stopping (patience > max_epochs). The first epoch
    includes tracing and compilation; the steady epoch time is the median of
    the later ones, and compile time ~ first - steady.

One model-epoch = 2,000 training examples (batch 32, last batch of 16 kept)
+ the 3,000-example valid pass. Throughput = model-epochs per second (M per
engine epoch). FLOPs of a model-epoch are computed from the layer shapes
(benchmarks/common.py) and compared with a large float32 matmul measured with
jax on the same machine. Every number is a median over `--repeats`
subprocesses.

Usage (from the repository root):
  python -m benchmarks.bench_engine --data_dir=../shared/data/mnist
  python -m benchmarks.bench_engine --synthetic --members=1,8,64,256,1024   # a GPU
  python -m benchmarks.bench_engine --data_dir=... --full_table --seeds=3   # long

The markdown report goes to stdout and to `--out`
(default benchmarks/results_<hostname>.md).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # pylint: disable=g-import-not-at-top

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARK = "BENCH_JSON "
TASK = "multiclass"  # C = 10, softmax + cce: the network of the FLOP count


# ---------------------------------------------------------------------------
# Measurements (each runs inside a worker process; importable for tests).


def matmul_peak(n: int = 0, repeats: int = 10, precision: str = "float32") -> dict:
  """Median time and GFLOP/s of an (n, n) @ (n, n) float32 matmul with jax.

  n = 0 picks 2048 on CPU and 8192 on an accelerator. `precision` as
  ExecutionConfig.matmul_precision (on a GPU, "tensorfloat32" uses the TF32
  tensor cores: the peak the engine can reach at that precision).
  """
  from jaxact.engine import program as program_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if not n:
    n = 2048 if jax.default_backend() == "cpu" else 8192
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  fn = jax.jit(program_lib.with_matmul_precision(jnp.matmul, precision))
  s = common.time_calls(fn, a, b, repeats=repeats)
  return dict(n=n, repeats=repeats, seconds=s, gflops=2.0 * n**3 / s / 1e9, precision=precision)


def measure_engine(arrays: common.Arrays, members: int, epochs: int, task: str = TASK,
                   member_mode: str = "auto", matmul_precision: str = "float32",
                   conv: str = "im2col") -> dict:
  """Trains `members` seeds of the task's recommended cell for `epochs` epochs with Engine.run."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxact.engine import engine as engine_lib  # pylint: disable=g-import-not-at-top
  from jaxact.model import cells as studies  # pylint: disable=g-import-not-at-top
  from jaxact.engine import program as program_lib  # pylint: disable=g-import-not-at-top

  cell = studies.recommended_cell(task)
  config = program_lib.EngineConfig(max_epochs=epochs, patience=epochs + 1)
  execution = program_lib.ExecutionConfig(member_mode=member_mode,
                                          matmul_precision=matmul_precision, conv=conv)
  marks = []
  eng = engine_lib.Engine(task, [(cell, s) for s in range(members)], config, execution,
                          progress=lambda _: marks.append(time.perf_counter()))
  data = jax.block_until_ready(program_lib.TaskData.from_split(arrays, task))
  device_before = common.device_memory_stats()
  rss_before = common.rss_bytes()
  reset = common.reset_peak_rss()
  t0 = time.perf_counter()
  results = eng.run(data).members
  wall = time.perf_counter() - t0
  peak = common.peak_rss_bytes()
  device_after = common.device_memory_stats()
  epoch_s = [b - a for a, b in zip([t0] + marks[:-1], marks)]
  steady = common.median(epoch_s[1:]) if len(epoch_s) > 1 else float("nan")
  out = dict(
      kind="engine", members=members, epochs=epochs, task=task, cell=cell.key,
      member_mode=eng.member_mode, eval_rows=eng.eval_rows, matmul_precision=matmul_precision,
      conv=conv,
      epoch_s=epoch_s, first_epoch_s=epoch_s[0], steady_epoch_s=steady,
      compile_s=epoch_s[0] - steady, compilations=eng.traces, wall_s=wall,
      statuses=sorted({r.status for r in results}),
      valid_metric=common.median([r.valid_metric[-1] for r in results]),
      rss_before=rss_before, peak_rss=peak if reset else None,
      peak_rss_growth=(peak - rss_before) if (reset and peak and rss_before) else None,
      backend=jax.default_backend())
  if device_after and "peak_bytes_in_use" in device_after:
    base = (device_before or {}).get("bytes_in_use", 0)
    out["device_peak"] = device_after["peak_bytes_in_use"]
    out["device_peak_growth"] = device_after["peak_bytes_in_use"] - base
  return out


def measure_torch(arrays: common.Arrays, epochs: int, threads: int, task: str = TASK,
                  device: str | None = None, tf32: bool = False) -> dict:
  """Trains one model of the task's recommended cell for `epochs` epochs with the reference.

  device: torch's ("cpu", "cuda"); None: cuda when torch sees a GPU. tf32: let
  PyTorch use TF32 for its matmuls and cuDNN convolutions on a GPU (set to match
  the engine's --matmul_precision; the H100 figures of 2026-11-23 ran with PyTorch's
  defaults, under which cuDNN may use TF32).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference as ref  # pylint: disable=g-import-not-at-top
  from jaxact.model import cells as studies  # pylint: disable=g-import-not-at-top

  cell = studies.recommended_cell(task)
  torch.set_num_threads(threads)
  ref.allow_tf32(tf32)
  device = device or ref.default_device()
  data = ref.TorchTaskData.from_split(arrays, task).to(device)
  rss_before = common.rss_bytes()
  reset = common.reset_peak_rss()
  r = ref.train_cell(cell, 0, data, max_epochs=epochs, patience=epochs + 1, device=device)
  peak = common.peak_rss_bytes()
  epoch_s = r.model_epoch_s
  steady = common.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
  return dict(
      kind="torch", members=1, epochs=epochs, task=task, cell=cell.key, threads=threads,
      torch_version=torch.__version__, device=device, tf32=tf32,
      device_name=torch.cuda.get_device_name() if device.startswith("cuda") else None,
      epoch_s=epoch_s, train_epoch_s=r.train_epoch_s,
      valid_epoch_s=r.valid_epoch_s, first_epoch_s=epoch_s[0], steady_epoch_s=steady,
      wall_s=r.wall_s, statuses=[r.status], valid_metric=r.valid_metric[-1],
      rss_before=rss_before, peak_rss=peak if reset else None,
      peak_rss_growth=(peak - rss_before) if (reset and peak and rss_before) else None)


def measure_full_table(args) -> dict:
  """Wall time of jaxact.study.train.train_and_evaluate over the whole grid, early stopping included."""
  from jaxact.model import cells as studies  # pylint: disable=g-import-not-at-top
  from jaxact.study import train  # pylint: disable=g-import-not-at-top
  from jaxact.engine import program as program_lib  # pylint: disable=g-import-not-at-top

  conventions = tuple(studies.CONVENTIONS) if args.conventions == "both" else (args.conventions,)
  config = train.RunConfig(
      study=args.study, seeds=args.seeds, conventions=conventions, split_seed=args.split_seed,
      data_dir=args.data_dir,
      engine=program_lib.EngineConfig(max_epochs=args.max_epochs),
      execution=program_lib.ExecutionConfig(member_mode=args.member_mode,
                                            matmul_precision=args.matmul_precision,
                                            conv=args.conv, compact=args.compact))
  workdir = args.full_table_workdir or tempfile.mkdtemp(prefix="jaxact-full-table-")
  if os.path.isdir(workdir) and os.listdir(workdir):
    # train_and_evaluate would resume from / reuse what is there: not a timing.
    raise ValueError(f"--full_table_workdir {workdir!r} is not empty: give a new directory")
  t0 = time.perf_counter()
  results = train.train_and_evaluate(config, workdir, command=["bench_engine", "--full_table"],
                                     compile_ahead=args.compile_ahead)
  wall = time.perf_counter() - t0
  per_task = {}
  for task, rs in results.items():
    with open(os.path.join(workdir, "results", f"{task}.json")) as f:
      task_wall = json.load(f)["wall_time_s"]   # from the task's start to its results
    per_task[task] = dict(members=len(rs), useful=sum(r.epochs_trained for r in rs),
                          epochs_run=max(r.epochs_trained for r in rs), wall_s=task_wall)
  return dict(kind="full_table", study=args.study, seeds=args.seeds, conventions=conventions,
              member_mode=args.member_mode, matmul_precision=args.matmul_precision,
              conv=args.conv,
              max_epochs=args.max_epochs, compact=args.compact,
              compile_ahead=args.compile_ahead, wall_s=wall, workdir=workdir,
              members=sum(v["members"] for v in per_task.values()),
              useful_model_epochs=sum(v["useful"] for v in per_task.values()),
              computed_model_epochs_upper=sum(v["members"] * v["epochs_run"]
                                              for v in per_task.values()),
              per_task=per_task)


def machine_info(matmul_n: int, repeats: int, precision: str = "float32") -> dict:
  from jaxact.store import provenance  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  return dict(kind="machine", description=provenance.machine_description(),
              git_revision=provenance.git_revision(), backend=jax.default_backend(),
              jax_version=jax.__version__, devices=[str(d) for d in jax.devices()],
              device_kind=jax.devices()[0].device_kind,
              matmul=matmul_peak(matmul_n, max(repeats, 5), precision))


def _worker(args) -> dict:
  if args.worker == "machine":
    return machine_info(args.matmul_n, args.repeats, args.matmul_precision)
  if args.worker == "full_table":
    return measure_full_table(args)
  if args.synthetic and (args.n_train or args.n_valid):
    arrays = common.synthetic_arrays(args.n_train or 2000, args.n_valid or 3000, n_test=64)
  else:
    arrays = common.load_arrays(args.data_dir, args.split_seed, args.synthetic, n_test=256)
  if args.worker == "torch":
    return measure_torch(arrays, args.epochs, args.torch_threads or common.cpu_count(),
                         device=args.torch_device,
                         tf32=args.matmul_precision in ("tensorfloat32", "default"))
  if args.worker == "engine":
    return measure_engine(arrays, int(args.members), args.epochs,
                          member_mode=args.member_mode, matmul_precision=args.matmul_precision,
                          conv=args.conv)
  raise ValueError(f"unknown worker {args.worker!r}")


# ---------------------------------------------------------------------------
# The driver.


def _forwarded(args) -> list[str]:
  out = ["--epochs", str(args.epochs), "--repeats", str(args.repeats),
         "--split_seed", str(args.split_seed), "--matmul_n", str(args.matmul_n),
         "--seeds", str(args.seeds), "--study", args.study, "--conventions", args.conventions,
         "--max_epochs", str(args.max_epochs), "--matmul_precision", args.matmul_precision,
         "--conv", args.conv]
  if args.torch_threads:
    out += ["--torch_threads", str(args.torch_threads)]
  if args.torch_device:
    out += ["--torch_device", args.torch_device]
  if args.data_dir:
    out += ["--data_dir", args.data_dir]
  if args.synthetic:
    out.append("--synthetic")
  if args.n_train or args.n_valid:
    out += ["--n_train", str(args.n_train), "--n_valid", str(args.n_valid)]
  if args.compact:
    out.append("--compact")
  if args.compile_ahead:
    out.append("--compile_ahead")
  if args.full_table_workdir:
    out += ["--full_table_workdir", args.full_table_workdir]
  return out


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def run_worker(kind: str, args, members: int | None = None, mode: str | None = None) -> dict:
  """Runs one measurement in a fresh Python process and returns its JSON result."""
  cmd = [sys.executable, "-m", "benchmarks.bench_engine", "--worker", kind] + _forwarded(args)
  if members is not None:
    cmd += ["--members", str(members)]
  cmd += ["--member_mode", mode or args.member_modes.split(",")[0]]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(_MARK)]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"benchmark worker failed ({' '.join(cmd[2:])}), exit {proc.returncode}:\n"
                       + proc.stderr[-3000:])
  result = json.loads(lines[-1][len(_MARK):])
  if args.raw_out:  # every measurement as it comes, so that an interrupted run keeps its data
    with open(args.raw_out, "a") as f:
      f.write(json.dumps(result) + "\n")
  _log(f"  {kind}{'' if members is None else f' M={members}'}{f' {mode}' if mode else ''}: done in "
       f"{time.perf_counter() - t0:.1f} s")
  return result


def summarise(runs: list[dict], torch_runs: list[dict] | None = None) -> dict:
  """Medians over repeats of one configuration.

  With `torch_runs` (the reference's runs, one per round, in the same order as
  `runs`), also `round_ratios`: per round, this configuration's model-epochs
  per second over the reference's in that round.
  """
  def med(key):
    return common.median([r.get(key) for r in runs if r.get(key) is not None])
  first = runs[0]
  ratios = None
  if torch_runs and len(torch_runs) == len(runs):
    ratios = [(r["members"] / r["steady_epoch_s"]) / (1.0 / t["steady_epoch_s"])
              for r, t in zip(runs, torch_runs)]
  return dict(kind=first["kind"], members=first["members"], repeats=len(runs),
              round_ratios=ratios,
              member_mode=first.get("member_mode"),
              steady_epoch_s=med("steady_epoch_s"), first_epoch_s=med("first_epoch_s"),
              compile_s=med("compile_s") if first["kind"] == "engine" else None,
              compilations=first.get("compilations"),
              peak_rss_growth=med("peak_rss_growth"), device_peak_growth=med("device_peak_growth"),
              valid_metric=med("valid_metric"),
              statuses=sorted({s for r in runs for s in r["statuses"]}),
              threads=first.get("threads"), torch_version=first.get("torch_version"),
              device_name=first.get("device_name"), tf32=first.get("tf32"),
              backend=first.get("backend"))


def _round_ratios(ratios: list[float] | None) -> str:
  if not ratios:
    return "-"
  return (f"{common.fmt(common.median(ratios))} ({common.fmt(min(ratios))}-"
          f"{common.fmt(max(ratios))})")


def format_report(machine: dict, torch_summary: dict | None, engine_summaries: list[dict],
                  full_table: dict | None, command: str, date: str, args) -> str:
  """The markdown report."""
  flops = common.model_epoch_flops(10, args.n_train or 2000, args.n_valid or 3000)
  peak = machine["matmul"]["gflops"]
  lines = [
      "# jaxact engine benchmark",
      "",
      f"- date: {date}",
      f"- machine: {machine['description']}",
      f"- host: {platform.node()}, python {platform.python_version()}, git "
      f"{machine.get('git_revision') or '-'}",
      f"- command: `{command}`",
      f"- workload: task {TASK}, cell softmax + cce (C = 10), batch 32, {args.epochs} epochs per "
      f"run without early stopping, data {'synthetic' if args.synthetic else 'the real split'}; "
      f"every number is the median over {args.repeats} rounds (the reference, then each "
      "configuration, every run in a fresh process)",
      f"- one model-epoch = {args.n_train or 2000:,} training examples + the "
      f"{args.n_valid or 3000:,}-example valid pass = "
      f"{flops.total / 1e9:.1f} GFLOP ({flops.train / 1e9:.1f} train at 3 x forward, "
      f"{flops.valid / 1e9:.1f} valid forward; {flops.forward_per_example / 1e6:.2f} MFLOP "
      "forward per example)",
      f"- jax devices: {', '.join(machine.get('devices') or ['-'])}",
      f"- engine matmul precision: {args.matmul_precision}; convolutions: {args.conv}",
      f"- float32 matmul peak at that precision (jax, {machine['matmul']['n']}^3, median of "
      f"{machine['matmul']['repeats']}): {peak:.1f} GFLOP/s",
      "",
  ]
  if args.n_train or args.n_valid:
    lines += [f"WARNING: smoke-test sizes ({args.n_train} train / {args.n_valid} valid): the "
              "epochs below are not the protocol's model-epochs (FLOPs are counted for these sizes).", ""]
  torch_rate = None
  header = ["implementation", "M", "s / epoch", "model-epochs / s", "x PyTorch",
            "x PyTorch per round: median (min-max)", "first epoch s", "compile s", "GFLOP/s",
            "% matmul peak", "peak mem MiB", "MiB / member", "marginal MiB / member",
            f"valid acc @ {args.epochs} ep"]
  rows = []

  def mem(s):
    return s.get("device_peak_growth") if s.get("device_peak_growth") is not None \
        and s.get("backend") not in (None, "cpu") else s.get("peak_rss_growth")

  if torch_summary:
    s = torch_summary
    torch_rate = 1.0 / s["steady_epoch_s"]
    gf = flops.total * torch_rate / 1e9
    where = (f"{s['device_name']}, TF32 {'allowed' if s.get('tf32') else 'off'}"
             if s.get("device_name") else f"{s['threads']} threads")
    rows.append([f"PyTorch {s['torch_version']} reference, {where}", "1",
                 common.fmt(s["steady_epoch_s"]), common.fmt(torch_rate), "1", "-",
                 common.fmt(s["first_epoch_s"]), "-", common.fmt(gf),
                 common.fmt(100 * gf / peak, ".0f"), common.mib(mem(s)), common.mib(mem(s)), "-",
                 common.fmt(100 * s["valid_metric"], ".1f")])
  prev_by_mode = {}
  for s in engine_summaries:
    m = s["members"]
    prev = prev_by_mode.get(s.get("member_mode"))
    prev_by_mode[s.get("member_mode")] = s
    rate = m / s["steady_epoch_s"]
    gf = flops.total * rate / 1e9
    mm = mem(s)
    marginal = "-"
    if prev is not None and mm is not None and mem(prev) is not None:
      marginal = common.mib((mm - mem(prev)) / (m - prev["members"]))
    rows.append([f"jaxact Engine ({s['backend']}, {s.get('member_mode')})", str(m),
                 common.fmt(s["steady_epoch_s"]),
                 common.fmt(rate), common.fmt(rate / torch_rate) if torch_rate else "-",
                 _round_ratios(s.get("round_ratios")), common.fmt(s["first_epoch_s"]),
                 common.fmt(s["compile_s"]), common.fmt(gf),
                 common.fmt(100 * gf / peak, ".0f"), common.mib(mm),
                 common.mib(None if mm is None else mm / m), marginal,
                 common.fmt(100 * s["valid_metric"], ".1f")])
  lines += ["## Throughput and scaling", "", common.markdown_table(header, rows), ""]
  lines += [
      "How to read it: *s / epoch* is the steady time of one epoch of all M members (median of "
      "the epochs after the first); *model-epochs / s* = M / (s / epoch); *x PyTorch* divides it "
      "by the reference's (a ratio of medians); *per round* divides the two within each round "
      "of measurements (the reference, then every configuration, in fresh processes; the rounds "
      "repeat `--repeats` times), which follows a shared machine's drifting speed more closely. "
      "*compile s* = first epoch - steady epoch (tracing + XLA compilation, "
      "paid once per task). *GFLOP/s* counts only the useful FLOPs above. *peak mem* is the "
      "growth of the peak resident set (CPU) or of jax's peak_bytes_in_use (GPU) during the run, "
      "data excluded, compilation included; *marginal* is its slope between consecutive M. "
      "*valid acc* is a sanity check that the workload trains.",
      ""]
  for s in [torch_summary] + engine_summaries:
    if s and s["statuses"] != ["hit_cap"]:
      lines.append(f"WARNING: unexpected statuses {s['statuses']} for {s['kind']} M={s['members']}")
    if s and s.get("compilations") not in (None, 1):
      lines.append(f"WARNING: {s['compilations']} compilations for M={s['members']}")
  lines.append("")
  lines += ["## FLOPs of one forward pass (one example)", "",
            common.markdown_table(["layer", "MACs", "MFLOP"],
                                  [[name, f"{m:,}", f"{2 * m / 1e6:.3f}"]
                                   for name, m in common.layer_macs(10)]), ""]
  if full_table:
    f = full_table
    lines += ["## Wall time to the full table (train_and_evaluate, early stopping included)", "",
              f"- study {f['study']}, conventions {', '.join(f['conventions'])}, {f['seeds']} "
              f"seeds, max_epochs {f['max_epochs']}, compact {f['compact']}, compile ahead "
              f"{f.get('compile_ahead', False)}, member mode "
              f"{f.get('member_mode')}, matmul precision {f.get('matmul_precision', 'float32')}: "
              f"{f['members']} members",
              f"- wall time: **{f['wall_s']:.0f} s** ({f['wall_s'] / 60:.1f} min), workdir "
              f"`{f['workdir']}`",
              f"- model-epochs trained (sum of members' epochs): {f['useful_model_epochs']}; "
              f"computed without compaction (members x epochs run, per task): "
              f"{f['computed_model_epochs_upper']}"]
    if torch_rate:
      est = f["useful_model_epochs"] / torch_rate
      lines.append(f"- the PyTorch reference would need about {est:.0f} s ({est / 3600:.1f} h) "
                   "for the same model-epochs one model at a time (an estimate: steady epoch time "
                   "x model-epochs; each torch run would stop at its own epoch)")
    lines += ["", common.markdown_table(
        ["task", "members", "epochs run", "member-epochs", "task wall s"],
        [[t, str(v["members"]), str(v["epochs_run"]), str(v["useful"]),
          f"{v['wall_s']:.1f}" if v.get("wall_s") is not None else "-"]
         for t, v in f["per_task"].items()]), ""]
  return "\n".join(lines) + "\n"


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--members", default="1,2,4,8,16,32",
                 help="comma-separated member counts M for the scaling curve")
  p.add_argument("--epochs", type=int, default=4,
                 help="epochs per run (the first includes compilation; >= 2)")
  p.add_argument("--repeats", type=int, default=3, help="runs per configuration (median)")
  p.add_argument("--data_dir", default=None, help="MNIST IDX files (default: as jaxact)")
  p.add_argument("--synthetic", action="store_true",
                 help="random data of the real shapes instead of MNIST (same speed)")
  p.add_argument("--split_seed", type=int, default=0)
  p.add_argument("--torch_threads", type=int, default=0, help="default: the CPU count")
  p.add_argument("--skip_torch", action="store_true", help="do not measure the reference")
  p.add_argument("--torch_device", default=None,
                 help="the reference's torch device (default: cuda if torch sees a GPU, else cpu)")
  p.add_argument("--matmul_precision", default="float32",
                 help="ExecutionConfig.matmul_precision of the engine runs and of the matmul peak "
                      "(float32, tensorfloat32, bfloat16, default)")
  p.add_argument("--conv", default="im2col",
                 help="ExecutionConfig.conv of the engine runs (im2col, native)")
  p.add_argument("--matmul_n", type=int, default=0, help="matmul size (0: 2048 CPU, 8192 GPU)")
  p.add_argument("--out", default=None, help="markdown file (default "
                 "benchmarks/results_<hostname>.md; '-' for stdout only)")
  p.add_argument("--raw_out", default=None,
                 help="also append every measurement's JSON to this file as it finishes")
  p.add_argument("--full_table", action="store_true",
                 help="also time train_and_evaluate over the whole grid (long)")
  p.add_argument("--study", default="all", help="--full_table: activation, loss or all")
  p.add_argument("--seeds", type=int, default=3, help="--full_table: seeds per cell")
  p.add_argument("--conventions", default="torch", help="--full_table: torch, logits or both")
  p.add_argument("--max_epochs", type=int, default=100, help="--full_table: epoch cap")
  p.add_argument("--compact", action="store_true", help="--full_table: ExecutionConfig.compact")
  p.add_argument("--compile_ahead", action="store_true",
                 help="--full_table: compile the next task while one trains (train_and_evaluate)")
  p.add_argument("--full_table_workdir", default=None, help="--full_table: keep results here")
  p.add_argument("--member_modes", default="auto",
                 help="comma-separated ExecutionConfig.member_mode values to measure, each at "
                      "every M (auto, loop, vmap); --full_table uses the first")
  p.add_argument("--member_mode", default=None, help=argparse.SUPPRESS)   # a worker's one mode
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  # Smaller synthetic sets, for smoke tests only (the FLOP count assumes 2,000 / 3,000).
  p.add_argument("--n_train", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--n_valid", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.epochs < 2:
    p.error("--epochs must be >= 2 (the first epoch includes compilation)")
  if args.repeats < 1:
    p.error("--repeats must be >= 1")
  from jaxact.engine.program import MEMBER_MODES  # pylint: disable=g-import-not-at-top
  for mode in args.member_modes.split(","):
    if mode not in MEMBER_MODES:
      p.error(f"--member_modes: unknown mode {mode!r} ({', '.join(MEMBER_MODES)})")
  args.member_mode = args.member_mode or args.member_modes.split(",")[0]
  from jaxact.engine.program import MATMUL_PRECISIONS  # pylint: disable=g-import-not-at-top
  if args.matmul_precision not in MATMUL_PRECISIONS:
    p.error(f"--matmul_precision: unknown {args.matmul_precision!r} ({', '.join(MATMUL_PRECISIONS)})")
  from jaxact.model.network import CONV_IMPLS  # pylint: disable=g-import-not-at-top
  if args.conv not in CONV_IMPLS:
    p.error(f"--conv: unknown {args.conv!r} ({', '.join(CONV_IMPLS)})")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    print(_MARK + json.dumps(_worker(args)), flush=True)
    return 0
  command = "python -m benchmarks.bench_engine " + " ".join(
      shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
  date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  members = [int(m) for m in args.members.split(",") if m.strip()]
  _log(f"benchmark: machine and matmul peak; then {args.repeats} rounds of PyTorch and the "
       "engine at M = " + ", ".join(map(str, members)))
  machine = run_worker("machine", args)
  with_torch = not args.skip_torch
  if with_torch and importlib.util.find_spec("torch") is None:
    _log("torch is not installed (pip install -e '.[bench]'); skipping the reference")
    with_torch = False
  configs = [(mode, m) for mode in args.member_modes.split(",") for m in members]
  torch_runs, engine_runs = [], {c: [] for c in configs}
  # Rounds, not all repeats of one configuration in a row: a shared machine's speed drifts
  # (benchmarks/README.md), and each round compares the two side by side.
  for r in range(args.repeats):
    _log(f"round {r + 1} of {args.repeats}")
    if with_torch:
      torch_runs.append(run_worker("torch", args))
    for mode, m in configs:
      engine_runs[(mode, m)].append(run_worker("engine", args, m, mode))
  torch_summary = summarise(torch_runs) if torch_runs else None
  engine_summaries = [summarise(engine_runs[c], torch_runs) for c in configs]
  full = run_worker("full_table", args) if args.full_table else None
  report = format_report(machine, torch_summary, engine_summaries, full, command, date, args)
  print(report)
  out = args.out or os.path.join(REPO_ROOT, "benchmarks",
                                 f"results_{platform.node() or 'host'}.md")
  if out != "-":
    with open(out, "w") as f:
      f.write(report)
    _log(f"written to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
