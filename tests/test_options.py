"""One declaration per option (jaxact/study/options.py): what is generated from it.

A toy training option, declared in a copy of the registry (and its label part in
jaxact/engine/labels.py), gets its flag, its row in docs/flags.md, its identity entry,
its label and record, and its check;
the generated identity equals the one of 59bc533 (before the declarations) for
every committed run.json; the command line validates a run once.
"""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from jaxact.engine import labels as labels_lib
from jaxact.study import config as config_lib
from jaxact.cli import flagdoc
from jaxact.study import options
from jaxact.study import presets
from jaxact.engine import program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class _ToyEngine(program.EngineConfig):
  """The training group with one more hyper-parameter: what a new option adds to it."""
  warmup: int = 0


_TOY = options.Option(
    "warmup", "training", "Warm-up epochs of the learning rate (toy).", options.INTEGER,
    field="engine.warmup", check=lambda v: None if v >= 0 else f"--warmup must be 0 or more, "
    f"got {v}.")


def test_a_declared_training_option_has_its_flag_doc_row_identity_and_label(monkeypatch):
  monkeypatch.setattr(options, "OPTIONS", options.OPTIONS + (_TOY,))
  # Its part of the training label and record, declared beside the engine.
  monkeypatch.setitem(labels_lib.LABEL_PARTS, "warmup", "warmup {}")
  monkeypatch.setitem(labels_lib.RECORDED, "warmup", None)
  defaults = config_lib.RunConfig(engine=_ToyEngine())
  # Its flag, with the configuration's default, and its value in the configuration.
  flag_values = flags.FlagValues()
  holders = options.define_flags(presets.command_line(), defaults, flag_values)
  flag_values(["prog", "--warmup=3"])
  assert flag_values["warmup"].default == 0 and holders["warmup"].value == 3
  config = options.with_values(defaults, {"warmup": _TOY.kind.parse("warmup", 3)})
  assert config.engine.warmup == 3 and config.engine.max_epochs == defaults.engine.max_epochs
  # Its row in docs/flags.md, among the options that change results.
  study_part = flagdoc.render(defaults=defaults).split("## Options that change only speed")[0]
  assert "| `--warmup` | `0` | Warm-up epochs of the learning rate (toy). |" in study_part
  # Its identity entry, and its part of the training label and record.
  assert config_lib.run_identity(config)["warmup"] == 3
  assert config_lib.run_identity(defaults)["warmup"] == 0
  assert labels_lib.training_label(config.engine) == "warmup 3"
  assert labels_lib.training_label(defaults.engine) == ""
  assert labels_lib.training_record(config.engine)["warmup"] == 3
  # Its check, in the one validator.
  with pytest.raises(config_lib.UserError, match="^--warmup must be 0 or more, got -1.$"):
    config_lib.validate(options.with_values(defaults, {"warmup": -1}))
  # Declared out of the identity, it leaves it.
  monkeypatch.setattr(options, "OPTIONS",
                      options.OPTIONS[:-1] + (dataclasses.replace(_TOY, identity=False),))
  assert "warmup" not in config_lib.run_identity(config)


def test_every_flag_default_parses_back_to_the_run_configs_value():
  defaults = config_lib.RunConfig()
  flag_values = flags.FlagValues()
  options.define_flags(presets.command_line(), defaults, flag_values)
  assert list(flag_values) == [o.name for o in presets.command_line()]
  for option in presets.command_line():
    if option.field is not None and flag_values[option.name].value is not None:
      parsed = option.kind.parse(option.name, flag_values[option.name].value)
      assert parsed == option.get(defaults), option.name
  assert options.with_values(defaults, {}) == defaults


def _identity_at_59bc533(config_dict: dict) -> dict:
  """checkpoint.config_identity as written by hand before the declarations (59bc533)."""
  out = {}
  for key, value in config_dict.items():
    if key in ("data_dir", "tfds_dir"):
      continue
    if key in ("engine", "execution") and isinstance(value, dict):
      out.update({k: v for k, v in value.items()
                  if k not in ("member_mode", "eval_examples", "conv", "compact_in_background")})
    else:
      out[key] = value
  return json.loads(json.dumps(out))


def test_generated_identity_equals_the_hand_written_one_for_every_committed_run():
  paths = sorted(glob.glob(os.path.join(ROOT, "experiments", "**", "run.json"), recursive=True))
  assert len(paths) >= 20
  for path in paths:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)["config"]
    assert options.config_identity(config) == _identity_at_59bc533(config), path
  every = config_lib.RunConfig(
      study="hidden", task=("multiclass",), head="softmax", norm=True, seeds=2, data_dir="/d",
      execution=program.ExecutionConfig(member_mode="vmap", conv="native", compact=True,
                                        eval_examples=64))
  every = options.with_values(every, dict(learning_rate=(1e-3, 1e-4), init=("he",),
                                          batch_norm=True, depth=(2, 4)))
  assert options.config_identity(every.to_dict()) == _identity_at_59bc533(every.to_dict())
  assert list(options.config_identity(every.to_dict())) == list(
      _identity_at_59bc533(every.to_dict()))


def test_the_command_line_validates_a_run_once(tmp_path):
  # In a process of its own (jaxact.main defines absl's global flags); the data loading is
  # replaced by a refusal, so nothing trains.
  code = f"""
import sys
from absl import flags
from jaxact.study import config
from jaxact.data import mnist as data
from jaxact.data import idx as idx_lib
from jaxact.cli import main
from jaxact.study import train
calls = []
validate = config.validate
def counted(c):
  calls.append(1)
  validate(c)
def refuse(*args, **kwargs):
  raise idx_lib.DataError("no data in this test")
train.validate = counted
train.check_memory = lambda *args: None
data.load_run_data = refuse
flags.FLAGS(["prog", "--task=binary", "--seeds=1", "--workdir={tmp_path / 'w'}"])
try:
  main.main(["prog"])
except SystemExit as err:
  print("exit", err.code, "validated", len(calls))
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=300, check=False)
  assert out.stdout.split() == ["exit", "2", "validated", "1"], out.stdout + out.stderr[-2000:]
  assert "no data in this test" in out.stderr
