"""The training options beyond PROTOCOL: --optimizer, --learning_rate, --momentum,
--weight_decay, --batch_size and --head_bias_init."""

import dataclasses
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxact.engine import labels as labels_lib
from jaxact.study import config as config_lib
from jaxact.engine import engine
from jaxact.study import options
from jaxact.model import cells as studies
from jaxact.data import tasks
from jaxact.store import provenance
from jaxact.study import train
from jaxact.store import workdir as workdir_lib
from jaxact.model.cells import Cell
from jaxact.engine import program

from test_engine import _by, _synthetic   # pylint: disable=g-bad-import-order


def _tree(seed):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"w": jax.random.normal(k1, (3, 4)), "b": jax.random.normal(k2, (4,))}


def test_adamw_is_optax_adamw_bitwise():
  cfg = program.EngineConfig()
  ours, ref = program.make_optimizer(cfg), optax.adamw(1e-3, b1=0.9, b2=0.999, eps=1e-8,
                                                        weight_decay=0.01)
  params = _tree(0)
  s1, s2 = ours.init(params), ref.init(params)
  for step in range(3):
    g = _tree(step + 1)
    u1, s1 = ours.update(g, s1, params)
    u2, s2 = ref.update(g, s2, params)
    chex.assert_trees_all_equal(u1, u2)


def test_sgd_is_pytorch_sgd_with_momentum_and_l2():
  """v = mu v + (g + wd w); w -= lr v (torch.optim.SGD, dampening 0), written out by hand."""
  lr, mu, wd = 0.05, 0.9, 0.01
  tx = program.make_optimizer(program.EngineConfig(optimizer="sgd", learning_rate=lr,
                                                 momentum=mu, weight_decay=wd))
  w = np.array([1.0, -2.0, 0.5])
  params = jnp.asarray(w, jnp.float32)
  state = tx.init(params)
  v = np.zeros(3)
  for step in range(4):
    g = np.array([0.3, -0.1, 2.0]) * (step + 1)
    d = g + wd * w
    v = mu * v + d
    w = w - lr * v
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(params), w, rtol=1e-6, atol=1e-7)


def test_sgd_matches_torch_optim_sgd():
  torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
  lr, mu, wd = 0.1, 0.9, 0.01
  w0 = np.array([[0.2, -0.4], [1.5, 0.3]], np.float32)
  tw = torch.nn.Parameter(torch.tensor(w0))
  opt = torch.optim.SGD([tw], lr=lr, momentum=mu, weight_decay=wd)
  tx = program.make_optimizer(program.EngineConfig(optimizer="sgd", learning_rate=lr,
                                                 momentum=mu, weight_decay=wd))
  params = jnp.asarray(w0)
  state = tx.init(params)
  rng = np.random.default_rng(0)
  for _ in range(5):
    g = rng.normal(size=w0.shape).astype(np.float32)
    opt.zero_grad()
    tw.grad = torch.tensor(g)
    opt.step()
    updates, state = tx.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(np.asarray(params), tw.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_unknown_optimizer_is_refused():
  with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
    program.make_optimizer(program.EngineConfig(optimizer="adam"))


@pytest.mark.parametrize("head, loss, link", [
    ("sigmoid", "bce", "logit"), ("sigmoid", "mse", "logit"), ("softmax", "cce", "log"),
    ("softmax", "mse", "log"), ("none", "cce", "log"), ("none", "bce_logits", "logit"),
    ("none", "mse", "identity")])
def test_prior_output_bias_closed_form(head, loss, link):
  y = np.array([0, 0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9])
  t = tasks.make_targets("multiclass", y)
  p = np.bincount(y, minlength=10) / len(y)
  bias = program.prior_output_bias(Cell("multiclass", head, loss), t, 0.0, 1.0)
  want = {"logit": np.log(p / (1 - p)), "log": np.log(p), "identity": p}[link]
  np.testing.assert_allclose(bias, want, rtol=1e-5)
  if link == "logit":
    np.testing.assert_allclose(jax.nn.sigmoid(bias), p, rtol=1e-5)
  if link == "log":
    np.testing.assert_allclose(jax.nn.softmax(bias), p, rtol=1e-5)


def test_prior_output_bias_of_standardised_regression_is_zero():
  t = np.arange(10, dtype=np.float32)[:, None]
  cell = Cell("regression", "none", "mse", norm=True)
  bias = program.prior_output_bias(cell, t, float(t.mean()), float(t.std()))
  np.testing.assert_allclose(bias, [0.0], atol=1e-6)


def test_prior_head_bias_sets_only_the_output_bias():
  data = _synthetic("multiclass")
  cells = [Cell("multiclass", "sigmoid", "bce"), Cell("multiclass", "softmax", "cce")]
  members = [(c, s) for c in cells for s in (0, 1)]
  cfg = program.EngineConfig(max_epochs=1, head_bias_init="prior")
  prior = engine.Engine("multiclass", members, cfg, progress=lambda _: None)
  torch_init = engine.Engine("multiclass", members, dataclasses.replace(cfg, head_bias_init="torch"),
                             progress=lambda _: None)
  with pytest.raises(ValueError, match="needs the task's data"):
    prior.init_state()
  a, b = prior.init_state(data)["params"], torch_init.init_state()["params"]
  t = np.asarray(data.t_train)
  for i, (cell, _) in enumerate(prior.members):
    np.testing.assert_allclose(np.asarray(a["out"]["bias"][i]),
                               program.prior_output_bias(cell, t, 0.0, 1.0), rtol=1e-6)
  a["out"]["bias"] = b["out"]["bias"]
  chex.assert_trees_all_equal(a, b)
  # The template of checkpoints does not need the data.
  chex.assert_trees_all_equal_shapes_and_dtypes(prior.state_template(), prior.init_state(data))


@pytest.mark.parametrize("options", [
    dict(optimizer="sgd", learning_rate=0.05),
    dict(head_bias_init="prior", batch_size=16, weight_decay=0.0, learning_rate=3e-4),
    dict(eps=1e-3)])
def test_member_k_equals_single_run_with_seed_k(options):
  data = _synthetic("multiclass")
  cfg = program.EngineConfig(max_epochs=2, patience=2, **options)
  cells = [Cell("multiclass", "softmax", "cce"), Cell("multiclass", "sigmoid", "bce")]
  grid = engine.Engine("multiclass", [(c, s) for c in cells for s in (0, 1, 2)], cfg,
                       progress=lambda _: None)
  results = grid.run(data).members
  for cell in cells:
    (alone,) = engine.Engine("multiclass", [(cell, 2)], cfg,
                             progress=lambda _: None).run(data).members
    member = _by(results, cell, 2)
    chex.assert_trees_all_close((alone.train_loss, alone.valid_metric, alone.test),
                                (member.train_loss, member.valid_metric, member.test),
                                rtol=1e-5, atol=1e-6)
    assert all(math.isfinite(v) for v in member.train_loss)


def test_options_change_training():
  data = _synthetic("multiclass")
  cell = studies.recommended_cell("multiclass")
  base = program.EngineConfig(max_epochs=1, patience=2)
  def loss(**kw):
    (r,) = engine.Engine("multiclass", [(cell, 0)], dataclasses.replace(base, **kw),
                         progress=lambda _: None).run(data).members
    return r.train_loss[0]
  reference = loss()
  for kw in (dict(optimizer="sgd"), dict(learning_rate=1e-4), dict(batch_size=16),
             dict(weight_decay=0.5), dict(head_bias_init="prior"), dict(eps=1e-2)):
    assert loss(**kw) != reference, kw


def test_training_label_names_what_differs_from_the_protocol():
  assert labels_lib.training_label(program.EngineConfig()) == ""
  cfg = program.EngineConfig(optimizer="sgd", learning_rate=0.01, head_bias_init="prior",
                             batch_size=64, weight_decay=0.0)
  assert labels_lib.training_label(cfg) == (
      "sgd (momentum 0.9), lr 0.01, weight decay 0, batch 64, prior head bias")
  cell = Cell("multiclass", "sigmoid", "bce")
  assert labels_lib.cell_label(cell, cfg) == "sigmoid + bce [" + labels_lib.training_label(cfg) + "]"
  assert labels_lib.cell_label(cell, program.EngineConfig()) == cell.label
  record = labels_lib.training_record(cfg)
  assert record["optimizer"] == "sgd" and record["momentum"] == 0.9
  assert labels_lib.training_record(program.EngineConfig())["momentum"] is None
  assert labels_lib.training_label(program.EngineConfig(eps=1e-3, weight_decay=0.0)) == (
      "weight decay 0, eps 0.001")
  assert labels_lib.training_record(program.EngineConfig(eps=1e-3))["eps"] == 1e-3


def test_large_eps_makes_adamw_steps_proportional_to_small_gradients():
  # Closed form of the first AdamW step (bias-corrected m = g, v = g^2):
  # -lr * g / (|g| + eps); with eps >> |g| it is about -lr * g / eps, as in SGD.
  cfg = program.EngineConfig(eps=1.0, weight_decay=0.0)
  g = {"w": jnp.array([1e-4, -2e-4, 3e-3])}
  params = {"w": jnp.zeros(3)}
  update, _ = program.make_optimizer(cfg).update(g, program.make_optimizer(cfg).init(params), params)
  expected = -1e-3 * g["w"] / (jnp.abs(g["w"]) + 1.0)
  chex.assert_trees_all_close(update["w"], expected, rtol=1e-6)
  small = program.make_optimizer(program.EngineConfig(weight_decay=0.0))
  update, _ = small.update(g, small.init(params), params)
  chex.assert_trees_all_close(update["w"], -1e-3 * jnp.sign(g["w"]), rtol=1e-3)


def test_options_are_part_of_a_runs_identity(tmp_path):
  old = train.RunConfig(task="binary", seeds=1)
  wd = str(tmp_path)
  (tmp_path / "results").mkdir()
  (tmp_path / "results" / "binary.json").write_text("{}")
  # A run.json written before these options existed resumes under the defaults...
  config = old.to_dict()
  for key in ("optimizer", "momentum", "head_bias_init"):
    del config["engine"][key]
  (tmp_path / "run.json").write_text(json.dumps({"config": config}))
  assert config_lib.check_workdir_config(wd, old) is not None
  # ...and each option, changed, is another run.
  for kw in (dict(optimizer="sgd"), dict(learning_rate=0.01), dict(weight_decay=0.0),
             dict(batch_size=64), dict(head_bias_init="prior"), dict(eps=1e-3)):
    new = dataclasses.replace(old, engine=dataclasses.replace(old.engine, **kw))
    assert train.run_identity(new) != train.run_identity(old)
    with pytest.raises(train.UserError, match=f"{next(iter(kw))}: "):
      config_lib.check_workdir_config(wd, new)
  assert "optimizer" in options.config_identity(old.to_dict())


def test_restart_removes_results_and_every_figure_kind(tmp_path):
  (tmp_path / "results").mkdir()
  made = ["results/binary.json", "report.md", "curves_binary.png", "heatmap_multiclass.png",
          "heatmap_depth_multiclass_logits.png", "gradients_depth_multiclass_torch.png",
          "saturation_multiclass.png"]
  kept = ["run.json", "notes.md", "results/README"]
  for name in made + kept:
    (tmp_path / name).write_text("x")
  workdir_lib.remove_run_outputs(str(tmp_path))
  assert [n for n in made if (tmp_path / n).exists()] == []
  assert all((tmp_path / n).exists() for n in kept)


def test_package_versions_are_those_installed():
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  versions = provenance.package_versions()
  assert versions["jax"] == jax.__version__
  assert versions["flax"] == metadata.version("flax")
  assert set(versions) == set(provenance.VERSIONED_PACKAGES)
