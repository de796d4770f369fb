"""Sweeps: grid expansion, resuming after a kill, divergence and failures that do not stop the sweep."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lrstudy.records import is_complete
from lrstudy.results import load_results, run_statuses
from lrstudy.sweep import expand_grid, preset_configs, run_sweep, select_shard

TINY = {"source": "sklearn_digits", "image_size": 8, "width": 16, "max_steps": 20, "eval_every": 10}


def test_expand_grid_product():
    configs = expand_grid({"lr": [0.1, 0.2], "seed": [0, 1, 2]}, TINY)
    assert len(configs) == 6
    assert {(c.train.lr, c.seed) for c in configs} == {(lr, s) for lr in (0.1, 0.2) for s in (0, 1, 2)}


def test_expand_grid_variants_change_together():
    variants = [{"core_intensity": 1.0, "spurious_intensity": 0.5}, {"core_intensity": 0.5, "spurious_intensity": 1.0}]
    configs = expand_grid({"lr": [0.1]}, {}, variants)
    pairs = {(c.data.core_intensity, c.data.spurious_intensity) for c in configs}
    assert pairs == {(1.0, 0.5), (0.5, 1.0)}


def test_expand_grid_rejects_invalid_value():
    with pytest.raises(ValueError, match="parameter 'lr'"):
        expand_grid({"lr": [0.1, -1]})


def test_preset_override_replaces_fixed_value():
    configs = preset_configs("quick", {"width": ["32"]})
    assert {c.model.width for c in configs} == {32}


def test_default_preset_spans_two_orders_of_magnitude():
    configs = preset_configs("default")
    lrs = sorted({c.train.lr for c in configs})
    assert len(lrs) >= 6
    assert lrs[-1] / lrs[0] >= 100
    assert len({c.seed for c in configs}) >= 3
    assert {c.data.dataset for c in configs} == {"double_mnist", "colored_mnist"}


@pytest.mark.slow
def test_sweep_goes_on_after_divergence_and_failure(tmp_path):
    configs = expand_grid({"lr": [0.1, 50.0]}, {**TINY, "seed": 3})
    missing = expand_grid({"lr": [0.1]}, {**TINY, "source": "torchvision", "data_dir": str(tmp_path / "no-mnist")})
    report = run_sweep(configs + missing, tmp_path / "runs", workers=2)
    results = load_results(tmp_path / "runs").set_index("lr")
    assert sorted(report.completed) == sorted(c.run_id() for c in configs)
    assert list(report.failed) == [missing[0].run_id()]
    assert "FileNotFoundError" in report.failed[missing[0].run_id()]
    assert results.loc[50.0, "status"] == "diverged"
    assert results.loc[0.1, "status"] != "diverged"
    statuses = run_statuses(tmp_path / "runs").set_index("run_id")
    assert statuses.loc[missing[0].run_id(), "status"] == "failed"
    logged = json.loads((tmp_path / "runs" / "sweeps.jsonl").read_text().splitlines()[-1])
    assert logged["failed"] == [missing[0].run_id()]
    assert sorted(logged["completed"]) == sorted(report.completed)


@pytest.mark.slow
def test_killed_sweep_resumes_missing_runs_only(tmp_path):
    runs_dir = tmp_path / "runs"
    sets = [item for name, value in TINY.items() for item in ("--set", f"{name}={value}")]
    command = [sys.executable, "-m", "lrstudy.cli", "sweep", "--preset", "quick", *sets, "--set", "seed=0,1,2"]
    command += ["--set", "dataset=double_mnist", "--runs-dir", str(runs_dir), "--workers", "1"]
    configs = preset_configs(
        "quick", {**{k: [v] for k, v in TINY.items()}, "seed": [0, 1, 2], "dataset": ["double_mnist"]}
    )
    assert len(configs) == 6

    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while sum(is_complete(runs_dir / c.run_id()) for c in configs) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = {
        c.run_id(): (runs_dir / c.run_id() / "DONE").stat().st_mtime_ns
        for c in configs
        if is_complete(runs_dir / c.run_id())
    }
    assert 2 <= len(done_before) < len(configs)

    report = run_sweep(configs, runs_dir, workers=2)
    assert report.skipped == len(done_before)
    assert sorted(report.completed) == sorted(c.run_id() for c in configs if c.run_id() not in done_before)
    for run_id, mtime in done_before.items():
        assert (runs_dir / run_id / "DONE").stat().st_mtime_ns == mtime, f"{run_id} was run again"
    assert len(load_results(runs_dir)) == len(configs)


@pytest.mark.slow
def test_sweep_keeps_executed_notebooks(tmp_path):
    configs = expand_grid({"lr": [0.1]}, TINY)
    run_sweep(configs, tmp_path, workers=1)
    notebook = json.loads((tmp_path / configs[0].run_id() / "run.ipynb").read_text())
    assert notebook["metadata"]["papermill"]["parameters"]["lr"] == 0.1


def test_select_shard_partitions_configs():
    configs = expand_grid({"lr": [0.1, 0.2, 0.3], "seed": [0, 1]}, TINY)
    shards = [select_shard(configs, f"{k}/4") for k in range(4)]
    assert sorted(c.run_id() for shard in shards for c in shard) == sorted(c.run_id() for c in configs)
    assert [len(shard) for shard in shards] == [2, 2, 1, 1]


@pytest.mark.parametrize("shard", ["4/4", "-1/2", "1", "a/b", "0/0"])
def test_select_shard_rejects_invalid(shard):
    with pytest.raises(ValueError, match="invalid shard"):
        select_shard([], shard)
