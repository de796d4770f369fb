"""Fixtures shared by the test files: the book built once per test session from a quick sweep."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lrstudy.results import REPOSITORY
from lrstudy.sweep import preset_configs, run_sweep


@dataclass(frozen=True)
class BuiltBook:
    """A book built by ``jupyter-book build`` from the run records in ``runs_dir``."""

    html_root: Path  # the served folder, _build/html
    runs_dir: Path

    @property
    def pages(self) -> Path:
        """Return the folder of the chapters' HTML files (the book's sources live in book/)."""
        return self.html_root / "book"


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> BuiltBook:
    """Run the quick sweep and build the book from its runs (about 3 minutes on 2 CPU cores)."""
    folder = tmp_path_factory.mktemp("book")
    runs_dir = folder / "runs"
    report = run_sweep(preset_configs("quick"), runs_dir, workers=2)
    assert not report.failed

    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book), "build", str(REPOSITORY), "--all", "--warningiserror", "--keep-going"]
    command += ["--path-output", str(folder)]
    environment = {**os.environ, "LRSTUDY_RUNS_DIR": str(runs_dir)}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return BuiltBook(html_root=folder / "_build" / "html", runs_dir=runs_dir)
