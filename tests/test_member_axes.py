"""Splits and training options as member axes: each member's own split (--split=per_seed) and
training arms (comma lists of --learning_rate, --weight_decay, --eps, --head_bias_init), and
in "loop" mode a member equal, bit for bit, to its run alone."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from jaxact.study import config as config_lib
from jaxact.data import mnist as data_lib
from jaxact.engine import engine
from jaxact.model import cells as studies
from jaxact.data import tasks
from jaxact.study import train
from jaxact.engine import program


@pytest.fixture(scope="module")
def pool(mnist_dir):
  mnist, source = data_lib.load_mnist(str(mnist_dir))
  return data_lib.make_pool(mnist, source)


def test_pool_rows_are_the_fixed_split(pool):
  """A member's rows of the pool hold make_split's examples, with its fingerprint."""
  for seed in (0, 7):
    split = data_lib.make_split(pool.mnist, seed, source=pool.source)
    train_rows, valid_rows = pool.split_rows(seed)
    assert train_rows.shape == (data_lib.TRAIN_SIZE,) and valid_rows.shape == (data_lib.VALID_SIZE,)
    np.testing.assert_array_equal(pool.x[train_rows], split.x_train)
    np.testing.assert_array_equal(pool.y[valid_rows], split.y_valid)
    assert not set(train_rows) & set(valid_rows)
    assert pool.fingerprint([seed]) == split.fingerprint
  assert pool.fingerprint([0, 7]) not in (pool.fingerprint([0]), pool.fingerprint([7, 0]))
  per_seed = data_lib.RunData(pool, "per_seed", 0, (3, 4))
  fixed = data_lib.RunData(pool, "fixed", 5, (3, 4))
  assert [per_seed.split_seed_of(s) for s in (3, 4)] == [3, 4]
  assert [fixed.split_seed_of(s) for s in (3, 4)] == [5, 5]
  assert fixed.fingerprint == pool.fingerprint([5])


def test_member_equals_its_run_alone(pool):
  """Loop mode: a member of a grid with its own split and a training arm equals, bit for bit,
  the run of its cell alone on the fixed split of its seed with that arm's training; the
  standardised targets use the member's own train split."""
  task = "regression"
  cell = studies.Cell(task, "none", "mse", norm=True)
  arm = dataclasses.replace(cell, learning_rate=3e-4, head_bias_init="prior")
  cfg = program.EngineConfig(max_epochs=1)
  loop = program.ExecutionConfig(member_mode="loop")
  data = program.TaskData.from_pool(pool, task)
  grid = engine.Engine(task, [(c, s) for c in (cell, arm) for s in (3, 5)], cfg, loop,
                       splits=pool.split_rows)
  state = grid.init_state(data)
  mean = np.asarray(state["rows"].target_mean)
  expected = [np.mean(tasks.make_targets(task, data_lib.make_split(pool.mnist, s).y_train))
              for s in (3, 5)]
  np.testing.assert_array_equal(mean, np.asarray(expected * 2, np.float32))
  assert mean[0] != mean[1]
  results = {(r.cell, r.seed): r for r in grid.run(data).members}
  alone = [
      (cell, 5, engine.Engine(task, [(cell, 5)], cfg, loop, splits=lambda _: pool.split_rows(5))),
      (arm, 3, engine.Engine(task, [(cell, 3)],
                             dataclasses.replace(cfg, learning_rate=3e-4, head_bias_init="prior"),
                             loop, splits=lambda _: pool.split_rows(3))),
  ]
  for c, seed, eng in alone:
    (one,) = eng.run(data).members
    member = results[(c, seed)]
    assert member.train_loss == one.train_loss, c.key
    assert member.valid_metric == one.valid_metric, c.key
    assert member.test == one.test and np.isfinite(one.test), c.key
  # The arm is a real change: the same seed and split under the other arm trains otherwise.
  assert results[(arm, 3)].train_loss != results[(cell, 3)].train_loss


def test_arms_are_cells_of_one_plan():
  """Several values of a training option: each cell once per arm, the reference arm (the
  engine's value) keeping the cells' plain keys; the arms are part of the run's identity."""
  config = config_lib.RunConfig(
      study="activation", task="binary", seeds=2,
      engine=program.EngineConfig(learning_rate=1e-3),
      arms=studies.TrainingChoice(learning_rate=(1e-3, 3e-4), head_bias_init=("torch", "prior")))
  members = train.plan(config)["binary"]
  cells = list(dict.fromkeys(c for c, _ in members))
  plain = studies.select_cells("activation", "binary")["binary"]
  assert len(cells) == 4 * len(plain) and len(members) == 2 * len(cells)
  keys = {c.key for c in cells}
  for c in plain:
    assert {c.key, c.key + "/lr=0.0003", c.key + "/bias=prior",
            c.key + "/lr=0.0003/bias=prior"} <= keys
  arm = next(c for c in cells if c.learning_rate == 3e-4 and c.head_bias_init == "prior")
  assert "lr 0.0003" in arm.label and "prior head bias" in arm.label
  assert engine.program_lib.cell_config(config.engine, arm).learning_rate == 3e-4
  identity = config_lib.run_identity(config)
  assert identity["arms"]["learning_rate"] == [1e-3, 3e-4] and identity["split"] == "per_seed"
  assert config_lib.run_identity(dataclasses.replace(config, arms=studies.TrainingChoice())) != (
      identity)
  # A run.json from before the split existed was trained on the fixed split.
  assert config_lib.DEFAULT_IDENTITY["split"] == "fixed"


@pytest.mark.parametrize("kwargs, words", [
    (dict(split="random"), "unknown --split"),
    (dict(split_seed=3), "--split=fixed"),
    (dict(arms=studies.TrainingChoice(learning_rate=(1e-3, -1.0))), "--learning_rate"),
    (dict(arms=studies.TrainingChoice(head_bias_init=("torch", "zeros"))), "--head_bias_init"),
    (dict(arms=studies.TrainingChoice(eps=(1e-8, 1e-3)),
          engine=program.EngineConfig(optimizer="sgd")), "--eps is AdamW's"),
])
def test_bad_split_or_arm_is_named(kwargs, words):
  with pytest.raises(config_lib.UserError, match=words):
    config_lib.validate(config_lib.RunConfig(**kwargs))


def test_cli_bad_arm_value_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "jaxact.cli.main", "--learning_rate=1e-3,fast",
       f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr
  assert "--learning_rate takes one or more (comma-separated) numbers" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()


def test_listed_arms_change_one_thing_each():
  """--arms: one arm per entry, each changing what it names against the run's training."""
  config = config_lib.RunConfig(
      study="activation", task="multiclass", head="sigmoid", loss="bce", seeds=1,
      arms=studies.TrainingChoice(listed=("protocol", "lr=0.0003", "lr=0.1+wd=0", "init=he",
                                          "hidden=relu", "bias=prior", "wd=0.01")))
  cells = [c for c, _ in train.plan(config)["multiclass"] if c.loss == "bce"]
  base = studies.Cell("multiclass", "sigmoid", "bce")
  assert cells == [
      base, dataclasses.replace(base, learning_rate=3e-4),
      dataclasses.replace(base, learning_rate=0.1, weight_decay=0.0),
      dataclasses.replace(base, init="he"), dataclasses.replace(base, hidden="relu"),
      dataclasses.replace(base, head_bias_init="prior")]   # wd=0.01 is the protocol's: no arm
  assert engine.program_lib.branch_cell(cells[3]) == base   # the init changes the weights only


@pytest.mark.parametrize("arms, words", [
    (("lr=fast",), "lr takes a number"),
    (("momentum=0.5",), "NAME=VALUE with NAME one of"),
    (("init=zeros",), "unknown --init"),
    (("lr=-1",), "--learning_rate must be a positive number"),
])
def test_bad_listed_arm_is_named(arms, words):
  with pytest.raises(config_lib.UserError, match=words):
    config_lib.validate(config_lib.RunConfig(arms=studies.TrainingChoice(listed=arms)))


def test_listed_and_crossed_arms_do_not_mix():
  with pytest.raises(config_lib.UserError, match="give one of the two"):
    config_lib.validate(config_lib.RunConfig(arms=studies.TrainingChoice(
        listed=("protocol", "init=he"), learning_rate=(1e-3, 3e-4))))
