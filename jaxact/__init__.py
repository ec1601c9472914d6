"""jaxact: what happens when a network's final activation or loss does not match its task.

Modules, one concept each:
  data     MNIST through tensorflow-datasets (download, or the four IDX files offline); the split
  tasks    the five tasks: targets, output widths, metrics
  losses   heads (final activations) and losses, in the torch and logits conventions
  model    the CNN of PROTOCOL section 2 (Flax NNX) and its initialisations
  engine   the training engine: all cells x seeds of a task in one jitted program
  studies  the grids of the activation, loss and hidden-layer studies and the cells a user's flags select
  checkpoint  orbax checkpoints of a running task (resume after a kill)
  train    train_and_evaluate: runs a study into a workdir
  report   markdown tables and PNG curves from a workdir's saved results
  main     the absl command line
"""

__version__ = "0.1.0"
