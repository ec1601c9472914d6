"""MNIST (IDX files or tensorflow-datasets), the train/valid splits, and the five tasks.

The module map: docs/how_it_works.md."""
