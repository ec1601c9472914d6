"""jaxact: what happens when a network's final activation or loss does not match its task.

Modules, one concept each:
  data            MNIST through tensorflow-datasets (download, or the four IDX files offline); the split
  tasks           the five tasks, each a Task with its behaviour: targets, width, metric
  losses          heads (final activations) and losses, in the torch and logits conventions
  model           the CNN of PROTOCOL section 2 (Flax NNX) and its initialisations
  studies         the grids of the activation, loss and hidden-layer studies; the cells flags select
  engine          the training engine: all cells x seeds of a task in one jitted program
  program         the engine's pure program: TrainState, one epoch, optimizers; EngineConfig
                  (training hyper-parameters) and ExecutionConfig (how it is computed)
  stacked         the network of the stacked members, per-member helpers, target transforms
  evaluation      the engine's valid and test passes, in chunks
  layout          the engine's member layouts: vmapped or looped members
  probes          the engine's per-epoch diagnostics, one class each
  runner          the engine's host loop: RunSpec in, Outcome (results, histories) out
  sharding        the member axis over every device and host
  memory          a run's memory, estimated before anything is built
  checkpoint      orbax checkpoints of a running task (resume after a kill)
  metrics_writer  what a run writes while it trains (metrics.jsonl, TensorBoard) and its CSVs
  options         every option declared once: flags, checks, flag docs, identity, labels from it
  config          RunConfig, every option of a run: its one validator and its identity
  workdir         a run's workdir: layout, resuming, --restart, the finished tasks a rerun reuses
  records         the results format: typed records with a schema version, written and read here
  compile_ahead   --compile_ahead: the next task compiled in a thread while one trains
  train           train_and_evaluate: runs a study into a workdir
  diagnostics     each finished member's failure class, with its evidence
  stats           intervals and paired tests over seeds (scipy.stats)
  claims          the hidden-layer study's claims, checked against a run
  tables          which cells of a run make which table (report and figures)
  report          Markdown tables from a workdir's saved results
  figures         the report's PNGs
  compare         intervention arms across runs, paired by seed
  variance        the split's and the seed's shares of a cell's variance (crossed runs)
  presets         named runs as option values (from Python, and --preset); describe a run
  flagdoc         docs/flags.md from the option declarations
  main            the absl command line (also `python -m jaxact` and the `jaxact` script)
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
