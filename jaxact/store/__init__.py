"""What a run writes: its workdir, checkpoints, results records, metrics and provenance.

The module map: docs/how_it_works.md."""
