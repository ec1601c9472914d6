"""Smoke tests of benchmarks/, and jaxact's losses and gradients checked against PyTorch's.

The PyTorch parts skip, with their reason, where torch is not installed (.ci/run installs
it; so does `pip install -e '.[bench]'`). Everything here runs on tiny sizes.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]      # the repository root
sys.path.insert(0, str(ROOT))

from benchmarks import bench_engine  # noqa: E402
from benchmarks import common  # noqa: E402
from jaxact.model import losses  # noqa: E402
from jaxact.model import network as model_lib  # noqa: E402
from jaxact.data import tasks  # noqa: E402
from jaxact.model.cells import Cell  # noqa: E402
from jaxact.engine import runner  # noqa: E402
from jaxact.engine import stacked  # noqa: E402


def test_model_epoch_flops_match_the_layer_shapes():
  f = common.model_epoch_flops(10)
  assert f.forward_per_example == 2 * (225_792 + 2_654_208 + 589_824 + 65_536 + 640)
  assert f.total == pytest.approx(63.6e9, rel=1e-3)   # STACK_NOTES: ~63 GFLOP
  assert f.train == 2 * f.valid                       # 3 x forward x 2000 = forward x 6000


def test_engine_measurement_structure():
  arrays = common.synthetic_arrays(n_train=48, n_valid=16, n_test=8)
  r = bench_engine.measure_engine(arrays, members=1, epochs=2)
  assert r["kind"] == "engine" and r["members"] == 1 and len(r["epoch_s"]) == 2
  assert r["compilations"] == 1
  assert r["statuses"] == ["hit_cap"]        # patience > max_epochs: nobody stops early
  assert r["first_epoch_s"] > r["steady_epoch_s"] > 0
  assert r["compile_s"] == pytest.approx(r["first_epoch_s"] - r["steady_epoch_s"])


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_engine_measurement_records_the_member_mode(mode):
  arrays = common.synthetic_arrays(n_train=48, n_valid=16, n_test=8)
  r = bench_engine.measure_engine(arrays, members=2, epochs=2, member_mode=mode,
                                  matmul_precision="tensorfloat32")
  assert r["member_mode"] == mode and r["compilations"] == 1
  assert r["matmul_precision"] == "tensorfloat32"


def test_matmul_peak_at_a_precision():
  r = bench_engine.matmul_peak(64, repeats=2, precision="tensorfloat32")
  assert r["precision"] == "tensorfloat32" and r["n"] == 64 and r["gflops"] > 0
  with pytest.raises(SystemExit):
    bench_engine.parse_args(["--matmul_precision", "fp8"])


def test_driver_keeps_every_measurement_as_it_comes(tmp_path):
  # An interrupted benchmark keeps what it measured: one JSON line per finished worker.
  raw = tmp_path / "raw.jsonl"
  out = tmp_path / "report.md"
  rc = bench_engine.main(["--synthetic", "--n_train", "48", "--n_valid", "16", "--members", "1",
                          "--epochs", "2", "--repeats", "1", "--skip_torch", "--matmul_n", "64",
                          "--out", str(out), "--raw_out", str(raw)])
  assert rc == 0
  kinds = [json.loads(line)["kind"] for line in raw.read_text().splitlines()]
  assert kinds == ["machine", "engine"]
  assert "matmul precision: float32" in out.read_text()


def test_cpu_layout_microbenchmarks_run():
  from benchmarks import cpu_layouts  # pylint: disable=g-import-not-at-top
  pools = cpu_layouts.pooling(repeats=1)
  assert set(pools) == {"reshape + reduce-max", "max of strided slices"}
  assert all(ms > 0 for ms in pools.values())
  assert cpu_layouts.eval_chunk(1500, repeats=1) > 0
  blocks = cpu_layouts.conv_pool_blocks(repeats=1)
  assert [r["layer"][:5] for r in blocks] == ["conv1"] * 3 + ["conv2"] * 2
  assert all(r["ms"] > 0 for r in blocks)


@pytest.mark.parametrize("hw,cin,cout", [(14, 32, 64), (6, 64, 64), (8, 3, 5)])
def test_winograd_convolution_equals_lax_conv(hw, cin, cout):
  """cpu_layouts' Winograd F(2x2, 3x3): the same function and gradients as a VALID conv."""
  from benchmarks import cpu_layouts  # pylint: disable=g-import-not-at-top
  kx, kk, kb = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, hw, hw, cin))
  kernel = jax.random.normal(kk, (3, 3, cin, cout)) / (9 * cin) ** 0.5
  bias = jax.random.normal(kb, (cout,))

  def conv(x, kernel, bias):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=(
        "NHWC", "HWIO", "NHWC"), precision="highest") + bias
  y = cpu_layouts.winograd_valid(x, kernel, bias)
  assert y.shape == (2, hw - 2, hw - 2, cout)
  np.testing.assert_allclose(y, conv(x, kernel, bias), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  got = jax.grad(loss(cpu_layouts.winograd_valid), argnums=(0, 1, 2))(x, kernel, bias)
  want = jax.grad(loss(conv), argnums=(0, 1, 2))(x, kernel, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def _fake_summary(kind, members, steady, backend="cpu"):
  return dict(kind=kind, members=members, repeats=1, steady_epoch_s=steady, first_epoch_s=3.0,
              compile_s=2.0 if kind == "engine" else None, compilations=1,
              peak_rss_growth=100e6 * members, device_peak_growth=None, valid_metric=0.5,
              statuses=["hit_cap"], threads=2, torch_version="x", backend=backend)


def test_report_format():
  args = bench_engine.parse_args(["--epochs", "2", "--repeats", "1", "--synthetic"])
  machine = dict(description="test machine", matmul=dict(n=64, repeats=5, gflops=100.0))
  report = bench_engine.format_report(
      machine, _fake_summary("torch", 1, 1.0),
      [_fake_summary("engine", 1, 0.5), _fake_summary("engine", 2, 0.8)], None,
      "python -m benchmarks.bench_engine", "2026-01-01", args)
  assert "test machine" in report and "python -m benchmarks.bench_engine" in report
  rows = [l for l in report.splitlines() if l.startswith("| jaxact Engine")]
  assert len(rows) == 2
  cells = [c.strip() for c in rows[1].strip("|").split("|")]
  assert cells[1] == "2" and cells[3] == "2.5" and cells[4] == "2.5"   # 2 / 0.8 model-epochs/s
  assert cells[5] == "-"                                               # no rounds given
  assert "WARNING" not in report


def test_rounds_give_same_round_ratios():
  # Three rounds in which the machine slows down: the reference and the engine both.
  torch_runs = [dict(_fake_summary("torch", 1, t), statuses=["hit_cap"]) for t in (1.0, 1.5, 2.0)]
  engine_runs = [dict(_fake_summary("engine", 2, e), statuses=["hit_cap"])
                 for e in (0.8, 1.0, 1.0)]
  s = bench_engine.summarise(engine_runs, torch_runs)
  np.testing.assert_allclose(s["round_ratios"], [2.5, 3.0, 4.0])
  assert s["steady_epoch_s"] == 1.0 and s["repeats"] == 3
  assert bench_engine.summarise(engine_runs)["round_ratios"] is None
  args = bench_engine.parse_args(["--epochs", "2", "--repeats", "3", "--synthetic"])
  machine = dict(description="m", matmul=dict(n=64, repeats=5, gflops=100.0))
  report = bench_engine.format_report(machine, bench_engine.summarise(torch_runs), [s], None,
                                      "cmd", "2026-01-01", args)
  (row,) = [l for l in report.splitlines() if l.startswith("| jaxact Engine")]
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[4] == "3" and cells[5] == "3 (2.5-4)"   # (2 / 1.0) / (1 / 1.5); per round


def test_engine_ab_paired_ratios():
  from benchmarks import engine_ab  # pylint: disable=g-import-not-at-top
  s = engine_ab.paired_summary([1.0, 2.0, 4.0, 1.0, 2.0], [0.9, 1.0, 4.4, 1.0, 1.6])
  assert s["pairs"] == 5 and s["base_median_s"] == 2.0 and s["new_median_s"] == 1.0
  # Ratios sorted: 0.5, 0.8, 0.9, 1.0, 1.1.
  np.testing.assert_allclose([s["ratio_q25"], s["ratio_median"], s["ratio_q75"]], [0.8, 0.9, 1.0])


def _git_checkout() -> bool:
  try:
    return subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=ROOT,
                          capture_output=True).returncode == 0
  except OSError:
    return False


@pytest.mark.skipif(not _git_checkout(), reason="needs a git checkout")
def test_engine_ab_runs_head_against_the_working_tree(capsys):
  from benchmarks import engine_ab  # pylint: disable=g-import-not-at-top
  assert engine_ab.main(["--base", "HEAD", "--n_train", "64", "--n_valid", "32",
                         "--epochs", "2"]) == 0
  out = capsys.readouterr().out
  assert "2 interleaved epochs" in out and "working tree / base" in out
  # HEAD's engine, imported as jaxact_base, is the same code: the same parameters.
  clean = not subprocess.run(["git", "status", "--porcelain", "jaxact"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
  if clean:
    assert "bitwise equal" in out
  with pytest.raises(SystemExit, match="cannot read revision"):
    engine_ab.main(["--base", "no-such-revision-xyz", "--epochs", "2"])


# ---------------------------------------------------------------------------
# PyTorch.


@pytest.fixture(scope="module")
def ref():
  pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  return torch_reference


def test_torch_reference_trains_and_reports(ref):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  a = common.synthetic_arrays(n_train=40, n_valid=16, n_test=8)
  data = ref.TorchTaskData.from_split(a, "multiclass")
  assert data.x_train.shape == (40, 1, 28, 28) and data.t_train.shape == (40, 10)
  r = ref.train_cell(Cell("multiclass", "softmax", "cce"), 0, data, max_epochs=2, patience=5)
  assert r.status == "hit_cap" and r.epochs_trained == 2 and len(r.model_epoch_s) == 2
  assert 0.0 <= r.best_valid <= 1.0 and 0.0 <= r.test <= 1.0 and r.best_epoch in (0, 1)
  # BCELoss on raw regression outputs: PyTorch raises, the reference reports it.
  data = ref.TorchTaskData.from_split(a, "regression")
  r = ref.train_cell(Cell("regression", "none", "bce", norm=True), 0, data, max_epochs=2)
  assert r.status == "invalid" and "between 0 and 1" in r.status_reason
  assert r.epochs_trained == 0 and math.isnan(r.best_valid)


def test_torch_measurement_structure(ref):
  del ref
  a = common.synthetic_arrays(n_train=40, n_valid=16, n_test=8)
  r = bench_engine.measure_torch(a, epochs=2, threads=1)
  assert r["kind"] == "torch" and len(r["epoch_s"]) == 2 and r["statuses"] == ["hit_cap"]
  assert r["tf32"] is False


def test_torch_reference_tf32_setting(ref):
  import torch  # pylint: disable=g-import-not-at-top
  before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
  try:
    ref.allow_tf32(True)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    ref.allow_tf32(False)     # the default of the benchmarks: full float32, as jaxact's
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
  finally:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# The same weights (a jaxact member's initialisation copied into the torch
# model), the same batch: the torch-convention losses of jaxact must equal
# PyTorch's loss classes, value and gradient, including where BCE saturates.
EQUIVALENCE_CASES = [
    (Cell("multiclass", "softmax", "cce"), None),
    (Cell("binary", "sigmoid", "cce"), None),
    (Cell("multilabel", "sigmoid", "bce"), None),
    (Cell("multilabel", "softmax", "cce"), None),          # multi-hot as class probabilities
    (Cell("probability", "softmax", "bce"), None),         # C = 1: p == 1, log(1 - p) clamped
    (Cell("multiclass", "softmax", "bce_logits"), None),
    (Cell("regression", "none", "rmse", norm=True), None),
    # Saturation: sigmoid(40) == 1 and sigmoid(-200) == 0 in float32, sigmoid(-40) ~ 4e-18.
    (Cell("multilabel", "sigmoid", "bce"), [40.0, -40.0, 200.0, -200.0]),
    (Cell("binary", "softmax", "bce"), [40.0, 0.0]),        # softmax rounds to (1, 0)
]


@pytest.mark.parametrize("cell,out_bias", EQUIVALENCE_CASES,
                         ids=[c.key + ("/saturated" if b else "") for c, b in EQUIVALENCE_CASES])
def test_jaxact_loss_and_gradients_equal_pytorch(ref, cell, out_bias):
  import torch  # pylint: disable=g-import-not-at-top
  task = tasks.get_task(cell.task)
  graphdef, state = nnx.split(model_lib.CNN(task.num_outputs, rngs=nnx.Rngs(params=jax.random.key(3))))
  params = jax.tree_util.tree_map(jnp.asarray, nnx.to_pure_dict(state))
  if out_bias is not None:
    params["out"]["bias"] = jnp.asarray(out_bias, jnp.float32)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (32, 28, 28, 1)).astype(np.float32)
  t = tasks.make_targets(cell.task, rng.integers(0, 10, 32))
  mean, std = float(t.mean()), float(t.std())

  fn = losses.get_loss(cell.head, cell.loss, "torch")
  tt = stacked.train_targets(cell, jnp.asarray(t), mean, std)

  def jax_loss(p):
    z = nnx.merge(graphdef, p)(jnp.asarray(x))
    return fn.finalize(jnp.mean(fn.per_example(z, tt)))

  loss_j, grads_j = jax.value_and_grad(jax_loss)(params)

  net = ref.build_model(task.num_outputs)
  ref.load_jaxact_params(net, jax.device_get(params))
  out = ref.apply_head(cell.head, net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())))
  loss_t = ref.make_loss(cell.loss)(out, ref.loss_target(cell, torch.from_numpy(t), mean, std))
  loss_t.backward()
  grads_t = ref.torch_grads_as_jaxact(net)

  assert float(loss_j) == pytest.approx(loss_t.item(), rel=1e-5, abs=1e-6)
  flat_j = jax.tree_util.tree_leaves_with_path(jax.device_get(grads_j))
  flat_t = dict(jax.tree_util.tree_leaves_with_path(grads_t))
  assert len(flat_j) == len(flat_t) == 10
  for path, gj in flat_j:
    gt = flat_t[path]
    assert np.all(np.isfinite(gj)), path
    scale = float(np.max(np.abs(gt)))
    np.testing.assert_allclose(gj, gt, rtol=0, atol=5e-5 * scale + 1e-12,
                               err_msg=jax.tree_util.keystr(path))


def test_full_table_bookkeeping(monkeypatch, tmp_path):
  """--full_table's accounting and report, with train_and_evaluate stubbed out (a real run is long)."""
  from jaxact.study import train  # pylint: disable=g-import-not-at-top

  def fake_train_and_evaluate(config, workdir, command=None, compile_ahead=False):
    del command
    assert compile_ahead
    members = train.plan(config)            # validates the RunConfig the benchmark builds
    assert config.engine.max_epochs == 7 and config.seeds == 2
    out = {}
    for task, ms in members.items():
      out[task] = [runner.MemberResult(cell=c, seed=s, best_valid=0.5, test=0.5, best_epoch=i % 3,
                                       epochs_trained=3 + i % 3, status="ok", status_reason=None,
                                       status_epoch=None, train_loss=[], valid_metric=[],
                                       n_infinite_valid=0, n_infinite_test=0)
                   for i, (c, s) in enumerate(ms)]
      os.makedirs(os.path.join(workdir, "results"), exist_ok=True)
      with open(os.path.join(workdir, "results", f"{task}.json"), "w") as f:
        json.dump({"wall_time_s": 1.5}, f)
    return out

  monkeypatch.setattr(train, "train_and_evaluate", fake_train_and_evaluate)
  args = bench_engine.parse_args(["--full_table", "--seeds", "2", "--max_epochs", "7",
                                  "--compile_ahead",
                                  "--full_table_workdir", str(tmp_path / "new")])
  f = bench_engine.measure_full_table(args)
  assert f["members"] == sum(v["members"] for v in f["per_task"].values()) > 0
  assert f["useful_model_epochs"] <= f["computed_model_epochs_upper"]
  assert f["compile_ahead"] and all(v["wall_s"] == 1.5 for v in f["per_task"].values())
  machine = dict(description="m", matmul=dict(n=64, repeats=5, gflops=100.0))
  report = bench_engine.format_report(machine, _fake_summary("torch", 1, 2.0), [], f, "cmd",
                                      "today", args)
  assert "Wall time to the full table" in report and "PyTorch reference would need" in report
