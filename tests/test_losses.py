"""Tests for jaxact.model.losses: heads, the two loss conventions, PyTorch semantics."""

import itertools
import math

import chex
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import optax
import pytest

from jaxact.model import losses

HEAD_NAMES = tuple(losses.HEADS)
ALL_CELLS = list(itertools.product(HEAD_NAMES, losses.LOSSES, losses.CONVENTIONS))
WIDTHS = (1, 2, 4, 10)


# Jitted helpers: one compilation per loss and shape is much cheaper than
# dispatching (and compiling) every primitive eagerly.


def _per_example(fn: losses.LossFn, z, t):
  return jax.jit(fn.per_example)(z, t)


def _value_and_grad(fn: losses.LossFn, z, t):
  """The engine's batch loss (mask all ones) and its gradient wrt z."""
  @jax.jit
  def run(z, t):
    return jax.value_and_grad(lambda z: fn.finalize(jnp.mean(fn.per_example(z, t))))(z)
  return run(z, t)


def _grad_per_example(fn: losses.LossFn, z, t):
  @jax.jit
  def run(z, t):
    return jax.grad(lambda z: jnp.sum(fn.per_example(z, t)))(z)
  return run(z, t)


def _stress_batch(num_classes: int, seed: int = 0):
  """A batch pairing every z row with every t row.

  z rows: random (scale 1 and 5) and saturated (|z| = 50 and 100: all +, all -,
  alternating, one large entry). t rows: one-hot (first / last class), 0-1 bits, all
  zeros, all ones, fractional.
  """
  rng = np.random.default_rng(seed)
  c = num_classes
  z_rows = [rng.normal(size=c), 5 * rng.normal(size=c)]
  for mag in (50.0, 100.0):
    z_rows += [np.full(c, mag), np.full(c, -mag), mag * np.where(np.arange(c) % 2, 1, -1),
               mag * np.eye(c)[0], -mag * np.eye(c)[c - 1]]
  t_rows = [np.eye(c)[0], np.eye(c)[c - 1], (np.arange(c) % 2).astype(float),
            np.zeros(c), np.ones(c), rng.uniform(size=c)]
  z = np.array([zr for zr in z_rows for _ in t_rows], np.float32)
  t = np.array([tr for _ in z_rows for tr in t_rows], np.float32)
  return jnp.asarray(z), jnp.asarray(t)


# -- every cell ---------------------------------------------------------------


def _cell_outputs(fn: losses.LossFn, z, t):
  """per_example, the engine's batch loss (mask all ones), its gradient wrt z, validity."""
  def batch_loss(z):
    per_example = fn.per_example(z, t)
    return fn.finalize(jnp.mean(per_example)), per_example
  (value, per_example), grad = jax.value_and_grad(batch_loss, has_aux=True)(z)
  valid = None if fn.valid_input is None else fn.valid_input(z)
  return per_example, value, grad, valid


@pytest.fixture(scope="module")
def stress_outputs():
  """{C: (z, {cell: outputs})}: every cell on the stress batch, one compilation per C."""
  @jax.jit
  def all_cells(z, t):
    return {cell: _cell_outputs(losses.get_loss(*cell), z, t) for cell in ALL_CELLS}
  out = {}
  for c in WIDTHS:
    z, t = _stress_batch(c)
    out[c] = (z, jax.device_get(all_cells(z, t)))
  return out


@pytest.mark.parametrize("head,loss,convention", ALL_CELLS)
def test_every_cell_shape_finite_values_and_gradients(stress_outputs, head, loss, convention):
  fn = losses.get_loss(head, loss, convention)
  for c in WIDTHS:
    z, results = stress_outputs[c]
    per_example, value, grad, valid = results[(head, loss, convention)]
    b = z.shape[0]
    chex.assert_shape(per_example, (b,))
    chex.assert_type(per_example, jnp.float32)
    chex.assert_shape(value, ())
    chex.assert_shape(grad, z.shape)
    chex.assert_tree_all_finite((per_example, value, grad))
    assert (valid is None) == (fn.valid_input is None)
    if valid is not None:
      chex.assert_shape(valid, (b,))


@pytest.mark.parametrize("head,loss,convention", [
    ("none", "bce", "torch"), ("softmax", "bce", "logits"), ("softmax", "cce", "torch"),
    ("sigmoid", "cce", "logits"), ("none", "rmse", "torch"),
])
def test_works_under_vmap_as_the_engine_uses_it(head, loss, convention):
  fn = losses.get_loss(head, loss, convention)
  z, t = _stress_batch(4)
  z3, t3 = jnp.stack([z, -z, 0.5 * z]), jnp.stack([t, t, t])
  got = jax.jit(jax.vmap(fn.per_example))(z3, t3)
  chex.assert_shape(got, (3, z.shape[0]))
  chex.assert_tree_all_finite(got)
  chex.assert_trees_all_close(got[0], _per_example(fn, z, t), rtol=1e-6, atol=1e-6)


def test_get_loss_is_cached_and_hashable():
  a = losses.get_loss("softmax", "cce")
  assert a is losses.get_loss("softmax", "cce", "torch")
  assert hash(a) == hash(losses.get_loss("softmax", "cce"))
  assert a is not losses.get_loss("softmax", "cce", "logits")


@pytest.mark.parametrize("kwargs,word", [
    (dict(head="tanh", loss="cce"), "softmax"),
    (dict(head="none", loss="hinge"), "bce_logits"),
    (dict(head="none", loss="mse", convention="jax"), "logits"),
])
def test_unknown_names_raise_with_choices(kwargs, word):
  with pytest.raises(ValueError, match=word):
    losses.get_loss(**kwargs)


def test_apply_head_unknown_raises():
  with pytest.raises(ValueError, match="sigmoid"):
    losses.apply_head("gelu", jnp.zeros((1, 2)))


def test_constants():
  assert losses.LOSSES == ("cce", "bce", "bce_logits", "mse", "mae", "rmse")
  assert losses.CONVENTIONS == ("torch", "logits")
  assert set(losses.HEADS) == {"none", "relu", "sigmoid", "softmax"}


# -- heads ----------------------------------------------------------------------


def test_heads_by_hand():
  z = jnp.array([[-2.0, 0.0, 3.0]])
  e = np.exp([-2.0, 0.0, 3.0])
  chex.assert_trees_all_equal(losses.apply_head("none", z), z)
  chex.assert_trees_all_close(losses.apply_head("relu", z), jnp.array([[0.0, 0.0, 3.0]]))
  chex.assert_trees_all_close(losses.apply_head("sigmoid", z),
                              jnp.asarray([e / (1 + e)], jnp.float32), rtol=1e-6)
  chex.assert_trees_all_close(losses.apply_head("softmax", z),
                              jnp.asarray([e / e.sum()], jnp.float32), rtol=1e-6)
  # Softmax is over the last axis, for any leading shape.
  z3 = jnp.arange(24.0).reshape(2, 3, 4) / 7
  chex.assert_trees_all_close(jnp.sum(losses.apply_head("softmax", z3), -1),
                              jnp.ones((2, 3)), rtol=1e-6)


@pytest.mark.parametrize("head", list(losses.HEADS))
@pytest.mark.parametrize("c", [1, 2, 10])
def test_head_jacobian_max_equals_the_autodiff_jacobian(head, c):
  z = jax.random.normal(jax.random.key(c), (6, c)) * 3.0
  z = z.at[0].set(-1.0)                         # relu: every output negative, a dead head
  jac = jax.vmap(jax.jacobian(lambda v: losses.apply_head(head, v)))(z)   # (6, C, C)
  want = jnp.max(jnp.abs(jac), axis=(1, 2))
  got = losses.head_jacobian_max(head, z)
  chex.assert_shape(got, (6,))
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)


def test_head_jacobian_max_by_hand():
  # softmax of (0, log 3): p = (1/4, 3/4), largest entry p(1 - p) = 3/16; a saturated
  # softmax (logit gap 40: p = 1 - 4e-18 in exact arithmetic) passes nothing.
  z = jnp.array([[0.0, math.log(3.0)], [40.0, 0.0]])
  chex.assert_trees_all_close(losses.head_jacobian_max("softmax", z),
                              jnp.array([3 / 16, 0.0]), atol=1e-7)
  chex.assert_trees_all_close(losses.head_jacobian_max("sigmoid", jnp.zeros((1, 3))),
                              jnp.array([0.25]))
  chex.assert_trees_all_equal(losses.head_jacobian_max("relu", jnp.array([[-1.0, 0.0]])),
                              jnp.array([0.0]))
  chex.assert_trees_all_equal(losses.head_jacobian_max("none", jnp.zeros((2, 4))),
                              jnp.ones((2,)))


@pytest.mark.parametrize("convention", losses.CONVENTIONS)
@pytest.mark.parametrize("loss", losses.LOSSES)
def test_single_output_softmax_is_one_and_passes_no_gradient(loss, convention):
  z = jnp.array([[-100.0], [-3.0], [0.0], [0.7], [50.0], [100.0]])
  chex.assert_trees_all_equal(losses.apply_head("softmax", z), jnp.ones_like(z))
  fn = losses.get_loss("softmax", loss, convention)
  for t in (jnp.zeros_like(z), jnp.ones_like(z), jnp.full_like(z, 0.3)):
    value, grad = _value_and_grad(fn, z, t)
    chex.assert_tree_all_finite(value)
    chex.assert_trees_all_equal(grad, jnp.zeros_like(z))


# -- cce --------------------------------------------------------------------------


def test_cce_on_known_logits_by_hand():
  z = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
  t = jnp.array([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # one-hot; multi-hot (unnormalised)
  lse0 = math.log(math.exp(1) + math.exp(2) + math.exp(3))
  lse1 = math.log(math.exp(0.5) + math.exp(-1) + math.exp(0))
  want = jnp.array([lse0 - 3.0, (lse1 + 1.0) + (lse1 - 0.0)])
  for conv in losses.CONVENTIONS:
    got = _per_example(losses.get_loss("none", "cce", conv), z, t)
    chex.assert_trees_all_close(got, want, rtol=1e-6)
  # With a relu head the logits are relu(z) = [[1, 2, 3], [0.5, 0, 0]].
  lse1r = math.log(math.exp(0.5) + 2.0)
  got = _per_example(losses.get_loss("relu", "cce"), z, t)
  chex.assert_trees_all_close(got, jnp.array([lse0 - 3.0, 2 * lse1r]), rtol=1e-6)


@pytest.mark.parametrize("c", (2, 4, 10))
def test_double_softmax_floor_is_reached_by_confident_predictions(c):
  floor = math.log(math.e + c - 1) - 1
  assert losses.double_softmax_floor(c) == pytest.approx(floor, rel=1e-12)
  fn = losses.get_loss("softmax", "cce", "torch")
  t = jnp.eye(c)[:1]
  values = [float(_per_example(fn, margin * t, t)[0]) for margin in (1.0, 3.0, 10.0, 30.0)]
  assert all(a > b for a, b in zip(values, values[1:]))  # decreasing to the floor
  assert values[-1] == pytest.approx(floor, abs=1e-6)
  assert values[0] > floor + 0.05
  # The logits convention has no floor: a confident prediction's loss goes to 0.
  logits_fn = losses.get_loss("softmax", "cce", "logits")
  assert float(_per_example(logits_fn, 30.0 * t, t)[0]) < 1e-6


@pytest.mark.parametrize("c", (2, 4, 10))
def test_double_softmax_never_below_floor_many_seeds(c):
  fn = jax.jit(losses.get_loss("softmax", "cce", "torch").per_example)
  rng = np.random.default_rng(c)
  n = 4096
  z = rng.normal(size=(n, c)) * rng.choice([0.1, 1.0, 10.0, 100.0], size=(n, 1))
  t = np.eye(c)[rng.integers(0, c, size=n)]
  values = fn(jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32))
  assert float(jnp.min(values)) >= losses.double_softmax_floor(c) - 1e-6


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(
    z=st.lists(st.floats(-60.0, 60.0, width=32), min_size=4, max_size=4),
    label=st.integers(0, 3))
def test_double_softmax_never_below_floor_hypothesis(z, label):
  fn = losses.get_loss("softmax", "cce", "torch")
  t = jnp.eye(4)[label][None]
  value = float(_per_example(fn, jnp.asarray([z], jnp.float32), t)[0])
  assert value >= losses.double_softmax_floor(4) - 1e-6


def test_sigmoid_cce_conventions_by_hand():
  z = jnp.array([[2.0, -1.0, 0.5]])
  t = jnp.array([[1.0, 0.0, 1.0]])
  s = 1 / (1 + np.exp(-np.array([2.0, -1.0, 0.5])))
  # torch: softmax cross-entropy of the sigmoid outputs (a double squashing).
  lse = math.log(np.exp(s).sum())
  want_torch = (lse - s[0]) + (lse - s[2])
  got = _per_example(losses.get_loss("sigmoid", "cce", "torch"), z, t)
  chex.assert_trees_all_close(got, jnp.array([want_torch]), rtol=1e-6)
  # logits: -sum_c t_c log sigmoid(z_c); the non-target output gets no gradient.
  fn = losses.get_loss("sigmoid", "cce", "logits")
  want_logits = -(math.log(s[0]) + math.log(s[2]))
  chex.assert_trees_all_close(_per_example(fn, z, t), jnp.array([want_logits]), rtol=1e-6)
  grad = _grad_per_example(fn, z, t)
  chex.assert_trees_all_close(grad, jnp.asarray([[s[0] - 1, 0.0, s[2] - 1]], jnp.float32),
                              rtol=1e-6)


# -- bce --------------------------------------------------------------------------


def test_bce_by_hand():
  p = jnp.array([[0.2, 0.9], [0.5, 0.7]])
  t = jnp.array([[0.0, 1.0], [1.0, 0.25]])
  want = jnp.array([
      -(math.log(0.8) + math.log(0.9)) / 2,
      -(math.log(0.5) + 0.25 * math.log(0.7) + 0.75 * math.log(0.3)) / 2,
  ])
  for conv in losses.CONVENTIONS:
    got = _per_example(losses.get_loss("none", "bce", conv), p, t)
    chex.assert_trees_all_close(got, want, rtol=1e-6)


@pytest.mark.parametrize("c", (1, 3))
def test_bce_at_exactly_zero_and_one_matches_pytorch(c):
  t_vals = np.array([0.0, 0.3, 1.0], np.float32)
  p = np.repeat(np.array([0.0, 1.0], np.float32), 3)[:, None].repeat(c, 1)   # (6, C)
  t = np.tile(t_vals, 2)[:, None].repeat(c, 1)
  b = p.shape[0]
  fn = losses.get_loss("none", "bce", "torch")
  per_example = _per_example(fn, jnp.asarray(p), jnp.asarray(t))
  want = np.where(p[:, 0] == 0.0, 100.0 * t[:, 0], 100.0 * (1.0 - t[:, 0]))
  chex.assert_trees_all_close(per_example, jnp.asarray(want), rtol=1e-6)
  # PyTorch's backward of mean BCELoss over B*C elements: (p - t) / max(p (1 - p), 1e-12) / (B C).
  _, grad = _value_and_grad(fn, jnp.asarray(p), jnp.asarray(t))
  want_grad = (p - t) / np.maximum(p * (1 - p), 1e-12) / (b * c)
  chex.assert_tree_all_finite(grad)
  chex.assert_trees_all_close(grad, jnp.asarray(want_grad, jnp.float32), rtol=1e-6)
  assert float(jnp.max(jnp.abs(grad))) == pytest.approx(1e12 / (b * c), rel=1e-6)
  assert fn.valid_input(jnp.asarray(p)).all()


def test_bce_gradient_is_pytorch_formula_inside():
  rng = np.random.default_rng(0)
  p = rng.uniform(0.05, 0.95, size=(5, 3)).astype(np.float32)
  t = rng.uniform(size=(5, 3)).astype(np.float32)
  grad = jax.grad(lambda p: jnp.sum(losses.binary_cross_entropy(p, t)))(jnp.asarray(p))
  chex.assert_trees_all_close(grad, jnp.asarray((p - t) / (p * (1 - p))), rtol=1e-5)


def test_bce_check_grads_x64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(1)
    p = jnp.asarray(rng.uniform(0.05, 0.95, size=(4, 3)))
    t = jnp.asarray(rng.uniform(size=(4, 3)))
    assert p.dtype == jnp.float64
    jtu.check_grads(lambda p: losses.binary_cross_entropy(p, t), (p,), order=1,
                    modes=("rev",), eps=1e-4)
    jtu.check_grads(lambda t: losses.binary_cross_entropy(p, t), (t,), order=1,
                    modes=("rev",), eps=1e-4)
    fn = losses.get_loss("none", "bce", "torch")
    jtu.check_grads(lambda p: _per_example(fn, p, t), (p,), order=1, modes=("rev",), eps=1e-4)


def test_bce_validity():
  z = jnp.array([[-0.1], [0.5], [1.2], [1.0], [0.0], [-3.0], [jnp.nan]])
  none_fn = losses.get_loss("none", "bce", "torch")
  relu_fn = losses.get_loss("relu", "bce", "torch")
  chex.assert_trees_all_equal(none_fn.valid_input(z),
                              jnp.array([False, True, False, True, True, False, False]))
  chex.assert_trees_all_equal(relu_fn.valid_input(z),
                              jnp.array([True, True, False, True, True, True, False]))
  z2 = jnp.array([[0.2, 0.7], [0.2, 1.5]])
  chex.assert_trees_all_equal(none_fn.valid_input(z2), jnp.array([True, False]))
  for fn in (none_fn, relu_fn, losses.get_loss("none", "bce", "logits")):
    assert "between 0 and 1" in fn.invalid_reason
  # Outside [0, 1] the value is still finite (computed on the clipped input).
  chex.assert_tree_all_finite(_per_example(none_fn, jnp.array([[-0.1], [1.2]]), jnp.ones((2, 1))))
  for head in ("sigmoid", "softmax"):
    for loss in ("bce", "bce_logits"):
      for conv in losses.CONVENTIONS:
        fn = losses.get_loss(head, loss, conv)
        assert fn.valid_input is None and fn.invalid_reason is None
  for head, loss, conv in ALL_CELLS:
    fn = losses.get_loss(head, loss, conv)
    assert (fn.valid_input is None) == (fn.invalid_reason is None)
    assert (fn.valid_input is not None) == (loss == "bce" and head in ("none", "relu"))


def test_torch_sigmoid_bce_saturation_exact_values():
  fn = losses.get_loss("sigmoid", "bce", "torch")
  # float32 sigmoid(z) rounds to exactly 1 for z >~ 16.6: log(1 - p) hits the -100 clamp.
  z = jnp.array([[17.0], [50.0], [100.0]])
  chex.assert_trees_all_equal(_per_example(fn, z, jnp.zeros_like(z)), jnp.full((3,), 100.0))
  chex.assert_trees_all_equal(_grad_per_example(fn, z, jnp.zeros_like(z)), jnp.zeros_like(z))
  # The logits convention keeps the exact value and a unit gradient.
  logits_fn = losses.get_loss("sigmoid", "bce", "logits")
  chex.assert_trees_all_close(_per_example(logits_fn, z, jnp.zeros_like(z)), z[:, 0], rtol=1e-6)
  chex.assert_trees_all_close(_grad_per_example(logits_fn, z, jnp.zeros_like(z)),
                              jnp.ones_like(z), rtol=1e-6)
  # t = 1, confidently wrong: below p = 1e-12 (z < -27.6) PyTorch's backward divides by 1e-12
  # instead of p (1 - p), so the gradient p (p - 1) / 1e-12 vanishes instead of tending to -1.
  z = jnp.array([[-20.0], [-30.0], [-40.0], [-110.0]])
  t1 = jnp.ones_like(z)
  p = 1 / (1 + np.exp(-np.asarray(z, np.float64)))
  want_grad = (p - 1) * p * (1 - p) / np.maximum(p * (1 - p), 1e-12)
  chex.assert_trees_all_close(_grad_per_example(fn, z, t1), jnp.asarray(want_grad, jnp.float32),
                              rtol=1e-4, atol=1e-30)
  assert float(_grad_per_example(fn, z, t1)[2, 0]) > -1e-5
  chex.assert_trees_all_close(_grad_per_example(logits_fn, z, t1), -jnp.ones_like(z), rtol=1e-6)
  # Values: -log p until p underflows to exactly 0 (z = -110), then the -100 clamp.
  chex.assert_trees_all_close(_per_example(fn, z, t1), jnp.array([20.0, 30.0, 40.0, 100.0]),
                              rtol=1e-5)
  chex.assert_trees_all_close(_per_example(logits_fn, z, t1), jnp.array([20.0, 30.0, 40.0, 110.0]),
                              rtol=1e-5)


def test_bce_logits_torch_by_hand():
  z = jnp.array([[0.3, -1.2]])
  t = jnp.array([[1.0, 0.0]])
  want = (math.log1p(math.exp(-0.3)) + math.log1p(math.exp(-1.2))) / 2
  got = _per_example(losses.get_loss("none", "bce_logits"), z, t)
  chex.assert_trees_all_close(got, jnp.array([want]), rtol=1e-6)
  # After a softmax head: BCE on sigmoid(softmax(z)).
  p = np.exp([0.3, -1.2]) / np.exp([0.3, -1.2]).sum()
  q = 1 / (1 + np.exp(-p))
  want = -(math.log(q[0]) + math.log(1 - q[1])) / 2
  got = _per_example(losses.get_loss("softmax", "bce_logits", "torch"), z, t)
  chex.assert_trees_all_close(got, jnp.array([want], jnp.float32), rtol=1e-6)


# -- regression losses -----------------------------------------------------------


def test_mse_mae_rmse_by_hand():
  out = jnp.array([[1.0, -2.0], [0.5, 0.5]])
  t = jnp.array([[0.0, 1.0], [0.5, 1.5]])
  for conv in losses.CONVENTIONS:
    mse = losses.get_loss("none", "mse", conv)
    mae = losses.get_loss("none", "mae", conv)
    rmse = losses.get_loss("none", "rmse", conv)
    chex.assert_trees_all_close(_per_example(mse, out, t), jnp.array([5.0, 0.5]))
    chex.assert_trees_all_close(_per_example(mae, out, t), jnp.array([2.0, 0.5]))
    chex.assert_trees_all_close(_per_example(rmse, out, t), jnp.array([5.0, 0.5]))
    assert mse.finalize(jnp.float32(2.75)) == 2.75
    chex.assert_trees_all_close(rmse.finalize(jnp.float32(0.0)), jnp.float32(1e-4), rtol=1e-6)
    chex.assert_trees_all_close(rmse.finalize(jnp.float32(2.75)),
                                jnp.float32(math.sqrt(2.75 + 1e-8)), rtol=1e-6)
  # relu / sigmoid heads: the error of the head's output.
  z = jnp.array([[-1.0, 0.0]])
  chex.assert_trees_all_close(_per_example(losses.get_loss("relu", "mse"), z, jnp.ones_like(z)),
                              jnp.array([1.0]))
  chex.assert_trees_all_close(
      _per_example(losses.get_loss("sigmoid", "mae"), z, jnp.ones_like(z)),
      jnp.array([((1 - 1 / (1 + math.e)) + 0.5) / 2]), rtol=1e-6)


def test_masked_engine_mean_is_mean_over_elements():
  rng = np.random.default_rng(3)
  p = jnp.asarray(rng.uniform(0.1, 0.9, size=(6, 4)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 2, size=(6, 4)), jnp.float32)
  m = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
  fn = losses.get_loss("none", "bce")
  got = jnp.sum(_per_example(fn, p, t) * m) / jnp.sum(m)
  elem = -(t * jnp.log(p) + (1 - t) * jnp.log(1 - p))
  chex.assert_trees_all_close(got, jnp.mean(elem[:4]), rtol=1e-6)


# -- the logits convention ------------------------------------------------------


def test_logits_softmax_cce_is_optax():
  rng = np.random.default_rng(4)
  for c in WIDTHS:
    z = jnp.asarray(rng.normal(size=(8, c)) * 10, jnp.float32)
    t = jnp.asarray(np.eye(c)[rng.integers(0, c, size=8)], jnp.float32)
    got = _per_example(losses.get_loss("softmax", "cce", "logits"), z, t)
    chex.assert_trees_all_equal(got, optax.softmax_cross_entropy(z, t))


@pytest.mark.parametrize("loss", ("bce", "bce_logits"))
def test_logits_sigmoid_bce_matches_torch_where_not_saturated(loss):
  rng = np.random.default_rng(5)
  z = jnp.asarray(rng.uniform(-5, 5, size=(16, 4)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 2, size=(16, 4)), jnp.float32)
  got = _per_example(losses.get_loss("sigmoid", loss, "logits"), z, t)
  torch_bce = _per_example(losses.get_loss("sigmoid", "bce", "torch"), z, t)
  chex.assert_trees_all_close(got, torch_bce, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(
      got, jnp.mean(optax.sigmoid_binary_cross_entropy(z, t), -1), rtol=1e-6)


@pytest.mark.parametrize("loss", ("bce", "bce_logits"))
@pytest.mark.parametrize("c", (2, 4, 10))
def test_logits_softmax_bce_matches_torch_for_moderate_z(loss, c):
  rng = np.random.default_rng(c)
  z = jnp.asarray(rng.uniform(-4, 4, size=(16, c)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 2, size=(16, c)), jnp.float32)
  got = _per_example(losses.get_loss("softmax", loss, "logits"), z, t)
  torch_bce = _per_example(losses.get_loss("softmax", "bce", "torch"), z, t)
  chex.assert_trees_all_close(got, torch_bce, rtol=1e-5, atol=1e-5)
  # By hand in float64.
  zz = np.asarray(z, np.float64)
  p = np.exp(zz - zz.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  tt = np.asarray(t, np.float64)
  want = -np.mean(tt * np.log(p) + (1 - tt) * np.log(1 - p), -1)
  chex.assert_trees_all_close(got, jnp.asarray(want, jnp.float32), rtol=1e-5)


def test_logits_softmax_bce_finite_where_torch_saturates():
  z = jnp.array([[40.0, 0.0], [100.0, -100.0], [0.0, 60.0]])
  t = jnp.array([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
  torch_fn = losses.get_loss("softmax", "bce", "torch")
  logits_fn = losses.get_loss("softmax", "bce", "logits")
  # torch: p rounds to [1, 0]; log(1 - p_0) = log 0 -> -100 (clamped), log p_1 clamped too.
  chex.assert_trees_all_close(_per_example(torch_fn, z, t), jnp.array([70.0, 100.0, 30.0]),
                              rtol=1e-5)
  # logits: the exact values: log(1 - p_0) = -40 + log1p(e^-40), log p_1 = -40 - ...
  chex.assert_trees_all_close(_per_example(logits_fn, z, t), jnp.array([40.0, 200.0, 30.0]),
                              rtol=1e-5)
  grad = _grad_per_example(logits_fn, z, t)
  chex.assert_tree_all_finite(grad)
  chex.assert_trees_all_close(grad[:2], jnp.array([[1.0, -1.0], [1.0, -1.0]]), rtol=1e-5)
  chex.assert_tree_all_finite(_grad_per_example(torch_fn, z, t))


@pytest.mark.parametrize("head,loss", [
    ("softmax", "cce"), ("sigmoid", "cce"), ("softmax", "bce"), ("sigmoid", "bce"),
    ("softmax", "bce_logits"), ("sigmoid", "bce_logits"), ("none", "cce"),
    ("none", "bce_logits"), ("relu", "cce"),
])
def test_logits_convention_check_grads_x64(head, loss):
  with jax.enable_x64(True):
    rng = np.random.default_rng(6)
    z = jnp.asarray(rng.uniform(-3, 3, size=(3, 4)) + 0.05)  # away from relu's kink
    t = jnp.asarray(rng.integers(0, 2, size=(3, 4)).astype(np.float64))
    fn = losses.get_loss(head, loss, "logits")
    jtu.check_grads(lambda z: _per_example(fn, z, t), (z,), order=1, modes=("fwd", "rev"),
                    eps=1e-4)


@pytest.mark.parametrize("head,loss", [
    (h, l) for h in HEAD_NAMES for l in losses.LOSSES
    if (h, l) not in {("softmax", "cce"), ("sigmoid", "cce"), ("softmax", "bce"),
                      ("sigmoid", "bce"), ("softmax", "bce_logits"),
                      ("sigmoid", "bce_logits")}
])
def test_logits_convention_equals_torch_elsewhere(head, loss):
  z, t = _stress_batch(4, seed=7)
  a = losses.get_loss(head, loss, "torch")
  b = losses.get_loss(head, loss, "logits")
  chex.assert_trees_all_equal(_per_example(a, z, t), _per_example(b, z, t))
  assert a.finalize is b.finalize
  assert a.invalid_reason == b.invalid_reason
