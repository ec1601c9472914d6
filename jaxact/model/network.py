"""The CNN of PROTOCOL section 2, in Flax NNX, and its initialisations.

| layer                                              | output (H x W x C) |
|----------------------------------------------------|--------------------|
| conv 3x3, 1 -> 32, padding 1 (same), ReLU          | 28 x 28 x 32       |
| max-pool 2x2 stride 2                              | 14 x 14 x 32       |
| conv 3x3, 32 -> 64, valid, ReLU                    | 12 x 12 x 64       |
| max-pool 2x2 stride 2                              | 6 x 6 x 64         |
| conv 3x3, 64 -> 64, valid, ReLU                    | 4 x 4 x 64         |
| flatten                                            | 1024               |
| dense 1024 -> 64, hidden activation (sigmoid)      | 64                 |
| dense 64 -> C (pre-activation logits z)            | C                  |

The model returns the pre-activation z; the head (final activation) belongs
to the cell and is applied by the loss and the metric (jaxact.model.losses).

The convolutions are written as im2col (the nine shifted 3x3 slices
concatenated along channels, then one matmul with the (3, 3, Cin, Cout)
kernel reshaped to (9 Cin, Cout)). It computes the same function as
`nnx.Conv` (tests check it against `lax.conv_general_dilated`) but avoids
XLA:CPU's 10-20x slowdown of convolution gradients inside `lax.scan`
(jax-ml/jax#12868, see BUILD_NOTES.md), and under `vmap` over members it
becomes one batched matmul. `CNN(..., conv="native")` computes the same network
with XLA's own convolution and a reduce-window max-pool (for accelerators;
see `CONV_IMPLS`).

conv1 + max-pool + ReLU has a hand-written backward pass (`conv_pool_relu`):
the gradient of each pooling window goes to its first maximum, as PyTorch's
max_pool2d routes it, and it is cheaper than XLA:CPU's autodiff of this block
(masks, pads and adds over the (B, 28, 28, 32) pre-pool map, then a transpose
for the kernel gradient); BUILD_NOTES.md, *Speed*, has the measurements.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

INITS = ("torch", "flax", "he", "xavier")
# How the convolutions are computed (ExecutionConfig.conv): "im2col" (the default, on every
# backend) or "native" (`lax.conv_general_dilated` and `lax.reduce_window` max-pooling, which
# XLA gives to cuDNN / the TPU's convolution units; under vmap over members, a grouped
# convolution). The same function and parameters; on a CPU "native" hits jax-ml/jax#12868.
CONV_IMPLS = ("im2col", "native")

HIDDEN_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,  # negative slope 0.01, as torch.nn.LeakyReLU
    "elu": jax.nn.elu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch.nn.GELU default
    "silu": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}


def initializers(init: str, fan_in: int):
  """(kernel_init, bias_init) for a layer with the given fan-in.

  - torch: PyTorch's default for Conv2d / Linear: weight AND bias drawn from
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)).
  - flax: Flax's default: lecun_normal weights, zero biases.
  - he: He (Kaiming) normal weights, variance 2 / fan_in, zero biases.
  - xavier: Glorot uniform weights, zero biases.
  """
  if init == "torch":
    bound = 1.0 / math.sqrt(fan_in)
    uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound)
    return uniform, uniform
  zeros = nnx.initializers.zeros_init()
  if init == "flax":
    return nnx.initializers.lecun_normal(), zeros
  if init == "he":
    return nnx.initializers.variance_scaling(2.0, "fan_in", "normal"), zeros
  if init == "xavier":
    return nnx.initializers.glorot_uniform(), zeros
  raise ValueError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")


class Conv3x3(nnx.Module):
  """3x3 convolution, stride 1, as im2col + matmul.

  Parameters match `nnx.Conv`: kernel (3, 3, Cin, Cout), bias (Cout,).
  Input (B, H, W, Cin) -> output (B, H', W', Cout), H' = H for padding
  "SAME", H - 2 for "VALID".
  """

  def __init__(self, in_features: int, out_features: int, padding: str, *,
               init: str, rngs: nnx.Rngs, impl: str = "im2col"):
    if padding not in ("SAME", "VALID"):
      raise ValueError(f"padding must be SAME or VALID, got {padding!r}")
    if impl not in CONV_IMPLS:
      raise ValueError(f"unknown convolution {impl!r}: choose one of {', '.join(CONV_IMPLS)}")
    kernel_init, bias_init = initializers(init, 9 * in_features)
    self.padding = padding
    self.impl = impl
    self.kernel = nnx.Param(kernel_init(rngs.params(), (3, 3, in_features, out_features)))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,)))

  def _padded(self, x: jax.Array) -> jax.Array:
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))) if self.padding == "SAME" else x

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.impl == "native":
      return conv_native(self._padded(x), self.kernel[...], self.bias[...])
    return conv_valid(self._padded(x), self.kernel[...], self.bias[...])

  def relu_pool(self, x: jax.Array, hand_backward: bool = True) -> jax.Array:
    """relu(max-pool 2x2 (self(x))): (B, H, W, Cin) -> (B, H'/2, W'/2, Cout); H', W' even.

    im2col: with the backward pass of `conv_pool_relu` (`hand_backward`), else
    autodiff of `max_pool_2x2`. native: `max_pool_window`, whose gradient also
    goes to each window's first maximum.
    """
    if self.impl == "native":
      return jax.nn.relu(max_pool_window(self(x)))
    if hand_backward:
      return conv_pool_relu(self._padded(x), self.kernel[...], self.bias[...])
    return jax.nn.relu(max_pool_2x2(self(x)))


def im2col(x: jax.Array, h: int, w: int, stride: int = 1) -> jax.Array:
  """The 3x3 patches of x (B, H, W, C) at h x w positions `stride` apart from
  the top left: (B, h, w, 9 C), taps in row-major order, channels fastest."""
  span = lambda n: stride * (n - 1) + 1
  return jnp.concatenate([x[:, i:i + span(h):stride, j:j + span(w):stride, :]
                          for i in range(3) for j in range(3)], axis=-1)


def conv_valid(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """VALID 3x3 convolution: x (B, H, W, Cin), kernel (3, 3, Cin, Cout) -> (B, H-2, W-2, Cout)."""
  patches = im2col(x, x.shape[1] - 2, x.shape[2] - 2)
  return patches @ kernel.reshape(-1, kernel.shape[-1]) + bias


def conv_native(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """`conv_valid` as XLA's own convolution: x (B, H, W, Cin) -> (B, H-2, W-2, Cout)."""
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias


def max_pool_window(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, as `lax.reduce_window` (B, H, W, C) -> (B, H/2, W/2, C).

  Its gradient (XLA's select-and-scatter) goes to the first maximum of each
  window in row-major order, as torch.nn.MaxPool2d routes it.
  """
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _window_patches(x: jax.Array) -> jax.Array:
  """x (B, H, W, C) -> (4, B, (H-2)/2, (W-2)/2, 9 C): the im2col patches of
  the VALID convolution's output positions, grouped by their place in the 2x2
  pooling window, in PyTorch's scan order (0, 0), (0, 1), (1, 0), (1, 1)."""
  h, w = (x.shape[1] - 2) // 2, (x.shape[2] - 2) // 2
  return jnp.stack([im2col(x[:, a:, b:], h, w, stride=2) for a in (0, 1) for b in (0, 1)])


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, on (B, H, W, C) with even H and W.

  The maximum of the four strided slices: on XLA:CPU, ReLU + this pool forward
  and backward take about 0.6 ms on conv1's (32, 28, 28, 32) output against 0.87
  ms for a reshape + reduce-max (`python -m benchmarks.cpu_layouts`). Ties
  split the gradient between the tied inputs.
  """
  return jnp.maximum(jnp.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]),
                     jnp.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2]))


@jax.custom_vjp
def conv_pool_relu(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """relu(max_pool_2x2(VALID 3x3 conv of x)), with a hand-written backward pass.

  Args:
    x: (B, H, W, Cin), already padded; H - 2 and W - 2 must be even.
    kernel: (3, 3, Cin, Cout); bias: (Cout,).

  Returns:
    (B, (H-2)/2, (W-2)/2, Cout).

  The forward value is `jax.nn.relu(max_pool_2x2(conv))`. The backward pass
  (taken under `jax.grad`) routes each pooling window's gradient to the FIRST
  of its maxima in PyTorch's scan order, as torch.nn.MaxPool2d does, and to
  none where the ReLU is off (max <= 0). Autodiff of the forward would split
  the gradient between tied maxima instead; ties happen where an image is
  flat (equal patches), where both rules give the same kernel gradient.

  Why by hand: the training pass computes the convolution at the four
  window positions as four stacked slabs (`_window_patches`), keeps which
  slab won as int8, and gets the kernel gradient as one matmul of those
  patches with the routed gradient. XLA's autodiff of the forward instead
  builds masks, four strided pads and their sum over the full pre-pool map
  and transposes it, which on a CPU costs more for conv1 (1 input channel, a
  (32, 28, 28, 32) pre-pool map per batch). For conv2 (32 input channels)
  the strided patches cost more than they save, so only conv1 uses it
  (`python -m benchmarks.cpu_layouts --sections=conv1` times both).
  """
  return jax.nn.relu(max_pool_2x2(conv_valid(x, kernel, bias)))


def _conv_pool_relu_fwd(x, kernel, bias):
  patches = _window_patches(x)                                   # (4, B, h, w, 9 Cin)
  z = patches @ kernel.reshape(-1, kernel.shape[-1]) + bias      # (4, B, h, w, Cout)
  m = jnp.maximum(jnp.maximum(z[0], z[1]), jnp.maximum(z[2], z[3]))
  first = jnp.where(z[0] == m, 0, jnp.where(z[1] == m, 1, jnp.where(z[2] == m, 2, 3)))
  routed = jnp.where(m > 0, first, 4).astype(jnp.int8)           # 4: the ReLU is off
  return jax.nn.relu(m), (patches, routed, kernel, x)


def _conv_pool_relu_bwd(res, g):
  patches, routed, kernel, x = res
  k2 = kernel.reshape(-1, kernel.shape[-1])
  slabs = jnp.arange(4, dtype=jnp.int8).reshape(4, 1, 1, 1, 1)
  gz = jnp.where(routed[None] == slabs, g[None], 0.0)            # dL/dz, (4, B, h, w, Cout)
  dk = patches.reshape(-1, k2.shape[0]).T @ gz.reshape(-1, k2.shape[1])
  db = jnp.sum(jnp.where(routed < 4, g, 0.0), axis=(0, 1, 2))
  # dL/dx: unused for conv1 (the input is data), where XLA drops it.
  dx = jax.vjp(_window_patches, x)[1](gz @ k2.T)[0]
  return dx, dk.reshape(kernel.shape), db


conv_pool_relu.defvjp(_conv_pool_relu_fwd, _conv_pool_relu_bwd)


HIDDEN_WIDTH = 64
FEATURES = 4 * 4 * 64


def activation_derivative(name: str, x: jax.Array) -> jax.Array:
  """The elementwise derivative of hidden activation `name` at x (same shape as x)."""
  fn = HIDDEN_ACTIVATIONS[name]
  return jax.jvp(fn, (x,), (jnp.ones_like(x),))[1]


def max_derivative(name: str) -> float:
  """sup_x f'(x) of hidden activation `name`, measured on a fine grid of [-20, 20].

  sigmoid 0.25; tanh, relu, leaky_relu, elu 1; gelu about 1.129, silu about
  1.100, mish about 1.088. The saturation diagnostic compares f' with it.
  """
  grid = jnp.linspace(-20.0, 20.0, 400_001, dtype=jnp.float32)
  return float(jnp.max(activation_derivative(name, grid)))


class CNN(nnx.Module):
  """PROTOCOL's network; returns the pre-activation outputs z of shape (B, C).

  The dense part can be deepened (`dense_layers` hidden layers of
  `hidden_width` units) and given batch norm (dense -> BatchNorm ->
  activation, PyTorch's momentum 0.1 and eps 1e-5) for the hidden-layer
  study. For stacking members of different depths in one program, the model
  can carry more layers than it uses (`max_dense_layers`); the spare layers
  are initialised from a key drawn after every used layer, so the used
  layers get the same values whatever `max_dense_layers` is.

  Args:
    num_outputs: C (regression 1, probability 1, binary 2, multiclass 10, multilabel 4).
    init: one of INITS (PyTorch's default by default).
    hidden_activation: activation of the dense hidden layer(s), one of
      HIDDEN_ACTIVATIONS (the original: sigmoid).
    dense_layers: number of dense hidden layers used (the original: 1).
    hidden_width: units per dense hidden layer (the original: 64).
    batch_norm: whether the dense hidden layers use batch norm.
    conv: how the convolutions are computed, one of CONV_IMPLS.
    max_dense_layers: dense hidden layers carried (default `dense_layers`).
    with_batch_norm: carry batch-norm layers even when `batch_norm` is off
      (default `batch_norm`); they are then unused.
    rngs: NNX rngs with a `params` stream.
  """

  def __init__(self, num_outputs: int, *, init: str = "torch",
               hidden_activation: str = "sigmoid", dense_layers: int = 1,
               hidden_width: int = HIDDEN_WIDTH, batch_norm: bool = False,
               max_dense_layers: int | None = None, with_batch_norm: bool | None = None,
               conv: str = "im2col", rngs: nnx.Rngs):
    if hidden_activation not in HIDDEN_ACTIVATIONS:
      raise ValueError(f"unknown hidden activation {hidden_activation!r}: choose one of "
                       f"{', '.join(HIDDEN_ACTIVATIONS)}")
    max_dense_layers = dense_layers if max_dense_layers is None else max_dense_layers
    if not 1 <= dense_layers <= max_dense_layers:
      raise ValueError(f"need 1 <= dense_layers ({dense_layers}) <= max_dense_layers "
                       f"({max_dense_layers})")
    with_batch_norm = batch_norm if with_batch_norm is None else with_batch_norm
    if batch_norm and not with_batch_norm:
      raise ValueError("batch_norm=True needs with_batch_norm=True")
    self.hidden_activation = hidden_activation
    self.dense_layers = dense_layers
    self.batch_norm = batch_norm
    self.conv1 = Conv3x3(1, 32, "SAME", init=init, rngs=rngs, impl=conv)
    self.conv2 = Conv3x3(32, 64, "VALID", init=init, rngs=rngs, impl=conv)
    self.conv3 = Conv3x3(64, 64, "VALID", init=init, rngs=rngs, impl=conv)
    widths = [FEATURES] + [hidden_width] * dense_layers
    used = [_dense(a, b, init, rngs) for a, b in zip(widths[:-1], widths[1:])]
    self.out = _dense(widths[-1], num_outputs, init, rngs)
    spare = []
    if max_dense_layers > dense_layers:
      spare_rngs = nnx.Rngs(params=rngs.params())
      spare = [_dense(hidden_width, hidden_width, init, spare_rngs)
               for _ in range(max_dense_layers - dense_layers)]
    self.hidden = nnx.List(used + spare)
    self.norms = nnx.List([
        nnx.BatchNorm(hidden_width, momentum=0.9, epsilon=1e-5, rngs=rngs)
        for _ in range(max_dense_layers)]) if with_batch_norm else None

  def trunk(self, x: jax.Array) -> jax.Array:
    """The convolutional part: x (B, 28, 28, 1) pixels in [-1, 1] -> features (B, 1024)."""
    # relu(max_pool(.)) is max_pool(relu(.)) (ReLU is monotone), on a quarter of the values.
    x = self.conv1.relu_pool(x)
    x = self.conv2.relu_pool(x, hand_backward=False)   # for conv2 it costs more than it saves
    x = jax.nn.relu(self.conv3(x))
    return x.reshape(x.shape[0], -1)

  def dense(self, features: jax.Array, *, activation: str | None = None,
            depth: int | None = None, batch_norm: bool | None = None, train: bool = False,
            mask: jax.Array | None = None) -> tuple[jax.Array, list[jax.Array]]:
    """The dense part: features (B, 1024) -> (z (B, C), pre-activations [(B, width)] * depth).

    Args:
      features: the trunk's output.
      activation, depth, batch_norm: override the model's own (used when
        members of one program differ in them).
      train: batch norm uses (and updates) the batch statistics; else the
        running averages.
      mask: (B,) bool, the real rows of a padded batch (batch statistics use
        only them).
    """
    act = HIDDEN_ACTIVATIONS[activation or self.hidden_activation]
    depth = self.dense_layers if depth is None else depth
    batch_norm = self.batch_norm if batch_norm is None else batch_norm
    x, pre = features, []
    # Without batch norm, layers 2..depth (all width x width) run as one `lax.scan`:
    # unrolled, a deep network's compile time grows faster than its depth
    # (benchmarks/results_cpu_2core_compile.md).
    unrolled = depth if batch_norm else 1
    for i in range(unrolled):
      h = self.hidden[i](x)
      if batch_norm:
        h = self.norms[i](h, use_running_average=not train,
                          mask=None if mask is None else jnp.broadcast_to(mask[:, None], h.shape))
      pre.append(h)
      x = act(h)
    if depth > unrolled:
      layers = self.hidden[unrolled:depth]
      kernels = jnp.stack([layer.kernel[...] for layer in layers])   # (depth - 1, width, width)
      biases = jnp.stack([layer.bias[...] for layer in layers])      # (depth - 1, width)

      def layer_step(x, kernel_bias):
        h = x @ kernel_bias[0] + kernel_bias[1]
        return act(h), h

      x, hs = jax.lax.scan(layer_step, x, (kernels, biases))
      pre += list(hs)
    return self.out(x), pre

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x: (B, 28, 28, 1) pixels in [-1, 1] -> z: (B, C)."""
    return self.dense(self.trunk(x), train=train)[0]


def _dense(fan_in: int, fan_out: int, init: str, rngs: nnx.Rngs) -> nnx.Linear:
  kernel_init, bias_init = initializers(init, fan_in)
  return nnx.Linear(fan_in, fan_out, kernel_init=kernel_init, bias_init=bias_init, rngs=rngs)


def count_params(params) -> int:
  """Number of scalars in a parameter pytree (unstacked)."""
  return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
