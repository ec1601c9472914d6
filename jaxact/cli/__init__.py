"""The command lines: flags, and the generated flag reference.

The module map: docs/how_it_works.md."""
