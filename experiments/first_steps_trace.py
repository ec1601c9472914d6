r"""Traces the first optimizer steps of a cell, one step at a time: how fc1 is driven to saturate.

The collapse interventions (experiments/collapse_interventions/) say *whether* a change prevents
the multi-class sigmoid-head collapse; this trace shows *how* the first epoch differs between
them. For each arm (a training configuration named as in collapse_interventions/) and cell it
trains seeds 0..n-1 from the engine's own initial weights and batch order
(`Program.init_state`, the epoch's permutation), with the engine's loss
(`Program.member_losses`) and optimizer (`Program.tx`), one jitted step at a time, and records
after every step, per member:

- fc1_mean_abs_pre: fc1's mean |pre-activation| on the probe images (the first --probe valid
  images);
- fc1_saturated: the share of fc1's units saturated on them (the engine's definition,
  probes.py: derivative below 1% of its maximum on at least 99% of the images);
- step_rms_over_lr: the RMS of the step of fc1's weights, in units of the learning rate
  (AdamW's first step is lr x sign(gradient): exactly 1 for every weight with a gradient);
- straightness: |sum of fc1's steps so far| / sum of |steps| (1: every step in one direction;
  about 1/sqrt(k) after k steps in independent random directions);
- delta_common: how much of the gradient at fc1's pre-activations is the same for every image
  of the batch: |mean_i delta_i|^2 / mean_i |delta_i|^2 (1: input-independent, 0: no common
  part), delta_i = d loss_i / d a_i;
- out_mean: the head's mean output on the probe images (targets' mean: 0.1 per class).

When --steps is one epoch, it checks that the traced parameters equal `Program.epoch`'s after
its first epoch (float rounding apart), so the trace is the engine's training.

Usage (from the repository root):
  python experiments/first_steps_trace.py --data_dir=../shared/data/mnist \
      --out=experiments/collapse_interventions/first_steps_trace.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags

from jaxact.data import mnist as data_lib
from jaxact.engine import layout
from jaxact.model import losses as losses_lib
from jaxact.model import network as model_lib
from jaxact.engine import probes as probes_lib
from jaxact.engine import program as program_lib
from jaxact.engine import stacked as stacked_lib
from jaxact.store import provenance
from jaxact.data import tasks as tasks_lib
from jaxact.model.cells import Cell

# The arms of experiments/collapse_interventions/ (the same names): changes to PROTOCOL's
# training (EngineConfig fields) and to the cell's network (Cell fields).
ARMS = {
    "protocol": ({}, {}),
    "prior_head_bias": ({"head_bias_init": "prior"}, {}),
    "adamw_lr1e-4": ({"learning_rate": 1e-4}, {}),
    "adamw_lr3e-4": ({"learning_rate": 3e-4}, {}),
    "adamw_lr3e-3": ({"learning_rate": 3e-3}, {}),
    "adamw_eps1e-3": ({"eps": 1e-3}, {}),
    "sgd_lr0.1_wd0": ({"optimizer": "sgd", "learning_rate": 0.1, "weight_decay": 0.0}, {}),
    "init_he": ({}, {"init": "he"}),
    "init_xavier": ({}, {"init": "xavier"}),
    "init_flax": ({}, {"init": "flax"}),
}
SERIES = ("fc1_mean_abs_pre", "fc1_saturated", "step_rms_over_lr", "straightness",
          "delta_common", "out_mean", "train_loss")


def define_flags() -> None:
  """The script's flags (defined only when it runs as a script: tests import the module)."""
  flags.DEFINE_list("arms", ["protocol", "prior_head_bias", "adamw_lr1e-4", "adamw_eps1e-3",
                             "sgd_lr0.1_wd0"], f"from {list(ARMS)}")
  flags.DEFINE_list("cells", ["sigmoid+bce", "sigmoid+mse", "softmax+cce"],
                    "multi-class head+loss cells (torch convention, PROTOCOL's network)")
  flags.DEFINE_integer("seeds", 10, "members per arm and cell: seeds 0..n-1")
  flags.DEFINE_integer("steps", 63, "optimizer steps (63 = one epoch of 2,000 images)")
  flags.DEFINE_integer("probe", 256, "valid images the fc1 statistics are taken on")
  flags.DEFINE_string("data_dir", None, "MNIST IDX directory")
  flags.DEFINE_string("out", None, "write the traces and the summary as JSON here; with it, a "
                      "table (.md) and a figure (.png) of the same name")


def parse_cell(text: str) -> Cell:
  head, loss = text.split("+")
  return Cell("multiclass", head, loss)


def fc1(tree):
  return tree["hidden"][0]["kernel"]


def common_share(program: program_lib.Program, cells: layout.StaticCells, params, stats,
                 x: jax.Array, t: jax.Array, mask: jax.Array, mean: float, std: float
                 ) -> jax.Array:
  """(M,) |mean_i delta_i|^2 / mean_i |delta_i|^2 over a batch's real images, per member.

  delta_i = d loss_i / d a_i at fc1's pre-activations a_i = f_i W + b. The gradient at the
  features is g_i = delta_i W^T, and W (1024 x 64) has full column rank, so
  delta_i = g_i W (W^T W)^-1: one backward pass instead of one per image.
  x (M, B, 28, 28, 1), t (M, B, C), mask (M, B).
  """
  cell = cells.groups[0][0]
  fn = program.loss_fns[cell]
  tt = stacked_lib.train_targets(cell, t, mean, std)

  def summed(feats):
    z, _, _ = program.network.dense(cells.groups, params, stats, feats, mask, train=True)
    return jnp.sum(jax.vmap(fn.per_example)(z, tt) * mask)

  g = jax.grad(summed)(program.network.trunk(params, stats, x))                 # (M, B, 1024)
  w = fc1(params)                                                        # (M, 1024, 64)
  delta = jnp.einsum("mbf,mfk,mkj->mbj", g, w, jnp.linalg.inv(jnp.swapaxes(w, 1, 2) @ w))
  n = jnp.sum(mask, axis=1)
  mean_delta = jnp.sum(delta * mask[..., None], axis=1) / n[:, None]      # (M, 64)
  mean_sq = jnp.sum(jnp.sum(jnp.square(delta), -1) * mask, axis=1) / n
  return jnp.sum(jnp.square(mean_delta), -1) / jnp.maximum(mean_sq, 1e-30)


def make_trace_step(program: program_lib.Program, cells: layout.StaticCells,
                    data: program_lib.TaskData, probe_x: jax.Array, hidden: str):
  """The jitted step of the trace: the engine's update of every member, and its measurements."""
  mean, std = data.target_mean, data.target_std
  max_deriv = model_lib.max_derivative(hidden)

  def losses(params, stats, x, t, mask):
    return program.member_losses(params, stats, x, t, mask, mean, std, cells)[0]    # (M,)

  def fc1_pre_and_out(params, stats, x):
    feats = program.network.trunk(params, stats, x)
    z, pre, _ = program.network.dense(cells.groups, params, stats, feats, train=False)
    return pre[:, 0], z                                            # (M, B, 64), (M, B, C)

  @jax.jit
  def step(params, stats, opt_state, path, path_len, x, t, mask):
    def total(p):
      l = losses(p, stats, x, t, mask)
      return jnp.sum(l), l
    grads, loss = jax.grad(total, has_aux=True)(params)
    updates, opt_state = jax.vmap(program.tx.update)(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    u = fc1(new) - fc1(params)                                       # (M, 1024, 64)
    u_norm = jnp.sqrt(jnp.sum(jnp.square(u), axis=(1, 2)))
    path, path_len = path + u, path_len + u_norm
    pre, z = fc1_pre_and_out(new, stats, probe_x)
    deriv = model_lib.activation_derivative(hidden, pre) / max_deriv
    saturated = jnp.mean(jnp.mean(deriv < probes_lib.SATURATION_RATIO, axis=1)
                         >= probes_lib.SATURATION_SHARE, axis=-1)
    metrics = {
        "fc1_mean_abs_pre": jnp.mean(jnp.abs(pre), axis=(1, 2)),
        "fc1_saturated": saturated,
        "step_rms_over_lr": u_norm / jnp.sqrt(u[0].size) / program.config.learning_rate,
        "straightness": jnp.sqrt(jnp.sum(jnp.square(path), axis=(1, 2))) / path_len,
        "delta_common": common_share(program, cells, params, stats, x, t, mask, mean, std),
        "out_mean": jnp.mean(losses_lib.apply_head(cells.groups[0][0].head, z), axis=(1, 2)),
        "train_loss": loss,
    }
    return new, opt_state, path, path_len, metrics

  @jax.jit
  def mean_abs_pre(params, stats):
    return jnp.mean(jnp.abs(fc1_pre_and_out(params, stats, probe_x)[0]), axis=(1, 2))

  return step, mean_abs_pre


def trace(arm: str, cell: Cell, seeds: int, steps: int, data: program_lib.TaskData,
          probe_x: jax.Array) -> dict:
  """The per-step series of one arm and cell: name -> (steps, seeds) lists."""
  config_changes, cell_changes = ARMS[arm]
  config = dataclasses.replace(program_lib.PROTOCOL, **config_changes)
  cell = dataclasses.replace(cell, **cell_changes)
  task = tasks_lib.get_task(cell.task)
  program = program_lib.Program(task, [cell], config, eval_rows=32)
  groups = ((cell, 0, seeds),)
  cells = layout.StaticCells(groups)
  bias = program.prior_bias([cell] * seeds, data) if config.head_bias_init == "prior" else None
  state = program.init_state(list(range(seeds)), groups, bias)
  n = data.x_train.shape[0]
  b = config.batch_size
  nb = -(-n // b)
  # The engine's batches of epoch 0 (Program.epoch).
  perms = jax.vmap(lambda k: jax.random.permutation(jax.random.fold_in(k, 0), n))(
      state.shuffle_keys)
  perms = np.pad(np.asarray(perms), ((0, 0), (0, nb * b - n)))
  masks = np.pad(np.ones((seeds, n), np.float32), ((0, 0), (0, nb * b - n)))
  step, mean_abs_pre = make_trace_step(program, cells, data, probe_x, cell.hidden)
  params, opt_state = state.params, state.opt_state
  pre_init = np.asarray(mean_abs_pre(params, state.stats)).tolist()
  path = jnp.zeros_like(fc1(params))
  path_len = jnp.zeros((seeds,), jnp.float32)
  series = {k: [] for k in SERIES}
  for i in range(steps):
    j = i % nb
    idx = perms[:, j * b:(j + 1) * b]
    x, t = data.x_train[idx], data.t_train[idx]
    params, opt_state, path, path_len, m = step(params, state.stats, opt_state, path, path_len,
                                                x, t, jnp.asarray(masks[:, j * b:(j + 1) * b]))
    for k in SERIES:
      series[k].append(np.asarray(m[k]).tolist())
  check = None
  if steps == nb:
    epoch_state, _ = jax.jit(program.epoch, static_argnums=2)(state, data, cells)
    check = max(float(jnp.max(jnp.abs(a - c))) for a, c in zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(epoch_state.params)))
  return {"arm": arm, "cell": cell.key, "config": dataclasses.asdict(config),
          "fc1_mean_abs_pre_init": pre_init, "series": series,
          "max_abs_diff_to_engine_epoch": check}


def summarise(run: dict) -> dict:
  """Per arm and cell: when fc1 saturates and what its first steps look like (over seeds)."""
  s = {k: np.asarray(v) for k, v in run["series"].items()}             # (steps, seeds)
  half = s["fc1_saturated"] >= 0.5
  first = [int(np.argmax(half[:, m])) + 1 if half[:, m].any() else None
           for m in range(half.shape[1])]
  at = lambda k, i: [float(np.min(s[k][i])), float(np.median(s[k][i])), float(np.max(s[k][i]))]
  step10 = min(9, len(s["straightness"]) - 1)
  return {
      "arm": run["arm"], "cell": run["cell"],
      "members_half_saturated_in_trace": sum(f is not None for f in first),
      "step_half_saturated": first,
      "step_rms_over_lr_step1": at("step_rms_over_lr", 0),
      "step_rms_over_lr_step10": at("step_rms_over_lr", step10),
      "straightness_step10": at("straightness", step10),
      "straightness_last": at("straightness", -1),
      "delta_common_step1": at("delta_common", 0),
      "fc1_mean_abs_pre_init": [float(np.min(run["fc1_mean_abs_pre_init"])),
                                float(np.median(run["fc1_mean_abs_pre_init"])),
                                float(np.max(run["fc1_mean_abs_pre_init"]))],
      "fc1_mean_abs_pre_step1": at("fc1_mean_abs_pre", 0),
      "fc1_mean_abs_pre_step10": at("fc1_mean_abs_pre", step10),
      "fc1_mean_abs_pre_last": at("fc1_mean_abs_pre", -1),
      "out_mean_last": at("out_mean", -1),
  }


def _median(values) -> str:
  return f"{values[1]:.3g}"


def markdown(summary: list[dict], header: str, seeds: int) -> str:
  """The summary as a table: one row per arm and cell, medians over seeds [min, max]."""
  rows = [header, "",
          "| arm | cell | fc1 half saturated | at step (median) | step RMS / lr, step 1 "
          "| step RMS / lr, step 10 | straightness, step 10 [min, max] | common part of delta, "
          "step 1 | fc1 mean abs pre, init / step 1 / 10 / last | head mean output, last |",
          "|---|---|---|---|---|---|---|---|---|---|"]
  for r in summary:
    steps = [x for x in r["step_half_saturated"] if x is not None]
    st = r["straightness_step10"]
    pre = "{:.2g} / {:.2g} / {:.3g} / {:.3g}".format(r["fc1_mean_abs_pre_init"][1],
                                                    r["fc1_mean_abs_pre_step1"][1],
                                           r["fc1_mean_abs_pre_step10"][1],
                                           r["fc1_mean_abs_pre_last"][1])
    rows.append(
        f"| {r['arm']} | {r['cell'].split('/', 1)[1]} | {len(steps)}/{seeds} "
        f"| {int(np.median(steps)) if steps else '-'} | {_median(r['step_rms_over_lr_step1'])} "
        f"| {_median(r['step_rms_over_lr_step10'])} | {st[1]:.2f} [{st[0]:.2f}, {st[2]:.2f}] "
        f"| {_median(r['delta_common_step1'])} | {pre} | {_median(r['out_mean_last'])} |")
  return "\n".join(rows) + "\n"


def figure(runs: list[dict], cell_key: str, path: str, made_by: str) -> None:
  """fc1's mean |pre-activation|, straightness and step size per step, one line per arm.

  cell_key: the head+loss cell drawn (under each arm's network), e.g. "multiclass/sigmoid+bce".
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(13, 4.2))
  axes = fig.subplots(1, 3)
  panels = (("fc1_mean_abs_pre", "fc1 mean |pre-activation|"),
            ("straightness", "straightness of fc1's path"),
            ("step_rms_over_lr", "fc1 step RMS / learning rate"))
  for ax, (key, title) in zip(axes, panels):
    for run in runs:
      if "/".join(run["cell"].split("/")[:2]) != cell_key:
        continue
      v = np.asarray(run["series"][key])                             # (steps, seeds)
      x = np.arange(1, v.shape[0] + 1)
      line, = ax.plot(x, np.median(v, axis=1), label=run["arm"])
      ax.fill_between(x, v.min(axis=1), v.max(axis=1), color=line.get_color(), alpha=0.15)
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    if key == "step_rms_over_lr":
      ax.set_yscale("log")
  axes[0].legend(fontsize=8)
  fig.suptitle(f"{cell_key}: the first epoch, step by step (median over seeds, band: min-max)")
  fig.text(0.01, 0.01, made_by, fontsize=7)
  fig.tight_layout(rect=(0, 0.05, 1, 0.95))
  fig.savefig(path, format="png", dpi=100)


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  for arm in FLAGS.arms:
    if arm not in ARMS:
      raise app.UsageError(f"--arms: unknown arm {arm!r}; choose from {', '.join(ARMS)}")
  split = data_lib.load_split(data_lib.resolve_data_dir(FLAGS.data_dir), 0)
  data = program_lib.TaskData.from_split(split, "multiclass")
  probe_x = data.x_valid[:FLAGS.probe]
  runs, summary = [], []
  start = time.time()
  for arm in FLAGS.arms:
    for text in FLAGS.cells:
      run = trace(arm, parse_cell(text), FLAGS.seeds, FLAGS.steps, data, probe_x)
      runs.append(run)
      summary.append(summarise(run))
      print(json.dumps(summary[-1]), f"(max |traced - engine| = "
            f"{run['max_abs_diff_to_engine_epoch']}, {time.time() - start:.0f} s)", flush=True)
  if not FLAGS.out:
    return
  command = " ".join(["python"] + sys.argv)
  machine = provenance.machine_description()
  revision, date = provenance.git_revision(), time.strftime("%Y-%m-%d")
  with open(FLAGS.out, "w") as f:
    json.dump({"command": command, "machine": machine, "git_revision": revision, "date": date,
               "wall_s": round(time.time() - start, 1), "summary": summary, "runs": runs}, f)
  stem = FLAGS.out.removesuffix(".json")
  diffs = [r["max_abs_diff_to_engine_epoch"] for r in runs]
  check = ("the traced parameters after the epoch equal the engine's epoch's to "
           f"{max(diffs):.1g} (max abs difference)" if None not in diffs else
           "not checked against the engine's epoch (--steps is not one epoch)")
  header = (f"Made by `{command}` on {machine}, git {revision}, {date}; {check}. Medians over "
            f"seeds 0-{FLAGS.seeds - 1}; columns defined in experiments/first_steps_trace.py.")
  with open(stem + ".md", "w") as f:
    f.write(markdown(summary, header, FLAGS.seeds))
  made_by = f"made by: {command[:150]}\non {machine}, git {revision}, {date}"
  figure(runs, parse_cell(FLAGS.cells[0]).key, stem + ".png", made_by)


if __name__ == "__main__":
  define_flags()
  app.run(main)
