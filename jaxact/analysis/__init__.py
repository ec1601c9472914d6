"""Statistics, diagnoses, reports, figures and comparisons, read from saved results.

The module map: docs/how_it_works.md."""
