"""Where a run was made: the machine, the git revision and the package versions it records.

`train_and_evaluate` writes these into run.json, one `segment` per start of the run (a resumed
run keeps every earlier one), and names the revision in each results file; the benchmarks write
them into their results. So every committed figure can name the machine, the commit and the
versions that made it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import re
import subprocess
from typing import Sequence

import jax

from jaxact import __version__

# The checkout that holds this package (when it runs from one): pyproject.toml, constraints.txt.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Distributions that plug a backend into jaxlib: TPU's libtpu, the CUDA and ROCm plugins.
_PLUGIN = re.compile(r"libtpu(-nightly)?|jax-(cuda|rocm)\d*-(plugin|pjrt)")


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
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def backend_plugins() -> dict[str, str]:
  """The installed backend plugins of jax (libtpu, jax-cuda12-plugin, ...) and their versions."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  out = {}
  for dist in metadata.distributions():
    name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "").lower())
    if _PLUGIN.fullmatch(name):
      out[name] = dist.version
  return dict(sorted(out.items()))


def backend() -> dict:
  """The jax backend a run uses: platform (cpu, gpu, tpu), its version string, its plugins."""
  client = jax.devices()[0].client
  return {"platform": jax.default_backend(),
          "platform_version": str(getattr(client, "platform_version", "") or "") or None,
          "plugins": backend_plugins()}


def constraints_sha256() -> str | None:
  """SHA-256 of constraints.txt where the package runs from a checkout that has one, else None."""
  path = os.path.join(_CHECKOUT, "constraints.txt")
  if not os.path.exists(os.path.join(_CHECKOUT, "pyproject.toml")):
    return None
  try:
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()
  except OSError:
    return None


def now() -> str:
  """The local time to the second, as run.json writes it (ISO 8601)."""
  return datetime.datetime.now().isoformat(timespec="seconds")


def segment(command: str) -> dict:
  """The record of one start of a run: when, what code, which packages, where.

  Keys: started, ended (None until it ends; the caller sets it), command,
  git_revision, jaxact_version, python, machine (`machine_description`),
  backend (`backend`), versions (`package_versions`), constraints_sha256.
  """
  return {"started": now(), "ended": None, "command": command,
          "git_revision": git_revision(), "jaxact_version": __version__,
          "python": platform.python_version(), "machine": machine_description(),
          "backend": backend(), "versions": package_versions(),
          "constraints_sha256": constraints_sha256()}


VersionDiff = tuple[str, "str | None", "str | None"]


def version_differences(before: dict | None, current: dict) -> list[VersionDiff]:
  """(package, version before, version now) for each package whose version differs.

  Packages that `before` or `current` does not record (a run.json from before
  they were recorded) are left out.
  """
  before = before or {}
  return [(name, before[name], current[name]) for name in sorted(before)
          if name in current and before[name] != current[name]]


def segments_of(previous: dict) -> list[dict]:
  """The segments an earlier run.json records; a run.json of one record becomes one segment.

  Run.json files before segments existed (the committed experiments' among
  them) hold one record at their top level, that of their last start, with
  the times of earlier resumes under "resumed"; it becomes the first segment,
  those times kept.
  """
  if isinstance(previous.get("segments"), list):
    return [dict(s) for s in previous["segments"] if isinstance(s, dict)]
  old = {"started": previous.get("started"), "ended": previous.get("finished"),
         "command": previous.get("command")}
  for key in ("git_revision", "jaxact_version", "machine", "versions"):
    if key in previous:
      old[key] = previous[key]
  if previous.get("resumed"):
    old["resumed"] = list(previous["resumed"])
  return [old]


def summarize_versions(diffs: Sequence[VersionDiff]) -> str:
  """'jax 0.10.1 before, 0.10.2 now; flax ...' for `version_differences`."""
  return "; ".join(f"{name} {a} before, {b} now" for name, a, b in diffs)
