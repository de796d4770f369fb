"""Tables built from run records: one row per run, one column per metric, and long-format histories."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from .config import parameter_names
from .records import DONE, is_complete, read_record, write_atomic

FAILED = "FAILED"
REPOSITORY = Path(__file__).resolve().parent.parent

# Metrics shown against the learning rate, with the name the book prints for each.
METRICS = {
    "accuracy": "unbiased test accuracy",
    "conflicting_accuracy": "bias-conflicting accuracy",
    "aligned_accuracy": "bias-aligned accuracy",
    "worst_group_accuracy": "worst-group accuracy",
    "compressibility": "compressibility",
    "activation_sparsity": "activation sparsity",
    "class_separation": "class separation",
    "compressibility_layerwise": "compressibility (layer-wise pruning)",
    "kappa_compressibility": "best-kappa compressibility",
    "kappa_compressibility_global": "best-kappa compressibility (global)",
    "activation_pq_index": "activation PQ-index",
    "class_selectivity": "class selectivity",
    "core_attribution_ig": "core share of attribution (IG)",
    "core_attribution_shap": "core share of attribution (GradientShap)",
    "counterfactual_core": "swap test: follows the core",
    "counterfactual_spurious": "swap test: follows the spurious feature",
}

# The metrics of the per-dataset results chapters' key-number tables.
RESULTS_CHAPTER_METRICS = (
    "accuracy",
    "conflicting_accuracy",
    "aligned_accuracy",
    "worst_group_accuracy",
    "compressibility",
    "activation_sparsity",
    "class_separation",
)

# History columns of the paper's proposed mechanism, with the name the book prints for each.
MECHANISM = {
    "conflicting_loss_share": "bias-conflicting share of training loss",
    "conflicting_loss_ratio": "conflicting / aligned mean loss",
    "mispredicted_conflicting_confidence": "confidence of mispredicted conflicting samples",
    "confident_spurious_fraction": "conflicting samples confidently predicted as the spurious class",
}


# Metrics that Barsbey et al. (ICCV 2025, arXiv:2507.17748) report to improve with larger LRs;
# bias-aligned accuracy is not among them.
PREDICTED_TO_RISE = (
    "accuracy",
    "conflicting_accuracy",
    "worst_group_accuracy",
    "compressibility",
    "activation_sparsity",
    "class_separation",
)


def default_runs_dir() -> Path:
    """Return the runs folder the book reads: ``$LRSTUDY_RUNS_DIR``, else ``runs/default`` in the repository."""
    return Path(os.environ.get("LRSTUDY_RUNS_DIR") or REPOSITORY / "runs" / "default")


def summary_row(config: dict, summary: dict) -> dict:
    """Flatten one run's config and summary into a table row.

    The pruning curves become columns ``pruned_accuracy_<sparsity>`` (global) and
    ``pruned_layerwise_accuracy_<sparsity>`` (layer-wise), and per-layer sparsity becomes
    ``activation_sparsity_layer<i>`` (1-based, in forward order).
    """
    row = {**config}
    for key, value in summary.items():
        if key in ("pruning_curve", "pruning_curve_layerwise"):
            prefix = "pruned_accuracy_" if key == "pruning_curve" else "pruned_layerwise_accuracy_"
            for point in value:
                row[f"{prefix}{point['sparsity']:g}"] = point["accuracy"]
        elif key == "activation_sparsity_per_layer":
            for index, fraction in enumerate(value, start=1):
                row[f"activation_sparsity_layer{index}"] = fraction
        else:
            row[key] = value
    return row


def run_folders(runs_dir: str | Path) -> list[Path]:
    """Return the run folders under ``runs_dir`` (those holding a config, a marker or a notebook), sorted.

    Hidden folders, such as the sweep's converted notebook in ``.notebook``, are not runs.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    markers = ("config.json", DONE, FAILED, "run.ipynb")
    folders = (p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(p for p in folders if any((p / m).exists() for m in markers))


def load_results(runs_dir: str | Path) -> pd.DataFrame:
    """Load every complete run under ``runs_dir`` into a table, one row per run, sorted by dataset, lr and seed."""
    rows = []
    for folder in run_folders(runs_dir):
        if is_complete(folder):
            record = read_record(folder)
            rows.append(summary_row(record["config"], record["summary"]))
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=[*parameter_names(), "run_id", "status"])
    return table.sort_values(["dataset", "lr", "seed"], kind="stable").reset_index(drop=True)


def run_statuses(runs_dir: str | Path) -> pd.DataFrame:
    """List every run folder with its status: the record's status, ``failed`` or ``incomplete``."""
    rows = []
    for folder in run_folders(runs_dir):
        if is_complete(folder):
            record = read_record(folder)
            config, summary = record["config"], record["summary"]
            rows.append({**_key(config), "run_id": folder.name, "status": summary["status"], "steps": summary["steps"]})
            continue
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
        status = "failed" if (folder / FAILED).exists() else "incomplete"
        rows.append({**_key(config), "run_id": folder.name, "status": status, "steps": math.nan})
    return pd.DataFrame(rows, columns=["dataset", "lr", "seed", "run_id", "status", "steps"])


def _key(config: dict) -> dict:
    return {name: config.get(name) for name in ("dataset", "lr", "seed")}


def load_histories(runs_dir: str | Path) -> pd.DataFrame:
    """Load the periodic evaluations of every complete run, one row per (run, step), with dataset, lr and seed."""
    frames = []
    for folder in run_folders(runs_dir):
        if is_complete(folder):
            record = read_record(folder)
            frame = pd.DataFrame(record["history"])
            for name, value in {**_key(record["config"]), "run_id": folder.name}.items():
                frame[name] = value
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# Column prefixes of the pruning curves in the results table, by pruning method.
PRUNING_PREFIXES = {"global": "pruned_accuracy_", "layerwise": "pruned_layerwise_accuracy_"}


def pruning_table(results: pd.DataFrame, method: str = "global") -> pd.DataFrame:
    """Reshape the pruning curve columns of ``method`` (global or layerwise) into long format: one row per
    (run, sparsity), with the pruned accuracy in ``pruned_accuracy``."""
    if method not in PRUNING_PREFIXES:
        raise ValueError(f"invalid pruning method {method!r}: expected one of {', '.join(PRUNING_PREFIXES)}")
    prefix = PRUNING_PREFIXES[method]
    columns = [c for c in results.columns if c.startswith(prefix)]
    long = results.melt(
        id_vars=["run_id", "dataset", "lr", "seed", "status"],
        value_vars=columns,
        var_name="sparsity",
        value_name="pruned_accuracy",
    )
    long["sparsity"] = long["sparsity"].str.removeprefix(prefix).astype(float)
    return long


def write_results_table(runs_dir: str | Path) -> Path:
    """Rebuild ``runs_dir/results.csv`` from the complete records and return its path."""
    path = Path(runs_dir) / "results.csv"
    write_atomic(path, load_results(runs_dir).to_csv(index=False))
    return path


def export_results_table(runs_dir: str | Path, output: Path, command: str) -> Path:
    """Write the results table of ``runs_dir`` to ``output`` for committing, with a provenance file beside it.

    ``<output stem>.provenance.json`` records the command, the git commit and environment of the
    first run, the number of runs, the date and the sweeps logged in ``runs_dir/sweeps.jsonl``
    (which runs each sweep completed, with its wall time), so a committed table records what
    produced it.
    """
    results = load_results(runs_dir)
    if results.empty:
        raise FileNotFoundError(f"no complete run under {runs_dir}: run the sweep first")
    first = read_record(Path(runs_dir) / results["run_id"].iloc[0])
    provenance = {
        "command": command,
        "runs_dir": str(runs_dir),
        "runs": len(results),
        "git_commit": first["environment"].get("git_commit", "unknown"),
        "environment": first["environment"],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sweeps": _read_sweep_log(Path(runs_dir)),
    }
    write_atomic(output, results.to_csv(index=False))
    write_atomic(output.with_suffix(".provenance.json"), json.dumps(provenance, indent=2) + "\n")
    return output


def _read_sweep_log(runs_dir: Path) -> list[dict]:
    log = runs_dir / "sweeps.jsonl"
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def lr_trend(results: pd.DataFrame, metric: str) -> float:
    """Return the Spearman rank correlation between lr and ``metric`` over the runs that did not diverge.

    NaN when fewer than three runs or fewer than two distinct LRs remain; 0 when the metric has the
    same value in all of them (a correlation is undefined there, and no trend is the fact).
    """
    usable = results[(results["status"] != "diverged") & results[metric].notna()]
    if len(usable) < 3 or usable["lr"].nunique() < 2:
        return math.nan
    if usable[metric].nunique() == 1:
        return 0.0
    return spearman(usable["lr"], usable[metric])[0]


def spearman(x: pd.Series, y: pd.Series) -> tuple[float, float]:
    """Return the Spearman correlation of ``x`` and ``y`` and its two-sided p-value (scipy).

    NaN for both when fewer than three pairs remain or either side is constant, where the
    correlation is undefined.
    """
    from scipy.stats import spearmanr

    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return math.nan, math.nan
    result = spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def describe_trend(correlation: float, threshold: float = 0.5) -> str:
    """Turn a Spearman correlation into the phrase the book prints: rises, falls or shows no clear trend."""
    if math.isnan(correlation):
        return "could not be measured (it needs three runs and two LRs that did not diverge)"
    if correlation >= threshold:
        return f"rises with the learning rate (Spearman {correlation:.2f})"
    if correlation <= -threshold:
        return f"falls as the learning rate grows (Spearman {correlation:.2f})"
    return f"shows no clear trend with the learning rate (Spearman {correlation:.2f})"
