"""`python -m jaxact`: the command line of jaxact.main (see there)."""

from jaxact.cli import main

if __name__ == "__main__":
  main.run()
