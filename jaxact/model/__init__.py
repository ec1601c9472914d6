"""What a member trains: the network (Flax NNX), the heads and losses, the cells and the study grids.

The module map: docs/how_it_works.md."""
