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
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

TASKS = ("regression", "probability", "binary", "multiclass", "multilabel")

# PROTOCOL section 4.
COMPLEXITY = np.array([2, 1, 2, 2, 6, 3, 3, 2, 4, 3], np.float32)  # digit -> strokes + holes
CURVED = np.array([1, 0, 0, 1, 0, 0, 1, 0, 1, 1], np.float32)
EVEN = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0], np.float32)
PRIME = np.array([0, 0, 1, 1, 0, 1, 0, 1, 0, 0], np.float32)
SQUARE = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 1], np.float32)
MULTILABEL_NAMES = ("even", "prime", "curved", "square")


@dataclasses.dataclass(frozen=True)
class Task:
  """A task: its name, output width C and metric.

  Attributes:
    name: one of TASKS.
    num_outputs: C, the width of the network's last dense layer.
    metric_name: "mse" (regression) or "accuracy".
    higher_is_better: False for MSE, True for accuracy.
    single_label: True for binary and multiclass (argmax metric).
  """
  name: str
  num_outputs: int
  metric_name: str
  higher_is_better: bool
  single_label: bool

  def targets(self, digits: np.ndarray) -> np.ndarray:
    """Dense targets (N, C) float32 for digit labels (N,) int."""
    return make_targets(self.name, digits)


_TASKS = {
    "regression": Task("regression", 1, "mse", False, False),
    "probability": Task("probability", 1, "accuracy", True, False),
    "binary": Task("binary", 2, "accuracy", True, True),
    "multiclass": Task("multiclass", 10, "accuracy", True, True),
    "multilabel": Task("multilabel", 4, "accuracy", True, False),
}


def get_task(name: str) -> Task:
  """Returns the Task called `name`; raises ValueError naming the choices."""
  try:
    return _TASKS[name]
  except KeyError:
    raise ValueError(
        f"unknown task {name!r}: choose one of {', '.join(TASKS)}") from None


def make_targets(task: str, digits: np.ndarray) -> np.ndarray:
  """Dense float32 targets of shape (N, C) for digit labels of shape (N,)."""
  digits = np.asarray(digits).astype(np.int64)
  if task == "regression":
    return COMPLEXITY[digits][:, None]
  if task == "probability":
    return CURVED[digits][:, None]
  if task == "binary":
    return np.eye(2, dtype=np.float32)[CURVED[digits].astype(np.int64)]
  if task == "multiclass":
    return np.eye(10, dtype=np.float32)[digits]
  if task == "multilabel":
    return np.stack([EVEN[digits], PRIME[digits], CURVED[digits], SQUARE[digits]], axis=-1)
  raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")


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
  if task == "regression":
    return jnp.mean(jnp.square(prediction - target), axis=-1)
  if task in ("binary", "multiclass"):
    return (jnp.argmax(prediction, axis=-1) == jnp.argmax(target, axis=-1)).astype(jnp.float32)
  if task in ("probability", "multilabel"):
    return jnp.mean((jnp.round(prediction) == target).astype(jnp.float32), axis=-1)
  raise ValueError(f"unknown task {task!r}")
