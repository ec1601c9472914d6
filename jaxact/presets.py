"""`python -m jaxact.presets`: the command of `jaxact.study.presets`."""

from jaxact.study.presets import run

if __name__ == "__main__":
  run()
