"""`python -m jaxact.main`: the command of `jaxact.cli.main`."""

from jaxact.cli.main import run

if __name__ == "__main__":
  run()
