"""The run notebook through papermill: parameter types whichever way they arrive, and fast failures."""

import json
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

from lrstudy.config import RunConfig
from lrstudy.sweep import prepare_notebook

pytestmark = pytest.mark.slow

PAPERMILL = [sys.executable, "-m", "papermill", "--kernel", "python3", "--no-progress-bar"]
# A run of a few steps on 8x8 digits, so each execution costs little more than the kernel start.
TINY = {"source": "sklearn_digits", "image_size": 8, "width": 16, "max_steps": 20, "eval_every": 10}


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    return prepare_notebook(tmp_path_factory.mktemp("notebook") / "run.ipynb")


def _papermill(notebook: Path, output: Path, runs_dir: Path, *arguments: str) -> subprocess.CompletedProcess:
    tiny = [item for name, value in TINY.items() for item in ("-p", name, str(value))]
    command = [*PAPERMILL, str(notebook), str(output), *tiny, "-p", "runs_dir", str(runs_dir), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _only_config(runs_dir: Path) -> dict:
    configs = list(runs_dir.glob("*/config.json"))
    assert len(configs) == 1
    return json.loads(configs[0].read_text())


def test_parameters_cell_matches_config_defaults(notebook):
    inspected = papermill.inspect_notebook(str(notebook))
    defaults = RunConfig().to_params()
    for name, value in defaults.items():
        assert name in inspected, f"parameter {name} missing from the notebook's parameters cell"
        assert eval(inspected[name]["default"]) == value, f"default of {name} differs from RunConfig"


@pytest.mark.parametrize("style", ["-p", "-y", "-f"])
def test_lr_arrives_as_float(notebook, tmp_path, style):
    if style == "-p":
        arguments = ["-p", "lr", "1e-3"]
    elif style == "-y":
        arguments = ["-y", "lr: 1e-3"]  # YAML 1.1 reads 1e-3 as a string
    else:
        params = tmp_path / "params.yaml"
        params.write_text("lr: 1e-3\n")
        arguments = ["-f", str(params)]
    completed = _papermill(notebook, tmp_path / "out.ipynb", tmp_path / "runs", *arguments)
    assert completed.returncode == 0, completed.stderr[-2000:]
    config = _only_config(tmp_path / "runs")
    assert isinstance(config["lr"], float)
    assert config["lr"] == 0.001


@pytest.mark.parametrize(
    ("name", "value"),
    [("lr", "-0.1"), ("lr", "abc"), ("dataset", "nope"), ("rho", "1.5")],
)
def test_invalid_parameter_fails_naming_it(notebook, tmp_path, name, value):
    completed = _papermill(notebook, tmp_path / "out.ipynb", tmp_path / "runs", "-p", name, value)
    output = completed.stderr + completed.stdout
    assert completed.returncode != 0
    assert f"for parameter {name!r}" in output
    assert "ValueError: invalid value" in output
    assert not list((tmp_path / "runs").glob("*/DONE"))


def test_cli_run_passes_float_lr(tmp_path):
    sets = [item for name, value in TINY.items() for item in ("--set", f"{name}={value}")]
    command = [sys.executable, "-m", "lrstudy.cli", "run", *sets, "--set", "lr=1e-3", "--runs-dir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert _only_config(tmp_path)["lr"] == 0.001


def test_cli_rejects_invalid_lr_before_papermill(tmp_path):
    command = [sys.executable, "-m", "lrstudy.cli", "run", "--set", "lr=-0.1", "--runs-dir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert "parameter 'lr'" in completed.stderr
    assert not list(tmp_path.glob("*/config.json"))
