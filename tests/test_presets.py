"""Named presets (`--preset`): they fill in unset flags, given flags win, names are checked."""

import subprocess
import sys

import pytest
from absl import flags

from jaxact import presets


def _flag_values(argv):
  fv = flags.FlagValues()
  flags.DEFINE_string("study", "activation", "", flag_values=fv)
  flags.DEFINE_integer("seeds", 3, "", flag_values=fv)
  flags.DEFINE_integer("max_epochs", 100, "", flag_values=fv)
  flags.DEFINE_integer("checkpoint_every", 5, "", flag_values=fv)
  fv(["prog", *argv])
  return fv


def test_preset_fills_unset_flags_and_given_flags_win():
  fv = _flag_values(["--seeds=4", "--study=loss"])
  applied = presets.apply_preset("smoke", fv)
  assert (fv.study, fv.seeds, fv.max_epochs, fv.checkpoint_every) == ("loss", 4, 1, 0)
  assert applied == {"max_epochs": 1, "checkpoint_every": 0}


def test_study_presets_name_their_study():
  for name in ("activation", "loss", "hidden"):
    fv = _flag_values([])
    presets.apply_preset(name, fv)
    assert fv.study == name


def test_unknown_preset_names_the_choices():
  with pytest.raises(ValueError, match="unknown preset 'fast': choose one of activation, loss"):
    presets.get_preset("fast")


def test_every_preset_sets_flags_of_the_command_line():
  # In a process of its own: jaxact.main defines its flags on absl's global FLAGS.
  code = ("import jaxact.main\nfrom absl import flags\nfrom jaxact import presets\n"
          "names = {f.name for f in flags.FLAGS.get_flags_for_module('jaxact.main')}\n"
          "print(sorted({k for p in presets.PRESETS.values() for k in p.flags} - names))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout
