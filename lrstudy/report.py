"""Key numbers of a results chapter, computed from the results table and glued into the book's prose."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .results import (
    MECHANISM,
    METRICS,
    PREDICTED_TO_RISE,
    REPOSITORY,
    RESULTS_CHAPTER_METRICS,
    default_runs_dir,
    describe_trend,
    load_histories,
    load_results,
    lr_trend,
    spearman,
)


def agreement_phrase(
    results: pd.DataFrame, threshold: float = 0.5, metrics=PREDICTED_TO_RISE, noun: str = "properties"
) -> str:
    """Say which of ``metrics`` (default: those in ``PREDICTED_TO_RISE``) rise with the LR here and which do not.

    A metric rises when the Spearman correlation between LR and the metric, over runs that did not
    diverge, is at least ``threshold`` (the same rule as ``describe_trend``). ``noun`` names the
    metrics in the sentence, e.g. "measures of compressibility".
    """
    rising, other = [], []
    for metric in metrics:
        correlation = lr_trend(results, metric)
        (rising if correlation >= threshold else other).append(METRICS[metric])
    subject = f"{noun} the paper ties to large LRs"
    if not rising:
        return f"none of the {len(other)} {subject} rises with the LR here"
    if not other:
        return f"all {len(rising)} {subject} rise with the LR here"
    rise = "rises" if len(rising) == 1 else "rise"
    do_not = "does not" if len(other) == 1 else "do not"
    return (
        f"{len(rising)} of the {len(metrics)} {subject} {rise} with the LR "
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


def key_numbers_table(numbers: dict[str, float | str], metrics=RESULTS_CHAPTER_METRICS) -> pd.DataFrame:
    """Lay out the key numbers of ``metrics`` as a table: one row per metric."""
    rows = [
        {
            "metric": description,
            f"mean at LR {numbers['lr_small']:g}": numbers[f"{metric}_small"],
            f"mean at LR {numbers['lr_large']:g}": numbers[f"{metric}_large"],
            "LR with the highest mean": f"{numbers[f'{metric}_best_lr']:g}",
            "trend": numbers[f"{metric}_trend"],
        }
        for metric, description in ((m, METRICS[m]) for m in metrics)
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


# Final robustness that the early mechanism values are correlated with.
ROBUSTNESS = {"conflicting_accuracy": "bias-conflicting accuracy", "accuracy": "unbiased test accuracy"}


def mechanism_correlations(results: pd.DataFrame) -> pd.DataFrame:
    """Correlate each early mechanism value (``early_<name>`` columns) with the LR and with final robustness.

    Over the runs of ``results`` that did not diverge and have both values, all LRs and seeds
    together. One row per (quantity, against) with ``spearman``, ``p_value`` and ``runs``.
    """
    stable = results[results["status"] != "diverged"]
    rows = []
    for name, label in MECHANISM.items():
        early = f"early_{name}"
        for against, against_label in {"lr": "learning rate", **ROBUSTNESS}.items():
            usable = stable[[early, against]].dropna()
            rho, p_value = spearman(usable[early], usable[against])
            rows.append(
                {
                    "quantity": label,
                    "name": name,
                    "against": against_label,
                    "against_name": against,
                    "spearman": rho,
                    "p_value": p_value,
                    "runs": len(usable),
                }
            )
    return pd.DataFrame(rows)


# The committed table of the comparison preset, read by the book's comparison chapter.
COMPARISON_TABLE = REPOSITORY / "book" / "data" / "comparison_results.csv"


def correlation_phrase(rho: float, p_value: float, runs: int) -> str:
    """Describe one Spearman correlation for the prose: its value, p-value and run count, or why it is missing."""
    if math.isnan(rho):
        return f"no measurable correlation ({runs} usable runs; it needs three, with values that vary)"
    return f"a Spearman correlation of {rho:.2f} (p = {p_value:.3g}, {runs} runs)"


def load_comparison(path: str | Path = COMPARISON_TABLE) -> tuple[pd.DataFrame, dict]:
    """Read the committed comparison table and its provenance file (``<stem>.provenance.json``)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no comparison table at {path}: run `make comparison` to produce it")
    provenance_file = path.with_suffix(".provenance.json")
    provenance = json.loads(provenance_file.read_text(encoding="utf-8")) if provenance_file.is_file() else {}
    return pd.read_csv(path), provenance


def comparison_numbers(scores: pd.DataFrame, lr_knobs: list[str]) -> dict[str, float | str]:
    """Summarise ``lrstudy.comparison.in_tandem`` scores per dataset for the prose, keyed ``<dataset>_<name>``.

    ``lr_knobs`` names the knobs that vary the learning rate, the plain one first. Keys: ``winner``
    (the knob with the highest in-tandem score) and ``winner_score``; ``lr_score``, ``lr_rank`` (1 is
    best) and ``lr_improved`` of the plain LR knob; ``knobs`` (how many have a score); and
    ``verdict``, a sentence saying whether a learning-rate knob wins and whether any knob improves
    every property together (a score above 0).
    """
    numbers: dict[str, float | str] = {}
    plain = lr_knobs[0]
    for dataset, group in scores.groupby("dataset", sort=True):
        scored = group.dropna(subset=["score"]).sort_values("score", ascending=False).reset_index(drop=True)
        # Tied scores share the best rank among them, so a tie is never reported as a win.
        ranks = dict(zip(scored["knob"], scored["score"].rank(method="min", ascending=False).astype(int), strict=True))
        score_of = dict(zip(scored["knob"], scored["score"], strict=True))
        plain_row = group[group["knob"] == plain]
        numbers.update(
            {
                f"{dataset}_winner": scored["knob"].iloc[0] if len(scored) else "none",
                f"{dataset}_winner_score": float(scored["score"].iloc[0]) if len(scored) else math.nan,
                f"{dataset}_lr_score": score_of.get(plain, math.nan),
                f"{dataset}_lr_rank": ranks.get(plain, math.nan),
                f"{dataset}_lr_improved": int(plain_row["improved"].iloc[0]) if len(plain_row) else 0,
                f"{dataset}_knobs": len(scored),
                f"{dataset}_verdict": _verdict(scored, ranks, score_of, lr_knobs),
            }
        )
    return numbers


def _verdict(scored: pd.DataFrame, ranks: dict, score_of: dict, lr_knobs: list[str]) -> str:
    if not len(scored):
        return "no knob could be scored on this dataset"
    best = float(scored["score"].iloc[0])
    leaders = [knob for knob, rank in ranks.items() if rank == 1]
    winner = leaders[0] if len(leaders) == 1 else " and ".join(leaders) + " (tied)"
    plain = lr_knobs[0]
    ranked_lr = sorted((knob for knob in lr_knobs if knob in ranks), key=ranks.get)
    if not ranked_lr:
        sentence = f"{winner}: highest in-tandem score ({best:.2f}); no learning-rate knob could be scored"
    elif ranks[ranked_lr[0]] == 1 and len(leaders) > 1:
        sentence = f"{' and '.join(leaders)} share the highest in-tandem score of the {len(scored)} knobs ({best:.2f})"
        if plain in ranks and ranks[plain] != 1:
            sentence += f", and the {plain} ranks {ranks[plain]} ({score_of[plain]:.2f})"
    elif ranks[ranked_lr[0]] == 1:
        sentence = (
            f"a learning-rate knob wins: {winner} has the highest in-tandem score of the {len(scored)} knobs "
            f"({best:.2f})"
        )
        if winner != plain and plain in ranks:
            sentence += f", and the {plain} ranks {ranks[plain]} ({score_of[plain]:.2f})"
    else:
        lr_best = ranked_lr[0]
        sentence = (
            f"{winner}: highest in-tandem score ({best:.2f}); the best learning-rate knob, {lr_best}, "
            f"ranks {ranks[lr_best]} of {len(scored)} ({score_of[lr_best]:.2f})"
        )
        if lr_best != plain and plain in ranks:
            sentence += f", and the {plain} ranks {ranks[plain]} ({score_of[plain]:.2f})"
    if best <= 0:
        sentence += ". No knob improves all five properties together here: every score is at most 0"
    return sentence


def mechanism_verdict(correlations: pd.DataFrame, name: str = "conflicting_loss_share", alpha: float = 0.05) -> str:
    """Say whether both links of the paper's argument appear for the early value of ``name``.

    Link one: a larger LR raises the early value (positive Spearman correlation with the LR, p <
    ``alpha``). Link two: runs with a higher early value end up more robust (positive correlation
    with the final bias-conflicting accuracy, p < ``alpha``).
    """
    table = correlations.set_index(["name", "against_name"])

    def holds(against: str) -> bool:
        row = table.loc[(name, against)]
        return bool(row["spearman"] > 0 and row["p_value"] < alpha)

    label = MECHANISM[name]
    raises, predicts = holds("lr"), holds("conflicting_accuracy")
    if raises and predicts:
        return (
            f"both links of the argument appear for the {label}: a larger LR raises it early, "
            "and runs with a higher early value end up more robust"
        )
    if raises:
        return (
            f"a larger LR raises the early {label}, "
            "but runs with a higher early value do not end up measurably more robust"
        )
    if predicts:
        return f"runs with a higher early {label} end up more robust, but a larger LR does not measurably raise it"
    return f"neither link of the argument appears for the {label} at the 5% level"
