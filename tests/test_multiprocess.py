"""A real multi-process JAX cluster: `jaxact.main --distributed` as 2 processes on this machine.

Two processes join one cluster through `--coordinator_address=localhost:PORT
--num_processes=2 --process_id=i` (JAX's gloo collectives on CPU), each with
one CPU device, so the members are sharded over 2 devices owned by 2
processes: the host-side gathers, the process-0-only writes, the barriers and
orbax's multi-process checkpoint saves (`--checkpoint_every=1`) run for real.
The cluster is stopped (SIGTERM to both processes, as a scheduler would)
after its second epoch and started again with the same command: it resumes
from its checkpoint and finishes.

The reference is ONE process with 2 forced host devices
(`--xla_force_host_platform_device_count=2`), run at the same time, without
interruption: the same SPMD program with the same per-device shapes, so the
results must be bitwise equal (same statuses, best epochs, histories,
diagnostics and accuracies).

What this cannot show: several machines (a network between the hosts, a
shared file system), GPUs or TPUs. docs/devices.md says so.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARGS = ("--task=multiclass", "--head=softmax", "--seeds=2", "--max_epochs=3",
        "--checkpoint_every=1")
RUN_SPECIFIC = ("wall_time_s", "command", "machine")   # fields that name the run, not its results


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir: Path, mnist_dir: Path, tfds_dir: Path, stderr, *extra: str,
           xla_flags: str = "") -> subprocess.Popen:
  env = dict(os.environ, JAXACT_TFDS_DIR=str(tfds_dir), XLA_FLAGS=xla_flags,
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  return subprocess.Popen(
      [sys.executable, "-m", "jaxact.cli.main", *ARGS, f"--data_dir={mnist_dir}",
       f"--workdir={workdir}", *extra],
      env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=stderr, text=True)


def _cluster(workdir: Path, mnist_dir: Path, tfds_dir: Path, logs) -> list[subprocess.Popen]:
  """Starts the 2 processes of a cluster on a free local port, stderr to `logs`.

  The cluster's runs share a compilation cache beside the workdir, so the
  resumed run loads its programs instead of compiling them again.
  """
  flags = ("--distributed", f"--coordinator_address=localhost:{_free_port()}",
           "--num_processes=2", f"--compilation_cache_dir={workdir.parent / 'xla'}")
  return [_start(workdir, mnist_dir, tfds_dir, logs[i], *flags, f"--process_id={i}")
          for i in range(2)]


def _wait_all(procs, timeout: float) -> list[str]:
  """Waits for every process, killing those still running after `timeout` s; their stdout."""
  outs = []
  try:
    for p in procs:
      try:
        outs.append(p.communicate(timeout=timeout)[0])
      except subprocess.TimeoutExpired:
        p.kill()
        outs.append(p.communicate()[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return outs


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_dir, tfds_dir):
  """Runs the stopped-and-resumed cluster and the reference; returns a dict:
  first, second: per process (returncode, stdout, stderr) of the cluster's two runs;
  single: (returncode, stdout, stderr) of the reference; cluster_dir, single_dir: workdirs."""
  root = tmp_path_factory.mktemp("multiprocess")
  logs = {k: root / f"{k}.log" for k in ("first0", "first1", "second0", "second1", "single")}
  files = {k: open(v, "w") for k, v in logs.items()}
  try:
    single = _start(root / "single", mnist_dir, tfds_dir, files["single"],
                    xla_flags="--xla_force_host_platform_device_count=2")
    first = _cluster(root / "cluster", mnist_dir, tfds_dir, (files["first0"], files["first1"]))
    deadline = time.monotonic() + 600
    while ("multiclass epoch 2:" not in logs["first0"].read_text()
           and time.monotonic() < deadline and all(p.poll() is None for p in first)):
      time.sleep(0.2)
    for p in first:
      p.send_signal(signal.SIGTERM)
    # A process that was inside a collective when its peer stopped waits there for good
    # (gloo has no timeout for it): it is killed, like a crashed host.
    first_out = _wait_all(first, timeout=30)
    second = _cluster(root / "cluster", mnist_dir, tfds_dir, (files["second0"], files["second1"]))
    second_out = _wait_all(second, timeout=900)
    single_out = _wait_all([single], timeout=900)
  finally:
    for f in files.values():
      f.close()
  text = {k: v.read_text() for k, v in logs.items()}
  return dict(
      first=[(p.returncode, o, text[f"first{i}"]) for i, (p, o) in enumerate(zip(first, first_out))],
      second=[(p.returncode, o, text[f"second{i}"])
              for i, (p, o) in enumerate(zip(second, second_out))],
      single=(single.returncode, single_out[0], text["single"]),
      cluster_dir=root / "cluster", single_dir=root / "single")


def _progress(stderr: str) -> list[str]:
  """The per-epoch progress lines, without their times (elapsed, ETA)."""
  lines = [l.split("] ", 1)[1] for l in stderr.splitlines() if "] multiclass epoch " in l]
  return [re.sub(r"elapsed [^;]+; (eta [^;]+|done); ", "", l) for l in lines]


def test_every_run_ended_as_it_should(runs):
  assert runs["single"][0] == 0, runs["single"][2][-3000:]
  # How a process ends when its peer stops mid-collective is JAX's business: exit 130 after
  # "interrupted", an abort from JAX's coordination service, or our kill after 30 s.
  for code, _, stderr in runs["first"]:
    assert "multiclass epoch 2:" in stderr, stderr[-3000:]
    assert code != 0, stderr[-3000:]
  assert any("jaxact: interrupted" in stderr for _, _, stderr in runs["first"])
  for i, (code, _, stderr) in enumerate(runs["second"]):
    assert code == 0, stderr[-3000:]
    assert f"process {i} of 2, 1 local / 2 global devices" in stderr


def test_second_run_resumed_from_a_checkpoint(runs):
  stderr = runs["second"][0][2]
  assert re.search(r"task multiclass: resumed from epoch [12] ", stderr), stderr[-3000:]


def test_cluster_results_equal_one_process_with_two_devices(runs):
  a = json.loads((runs["cluster_dir"] / "results" / "multiclass.json").read_text())
  b = json.loads((runs["single_dir"] / "results" / "multiclass.json").read_text())
  assert "2 x cpu in 2 processes" in a["machine"] and "processes" not in b["machine"]
  assert len(a["members"]) == 2
  for key in set(a) | set(b):
    if key not in RUN_SPECIFIC:
      assert a.get(key) == b.get(key), key


def test_only_process_zero_writes_and_prints(runs):
  files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
  # Nothing more than one process writes (checkpoints are deleted when the task ends).
  assert files(runs["cluster_dir"]) == files(runs["single_dir"])
  stdout0, stdout1 = runs["second"][0][1], runs["second"][1][1]
  assert "softmax + cce" in stdout0 and "report:" in stdout0
  # (gloo itself prints a connection line to stdout in both processes)
  assert "softmax + cce" not in stdout1 and "report:" not in stdout1


def test_every_process_saw_the_same_training(runs):
  single = _progress(runs["single"][2])
  assert len(single) == 3                          # --max_epochs=3
  for i in range(2):
    first, second = _progress(runs["first"][i][2]), _progress(runs["second"][i][2])
    assert first[:2] == single[:2]
    assert second == single[len(single) - len(second):] and second
