"""The five MNIST tasks of PROTOCOL section 4: targets, output widths and metrics.

Every task maps a digit label (0-9) to a dense float target matrix of shape
(N, C), so that every loss sees the same target convention:

| task         | C  | target row                                             | metric        |
|--------------|----|--------------------------------------------------------|---------------|
| regression   | 1  | the digit's "complexity" (strokes + holes)             | MSE (original units), lower is better |
| probability  | 1  | 1.0 if the digit is curved (0, 3, 6, 8, 9), else 0.0    | accuracy of round(output) |
| binary       | 2  | one-hot of class 1 = curved, class 0 = not curved      | argmax accuracy |
| multiclass   | 10 | one-hot of the digit                                   | argmax accuracy |
| multilabel   | 4  | bits (even, prime, curved, square)                     | element-wise accuracy of round(output) |

For single-label tasks, `cce` on a one-hot row equals PyTorch's
`CrossEntropyLoss` with the class index, so one dense target serves every loss.

A task's behaviour lives on its `Task`: its targets, its `Metric` (the
per-example score, the direction, the best constant predictor's value), and
what follows from them (`single_label`, `continuous`, `multi_label`), which
the engine, the studies and the diagnostics read instead of the task's name.
A new task is one `Task` in REGISTRY plus its rows in the studies' grids.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np

# PROTOCOL section 4.
COMPLEXITY = np.array([2, 1, 2, 2, 6, 3, 3, 2, 4, 3], np.float32)  # digit -> strokes + holes
CURVED = np.array([1, 0, 0, 1, 0, 0, 1, 0, 1, 1], np.float32)
EVEN = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0], np.float32)
PRIME = np.array([0, 0, 1, 1, 0, 1, 0, 1, 0, 0], np.float32)
SQUARE = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 1], np.float32)
MULTILABEL_NAMES = ("even", "prime", "curved", "square")


# -- metrics -------------------------------------------------------------------
# Per-example scores: prediction (B, C) (for a continuous target already in
# original units, possibly +-inf), target (B, C) dense, original units -> (B,).


def squared_error(prediction: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """The squared error, averaged over outputs."""
  return jnp.mean(jnp.square(prediction - target), axis=-1)


def argmax_hit(prediction: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """1.0 where the argmax (first index on ties) hits the target's class."""
  return (jnp.argmax(prediction, axis=-1) == jnp.argmax(target, axis=-1)).astype(jnp.float32)


def rounded_hit(prediction: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """The share of outputs that round(output) gets right (round half to even: 0.5 -> 0)."""
  return jnp.mean((jnp.round(prediction) == target).astype(jnp.float32), axis=-1)


# The metric of the best constant predictor on targets (N, C).


def _variance(t: np.ndarray) -> float:
  return float(np.var(t))


def _majority_class_share(t: np.ndarray) -> float:
  return float(np.max(np.bincount(t.argmax(axis=1), minlength=t.shape[1])) / len(t))


def _majority_value_share(t: np.ndarray) -> float:
  return float(np.mean(np.maximum(t.mean(axis=0), 1 - t.mean(axis=0))))


@dataclasses.dataclass(frozen=True)
class Metric:
  """How a task's predictions are scored.

  Attributes:
    name: "mse" or "accuracy" (results files, tables, axes).
    higher_is_better: the direction of improvement.
    per_example: (prediction (B, C), target (B, C)) -> (B,); its mean is the metric.
    constant_best: targets (N, C) -> the metric of the best constant predictor
      on them (the chance level).
  """
  name: str
  higher_is_better: bool
  per_example: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
  constant_best: Callable[[np.ndarray], float]


MSE = Metric("mse", False, squared_error, _variance)
ARGMAX_ACCURACY = Metric("accuracy", True, argmax_hit, _majority_class_share)
ROUNDED_ACCURACY = Metric("accuracy", True, rounded_hit, _majority_value_share)


@dataclasses.dataclass(frozen=True)
class Task:
  """A task: its name, output width C, targets and metric.

  Attributes:
    name: the task's key in REGISTRY.
    num_outputs: C, the width of the network's last dense layer.
    metric: how its predictions are scored (MSE, ARGMAX_ACCURACY or ROUNDED_ACCURACY).
    target_fn: digit labels (N,) int64 -> dense float32 targets (N, C).
  """
  name: str
  num_outputs: int
  metric: Metric
  target_fn: Callable[[np.ndarray], np.ndarray]

  @property
  def metric_name(self) -> str:
    """"mse" or "accuracy"."""
    return self.metric.name

  @property
  def higher_is_better(self) -> bool:
    return self.metric.higher_is_better

  @property
  def single_label(self) -> bool:
    """One label per example, read off the argmax (binary, multiclass)."""
    return self.metric is ARGMAX_ACCURACY

  @property
  def continuous(self) -> bool:
    """The target is a value, not labels (regression): it may be standardised or squashed
    (`Cell.norm`, `Cell.sigmoid_method`), cce does not apply, a ReLU head is clamped."""
    return self.metric is MSE

  @property
  def multi_label(self) -> bool:
    """Several independent labels per example (multilabel): a softmax head, whose outputs
    sum to 1, can predict at most one of them (`diagnostics.multilabel_softmax_ceiling`)."""
    return self.metric is ROUNDED_ACCURACY and self.num_outputs > 1

  def targets(self, digits: np.ndarray) -> np.ndarray:
    """Dense targets (N, C) float32 for digit labels (N,) int."""
    return self.target_fn(np.asarray(digits).astype(np.int64))

  def per_example_score(self, prediction: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Per-example metric contribution (B,) of predictions and targets (B, C)."""
    return self.metric.per_example(prediction, target)

  def chance_level(self, targets: np.ndarray) -> float:
    """The metric of the best constant predictor on `targets` (N, C)."""
    return self.metric.constant_best(np.asarray(targets, np.float64))


# The tasks, by name (PROTOCOL section 4).
REGISTRY: dict[str, Task] = {
    "regression": Task("regression", 1, MSE, lambda d: COMPLEXITY[d][:, None]),
    "probability": Task("probability", 1, ROUNDED_ACCURACY, lambda d: CURVED[d][:, None]),
    "binary": Task("binary", 2, ARGMAX_ACCURACY,
                   lambda d: np.eye(2, dtype=np.float32)[CURVED[d].astype(np.int64)]),
    "multiclass": Task("multiclass", 10, ARGMAX_ACCURACY,
                       lambda d: np.eye(10, dtype=np.float32)[d]),
    "multilabel": Task("multilabel", 4, ROUNDED_ACCURACY,
                       lambda d: np.stack([EVEN[d], PRIME[d], CURVED[d], SQUARE[d]], axis=-1)),
}
TASKS = tuple(REGISTRY)


def get_task(name: str) -> Task:
  """Returns the Task called `name`; raises ValueError naming the choices."""
  try:
    return REGISTRY[name]
  except KeyError:
    raise ValueError(
        f"unknown task {name!r}: choose one of {', '.join(REGISTRY)}") from None


def make_targets(task: str, digits: np.ndarray) -> np.ndarray:
  """Dense float32 targets of shape (N, C) for digit labels of shape (N,)."""
  return get_task(task).targets(digits)


def per_example_score(task: str, prediction: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Per-example metric contribution, shape (B,); its mean is the metric.

  Args:
    task: task name.
    prediction: (B, C) the head's output; for regression, the prediction
      already mapped back to original units (may be +-inf for the sigmoid method).
    target: (B, C) dense targets in original units.

  Returns:
    regression: squared error; probability: 1.0 where round(out) == target
    (round half to even, so 0.5 -> 0); binary / multiclass: 1.0 where the
    argmax (first index on ties) hits the target's class; multilabel: the
    fraction of the 4 bits that round(out) gets right.
  """
  return get_task(task).per_example_score(prediction, target)
