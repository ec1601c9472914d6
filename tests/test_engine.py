"""The vmapped engine: member independence, early stopping, statuses, one compilation."""

import dataclasses
import math
import re
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxact.engine import engine
from jaxact.model import losses
from jaxact.engine import program
from jaxact.model import cells as studies
from jaxact.data import tasks
from jaxact.model.cells import Cell
from jaxact.engine import stacked


def _synthetic(task, n_train=160, n_valid=64, n_test=80, seed=0):
  """Noisy images with a bright 7x7 block whose position encodes the digit: learnable fast."""
  rng = np.random.default_rng(seed)

  def make(n):
    y = rng.integers(0, 10, n)
    x = rng.uniform(-1, -0.8, (n, 28, 28, 1)).astype(np.float32)
    for i, d in enumerate(y):
      r, c = divmod(int(d), 4)
      x[i, 7 * r:7 * r + 7, 7 * c:7 * c + 7, 0] = 1.0
    return x, y

  (xtr, ytr), (xv, yv), (xte, yte) = make(n_train), make(n_valid), make(n_test)
  ttr = tasks.make_targets(task, ytr)
  return program.TaskData(
      jnp.asarray(xtr), jnp.asarray(ttr), jnp.asarray(xv),
      jnp.asarray(tasks.make_targets(task, yv)), jnp.asarray(xte),
      jnp.asarray(tasks.make_targets(task, yte)), float(ttr.mean()), float(ttr.std()))


CFG = program.EngineConfig(max_epochs=3, patience=2, batch_size=32)
VMAP = program.ExecutionConfig(member_mode="vmap")
LOOP = program.ExecutionConfig(member_mode="loop")


@pytest.fixture(scope="module")
def multiclass_grid():
  data = _synthetic("multiclass")
  cells = studies.select_cells("activation", "multiclass")["multiclass"]
  members = [(c, s) for c in cells for s in (0, 1, 2)]
  eng = engine.Engine("multiclass", members, CFG, progress=lambda _: None)
  return data, eng, eng.run(data)     # runner.Outcome


def _by(results, cell, seed):
  return next(r for r in results if r.cell == cell and r.seed == seed)


def test_member_k_equals_single_run_with_seed_k(multiclass_grid):
  data, eng, grid = multiclass_grid
  cell = studies.recommended_cell("multiclass")
  single = engine.Engine("multiclass", [(cell, 1)], CFG, progress=lambda _: None).run(data)
  (alone,) = single.members
  grid_member = _by(grid.members, cell, 1)
  chex.assert_trees_all_close(
      (alone.train_loss, alone.valid_metric, alone.test),
      (grid_member.train_loss, grid_member.valid_metric, grid_member.test),
      rtol=1e-5, atol=1e-6)
  assert alone.best_epoch == grid_member.best_epoch
  # Same for the parameters themselves.
  i = eng.members.index((cell, 1))
  chex.assert_trees_all_close(
      jax.tree_util.tree_map(lambda a: a[0], single.final_state["params"]),
      jax.tree_util.tree_map(lambda a: a[i], grid.final_state["params"]),
      rtol=1e-3, atol=1e-4)  # Adam's normalisation amplifies float rounding of batched matmuls


def test_one_compilation_per_task(multiclass_grid):
  _, eng, grid = multiclass_grid
  assert max(r.epochs_trained for r in grid.members) >= 2
  assert eng.traces == 1


def test_seeds_differ_and_cells_share_initialisation(multiclass_grid):
  _, eng, _ = multiclass_grid
  p = eng.init_state()["params"]
  kernels = p["out"]["kernel"]
  # Members 0..2 are seeds 0..2 of the first cell; member 3 is seed 0 of the second.
  assert not np.allclose(kernels[0], kernels[1])
  np.testing.assert_array_equal(kernels[0], kernels[3])


def test_grid_initialisation_equals_each_cells_own_bit_for_bit():
  """Members are initialised together across cells with the same initial network, in
  batches whose sizes are powers of two: each member's parameters equal those of its cell's
  engine alone."""
  base = studies.recommended_cell("multiclass")
  relu, sigmoid, tanh = (dataclasses.replace(base, hidden=h, init=i, depth=d) for h, i, d in
                         [("relu", "he", 2), ("sigmoid", "torch", 1), ("tanh", "he", 2)])
  seeds = (0, 4, 9)   # relu's and tanh's 6 members share one initialisation, in batches of 4 and 2
  grid = engine.Engine("multiclass", [(c, s) for c in (relu, sigmoid, tanh) for s in seeds],
                       CFG, progress=lambda _: None)
  p = grid.init_state()["params"]
  for c in (relu, tanh):           # alone, each has the grid's shapes (its deepest network)
    alone = engine.Engine("multiclass", [(c, s) for s in seeds], CFG,
                          progress=lambda _: None).init_state()["params"]
    for k, s in enumerate(seeds):
      i = grid.members.index((c, s))
      for a, b in zip(jax.tree_util.tree_leaves(alone), jax.tree_util.tree_leaves(p)):
        np.testing.assert_array_equal(a[k], b[i], err_msg=f"{c.key} seed {s}")


def test_results_are_finite_and_learn(multiclass_grid):
  results = multiclass_grid[2].members
  ref = [r for r in results if r.cell == studies.recommended_cell("multiclass")]
  for r in results:
    chex.assert_tree_all_finite((r.train_loss, r.valid_metric, r.best_valid, r.test))
    assert 0.0 <= r.best_valid <= 1.0 and 0.0 <= r.test <= 1.0
  # The digit is written in the pixels: the recommended cell beats chance (10%) clearly.
  assert min(r.best_valid for r in ref) > 0.3


def test_early_stopping_bookkeeping(multiclass_grid):
  for r in multiclass_grid[2].members:
    hist = np.asarray(r.valid_metric)
    assert len(hist) == r.epochs_trained == len(r.train_loss)
    # Strict improvement: the best epoch is the FIRST epoch reaching the maximum.
    assert r.best_epoch == int(np.argmax(hist))
    assert r.best_valid == pytest.approx(float(hist.max()))
    if r.status == "ok":
      assert r.epochs_trained - 1 - r.best_epoch == CFG.patience
    else:
      assert r.status == "hit_cap" and r.epochs_trained == CFG.max_epochs
      assert "epoch cap" in r.status_reason


def test_best_weights_give_the_best_valid_metric(multiclass_grid):
  data, eng, grid = multiclass_grid
  metric, _ = eng.test_fn(grid.final_state["best_params"], data.x_valid, data.t_valid,
                           data.target_mean, data.target_std)
  for i, r in enumerate(grid.members):
    assert float(metric[i]) == pytest.approx(r.best_valid, abs=1e-6)


def test_stopped_member_is_frozen():
  data = _synthetic("binary")
  cell = studies.recommended_cell("binary")
  short = engine.Engine("binary", [(cell, 0)], dataclasses.replace(CFG, patience=1, max_epochs=8),
                        progress=lambda _: None)
  (r,) = short.run(data).members
  assert r.status == "ok"
  # Patience 1: stops one epoch after its best; the engine ran no epoch for it afterwards.
  assert r.epochs_trained == r.best_epoch + 2


_GOOD = Cell("regression", "none", "mse", norm=True)
_BAD = Cell("regression", "none", "bce", norm=True)  # invalid in its first batch


@pytest.fixture(scope="module")
def regression_runs():
  """Data, the single run of `_GOOD` seed 0, and the engine and results of it with `_BAD` seed 0."""
  data = _synthetic("regression")
  (alone,) = engine.Engine("regression", [(_GOOD, 0)], CFG,
                           progress=lambda _: None).run(data).members
  both = engine.Engine("regression", [(_GOOD, 0), (_BAD, 0)], CFG, progress=lambda _: None)
  return data, alone, both, both.run(data)     # runner.Outcome


def test_invalid_member_is_reported_and_others_unaffected(regression_runs):
  _, alone, _, outcome = regression_runs
  res = outcome.members
  r_bad = _by(res, _BAD, 0)
  assert r_bad.status == "invalid" and r_bad.status_epoch == 0
  assert "[0, 1]" in r_bad.status_reason
  assert r_bad.epochs_trained == 0 and np.isnan(r_bad.best_valid)
  chex.assert_trees_all_close(_by(res, _GOOD, 0).train_loss, alone.train_loss, rtol=1e-5)


def test_nonfinite_member_is_frozen_and_others_unaffected(monkeypatch):
  data = _synthetic("binary")
  good = Cell("binary", "softmax", "cce")
  poisoned = Cell("binary", "relu", "mae")
  real_get_loss = losses.get_loss

  def get_loss(head, loss, convention="torch"):
    fn = real_get_loss(head, loss, convention)
    if (head, loss) == ("relu", "mae"):
      # Finite for the first few batches, then NaN: log of a negative number.
      return dataclasses.replace(
          fn, per_example=lambda z, t: jnp.log(jnp.mean(z, -1) * 0 + 1.0)
          + jnp.log(-jnp.ones(z.shape[0])))
    return fn

  monkeypatch.setattr(losses, "get_loss", get_loss)
  eng = engine.Engine("binary", [(good, 0), (poisoned, 0)], CFG, progress=lambda _: None)
  outcome = eng.run(data)
  res = outcome.members
  monkeypatch.setattr(losses, "get_loss", real_get_loss)
  alone = engine.Engine("binary", [(good, 0)], CFG, progress=lambda _: None).run(data).members
  r = _by(res, poisoned, 0)
  assert r.status == "nonfinite" and r.status_epoch == 0
  assert "non-finite" in r.status_reason
  chex.assert_tree_all_finite(outcome.final_state["params"])  # frozen at its last finite state
  chex.assert_trees_all_close(_by(res, good, 0).train_loss, alone[0].train_loss, rtol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("jit", [False, True])
def test_all_finite_per_member_flags_each_member(bad, jit):
  """The freezing check equals all(isfinite) member by member, wherever the bad value sits.

  Jitted too, with leaves of the real layers' sizes: XLA:CPU hands large reductions
  to a library whose max-reduction drops NaNs, so the check must not rest on one.
  """
  check = jax.jit(program.all_finite_per_member) if jit else program.all_finite_per_member
  rng = np.random.default_rng(0)
  big = np.float32(3.0e38)                       # finite, near float32's largest
  shapes = [(3, 1024, 64), (3, 7), (3, 3, 3, 32, 64)]
  for leaf, member, pos in [(0, 1, 0), (0, 2, 65535), (1, 2, 4), (2, 0, 9000), (2, 1, 18431)]:
    tree = [rng.normal(size=shp).astype(np.float32) for shp in shapes]
    tree[1][:] = big
    tree[leaf].reshape(3, -1)[member, pos] = bad
    got = np.asarray(check([jnp.asarray(a) for a in tree]))
    want = np.array([all(np.isfinite(a[m]).all() for a in tree) for m in range(3)])
    np.testing.assert_array_equal(got, want)
    assert not got[member] and got.sum() == 2


def test_sigmoid_method_predictions_and_infinities():
  cell = Cell("regression", "sigmoid", "mse", norm=False, sigmoid_method=True)
  t = jnp.asarray([[1.0], [6.0]])
  # Targets are squashed for the loss and recovered exactly by the inverse.
  st = stacked.train_targets(cell, t, 0.0, 1.0)
  np.testing.assert_allclose(st, jax.nn.sigmoid(t))
  z = jnp.asarray([[2.0], [100.0], [-200.0]])
  pred = stacked.predictions(cell, z, 0.0, 1.0)
  np.testing.assert_allclose(pred[0], 2.0, rtol=1e-5)
  assert pred[1, 0] == np.inf and pred[2, 0] == -np.inf
  norm = dataclasses.replace(cell, norm=True)
  np.testing.assert_allclose(stacked.predictions(norm, z[:1], 3.0, 2.0)[0], 2.0 * 2.0 + 3.0, rtol=1e-5)


def test_epoch_cap_is_reported():
  data = _synthetic("multiclass")
  cfg = dataclasses.replace(CFG, max_epochs=1, patience=5)
  (r,) = engine.Engine("multiclass", [(studies.recommended_cell("multiclass"), 0)], cfg,
                       progress=lambda _: None).run(data).members
  assert r.status == "hit_cap" and r.epochs_trained == 1 and r.status_epoch == 0


def test_chex_trace_budget():
  """The epoch function traces once across epochs (chex's own trace counter)."""
  data = _synthetic("probability", n_train=40, n_valid=20, n_test=20)
  eng = engine.Engine("probability", [(studies.recommended_cell("probability"), 0)],
                      dataclasses.replace(CFG, max_epochs=3, patience=5), progress=lambda _: None)
  eng.epoch_fn = jax.jit(chex.assert_max_traces(eng.epoch_program(), n=1), donate_argnums=(0,))
  (r,) = eng.run(data).members
  assert r.epochs_trained == 3


# -- compaction of finished members (ExecutionConfig.compact) ----------------


def _expected_compactions(results, cfg) -> int:
  """How many times the compaction rule fires, replayed from an uncompacted run."""
  trained = np.asarray([r.epochs_trained for r in results])
  size, count = len(results), 0
  for epoch in range(1, cfg.max_epochs):
    active = int(np.sum(trained > epoch))  # still training after `epoch` epochs
    if active and 2 * active <= size:
      size, count = active, count + 1
  return count


def _assert_same_results(ref, res):
  """Two runs of the same members: the same epochs and statuses, metrics to float rounding."""
  for a, b in zip(ref, res, strict=True):
    assert (a.cell, a.seed, a.best_epoch, a.epochs_trained, a.status, a.status_epoch) == (
        b.cell, b.seed, b.best_epoch, b.epochs_trained, b.status, b.status_epoch)
    chex.assert_trees_all_close((a.best_valid, a.test, a.train_loss, a.valid_metric),
                                (b.best_valid, b.test, b.train_loss, b.valid_metric),
                                rtol=1e-4, atol=1e-5)


def test_compaction_matches_the_uncompacted_run(monkeypatch):
  # The training loop starts no thread: every layout compiles on the caller's (the one
  # thread of a run compiles its test pass, `engine.compiling_in_background`).
  started = []
  start = threading.Thread.start
  monkeypatch.setattr(threading.Thread, "start",
                      lambda self: (started.append(self.name), start(self))[1])
  data = _synthetic("multiclass")
  cells = studies.select_cells("activation", "multiclass")["multiclass"]
  cells = [cells[0], cells[2]]  # softmax + cce stops early; sigmoid + cce seeds at 2, 5, 6 epochs
  members = [(c, s) for c in cells for s in (0, 1, 2)]
  cfg = dataclasses.replace(CFG, max_epochs=6, patience=1)
  runs = {}
  for compact in (False, True):
    lines = []
    eng = engine.Engine("multiclass", members, cfg, dataclasses.replace(VMAP, compact=compact),
                        progress=lines.append)
    runs[compact] = eng, eng.run(data), [re.sub(r"[\d.]+s;", "", l) for l in lines]
  (full, full_out, ref_lines), (compact, compact_out, lines) = runs[False], runs[True]
  ref, res = full_out.members, compact_out.members
  assert full.traces == 1
  n = _expected_compactions(ref, cfg)
  assert (full_out.compactions, compact_out.compactions) == (0, n)
  assert n >= 1, [r.epochs_trained for r in ref]  # the grid does exercise compaction
  assert compact.traces == 1 + n <= 1 + math.ceil(math.log2(len(members)))
  # jaxact names its threads; a library's own (a first use's, e.g. Thread-1) is not ours.
  assert [n for n in started if n.startswith("jaxact")] == [engine.TEST_COMPILE_THREAD] * 2
  assert compact.members == full.members
  _assert_same_results(ref, res)
  # The progress lines report every member, finished or not, in both runs.
  assert lines == ref_lines
  # The final state is full-size, in the original member order.
  for key in ("params", "best_params"):
    chex.assert_trees_all_close(full_out.final_state[key], compact_out.final_state[key],
                                rtol=1e-3, atol=1e-4)
  for key in ("best_epoch", "status", "status_epoch", "epochs_trained", "epoch"):
    np.testing.assert_array_equal(full_out.final_state[key], compact_out.final_state[key])


def test_compaction_down_to_one_member(regression_runs):
  data, alone, both, both_out = regression_runs
  members = [(_BAD, 0), (_BAD, 1), (_BAD, 2), (_GOOD, 0)]
  eng = engine.Engine("regression", members, CFG, dataclasses.replace(VMAP, compact=True),
                      progress=lambda _: None)
  outcome = eng.run(data)
  res = outcome.members
  # Three members are invalid in epoch 0: from epoch 1 on only the good one is computed,
  # and its cell's slice is the whole (1-member) layout.
  assert eng.traces == 2
  assert list(eng.layout_epoch_fns) == [((_GOOD, 0, 1),)]
  assert [(r.cell, r.seed) for r in res] == members
  for r in res[:3]:
    assert r.status == "invalid" and r.status_epoch == 0 and r.epochs_trained == 0
    assert np.isnan(r.best_valid) and r.train_loss == [] and r.valid_metric == []
  good = res[3]
  assert (good.best_epoch, good.epochs_trained, good.status) == (
      alone.best_epoch, alone.epochs_trained, alone.status)
  chex.assert_trees_all_close((good.train_loss, good.valid_metric, good.test),
                              (alone.train_loss, alone.valid_metric, alone.test),
                              rtol=1e-5, atol=1e-6)
  # Finished members kept their state in the full-size final state: best weights never
  # set (still the initial ones), parameters frozen where they went invalid.
  first3 = lambda tree: jax.tree_util.tree_map(lambda a: a[:3], tree)
  chex.assert_trees_all_equal(first3(outcome.final_state["best_params"]),
                              first3(eng.init_state()["params"]))
  chex.assert_trees_all_close(
      jax.tree_util.tree_map(lambda a: a[0], outcome.final_state["params"]),
      jax.tree_util.tree_map(lambda a: a[both.members.index((_BAD, 0))],
                             both_out.final_state["params"]), rtol=1e-3, atol=1e-4)
  assert int(outcome.final_state["epoch"]) == CFG.max_epochs


# -- member modes: "loop" (members one after another) and "vmap" ---------------


@pytest.fixture(scope="module")
def both_modes():
  """A grid with members that stop at different epochs, trained in both member modes."""
  data = _synthetic("multiclass")
  cells = studies.select_cells("activation", "multiclass")["multiclass"]
  members = [(c, s) for c in cells for s in (0, 1)]
  cfg = dataclasses.replace(CFG, max_epochs=6, patience=1)
  out = {}
  for mode in ("loop", "vmap"):
    eng = engine.Engine("multiclass", members, cfg, program.ExecutionConfig(member_mode=mode),
                        progress=lambda _: None)
    out[mode] = (eng, eng.run(data))
  return out


def test_loop_and_vmap_modes_agree(both_modes):
  (loop, loop_out), (vmap, vmap_out) = both_modes["loop"], both_modes["vmap"]
  loop_res, vmap_res = loop_out.members, vmap_out.members
  assert loop.member_mode == "loop" and vmap.member_mode == "vmap"
  assert loop.traces == vmap.traces == 1
  stopped = {r.epochs_trained for r in loop_res}
  assert len(stopped) > 1          # members stopped at different epochs: skipping is exercised
  # On a GPU the batched (vmap) and the unbatched (loop) matmuls are different kernels that
  # round differently, and training amplifies it: on an H100 one value differed by 1.7e-3
  # relative (BUILD_NOTES, GPU). The CPU tolerances are the tight ones CI checks.
  cpu = jax.default_backend() == "cpu"
  rtol, rtol_grad, rtol_params = (1e-4, 1e-3, 1e-3) if cpu else (1e-2, 1e-2, 2e-2)
  for a, b in zip(loop_res, vmap_res):
    assert (a.cell, a.seed, a.status, a.best_epoch, a.epochs_trained) == (
        b.cell, b.seed, b.status, b.best_epoch, b.epochs_trained)
    chex.assert_trees_all_close((a.train_loss, a.valid_metric, a.test),
                                (b.train_loss, b.valid_metric, b.test), rtol=rtol, atol=1e-5)
    chex.assert_trees_all_close(a.diagnostics["grad_norm"], b.diagnostics["grad_norm"],
                                rtol=rtol_grad, atol=1e-6)
  # A stopped member is frozen in both: the final parameters agree to rounding (Adam's
  # normalisation amplifies it in single entries, so compare each layer as a whole).
  for a, b in zip(jax.tree_util.tree_leaves(loop_out.final_state["params"]),
                  jax.tree_util.tree_leaves(vmap_out.final_state["params"])):
    a, b = np.asarray(a).reshape(len(a), -1), np.asarray(b).reshape(len(b), -1)
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    assert rel.max() < rtol_params, rel


def test_loop_mode_member_equals_single_run_exactly(both_modes):
  eng, outcome = both_modes["loop"]
  cell = studies.recommended_cell("multiclass")
  single = engine.Engine("multiclass", [(cell, 1)], eng.config, eng.execution,
                         progress=lambda _: None)
  (alone,) = single.run(_synthetic("multiclass")).members
  member = _by(outcome.members, cell, 1)
  # The same one-member program runs in both: no batched matmul to round differently.
  assert (alone.train_loss, alone.valid_metric, alone.test) == (
      member.train_loss, member.valid_metric, member.test)


def test_loop_mode_shares_one_branch_between_initialisations():
  """Cells that differ only in their initialisation run one compiled branch (their own
  initial weights), and each member still equals its cell trained alone."""
  deep = [Cell("multiclass", "softmax", "cce", init=i, hidden="tanh", depth=3)
          for i in ("torch", "he")]
  cfg = dataclasses.replace(CFG, max_epochs=2)
  eng = engine.Engine("multiclass", [(c, 0) for c in deep], cfg, LOOP, progress=lambda _: None)
  assert eng.branches == (program.branch_cell(deep[0]),)
  data = _synthetic("multiclass")
  results = eng.run(data).members
  (alone,) = engine.Engine("multiclass", [(deep[1], 0)], cfg, LOOP,
                           progress=lambda _: None).run(data).members
  member = _by(results, deep[1], 0)
  assert (alone.train_loss, alone.valid_metric, alone.test) == (
      member.train_loss, member.valid_metric, member.test)
  torch_init, he = _by(results, deep[0], 0), _by(results, deep[1], 0)
  assert he.train_loss != torch_init.train_loss      # the shared branch kept their weights apart


def test_member_mode_is_checked():
  cell = studies.recommended_cell("multiclass")
  with pytest.raises(ValueError, match="unknown member_mode 'fast'"):
    engine.Engine("multiclass", [(cell, 0)], CFG, program.ExecutionConfig(member_mode="fast"))
  eng = engine.Engine("multiclass", [(cell, 0)], CFG)
  assert eng.member_mode == ("loop" if jax.devices()[0].platform == "cpu" else "vmap")


@pytest.mark.parametrize("precision,expected", [
    ("float32", {"HIGHEST"}), ("tensorfloat32", {"HIGH"}), ("bfloat16", {"DEFAULT"})])
def test_matmul_precision_reaches_every_matmul(precision, expected):
  # Every dot of the compiled epoch and test pass (convolutions as im2col matmuls, dense
  # layers, both directions) carries the configured precision.
  data = _synthetic("multiclass", n_train=32, n_valid=32, n_test=32)
  cell = studies.recommended_cell("multiclass")
  for mode in ("loop", "vmap"):
    eng = engine.Engine("multiclass", [(cell, 0), (cell, 1)], CFG,
                        program.ExecutionConfig(matmul_precision=precision, member_mode=mode))
    state = eng.initial_state()
    epoch = eng.epoch_fn.lower(state, data).as_text()
    test = eng.test_fn.lower(state.params, data.x_test, data.t_test, data.target_mean,
                              data.target_std).as_text()
    for text in (epoch, test):
      found = re.findall(r"precision = \[(\w+), (\w+)\]", text)
      assert len(found) >= 5                         # 3 convolutions + 2 dense layers at least
      assert {p for pair in found for p in pair} == expected


def test_matmul_precision_is_checked():
  cell = studies.recommended_cell("multiclass")
  with pytest.raises(ValueError, match="unknown matmul_precision 'fp8'"):
    engine.Engine("multiclass", [(cell, 0)], CFG,
                  program.ExecutionConfig(matmul_precision="fp8"))


def test_run_compiles_the_test_pass_in_a_thread():
  """`Engine.run` compiles the test pass in a background thread, not after the last epoch on
  the calling thread; the results are those of the plain jitted test pass."""
  data = _synthetic("binary")
  members = [(studies.recommended_cell("binary"), 0)]
  cfg = dataclasses.replace(CFG, max_epochs=1)
  eng = engine.Engine("binary", members, cfg, progress=lambda _: None)
  threads = []

  def listener(event, duration, **kwargs):
    del duration
    if event == "/jax/core/compile/backend_compile_duration" and "test" in kwargs.get(
        "fun_name", ""):
      threads.append(threading.current_thread().name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    outcome = eng.run(data)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert threads and all(t == engine.TEST_COMPILE_THREAD for t in threads), threads
  state = outcome.final_state
  metric, _ = eng.test_fn(state["best_params"], data.x_test, data.t_test,
                          data.target_mean, data.target_std, state.get("best_stats") or None)
  assert float(metric[0]) == outcome.members[0].test


def test_compile_ahead_leaves_run_nothing_to_compile():
  """Compiled in another thread, the epoch and test programs are what `run` then uses."""
  data = _synthetic("binary")
  cell = studies.recommended_cell("binary")
  members = [(cell, 0), (cell, 1)]
  plain = engine.Engine("binary", members, CFG, progress=lambda _: None).run(data).members
  eng = engine.Engine("binary", members, CFG, progress=lambda _: None)
  thread = threading.Thread(target=eng.compile_ahead, args=(data,))
  thread.start()
  thread.join()
  assert eng.traces == 1
  compiled = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      compiled.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    ahead = eng.run(data).members
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiled == [] and eng.traces == 1
  assert max(r.epochs_trained for r in ahead) >= 2
  for a, b in zip(plain, ahead):
    assert (a.cell, a.seed, a.best_epoch, a.status) == (b.cell, b.seed, b.best_epoch, b.status)
    np.testing.assert_array_equal(a.valid_metric, b.valid_metric)
    np.testing.assert_array_equal(a.test, b.test)


def test_native_convolution_trains_like_im2col():
  # vmap over two members: the native convolution becomes a grouped convolution.
  data = _synthetic("multiclass")
  cell = studies.recommended_cell("multiclass")
  runs = {}
  for conv in ("im2col", "native"):
    cfg = dataclasses.replace(CFG, max_epochs=2, patience=5)
    runs[conv] = engine.Engine("multiclass", [(cell, 0), (cell, 1)], cfg,
                               dataclasses.replace(VMAP, conv=conv),
                               progress=lambda _: None).run(data).members
  for a, b in zip(runs["im2col"], runs["native"]):
    assert (a.seed, a.epochs_trained, a.status) == (b.seed, b.epochs_trained, b.status)
    np.testing.assert_allclose(b.train_loss, a.train_loss, rtol=1e-4)
    np.testing.assert_allclose(b.valid_metric, a.valid_metric, atol=1e-6)
    assert b.test == pytest.approx(a.test, abs=1e-6)
  with pytest.raises(ValueError, match="unknown conv 'fft'"):
    engine.Engine("multiclass", [(cell, 0)], CFG, program.ExecutionConfig(conv="fft"))
