"""Named presets (`--preset`): they fill in unset flags, given flags win, names are checked."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from jaxact.study import options
from jaxact.study import presets


def test_a_preset_is_its_values_with_overrides_on_top():
  from jaxact.study import train
  smoke = presets.get_preset("smoke")
  config = smoke.config(study="loss", seeds=4, learning_rate=3e-4)
  assert config == options.with_values(train.RunConfig(), dict(
      study="loss", seeds=4, max_epochs=1, learning_rate=(3e-4,)))
  assert (config.study, config.seeds, config.engine.max_epochs) == ("loss", 4, 1)
  assert config.engine.learning_rate == 3e-4 and config.arms == train.RunConfig().arms
  assert smoke.arguments() == {"checkpoint_every": 0}
  assert presets.get_preset("all").arguments() == {}
  with pytest.raises(ValueError, match="no option of the run's configuration is called sed"):
    smoke.config(sed=1)


def test_every_preset_is_a_valid_configuration_of_declared_options():
  from jaxact.study import train
  for name in ("activation", "loss", "hidden"):
    assert presets.get_preset(name).config().study == name
  for preset in presets.PRESETS.values():
    for key in preset.values:
      assert options.get(key).flag, (preset.name, key)
    train.validate(preset.config())
  interventions = presets.get_preset("interventions").config()
  assert interventions.arms.listed[0] == "protocol" and interventions.task == ("multiclass",)


def test_unknown_preset_names_the_choices():
  with pytest.raises(ValueError, match="unknown preset 'fast': choose one of activation, loss"):
    presets.get_preset("fast")


def test_command_line_applies_the_preset_under_the_given_flags():
  # In a process of its own: jaxact.main defines its flags on absl's global FLAGS.
  code = (
      "from absl import flags\n"
      "from jaxact.cli import main\nfrom jaxact.study import presets\n"
      "for argv, kw in ((['--preset=smoke', '--seeds=4', '--study=loss'], dict(seeds=4, study='loss')),\n"
      "                 (['--preset=interventions', '--learning_rate=1e-3,3e-3'],\n"
      "                  dict(learning_rate=(1e-3, 3e-3)))):\n"
      "  flags.FLAGS.unparse_flags()\n"
      "  flags.FLAGS(['prog', *argv])\n"
      "  name = argv[0].split('=')[1]\n"
      "  print(main.config_from_flags() == presets.get_preset(name).config(**kw),\n"
      "        main.run_arguments()['checkpoint_every'])\n"
      "flags.FLAGS.unparse_flags()\n"
      "flags.FLAGS(['prog', '--preset=smoke', '--checkpoint_every=3'])\n"
      "print(main.run_arguments()['checkpoint_every'])\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["True", "0", "True", "5", "3"], out.stdout + out.stderr


def test_describe_names_the_preset_and_the_overrides():
  from jaxact.study import train
  from jaxact.engine import program
  config = train.RunConfig(study="all", task=("multiclass",), head="sigmoid", seeds=10,
                           engine=program.EngineConfig(learning_rate=1e-4))
  assert presets.describe(config.to_dict()) == [
      "--preset=all", "--task=multiclass", "--head=sigmoid", "--learning_rate=0.0001"]
  hidden = train.RunConfig(study="hidden", seeds=3, conventions=("torch", "logits"),
                           engine=program.EngineConfig(max_epochs=30))
  assert presets.describe(hidden.to_dict()) == ["--preset=hidden", "--convention=both"]


def test_describe_uses_no_preset_where_none_shortens_the_command():
  from jaxact.study import train
  assert presets.describe(train.RunConfig().to_dict()) == []
  # A study preset never names a run of another study, and smoke only a run of its values.
  loss = train.RunConfig(study="loss", seeds=1, task=("binary",))
  assert presets.describe(loss.to_dict()) == ["--study=loss", "--task=binary", "--seeds=1"]


def test_describe_refuses_options_without_a_flag():
  from jaxact.engine import program
  from jaxact.study import train
  config = train.RunConfig(engine=program.EngineConfig(b1=0.8))
  with pytest.raises(ValueError, match="b1 has no flag"):
    presets.describe(config.to_dict())


def test_every_committed_run_is_its_preset_command():
  # For each run.json under experiments/: describe's flags, parsed by the command line,
  # make a run of the same identity (the test of the names experiments/README.md gives).
  code = r"""
import glob, json, os
import jaxact.cli.main as main
from absl import flags
from jaxact.store import checkpoint
from jaxact.study import options
from jaxact.study import presets
from jaxact.study import train
from jaxact.study import config as config_lib
default = config_lib.DEFAULT_IDENTITY   # a run.json without "split" was a fixed-split run
paths = sorted(glob.glob(os.path.join("experiments", "**", "run.json"), recursive=True))
assert len(paths) >= 10, paths
for path in paths:
  config = json.load(open(path))["config"]
  argv = presets.describe(config)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["prog"] + argv)
  old = {k: v for k, v in options.config_identity(config).items()
         if presets.LEGACY_DEFAULTS.get(k, object()) != v}
  diffs = checkpoint.identity_differences(old, train.run_identity(main.config_from_flags()), default)
  print(path, " ".join(argv), diffs)
  assert not diffs, (path, argv, diffs)
print("checked", len(paths))
"""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                       check=False)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "checked" in out.stdout


def test_presets_command_names_a_bad_workdir(tmp_path):
  out = subprocess.run([sys.executable, "-m", "jaxact.study.presets", str(tmp_path)],
                       capture_output=True, text=True, check=False)
  assert out.returncode == 2
  assert "no run.json in or below" in out.stderr and "give the workdir of a run" in out.stderr


def _committed_runs(root: str) -> list[str]:
  """The workdirs under experiments/ with a run.json that git tracks (all of them without git)."""
  out = subprocess.run(["git", "ls-files", "experiments"], capture_output=True, text=True,
                       cwd=root, check=False)
  if out.returncode == 0 and out.stdout.strip():
    paths = [p for p in out.stdout.split() if p.endswith("/run.json")]
  else:
    paths = [os.path.relpath(p, root) for p in glob.glob(
        os.path.join(root, "experiments", "**", "run.json"), recursive=True)]
  return sorted(os.path.dirname(p) for p in paths)


def test_experiments_readme_names_every_run_as_its_preset():
  # Rows for runs still training (not committed) are not required.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "experiments", "README.md"), encoding="utf-8") as f:
    readme = f.read()
  begin, end = "<!-- presets:begin -->\n", "<!-- presets:end -->"
  assert begin in readme and end in readme, "experiments/README.md lacks the presets markers"
  block = readme[readme.index(begin) + len(begin):readme.index(end)]
  rows = dict(re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|$", block, re.M))
  fix = "regenerate it with the command experiments/README.md gives above it"
  missing = [w for w in _committed_runs(root) if w not in rows]
  assert not missing, f"experiments/README.md's table of presets lacks {missing}: {fix}"
  for workdir, described in rows.items():
    with open(os.path.join(root, workdir, "run.json"), encoding="utf-8") as f:
      config = json.load(f)["config"]
    assert described == (" ".join(presets.describe(config)) or "(no flags: the defaults)"), (
        f"{workdir}: {fix}")
