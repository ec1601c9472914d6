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
  4. convolution: conv2 (14x14x32 -> 12x12x64) and conv3 (6x6x64 -> 4x4x64) of a batch of
     32, forward and forward + backward (kernel, bias and input gradients) inside a 63-step
     `lax.scan`, as im2col + one matmul (the model's) against Winograd F(2x2, 3x3) (2.25x
     fewer multiplications: 16 batched matmuls between input and output transforms).
  5. conv + ReLU + max-pool blocks, forward and backward inside a 63-step `lax.scan`: conv1
     (1 -> 32 channels, so im2col's matmul has K = 9; kernel and bias gradients) as im2col +
     matmul with autodiff's backward, as nine broadcast multiply-adds, and as the model's
     `conv_pool_relu` (window slabs, hand-written backward); conv2 (input gradient too) with
     autodiff's backward against `conv_pool_relu`.

Usage (from the repository root):
  python -m benchmarks.cpu_layouts [--members=1,2,4,8] [--chunks=16,32,64,128,256,1000,3000]
      [--sections=members,chunks,pooling,conv,conv1]
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
from jaxact.model import network as model_lib  # pylint: disable=g-import-not-at-top

BATCHES, BATCH, VALID = 63, 32, 3000
SECTIONS = ("members", "chunks", "pooling", "conv", "conv1")


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


def winograd_valid(x, kernel, bias):
  """3x3 VALID convolution as Winograd F(2x2, 3x3) (Lavin & Gray 2016); even output size.

  Input tiles of 4x4 with stride 2 are transformed (B^T d B), multiplied channel-wise with
  the transformed kernel (G g G^T) as 16 batched matmuls, and transformed back (A^T m A).
  """
  b, h, w, c = x.shape
  th, tw = (h - 2) // 2, (w - 2) // 2
  rows = [x[:, r:r + 2 * th:2] for r in range(4)]                    # B^T along rows
  u = [rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3]]
  v = []
  for ua in u:                                                        # ... and columns
    cols = [ua[:, :, r:r + 2 * tw:2] for r in range(4)]
    v += [cols[0] - cols[2], cols[1] + cols[2], cols[2] - cols[1], cols[1] - cols[3]]
  v = jnp.stack(v).reshape(16, b * th * tw, c)
  g = jnp.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], kernel.dtype)
  uk = jnp.einsum("ai,ijco,bj->abco", g, kernel, g).reshape(16, c, -1)
  m = jnp.einsum("tnc,tco->tno", v, uk).reshape(4, 4, b, th, tw, -1)
  r0, r1 = m[0] + m[1] + m[2], m[1] - m[2] - m[3]                    # A^T along rows
  y = jnp.stack([jnp.stack([r[0] + r[1] + r[2], r[1] - r[2] - r[3]], axis=3)
                 for r in (r0, r1)], axis=2)                          # (B, th, 2, tw, 2, O)
  return y.reshape(b, 2 * th, 2 * tw, -1) + bias


def _scan_ms(step, args, xs, repeats: int) -> float:
  """ms per step of `step(args, x)` (a scalar) scanned over the leading axis of xs."""
  run = jax.jit(lambda a, xs: jax.lax.scan(lambda c, x: (c + step(a, x), None), 0.0, xs)[0])
  return _time_ms(run, args, xs, repeats=repeats) / xs.shape[0]


def convolutions(repeats: int) -> list[dict]:
  """conv2 and conv3: im2col against Winograd, forward and forward + backward, ms per step."""
  out = []
  for name, (hw, cin, cout) in (("conv2", (14, 32, 64)), ("conv3", (6, 64, 64))):
    keys = jax.random.split(jax.random.key(5), 3)
    xs = jax.random.normal(keys[0], (BATCHES, BATCH, hw, hw, cin))
    kernel = jax.random.normal(keys[1], (3, 3, cin, cout)) / (9 * cin) ** 0.5
    bias = jax.random.normal(keys[2], (cout,)) * 0.1
    ref = jax.lax.conv_general_dilated(xs[0], kernel, (1, 1), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    for form, conv in (("im2col", model_lib.conv_valid), ("winograd F(2x2,3x3)", winograd_valid)):
      err = float(jnp.max(jnp.abs(conv(xs[0], kernel, bias) - ref)) / jnp.max(jnp.abs(ref)))
      fwd = lambda a, x, conv=conv: jnp.sum(jnp.tanh(conv(x, *a)))
      grads = jax.grad(lambda a, x, conv=conv: jnp.sum(jnp.tanh(conv(x, *a))), argnums=(0, 1))

      def fwd_bwd(a, x, grads=grads):
        (gk, gb), gx = grads(a, x)
        return jnp.sum(gk) + jnp.sum(gb) + jnp.sum(gx)
      out.append(dict(layer=name, form=form, rel_err=err,
                      forward=_scan_ms(fwd, (kernel, bias), xs, repeats),
                      forward_backward=_scan_ms(fwd_bwd, (kernel, bias), xs, repeats)))
  return out


def conv_pool_blocks(repeats: int) -> list[dict]:
  """conv + ReLU + max-pool of conv1 and conv2, forward and backward, ms per step.

  conv1 (kernel and bias gradients; its input is data) as im2col + matmul
  with autodiff's backward, as nine broadcast multiply-adds, and as the
  model's `conv_pool_relu` (window slabs, hand-written backward); conv2
  (input gradient too) with autodiff's backward and as `conv_pool_relu`.
  """
  def multiply_adds(x, kernel, bias):
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = bias
    for i in range(3):
      for j in range(3):
        y = y + x[:, i:i + 28, j:j + 28, :] * kernel[i, j, 0]
    return jax.nn.relu(model_lib.max_pool_2x2(y))

  pad = lambda x: jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  autodiff = lambda x, kernel, bias: jax.nn.relu(model_lib.max_pool_2x2(
      model_lib.conv_valid(x, kernel, bias)))
  keys = jax.random.split(jax.random.key(6), 4)
  out = []
  for layer, cin, size, forms, wrt in (
      ("conv1 (28x28x1 -> 28x28x32 -> 14x14x32)", 1, 28,
       (("im2col + matmul, autodiff backward", lambda x, k, b: autodiff(pad(x), k, b)),
        ("nine broadcast multiply-adds, autodiff backward", multiply_adds),
        ("window slabs, hand-written backward (the model's)",
         lambda x, k, b: model_lib.conv_pool_relu(pad(x), k, b))), (1,)),
      ("conv2 (14x14x32 -> 12x12x64 -> 6x6x64)", 32, 14,
       (("im2col + matmul, autodiff backward (the model's)", autodiff),
        ("window slabs, hand-written backward", model_lib.conv_pool_relu)), (0, 1))):
    cout = 32 if cin == 1 else 64
    xs = jax.random.uniform(keys[0], (BATCHES, BATCH, size, size, cin), minval=-1, maxval=1)
    kernel = jax.random.normal(keys[1], (3, 3, cin, cout)) / (3 * cin ** 0.5)
    bias = 0.1 * jax.random.normal(keys[2], (cout,))
    pooled = (size if cin == 1 else size - 2) // 2
    weights = jax.random.normal(keys[3], (pooled, pooled, cout))
    for form, block in forms:
      def step(a, x, block=block):
        loss = lambda x, a: jnp.sum(block(x, *a) * weights)
        grads = jax.grad(loss, argnums=wrt)(x, a)
        return sum(jnp.sum(g) for g in jax.tree_util.tree_leaves(grads))
      out.append(dict(layer=layer, form=form,
                      ms=_scan_ms(step, (kernel, bias), xs, repeats)))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--members", default="1,2,4,8")
  p.add_argument("--chunks", default="16,32,64,128,256,1000,3000")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--sections", default=",".join(SECTIONS),
                 help=f"which questions to time, of {', '.join(SECTIONS)}")
  args = p.parse_args(argv)
  sections = args.sections.split(",")
  for name in sections:
    if name not in SECTIONS:
      p.error(f"--sections: unknown {name!r} (choose from {', '.join(SECTIONS)})")
  print(f"# CPU layout micro-benchmarks (jax {jax.__version__}, {jax.default_backend()}, "
        f"{os.cpu_count()} CPUs); median of {args.repeats}\n")
  if "members" in sections:
    print("| M | vmap ms / member-epoch | loop ms / member-epoch |\n|---|---|---|")
    for m in (int(v) for v in args.members.split(",")):
      r = members_epoch(m, args.repeats)
      print(f"| {m} | {r['vmap']:.0f} | {r['loop']:.0f} |", flush=True)
  if "chunks" in sections:
    print("\n| eval chunk (images) | ms per 3,000-image valid pass |\n|---|---|")
    for c in (int(v) for v in args.chunks.split(",")):
      print(f"| {c} | {eval_chunk(c, args.repeats):.0f} |", flush=True)
  if "pooling" in sections:
    print("\n| pooling (relu + 2x2 max-pool, (32, 28, 28, 32)) | ms forward + backward |"
          "\n|---|---|")
    for name, ms in pooling(args.repeats).items():
      print(f"| {name} | {ms:.3f} |")
  if "conv" in sections:
    _print_convolutions(args.repeats)
  if "conv1" in sections:
    _print_conv_pool_blocks(args.repeats)
  return 0


def _print_convolutions(repeats: int) -> None:
  print("\n| layer (batch 32, in a 63-step scan) | form | max rel. error vs lax.conv | ms forward "
        "| ms forward + backward |\n|---|---|---|---|---|")
  for r in convolutions(repeats):
    print(f"| {r['layer']} | {r['form']} | {r['rel_err']:.1e} | {r['forward']:.3f} | "
          f"{r['forward_backward']:.3f} |", flush=True)


def _print_conv_pool_blocks(repeats: int) -> None:
  print("\n| conv + ReLU + max-pool (batch 32, in a 63-step scan) | form | ms forward + backward |"
        "\n|---|---|---|")
  for r in conv_pool_blocks(repeats):
    print(f"| {r['layer']} | {r['form']} | {r['ms']:.3f} |", flush=True)


if __name__ == "__main__":
  sys.exit(main())
