"""Measure how close the study's training gets to the machine's matmul rate, and the sweep's overhead.

Prints, in one run on one machine:
1. the float32 matmul rate of one thread and of all cores in one process (the practical limit);
2. the training throughput of the default model in one process, with one thread and with all;
3. the aggregate throughput of one single-threaded training process per core, as the sweep runs;
4. the same training loop fed by ``Dataset.__getitem__`` and ``DataLoader``, against in-memory indexing;
5. for a ``quick`` sweep through papermill, the share of wall time spent outside training steps,
   and the same share for the last sweep logged in ``runs/default`` (``make book`` writes it).

Training FLOPs are estimated as 6 x (weights) per sample per step: 2 for the forward pass and 4 for
the backward pass. The last line is machine-readable:
``summary: matmul_share=<aggregate training FLOP/s over (one-thread matmul rate x cores)>
overhead_share=<quick sweep time outside training steps over workers x wall time>``.

Usage: ``python benchmarks/benchmark.py [--seconds 5] [--skip-sweep]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lrstudy.config import RunConfig
from lrstudy.data import build_dataset
from lrstudy.metrics import prunable_weights
from lrstudy.models import build_model


def matmul_rate(threads: int, size: int = 1024, seconds: float = 2.0) -> float:
    """Return float32 FLOP/s of repeated ``size`` x ``size`` matrix products on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started)


def training_rate(threads: int, seconds: float, loader: bool = False) -> tuple[float, float]:
    """Train the default model for about ``seconds``; return (samples/s, training FLOP/s).

    With ``loader``, minibatches come from ``DataLoader(TensorDataset(...), shuffle=True)`` instead
    of indexing the tensors held in memory, as ``lrstudy.training`` does.
    """
    torch.set_num_threads(threads)
    config = RunConfig()
    dataset = build_dataset(config.data, seed=0)
    torch.manual_seed(0)
    model = build_model(config.model, dataset.input_shape, dataset.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    weights = sum(w.numel() for w in prunable_weights(model))
    x, y = dataset.train.x, dataset.train.y
    batch = config.train.batch_size
    if loader:
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True)
        batches = ((xb, yb) for _ in itertools.count() for xb, yb in data)
    else:
        generator = torch.Generator().manual_seed(0)
        batches = (
            (x[index], y[index])
            for _ in itertools.count()
            for index in torch.randperm(len(y), generator=generator).split(batch)
        )
    samples, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        xb, yb = next(batches)
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        samples += len(yb)
    rate = samples / (time.perf_counter() - started)
    return rate, 6 * weights * rate


def _worker(arguments: tuple[float, multiprocessing.Queue]) -> None:
    seconds, queue = arguments
    queue.put(training_rate(1, seconds))


def parallel_training_rate(workers: int, seconds: float) -> tuple[float, float]:
    """Run ``workers`` single-threaded training processes at once; return their summed (samples/s, FLOP/s)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_worker, args=((seconds, queue),)) for _ in range(workers)]
    for process in processes:
        process.start()
    rates = [queue.get() for _ in processes]
    for process in processes:
        process.join()
    return sum(r[0] for r in rates), sum(r[1] for r in rates)


def sweep_overhead(workers: int) -> tuple[float, float, float]:
    """Run the ``quick`` preset in a temporary folder; return (wall s, summed training s, overhead share)."""
    from lrstudy.results import load_results
    from lrstudy.sweep import preset_configs, run_sweep

    with tempfile.TemporaryDirectory() as folder:
        report = run_sweep(preset_configs("quick"), Path(folder), workers=workers)
        if report.failed:
            raise RuntimeError(f"quick sweep had failed runs: {report.failed}")
        train_seconds = float(load_results(folder)["train_seconds"].sum())
    busy = min(workers, report.planned)
    return report.wall_seconds, train_seconds, 1.0 - train_seconds / (busy * report.wall_seconds)


def logged_sweep_overhead(runs_dir: Path) -> tuple[float, float, float] | None:
    """Return (wall s, summed training s, overhead share) of the last sweep logged in ``runs_dir``.

    Only the runs that sweep completed count; None when the log is missing or it completed none.
    """
    from lrstudy.records import read_record

    log = runs_dir / "sweeps.jsonl"
    if not log.is_file():
        return None
    last = json.loads(log.read_text(encoding="utf-8").splitlines()[-1])
    if not last["completed"]:
        return None
    train_seconds = sum(read_record(runs_dir / run_id)["summary"]["train_seconds"] for run_id in last["completed"])
    busy = min(last["workers"], len(last["completed"]))
    return last["wall_seconds"], train_seconds, 1.0 - train_seconds / (busy * last["wall_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="duration of each throughput measurement, in seconds"
    )
    parser.add_argument("--skip-sweep", action="store_true", help="skip the quick-sweep overhead measurement")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "runs" / "default",
        help="also report the overhead of the last sweep logged in this folder (default runs/default)",
    )
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}")

    one_thread = matmul_rate(1)
    all_threads = matmul_rate(cores)
    print(f"matmul 1024x1024 float32: {one_thread / 1e9:.1f} GFLOP/s on 1 thread, {all_threads / 1e9:.1f} on {cores}")

    for threads in sorted({1, cores}):
        samples, flops = training_rate(threads, args.seconds)
        print(f"default model, one process, {threads} thread(s): {samples:,.0f} samples/s, {flops / 1e9:.1f} GFLOP/s")
    samples, flops = parallel_training_rate(cores, args.seconds)
    matmul_share = flops / (one_thread * cores)
    print(
        f"default model, {cores} processes x 1 thread: {samples:,.0f} samples/s, {flops / 1e9:.1f} GFLOP/s "
        f"({matmul_share:.0%} of {cores} x the one-thread matmul rate)"
    )
    indexed, _ = training_rate(1, args.seconds)
    loaded, _ = training_rate(1, args.seconds, loader=True)
    print(
        f"1 thread: in-memory indexing {indexed:,.0f} samples/s, "
        f"DataLoader {loaded:,.0f} samples/s ({loaded / indexed - 1:+.0%})"
    )

    overhead_share = float("nan")
    if not args.skip_sweep:
        wall, train_seconds, overhead_share = sweep_overhead(cores)
        print(
            f"quick sweep: {wall:.1f} s wall on {cores} workers, "
            f"{train_seconds:.1f} s in training steps, {overhead_share:.0%} outside"
        )
    logged = logged_sweep_overhead(args.runs_dir)
    if logged:
        wall, train_seconds, share = logged
        print(
            f"last sweep logged in {args.runs_dir}: {wall:.1f} s wall, {train_seconds:.1f} s in training steps, "
            f"{share:.0%} outside"
        )
    print(f"summary: matmul_share={matmul_share:.2f} overhead_share={overhead_share:.2f}")


if __name__ == "__main__":
    main()
