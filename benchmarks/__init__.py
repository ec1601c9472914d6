"""Benchmarks of jaxact against a plain PyTorch reference (see benchmarks/README.md)."""
