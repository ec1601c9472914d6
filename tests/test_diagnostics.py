"""In-program diagnostics on hand-built cases, the failure classification, mixed-network programs."""

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxact import diagnostics
from jaxact import engine
from jaxact import model
from jaxact import studies
from jaxact.studies import Cell
from test_engine import _synthetic

CFG = engine.EngineConfig(max_epochs=2, patience=2, batch_size=32)
QUIET = dict(progress=lambda _: None)


def _valid_diagnostics(eng, data, edit):
  """The valid-set diagnostics of `eng`'s initial parameters after `edit(params)`."""
  state = eng.init_state()
  params = edit(state["params"])
  _, _, diag = eng._evaluate(params, state.get("stats", {}), data.x_valid, data.t_valid,
                             data.target_mean, data.target_std, diagnostics=True)
  return jax.tree_util.tree_map(np.asarray, diag)


def _set(params, path, fn):
  """params with the leaf at `path` (a tuple of keys) replaced by fn(leaf)."""
  out = jax.tree_util.tree_map(lambda a: a, params)
  node = out
  for k in path[:-1]:
    node = node[k]
  node[path[-1]] = fn(node[path[-1]])
  return out


@pytest.fixture(scope="module")
def data():
  return _synthetic("multiclass")


def test_saturated_sigmoid_layer(data):
  eng = engine.Engine("multiclass", [(studies.recommended_cell("multiclass"), 0)], CFG, **QUIET)
  # Pre-activations of +-10 on every example: sigmoid' = 4.5e-5, below 1% of its max 0.25.
  big = lambda p: _set(_set(p, ("hidden", 0, "kernel"), jnp.zeros_like),
                       ("hidden", 0, "bias"), lambda b: jnp.where(
                           jnp.arange(b.shape[-1]) % 2 == 0, 10.0, -10.0) + 0 * b)
  d = _valid_diagnostics(eng, data, big)
  assert d["saturated"][0, 0] == 1.0
  assert d["dead"][0, 0] == 0.0   # saturated, not dead: the derivative is tiny, not 0
  np.testing.assert_allclose(d["mean_abs_pre"][0, 0], 10.0, rtol=1e-6)
  # Far out the float32 derivative is exactly 0 (sigmoid(-1000) underflows to 0, and
  # sigmoid(h) rounds to 1 for h > ~17): no gradient passes at all, so the unit is dead.
  huge = lambda p: _set(_set(p, ("hidden", 0, "kernel"), jnp.zeros_like),
                        ("hidden", 0, "bias"), lambda b: jnp.full_like(b, -1000.0))
  d = _valid_diagnostics(eng, data, huge)
  assert d["saturated"][0, 0] == 1.0 and d["dead"][0, 0] == 1.0
  # Zero pre-activations: the derivative is at its maximum everywhere.
  zero = lambda p: _set(_set(p, ("hidden", 0, "kernel"), jnp.zeros_like),
                        ("hidden", 0, "bias"), jnp.zeros_like)
  d = _valid_diagnostics(eng, data, zero)
  assert d["saturated"][0, 0] == 0.0 and d["mean_abs_pre"][0, 0] == 0.0


def test_dead_relu_units(data):
  cell = Cell("multiclass", "softmax", "cce", hidden="relu")
  eng = engine.Engine("multiclass", [(cell, 0)], CFG, **QUIET)
  # 16 of 64 units get a bias of -1e4: negative on every input, so dead; the other 48
  # get +1e4: positive on every input, alive.
  kill = lambda p: _set(p, ("hidden", 0, "bias"),
                        lambda b: jnp.where(jnp.arange(b.shape[-1]) < 16, -1e4, 1e4) + 0 * b)
  d = _valid_diagnostics(eng, data, kill)
  assert d["dead"][0, 0] == pytest.approx(16 / 64)
  assert d["saturated"][0, 0] == pytest.approx(16 / 64)
  np.testing.assert_allclose(d["mean_abs_pre"][0, 0], 1e4, rtol=1e-3)


def test_constant_predictor_has_no_spread(data):
  eng = engine.Engine("multiclass", [(studies.recommended_cell("multiclass"), 0)], CFG, **QUIET)
  const = lambda p: _set(_set(p, ("out", "kernel"), jnp.zeros_like), ("out", "bias"),
                         lambda b: jnp.arange(10.0) + 0 * b)
  d = _valid_diagnostics(eng, data, const)
  assert d["spread"][0] < 1e-6   # 0 up to the rounding of chunk means
  assert d["argmax_minority"][0] == 0.0
  d = _valid_diagnostics(eng, data, lambda p: p)
  assert d["spread"][0] > 0.0


@pytest.mark.parametrize("head,loss", [("softmax", "cce"), ("sigmoid", "bce")])
def test_saturated_head(data, head, loss):
  eng = engine.Engine("multiclass", [(Cell("multiclass", head, loss), 0)], CFG, **QUIET)
  # A constant output far from the head's linear range: class 3 at +40, the others at -40.
  # softmax: the other classes get e^-80 (0 in float32); sigmoid: 1 - sigmoid(40) and
  # sigmoid(-40) are 4e-18: no Jacobian entry above 1e-6 on any example.
  far = lambda p: _set(_set(p, ("out", "kernel"), jnp.zeros_like), ("out", "bias"),
                       lambda b: jnp.where(jnp.arange(10) == 3, 40.0, -40.0) + 0 * b)
  assert _valid_diagnostics(eng, data, far)["head_saturated"][0] == 1.0
  # Logit gaps of 1 (still a constant output): within the linear range, nowhere saturated.
  near = lambda p: _set(_set(p, ("out", "kernel"), jnp.zeros_like), ("out", "bias"),
                        lambda b: jnp.arange(10.0) / 9 + 0 * b)
  assert _valid_diagnostics(eng, data, near)["head_saturated"][0] == 0.0
  assert _valid_diagnostics(eng, data, lambda p: p)["head_saturated"][0] == 0.0


def test_argmax_minority_is_nan_for_multilabel():
  data = _synthetic("multilabel")
  eng = engine.Engine("multilabel", [(studies.recommended_cell("multilabel"), 0)], CFG, **QUIET)
  d = _valid_diagnostics(eng, data, lambda p: p)
  assert math.isnan(d["argmax_minority"][0]) and d["spread"][0] > 0


def test_layer_norms_match_a_direct_computation():
  m = model.CNN(10, dense_layers=3, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(m, nnx.Param))
  stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a]), params)
  sq = np.asarray(engine._layer_sq_norms(stacked, 3))
  assert sq.shape == (2, len(engine.layer_names(3)))
  want = [float(jnp.sum(m.conv1.kernel[...] ** 2) + jnp.sum(m.conv1.bias[...] ** 2)),
          float(jnp.sum(m.hidden[2].kernel[...] ** 2) + jnp.sum(m.hidden[2].bias[...] ** 2)),
          float(jnp.sum(m.out.kernel[...] ** 2) + jnp.sum(m.out.bias[...] ** 2))]
  np.testing.assert_allclose(sq[0, [0, 5, 6]], want, rtol=1e-5)
  np.testing.assert_allclose(sq[1], 4 * sq[0], rtol=1e-5)


def test_softmax_over_one_output_has_exactly_zero_gradient():
  data = _synthetic("probability")
  cell = Cell("probability", "softmax", "bce")
  eng = engine.Engine("probability", [(cell, 0), (studies.recommended_cell("probability"), 0)],
                      CFG, **QUIET)
  results = eng.run(data)
  dead, alive = (next(r for r in results if r.cell == c) for c in (cell, eng.members[1][0]))
  assert all(g == 0.0 for epoch in dead.diagnostics["grad_norm"] for g in epoch)
  assert all(g > 0.0 for g in alive.diagnostics["grad_norm"][0])
  record = dict(cell=cell.to_dict(), **{k: getattr(dead, k) for k in (
      "status", "status_reason", "status_epoch", "best_valid", "test", "best_epoch",
      "train_loss", "valid_metric", "diagnostics")})
  assert diagnostics.classify(record, "probability", chance=0.5).kind == "no_gradient"


def test_grad_norm_first_is_the_gradient_at_initialisation(data):
  """Epoch 0's first-batch gradient norms equal jax.grad of the loss on that batch, by hand."""
  cell = studies.recommended_cell("multiclass")
  eng = engine.Engine("multiclass", [(cell, 3)], CFG, **QUIET)
  (r,) = eng.run(data)
  key = jax.random.split(jax.random.key(3))[1]
  perm = jax.random.permutation(jax.random.fold_in(key, 0), data.x_train.shape[0])[:32]
  m = model.CNN(10, rngs=nnx.Rngs(params=jax.random.split(jax.random.key(3))[0]))
  graphdef, params = nnx.split(m, nnx.Param)
  fn = eng.loss_fns[cell]

  def loss(p):
    z = nnx.merge(graphdef, p)(data.x_train[perm])
    return fn.finalize(jnp.mean(fn.per_example(z, data.t_train[perm])))

  grads = nnx.to_pure_dict(jax.grad(loss)(params))
  stacked = jax.tree_util.tree_map(lambda a: a[None], grads)
  want = np.sqrt(np.asarray(engine._layer_sq_norms(stacked, 1))[0])
  np.testing.assert_allclose(r.diagnostics["grad_norm_first"][0], want, rtol=2e-3)
  assert r.diagnostics["layers"] == ["conv1", "conv2", "conv3", "hidden1", "out"]


def test_mixed_network_member_equals_its_single_run(data):
  """Members with other activations, inits, batch norm and depths share one program
  without changing each other: each equals the program of its cell alone."""
  cells = [studies.recommended_cell("multiclass"),
           Cell("multiclass", "softmax", "cce", init="he", hidden="relu", depth=3),
           Cell("multiclass", "softmax", "cce", init="xavier", hidden="tanh", batch_norm=True),
           Cell("multiclass", "sigmoid", "bce", hidden="gelu", batch_norm=True, depth=2)]
  mixed = engine.Engine("multiclass", [(c, s) for c in cells for s in (0, 1)], CFG, **QUIET)
  assert mixed.max_depth == 3 and mixed.has_batch_norm
  results = mixed.run(data)
  assert mixed.traces == 1
  for cell in cells[1:]:
    alone = engine.Engine("multiclass", [(cell, 1)], CFG, **QUIET)
    (a,) = alone.run(data)
    b = next(r for r in results if r.cell == cell and r.seed == 1)
    if not cell.batch_norm:
      chex.assert_trees_all_close((a.train_loss, a.valid_metric, a.test),
                                  (b.train_loss, b.valid_metric, b.test), rtol=1e-4, atol=1e-5)
    else:
      # The dense bias before batch norm cannot change the output, so its gradient is
      # rounding noise, which Adam normalises into full-size steps: the runs agree to
      # rounding in the loss, and a couple of the 64 borderline valid predictions may flip.
      chex.assert_trees_all_close(a.train_loss, b.train_loss, rtol=1e-3)
      np.testing.assert_allclose(a.valid_metric, b.valid_metric, atol=2.5 / 64)
    chex.assert_trees_all_close(a.diagnostics["saturated"], b.diagnostics["saturated"],
                                atol=2.5 / 64)
    assert len(b.diagnostics["grad_norm"][0]) == 4 + cell.depth
    assert len(b.diagnostics["saturated"][0]) == cell.depth


def test_batch_norm_statistics_ignore_padded_rows():
  bn = nnx.BatchNorm(4, momentum=0.0, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)
  mask = jnp.array([True, True, True, True, False, False])
  m = model.CNN(10, batch_norm=True, rngs=nnx.Rngs(0))
  del m
  bn(x, mask=jnp.broadcast_to(mask[:, None], x.shape))
  np.testing.assert_allclose(bn.mean[...], x[:4].mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.var[...], x[:4].var(0), rtol=1e-4, atol=1e-6)


def test_deep_model_shapes_gradients_and_spare_layers():
  deep = model.CNN(10, hidden_activation="sigmoid", dense_layers=32, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(deep, nnx.Param)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 28, 28, 1)), jnp.float32)
  z, pre = deep.dense(deep.trunk(x))
  chex.assert_shape(z, (4, 10))
  assert len(pre) == 32 and all(p.shape == (4, 64) for p in pre)
  grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) ** 2))(params)
  chex.assert_tree_all_finite(grads)
  g = nnx.to_pure_dict(grads)
  first, last = (float(jnp.linalg.norm(g["hidden"][i]["kernel"])) for i in (0, 31))
  assert first < 1e-3 * last   # 32 sigmoid layers: the gradient vanishes towards the input
  # A model carrying spare layers computes the same function with the same used weights.
  carry = model.CNN(10, hidden_activation="sigmoid", dense_layers=2, max_dense_layers=5,
                    with_batch_norm=True, rngs=nnx.Rngs(0))
  plain = model.CNN(10, hidden_activation="sigmoid", dense_layers=2, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(carry(x), plain(x))
  assert len(carry.hidden) == 5


@pytest.mark.parametrize("name", sorted(model.HIDDEN_ACTIVATIONS))
def test_activation_derivative_matches_grad(name):
  x = jnp.linspace(-5.0, 5.0, 101)
  want = jax.vmap(jax.grad(model.HIDDEN_ACTIVATIONS[name]))(x)
  np.testing.assert_allclose(model.activation_derivative(name, x), want, rtol=1e-5, atol=1e-7)
  assert model.max_derivative(name) >= float(jnp.max(want)) - 1e-6


def test_max_derivative_closed_forms():
  assert model.max_derivative("sigmoid") == pytest.approx(0.25, abs=1e-6)
  assert model.max_derivative("tanh") == pytest.approx(1.0, abs=1e-6)
  assert model.max_derivative("relu") == 1.0


# -- the ceiling and chance level --------------------------------------------------------------


def test_multilabel_softmax_ceiling_closed_form():
  t = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
  # Best: one-hot on a positive (4/4, 3/4, -), all-zero (4/4), one-hot (1/4).
  assert diagnostics.multilabel_softmax_ceiling(t) == pytest.approx((1 + 0.75 + 1 + 0.25) / 4)


def test_multilabel_softmax_ceiling_equals_brute_force():
  t = np.random.default_rng(0).integers(0, 2, (50, 4))
  preds = [np.zeros(4)] + [np.eye(4)[j] for j in range(4)]
  brute = np.mean([max(np.mean(p == row) for p in preds) for row in t])
  assert diagnostics.multilabel_softmax_ceiling(t) == pytest.approx(brute)


def test_chance_levels():
  y = np.array([0, 1, 1, 1, 2])
  assert diagnostics.chance_level("multiclass", np.eye(10)[y]) == pytest.approx(0.6)
  assert diagnostics.chance_level("regression", np.array([[1.0], [3.0]])) == pytest.approx(1.0)
  assert diagnostics.chance_level("multilabel", np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
                                  ) == pytest.approx((0.75 + 0.75) / 2)


# -- the classification on synthetic member histories ------------------------------------------


def _record(cell=None, status="ok", best_valid=0.97, test=0.97, best_epoch=4, epochs=8,
            train_loss=None, **diag):
  cell = cell or studies.recommended_cell("multiclass")
  d = dict(layers=engine.layer_names(cell.depth),
           grad_norm=[[0.1] * (4 + cell.depth)] * epochs,
           grad_norm_first=[[0.01] * (3 + cell.depth) + [0.1]] * epochs,
           saturated=[[0.0] * cell.depth] * epochs, dead=[[0.0] * cell.depth] * epochs,
           spread=[0.8] * epochs, argmax_minority=[0.85] * epochs)
  d.update(diag)
  return dict(cell=cell.to_dict(), status=status, status_reason=None, status_epoch=None,
              best_valid=best_valid, test=test, best_epoch=best_epoch,
              train_loss=train_loss or [1.6] * epochs, valid_metric=[best_valid] * epochs,
              diagnostics=d)


def test_classify_healthy_with_loss_floor():
  dg = diagnostics.classify(_record(train_loss=[1.5, 1.47]), "multiclass", chance=0.1135)
  assert dg.kind == "healthy"
  assert "floor 1.4612" in dg.evidence and "97.00%" in dg.evidence


def test_classify_collapsed_with_start_epoch_and_saturation():
  rec = _record(cell=Cell("multiclass", "sigmoid", "bce"), best_valid=0.1135, best_epoch=3,
                spread=[0.5, 1e-5, 0.3, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6],
                argmax_minority=[0.8, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],
                saturated=[[1.0]] * 8)
  dg = diagnostics.classify(rec, "multiclass", chance=0.1135)
  assert dg.kind == "collapsed"
  assert "from epoch 4" in dg.evidence and "64/64 units of hidden layer 1 saturated" in dg.evidence


def test_classify_collapse_names_a_saturated_head():
  rec = _record(best_valid=0.1135, best_epoch=0, spread=[1e-9] * 8, argmax_minority=[0.0] * 8,
                head_saturated=[0.4] + [1.0] * 7)
  dg = diagnostics.classify(rec, "multiclass", chance=0.1135)
  assert dg.kind == "collapsed"
  assert ("the softmax head is saturated (no Jacobian entry above 1e-06) on 100.0% of valid "
          "examples from epoch 2 on, so almost no gradient passes it from the loss") in dg.evidence
  logits = dict(rec, cell=Cell("multiclass", "softmax", "cce", convention="logits").to_dict())
  text = diagnostics.classify(logits, "multiclass", chance=0.1135).evidence
  assert "saturated" in text and "no gradient passes" not in text
  # Below 99% at the last epoch (or not recorded, as in older results): not mentioned.
  for values in ([1.0] * 7 + [0.5], None):
    quiet = _record(best_valid=0.1135, best_epoch=0, spread=[1e-9] * 8,
                    argmax_minority=[0.0] * 8, head_saturated=values)
    assert "head" not in diagnostics.classify(quiet, "multiclass", chance=0.1135).evidence


def test_classify_vanishing_gradient_before_collapse():
  cell = Cell("multiclass", "softmax", "cce", depth=8)
  rec = _record(cell=cell, best_valid=0.11, grad_norm_first=[[1e-9] * 11 + [0.1]] * 8,
                spread=[1e-6] * 8, argmax_minority=[0.0] * 8)
  dg = diagnostics.classify(rec, "multiclass", chance=0.1135)
  assert dg.kind == "vanishing_gradient" and "1e-08" in dg.evidence


@pytest.mark.parametrize("status,kind", [("invalid", "invalid"), ("nonfinite", "nonfinite"),
                                         ("hit_cap", "hit_cap")])
def test_classify_statuses(status, kind):
  assert diagnostics.classify(_record(status=status), "multiclass", chance=0.1).kind == kind


def test_classify_ceiling_unbounded_and_no_learning():
  ml = _record(cell=Cell("multilabel", "softmax", "cce"), best_valid=0.78, test=0.77,
               argmax_minority=[None] * 8)
  dg = diagnostics.classify(ml, "multilabel", chance=0.6, ceiling=0.8019)
  assert dg.kind == "ceiling" and "80.19%" in dg.evidence
  reg = _record(cell=Cell("regression", "none", "bce_logits", norm=True), best_valid=18.0,
                test=18.0, train_loss=[0.5, -3.0, -40.0], argmax_minority=[None] * 8)
  assert diagnostics.classify(reg, "regression", chance=1.5).kind == "unbounded_loss"
  flat = _record(best_valid=0.12)
  assert diagnostics.classify(flat, "multiclass", chance=0.1135).kind == "no_learning"


def test_first_of_last_run():
  assert diagnostics._first_of_last_run([True, False, True, True]) == 2
  assert diagnostics._first_of_last_run([True, True]) == 0
  assert diagnostics._first_of_last_run([True, False]) is None


# -- the hidden study's grid and flags --------------------------------------------------------


def test_hidden_grid_and_network_choice():
  cells = studies.select_cells("hidden", None)["multiclass"]
  assert len(cells) == len(set(cells)) == 8 * 3 * 2 + 8 * 2 * (len(studies.DEPTHS) - 1)
  depth1 = studies.select_cells("hidden", None, network=studies.NetworkChoice(depth=(1,)))
  assert len(depth1["multiclass"]) == 48
  act = studies.select_cells("activation", "multiclass",
                             network=studies.NetworkChoice(init=("torch", "he")))["multiclass"]
  assert [c.init for c in act] == ["torch", "he"] * 3
  with pytest.raises(ValueError, match="no binary task"):
    studies.select_cells("hidden", "binary")
  with pytest.raises(ValueError, match="unknown --init"):
    studies.select_cells("activation", None, network=studies.NetworkChoice(init=("lecun",)))
  with pytest.raises(ValueError, match="--depth"):
    studies.select_cells("activation", None, network=studies.NetworkChoice(depth=(0,)))


def test_cell_keys_name_only_non_default_network_fields():
  assert Cell("binary", "sigmoid", "bce").key == "binary/sigmoid+bce"
  c = Cell("multiclass", "softmax", "cce", init="he", hidden="relu", batch_norm=True, depth=4)
  assert c.key == "multiclass/softmax+cce/init=he/hidden=relu/bn/depth=4"
  assert c.label == "softmax + cce (he init, relu hidden, batch norm, depth 4)"
  assert Cell.from_dict({"task": "binary", "head": "sigmoid", "loss": "bce", "norm": False,
                         "sigmoid_method": False, "convention": "torch"}) == Cell(
                             "binary", "sigmoid", "bce")


# -- the claims table on synthetic runs ---------------------------------------------------------


def _claim_members(test_accs, ratio=0.1, dead=0.0, depth=1):
  out = []
  for acc in test_accs:
    first = [0.01] * 3 + [ratio * 0.1] + [0.01] * (depth - 1) + [0.1]
    out.append(dict(test=acc, best_epoch=0, diagnostics=dict(
        layers=engine.layer_names(depth), grad_norm_first=[first], dead=[[dead] * depth])))
  return out


def test_claims_verdicts_on_synthetic_runs():
  from jaxact import claims
  mc = lambda **kw: Cell("multiclass", "softmax", "cce", **kw)
  groups = {
      mc(hidden="sigmoid", depth=1): _claim_members([0.97, 0.97], ratio=0.1),
      mc(hidden="sigmoid", depth=32): _claim_members([0.11, 0.11], ratio=1e-6, depth=32),
      mc(hidden="relu", depth=1): _claim_members([0.97, 0.97], ratio=0.5, dead=0.25),
      mc(hidden="relu", depth=32): _claim_members([0.95, 0.96], ratio=0.2, depth=32),
      mc(hidden="relu", init="he", batch_norm=True): _claim_members([0.985, 0.986]),
      mc(hidden="relu", init="he"): _claim_members([0.975, 0.976]),
      mc(hidden="relu", init="xavier"): _claim_members([0.974, 0.976]),
  }
  by_claim = {c.claim: c for c in claims.hidden_claims(groups)}
  vanish = by_claim["sigmoid hidden layers make the gradient vanish as depth grows"]
  assert vanish.verdict == "held" and "1e+05x smaller" in vanish.measurement
  assert by_claim["relu avoids the vanishing gradient as depth grows"].verdict == "held"
  assert by_claim["ReLU units can die (output 0 for every input)"].verdict == "held"
  assert by_claim["Batch norm helps"].verdict == "held"            # +1.0 point, std 0.05
  assert by_claim["He initialisation suits relu"].verdict == "no clear difference"
  table = "\n".join(claims.render(list(by_claim.values())))
  assert table.count("\n| ") == len(by_claim) + 1


def test_claims_are_measured_within_each_convention():
  # A logits-convention run gets the same claims as a torch one (not an empty table), and a
  # run with both never compares a torch cell with a logits one.
  from jaxact import claims
  def grid(convention, he_acc):
    mc = lambda **kw: Cell("multiclass", "softmax", "cce", convention=convention, **kw)
    return {mc(hidden="relu", init="he"): _claim_members(he_acc),
            mc(hidden="relu", init="xavier"): _claim_members([0.970, 0.971]),
            mc(hidden="relu", init="he", batch_norm=True): _claim_members([0.985, 0.986])}
  logits = {c.claim: c for c in claims.hidden_claims(grid("logits", [0.980, 0.981]))}
  assert logits["He initialisation suits relu"].verdict == "held"
  assert "he 98.05 ± 0.05% vs xavier 97.05 ± 0.05%" in logits["He initialisation suits relu"].measurement
  both = {c.claim: c for c in claims.hidden_claims(
      {**grid("torch", [0.50, 0.52]), **grid("logits", [0.980, 0.981])})}
  assert both["[torch] He initialisation suits relu"].verdict == "not held"
  assert both["[logits] He initialisation suits relu"].verdict == "held"
  assert "98.05" not in both["[torch] He initialisation suits relu"].measurement
