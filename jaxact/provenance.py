"""Where a run was made: the machine, the git revision and the package versions it records.

`train_and_evaluate` writes these into run.json (and the benchmarks into their results), so
every committed figure can name the machine, the commit and the versions that made it.
"""

from __future__ import annotations

import os
import platform
import subprocess

import jax


def machine_description() -> str:
  """One line: OS, CPU model and count, JAX backend and devices (and processes, if several)."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
  return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs; "
          f"jax {jax.__version__} on {jax.default_backend()} "
          f"({len(devices)} x {', '.join(kinds)}{processes})")


def git_revision() -> str | None:
  """The checkout's commit (with '+dirty' if modified), or None outside a git checkout."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return rev + ("+dirty" if dirty else "")


VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets",
                      "chex", "absl-py", "numpy", "scipy", "matplotlib")


def package_versions() -> dict[str, str | None]:
  """The installed version of each package that can change a run's results (None: absent)."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  out = {}
  for name in VERSIONED_PACKAGES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out
