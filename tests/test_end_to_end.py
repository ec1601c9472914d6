"""End to end on real MNIST (../shared/data/mnist): the library entry point and the CLI."""

import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from jaxact.data import tfds_builder as mnist_tfds
from jaxact.engine import engine
from jaxact.study import train
from jaxact.model.cells import Cell
from jaxact.engine import program


@pytest.fixture(scope="module")
def binary_run(mnist_dir, tfds_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("workdir")
  config = train.RunConfig(
      study="activation", task="binary", head="sigmoid", seeds=2, data_dir=str(mnist_dir),
      tfds_dir=str(tfds_dir), engine=program.EngineConfig(max_epochs=2, patience=10))
  results = train.train_and_evaluate(config, str(workdir), command=["jaxact", "--test"])
  return workdir, results


def test_trains_the_selected_cells_with_the_reference(binary_run):
  _, results = binary_run
  rs = results["binary"]
  assert sorted({(r.cell.head, r.cell.loss) for r in rs}) == [
      ("sigmoid", "bce"), ("sigmoid", "cce"), ("softmax", "cce")]
  assert sorted({r.seed for r in rs}) == [0, 1]
  for r in rs:
    assert r.status == "hit_cap" and r.epochs_trained == 2
    assert len(r.valid_metric) == 2 and len(r.train_loss) == 2
    assert all(math.isfinite(v) for v in r.train_loss)
    # Two epochs on 2,000 real digits: far above the 50% of a coin flip.
    assert 0.75 < r.best_valid <= 1.0 and 0.75 < r.test <= 1.0


def test_workdir_holds_results_report_and_plot(binary_run):
  workdir, results = binary_run
  saved = json.loads((workdir / "results" / "binary.json").read_text())
  assert saved["compilations"] == 1
  assert len(saved["members"]) == len(results["binary"]) == 6
  m = saved["members"][0]
  assert Cell.from_dict(m["cell"]).task == "binary"
  for key in ("seed", "best_valid", "test", "best_epoch", "epochs_trained", "status",
              "train_loss", "valid_metric"):
    assert key in m
  run = json.loads((workdir / "run.json").read_text())
  assert run["finished"] and "cpu" in run["machine"].lower()
  (segment,) = run["segments"]
  assert segment["tasks"] == ["binary"] and segment["ended"] == run["finished"]
  assert saved["git_revision"] == segment["git_revision"]          # the revision that trained it
  assert saved["jaxact_version"] == segment["jaxact_version"] == run["jaxact_version"]
  report = (workdir / "report.md").read_text()
  assert "✅" in report and "❌" in report and "sigmoid + bce" in report
  assert (workdir / "curves_binary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _cli(*args, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "jaxact.cli.main", *args], capture_output=True,
                        text=True, env=env, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--task=ranking"], "unknown --task 'ranking'"),
    (["--study=everything"], "unknown --study"),
    (["--task=binary", "--head=tanh"], "unknown --head 'tanh': choose one of none, relu"),
    (["--task=binary", "--loss=hinge"], "unknown --loss 'hinge': choose one of cce"),
    (["--convention=numpy"], "unknown convention"),
    (["--task=regression", "--head=none", "--loss=cce"], "cce cannot be used"),
    (["--task=binary", "--norm=on"], "regression task only"),
    (["--seeds=0"], "--seeds must be a positive"),
    (["--max_epochs=0"], "--max_epochs must be positive"),
    (["--init=orthogonal"], "unknown --init"),
    (["--norm=maybe"], "--norm takes"),
    (["--depth=deep"], "--depth takes whole numbers"),
    (["--depth=0"], "--depth takes numbers of dense hidden layers from 1"),
    (["--hidden=swish"], "unknown --hidden 'swish'"),
    (["--batch_norm=yes"], "--batch_norm takes"),
    (["--study=hidden", "--task=binary"], "has no binary task"),
    (["--study=hidden", "--depth=3"], "no cell of the hidden grid"),
    (["--member_mode=fast"], "unknown --member_mode 'fast'"),
    (["--matmul_precision=fp8"], "unknown --matmul_precision 'fp8'"),
    (["--conv=fft"], "unknown --conv 'fft'"),
    (["--optimizer=adam"], "unknown --optimizer 'adam'"),
    (["--learning_rate=0"], "--learning_rate must be a positive number, got 0.0"),
    (["--learning_rate=nan"], "--learning_rate must be a positive number"),
    (["--weight_decay=-0.1"], "--weight_decay must be 0 or a positive number"),
    (["--optimizer=sgd", "--momentum=1"], "--momentum must be in [0, 1), got 1.0"),
    (["--momentum=0.5"], "--momentum is SGD's: add --optimizer=sgd"),
    (["--eps=0"], "--eps must be a positive number, got 0.0"),
    (["--optimizer=sgd", "--eps=1e-3"], "--eps is AdamW's: leave it out with --optimizer=sgd"),
    (["--batch_size=0"], "--batch_size must be from 1 to the 2000 training examples"),
    (["--batch_size=2001"], "--batch_size must be from 1 to the 2000 training examples"),
    (["--head_bias_init=zero"], "unknown --head_bias_init 'zero'"),
    (["--preset=fast"], "--preset: unknown preset 'fast': choose one of activation, loss"),
    (["--seeds=2000000000"], "this run does not fit in memory"),
    (["--first_seed=4294967295", "--seeds=2"], "past 4294967295, the largest seed"),
    (["--num_processes=2"], "--num_processes needs --distributed"),
    (["--distributed", "--coordinator_address=localhost:1"],
     "also needs --num_processes, --process_id"),
    (["--distributed", "--coordinator_address=localhost:1", "--num_processes=2",
      "--process_id=2"], "--process_id must be in 0 ... --num_processes - 1 (1), got 2"),
    (["--distributed", "--coordinator_address=localhost:1", "--num_processes=0",
      "--process_id=0"], "--num_processes must be at least 1, got 0"),
    (["--distributed"], "--distributed could not find its cluster"),
])
def test_cli_refuses_bad_flags_clearly(args, message, tmp_path):
  proc = _cli(*args, f"--workdir={tmp_path}")
  assert proc.returncode == 2
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr


def test_cli_missing_data_dir(tmp_path):
  proc = _cli("--task=binary", f"--data_dir={tmp_path / 'nowhere'}", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 2
  assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()          # the data are read before anything is written


def test_cli_unwritable_tfds_dir(tmp_path, mnist_dir):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  for env_extra, args in (({}, [f"--tfds_dir={blocker / 'tfds'}"]),
                          ({"JAXACT_TFDS_DIR": str(blocker / "tfds")}, [])):
    proc = _cli("--task=binary", f"--data_dir={mnist_dir}", f"--workdir={tmp_path / 'w'}", *args,
                env_extra=env_extra)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    message = proc.stderr.splitlines()[-1]
    assert message.startswith(f"jaxact: error: {blocker / 'tfds'}: the tensorflow-datasets "
                              "cache directory cannot be written")
    assert "--tfds_dir" in message and "JAXACT_TFDS_DIR" in message
    assert not (tmp_path / "w").exists()


def test_cli_without_data_dir_offline_stops_at_once(tmp_path):
  # No --data_dir and no JAXACT_DATA_DIR: the download path, here from a port nothing listens on.
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {"JAXACT_DATA_DIR": "", "JAXACT_MNIST_URL": f"http://127.0.0.1:{port}/",
         "JAXACT_TFDS_DIR": str(tmp_path / "tfds")}
  env.update({v: "" for v in mnist_tfds.PROXY_ENV_VARS})
  start = time.perf_counter()
  proc = _cli("--task=binary", f"--workdir={tmp_path / 'w'}", env_extra=env)
  assert time.perf_counter() - start < 120     # tfds' downloader alone retries for minutes
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "No --data_dir" in proc.stderr and "cannot connect" in proc.stderr
  assert "JAXACT_MNIST_URL" in proc.stderr and "point --data_dir" in proc.stderr


def test_cli_refuses_loop_mode_on_several_devices(tmp_path, mnist_dir):
  proc = _cli("--task=binary", "--member_mode=loop", f"--data_dir={mnist_dir}",
              f"--workdir={tmp_path}",
              env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert proc.returncode == 2
  assert "--member_mode=loop runs on one device" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_cli_unwritable_workdir(tmp_path, mnist_dir):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  proc = _cli("--task=binary", f"--data_dir={mnist_dir}", f"--workdir={blocker / 'sub'}")
  assert proc.returncode == 2
  assert "cannot write to the workdir" in proc.stderr and "Traceback" not in proc.stderr


# The smoke preset: 1 seed, 1 epoch, no checkpoints.
_CELL_ARGS = ("--task=probability", "--head=softmax", "--loss=bce", "--preset=smoke")


def test_cli_runs_a_cell_end_to_end_and_reruns_it_from_the_compilation_cache(
    tmp_path, mnist_dir, tfds_dir):
  # The first run fills a fresh compilation cache (the epoch program is jit_epoch-*); the same
  # grid in a fresh workdir loads the compiled epoch from it, and the executable being the
  # same, every number is the same.
  cache = tmp_path / "xla"
  runs = []
  for name in ("first", "second"):
    workdir = tmp_path / name
    proc = _cli(*_CELL_ARGS, f"--data_dir={mnist_dir}", f"--workdir={workdir}",
                f"--compilation_cache_dir={cache}", env_extra={"JAXACT_TFDS_DIR": str(tfds_dir)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((workdir / "results" / "probability.json").read_text())
    runs.append([(m["label"], m["seed"], m["train_loss"], m["valid_metric"], m["test"])
                 for m in saved["members"]])
    if name == "second":
      break
    epochs = {p.name for p in cache.iterdir() if p.name.startswith("jit_epoch")}
    assert epochs, list(cache.iterdir())
    assert "softmax + bce" in proc.stdout and "sigmoid + bce" in proc.stdout
    assert "probability epoch 1" in proc.stderr  # progress, per task and epoch
    # The preset's 1 seed and 1 epoch.
    assert [m["epochs_trained"] for m in saved["members"]] == [1, 1]
    by_cell = {m["label"]: m for m in saved["members"]}
    # Single-output softmax is the constant 1: it predicts "curved" for every digit, and no
    # gradient reaches its weights: the in-program diagnostics say so.
    assert by_cell["softmax + bce"]["best_valid"] < 0.6
    assert by_cell["softmax + bce"]["diagnosis"]["kind"] == "no_gradient"
    assert by_cell["sigmoid + bce"]["diagnostics"]["grad_norm"][0][0] > 0
  assert runs[0] == runs[1]
  # The epoch program was loaded, not compiled anew. (Small programs near the cache's 0.5 s
  # threshold may or may not be written, depending on the machine's load.)
  assert {p.name for p in cache.iterdir() if p.name.startswith("jit_epoch")} == epochs


def test_cli_unusable_compilation_cache_dir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  proc = _cli("--task=binary", f"--compilation_cache_dir={blocker / 'xla'}",
              f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 2
  assert "cannot create the compilation cache directory" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_cli_hidden_study_end_to_end(tmp_path, mnist_dir, tfds_dir):
  """A slice of the hidden-layer study on real MNIST: mixed networks in one program, the
  claims table, the saturation and gradient-against-depth plots."""
  proc = _cli("--study=hidden", "--hidden=sigmoid,relu", "--depth=1,2", "--init=torch",
              "--batch_norm=off", "--seeds=1", "--max_epochs=1", f"--data_dir={mnist_dir}",
              f"--workdir={tmp_path}", env_extra={"JAXACT_TFDS_DIR": str(tfds_dir)})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "4 cells x 1 seeds = 4 members in one program" in proc.stderr
  saved = json.loads((tmp_path / "results" / "multiclass.json").read_text())
  assert saved["study"] == "hidden"
  deep = next(m for m in saved["members"] if m["cell"]["depth"] == 2)
  assert deep["diagnostics"]["layers"] == ["conv1", "conv2", "conv3", "hidden1", "hidden2", "out"]
  assert len(deep["diagnostics"]["saturated"][0]) == 2
  report = (tmp_path / "report.md").read_text()
  assert "hidden-layer study" in report
  assert "| sigmoid hidden layers make the gradient vanish as depth grows |" in report
  for name in ("curves", "saturation", "gradients_depth"):
    assert (tmp_path / f"{name}_multiclass.png").stat().st_size > 10_000


def test_compile_ahead_compiles_the_next_task_in_the_background(mnist_dir, tfds_dir, tmp_path,
                                                               monkeypatch):
  calls = []
  original = engine.Engine.compile_ahead

  def recording(self, data):
    calls.append((self.task.name, threading.current_thread().name))
    return original(self, data)

  monkeypatch.setattr(engine.Engine, "compile_ahead", recording)
  saved = {}
  for ahead in (False, True):
    config = train.RunConfig(
        study="activation", task=("probability", "binary"), head="sigmoid", loss="bce", seeds=1,
        data_dir=str(mnist_dir), tfds_dir=str(tfds_dir),
        engine=program.EngineConfig(max_epochs=2, patience=10))
    workdir = tmp_path / f"ahead_{ahead}"
    train.train_and_evaluate(config, str(workdir), command=["jaxact", "--test"],
                             compile_ahead=ahead)
    saved[ahead] = {task: json.loads((workdir / "results" / f"{task}.json").read_text())
                    for task in ("probability", "binary")}
  # The first task compiles when it starts; the second while the first trains.
  assert calls == [("binary", "jaxact-compile-binary")]
  for task in ("probability", "binary"):
    assert saved[True][task]["compilations"] == 1
    assert saved[True][task]["members"] == saved[False][task]["members"]


def test_cli_refuses_a_run_too_big_for_memory_in_one_paragraph(tmp_path):
  proc = _cli("--seeds=2000000000", f"--workdir={tmp_path}")
  assert proc.returncode == 2
  assert proc.stderr.startswith("jaxact: error: this run does not fit in memory")
  assert re.search(r"At most [\d,]+ members fit: use --seeds=\d+ or fewer cells", proc.stderr)
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr   # no log line before it
  assert not os.listdir(tmp_path)                                  # nothing written
