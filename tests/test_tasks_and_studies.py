"""Targets of every task for every digit, metrics, and the study grids / flag selection."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxact.model import cells as studies
from jaxact.data import tasks
from jaxact.model.cells import Cell

DIGITS = np.arange(10)


def test_regression_targets_are_stroke_plus_hole_counts():
  # PROTOCOL section 4: 1 -> 1; 0, 2, 3, 7 -> 2; 5, 6, 9 -> 3; 8 -> 4; 4 -> 6.
  expected = {0: 2, 1: 1, 2: 2, 3: 2, 4: 6, 5: 3, 6: 3, 7: 2, 8: 4, 9: 3}
  t = tasks.make_targets("regression", DIGITS)
  assert t.shape == (10, 1) and t.dtype == np.float32
  assert {d: t[d, 0] for d in DIGITS} == expected


def test_probability_and_binary_targets_are_curved_digits():
  curved = {0, 3, 6, 8, 9}
  p = tasks.make_targets("probability", DIGITS)
  b = tasks.make_targets("binary", DIGITS)
  assert p.shape == (10, 1) and b.shape == (10, 2)
  for d in DIGITS:
    assert p[d, 0] == (1.0 if d in curved else 0.0)
    np.testing.assert_array_equal(b[d], [0, 1] if d in curved else [1, 0])


def test_multiclass_targets_are_one_hot():
  np.testing.assert_array_equal(tasks.make_targets("multiclass", DIGITS), np.eye(10))


def test_multilabel_targets_even_prime_curved_square():
  t = tasks.make_targets("multilabel", DIGITS)
  sets = [{0, 2, 4, 6, 8}, {2, 3, 5, 7}, {0, 3, 6, 8, 9}, {0, 1, 4, 9}]
  for d in DIGITS:
    np.testing.assert_array_equal(t[d], [float(d in s) for s in sets])


def test_task_widths():
  assert [tasks.get_task(t).num_outputs for t in tasks.TASKS] == [1, 1, 2, 10, 4]
  with pytest.raises(ValueError, match="unknown task"):
    tasks.get_task("ranking")


def test_metrics_by_hand():
  # probability: round half to even, 0.5 -> 0; outside [-0.5, 1.5) simply wrong.
  pred = jnp.asarray([[0.5], [0.51], [1.7], [-0.2]])
  tgt = jnp.asarray([[0.0], [1.0], [1.0], [0.0]])
  np.testing.assert_array_equal(tasks.per_example_score("probability", pred, tgt), [1, 1, 0, 1])
  # argmax takes the first index on ties.
  pred = jnp.asarray([[1.0, 1.0], [0.2, 0.9]])
  tgt = jnp.asarray([[1.0, 0.0], [1.0, 0.0]])
  np.testing.assert_array_equal(tasks.per_example_score("binary", pred, tgt), [1, 0])
  # multilabel: element-wise accuracy of round(output).
  pred = jnp.asarray([[0.9, 0.1, 0.6, 0.4]])
  tgt = jnp.asarray([[1.0, 1.0, 1.0, 1.0]])
  np.testing.assert_allclose(tasks.per_example_score("multilabel", pred, tgt), [0.5])
  # regression: squared error in original units.
  np.testing.assert_allclose(
      tasks.per_example_score("regression", jnp.asarray([[3.0]]), jnp.asarray([[1.0]])), [4.0])
  assert np.isinf(tasks.per_example_score("regression", jnp.asarray([[np.inf]]),
                                          jnp.asarray([[1.0]]))[0])


def test_grid_sizes_match_protocol():
  act = studies.activation_grid()
  assert {t: len(r) for t, r in act.items()} == {
      "regression": 6, "probability": 3, "binary": 3, "multiclass": 3, "multilabel": 3}
  loss = studies.loss_grid()
  assert {t: len(r) for t, r in loss.items()} == {
      "regression": 5, "probability": 8, "binary": 6, "multiclass": 6, "multilabel": 4}
  for grid in (act, loss):
    for rows in grid.values():
      assert sum(r.recommended for r in rows) >= 1
      for r in rows:
        studies.check_cell(r.cell)


def test_flags_select_matching_cells_plus_reference():
  cells = studies.select_cells("activation", "binary", head="sigmoid")
  assert cells == {"binary": [Cell("binary", "softmax", "cce"), Cell("binary", "sigmoid", "bce"),
                              Cell("binary", "sigmoid", "cce")]}


def test_off_grid_cell_runs_with_reference():
  cells = studies.select_cells("activation", "multiclass", head="relu", loss="mae")
  assert cells["multiclass"] == [Cell("multiclass", "softmax", "cce"),
                                 Cell("multiclass", "relu", "mae")]


def test_all_studies_share_cells_once():
  both = studies.select_cells("all", "regression")["regression"]
  assert len(both) == len(set(both)) == 6 + 5 - 1  # none + mse standardised is in both grids


def test_conventions_multiply_cells():
  cells = studies.select_cells("activation", "binary", conventions=("torch", "logits"))["binary"]
  assert len(cells) == 6 and {c.convention for c in cells} == {"torch", "logits"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(study="nope", task="binary"), "unknown study"),
    (dict(study="activation", task="nope"), "unknown task"),
    (dict(study="activation", task="binary", head="tanh"), "unknown head"),
    (dict(study="activation", task="binary", loss="hinge"), "unknown loss"),
    (dict(study="activation", task="regression", head="none", loss="cce"), "cce cannot be used"),
    (dict(study="activation", task="binary", norm=True), "regression task only"),
    (dict(study="activation", task="binary", head="relu"), "give both --head and --loss"),
])
def test_impossible_requests_are_refused_with_a_reason(kwargs, match):
  with pytest.raises(ValueError, match=match):
    studies.select_cells(**kwargs)


def test_sigmoid_method_needs_a_sigmoid_head():
  with pytest.raises(ValueError, match="needs --head=sigmoid"):
    studies.check_cell(Cell("regression", "none", "mse", sigmoid_method=True))


def test_cell_keys_are_unique_and_stable():
  keys = [r.cell.key for g in (studies.activation_grid(), studies.loss_grid())
          for rows in g.values() for r in rows]
  assert "regression/sigmoid+mse/norm/sigmoid_method" in keys
  assert Cell("binary", "softmax", "cce", convention="logits").key == "binary/softmax+cce/logits"
  assert Cell.from_dict(Cell("binary", "sigmoid", "bce").to_dict()) == Cell("binary", "sigmoid", "bce")


def test_cells_identical_in_both_conventions_are_trained_once():
  cells = studies.select_cells("loss", "probability", conventions=("torch", "logits"))
  logits = [c for c in cells["probability"] if c.convention == "logits"]
  # mse / mae / rmse and head "none" compute the same loss in both conventions.
  assert [(c.head, c.loss) for c in logits] == [("sigmoid", "bce"), ("softmax", "cce")]
  only_logits = studies.select_cells("loss", "probability", conventions=("logits",))
  assert len(only_logits["probability"]) == 8
