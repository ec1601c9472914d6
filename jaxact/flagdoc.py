"""`python -m jaxact.flagdoc`: the command of `jaxact.cli.flagdoc`."""

from jaxact.cli.flagdoc import run

if __name__ == "__main__":
  run()
