"""Tests of lrstudy.records: the run folder layout, the DONE marker, atomic writes and the environment."""

import math
import os

import pytest
import torch

from lrstudy import records
from lrstudy.records import DONE, environment_info, is_complete, read_record, write_atomic, write_json, write_record

RECORD_FILES = ["config.json", "history.jsonl", "summary.json", "environment.json", DONE]

CONFIG = {"lr": 0.1, "seed": 0, "dataset": "double_mnist"}
HISTORY = [
    {"step": 0, "train_loss": 2.3, "test_conflicting_accuracy": math.nan},
    {"step": 10, "train_loss": 1.5, "test_conflicting_accuracy": 0.25},
]
SUMMARY = {
    "status": "diverged",
    "accuracy": math.nan,
    "steps": 3,
    "pruning_curve": [{"sparsity": 0.5, "accuracy": math.nan}],
}
ENVIRONMENT = {"torch": "2.0", "device": "cpu"}


def write_sample(run_dir):
    """Write the sample record into ``run_dir`` and return the folder."""
    return write_record(run_dir, CONFIG, HISTORY, SUMMARY, ENVIRONMENT)


@pytest.mark.parametrize("name", RECORD_FILES)
def test_write_record_creates_file(tmp_path, name):
    run_dir = write_sample(tmp_path / "run")
    assert (run_dir / name).is_file()


def test_write_record_only_record_files(tmp_path):
    run_dir = write_sample(tmp_path / "run")
    assert sorted(os.listdir(run_dir)) == sorted(RECORD_FILES)


def test_write_record_returns_folder(tmp_path):
    assert write_sample(tmp_path / "run") == tmp_path / "run"


def test_write_record_history_lines(tmp_path):
    run_dir = write_sample(tmp_path / "run")
    lines = (run_dir / "history.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert lines[0] == '{"step": 0, "test_conflicting_accuracy": NaN, "train_loss": 2.3}'


def test_is_complete_before_done(tmp_path):
    run_dir = tmp_path / "run"
    assert not is_complete(run_dir)
    run_dir.mkdir()
    assert not is_complete(run_dir)


def test_is_complete_after_write(tmp_path):
    assert is_complete(write_sample(tmp_path / "run"))


def test_is_complete_without_done(tmp_path):
    # An interrupted first write: every file but the marker.
    run_dir = tmp_path / "run"
    write_json(run_dir / "config.json", CONFIG)
    write_json(run_dir / "summary.json", SUMMARY)
    write_json(run_dir / "environment.json", ENVIRONMENT)
    write_atomic(run_dir / "history.jsonl", "")
    assert not is_complete(run_dir)


def test_is_complete_after_interrupted_rewrite(tmp_path, monkeypatch):
    # A complete record rewritten by a run that stops while writing summary.json.
    run_dir = write_sample(tmp_path / "run")
    original_write_json = records.write_json

    def interrupted_write_json(path, data):
        if path.name == "summary.json":
            raise KeyboardInterrupt
        original_write_json(path, data)

    monkeypatch.setattr(records, "write_json", interrupted_write_json)
    with pytest.raises(KeyboardInterrupt):
        write_sample(run_dir)
    assert not is_complete(run_dir)


def test_read_record_round_trip(tmp_path):
    record = read_record(write_sample(tmp_path / "run"))
    assert record["config"] == CONFIG
    assert record["environment"] == ENVIRONMENT
    assert record["summary"]["status"] == "diverged"
    assert record["summary"]["steps"] == 3
    assert [row["step"] for row in record["history"]] == [0, 10]
    assert record["history"][1]["test_conflicting_accuracy"] == 0.25


def test_read_record_keeps_nan(tmp_path):
    record = read_record(write_sample(tmp_path / "run"))
    assert math.isnan(record["summary"]["accuracy"])
    assert math.isnan(record["summary"]["pruning_curve"][0]["accuracy"])
    assert math.isnan(record["history"][0]["test_conflicting_accuracy"])


def test_read_record_empty_history(tmp_path):
    run_dir = write_record(tmp_path / "run", CONFIG, [], SUMMARY, ENVIRONMENT)
    assert read_record(run_dir)["history"] == []


def test_read_record_incomplete_raises(tmp_path):
    run_dir = write_sample(tmp_path / "run")
    (run_dir / DONE).unlink()
    with pytest.raises(FileNotFoundError) as raised:
        read_record(run_dir)
    assert str(run_dir) in str(raised.value)
    assert DONE in str(raised.value)


def test_read_record_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="run record"):
        read_record(tmp_path / "missing")


def test_write_atomic_writes_text(tmp_path):
    path = tmp_path / "nested" / "file.txt"
    write_atomic(path, "first\n")
    write_atomic(path, "second\n")
    assert path.read_text(encoding="utf-8") == "second\n"


def test_write_atomic_no_temporary_files(tmp_path):
    write_atomic(tmp_path / "file.txt", "text")
    write_json(tmp_path / "data.json", {"a": 1})
    assert sorted(os.listdir(tmp_path)) == ["data.json", "file.txt"]


def test_write_atomic_failure_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "file.txt"
    path.write_text("old", encoding="utf-8")

    def failing_replace(source, target):
        raise OSError("simulated rename failure")

    monkeypatch.setattr(records.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated rename failure"):
        write_atomic(path, "new")
    assert os.listdir(tmp_path) == ["file.txt"]
    assert path.read_text(encoding="utf-8") == "old"


def test_environment_info_values():
    info = environment_info("cpu")
    assert info["torch"] == torch.__version__
    assert info["device"] == "cpu"
    assert info["torch_threads"] == torch.get_num_threads()
    assert isinstance(info["git_commit"], str)
    assert info["git_commit"] != ""


def test_environment_info_no_gpu_on_cpu():
    assert "gpu" not in environment_info("cpu")
