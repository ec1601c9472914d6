"""The network of PROTOCOL section 2: shapes, parameter count, im2col conv, initialisations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxact import model


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
