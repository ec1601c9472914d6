r"""A plain PyTorch implementation of PROTOCOL.md, run the way the original ran.

One model at a time, batch 32 reshuffled every epoch with the last partial
batch kept, AdamW (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01),
PyTorch's default initialisation, early stopping on the valid metric (strict
improvement, stop when epoch - best_epoch >= patience), test metric with the
restored best-valid weights. It is a peer to measure jaxact against (speed,
and what a cell trains to), not a second product: no vmapping, no tricks.

The data is jaxact's: the same split (`jaxact.data.mnist.load_split`) and the same
targets (`jaxact.data.tasks.make_targets`), transposed from NHWC to NCHW. The cells
are jaxact's (`jaxact.model.cells.select_cells`); each loss is the PyTorch class
the original used, applied to the head's output (PROTOCOL section 6):

  cce         nn.CrossEntropyLoss   class indices for binary / multiclass; the dense
                                    targets as class probabilities otherwise
  bce         nn.BCELoss            raises on inputs outside [0, 1] (PyTorch 2.x also on
                                    targets outside [0, 1]) -> status invalid
  bce_logits  nn.BCEWithLogitsLoss
  mse, mae    nn.MSELoss, nn.L1Loss
  rmse        sqrt(nn.MSELoss + 1e-8)

A loss that becomes non-finite ends that run (status nonfinite); jaxact freezes
the member instead. What differs from jaxact by construction: torch's RNG draws the initial weights
and the shuffles, so a seed's numbers are not jaxact's (compare distributions
over seeds); the network flattens (C, H, W) instead of (H, W, C) (a fixed
permutation of the dense layer's inputs). `load_jaxact_params` copies a jaxact
member's weights into the torch model, which tests/test_benchmarks.py uses to
check that both compute the same losses and gradients.

Usage (from the repository root):
  python -m benchmarks.torch_reference --study=activation --task=multiclass \
      --seeds=1 --data_dir=../shared/data/mnist
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from jaxact.model import cells as studies
from jaxact.data import tasks as tasks_lib
from jaxact.model.cells import Cell


def build_model(num_outputs: int) -> nn.Sequential:
  """PROTOCOL section 2, with PyTorch's default initialisation; returns z (B, C)."""
  return nn.Sequential(
      nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
      nn.Linear(1024, 64), nn.Sigmoid(),
      nn.Linear(64, num_outputs))


# Positions of the parameterised layers in build_model's Sequential.
_LAYERS = {"conv1": 0, "conv2": 3, "conv3": 6, "hidden": 9, "out": 11}


def load_jaxact_params(model: nn.Sequential, params: dict) -> None:
  """Copies a jaxact CNN's parameters (nnx.to_pure_dict of one member) into `model`.

  Layouts: conv kernel (3, 3, Cin, Cout) -> (Cout, Cin, 3, 3); dense kernel
  (in, out) -> (out, in). jaxact flattens the 4x4x64 map as (H, W, C), torch
  as (C, H, W), so the first dense layer's input rows are permuted to match.
  """
  def t(a):
    return torch.from_numpy(np.array(a, np.float32))

  with torch.no_grad():
    for name in ("conv1", "conv2", "conv3"):
      layer = model[_LAYERS[name]]
      layer.weight.copy_(t(params[name]["kernel"]).permute(3, 2, 0, 1))
      layer.bias.copy_(t(params[name]["bias"]))
    hidden = params["hidden"][0]
    k = t(hidden["kernel"])                                    # (1024 = h*256 + w*64 + c, 64)
    k = k.reshape(4, 4, 64, -1).permute(3, 2, 0, 1).reshape(k.shape[1], -1)  # (64, c*16+h*4+w)
    model[_LAYERS["hidden"]].weight.copy_(k)
    model[_LAYERS["hidden"]].bias.copy_(t(hidden["bias"]))
    model[_LAYERS["out"]].weight.copy_(t(params["out"]["kernel"]).T)
    model[_LAYERS["out"]].bias.copy_(t(params["out"]["bias"]))


def torch_grads_as_jaxact(model: nn.Sequential) -> dict:
  """The model's .grad in jaxact's parameter layout (inverse of load_jaxact_params)."""
  def g(p):
    return p.grad.detach().numpy()

  out = {}
  for name in ("conv1", "conv2", "conv3"):
    layer = model[_LAYERS[name]]
    out[name] = {"kernel": g(layer.weight).transpose(2, 3, 1, 0), "bias": g(layer.bias)}
  w = g(model[_LAYERS["hidden"]].weight)                       # (64, c*16 + h*4 + w)
  w = w.reshape(-1, 64, 4, 4).transpose(2, 3, 1, 0).reshape(1024, -1)
  out["hidden"] = {0: {"kernel": w, "bias": g(model[_LAYERS["hidden"]].bias)}}
  out["out"] = {"kernel": g(model[_LAYERS["out"]].weight).T, "bias": g(model[_LAYERS["out"]].bias)}
  return out


# ---------------------------------------------------------------------------
# Heads, losses, metrics (PROTOCOL sections 5-7).


def apply_head(head: str, z: torch.Tensor) -> torch.Tensor:
  if head == "none":
    return z
  if head == "relu":
    return torch.relu(z)
  if head == "sigmoid":
    return torch.sigmoid(z)
  if head == "softmax":
    return torch.softmax(z, dim=-1)
  raise ValueError(f"unknown head {head!r}")


def make_loss(loss: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """The original's loss object: called on (the head's output, the loss target)."""
  if loss == "cce":
    return nn.CrossEntropyLoss()
  if loss == "bce":
    return nn.BCELoss()
  if loss == "bce_logits":
    return nn.BCEWithLogitsLoss()
  if loss == "mse":
    return nn.MSELoss()
  if loss == "mae":
    return nn.L1Loss()
  if loss == "rmse":
    mse = nn.MSELoss()
    return lambda out, target: torch.sqrt(mse(out, target) + 1e-8)
  raise ValueError(f"unknown loss {loss!r}")


def loss_target(cell: Cell, t: torch.Tensor, mean: float, std: float) -> torch.Tensor:
  """What the loss compares against: class indices for cce on a single-label task,
  else the dense targets (standardised / squashed for the regression variants)."""
  if cell.loss == "cce" and tasks_lib.get_task(cell.task).single_label:
    return t.argmax(dim=-1)
  if cell.norm:
    t = (t - mean) / std
  if cell.sigmoid_method:
    t = torch.sigmoid(t)
  return t


def predictions(cell: Cell, z: torch.Tensor, mean: float, std: float) -> torch.Tensor:
  """The head's output in original target units (the sigmoid method's logit may be +-inf)."""
  out = apply_head(cell.head, z)
  if cell.sigmoid_method:
    out = torch.log(out) - torch.log1p(-out)
  if cell.norm:
    out = out * std + mean
  return out


def metric_sum(task: str, pred: torch.Tensor, t: torch.Tensor) -> float:
  """Sum over examples of the per-example metric (PROTOCOL section 7)."""
  if task == "regression":
    per = ((pred - t) ** 2).mean(dim=-1)
  elif task in ("binary", "multiclass"):
    per = (pred.argmax(dim=-1) == t.argmax(dim=-1)).float()
  else:  # probability, multilabel: torch.round is round-half-to-even
    per = (torch.round(pred) == t).float().mean(dim=-1)
  return float(per.double().sum())


# ---------------------------------------------------------------------------
# Data and training.


@dataclasses.dataclass(frozen=True)
class TorchTaskData:
  """One task's data as torch tensors: x NCHW float32, t dense (N, C) float32 targets."""
  task: str
  x_train: torch.Tensor
  t_train: torch.Tensor
  x_valid: torch.Tensor
  t_valid: torch.Tensor
  x_test: torch.Tensor
  t_test: torch.Tensor
  target_mean: float
  target_std: float

  @classmethod
  def from_arrays(cls, task: str, x_train, y_train, x_valid, y_valid, x_test, y_test):
    """From NHWC images in [-1, 1] and digit labels (a jaxact.data.Split's fields)."""
    def x(a):
      return torch.from_numpy(np.array(np.asarray(a).transpose(0, 3, 1, 2), np.float32,
                                       order="C", copy=True))

    def t(y):
      return torch.from_numpy(np.array(tasks_lib.make_targets(task, np.asarray(y)), copy=True))

    t_train = tasks_lib.make_targets(task, np.asarray(y_train))
    return cls(task, x(x_train), t(y_train), x(x_valid), t(y_valid), x(x_test), t(y_test),
               float(np.mean(t_train)), float(np.std(t_train)))

  @classmethod
  def from_split(cls, split, task: str) -> "TorchTaskData":
    return cls.from_arrays(task, split.x_train, split.y_train, split.x_valid, split.y_valid,
                           split.x_test, split.y_test)

  def to(self, device: str | torch.device) -> "TorchTaskData":
    """The same data on `device` (resident there, as jaxact keeps it)."""
    moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
             if isinstance(getattr(self, f.name), torch.Tensor)}
    return dataclasses.replace(self, **moved)


def allow_tf32(allowed: bool) -> None:
  """Lets (or forbids) PyTorch use TF32 tensor cores for matmuls and cuDNN convolutions.

  PyTorch's own defaults differ between the two (cuDNN convolutions may use TF32,
  matmuls may not); jaxact's default is full float32 everywhere, so the
  reference is compared at full float32 unless asked otherwise. No effect on a CPU.
  """
  torch.backends.cuda.matmul.allow_tf32 = allowed
  torch.backends.cudnn.allow_tf32 = allowed


def default_device() -> str:
  """"cuda" when PyTorch sees a GPU, else "cpu"."""
  return "cuda" if torch.cuda.is_available() else "cpu"


def _clock(device: torch.device) -> float:
  """time.perf_counter() after the device's queued work is done (GPU work is asynchronous)."""
  if device.type == "cuda":
    torch.cuda.synchronize(device)
  return time.perf_counter()


@dataclasses.dataclass
class CellResult:
  """One (cell, seed) trained by the reference; times in seconds."""
  cell: str
  label: str
  seed: int
  best_valid: float
  test: float
  best_epoch: int
  epochs_trained: int
  status: str                      # ok | hit_cap | invalid | nonfinite
  status_reason: str | None
  wall_s: float                    # the whole run, test pass included
  train_epoch_s: list[float]       # per epoch: the training pass
  valid_epoch_s: list[float]       # per epoch: the valid pass
  valid_metric: list[float]

  @property
  def model_epoch_s(self) -> list[float]:
    """Per epoch: training pass + valid pass (one model-epoch)."""
    return [a + b for a, b in zip(self.train_epoch_s, self.valid_epoch_s)]


@torch.no_grad()
def evaluate(model: nn.Module, cell: Cell, x: torch.Tensor, t: torch.Tensor, mean: float,
             std: float, batch_size: int = 500) -> float:
  """The metric of `model` on (x, t); the batch size does not change it."""
  model.eval()
  total = 0.0
  for i in range(0, x.shape[0], batch_size):
    pred = predictions(cell, model(x[i:i + batch_size]), mean, std)
    total += metric_sum(cell.task, pred, t[i:i + batch_size])
  model.train()
  return total / x.shape[0]


def train_cell(cell: Cell, seed: int, data: TorchTaskData, *, max_epochs: int = 100,
               patience: int = 10, batch_size: int = 32, learning_rate: float = 1e-3,
               weight_decay: float = 0.01, threads: int | None = None,
               device: str | torch.device = "cpu",
               progress: Callable[[str], None] | None = None) -> CellResult:
  """Trains one cell with one seed to its early stop (or max_epochs).

  With patience > max_epochs nothing stops early: a fixed number of epochs
  (what the throughput benchmark uses). `threads` sets torch.set_num_threads.
  `device`: where the model and the data live ("cpu", "cuda", ...); the
  initial weights and the shuffles are drawn on the CPU either way, so a seed
  starts from the same weights on every device. The loss is checked for
  finiteness after every step (a host sync, as the original's per-step
  `loss.item()`).
  """
  if cell.convention != "torch":
    raise ValueError(f"the reference implements the torch convention only, not {cell.key}")
  if threads:
    torch.set_num_threads(threads)
  start = time.perf_counter()
  task = tasks_lib.get_task(cell.task)
  device = torch.device(device)
  data = data.to(device)   # a no-op for tensors already there
  torch.manual_seed(seed)
  model = build_model(task.num_outputs).to(device)
  opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=weight_decay)
  loss_fn = make_loss(cell.loss)
  shuffle = torch.Generator().manual_seed(seed)
  mean, std = data.target_mean, data.target_std
  x_train, target = data.x_train, loss_target(cell, data.t_train, mean, std)
  n = x_train.shape[0]

  best_score, best_epoch, best_state = -math.inf, -1, None
  status, reason = "hit_cap", f"still improving at the epoch cap ({max_epochs})"
  train_s, valid_s, history = [], [], []
  epoch = 0
  for epoch in range(max_epochs):
    t0 = _clock(device)
    model.train()
    perm = torch.randperm(n, generator=shuffle).to(device)
    failed = False
    for i in range(0, n, batch_size):
      idx = perm[i:i + batch_size]
      out = apply_head(cell.head, model(x_train[idx]))
      try:
        loss = loss_fn(out, target[idx])
      except RuntimeError as err:  # BCELoss on inputs outside [0, 1]
        if "between 0 and 1" not in str(err):
          raise
        status, reason, failed = "invalid", str(err).strip().splitlines()[0], True
        break
      if not torch.isfinite(loss):
        status, reason, failed = "nonfinite", f"loss became non-finite in epoch {epoch}", True
        break
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    t1 = _clock(device)
    train_s.append(t1 - t0)
    if failed:
      valid_s.append(0.0)
      break
    valid = evaluate(model, cell, data.x_valid, data.t_valid, mean, std)
    valid_s.append(_clock(device) - t1)
    history.append(valid)
    score = valid if task.higher_is_better else -valid
    if math.isnan(score):
      score = -math.inf
    if score > best_score:
      best_score, best_epoch = score, epoch
      best_state = copy.deepcopy(model.state_dict())
    if progress:
      progress(f"{cell.key} seed {seed} epoch {epoch}: valid {task.metric_name} {valid:.4g} "
               f"({train_s[-1] + valid_s[-1]:.2f} s)")
    if epoch - best_epoch >= patience:
      status, reason = "ok", None
      break

  test = math.nan
  if best_state is not None:
    model.load_state_dict(best_state)
    test = evaluate(model, cell, data.x_test, data.t_test, mean, std)
  sign = 1.0 if task.higher_is_better else -1.0
  return CellResult(
      cell=cell.key, label=cell.label, seed=seed,
      best_valid=sign * best_score if best_epoch >= 0 else math.nan, test=test,
      best_epoch=best_epoch, epochs_trained=len(history), status=status, status_reason=reason,
      wall_s=time.perf_counter() - start, train_epoch_s=train_s, valid_epoch_s=valid_s,
      valid_metric=history)


# ---------------------------------------------------------------------------
# Command line.


def format_results(results: list[CellResult]) -> str:
  rows = []
  for r in results:
    scale = 1.0 if r.cell.startswith("regression") else 100.0
    per_epoch = (sum(r.model_epoch_s) / len(r.model_epoch_s)) if r.model_epoch_s else math.nan
    rows.append([r.cell, str(r.seed), r.status, f"{r.best_valid * scale:.4g}",
                 f"{r.test * scale:.4g}", str(r.best_epoch), str(r.epochs_trained),
                 f"{r.wall_s:.1f}", f"{per_epoch:.3f}"])
  header = ["cell", "seed", "status", "best valid", "test", "best epoch", "epochs", "time s",
            "s / model-epoch"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines) + "\n(accuracies in %, regression MSE in original units)"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--study", default="activation", help="activation, loss or all")
  p.add_argument("--task", default=None, help="comma-separated tasks (default: all)")
  p.add_argument("--head", default=None)
  p.add_argument("--loss", default=None)
  p.add_argument("--seeds", type=int, default=1)
  p.add_argument("--first_seed", type=int, default=0)
  p.add_argument("--split_seed", type=int, default=0)
  p.add_argument("--data_dir", default=None, help="the four MNIST IDX files (as jaxact)")
  p.add_argument("--max_epochs", type=int, default=100)
  p.add_argument("--patience", type=int, default=10)
  p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
  p.add_argument("--device", default=None, help="torch device (default: cuda if available, "
                 "else cpu)")
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  p.add_argument("--verbose", action="store_true", help="print every epoch")
  p.add_argument("--tf32", action="store_true",
                 help="allow TF32 for matmuls and convolutions on a GPU (default: full float32)")
  args = p.parse_args(argv)
  allow_tf32(args.tf32)

  from jaxact.data import mnist as data_lib  # pylint: disable=g-import-not-at-top
  tasks = None if args.task is None else tuple(args.task.split(","))
  cells = studies.select_cells(args.study, tasks, args.head, args.loss)
  split = data_lib.load_split(args.data_dir, args.split_seed)
  if args.threads:
    torch.set_num_threads(args.threads)
  device = args.device or default_device()
  print(f"torch {torch.__version__}, {device}, TF32 {'allowed' if args.tf32 else 'off'}, "
        f"{torch.get_num_threads()} threads; data {split.source} "
        f"(split {split.fingerprint})", flush=True)
  results, start = [], time.perf_counter()
  for task, task_cells in cells.items():
    data = TorchTaskData.from_split(split, task).to(device)
    for cell in task_cells:
      for seed in range(args.first_seed, args.first_seed + args.seeds):
        r = train_cell(cell, seed, data, max_epochs=args.max_epochs, patience=args.patience,
                       device=device, progress=print if args.verbose else None)
        print(f"{r.cell} seed {seed}: {r.status}, best valid {r.best_valid:.4g}, test "
              f"{r.test:.4g}, best epoch {r.best_epoch}, {r.epochs_trained} epochs, "
              f"{r.wall_s:.1f} s", flush=True)
        results.append(r)
  print(format_results(results))
  print(f"total wall time {time.perf_counter() - start:.1f} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump([dataclasses.asdict(r) for r in results], f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
