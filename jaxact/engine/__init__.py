"""The training engine: every member of a task in one compiled program, and its host loop.

The module map: docs/how_it_works.md."""
