"""jaxact: what happens when a network's final activation or loss does not match its task.

Sub-packages, imports going one way: cli -> study -> analysis -> store -> engine ->
model -> data. What each module holds: docs/how_it_works.md, "Module map".
"""

import json as _json
import os as _os


def _version() -> str:
  """pyproject.toml's version: from the installed package's metadata, else the source tree's.

  The metadata counts only where it describes this copy of the package (an
  install of it, or an editable install of this checkout); a checkout used
  through PYTHONPATH beside another install, or never installed, reads its
  own pyproject.toml.
  """
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  package = _os.path.dirname(_os.path.abspath(__file__))
  source = _os.path.dirname(package)
  try:
    dist = metadata.distribution("jaxact")
  except metadata.PackageNotFoundError:
    dist = None
  if dist is not None:
    try:
      url = _json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    except ValueError:
      url = ""
    located = _os.path.abspath(str(dist.locate_file("jaxact/__init__.py")))
    if url == f"file://{source}" or located == _os.path.join(package, "__init__.py"):
      return dist.version
  try:
    import tomllib  # pylint: disable=g-import-not-at-top
    with open(_os.path.join(source, "pyproject.toml"), "rb") as f:
      return tomllib.load(f)["project"]["version"]
  except (OSError, KeyError, ValueError):
    return dist.version if dist is not None else "0+unknown"


__version__ = _version()
