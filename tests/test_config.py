"""The one run configuration: its two groups, the command line's defaults, its one validator,
and a run's identity across the layouts of run.json (before and after the execution group).

jaxact.main defines its flags on absl's global FLAGS, and jaxact.compare (imported by
other tests) defines --task too, so what parses flags runs in a process of its own.
"""

import dataclasses
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from jaxact.store import checkpoint
from jaxact.study import config as config_lib
from jaxact.cli import flagdoc
from jaxact.study import options
from jaxact.study import train
from jaxact.engine import program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str) -> str:
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout


def _old_layout(config: train.RunConfig) -> dict:
  """`config.to_dict()` as run.json held it up to 30ce5cb: every engine option under "engine"."""
  d = config.to_dict()
  d["engine"].update(d.pop("execution"), compact_in_background=False)
  return d


# -- the two groups -----------------------------------------------------------


def test_training_and_execution_options_are_two_groups():
  training = {f.name for f in dataclasses.fields(program.EngineConfig)}
  execution = {f.name for f in dataclasses.fields(program.ExecutionConfig)}
  assert training == {"max_epochs", "patience", "batch_size", "learning_rate", "b1", "b2", "eps",
                      "weight_decay", "optimizer", "momentum", "head_bias_init"}
  assert execution == {"member_mode", "matmul_precision", "conv", "compact", "eval_examples"}
  # Each field is one declared option of its group (jaxact.study.options); docs/flags.md documents
  # the execution group's with the run-level options, apart from the study's.
  def declared(prefix, group):
    return {o.leaf for o in options.OPTIONS if (o.field or "").startswith(prefix)
            and o.group == group}
  assert declared("engine.", "training") == training
  assert declared("execution.", "execution") == execution
  assert "execution" not in flagdoc.STUDY_GROUPS and "training" in flagdoc.STUDY_GROUPS
  config = train.RunConfig()
  assert isinstance(config.engine, program.EngineConfig)
  assert isinstance(config.execution, program.ExecutionConfig)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.execution.compact = True   # type: ignore[misc]


# -- defaults from one place ----------------------------------------------------


def test_command_line_defaults_are_the_run_configs():
  out = _python(
      "from absl import flags\n"
      "from jaxact.cli import main\nfrom jaxact.study import train\n"
      "flags.FLAGS(['prog'])\n"
      "print(main.config_from_flags() == train.RunConfig())\n"
      "print(flags.FLAGS['checkpoint_every'].default == train.CHECKPOINT_EVERY)\n")
  assert out.split() == ["True", "True"], out


# -- one validator, for the command line and the Python API alike ---------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(study="nope"), "unknown --study 'nope': choose one of activation, loss, hidden or all."),
    (dict(task="ranking"), "unknown --task 'ranking': choose one of"),
    (dict(task=("binary", "ranking")), "unknown --task 'ranking'"),
    (dict(conventions=("numpy",)), "unknown convention 'numpy'"),
    (dict(seeds=0), "--seeds must be a positive number of seeds per cell, got 0."),
    (dict(first_seed=2**32 - 1, seeds=2),
     "the member seeds run from --first_seed=4294967295 to 4294967296, past 4294967295"),
    (dict(engine=program.EngineConfig(max_epochs=0)), "--max_epochs must be positive, got 0."),
    (dict(engine=program.EngineConfig(optimizer="adam")), "unknown --optimizer 'adam'"),
    (dict(execution=program.ExecutionConfig(member_mode="fast")),
     "unknown --member_mode 'fast': choose one of auto, vmap, loop."),
    (dict(execution=program.ExecutionConfig(matmul_precision="fp8")),
     "unknown --matmul_precision 'fp8'"),
    (dict(execution=program.ExecutionConfig(conv="fft")), "unknown --conv 'fft'"),
    (dict(execution=program.ExecutionConfig(eval_examples=-1)),
     "eval_examples must be a positive number of rows"),
])
def test_validate_names_the_bad_option(kwargs, message):
  config = train.RunConfig(**kwargs)
  with pytest.raises(train.UserError) as err:
    train.validate(config)
  assert message in str(err.value)
  with pytest.raises(train.UserError, match="^" + re.escape(str(err.value)) + "$"):
    train.plan(config)   # plan validates the same way


def test_python_api_gets_the_command_lines_message(tmp_path):
  workdir = tmp_path / "w"
  with pytest.raises(train.UserError, match="unknown --study 'nope': choose one of"):
    train.train_and_evaluate(train.RunConfig(study="nope"), str(workdir))
  assert not workdir.exists()   # refused before anything is written


def test_validate_accepts_the_defaults_and_every_study():
  for study in ("activation", "loss", "hidden", "all", None):
    train.validate(train.RunConfig(study=study))


def test_the_last_member_seed_may_be_the_largest_uint32():
  train.validate(train.RunConfig(first_seed=2**32 - 2, seeds=2))
  with pytest.raises(train.UserError) as err:
    train.validate(train.RunConfig(first_seed=2**32 - 2, seeds=3))
  # The fix names both ways out, each at the largest value that fits.
  assert "--first_seed to at most 4294967293" in str(err.value)
  assert "--seeds to at most 2" in str(err.value)
  train.validate(train.RunConfig(task=("binary", "multiclass"), seeds=1,
                                 execution=program.ExecutionConfig(eval_examples=0)))


# -- a run's identity, in both layouts of run.json ------------------------------


def test_identity_is_the_same_in_both_layouts():
  config = train.RunConfig(task="binary", seeds=2, data_dir="/a", engine=program.EngineConfig(
      max_epochs=7, optimizer="sgd"), execution=program.ExecutionConfig(
          member_mode="vmap", conv="native", compact=True, matmul_precision="tensorfloat32",
          eval_examples=64))
  new = train.run_identity(config)
  assert options.config_identity(_old_layout(config)) == new
  # compact and matmul_precision change results; member_mode, conv and eval_examples do not.
  assert new["compact"] is True and new["matmul_precision"] == "tensorfloat32"
  assert not {"member_mode", "conv", "eval_examples", "compact_in_background", "execution",
              "engine", "data_dir"} & set(new)
  assert new["max_epochs"] == 7 and new["optimizer"] == "sgd"


def test_old_run_json_with_compact_in_background_resumes(tmp_path):
  config = train.RunConfig(task="binary", seeds=1)
  (tmp_path / "results").mkdir()
  (tmp_path / "results" / "binary.json").write_text("{}")
  old = _old_layout(config)
  old["engine"]["compact_in_background"] = True   # never part of the identity
  (tmp_path / "run.json").write_text(json.dumps({"config": old}))
  previous = config_lib.check_workdir_config(str(tmp_path), config)
  assert previous["config"]["engine"]["compact_in_background"] is True
  other = dataclasses.replace(config, execution=program.ExecutionConfig(compact=True))
  with pytest.raises(train.UserError, match="compact: False before, True now"):
    config_lib.check_workdir_config(str(tmp_path), other)


def _run_config(path: str) -> dict:
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    return json.load(f)["config"]


# The committed runs written with the network flags (the three oldest predate them, and
# their identities differ from today's at 30ce5cb already: init, hidden_activation,
# dense_layers were top-level keys then).
_COMMITTED = sorted(
    p for p in (os.path.relpath(q, ROOT) for q in glob.glob(
        os.path.join(ROOT, "experiments", "**", "run.json"), recursive=True))
    if "network" in _run_config(p))


def test_committed_runs_keep_their_identity():
  """Each committed run.json (written in the layout of 30ce5cb and earlier, every engine option
  under "engine"; `_old_layout` keeps that layout tested should they be rewritten) and today's
  RunConfig of its recorded command have the same identity, so those workdirs resume and
  their finished tasks are reused. A run.json without "split" predates per-member splits:
  its command, read today, needs --split=fixed (the split it was trained on)."""
  for must in ("experiments/all_torch_10seeds/run.json",
               "experiments/collapse_interventions/sgd_lr0.1_wd0/run.json",
               "experiments/hidden_depth1_3seeds/run.json"):
    assert must in _COMMITTED
  code = (
      "import json, sys\n"
      "from absl import flags\n"
      "from jaxact.cli import main\nfrom jaxact.study import train\n"
      "out = {}\n"
      "for path in sys.argv[1:]:\n"
      "  run = json.load(open(path))\n"
      "  argv = run['argv'] + ([] if 'split' in run['config'] else ['--split=fixed'])\n"
      "  flags.FLAGS.unparse_flags()\n"
      "  flags.FLAGS(argv)\n"
      "  out[path] = train.run_identity(main.config_from_flags())\n"
      "print(json.dumps(out))\n")
  proc = subprocess.run([sys.executable, "-c", code, *_COMMITTED], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  now = json.loads(proc.stdout)
  assert len(now) == len(_COMMITTED) >= 20
  exact = 0
  for path in _COMMITTED:
    config = _run_config(path)
    before = options.config_identity(config)
    diffs = checkpoint.identity_differences(before, now[path], config_lib.DEFAULT_IDENTITY)
    assert diffs == [], path
    if "head_bias_init" in config["engine"]:
      # Written with every field of today but the split and the arms: the very dict a
      # checkpoint's identity compares, once the split it was trained on is named.
      later = {k: config_lib.DEFAULT_IDENTITY[k] for k in ("split", "arms")}
      assert {**later, **before} == now[path], path
      exact += 1
  assert exact >= 10
