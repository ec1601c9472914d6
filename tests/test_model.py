"""The network of PROTOCOL section 2: shapes, parameter count, im2col conv, initialisations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxact.model import network as model


def _params(m):
  return nnx.split(m)[1]


def test_parameter_count_matches_protocol():
  # PROTOCOL section 2: 121,994 parameters at C = 10.
  assert model.count_params(_params(model.CNN(10, rngs=nnx.Rngs(0)))) == 121_994


@pytest.mark.parametrize("c", [1, 2, 4, 10])
def test_output_shape(c):
  m = model.CNN(c, rngs=nnx.Rngs(0))
  z = m(jnp.zeros((3, 28, 28, 1)))
  chex.assert_shape(z, (3, c))
  chex.assert_tree_all_finite(z)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_im2col_conv_equals_lax_conv(padding):
  conv = model.Conv3x3(5, 7, padding, init="torch", rngs=nnx.Rngs(1))
  x = jax.random.normal(jax.random.key(2), (2, 9, 11, 5))
  ref = jax.lax.conv_general_dilated(
      x, conv.kernel[...], (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST) + conv.bias[...]
  got = conv(x)
  chex.assert_shape(got, ref.shape)
  chex.assert_trees_all_close(got, ref, atol=1e-5, rtol=1e-5)


def test_max_pool():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_array_equal(model.max_pool_2x2(x)[0, :, :, 0], [[5, 7], [13, 15]])


def test_torch_init_bounds_weights_and_biases():
  m = model.CNN(10, init="torch", rngs=nnx.Rngs(0))
  for layer, fan_in in [(m.conv1, 9), (m.conv2, 9 * 32), (m.conv3, 9 * 64),
                        (m.hidden[0], 1024), (m.out, 64)]:
    bound = 1 / np.sqrt(fan_in)
    for p in (layer.kernel[...], layer.bias[...]):
      assert float(jnp.max(jnp.abs(p))) <= bound
      # Uniform on [-b, b]: the spread fills most of the interval, biases are not zero.
      assert float(jnp.max(jnp.abs(p))) > 0.5 * bound


@pytest.mark.parametrize("init", ["flax", "he", "xavier"])
def test_other_inits_have_zero_biases(init):
  m = model.CNN(10, init=init, rngs=nnx.Rngs(0))
  assert float(jnp.abs(m.out.bias[...]).max()) == 0.0
  assert float(jnp.abs(m.conv2.kernel[...]).std()) > 0.0


def test_he_init_variance():
  m = model.CNN(10, init="he", rngs=nnx.Rngs(0))
  w = np.asarray(m.hidden[0].kernel[...])
  # variance_scaling(2, fan_in, truncated normal): variance 2 / fan_in.
  np.testing.assert_allclose(w.var(), 2 / 1024, rtol=0.1)


def test_unknown_init_and_activation_are_refused():
  with pytest.raises(ValueError, match="unknown init"):
    model.CNN(10, init="nope", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unknown hidden activation"):
    model.CNN(10, hidden_activation="nope", rngs=nnx.Rngs(0))


def test_deep_dense_stack_shapes_and_gradients():
  m = model.CNN(10, hidden_activation="tanh", dense_layers=4, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(m)

  def loss(p):
    return jnp.sum(nnx.merge(graphdef, p)(jnp.ones((2, 28, 28, 1))) ** 2)

  grads = jax.grad(loss)(params)
  chex.assert_tree_all_finite(grads)
  assert len(m.hidden) == 4
  chex.assert_shape(m.hidden[3].kernel[...], (64, 64))


@pytest.mark.parametrize("depth,max_depth", [(2, 2), (5, 5), (3, 6)])
def test_scanned_deep_layers_equal_the_layer_by_layer_network(depth, max_depth):
  """Layers 2..depth run as one lax.scan; the value and gradients are the unrolled network's."""
  m = model.CNN(10, hidden_activation="tanh", dense_layers=depth, max_dense_layers=max_depth,
                rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(m)
  feats = jax.random.normal(jax.random.key(1), (8, model.FEATURES))

  def layer_by_layer(mm, f):
    x, pre = f, []
    for i in range(depth):
      pre.append(mm.hidden[i](x))
      x = jnp.tanh(pre[-1])
    return mm.out(x), pre

  def loss(p, dense):
    z, pre = dense(nnx.merge(graphdef, p), feats)
    return jnp.sum(z ** 2) + sum(jnp.sum(jnp.sin(h)) for h in pre)

  scanned = jax.jit(lambda p: nnx.merge(graphdef, p).dense(feats))(params)
  reference = jax.jit(lambda p: layer_by_layer(nnx.merge(graphdef, p), feats))(params)
  assert len(scanned[1]) == depth
  chex.assert_trees_all_close(scanned, reference, rtol=1e-6, atol=1e-7)
  grads = jax.jit(jax.grad(lambda p: loss(p, lambda mm, f: mm.dense(f))))(params)
  reference_grads = jax.jit(jax.grad(lambda p: loss(p, layer_by_layer)))(params)
  chex.assert_trees_all_close(grads, reference_grads, rtol=1e-5, atol=1e-7)
  spare = [g.kernel[...] for g in nnx.merge(graphdef, grads).hidden[depth:]]
  assert all(not np.any(k) for k in spare)     # layers beyond the depth get no gradient


def _conv_pool_relu_autodiff(x, kernel, bias):
  return jax.nn.relu(model.max_pool_2x2(model.conv_valid(x, kernel, bias)))


def _block_args(cin, size, seed=0, bias_scale=0.1):
  kx, kk, kb, kg = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(kx, (2, size, size, cin))
  kernel = jax.random.normal(kk, (3, 3, cin, 6)) / (3 * np.sqrt(cin))
  bias = bias_scale * jax.random.normal(kb, (6,)) - 1.0   # the max of 4 is ~1: about half pass
  g = jax.random.normal(kg, (2, (size - 2) // 2, (size - 2) // 2, 6))
  return x, kernel, bias, g


@pytest.mark.parametrize("cin,size", [(1, 30), (5, 14)])
def test_conv_pool_relu_forward_and_gradients_equal_autodiff(cin, size):
  # Random inputs have no tied maxima: both backward passes compute the same gradient.
  x, kernel, bias, g = _block_args(cin, size)
  got, got_vjp = jax.vjp(model.conv_pool_relu, x, kernel, bias)
  want, want_vjp = jax.vjp(_conv_pool_relu_autodiff, x, kernel, bias)
  chex.assert_trees_all_close(got, want, atol=1e-6)
  assert 0.2 < float(jnp.mean(want > 0)) < 0.9        # both ReLU branches are exercised
  chex.assert_trees_all_close(got_vjp(g), want_vjp(g), atol=2e-5, rtol=2e-5)
  jax.test_util.check_grads(model.conv_pool_relu, (x, kernel, bias), order=1, modes=["rev"],
                            atol=2e-2, rtol=2e-2)


def test_conv_pool_relu_routes_tied_maxima_to_the_first_like_torch():
  # A zero kernel and a positive bias tie all four values of every window. PyTorch's
  # max-pool sends a window's gradient to its first maximum, the top-left one here.
  x, kernel, _, g = _block_args(3, 10)
  kernel, bias = jnp.zeros_like(kernel), jnp.full((6,), 0.5)
  dx, dk, db = jax.vjp(model.conv_pool_relu, x, kernel, bias)[1](g)
  dz = jnp.zeros((2, 8, 8, 6)).at[:, 0::2, 0::2, :].set(g)
  want = jax.vjp(model.conv_valid, x, kernel, bias)[1](dz)
  chex.assert_trees_all_close((dx, dk, db), want, atol=1e-5, rtol=1e-5)
  # Autodiff of the forward splits it between the tied values instead.
  split = jax.vjp(_conv_pool_relu_autodiff, x, kernel, bias)[1](g)
  assert float(jnp.max(jnp.abs(split[1] - dk))) > 1e-2
  # Where the ReLU is off (every window's maximum <= 0) no gradient passes.
  off = jax.vjp(model.conv_pool_relu, x, kernel, -bias)[1](g)
  for leaf in off:
    np.testing.assert_array_equal(leaf, 0.0)


def test_conv_pool_relu_matches_torch_max_pool_gradient():
  torch = pytest.importorskip("torch")
  x, kernel, bias, g = _block_args(1, 30, seed=3)
  x = jnp.where(x < 0.0, -1.0, x)            # a flat background, as in MNIST: tied maxima
  dx, dk, db = jax.vjp(model.conv_pool_relu, x, kernel, bias)[1](g)
  tx = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2), requires_grad=True)
  tk = torch.tensor(np.asarray(kernel).transpose(3, 2, 0, 1), requires_grad=True)
  tb = torch.tensor(np.asarray(bias), requires_grad=True)
  y = torch.relu(torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(tx, tk, tb), 2))
  y.backward(torch.tensor(np.asarray(g).transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(dk, tk.grad.numpy().transpose(2, 3, 1, 0), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(db, tb.grad.numpy(), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5, rtol=1e-4)


def test_trunk_uses_the_fused_first_block():
  m = model.CNN(10, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1), minval=-1, maxval=1)
  h = m.conv1.relu_pool(x)
  chex.assert_shape(h, (3, 14, 14, 32))
  chex.assert_trees_all_close(h, jax.nn.relu(model.max_pool_2x2(m.conv1(x))), atol=1e-6)


def test_native_convolution_computes_the_same_network():
  x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1), minval=-1, maxval=1)
  a = model.CNN(10, rngs=nnx.Rngs(0))
  b = model.CNN(10, conv="native", rngs=nnx.Rngs(0))
  chex.assert_trees_all_equal(nnx.state(a, nnx.Param), nnx.state(b, nnx.Param))
  chex.assert_trees_all_close(a(x), b(x), atol=1e-5)
  loss = lambda m: jnp.sum(jnp.sin(m(x)))
  chex.assert_trees_all_close(nnx.grad(loss)(a), nnx.grad(loss)(b), atol=1e-5, rtol=1e-4)
  with pytest.raises(ValueError, match="unknown convolution 'fft'"):
    model.CNN(10, conv="fft", rngs=nnx.Rngs(0))


def _native_block(x, kernel, bias):
  return jax.nn.relu(model.max_pool_window(model.conv_native(x, kernel, bias)))


@pytest.mark.parametrize("case", ["random", "tied", "flat_background"])
def test_native_pool_routes_gradients_like_conv_pool_relu(case):
  # conv_pool_relu's backward is checked against autodiff and against PyTorch above;
  # reduce-window's gradient must route the same way, tied maxima included.
  x, kernel, bias, g = _block_args(3, 10, seed=4)
  if case == "tied":
    kernel, bias = jnp.zeros_like(kernel), jnp.full((6,), 0.5)
  if case == "flat_background":
    x = jnp.where(x < 0.0, -1.0, x)
  got, got_vjp = jax.vjp(_native_block, x, kernel, bias)
  want, want_vjp = jax.vjp(model.conv_pool_relu, x, kernel, bias)
  chex.assert_trees_all_close(got, want, atol=1e-5)
  chex.assert_trees_all_close(got_vjp(g), want_vjp(g), atol=1e-4, rtol=1e-4)
