r"""Measures why a cell collapses: hidden-unit saturation, output spread, gradient norms.

A one-off measurement for the written readings in experiments/, made before the
engine recorded diagnostics in every run (jaxact/store/diagnostics.py now does). For each cell given, it trains one
member per seed with the engine for --epochs epochs (no early stopping), then,
with the final weights, on the 3,000 valid images:

- hidden sigmoid units "saturated": sigma'(a) = s (1 - s) < 0.01 (|a| > ~4.6)
  on at least 99% of the valid images;
- the mean |pre-activation| of the hidden layer;
- output spread: the standard deviation over valid images of each head
  output, averaged over outputs (0 = a constant predictor);
- distinct argmax predictions over the valid set;
- the gradient norm of the loss per layer on the first 256 training images.

Usage (from the repository root):
  python experiments/diagnose_collapse.py --data_dir=../shared/data/mnist \
      --cells=multiclass/sigmoid+bce,multiclass/softmax+cce --seeds=0,1 --epochs=3
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from flax import nnx

from jaxact.data import mnist as data_lib
from jaxact.engine import engine as engine_lib
from jaxact.model import network as model_lib
from jaxact.engine import program as program_lib
from jaxact.engine import stacked as stacked_lib
from jaxact.model import losses as losses_lib
from jaxact.store import provenance
from jaxact.model.cells import Cell

_CELLS = flags.DEFINE_list("cells", ["multiclass/sigmoid+bce", "multiclass/softmax+cce"],
                           "task/head+loss[/norm|raw] cells")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "member seeds")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "epochs to train before measuring")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "MNIST IDX directory")
_OUT = flags.DEFINE_string("out", None, "write the measurements as JSON here")


def parse_cell(text: str) -> Cell:
  task, hl, *rest = text.split("/")
  head, loss = hl.split("+")
  return Cell(task, head, loss, norm=bool(rest and rest[0] == "norm"))


def measure(eng: engine_lib.Engine, params, data: program_lib.TaskData, cell: Cell) -> dict:
  model = nnx.merge(eng.graphdef, params)

  def hidden_pre(x):
    x = model_lib.max_pool_2x2(jax.nn.relu(model.conv1(x)))
    x = model_lib.max_pool_2x2(jax.nn.relu(model.conv2(x)))
    x = jax.nn.relu(model.conv3(x)).reshape(x.shape[0], -1)
    return model.hidden[0](x)

  a = jnp.concatenate([hidden_pre(data.x_valid[i:i + 500]) for i in range(0, 3000, 500)])
  s = jax.nn.sigmoid(a)
  saturated = jnp.mean(s * (1 - s) < 0.01, axis=0) >= 0.99
  z = jnp.concatenate([model(data.x_valid[i:i + 500]) for i in range(0, 3000, 500)])
  out = losses_lib.apply_head(cell.head, z)
  fn = losses_lib.get_loss(cell.head, cell.loss, cell.convention)

  def loss(p):
    zz = nnx.merge(eng.graphdef, p)(data.x_train[:256])
    t = stacked_lib.train_targets(cell, data.t_train[:256], data.target_mean, data.target_std)
    return fn.finalize(jnp.mean(fn.per_example(zz, t)))

  grads = jax.grad(loss)(params)
  gnorm = {name: float(jnp.sqrt(sum(jnp.sum(jnp.square(l)) for l in jax.tree_util.tree_leaves(g))))
           for name, g in grads.items()}
  return {
      "hidden_units_saturated": int(saturated.sum()),
      "hidden_units": int(a.shape[1]),
      "hidden_mean_abs_preactivation": float(jnp.mean(jnp.abs(a))),
      "output_spread": float(jnp.mean(jnp.std(out, axis=0))),
      "output_mean": [round(float(v), 4) for v in jnp.mean(out, axis=0)],
      "distinct_argmax": int(len(np.unique(np.asarray(jnp.argmax(out, -1))))),
      "grad_norm_per_layer": gnorm,
  }


def main(argv):
  del argv
  split = data_lib.load_split(data_lib.resolve_data_dir(_DATA_DIR.value), 0)
  rows = []
  for text in _CELLS.value:
    cell = parse_cell(text)
    data = program_lib.TaskData.from_split(split, cell.task)
    members = [(cell, int(s)) for s in _SEEDS.value]
    cfg = program_lib.EngineConfig(max_epochs=_EPOCHS.value, patience=_EPOCHS.value + 1)
    eng = engine_lib.Engine(cell.task, members, cfg, progress=lambda _: None)
    outcome = eng.run(data)
    for i, r in enumerate(outcome.members):
      params = jax.tree_util.tree_map(lambda l: l[i], outcome.final_state["params"])
      row = {"cell": cell.key, "seed": r.seed, "epochs": _EPOCHS.value,
             "valid_metric_per_epoch": [round(v, 4) for v in r.valid_metric],
             "train_loss_per_epoch": [round(v, 4) for v in r.train_loss]}
      row.update(measure(eng, params, data, cell))
      rows.append(row)
      print(json.dumps(row))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"command": " ".join(["python"] + sys.argv),
                 "machine": provenance.machine_description(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
