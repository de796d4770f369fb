"""Key numbers of a results chapter, computed from the results table and glued into the book's prose."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .results import (
    METRICS,
    PREDICTED_TO_RISE,
    default_runs_dir,
    describe_trend,
    load_histories,
    load_results,
    lr_trend,
)


def agreement_phrase(results: pd.DataFrame, threshold: float = 0.5) -> str:
    """Say which of the metrics in ``PREDICTED_TO_RISE`` rise with the LR here and which do not.

    A metric rises when the Spearman correlation between LR and the metric, over runs that did not
    diverge, is at least ``threshold`` (the same rule as ``describe_trend``).
    """
    rising, other = [], []
    for metric in PREDICTED_TO_RISE:
        correlation = lr_trend(results, metric)
        (rising if correlation >= threshold else other).append(METRICS[metric])
    if not rising:
        return f"none of the {len(other)} properties the paper ties to large LRs rises with the LR here"
    if not other:
        return f"all {len(rising)} properties the paper ties to large LRs rise with the LR here"
    rise = "rises" if len(rising) == 1 else "rise"
    do_not = "does not" if len(other) == 1 else "do not"
    return (
        f"{len(rising)} of the {len(PREDICTED_TO_RISE)} properties the paper ties to large LRs {rise} with the LR "
        f"here ({', '.join(rising)}); {', '.join(other)} {do_not}"
    )


def stable_lrs(results: pd.DataFrame) -> list[float]:
    """Return the LRs, ascending, at which no run diverged."""
    diverged = set(results.loc[results["status"] == "diverged", "lr"])
    return sorted(lr for lr in results["lr"].unique() if lr not in diverged)


def key_numbers(results: pd.DataFrame) -> dict[str, float | str]:
    """Compute the numbers a results chapter quotes, for the runs of one dataset.

    Keys: ``runs``, ``seeds``, ``diverged_runs``, ``converged_runs``, ``lr_small`` (smallest LR),
    ``lr_large`` (largest LR at which no run diverged), ``lr_diverged`` (smallest LR at which a run
    diverged, NaN if none) and ``divergence`` (that fact as a phrase). For each metric ``m`` of
    ``METRICS``: ``m_small`` and ``m_large`` (means over seeds at ``lr_small`` and ``lr_large``),
    ``m_best_lr`` (the LR with the highest mean) and ``m_trend`` (a phrase from the Spearman
    correlation between LR and ``m`` over runs that did not diverge). ``agreement`` is
    ``agreement_phrase``'s summary of which predicted properties rise.
    """
    lrs = stable_lrs(results)
    diverged = results.loc[results["status"] == "diverged", "lr"]
    numbers: dict[str, float | str] = {
        "runs": len(results),
        "seeds": results["seed"].nunique(),
        "diverged_runs": int((results["status"] == "diverged").sum()),
        "converged_runs": int((results["status"] == "converged").sum()),
        "lr_small": lrs[0] if lrs else math.nan,
        "lr_large": lrs[-1] if lrs else math.nan,
        "lr_diverged": float(diverged.min()) if len(diverged) else math.nan,
        "divergence": f"the smallest LR at which a run diverged is {diverged.min():g}"
        if len(diverged)
        else "no run diverged",
    }
    means = results.groupby("lr")[list(METRICS)].mean()
    for metric in METRICS:
        numbers[f"{metric}_small"] = float(means.loc[lrs[0], metric]) if lrs else math.nan
        numbers[f"{metric}_large"] = float(means.loc[lrs[-1], metric]) if lrs else math.nan
        column = means[metric].dropna()
        numbers[f"{metric}_best_lr"] = float(column.idxmax()) if len(column) else math.nan
        measured = results.loc[results["status"] != "diverged", metric].dropna()
        if len(measured) >= 3 and measured.nunique() == 1:
            numbers[f"{metric}_trend"] = (
                f"does not change with the learning rate: it is {measured.iloc[0]:.3f} in every run"
            )
        else:
            numbers[f"{metric}_trend"] = describe_trend(lr_trend(results, metric))
    numbers["agreement"] = agreement_phrase(results)
    return numbers


def glue_key_numbers(numbers: dict[str, float | str], prefix: str) -> None:
    """Glue every key number into the executing book page as ``<prefix>_<key>``, without displaying it.

    Numbers are glued as floats, for ``{glue:text}`prefix_key:.3f``` in the prose; phrases as
    Markdown, for ``{glue:md}`prefix_key```.
    """
    from IPython.display import Markdown
    from myst_nb import glue

    for key, value in numbers.items():
        # numpy scalars print as "np.float64(...)", which glue's format specs cannot parse
        if isinstance(value, str):
            glued = Markdown(value)
        elif isinstance(value, int):
            glued = value
        else:
            glued = float(value)
        glue(f"{prefix}_{key}", glued, display=False)


@dataclass
class Chapter:
    """The runs of one dataset that a results chapter shows, with its key numbers."""

    dataset: str
    runs_dir: Path
    results: pd.DataFrame  # runs of this dataset
    histories: pd.DataFrame  # periodic evaluations of those runs
    numbers: dict[str, float | str]
    all_results: pd.DataFrame  # runs of every dataset, for views that compare datasets
    all_histories: pd.DataFrame


def load_chapter(dataset: str, runs_dir: str | Path | None = None) -> Chapter:
    """Load the complete runs of ``dataset`` under ``runs_dir`` (default: ``default_runs_dir()``)."""
    runs_dir = Path(runs_dir or default_runs_dir())
    all_results = load_results(runs_dir)
    results = all_results[all_results["dataset"] == dataset].reset_index(drop=True)
    if results.empty:
        raise FileNotFoundError(
            f"no complete run of dataset {dataset!r} under {runs_dir}: run `lrstudy sweep --preset default` "
            "first, or point LRSTUDY_RUNS_DIR at a folder of run records"
        )
    all_histories = load_histories(runs_dir)
    histories = all_histories[all_histories["dataset"] == dataset].reset_index(drop=True)
    return Chapter(dataset, runs_dir, results, histories, key_numbers(results), all_results, all_histories)


def key_numbers_table(numbers: dict[str, float | str]) -> pd.DataFrame:
    """Lay out the per-metric key numbers as a table: one row per metric."""
    rows = [
        {
            "metric": description,
            f"mean at LR {numbers['lr_small']:g}": numbers[f"{metric}_small"],
            f"mean at LR {numbers['lr_large']:g}": numbers[f"{metric}_large"],
            "LR with the highest mean": numbers[f"{metric}_best_lr"],
            "trend": numbers[f"{metric}_trend"],
        }
        for metric, description in METRICS.items()
    ]
    return pd.DataFrame(rows)


def csv_download_link(table: pd.DataFrame, filename: str, text: str):
    """Return an HTML link that downloads ``table`` as a CSV file, embedded in the page so it works offline."""
    import base64
    import html

    from IPython.display import HTML

    encoded = base64.b64encode(table.to_csv(index=False).encode("utf-8")).decode("ascii")
    name = html.escape(filename, quote=True)
    return HTML(f'<a download="{name}" href="data:text/csv;base64,{encoded}">{html.escape(text)}</a>')
