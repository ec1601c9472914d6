r"""Final activations ("heads") and losses, in two conventions (PROTOCOL 5-6).

The network's last dense layer produces pre-activation outputs ``z`` of shape
``(B, C)``; a *head* maps them to the outputs ``out = head(z)``; a *loss*
compares them with dense float targets ``t`` of shape ``(B, C)`` (one-hot for
binary / multiclass, bits for multilabel, the value for regression /
probability with ``C = 1``; see :mod:`jaxact.data.tasks`).

Heads (:data:`HEADS`, :func:`apply_head`): ``none`` (identity), ``relu``,
``sigmoid``, ``softmax`` (over the last axis; with ``C = 1`` it is the
constant 1 and passes no gradient).

Losses (:data:`LOSSES`): ``cce``, ``bce``, ``bce_logits``, ``mse``, ``mae``,
``rmse``. The engine obtains a :class:`LossFn` from :func:`get_loss` and, per
batch with a 0/1 padding mask ``m``, computes::

  batch_loss = finalize(sum(per_example(z, t) * m) / sum(m))

which equals PyTorch's ``reduction='mean'`` loss of the original code.

The "torch" convention (the original's)
---------------------------------------

Every loss receives ``out = apply_head(head, z)``, exactly as PyTorch's loss
classes received the model's output:

==========  ======================  ==================================================
loss        PyTorch class           per example (the engine then means over the batch)
==========  ======================  ==================================================
cce         nn.CrossEntropyLoss     :math:`-\sum_c t_c \log\mathrm{softmax}(out)_c`
bce         nn.BCELoss              :math:`\frac1C\sum_c -[t_c \max(\log out_c, -100)
                                    + (1 - t_c)\max(\log(1 - out_c), -100)]`
bce_logits  nn.BCEWithLogitsLoss    :math:`\frac1C\sum_c -[t_c \log\sigma(out_c)
                                    + (1 - t_c)\log\sigma(-out_c)]`
mse         nn.MSELoss              :math:`\frac1C\sum_c (out_c - t_c)^2`
mae         nn.L1Loss               :math:`\frac1C\sum_c |out_c - t_c|`
rmse        sqrt(MSELoss + 1e-8)    as mse, with ``finalize(x) = sqrt(x + 1e-8)``
==========  ======================  ==================================================

So after a softmax (or sigmoid) head, ``cce`` is a double softmax whose value
cannot fall below :func:`double_softmax_floor` ``(C) = log(e + C - 1) - 1``;
``bce`` refuses outputs outside [0, 1] (``valid_input`` flags them and the
engine marks the member invalid) and saturates where float32 probabilities
round to exactly 0 or 1 (each log is clamped at -100, e.g. sigmoid + bce with
``t = 0`` is exactly 100 per element, with zero gradient, for ``z >~ 16.6``);
``bce_logits`` after a sigmoid / softmax head is BCE on ``sigmoid(sigmoid(z))``
/ ``sigmoid(softmax(z))``.

The "logits" convention (ours, not the original's)
--------------------------------------------------

Every loss is its textbook definition evaluated on the head's probabilities,
computed in log space from ``z`` with optax's / jax's stable functions. Where
the head gives no probabilities (``none``, ``relu``) and for the regression
losses, it is the torch convention.

====================  =====================================  ====================================
head + loss           per example (logits convention)        compared with torch
====================  =====================================  ====================================
none + cce            ``optax.softmax_cross_entropy(z, t)``  identical
relu + cce            ``optax.softmax_cross_entropy(         identical (cce treats relu(z) as
                      relu(z), t)``                          logits)
sigmoid + cce         :math:`-\sum_c t_c \log\sigma(z_c)`    torch: softmax CE of sigmoid(z),
                      (:func:`sigmoid_categorical_cross_     floor log(e + C - 1) - 1. Here: CE
                      entropy`): CE of t against the         of t on the sigmoid probabilities,
                      sigmoid probabilities                  min 0; they do not sum to 1, so the
                                                             non-target outputs get no gradient
softmax + cce         ``optax.softmax_cross_entropy(z, t)``  torch: a double softmax, floor
                      (the standard categorical CE)          log(e + C - 1) - 1. Here min 0
none + bce            as torch: BCELoss on z                 identical (invalid outside [0, 1])
relu + bce            as torch: BCELoss on relu(z)           identical (invalid where relu(z) > 1)
sigmoid + bce         ``optax.sigmoid_binary_cross_          = BCELoss(sigmoid(z)) in exact
                      entropy(z, t).mean(-1)``               arithmetic. torch's float32 sigmoid
                                                             is exactly 1 for z >~ 16.6: with
                                                             t = 0 its value jumps from ~16 to
                                                             100 and its gradient to 0; for
                                                             t = 1 its gradient vanishes below
                                                             z ~ -27.6 (p < 1e-12) and its value
                                                             jumps from ~87 to 100 where p
                                                             underflows to 0 (z ~ -87.4 with
                                                             XLA CPU's flush-to-zero, else
                                                             ~ -103.3). Here exact, unclamped,
                                                             |grad| -> 1/C
sigmoid + bce_logits  same as sigmoid + bce                  torch: BCE on sigmoid(sigmoid(z)),
                                                             probabilities in [0.5, 0.731]
softmax + bce         :math:`-\frac1C\sum_c [t_c \log p_c    = BCELoss(softmax(z)) in exact
                      + (1 - t_c)\log(1 - p_c)]`, with       arithmetic. torch's p_c rounds to 1
                      ``log p = log_softmax(z)`` and         once z_c exceeds the others by ~17:
                      ``log(1 - p_c) = logsumexp_{j != c}    log(1 - p_c) = -100, zero gradient
                      z_j - logsumexp(z)``                   (z = [40, 0], t = [0, 1]: torch 70,
                      (:func:`softmax_binary_cross_          here 40, gradient [1, -1]). C = 1:
                      entropy`); C = 1: log(1 - p) = -100    both 100 (1 - t), no gradient
softmax + bce_logits  same as softmax + bce                  torch: BCE on sigmoid(softmax(z))
none + bce_logits     ``optax.sigmoid_binary_cross_          identical (BCEWithLogitsLoss)
                      entropy(z, t).mean(-1)``
relu + bce_logits     as none + bce_logits, on relu(z)       identical
any + mse, mae, rmse  on the head's output                   identical
====================  =====================================  ====================================

References:
  PyTorch documentation: `CrossEntropyLoss
  <https://pytorch.org/docs/stable/generated/torch.nn.CrossEntropyLoss.html>`_,
  `BCELoss <https://pytorch.org/docs/stable/generated/torch.nn.BCELoss.html>`_,
  `BCEWithLogitsLoss
  <https://pytorch.org/docs/stable/generated/torch.nn.BCEWithLogitsLoss.html>`_,
  `MSELoss <https://pytorch.org/docs/stable/generated/torch.nn.MSELoss.html>`_,
  `L1Loss <https://pytorch.org/docs/stable/generated/torch.nn.L1Loss.html>`_.

  Goodfellow et al, `Deep Learning
  <http://www.deeplearningbook.org/contents/prob.html>`_, 2016.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

LOSSES = ("cce", "bce", "bce_logits", "mse", "mae", "rmse")
CONVENTIONS = ("torch", "logits")

# PyTorch's BCELoss clamps each log at -100 and divides by max(p (1 - p), 1e-12)
# in its backward pass.
_LOG_CLAMP = -100.0
_BCE_GRAD_EPS = 1e-12
_RMSE_EPS = 1e-8


def _identity(x):
  return x


def _softmax(z: jax.Array) -> jax.Array:
  return jax.nn.softmax(z, axis=-1)


HEADS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "none": _identity,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "softmax": _softmax,
}


def apply_head(head: str, z: jax.Array) -> jax.Array:
  """Applies the final activation `head` to pre-activation outputs.

  Args:
    head: one of ``HEADS``: ``'none'`` (identity), ``'relu'``, ``'sigmoid'`` or
      ``'softmax'`` (over the last axis; with one output it is exactly 1.0 and
      its gradient exactly 0).
    z: pre-activation outputs, shape ``(..., C)``.

  Returns:
    The head's outputs, shape ``(..., C)``.

  Raises:
    ValueError: for an unknown head, naming the choices.
  """
  return _get_head(head)(z)


# A head is *saturated* on an example when no entry of its Jacobian exceeds this
# (`head_jacobian_max`): a softmax with every other class below about 1e-6, a
# sigmoid within about 1e-6 of 0 or 1 on every output, a ReLU head with every
# output negative. The engine records the share of valid examples where it is.
HEAD_SATURATION = 1e-6


def head_jacobian_max(head: str, z: jax.Array) -> jax.Array:
  r"""The largest entry of the head's Jacobian, per example: how much gradient it can pass.

  :math:`g(z) = \max_{i,j} |\partial h_i / \partial z_j|`, in closed form:

  - ``none``: 1;
  - ``relu``: 1 if any output is positive, else 0 (a dead head);
  - ``sigmoid``: :math:`\max_i p_i (1 - p_i)`, ``p = sigmoid(z)`` (at most 1/4);
  - ``softmax``: :math:`\max_i p_i (1 - p_i)`, ``p = softmax(z)``: the Jacobian is
    :math:`p_i (\delta_{ij} - p_j)` and an off-diagonal :math:`p_i p_j` never exceeds
    :math:`p_i (1 - p_i)` since :math:`p_j \le 1 - p_i`. With one output it is 0.

  A small g means that whatever the loss asks of the head's outputs, almost nothing
  reaches z: in the torch convention (the loss receives the head's output) a head
  with g below ~1e-6 on every example stops all learning, e.g. the double softmax
  whose first softmax has put probability 1 on one class. (With a loss on the
  logits, cce and bce do not pass through the head's Jacobian.)

  Args:
    head: one of ``HEADS``.
    z: pre-activation outputs, shape ``(..., C)``.

  Returns:
    g, shape ``z.shape[:-1]``, in [0, 1].
  """
  if head == "none":
    return jnp.ones(z.shape[:-1], z.dtype)
  if head == "relu":
    return jnp.max((z > 0).astype(z.dtype), axis=-1)
  p = apply_head(head, z)
  return jnp.max(p * (1.0 - p), axis=-1)


def _get_head(head: str) -> Callable[[jax.Array], jax.Array]:
  try:
    return HEADS[head]
  except KeyError:
    raise ValueError(
        f"unknown head {head!r}: choose one of {', '.join(HEADS)}") from None


def double_softmax_floor(num_classes: int) -> float:
  r"""The least value of cross-entropy on softmax outputs (a double softmax).

  With a softmax head, the torch convention's ``cce`` is
  :math:`\ell(p) = \log\sum_j e^{p_j} - p_y` for ``p = softmax(z)`` on the
  simplex. For a fixed ``p_y`` it is least when the other ``C - 1`` entries
  share ``1 - p_y`` equally (convexity of exp), and that minimum decreases
  with ``p_y``, so its infimum is at the one-hot ``p = e_y`` (a perfectly
  confident correct prediction): :math:`\log(e + C - 1) - 1`, reached to
  float32 precision once ``z_y`` exceeds the other logits by ~30. A sigmoid
  head + cce has the same floor (outputs in [0, 1]^C, best at ``out = e_y``).
  E.g. ``C = 2``: 0.3133, ``C = 4``: 0.7437, ``C = 10``: 1.4612.

  Args:
    num_classes: C, the number of outputs.

  Returns:
    ``log(e + C - 1) - 1``.
  """
  return math.log(math.e + num_classes - 1) - 1.0


# ---------------------------------------------------------------------------
# The losses of the torch convention: each receives what PyTorch's class did.

def categorical_cross_entropy(logits: jax.Array, t: jax.Array) -> jax.Array:
  r"""Softmax cross-entropy of what it receives, as ``nn.CrossEntropyLoss``.

  .. math::
    \ell = -\sum_c t_c \log\mathrm{softmax}(x)_c

  Receives LOGITS ``x``: in the torch convention, the head's output, so after
  a softmax or sigmoid head this is a double squashing whose value cannot fall
  below :func:`double_softmax_floor`. For a one-hot ``t`` it equals
  ``nn.CrossEntropyLoss`` with the class index; for multi-hot or probability
  targets ``t`` is used as (unnormalised) class probabilities, as PyTorch
  does with float targets. Computed by ``optax.softmax_cross_entropy``.

  Mirrors ``torch.nn.CrossEntropyLoss(reduction='none')``.

  Args:
    logits: what the loss receives, shape ``(..., C)``.
    t: targets, shape ``(..., C)``.

  Returns:
    The per-example loss, shape ``(...,)``.

  References:
    `CrossEntropyLoss
    <https://pytorch.org/docs/stable/generated/torch.nn.CrossEntropyLoss.html>`_,
    PyTorch documentation.
  """
  return optax.softmax_cross_entropy(logits, jnp.asarray(t, logits.dtype))


@jax.custom_vjp
def _bce_clipped(p: jax.Array, t: jax.Array) -> jax.Array:
  log_p = jnp.maximum(jnp.log(p), _LOG_CLAMP)
  log_1mp = jnp.maximum(jnp.log1p(-p), _LOG_CLAMP)
  return -(t * log_p + (1.0 - t) * log_1mp)


def _bce_fwd(p, t):
  return _bce_clipped(p, t), (p, t)


def _bce_bwd(res, g):
  p, t = res
  dp = (p - t) / jnp.maximum(p * (1.0 - p), _BCE_GRAD_EPS)
  dt = jnp.maximum(jnp.log1p(-p), _LOG_CLAMP) - jnp.maximum(jnp.log(p), _LOG_CLAMP)
  return g * dp, g * dt


_bce_clipped.defvjp(_bce_fwd, _bce_bwd)


def binary_cross_entropy(p: jax.Array, t: jax.Array) -> jax.Array:
  r"""Elementwise binary cross-entropy of probabilities, as ``nn.BCELoss``.

  .. math::
    \ell = -[t \max(\log p, -100) + (1 - t) \max(\log(1 - p), -100)]

  Receives PROBABILITIES ``p`` (the head's output), not logits. The gradient
  is PyTorch's backward, :math:`\partial\ell/\partial p = (p - t) /
  \max(p (1 - p), 10^{-12})`, so it stays finite where ``p`` is exactly 0 or 1
  (there the loss is ``100 t`` resp. ``100 (1 - t)``). PyTorch raises on
  inputs outside [0, 1]; here ``p`` is clipped into [0, 1] so the value stays
  finite (the clip passes no gradient outside [0, 1], and all of it at exactly
  0 and 1), and callers must flag such inputs (:attr:`LossFn.valid_input`).

  Mirrors ``torch.nn.BCELoss(reduction='none')``.

  Args:
    p: probabilities, any shape.
    t: targets in [0, 1], broadcastable to ``p``.

  Returns:
    The elementwise loss, shape of ``p`` and ``t`` broadcast.

  References:
    `BCELoss <https://pytorch.org/docs/stable/generated/torch.nn.BCELoss.html>`_,
    PyTorch documentation (the backward is ``binary_cross_entropy_backward`` in
    ATen's ``Loss.cpp``).
  """
  p = jnp.asarray(p)
  t = jnp.asarray(t, p.dtype)
  p, t = jnp.broadcast_arrays(p, t)
  # Not jnp.clip: its gradient is 1/2 at exactly 0 and 1 (max/min split ties).
  zero, one = jnp.zeros_like(p), jnp.ones_like(p)
  p = jnp.where(p < 0.0, zero, jnp.where(p > 1.0, one, p))
  return _bce_clipped(p, t)


def binary_cross_entropy_with_logits(logits: jax.Array, t: jax.Array) -> jax.Array:
  r"""Elementwise sigmoid binary cross-entropy, as ``nn.BCEWithLogitsLoss``.

  .. math::
    \ell = -[t \log\sigma(x) + (1 - t) \log\sigma(-x)]

  Receives LOGITS ``x``: in the torch convention, the head's output, so after
  a sigmoid / softmax head it is BCE on ``sigmoid(sigmoid(z))`` /
  ``sigmoid(softmax(z))``. Computed stably (no clamp) by
  ``optax.sigmoid_binary_cross_entropy``.

  Mirrors ``torch.nn.BCEWithLogitsLoss(reduction='none')``.

  Args:
    logits: what the loss receives, any shape.
    t: targets in [0, 1], same shape.

  Returns:
    The elementwise loss.

  References:
    `BCEWithLogitsLoss
    <https://pytorch.org/docs/stable/generated/torch.nn.BCEWithLogitsLoss.html>`_,
    PyTorch documentation.
  """
  return optax.sigmoid_binary_cross_entropy(logits, t)


def mean_squared_error(out: jax.Array, t: jax.Array) -> jax.Array:
  r"""Per-example mean squared error over the outputs, as ``nn.MSELoss``.

  .. math::
    \ell = \frac1C \sum_c (out_c - t_c)^2

  Receives the head's output. Its batch mean is ``nn.MSELoss()`` (mean over all
  elements); ``rmse`` is ``sqrt`` of that batch mean plus 1e-8
  (:attr:`LossFn.finalize`).

  Args:
    out: predictions, shape ``(..., C)``.
    t: targets, shape ``(..., C)``.

  Returns:
    The per-example loss, shape ``(...,)``.

  References:
    `MSELoss <https://pytorch.org/docs/stable/generated/torch.nn.MSELoss.html>`_,
    PyTorch documentation.
  """
  return jnp.mean(jnp.square(out - t), axis=-1)


def mean_absolute_error(out: jax.Array, t: jax.Array) -> jax.Array:
  r"""Per-example mean absolute error over the outputs, as ``nn.L1Loss``.

  .. math::
    \ell = \frac1C \sum_c |out_c - t_c|

  Receives the head's output. Its batch mean is ``nn.L1Loss()``.

  Args:
    out: predictions, shape ``(..., C)``.
    t: targets, shape ``(..., C)``.

  Returns:
    The per-example loss, shape ``(...,)``.

  References:
    `L1Loss <https://pytorch.org/docs/stable/generated/torch.nn.L1Loss.html>`_,
    PyTorch documentation.
  """
  return jnp.mean(jnp.abs(out - t), axis=-1)


# ---------------------------------------------------------------------------
# The logits convention's stable losses on probabilities.


def sigmoid_categorical_cross_entropy(z: jax.Array, t: jax.Array) -> jax.Array:
  r"""Cross-entropy of targets against sigmoid probabilities, stably.

  .. math::
    \ell = -\sum_c t_c \log\sigma(z_c)

  Receives PRE-activation outputs ``z``; computed with
  ``jax.nn.log_sigmoid``. The sigmoid probabilities do not sum to 1, so unlike
  softmax cross-entropy the non-target outputs receive no gradient: the loss
  is minimised (to 0) by making the target logits large, whatever the others
  do. This is the logits convention's sigmoid + cce; PyTorch has no class for
  it (``nn.NLLLoss`` on ``logsigmoid(z)`` computes it for one-hot targets).

  Args:
    z: pre-activation outputs, shape ``(..., C)``.
    t: targets (class probabilities, one-hot or multi-hot), ``(..., C)``.

  Returns:
    The per-example loss, shape ``(...,)``.

  References:
    `Cross-entropy <https://en.wikipedia.org/wiki/Cross-entropy>`_, Wikipedia.
  """
  t = jnp.asarray(t, z.dtype)
  return -jnp.sum(t * jax.nn.log_sigmoid(z), axis=-1)


def softmax_binary_cross_entropy(z: jax.Array, t: jax.Array) -> jax.Array:
  r"""Elementwise binary cross-entropy on softmax probabilities, stably.

  With :math:`p = \mathrm{softmax}(z)`,

  .. math::
    \ell_c = -[t_c \log p_c + (1 - t_c) \log(1 - p_c)],\quad
    \log p_c = z_c - \mathrm{LSE}(z),\quad
    \log(1 - p_c) = \mathrm{LSE}_{j \ne c}(z_j) - \mathrm{LSE}(z),

  where LSE is logsumexp (the one over :math:`j \ne c` is a masked
  logsumexp). Receives PRE-activation outputs ``z``. This is
  ``nn.BCELoss(reduction='none')(softmax(z), t)`` in exact arithmetic, but
  without float32's rounding of ``p`` to exactly 1 (where PyTorch's value
  jumps to the -100 clamp and its gradient vanishes). With ``C = 1``,
  ``1 - p = 0`` exactly: ``log(1 - p)`` is clamped at -100 as PyTorch does,
  so the loss is the constant ``100 (1 - t)`` with zero gradient. This is the
  logits convention's softmax + bce (and softmax + bce_logits).

  Args:
    z: pre-activation outputs, shape ``(..., C)``.
    t: targets in [0, 1], shape ``(..., C)``.

  Returns:
    The elementwise loss, shape ``(..., C)``.

  References:
    `BCELoss <https://pytorch.org/docs/stable/generated/torch.nn.BCELoss.html>`_,
    PyTorch documentation.
  """
  t = jnp.asarray(t, z.dtype)
  num_classes = z.shape[-1]
  log_p = jax.nn.log_softmax(z, axis=-1)
  if num_classes == 1:
    log_1mp = jnp.full_like(z, _LOG_CLAMP)
  else:
    lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
    off_diagonal = ~jnp.eye(num_classes, dtype=bool)              # [c, j]: j != c
    z_others = jnp.where(off_diagonal, z[..., None, :], -jnp.inf)   # (..., C, C)
    log_1mp = jax.nn.logsumexp(z_others, axis=-1) - lse
  return -(t * log_p + (1.0 - t) * log_1mp)


# ---------------------------------------------------------------------------
# Per-example losses for get_loss.


def _bce(out, t):
  return jnp.mean(binary_cross_entropy(out, t), axis=-1)


def _bce_logits(out, t):
  return jnp.mean(binary_cross_entropy_with_logits(out, t), axis=-1)


# What each loss computes from what it receives (the torch convention).
_TORCH_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "cce": categorical_cross_entropy,
    "bce": _bce,
    "bce_logits": _bce_logits,
    "mse": mean_squared_error,
    "mae": mean_absolute_error,
    "rmse": mean_squared_error,
}


def _softmax_bce_mean(z, t):
  return jnp.mean(softmax_binary_cross_entropy(z, t), axis=-1)


# (head, loss) -> per-example loss on z, for the logits convention; the other
# cells apply the torch-convention loss to the head's output.
_LOGITS_OVERRIDES: dict[tuple[str, str], Callable[[jax.Array, jax.Array], jax.Array]] = {
    ("softmax", "cce"): categorical_cross_entropy,
    ("sigmoid", "cce"): sigmoid_categorical_cross_entropy,
    ("sigmoid", "bce"): _bce_logits,
    ("sigmoid", "bce_logits"): _bce_logits,
    ("softmax", "bce"): _softmax_bce_mean,
    ("softmax", "bce_logits"): _softmax_bce_mean,
}


def _rmse_finalize(x):
  return jnp.sqrt(x + _RMSE_EPS)


@dataclasses.dataclass(frozen=True)
class LossFn:
  """A loss as the engine uses it.

  Attributes:
    per_example: ``(z, t) -> (B,)``: the per-example loss from PRE-activation
      outputs ``z`` ``(B, C)`` and dense targets ``t`` ``(B, C)`` (float32 for
      float32 inputs). The batch mean of it, finalized, is PyTorch's
      ``reduction='mean'`` loss.
    finalize: maps the (masked) batch mean of ``per_example`` to the batch
      loss: the identity, or ``sqrt(x + 1e-8)`` for rmse.
    valid_input: ``z -> (B,)`` bool, False where what the loss receives is
      outside its domain (bce on outputs outside [0, 1]); None when always
      valid.
    invalid_reason: why such inputs are invalid (None when always valid).
  """
  per_example: Callable[[jax.Array, jax.Array], jax.Array]
  finalize: Callable[[jax.Array], jax.Array]
  valid_input: Callable[[jax.Array], jax.Array] | None
  invalid_reason: str | None


def _in_unit_interval(head_fn, z):
  out = head_fn(z)
  return jnp.all((out >= 0.0) & (out <= 1.0), axis=-1)


def convention_matters(head: str, loss: str) -> bool:
  """True where the logits convention computes a different loss from the torch one.

  The conventions agree for the regression losses (mse, mae, rmse act on the
  head's output in both) and for heads without probabilities (none, relu),
  so such a cell is trained once and reported in both conventions' tables.
  """
  _get_head(head)
  if loss not in LOSSES:
    raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
  return head in ("sigmoid", "softmax") and loss in ("cce", "bce", "bce_logits")


def get_loss(head: str, loss: str, convention: str = "torch") -> LossFn:
  """Returns the loss `loss` after the final activation `head`.

  The same arguments return the same (cached) object, so its functions can
  serve as static / hashable jit arguments.

  Args:
    head: one of ``HEADS``.
    loss: one of ``LOSSES``.
    convention: ``'torch'`` (the loss receives the head's output, as in the
      original PyTorch code) or ``'logits'`` (the textbook loss on the head's
      probabilities, computed stably from ``z``); see the module docstring.

  Returns:
    A :class:`LossFn`.

  Raises:
    ValueError: for an unknown head, loss or convention, naming the choices.
  """
  return _get_loss(head, loss, convention)


@functools.lru_cache(maxsize=None)
def _get_loss(head: str, loss: str, convention: str) -> LossFn:
  head_fn = _get_head(head)
  if loss not in LOSSES:
    raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
  if convention not in CONVENTIONS:
    raise ValueError(
        f"unknown convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")

  override = _LOGITS_OVERRIDES.get((head, loss)) if convention == "logits" else None
  if override is not None:
    per_example = override
  else:
    base = _TORCH_LOSSES[loss]

    def per_example(z, t):
      return base(head_fn(z), t)

  valid_input = invalid_reason = None
  if loss == "bce" and head in ("none", "relu"):
    valid_input = functools.partial(_in_unit_interval, head_fn)
    gives = "raw outputs" if head == "none" else "outputs in [0, inf)"
    invalid_reason = (
        "BCELoss needs inputs in [0, 1] (PyTorch raises 'all elements of input "
        f"should be between 0 and 1'); head {head!r} gives {gives}")
  finalize = _rmse_finalize if loss == "rmse" else _identity
  return LossFn(per_example=per_example, finalize=finalize,
                valid_input=valid_input, invalid_reason=invalid_reason)
