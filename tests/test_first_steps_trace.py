"""experiments/first_steps_trace.py: its trace is the engine's training, its measures are right."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxact.engine import layout
from jaxact.engine import program as program_lib
from jaxact.data import tasks
from jaxact.model.cells import Cell

_PATH = Path(__file__).resolve().parents[1] / "experiments" / "first_steps_trace.py"
_spec = importlib.util.spec_from_file_location("first_steps_trace", _PATH)
fst = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fst)

CELL = Cell("multiclass", "sigmoid", "bce")


def _data(n_train=64, n_valid=40, seed=0):
  """Random images and digits: two training batches of 32, so one epoch is two steps."""
  rng = np.random.default_rng(seed)
  x = lambda n: rng.uniform(-1, 1, (n, 28, 28, 1)).astype(np.float32)
  y_train, y_valid = rng.integers(0, 10, n_train), rng.integers(0, 10, n_valid)
  t_train = tasks.make_targets("multiclass", y_train)
  t_valid = jnp.asarray(tasks.make_targets("multiclass", y_valid))
  return program_lib.TaskData(jnp.asarray(x(n_train)), jnp.asarray(t_train), jnp.asarray(x(n_valid)),
                              t_valid, jnp.asarray(x(n_valid)), t_valid,
                              float(t_train.mean()), float(t_train.std()))


@pytest.fixture(scope="module")
def data():
  return _data()


@pytest.mark.parametrize("arm", ["prior_head_bias", "init_he", "sgd_lr0.1_wd0"])
def test_trace_of_one_epoch_is_the_engines_epoch(data, arm):
  run = fst.trace(arm, CELL, seeds=2, steps=2, data=data, probe_x=data.x_valid)
  assert run["max_abs_diff_to_engine_epoch"] is not None
  assert run["max_abs_diff_to_engine_epoch"] < 1e-6
  s = {k: np.asarray(v) for k, v in run["series"].items()}
  for k in fst.SERIES:
    assert s[k].shape == (2, 2) and np.all(np.isfinite(s[k])), k
  np.testing.assert_allclose(s["straightness"][0], 1.0, rtol=1e-6)   # one step: a straight path
  assert np.all(s["straightness"] <= 1 + 1e-6)
  assert np.all((s["delta_common"] >= 0) & (s["delta_common"] <= 1 + 1e-5))
  assert np.all((s["fc1_saturated"] >= 0) & (s["fc1_saturated"] <= 1))


def test_sgd_first_step_is_the_learning_rate_times_the_gradient(data):
  """PyTorch's SGD with momentum and no decay: the first step is -lr x g, so RMS / lr = RMS(g)."""
  run = fst.trace("sgd_lr0.1_wd0", CELL, seeds=2, steps=1, data=data, probe_x=data.x_valid)
  config = program_lib.EngineConfig(optimizer="sgd", learning_rate=0.1, weight_decay=0.0)
  program = program_lib.Program(tasks.get_task("multiclass"), [CELL], config, eval_rows=32)
  groups = ((CELL, 0, 2),)
  state = program.init_state([0, 1], groups)
  perms = jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, 0), 64))(
      state.shuffle_keys)
  idx = np.asarray(perms)[:, :32]
  grads = jax.grad(lambda p: jnp.sum(program.member_losses(
      p, state.stats, data.x_train[idx], data.t_train[idx], jnp.ones((2, 32)),
      data.target_mean, data.target_std, layout.StaticCells(groups))[0]))(state.params)
  rms = np.sqrt(np.mean(np.square(np.asarray(fst.fc1(grads))), axis=(1, 2)))
  np.testing.assert_allclose(run["series"]["step_rms_over_lr"][0], rms, rtol=1e-4)


def test_common_share_equals_per_image_gradients(data):
  """The closed-form deltas against one backward pass per image (a bias shift per image)."""
  program = program_lib.Program(tasks.get_task("multiclass"), [CELL], program_lib.PROTOCOL,
                                eval_rows=32)
  groups = ((CELL, 0, 2),)
  cells = layout.StaticCells(groups)
  state = program.init_state([3, 4], groups)
  x = jnp.stack([data.x_train[:8], data.x_train[8:16]])
  t = jnp.stack([data.t_train[:8], data.t_train[8:16]])
  mask = jnp.ones((2, 8)).at[1, 7].set(0.0)          # a padded row is left out
  args = (data.target_mean, data.target_std)
  got = fst.common_share(program, cells, state.params, state.stats, x, t, mask, *args)

  def image_loss(shift, i):
    p = dict(state.params, hidden={0: dict(state.params["hidden"][0],
                                           bias=state.params["hidden"][0]["bias"] + shift)})
    one = jnp.zeros_like(mask).at[:, i].set(1.0)
    return jnp.sum(program.member_losses(p, state.stats, x, t, one, *args, cells)[0])

  zero = jnp.zeros_like(state.params["hidden"][0]["bias"])
  deltas = np.stack([np.asarray(jax.grad(image_loss)(zero, i)) for i in range(8)], axis=1)
  for m, n in ((0, 8), (1, 7)):
    d = deltas[m, :n]
    want = np.sum(np.mean(d, 0) ** 2) / np.mean(np.sum(d ** 2, -1))
    np.testing.assert_allclose(float(got[m]), want, rtol=1e-3)
  assert 0.0 < float(got[0]) < 1.0


def test_markdown_names_every_arm_and_cell(data):
  runs = [fst.trace(a, CELL, seeds=2, steps=1, data=data, probe_x=data.x_valid)
          for a in ("protocol", "adamw_lr1e-4")]
  text = fst.markdown([fst.summarise(r) for r in runs], "header", seeds=2)
  lines = text.splitlines()
  assert lines[0] == "header" and len(lines) == 4 + len(runs)
  assert lines[4].startswith("| protocol | sigmoid+bce | ") and "adamw_lr1e-4" in lines[5]
