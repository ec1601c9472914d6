"""`python -m jaxact.compare`: the command of `jaxact.analysis.compare`."""

from jaxact.analysis.compare import run

if __name__ == "__main__":
  run()
