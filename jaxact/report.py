"""`python -m jaxact.report`: the command of `jaxact.analysis.report`."""

from jaxact.analysis.report import run

if __name__ == "__main__":
  run()
