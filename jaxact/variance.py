"""`python -m jaxact.variance`: the command of `jaxact.analysis.variance`."""

from jaxact.analysis.variance import run

if __name__ == "__main__":
  run()
