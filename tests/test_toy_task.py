"""A task defined outside tasks.py: one `tasks.Task` is all the engine, the cells and the
chance level need."""

import math

import numpy as np
import pytest

from jaxact.store import diagnostics
from jaxact.engine import engine
from jaxact.engine import program
from jaxact.model import cells as studies
from jaxact.data import tasks
from jaxact.model.cells import Cell
from test_engine import _synthetic

# The digit itself as a continuous target: a regression task that tasks.py does not define.
DIGIT_VALUE = tasks.Task("digit_value", 1, tasks.MSE,
                         lambda d: d.astype(np.float32)[:, None])


@pytest.fixture
def digit_value(monkeypatch):
  monkeypatch.setitem(tasks.REGISTRY, DIGIT_VALUE.name, DIGIT_VALUE)
  return DIGIT_VALUE


def test_the_task_decides_what_its_cells_may_be(digit_value):
  norm = Cell(digit_value.name, "none", "mse", norm=True)
  assert digit_value.continuous and not digit_value.single_label
  assert norm.key == "digit_value/none+mse/norm" and "standardised" in norm.label
  studies.check_cell(norm)
  with pytest.raises(ValueError, match="cce cannot be used"):
    studies.check_cell(Cell(digit_value.name, "none", "cce"))
  t = digit_value.targets(np.array([1, 3]))
  assert t.tolist() == [[1.0], [3.0]]
  assert diagnostics.chance_level(digit_value.name, t) == pytest.approx(1.0)   # the variance


def test_the_engine_trains_a_toy_task(digit_value):
  data = _synthetic(digit_value.name, n_train=64, n_valid=32, n_test=32)
  cells = [Cell(digit_value.name, "none", "mse", norm=True),
           Cell(digit_value.name, "relu", "mse")]
  eng = engine.Engine(digit_value.name, [(c, 0) for c in cells],
                      program.EngineConfig(max_epochs=1, patience=2), progress=lambda _: None)
  outcome = eng.run(data)
  assert outcome.epochs == 1 and outcome.histories.train_loss.shape == (1, 2)
  for r in outcome.members:
    assert r.status == "hit_cap" and r.epochs_trained == 1
    assert math.isfinite(r.train_loss[0]) and r.valid_metric == [r.best_valid]
    assert r.best_valid >= 0.0 and r.test >= 0.0           # an MSE: lower is better
  # The valid metric is the task's own: the MSE against the digits, not an accuracy.
  chance = digit_value.chance_level(np.asarray(data.t_valid))
  assert chance > 1.0 and any(r.best_valid > 1.0 for r in outcome.members)
