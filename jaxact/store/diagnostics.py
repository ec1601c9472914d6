"""Why a member failed, from what the engine measured: a classification with its evidence.

The engine records, per member and epoch, per-layer gradient and parameter
norms, the saturated / dead fraction of each hidden layer's units on the
valid set, the spread of the outputs across inputs, how often their argmax
changes and on how many examples the head (final activation) is saturated
(`engine.Engine.diagnostic_shapes` defines each). This module turns a
finished member's record into one `Diagnosis`: a kind from KINDS and one
sentence of evidence with the numbers. It is plain Python on host data, so a
results file can be diagnosed again without training.

Kinds, checked in this order (the first that applies wins):
  invalid             the loss refused its input (PyTorch raised).
  nonfinite           the loss or the parameters became NaN / inf.
  no_gradient         every layer's gradient is exactly 0 in every epoch.
  vanishing_gradient  at chance level, and at initialisation the gradient
                      reaching the first layer is < VANISHING_RATIO of the
                      output layer's.
  dead_head           the ReLU head is dead at the best epoch: its input is
                      negative on every valid example, so it outputs 0 there
                      (head_saturated 1, output spread 0) and passes no gradient
                      to any layer below it. Not the saturated-hidden-layer
                      collapse, hence checked before it. For records without
                      per-epoch head diagnostics: a ReLU head whose valid metric
                      is bit-for-bit the same in every epoch.
  collapsed           the best-epoch weights give a constant predictor (output
                      spread < COLLAPSE_SPREAD of the targets', or one argmax
                      for every valid example), or, for regression, the best
                      valid MSE equals the constant predictor's (`chance`)
                      within COLLAPSE_MSE_TOLERANCE.
  ceiling             a multi-label task with a softmax head: at most one
                      label can be predicted (the data give the best possible
                      accuracy).
  clamped             regression on standardised targets with a ReLU head: it
                      cannot output a negative value, i.e. nothing below the
                      training targets' mean, so its MSE cannot go below
                      `relu_clamp_bound` (computed from the targets).
  unbounded_loss      the training loss went below 0 (a loss that is >= 0 on
                      its intended targets is unbounded below on these).
  no_learning         the best valid metric is at chance level.
  underperforming     far below the best cell of the same run (UNDERPERFORM_POINTS
                      accuracy points lower, or UNDERPERFORM_MSE_RATIO x its MSE).
  hit_cap             still improving at the epoch cap.
  healthy             none of the above.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from jaxact.model import losses as losses_lib
from jaxact.data import tasks as tasks_lib
from jaxact.model.cells import Cell

KINDS = ("invalid", "nonfinite", "no_gradient", "vanishing_gradient", "dead_head", "collapsed",
         "ceiling", "clamped", "unbounded_loss", "no_learning", "underperforming", "hit_cap",
         "healthy")
FAILURES = KINDS[:-2]          # hit_cap and healthy are not failures
VANISHING_RATIO = 1e-3
COLLAPSE_SPREAD = 0.01
# Regression: a best valid MSE within 1% of the constant predictor's (the valid targets'
# variance) is a collapse. A constant c scores (1 + (c - mean)^2 / var) x that variance. In
# experiments/all_torch_10seeds (split seed 0) the members at a constant sit at ratios
# 1.00000-1.00016 (1.00016: predicting the training mean, 0 in standardised units); the next
# member up is at 1.043 (sigmoid method on raw targets, a collapse only the output spread
# shows) and every member that learned is below 0.39.
COLLAPSE_MSE_TOLERANCE = 0.01
CHANCE_MARGIN = 0.02           # accuracy within 2 points of chance is "at chance"
CHANCE_MSE_SHARE = 0.95        # an MSE above 95% of the constant predictor's is "at chance"
UNDERPERFORM_POINTS = 0.10
UNDERPERFORM_MSE_RATIO = 2.0
HEAD_SATURATED_SHARE = 0.99    # the head is reported saturated on >= 99% of valid examples


@dataclasses.dataclass(frozen=True)
class Diagnosis:
  kind: str
  evidence: str

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def multilabel_softmax_ceiling(targets: np.ndarray) -> float:
  """The best accuracy (mean over labels) of predictions with at most one positive label.

  Softmax outputs sum to 1, so after rounding at most one of them can be 1
  (two can be exactly 0.5, which rounds to 0). For each example the best such
  prediction is either all-zero or one-hot on a positive label; this returns
  the mean over examples of the best of those.

  Args:
    targets: (N, K) 0/1 labels.

  Returns:
    The ceiling, in [0, 1].
  """
  t = np.asarray(targets, np.float64)
  k = t.shape[1]
  zeros = (t == 0).sum(axis=1)                       # all-zero prediction gets these right
  one_hot = zeros[:, None] + np.where(t == 1, 1, -1)  # predicting label j: +1 if positive, -1 if not
  best = np.maximum(zeros, one_hot.max(axis=1))
  return float(np.mean(best / k))


def relu_clamp_bound(train_targets: np.ndarray, targets: np.ndarray) -> float:
  """The least MSE of a ReLU head on standardised regression targets, in original units.

  The head's output is >= 0 in standardised units, so its prediction in original units is
  >= mu, the training targets' mean (the standardisation's). The best such prediction of a
  target t is max(t, mu): exact where t >= mu, mu where t < mu. Its MSE is the mean over
  examples of min(t_std, 0)^2 on the standardised targets t_std = (t - mu) / sd, times sd^2
  back in original units:
      bound = mean(min(t - mu, 0)^2).
  No ReLU head, however trained, scores below it; one that predicts every example exactly
  and clamps the rest to mu reaches it.

  Args:
    train_targets: (N_train, 1) regression targets of the training split, original units
      (their mean is the standardisation's mu).
    targets: (N, 1) the targets the MSE is measured on (e.g. the test split's).

  Returns:
    The bound, in squared original units.
  """
  mu = float(np.mean(np.asarray(train_targets, np.float64)))
  t = np.asarray(targets, np.float64)
  return float(np.mean(np.minimum(t - mu, 0.0) ** 2))


def chance_level(task: str, targets: np.ndarray) -> float:
  """The metric of the best constant predictor on `targets` (N, C), e.g. the majority class share.

  regression: the MSE of predicting the mean (the variance); probability and
  multilabel: the mean over labels of the majority value's share; binary and
  multiclass: the most frequent class's share.
  """
  return tasks_lib.get_task(task).chance_level(targets)


def loss_floor(cell: Cell, num_outputs: int) -> float | None:
  """The least value the cell's training loss can take, where it is above 0; else None.

  The torch convention's cce on softmax or sigmoid outputs (a softmax over
  bounded outputs) cannot go below losses.double_softmax_floor(C).
  """
  if (cell.convention == "torch" and cell.loss == "cce" and cell.head in ("softmax", "sigmoid")
      and num_outputs > 1):
    return losses_lib.double_softmax_floor(num_outputs)
  return None


def _at_chance(task: tasks_lib.Task, value: float, chance: float | None) -> bool:
  if chance is None or not math.isfinite(value):
    return not math.isfinite(value)
  if task.higher_is_better:
    return value <= chance + CHANCE_MARGIN
  return value >= CHANCE_MSE_SHARE * chance


def _fmt_metric(task: tasks_lib.Task, v: float) -> str:
  return f"{100 * v:.2f}%" if task.higher_is_better else f"{v:.4g}"


def _units(frac: float | None, width: int = 64) -> str:
  return "?" if frac is None else str(int(round(frac * width)))


def _hidden_state(d: dict, epoch: int) -> str:
  """'64/64 hidden units saturated, 0/64 dead' for the first hidden layer at `epoch`."""
  sat, dead = d.get("saturated"), d.get("dead")
  if not sat or epoch >= len(sat) or not sat[epoch]:
    return ""
  return (f"{_units(sat[epoch][0])}/64 units of hidden layer 1 saturated, "
          f"{_units(dead[epoch][0])}/64 dead")


def _head_state(d: dict, cell: Cell) -> str:
  """'the softmax head is saturated ... from epoch k on', if it is at the member's last epoch."""
  h = d.get("head_saturated") or []
  if not h or h[-1] is None or h[-1] < HEAD_SATURATED_SHARE:
    return ""
  start = _first_of_last_run([v is not None and v >= HEAD_SATURATED_SHARE for v in h]) or 0
  text = (f"the {cell.head} head is saturated (no Jacobian entry above "
          f"{losses_lib.HEAD_SATURATION:g}) on {100 * h[-1]:.1f}% of valid examples from epoch "
          f"{start + 1} on")
  if cell.convention == "torch":
    text += ", so almost no gradient passes it from the loss"
  return text


def _first_of_last_run(flags: Sequence[bool]) -> int | None:
  """The start of the final run of True values, or None if the last value is False."""
  if not flags or not flags[-1]:
    return None
  i = len(flags) - 1
  while i > 0 and flags[i - 1]:
    i -= 1
  return i


def _collapsed(d: dict, e: int, single_label: bool) -> bool:
  spread = (d.get("spread") or [None] * (e + 1))[e]
  minority = (d.get("argmax_minority") or [None] * (e + 1))[e]
  return ((spread is not None and spread < COLLAPSE_SPREAD)
          or (single_label and minority is not None and minority == 0.0))


def _head_dead(d: dict, cell: Cell, e: int) -> bool | None:
  """Whether the ReLU head outputs 0 on every valid example at epoch `e`.

  head_saturated is exactly 1 (for a ReLU head the Jacobian is 0 where the input
  is <= 0) and the output spread, if recorded, is exactly 0. False for other
  heads; None if head_saturated is not recorded for `e` (older results).
  """
  if cell.head != "relu":
    return False
  sat = d.get("head_saturated") or []
  if e >= len(sat) or sat[e] is None:
    return None
  spread = d.get("spread") or []
  s = spread[e] if e < len(spread) else None
  return bool(sat[e] >= 1.0 and (s is None or s == 0.0))


def _layer_gradients(d: dict, epoch: int) -> str:
  """'conv1 0, conv2 0, ..., out 0': the gradient norm of each layer in `epoch`."""
  g = (d.get("grad_norm") or [])[epoch] or []
  names = list(d.get("layers") or [])
  names += [f"layer {i + 1}" for i in range(len(names), len(g))]
  return ", ".join(f"{n} {v:.2g}" if v is not None else f"{n} ?" for n, v in zip(names, g))


def _hidden_summary(d: dict, epoch: int) -> str:
  """`_hidden_state`, led by whether hidden layer 1 is saturated (at least half its units)."""
  if not _hidden_state(d, epoch):
    return ""
  sat, dead = d["saturated"][epoch][0], d["dead"][epoch][0]
  return (f"hidden layer 1 {'' if sat >= 0.5 else 'not '}saturated ({_units(sat)}/64 units "
          f"saturated, {_units(dead)}/64 dead)")


def _dead_head(record: dict, d: dict, cell: Cell, t: tasks_lib.Task, e: int,
               chance_text: str) -> Diagnosis | None:
  """The dead_head Diagnosis if the member's ReLU head is dead at its best epoch `e`, else None."""
  if cell.head != "relu":
    return None
  best = float(record["best_valid"]) if record.get("best_valid") is not None else math.nan
  best_text = f"best valid {_fmt_metric(t, best)} at epoch {e + 1}{chance_text}"
  if t.continuous:
    best_text += (", the MSE of predicting the training targets' mean (0 in standardised units)"
                  if cell.norm else ", the MSE of predicting 0")
  state = _head_dead(d, cell, e)
  if state is None:
    # No per-epoch head diagnostics: a dead head's outputs are all 0 whatever weight decay
    # does to the weights below it, so its valid MSE repeats bit for bit; a live head's
    # outputs, and so the MSE, move with every update. (An accuracy can repeat while the
    # outputs move, e.g. one argmax in every epoch: regression only.)
    values = record.get("valid_metric") or []
    if (not t.continuous or len(values) < 2 or any(v is None or not math.isfinite(v) for v in values)
        or any(v != values[0] for v in values)):
      return None
    return Diagnosis("dead_head", "dead ReLU head (inferred; this record has no per-epoch "
                     f"head diagnostics): the valid MSE is {values[0]!r} in every "
                     f"one of the {len(values)} epochs, bit for bit, so the outputs never "
                     "changed, as when the head's input is negative on every example (output "
                     f"0, no gradient through the head); {best_text}")
  if not state:
    return None
  n = len(d["head_saturated"])
  flags = [bool(_head_dead(d, cell, i)) for i in range(n)]
  start = _first_of_last_run(flags[:e + 1]) or 0
  end = e
  while end + 1 < n and flags[end + 1]:
    end += 1
  parts = [f"dead ReLU head: its output is 0 on 100% of valid examples (head saturated on "
           f"all, output spread 0) from epoch {start + 1}"
           + (" to the last epoch" if end == n - 1 else f" to epoch {end + 1}")
           + (", alive before (the best epoch's weights, which the test metric uses, are dead)"
              if start > 0 else ""),
           best_text]
  grads = d.get("grad_norm") or []
  j = start + 1 if start + 1 <= end else start   # the first epoch trained with the head dead
  if j < len(grads) and grads[j]:
    g = [v for v in grads[j] if v is not None]
    parts.append(f"gradient norm per layer in epoch {j + 1}: {_layer_gradients(d, j)}"
                 + (" (no gradient passes the head)" if g and max(g) == 0.0 else ""))
  hidden = _hidden_summary(d, e)
  if hidden:
    parts.append(hidden)
  return Diagnosis("dead_head", "; ".join(parts))


def gradient_ratio_at_init(d: dict) -> float | None:
  """||grad conv1|| / ||grad out|| on the first batch (None if unknown or out's is 0)."""
  first = d.get("grad_norm_first")
  if not first or first[0] is None or not first[0]:
    return None
  g = first[0]
  if g[0] is None or not g[-1]:
    return None
  return g[0] / g[-1]


def classify(record: dict[str, Any], task: str, chance: float | None = None,
             ceiling: float | None = None, reference: float | None = None,
             clamp_bound: float | None = None) -> Diagnosis:
  """The diagnosis of one finished member.

  Args:
    record: a member's results record (`records.MemberRecord.to_dict`): status,
      status_reason, status_epoch, best_valid, test, best_epoch, train_loss,
      valid_metric and `diagnostics` (per-epoch lists, see engine).
    task: the task's name.
    chance: the task's chance-level valid metric (`chance_level`), if known.
    ceiling: for multilabel, `multilabel_softmax_ceiling` of the test targets.
    reference: the best cell's mean best-valid metric in the same run, if known.
    clamp_bound: for regression, `relu_clamp_bound` of the test targets (a record's own
      "relu_clamp_bound_test", where its split is its own, takes precedence).

  Returns:
    The Diagnosis.
  """
  t = tasks_lib.get_task(task)
  cell = Cell.from_dict(record["cell"]) if isinstance(record["cell"], dict) else record["cell"]
  d = record.get("diagnostics") or {}
  stopped = _stopped(record, d, cell, t)
  if stopped is not None:
    return stopped
  grads = d.get("grad_norm") or []
  best_epoch = record.get("best_epoch", -1)
  e = best_epoch if best_epoch is not None and best_epoch >= 0 else len(grads) - 1
  best_valid = float(record["best_valid"]) if record["best_valid"] is not None else math.nan
  at_chance = _at_chance(t, best_valid, chance)
  hidden = _hidden_state(d, e)
  ratio = gradient_ratio_at_init(d)
  ratio_text = "" if ratio is None else (
      f"; at initialisation the gradient at conv1 is {ratio:.2g} x the output layer's")
  chance_text = "" if chance is None else f" (chance {_fmt_metric(t, chance)})"
  if at_chance and ratio is not None and ratio < VANISHING_RATIO:
    return Diagnosis("vanishing_gradient",
                     f"vanishing gradient: at initialisation the gradient at conv1 is {ratio:.2g} x "
                     f"the output layer's; best valid {_fmt_metric(t, best_valid)}{chance_text}"
                     + (f"; {hidden}" if hidden else ""))
  found = (_dead_head(record, d, cell, t, e, chance_text)
           or _collapse(d, cell, t, e, best_valid, chance, ratio_text)
           or _structural(record, cell, t, ceiling, clamp_bound, hidden))
  if found is not None:
    return found
  return _learned(record, cell, t, best_valid, at_chance, chance_text, reference, hidden,
                  _head_state(d, cell), ratio_text)


def _stopped(record: dict[str, Any], d: dict, cell: Cell, t: tasks_lib.Task
             ) -> Diagnosis | None:
  """invalid, nonfinite (from the status) or no_gradient (every gradient 0), else None."""
  status = record["status"]
  if status == "invalid":
    return Diagnosis("invalid", record.get("status_reason") or "the loss refused its input")
  if status == "nonfinite":
    return Diagnosis("nonfinite", f"non-finite at epoch {(record.get('status_epoch') or 0) + 1}: "
                     "the loss or a parameter became NaN or inf; frozen at its last finite state")
  grads = d.get("grad_norm") or []
  flat = [g for epoch in grads for g in (epoch or []) if g is not None]
  if not flat or max(flat) != 0.0:
    return None
  why = (" (a softmax over one output is the constant 1)"
         if cell.head == "softmax" and t.num_outputs == 1 else "")
  dead = d.get("head_saturated") or []
  if cell.head == "relu" and dead and all(v is not None and v >= 1.0 for v in dead):
    why = " (the ReLU head's input is negative on every valid example in every epoch)"
  return Diagnosis("no_gradient", "no gradient reaches the weights: every layer's gradient "
                   f"is exactly 0 in all {len(grads)} epochs{why}")


def _collapse(d: dict, cell: Cell, t: tasks_lib.Task, e: int, best_valid: float,
              chance: float | None, ratio_text: str) -> Diagnosis | None:
  """collapsed: a constant output at the best epoch `e`, or (regression) the constant
  predictor's MSE; else None."""
  n = len(d.get("spread") or [])
  mse_ratio = (best_valid / chance if t.continuous and chance
               and math.isfinite(best_valid) else None)
  mse_collapsed = mse_ratio is not None and abs(mse_ratio - 1.0) <= COLLAPSE_MSE_TOLERANCE
  spread_collapsed = bool(n and e < n and _collapsed(d, e, t.single_label))
  if not (mse_collapsed or spread_collapsed):
    return None
  hidden = _hidden_state(d, e)
  head = _head_state(d, cell)
  spread = d["spread"][e] if n and e < n else None
  mse_text = "" if mse_ratio is None else (
      f"best valid MSE {best_valid:.5g} against the constant predictor's {chance:.5g} "
      f"(ratio {mse_ratio:.5f})")
  if spread_collapsed:
    start = _first_of_last_run([_collapsed(d, i, t.single_label) for i in range(e + 1)]) or 0
    parts = [f"collapsed to a constant output from epoch {start + 1}: output spread "
             f"{spread:.2g} of the targets'" if spread is not None else
             f"collapsed to a constant output from epoch {start + 1}"]
    if mse_text:
      parts.append(mse_text)
  else:
    parts = [f"collapsed to the constant predictor: {mse_text}, equal within "
             f"{100 * COLLAPSE_MSE_TOLERANCE:g}%",
             f"output spread {spread:.2g} of the targets' at epoch {e + 1}"
             if spread is not None else "output spread not recorded"]
    if not hidden:
      parts.append("hidden layers not recorded")
  if t.single_label:
    parts.append(f"{100 * (d['argmax_minority'][e] or 0):.2f}% of valid examples off the "
                 "most frequent argmax")
  if hidden:
    parts.append(_hidden_summary(d, e) if t.continuous else hidden)
  if head:
    parts.append(head)
  return Diagnosis("collapsed", "; ".join(parts) + ratio_text)


def _structural(record: dict[str, Any], cell: Cell, t: tasks_lib.Task, ceiling: float | None,
                clamp_bound: float | None, hidden: str) -> Diagnosis | None:
  """ceiling (multi-label softmax) or clamped (ReLU head on standardised regression), else
  None: bounds the head cannot pass, computed from the targets."""
  if t.multi_label and cell.head == "softmax" and ceiling is not None:
    return Diagnosis("ceiling", "structural ceiling: softmax outputs sum to 1, so at most one "
                     f"of the {t.num_outputs} labels can be predicted; the best achievable "
                     f"accuracy on this test set is {100 * ceiling:.2f}%, this member reached "
                     f"{_fmt_metric(t, float(record['test']))}")
  bound = record.get("relu_clamp_bound_test", clamp_bound)
  if not (t.continuous and cell.head == "relu" and cell.norm and bound is not None):
    return None
  test = float(record["test"]) if record.get("test") is not None else math.nan
  return Diagnosis("clamped", "structural clamp: a ReLU head cannot output a negative value, "
                   "so on standardised targets it predicts nothing below the training "
                   "targets' mean; the best such prediction (exact above the mean, the mean "
                   "below it) has a test MSE of "
                   f"{bound:.4g} (the mean over test examples of min(t, 0)^2 on the "
                   "standardised targets, in original units), the least any ReLU head can "
                   f"reach; this member reached {_fmt_metric(t, test)} "
                   + (f"({test / bound:.2f} x the bound)" if bound > 0 and math.isfinite(test)
                      else "")
                   + (f"; {hidden}" if hidden else ""))


def _learned(record: dict[str, Any], cell: Cell, t: tasks_lib.Task, best_valid: float,
             at_chance: bool, chance_text: str, reference: float | None, hidden: str,
             head: str, ratio_text: str) -> Diagnosis:
  """The kinds of a member that trained: unbounded_loss, no_learning, underperforming,
  hit_cap or healthy."""
  losses = [v for v in record.get("train_loss") or [] if v is not None and math.isfinite(v)]
  if losses and min(losses) < -1e-3:
    return Diagnosis("unbounded_loss", f"the training loss went below 0 (to {min(losses):.4g}): "
                     f"{cell.loss} is unbounded below on these targets; best valid "
                     f"{_fmt_metric(t, best_valid)}")
  if at_chance:
    return Diagnosis("no_learning", f"best valid {_fmt_metric(t, best_valid)} is at chance "
                     f"level{chance_text}" + (f"; {hidden}" if hidden else "")
                     + (f"; {head}" if head else "") + ratio_text)
  if reference is not None and math.isfinite(reference) and (
      best_valid < reference - UNDERPERFORM_POINTS if t.higher_is_better
      else best_valid > UNDERPERFORM_MSE_RATIO * reference):
    return Diagnosis("underperforming", f"best valid {_fmt_metric(t, best_valid)}, far below "
                     f"the best cell of this run ({_fmt_metric(t, reference)})"
                     + (f"; {hidden}" if hidden else "") + ratio_text)
  floor = loss_floor(cell, t.num_outputs)
  floor_text = "" if floor is None or not losses else (
      f"; train loss {min(losses):.4f} against its floor {floor:.4f}")
  if record["status"] == "hit_cap":
    return Diagnosis("hit_cap", (record.get("status_reason") or "hit the epoch cap") + floor_text)
  return Diagnosis("healthy", f"learned: best valid {_fmt_metric(t, best_valid)}"
                   + (f"; {hidden}" if hidden else "") + floor_text)


def diagnose_task(records: Sequence[dict[str, Any]], task: str, chance: float | None = None,
                  ceiling: float | None = None, clamp_bound: float | None = None
                  ) -> list[Diagnosis]:
  """`classify` for every member record of one task's run, the run's best cell as reference.

  The reference is the best mean best-valid metric over the run's cells (finite values only).
  """
  t = tasks_lib.get_task(task)
  by_cell: dict[str, list[float]] = {}
  for r in records:
    v = r.get("best_valid")
    if v is not None and math.isfinite(float(v)):
      key = _cell_key(r["cell"])
      by_cell.setdefault(key, []).append(float(v))
  means = [float(np.mean(v)) for v in by_cell.values()]
  reference = (max(means) if t.higher_is_better else min(means)) if means else None
  return [classify(r, task, chance, ceiling, reference, clamp_bound) for r in records]


def _cell_key(cell: Any) -> str:
  """The key of a cell given as a Cell or its dict."""
  return (Cell.from_dict(cell) if isinstance(cell, dict) else cell).key


def count_kinds(diagnoses: Sequence[dict | Diagnosis]) -> dict[str, int]:
  """kind -> how many, in KINDS order, kinds with 0 left out."""
  kinds = [d.kind if isinstance(d, Diagnosis) else d.get("kind") for d in diagnoses]
  return {k: kinds.count(k) for k in KINDS if kinds.count(k)}
