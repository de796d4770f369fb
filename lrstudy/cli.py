"""Command line: ``lrstudy params | run | sweep | table``.

Examples::

    lrstudy sweep --preset quick                      # seconds; writes runs/quick
    lrstudy sweep --preset default                    # the study the book shows; writes runs/default
    lrstudy sweep --preset default --set lr=0.05,0.5 --set seed=0,1 --runs-dir runs/mine
    lrstudy run --set dataset=colored_mnist --set lr=0.2
    lrstudy table --runs-dir runs/default
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from .config import RunConfig, parameter_help
from .results import REPOSITORY


def _parse_assignments(items: list[str], as_lists: bool) -> dict:
    """Parse ``key=value`` items; with ``as_lists`` each value is a comma-separated list."""
    parsed: dict = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ValueError(f"invalid --set {item!r}: expected key=value, e.g. --set lr=0.1")
        parsed[key.strip()] = [v.strip() for v in value.split(",")] if as_lists else value.strip()
    return parsed


def _command_params(_args: argparse.Namespace) -> int:
    for name, text in parameter_help().items():
        print(f"{name:20s} {text}")
    return 0


def _command_run(args: argparse.Namespace) -> int:
    from papermill.exceptions import PapermillExecutionError

    from .sweep import execute_run, prepare_notebook

    params: dict = {}
    if args.params_file:
        loaded = yaml.safe_load(Path(args.params_file).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"invalid params file {args.params_file}: expected a mapping of parameter names to values")
        params.update(loaded)
    params.update(_parse_assignments(args.set, as_lists=False))
    config = RunConfig.from_params(params)
    runs_dir = Path(args.runs_dir)
    notebook = prepare_notebook(runs_dir / ".notebook" / "run.ipynb")
    try:
        run_id = execute_run(notebook, config, runs_dir, device=args.device, threads=args.threads)
    except PapermillExecutionError as error:
        print(f"lrstudy: run {config.run_id()} failed in the notebook: {error.ename}: {error.evalue}", file=sys.stderr)
        return 1
    print(f"run {run_id} complete: {runs_dir / run_id}")
    return 0


def _command_sweep(args: argparse.Namespace) -> int:
    from .sweep import preset_configs, run_sweep, select_shard

    configs = preset_configs(args.preset, _parse_assignments(args.set, as_lists=True))
    if args.shard:
        configs = select_shard(configs, args.shard)
    runs_dir = Path(args.runs_dir or REPOSITORY / "runs" / args.preset)
    if args.list:
        try:
            for config in configs:
                print(config.run_id())
        except BrokenPipeError:  # the reader stopped early (``| head``): not an error
            sys.stdout = None
        return 0
    report = run_sweep(
        configs,
        runs_dir,
        workers=args.workers,
        device=args.device,
        threads=args.threads,
        reuse_kernels=not args.fresh_kernels,
    )
    print(
        f"sweep {args.preset}: {report.planned} runs, {report.skipped} already complete, "
        f"{len(report.completed)} completed now, {len(report.failed)} failed, {report.wall_seconds:.1f} s; "
        f"results table: {report.results_table}"
    )
    for run_id, message in report.failed.items():
        print(f"failed: {run_id}: {message.splitlines()[0] if message else ''}", file=sys.stderr)
    return 1 if report.failed else 0


def _command_table(args: argparse.Namespace) -> int:
    from .results import export_results_table, write_results_table

    runs_dir = Path(args.runs_dir)
    if args.output:
        command = (
            "lrstudy " + " ".join(sys.argv[1:])
            if sys.argv[0].endswith("lrstudy")
            else f"lrstudy table --runs-dir {runs_dir}"
        )
        print(export_results_table(runs_dir, Path(args.output), command))
    else:
        print(write_results_table(runs_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``lrstudy`` command."""
    from .sweep import PRESETS

    parser = argparse.ArgumentParser(
        prog="lrstudy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each run's start and end")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("params", help="list every run parameter with its default").set_defaults(
        handler=_command_params
    )

    run = commands.add_parser("run", help="execute the run notebook once through papermill")
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a run parameter (see lrstudy params)"
    )
    run.add_argument("--params-file", help="YAML file of run parameters; --set values override it")
    run.add_argument("--runs-dir", default=str(REPOSITORY / "runs" / "adhoc"), help="folder receiving the run record")
    run.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    run.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    run.set_defaults(handler=_command_run)

    sweep = commands.add_parser("sweep", help="run a preset grid of runs in parallel, skipping complete ones")
    sweep.add_argument("--preset", default="quick", choices=list(PRESETS), help="grid to run (default quick)")
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="replace a grid list or fixed value of the preset",
    )
    sweep.add_argument("--runs-dir", help="folder of run records (default runs/<preset>)")
    sweep.add_argument("--workers", type=int, default=None, help="runs in parallel (default: number of CPU cores)")
    sweep.add_argument("--device", default="cpu", help="torch device for every run (default cpu)")
    sweep.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    sweep.add_argument(
        "--shard",
        metavar="K/N",
        help="run only every N-th run starting at the K-th (0-based), e.g. one job of an array",
    )
    sweep.add_argument(
        "--fresh-kernels", action="store_true", help="start a new kernel for every run instead of one per worker"
    )
    sweep.add_argument("--list", action="store_true", help="print the run ids and exit")
    sweep.set_defaults(handler=_command_sweep)

    table = commands.add_parser("table", help="rebuild results.csv from the run records")
    table.add_argument("--runs-dir", default=str(REPOSITORY / "runs" / "default"), help="folder of run records")
    table.add_argument(
        "--output",
        help="write the table here instead, with FILE.provenance.json (git commit, environment, command) beside it",
    )
    table.set_defaults(handler=_command_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``lrstudy`` command line; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"lrstudy: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
