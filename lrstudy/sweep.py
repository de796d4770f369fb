"""Sweeps: expand a grid of parameters into runs and execute each one through papermill.

Each run executes ``notebooks/run.py`` (converted to ``.ipynb`` once per sweep) with its
parameters; the executed notebook is kept as ``<runs_dir>/<run_id>/run.ipynb``. Runs whose record
is complete are skipped, so an interrupted sweep started again redoes nothing that finished. Runs
execute in parallel in a local process pool, one thread each by default: on small networks two
single-threaded processes train faster together than one process with two threads. Each worker
reuses its kernel from run to run unless asked not to, because starting a kernel and importing
torch cost more than many of the study's runs spend training.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.util import Finalize
from pathlib import Path
from typing import Any

from .comparison import comparison_variants
from .config import RunConfig
from .records import is_complete, write_atomic
from .results import FAILED, REPOSITORY, write_results_table

logger = logging.getLogger(__name__)

RUN_NOTEBOOK = REPOSITORY / "notebooks" / "run.py"
KERNEL_NAME = "python3"

# Each preset is fixed parameters plus a grid; the sweep runs the product of the grid's lists.
PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop: 8x8 scikit-learn digits, a small MLP, two LRs per dataset.
    "quick": {
        "fixed": {
            "source": "sklearn_digits",
            "image_size": 8,
            "width": 64,
            "depth": 2,
            "max_steps": 1000,
            "eval_every": 100,
        },
        "grid": {"dataset": ["double_mnist", "colored_mnist"], "lr": [0.03, 0.3], "seed": [0]},
    },
    # The study the book shows: defaults of RunConfig (2x256 MLP without biases on 14x14 digits, rho
    # 0.99, plain SGD, batch 100, at most 6,000 steps) from LRs that fit slowly to LRs that diverge.
    "default": {
        "fixed": {},
        "grid": {
            "dataset": ["double_mnist", "colored_mnist"],
            "lr": [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0],
            "seed": [0, 1, 2],
        },
    },
    # Pilot behind the choice of intensities: core digit bright and spurious dim (the default), and swapped.
    "pilot": {
        "fixed": {"dataset": "double_mnist"},
        "variants": [
            {"core_intensity": 1.0, "spurious_intensity": 0.5},
            {"core_intensity": 0.5, "spurious_intensity": 1.0},
        ],
        "grid": {"lr": [0.01, 0.03, 0.1, 0.3, 1.0], "seed": [0, 1]},
    },
    # LR against the other knobs (see lrstudy.comparison): one knob at a time around plain SGD at LR
    # 0.2, on both datasets, two seeds, with half the default step budget to fit about half an hour
    # on 2 cores. Its table is committed in book/data.
    "comparison": {
        "fixed": {"max_steps": 3000},
        "variants": comparison_variants(),
        "grid": {"dataset": ["double_mnist", "colored_mnist"], "seed": [0, 1]},
    },
}


@dataclass
class SweepReport:
    """Outcome of a sweep: counts of runs by outcome and the wall time it took."""

    planned: int = 0
    skipped: int = 0
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    results_table: Path | None = None


def expand_grid(
    grid: dict[str, list], fixed: dict[str, Any] | None = None, variants: list[dict[str, Any]] | None = None
) -> list[RunConfig]:
    """Return one validated config per combination of the grid's values and the variants.

    ``fixed`` contains values shared by every run; each variant is a set of values that change
    together (e.g. swapping two intensities) and overrides ``fixed``. Every config is validated
    before any run starts, so a typo fails the sweep at once. Duplicates are dropped.
    """
    fixed = dict(fixed or {})
    overlap = sorted(set(grid) & set(fixed))
    if overlap:
        raise ValueError(f"parameter(s) {', '.join(overlap)} appear both in the grid and as fixed values; keep one")
    names = list(grid)
    values = [grid[name] if isinstance(grid[name], (list, tuple)) else [grid[name]] for name in names]
    configs = [
        RunConfig.from_params({**fixed, **variant, **dict(zip(names, combination, strict=True))})
        for variant in variants or [{}]
        for combination in itertools.product(*values)
    ]
    return list(dict.fromkeys(configs))


def preset_configs(name: str, overrides: dict[str, list] | None = None) -> list[RunConfig]:
    """Return the configs of preset ``name``, each override replacing a grid list or a fixed value."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
    grid = dict(PRESETS[name]["grid"])
    fixed = dict(PRESETS[name]["fixed"])
    variants = [dict(v) for v in PRESETS[name].get("variants", [{}])]
    for key, value in (overrides or {}).items():
        fixed.pop(key, None)
        for variant in variants:
            variant.pop(key, None)
        grid[key] = value
    return expand_grid(grid, fixed, variants)


def select_shard(configs: list[RunConfig], shard: str) -> list[RunConfig]:
    """Return the configs of shard ``"K/N"``: those at positions K, K + N, K + 2N... (K counts from 0)."""
    index, separator, count = shard.partition("/")
    try:
        index_value, count_value = int(index), int(count)
    except ValueError:
        index_value, count_value = -1, 0
    if not separator or count_value < 1 or not 0 <= index_value < count_value:
        raise ValueError(f"invalid shard {shard!r}: expected K/N with 0 <= K < N, e.g. 0/4")
    return configs[index_value::count_value]


def prepare_notebook(destination: Path, source: Path = RUN_NOTEBOOK) -> Path:
    """Convert the jupytext run notebook to ``.ipynb`` at ``destination``, with an explicit kernelspec."""
    import jupytext
    import nbformat

    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    destination.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(destination, nbformat.writes(notebook))
    return destination


# The kernel a sweep worker process reuses from one run to the next (see ``execute_run``).
_worker_kernel = None


def _reusable_kernel():
    """Return this process's kernel manager, making a new one if there is none or its kernel died.

    The kernel itself starts on first use, inside papermill. It is shut down when the process exits.
    """
    global _worker_kernel
    if _worker_kernel is not None and _worker_kernel.has_kernel and not _worker_kernel.is_alive():
        _worker_kernel = None
    if _worker_kernel is None:
        from jupyter_client.manager import KernelManager

        _worker_kernel = KernelManager(kernel_name=KERNEL_NAME)
        Finalize(_worker_kernel, _shutdown_kernel, args=(_worker_kernel,), exitpriority=10)
    return _worker_kernel


def _shutdown_kernel(manager) -> None:
    if manager.has_kernel:
        manager.shutdown_kernel(now=True)


def execute_run(
    notebook: Path, config: RunConfig, runs_dir: Path, device: str = "cpu", threads: int = 1, reuse_kernel: bool = False
) -> str:
    """Execute the run notebook for ``config`` with papermill; return the run id.

    The executed notebook is saved in the run's folder. Thread-count variables are set for the
    kernel, which inherits this process's environment. With ``reuse_kernel``, the kernel of the
    previous run in this process executes the notebook again. This saves the kernel start and
    the imports (about 8 s a run on 2 cores), and every run still sets all its parameters and
    seeds, so its results are the same as in a fresh kernel.
    """
    import papermill

    if threads > 0:
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = str(threads)
    run_dir = runs_dir / config.run_id()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILED).unlink(missing_ok=True)
    parameters = {**config.to_params(), "runs_dir": str(runs_dir.resolve()), "device": device, "threads": threads}
    papermill.execute_notebook(
        str(notebook),
        str(run_dir / "run.ipynb"),
        parameters=parameters,
        kernel_name=KERNEL_NAME,
        progress_bar=False,
        cwd=str(REPOSITORY),
        km=_reusable_kernel() if reuse_kernel else None,
    )
    return config.run_id()


def run_sweep(
    configs: list[RunConfig],
    runs_dir: str | Path,
    workers: int | None = None,
    device: str = "cpu",
    threads: int = 1,
    reuse_kernels: bool = True,
) -> SweepReport:
    """Execute every config whose record is not complete, ``workers`` at a time, then rebuild the results table.

    A run that fails gets a ``FAILED`` file with the error, and the sweep goes on. The next sweep
    tries it again. ``workers`` defaults to the number of CPU cores. With ``reuse_kernels`` each
    worker process keeps one kernel for all its runs (see ``execute_run``).
    """
    runs_dir = Path(runs_dir)
    workers = workers or os.cpu_count() or 1
    report = SweepReport(planned=len(configs))
    started = time.perf_counter()
    pending = [c for c in configs if not is_complete(runs_dir / c.run_id())]
    report.skipped = len(configs) - len(pending)
    logger.info(
        "sweep: %d runs planned, %d already complete, %d to run on %d workers",
        len(configs),
        report.skipped,
        len(pending),
        workers,
    )
    if pending:
        notebook = prepare_notebook(runs_dir / ".notebook" / "run.ipynb")
        with ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context()) as pool:
            futures = {
                pool.submit(execute_run, notebook, c, runs_dir, device, threads, reuse_kernels): c for c in pending
            }
            try:
                _collect(futures, runs_dir, report)
            except KeyboardInterrupt:
                for future in futures:
                    future.cancel()
                logger.warning("sweep interrupted: completed runs are kept; start the sweep again to finish the rest")
                raise
    report.results_table = write_results_table(runs_dir)
    report.wall_seconds = time.perf_counter() - started
    _append_sweep_log(runs_dir, report, workers)
    return report


def _append_sweep_log(runs_dir: Path, report: SweepReport, workers: int) -> None:
    """Append one JSON line describing this sweep to ``runs_dir/sweeps.jsonl``, for benchmarks and provenance."""
    entry = {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "planned": report.planned,
        "skipped": report.skipped,
        "completed": report.completed,
        "failed": sorted(report.failed),
        "workers": workers,
        "wall_seconds": report.wall_seconds,
    }
    with open(runs_dir / "sweeps.jsonl", "a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")


def _worker_context():
    """Return a forkserver context that preloads papermill, for the sweep's worker processes.

    Forking the calling process itself can deadlock a worker when that process runs threads (a
    browser driver in the tests, say), and spawning re-imports everything in each worker.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["lrstudy.sweep", "papermill"])
    return context


def _collect(futures: dict, runs_dir: Path, report: SweepReport) -> None:
    remaining = set(futures)
    while remaining:
        done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
        for future in done:
            config = futures[future]
            run_id = config.run_id()
            try:
                future.result()
            except Exception as error:  # papermill and kernel errors: record, then go on with the sweep
                message = f"{type(error).__name__}: {error}"
                write_atomic(runs_dir / run_id / FAILED, message + "\n")
                report.failed[run_id] = message
                logger.error("run %s failed: %s", run_id, message.splitlines()[0] if message else "")
            else:
                report.completed.append(run_id)
                logger.info("run %s complete (%d of %d)", run_id, len(report.completed), len(futures))
