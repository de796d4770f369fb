"""Altair charts of the results table. Each function takes tables and returns a chart; none reads files.

``enable_book_renderer`` makes altair draw charts with the vega bundle that ``lrstudy.sphinx_vega``
serves from the built book, so charts draw without a network connection, follow the theme's light
and dark modes, and offer PNG and SVG downloads from their action menu.
"""

from __future__ import annotations

import itertools
import json
import os

import altair as alt
import pandas as pd

from .results import METRICS, PREDICTED_TO_RISE, load_results, pruning_table  # noqa: F401  (load_results re-exported for pages)

# Points per (LR, seed) curve kept by ``downsample_history``: enough for a smooth line, few enough that
# a page with many long runs stays small and under altair's 5,000-row limit.
HISTORY_POINTS = 100

_chart_numbers = itertools.count(1)

_BOOK_TEMPLATE = """<div id="{chart_id}" class="lrstudy-chart"></div>
<script type="text/javascript">
(function () {{
  var spec = {spec};
  var target = "#{chart_id}";
  var drawnTheme = null;
  function draw() {{
    if (typeof window.vegaEmbed !== "function") {{
      document.querySelector(target).textContent = "This chart needs JavaScript and the book's lrstudy-vega.js file.";
      return;
    }}
    var dark = document.documentElement.dataset.theme === "dark";
    if (drawnTheme === dark) {{ return; }}  // redraw only when the theme changes, keeping the reader's selections
    drawnTheme = dark;
    var actions = {{export: true, source: false, compiled: false, editor: false}};
    var options = {{theme: dark ? "dark" : undefined, actions: actions}};
    window.vegaEmbed(target, spec, options).catch(console.error);
  }}
  if (document.readyState === "loading") {{ document.addEventListener("DOMContentLoaded", draw); }} else {{ draw(); }}
  new MutationObserver(draw).observe(document.documentElement, {{attributes: true, attributeFilter: ["data-theme"]}});
}})();
</script>"""


def book_renderer(spec: dict, **_metadata) -> dict[str, str]:
    """Render a vega-lite spec as HTML that draws it with the book's own vega bundle.

    The chart is redrawn with vega's dark theme whenever the page switches to dark mode.
    """
    chart_id = f"lrstudy-chart-{next(_chart_numbers)}"
    spec_json = json.dumps(spec).replace("</", "<\\/")  # a "</script>" inside data must not end the script
    return {"text/html": _BOOK_TEMPLATE.format(chart_id=chart_id, spec=spec_json)}


alt.renderers.register("lrstudy_book", book_renderer)


def enable_book_renderer() -> None:
    """Draw the following altair charts of this kernel with ``book_renderer`` during a book build.

    Book pages call this first. It acts only where ``LRSTUDY_BOOK_BUILD`` is set, as
    ``lrstudy.sphinx_vega`` does for the kernels of a build; in Jupyter or papermill altair's own
    renderer stays, which JupyterLab draws without the book's bundle.
    """
    if os.environ.get("LRSTUDY_BOOK_BUILD"):
        alt.renderers.enable("lrstudy_book")


def downsample_history(histories: pd.DataFrame, points: int = HISTORY_POINTS) -> pd.DataFrame:
    """Keep the rows of at most about ``points`` evenly spaced steps per (dataset, lr), and each run's last row.

    Seeds of one LR keep the same steps, so means over seeds stay aligned. Long histories of many
    runs would otherwise exceed altair's 5,000-row limit and bloat pages.
    """
    if histories.empty:
        return histories
    keys = [key for key in ("dataset", "lr") if key in histories]
    kept = []
    for _, group in histories.groupby(keys, sort=False):
        steps = sorted(group["step"].unique())
        chosen = set(steps[:: max(1, -(-len(steps) // points))])
        last_rows = group.groupby("run_id" if "run_id" in group else "seed")["step"].transform("max") == group["step"]
        kept.append(group[group["step"].isin(chosen) | last_rows])
    return pd.concat(kept, ignore_index=True)


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


def metric_by_dataset(results: pd.DataFrame, metric: str) -> alt.HConcatChart:
    """Place one ``metric_vs_lr`` chart per dataset of ``results`` side by side, titled with the dataset."""
    return alt.hconcat(
        *(
            metric_vs_lr(group, metric, f"{dataset}: {METRICS.get(metric, metric)}")
            for dataset, group in results.groupby("dataset", sort=True)
        )
    )


def metrics_grid(results: pd.DataFrame, metrics: list[str], columns: int = 2) -> alt.VConcatChart:
    """Arrange ``metric_vs_lr`` charts for ``metrics`` in rows of ``columns``."""
    charts = [metric_vs_lr(results, metric) for metric in metrics]
    rows = [alt.hconcat(*charts[i : i + columns]) for i in range(0, len(charts), columns)]
    return alt.vconcat(*rows)


def pruning_curves(results: pd.DataFrame, method: str = "global") -> alt.Chart:
    """Plot unbiased test accuracy after magnitude pruning (``method``: global or layerwise) against sparsity.

    One line per LR, the mean over seeds.
    """
    long = pruning_table(results, method).dropna(subset=["pruned_accuracy"])
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
        .properties(width=420, height=240, title=f"Pruning curves ({PRUNING_TITLES[method]})")
    )


PRUNING_TITLES = {"global": "global magnitude pruning", "layerwise": "layer-wise magnitude pruning"}


def scatter(results: pd.DataFrame, x: str, y: str, x_title: str, y_title: str) -> alt.Chart:
    """Plot one point per run of ``y`` against ``x``, coloured by LR; runs missing either value are left out."""
    data = results.loc[results[x].notna() & results[y].notna(), ["run_id", "lr", "seed", x, y]]
    return (
        alt.Chart(data)
        .mark_circle(size=50, opacity=0.8)
        .encode(
            x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(zero=False)),
            y=alt.Y(f"{y}:Q", title=y_title, scale=alt.Scale(zero=False)),
            color=alt.Color("lr:O", title="learning rate", scale=alt.Scale(scheme="viridis")),
            tooltip=[
                "run_id:N",
                alt.Tooltip("lr:Q", format="g"),
                "seed:O",
                alt.Tooltip(f"{x}:Q", format=".3f"),
                alt.Tooltip(f"{y}:Q", format=".3f"),
            ],
        )
        .properties(width=260, height=200)
    )


def correlation_heatmap(correlations: pd.DataFrame, dataset: str) -> alt.LayerChart:
    """Draw the knob x property Spearman correlations of ``dataset`` as a heatmap with the values written in.

    ``correlations`` is ``lrstudy.comparison.knob_correlations``'s table. Blue cells mean the property
    improves as the knob moves in the direction the paper favours, red cells that it worsens;
    unmeasured cells are grey and say "n/a".
    """
    data = correlations[correlations["dataset"] == dataset].copy()
    data["label"] = data["spearman"].map(lambda value: "n/a" if pd.isna(value) else f"{value:.2f}")
    knobs = list(dict.fromkeys(data["knob"]))
    properties = list(dict.fromkeys(data["property"]))
    base = alt.Chart(data).encode(
        x=alt.X("property:N", sort=properties, title=None, axis=alt.Axis(labelAngle=-30)),
        y=alt.Y("knob:N", sort=knobs, title=None),
        tooltip=[
            "knob:N",
            "property:N",
            alt.Tooltip("spearman:Q", format=".2f"),
            alt.Tooltip("p_value:Q", format=".3f"),
            "runs:Q",
            "diverged:Q",
        ],
    )
    cells = base.mark_rect().encode(
        color=alt.Color(
            "spearman:Q", title="Spearman", scale=alt.Scale(scheme="redblue", domain=[-1, 1]), legend=alt.Legend()
        )
    )
    text = base.mark_text(fontSize=11).encode(text="label:N")
    return (cells + text).properties(width=420, height=26 * len(knobs), title=f"Knob x property: {dataset}")


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


# Metrics of the dashboard's small multiples, in reading order: the properties the paper ties to large LRs.
DASHBOARD_METRICS = PREDICTED_TO_RISE


def results_dashboard(results: pd.DataFrame, histories: pd.DataFrame, dataset: str) -> alt.VConcatChart:
    """Link every view of the results: metrics against LR, pruning curves and training curves.

    A dropdown picks the dataset (``dataset`` first) and a second one highlights one learning rate in
    every view ("all" clears it). A dropdown, not a legend click, drives the highlight because vega-lite
    merges the legends of concatenated views into one that a selection defined elsewhere does not
    receive. Diverged runs, whose metrics are NaN, are left out. Histories are downsampled with
    ``downsample_history``.
    """
    datasets = sorted(results["dataset"].unique(), key=lambda name: name != dataset)
    chosen = alt.param(name="dataset_choice", value=dataset, bind=alt.binding_select(options=datasets, name="dataset "))
    lr_axis = alt.X(
        "lr:Q",
        scale=alt.Scale(type="log"),
        title="learning rate (log scale)",
        axis=alt.Axis(values=sorted(results["lr"].unique()), format="~g", labelAngle=-45),
    )
    lrs = [float(lr) for lr in sorted(results["lr"].unique())]
    lr_pick = alt.selection_point(
        name="lr_pick",
        fields=["lr"],
        bind=alt.binding_select(options=[None, *lrs], labels=["all", *(f"{lr:g}" for lr in lrs)], name="highlight LR "),
    )
    color = alt.Color("lr:O", title="learning rate", scale=alt.Scale(scheme="viridis"))
    highlight = alt.condition(lr_pick, alt.value(1.0), alt.value(0.12))
    in_dataset = alt.datum.dataset == chosen

    metrics = results.melt(
        id_vars=["run_id", "dataset", "lr", "seed", "status"], value_vars=list(DASHBOARD_METRICS), var_name="metric"
    ).dropna(subset=["value"])
    panels = []
    for metric in DASHBOARD_METRICS:
        base = alt.Chart(metrics[metrics["metric"] == metric]).transform_filter(in_dataset).encode(x=lr_axis)
        points = base.mark_circle(size=45).encode(
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
            color=color,
            opacity=highlight,
            tooltip=["run_id:N", alt.Tooltip("lr:Q", format="g"), "seed:O", alt.Tooltip("value:Q", format=".3f")],
        )
        mean = base.mark_line(color="gray").encode(y="mean(value):Q")
        panels.append(alt.layer(mean, points).properties(width=200, height=140, title=METRICS[metric]))
    grid = alt.vconcat(*(alt.hconcat(*panels[i : i + 3]) for i in range(0, len(panels), 3)))

    pruning = (
        alt.Chart(pruning_table(results).dropna(subset=["pruned_accuracy"]))
        .transform_filter(in_dataset)
        .mark_line(point=True)
        .encode(
            x=alt.X("sparsity:Q", title="fraction of weights pruned"),
            y=alt.Y("mean(pruned_accuracy):Q", title="test accuracy after pruning"),
            color=color,
            opacity=highlight,
            tooltip=[
                alt.Tooltip("lr:Q", format="g"),
                "sparsity:Q",
                alt.Tooltip("mean(pruned_accuracy):Q", format=".3f"),
            ],
        )
        .properties(width=300, height=200, title="Pruning curves (mean over seeds)")
        .add_params(lr_pick)
    )
    history = downsample_history(histories)
    curves = [
        alt.Chart(history[["dataset", "lr", "seed", "step", column]].dropna())
        .transform_filter(in_dataset)
        .mark_line()
        .encode(
            x=alt.X("step:Q", title="training step"),
            y=alt.Y(f"mean({column}):Q", title=title),
            color=color,
            opacity=highlight,
            tooltip=[alt.Tooltip("lr:Q", format="g"), "step:Q", alt.Tooltip(f"mean({column}):Q", format=".3f")],
        )
        .properties(width=300, height=200, title=f"{title} (mean over seeds)")
        for column, title in (
            ("test_accuracy", "unbiased test accuracy"),
            ("conflicting_loss_share", "bias-conflicting share of training loss"),
        )
    ]
    return (
        alt.vconcat(grid, alt.hconcat(pruning, *curves))
        .add_params(chosen)
        .properties(title="All results: pick a dataset, and a learning rate to highlight in every view")
    )
