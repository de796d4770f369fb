"""Run records: one folder per run, written atomically, with a completion marker written last.

Layout of ``<runs_dir>/<run_id>/``:
- ``config.json``: the flat parameters of the run (``RunConfig.to_params``);
- ``history.jsonl``: one JSON object per periodic evaluation;
- ``summary.json``: status and final metrics;
- ``environment.json``: library versions, git commit, device, threads;
- ``DONE``: written last, so a folder without it is an interrupted run.

Every file is written to a temporary name in the same folder and then renamed, so a reader never
sees a half-written file. JSON stores NaN as the bare token ``NaN`` (Python's ``json`` default).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

DONE = "DONE"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # reading the umask requires setting it; this restores it at once


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp creates 0600; give records the usual permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_record(
    run_dir: Path,
    config: dict[str, Any],
    history: list[dict[str, Any]],
    summary: dict[str, Any],
    environment: dict[str, Any],
) -> Path:
    """Write a complete run record into ``run_dir``; the ``DONE`` marker comes last."""
    run_dir = Path(run_dir)
    (run_dir / DONE).unlink(missing_ok=True)
    write_json(run_dir / "config.json", config)
    write_atomic(run_dir / "history.jsonl", "".join(json.dumps(row, sort_keys=True) + "\n" for row in history))
    write_json(run_dir / "summary.json", summary)
    write_json(run_dir / "environment.json", environment)
    write_atomic(run_dir / DONE, "")
    return run_dir


def is_complete(run_dir: Path) -> bool:
    """Return whether ``run_dir`` contains a finished record (its ``DONE`` marker exists)."""
    return (Path(run_dir) / DONE).is_file()


def read_record(run_dir: Path) -> dict[str, Any]:
    """Read a run record into ``{"config", "summary", "environment", "history"}``."""
    run_dir = Path(run_dir)
    if not is_complete(run_dir):
        raise FileNotFoundError(
            f"run record {run_dir} is incomplete: no {DONE} marker; run the sweep again to finish it"
        )
    with open(run_dir / "history.jsonl", encoding="utf-8") as stream:
        history = [json.loads(line) for line in stream if line.strip()]
    return {
        "config": json.loads((run_dir / "config.json").read_text(encoding="utf-8")),
        "summary": json.loads((run_dir / "summary.json").read_text(encoding="utf-8")),
        "environment": json.loads((run_dir / "environment.json").read_text(encoding="utf-8")),
        "history": history,
    }


def git_commit(directory: Path | None = None) -> str:
    """Return ``git describe --always --dirty`` of the checkout holding this package, or "unknown"."""
    directory = directory or Path(__file__).resolve().parent
    try:
        completed = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return completed.stdout.strip() or "unknown"


def environment_info(device: str) -> dict[str, Any]:
    """Describe where a run executed: versions, git commit, processor or GPU, threads."""
    import numpy
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "git_commit": git_commit(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
