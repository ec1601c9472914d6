"""The study grids, a run's configuration, and train_and_evaluate.

The module map: docs/how_it_works.md."""
