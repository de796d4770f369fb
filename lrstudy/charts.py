"""Altair charts of the results table. Each function takes tables and returns a chart; none reads files."""

from __future__ import annotations

import altair as alt
import pandas as pd

from .results import METRICS, load_results, pruning_table  # noqa: F401  (load_results re-exported for pages)

LR_AXIS = alt.X("lr:Q", scale=alt.Scale(type="log"), title="learning rate (log scale)")


def metric_vs_lr(results: pd.DataFrame, metric: str, title: str | None = None) -> alt.LayerChart:
    """Plot ``metric`` against the learning rate: one point per run, the mean over seeds as a line,
    and a band of one standard deviation. Runs with a NaN value (diverged runs) are left out."""
    data = results.loc[results[metric].notna(), ["run_id", "lr", "seed", "status", metric]]
    base = alt.Chart(data).encode(x=LR_AXIS)
    points = base.mark_circle(size=40, opacity=0.6).encode(
        y=alt.Y(f"{metric}:Q", title=METRICS.get(metric, metric), scale=alt.Scale(zero=False)),
        tooltip=[
            "run_id:N",
            alt.Tooltip("lr:Q", format="g"),
            "seed:O",
            "status:N",
            alt.Tooltip(f"{metric}:Q", format=".3f"),
        ],
    )
    mean = base.mark_line(point=False).encode(y=f"mean({metric}):Q")
    band = base.mark_errorband(extent="stdev", opacity=0.2).encode(y=f"{metric}:Q")
    return (band + mean + points).properties(width=260, height=180, title=title or METRICS.get(metric, metric))


def metrics_grid(results: pd.DataFrame, metrics: list[str], columns: int = 2) -> alt.VConcatChart:
    """Arrange ``metric_vs_lr`` charts for ``metrics`` in rows of ``columns``."""
    charts = [metric_vs_lr(results, metric) for metric in metrics]
    rows = [alt.hconcat(*charts[i : i + columns]) for i in range(0, len(charts), columns)]
    return alt.vconcat(*rows)


def pruning_curves(results: pd.DataFrame) -> alt.Chart:
    """Plot unbiased test accuracy after global magnitude pruning against sparsity.

    One line per LR, the mean over seeds.
    """
    long = pruning_table(results).dropna(subset=["pruned_accuracy"])
    return (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("sparsity:Q", title="fraction of weights pruned"),
            y=alt.Y("mean(pruned_accuracy):Q", title="test accuracy after pruning"),
            color=alt.Color("lr:O", title="learning rate", scale=alt.Scale(scheme="viridis")),
            tooltip=[
                alt.Tooltip("lr:Q", format="g"),
                "sparsity:Q",
                alt.Tooltip("mean(pruned_accuracy):Q", format=".3f"),
            ],
        )
        .properties(width=420, height=240, title="Pruning curves")
    )


def training_curves(histories: pd.DataFrame, column: str, title: str) -> alt.Chart:
    """Plot a history column against the step, one line per LR (mean over seeds)."""
    return (
        alt.Chart(histories[["step", "lr", "seed", column]].dropna())
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="training step"),
            y=alt.Y(f"mean({column}):Q", title=title),
            color=alt.Color("lr:O", title="learning rate", scale=alt.Scale(scheme="viridis")),
            tooltip=[alt.Tooltip("lr:Q", format="g"), "step:Q", alt.Tooltip(f"mean({column}):Q", format=".3f")],
        )
        .properties(width=420, height=200, title=title)
    )
