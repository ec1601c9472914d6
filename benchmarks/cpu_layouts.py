r"""Micro-benchmarks behind the engine's CPU choices (BUILD_NOTES.md, *Speed*).

Three questions, each timed on the protocol's CNN (jaxact.model.CNN, softmax + cce, AdamW,
batch 32) with random data of the real shapes, median of `--repeats` timed calls after one
warm-up call:

  1. members: one training epoch (63 steps of batch 32, `lax.scan`) of M members,
     vmapped over the members at every step ("vmap") against `lax.map` over the members,
     each its whole epoch ("loop"); milliseconds per member-epoch.
  2. eval chunk: the forward pass of one member over the 3,000 valid images in chunks of
     n images (`lax.scan` over chunks); milliseconds per pass.
  3. pooling: forward + backward of ReLU + 2x2 max-pool on a (32, 28, 28, 32) activation,
     as reshape + reduce-max against the maximum of four strided slices.

Usage (from the repository root):
  python -m benchmarks.cpu_layouts [--members=1,2,4,8] [--chunks=16,32,64,128,256,1000,3000]
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top
from flax import nnx  # pylint: disable=g-import-not-at-top

from benchmarks import common  # pylint: disable=g-import-not-at-top
from jaxact import model as model_lib  # pylint: disable=g-import-not-at-top

BATCHES, BATCH, VALID = 63, 32, 3000


def _time_ms(fn, *args, repeats: int) -> float:
  return 1e3 * common.time_calls(fn, *args, repeats=repeats)


def _model(members: int):
  graphdef, _ = nnx.split(model_lib.CNN(10, rngs=nnx.Rngs(params=0)), nnx.Param)
  make = lambda k: nnx.to_pure_dict(
      nnx.split(model_lib.CNN(10, rngs=nnx.Rngs(params=k)), nnx.Param)[1])
  return graphdef, jax.vmap(make)(jax.random.split(jax.random.key(0), members))


def members_epoch(members: int, repeats: int) -> dict[str, float]:
  """ms per member-epoch of training, "vmap" and "loop"."""
  graphdef, params = _model(members)
  tx = optax.adamw(1e-3, weight_decay=0.01)
  opt = jax.vmap(tx.init)(params)
  kx, ky = jax.random.split(jax.random.key(1))
  xs = jax.random.uniform(kx, (members, BATCHES, BATCH, 28, 28, 1), minval=-1, maxval=1)
  ys = jax.nn.one_hot(jax.random.randint(ky, (members, BATCHES, BATCH), 0, 10), 10)

  def loss(p, x, y):
    return optax.softmax_cross_entropy(nnx.merge(graphdef, p)(x), y).mean()

  def step(p, o, x, y):
    u, o = tx.update(jax.grad(loss)(p, x, y), o, p)
    return optax.apply_updates(p, u), o

  def vmapped(params, opt, xs, ys):
    body = lambda c, b: (jax.vmap(step)(*c, *b), None)
    return jax.lax.scan(body, (params, opt), (xs.swapaxes(0, 1), ys.swapaxes(0, 1)))[0]

  def looped(params, opt, xs, ys):
    def member(a):
      p, o, x, y = a
      return jax.lax.scan(lambda c, b: (step(*c, *b), None), (p, o), (x, y))[0]
    return jax.lax.map(member, (params, opt, xs, ys))

  return {name: _time_ms(jax.jit(fn), params, opt, xs, ys, repeats=repeats) / members
          for name, fn in (("vmap", vmapped), ("loop", looped))}


def eval_chunk(chunk: int, repeats: int) -> float:
  """ms for one member's forward pass over VALID images in chunks of `chunk`."""
  graphdef, params = _model(1)
  params = jax.tree_util.tree_map(lambda a: a[0], params)
  n = -(-VALID // chunk)
  x = jax.random.uniform(jax.random.key(2), (n, chunk, 28, 28, 1), minval=-1, maxval=1)

  def run(p, x):
    body = lambda c, xc: (c + nnx.merge(graphdef, p)(xc).sum(), None)
    return jax.lax.scan(body, 0.0, x)[0]
  return _time_ms(jax.jit(run), params, x, repeats=repeats) * VALID / (n * chunk)


def pooling(repeats: int) -> dict[str, float]:
  """ms of forward + backward of relu + 2x2 max-pool, two formulations."""
  def reshape_max(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
  x = jax.random.normal(jax.random.key(3), (BATCH, 28, 28, 32))
  g = jax.random.normal(jax.random.key(4), (BATCH, 14, 14, 32))
  out = {}
  for name, pool in (("reshape + reduce-max", reshape_max),
                     ("max of strided slices", model_lib.max_pool_2x2)):
    f = lambda x, g, pool=pool: jax.vjp(lambda y: pool(jax.nn.relu(y)), x)[1](g)
    out[name] = _time_ms(jax.jit(f), x, g, repeats=repeats * 20)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--members", default="1,2,4,8")
  p.add_argument("--chunks", default="16,32,64,128,256,1000,3000")
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)
  print(f"# CPU layout micro-benchmarks (jax {jax.__version__}, {jax.default_backend()}, "
        f"{os.cpu_count()} CPUs); median of {args.repeats}\n")
  print("| M | vmap ms / member-epoch | loop ms / member-epoch |\n|---|---|---|")
  for m in (int(v) for v in args.members.split(",")):
    r = members_epoch(m, args.repeats)
    print(f"| {m} | {r['vmap']:.0f} | {r['loop']:.0f} |", flush=True)
  print("\n| eval chunk (images) | ms per 3,000-image valid pass |\n|---|---|")
  for c in (int(v) for v in args.chunks.split(",")):
    print(f"| {c} | {eval_chunk(c, args.repeats):.0f} |", flush=True)
  print("\n| pooling (relu + 2x2 max-pool, (32, 28, 28, 32)) | ms forward + backward |\n|---|---|")
  for name, ms in pooling(args.repeats).items():
    print(f"| {name} | {ms:.3f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
