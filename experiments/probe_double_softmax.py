"""Why He-initialised Leaky ReLU networks collapse in the torch convention (READING.md).

Trains one member (multiclass, softmax + cce in the torch convention, i.e. a softmax output
fed to a cross-entropy that applies a second softmax; He init, Leaky ReLU hidden layer, no
batch norm) for one epoch per seed and prints, on 500 valid images: the share of zero conv
activations, the spread of the conv features and of the logits across images, and the mean
softmax probabilities (exactly one-hot = the first softmax has saturated, its Jacobian is 0).

Usage (from the repository root):
  python experiments/probe_double_softmax.py --data_dir=../shared/data/mnist --seeds=0,1
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from flax import nnx  # pylint: disable=g-import-not-at-top

from jaxact.data import mnist as data_lib  # pylint: disable=g-import-not-at-top
from jaxact.engine import engine  # pylint: disable=g-import-not-at-top
from jaxact.engine import program  # pylint: disable=g-import-not-at-top
from jaxact.model import network as model_lib  # pylint: disable=g-import-not-at-top
from jaxact.model import cells as studies  # pylint: disable=g-import-not-at-top


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data_dir", default=None)
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--hidden", default="leaky_relu")
  args = p.parse_args()
  split = data_lib.load_split(data_lib.resolve_data_dir(args.data_dir), 0)
  choice = studies.NetworkChoice(init=("he",), hidden=(args.hidden,), batch_norm=(False,),
                                 depth=(1,))
  (cell,) = studies.select_cells("hidden", "multiclass", network=choice)["multiclass"]
  data = program.TaskData.from_split(split, "multiclass")
  x = data.x_valid[:500]
  print(f"{cell.label}: one epoch per seed, statistics on 500 valid images")
  for seed in (int(s) for s in args.seeds.split(",")):
    eng = engine.Engine("multiclass", [(cell, seed)], program.EngineConfig(max_epochs=1),
                        progress=lambda _: None)
    outcome = eng.run(data)
    (result,) = outcome.members
    params = jax.tree_util.tree_map(lambda a: a[0], outcome.final_state["params"])
    graphdef, _ = nnx.split(eng._make_model(jax.random.key(0), cell), nnx.Param)  # pylint: disable=protected-access
    model = nnx.merge(graphdef, params)
    c1 = jax.nn.relu(model_lib.max_pool_2x2(model.conv1(x)))
    c2 = jax.nn.relu(model_lib.max_pool_2x2(model.conv2(c1)))
    c3 = jax.nn.relu(model.conv3(c2))
    z, _ = model.dense(c3.reshape(len(x), -1))
    probs = jax.nn.softmax(z)
    print(f"seed {seed}: valid accuracy {result.valid_metric[0]:.4f}; zero activations conv1 "
          f"{float((c1 == 0).mean()):.2f}, conv2 {float((c2 == 0).mean()):.2f}, conv3 "
          f"{float((c3 == 0).mean()):.2f}; feature std across images "
          f"{float(c3.reshape(len(x), -1).std(0).mean()):.3g}; logit std across images "
          f"{float(z.std(0).mean()):.3g}; output-layer kernel norm "
          f"{float(jnp.linalg.norm(params['out']['kernel'])):.3g}; mean softmax probabilities "
          f"{np.array2string(np.asarray(probs.mean(0)), precision=3)}")


if __name__ == "__main__":
  main()
