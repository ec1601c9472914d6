"""jaxact.store.records: the results format, its writer and its reader (both layouts)."""

import glob
import json
import os

import pytest

from jaxact.store import records
from jaxact.model.cells import Cell

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = sorted(glob.glob(os.path.join(ROOT, "experiments", "**", "results", "*.json"),
                             recursive=True))


def test_every_committed_results_file_loads_as_stored_and_writes_back_unchanged():
  assert COMMITTED
  for path in COMMITTED:
    with open(path, encoding="utf-8") as f:
      raw = f.read()
    data = json.loads(raw)
    result = records.TaskResults.from_dict(data)
    # Files written before the schema had a version read as 0; newer ones carry theirs.
    assert result.schema_version == data.get("schema_version", 0) <= records.SCHEMA_VERSION, path
    assert result.task == data["task"], path
    assert len(result.members) == len(data["members"])
    for m, d in zip(result.members, data["members"]):
      assert m.diagnosis is not None and m.diagnosis.to_dict() == d["diagnosis"], path
      assert (m.seed, m.key, m.test) == (d["seed"], d["key"], d["test"])
    assert json.dumps(result.to_dict(), indent=1) == raw, path


def _member(seed: int, best: float, **fields) -> records.MemberRecord:
  return records.MemberRecord.from_dict(dict(
      cell=Cell("binary", "sigmoid", "bce").to_dict(), seed=seed, best_valid=best, test=best,
      best_epoch=1, epochs_trained=3, status="ok", status_reason=None, status_epoch=None,
      train_loss=[0.5, 0.3, 0.2], valid_metric=[0.6, best, best - 0.01], n_infinite_valid=0,
      n_infinite_test=0, diagnostics={"spread": [0.5, 0.5, 0.5]}, key="binary/sigmoid+bce",
      label="sigmoid + bce", **fields))


def test_a_new_file_is_diagnosed_once_and_read_back_as_written(tmp_path):
  result = records.task_results("binary", [_member(0, 0.97, split_seed=0), _member(1, 0.5)],
                                study="all", metric_name="accuracy", higher_is_better=True,
                                chance_valid=0.5)
  assert [m.kind for m in result.members] == ["healthy", "no_learning"]
  path = str(tmp_path / "binary.json")
  records.write_task_results(path, result)
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  assert list(data)[:3] == ["schema_version", "task", "study"]
  assert data["schema_version"] == records.SCHEMA_VERSION and list(data)[-1] == "members"
  assert list(data["members"][0])[-2:] == ["split_seed", "diagnosis"]
  assert "split_seed" not in data["members"][1]
  back = records.read_task_results(path)
  assert back.to_dict() == data == result.to_dict()
  assert [m.diagnosis for m in back.members] == [m.diagnosis for m in result.members]
  # The stored diagnosis is the one read, whatever the rules say now.
  data["members"][1]["diagnosis"] = {"kind": "collapsed", "evidence": "as stored"}
  assert records.TaskResults.from_dict(data).members[1].kind == "collapsed"


def test_older_layout_members_without_a_diagnosis_are_diagnosed_at_load(tmp_path):
  members = [_member(0, 0.97).to_dict(), _member(1, 0.5).to_dict()]
  members.append(dict(_member(2, 0.96).to_dict(), diagnostics={}))   # nothing measured
  old = {"task": "binary", "chance_valid": 0.5, "members": members}  # no metric, no schema
  result = records.TaskResults.from_dict(old)
  assert result.schema_version == 0 and result.metric_name == "accuracy"
  assert result.higher_is_better and result.is_accuracy
  assert [m.kind for m in result.members] == ["healthy", "no_learning", None]
  assert result.to_dict()["members"][0]["diagnosis"]["kind"] == "healthy"


def test_unreadable_files_are_refused_with_the_file_named(tmp_path):
  path = tmp_path / "binary.json"
  path.write_text(json.dumps({"schema_version": records.SCHEMA_VERSION + 1, "members": []}))
  with pytest.raises(ValueError, match=r"binary\.json.*schema version 2, newer than"):
    records.read_task_results(str(path))
  path.write_text(json.dumps({"task": "binary", "members": [{"seed": 0}]}))
  with pytest.raises(ValueError, match=r"binary\.json.*member 0 cannot be read"):
    records.read_task_results(str(path))


def test_rediagnose_rewrites_only_stale_diagnoses(tmp_path):
  wd = tmp_path / "run"
  (wd / "results").mkdir(parents=True)
  result = records.task_results("binary", [_member(0, 0.97), _member(1, 0.5)],
                                metric_name="accuracy", chance_valid=0.5)
  data = result.to_dict()
  data["members"][1]["diagnosis"] = {"kind": "healthy", "evidence": "older rules"}
  path = wd / "results" / "binary.json"
  path.write_text(json.dumps(data, indent=1))
  assert records.main(["jaxact.store.records", "rediagnose", str(wd)]) == 0
  fixed = json.loads(path.read_text())
  assert fixed["members"][1]["diagnosis"]["kind"] == "no_learning"
  assert dict(fixed, members=None) == dict(data, members=None)
  assert records.rediagnose_file(str(path)) == 0
  assert records.main(["jaxact.store.records", "rediagnose", str(tmp_path / "missing")]) == 2
