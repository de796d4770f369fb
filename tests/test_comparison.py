"""The comparison of knobs: preset runs, knob families, correlations, the in-tandem score and the summary."""

import math

import numpy as np
import pandas as pd
import pytest
import vl_convert

from lrstudy import charts
from lrstudy.comparison import BASELINE, KNOBS, PROPERTIES, comparison_variants, in_tandem, knob_correlations, knob_runs
from lrstudy.report import (
    comparison_numbers,
    correlation_phrase,
    load_comparison,
    mechanism_correlations,
    mechanism_verdict,
)
from lrstudy.results import MECHANISM
from lrstudy.sweep import preset_configs

LR_KNOB = KNOBS[0]


def _comparison_table(metric_of=None) -> pd.DataFrame:
    """One row per config of the comparison preset, every property a function of the row (default 0.5)."""
    rows = []
    for config in preset_configs("comparison"):
        row = {**config.to_params(), "run_id": config.run_id(), "status": "converged"}
        for metric in PROPERTIES:
            row[metric] = metric_of(row, metric) if metric_of else 0.5
        rows.append(row)
    return pd.DataFrame(rows)


def test_preset_run_count():
    variants = {tuple(sorted(v.items())) for v in comparison_variants()}
    configs = preset_configs("comparison")
    assert len(configs) == len(variants) * 2 * 2
    assert {c.data.dataset for c in configs} == {"double_mnist", "colored_mnist"}
    assert {c.train.max_steps for c in configs} == {3000}


def test_every_variant_sets_every_baseline_parameter():
    for variant in comparison_variants():
        assert set(BASELINE) <= set(variant)


def test_baseline_run_family_membership():
    table = _comparison_table()
    baseline = table
    for name, value in BASELINE.items():
        baseline = baseline[baseline[name] == value]
    assert len(baseline) == 4  # two datasets x two seeds
    for knob in KNOBS:
        members = set(knob_runs(table, knob)["run_id"])
        holds_baseline = not knob.setting and BASELINE[knob.parameter] in knob.values
        assert set(baseline["run_id"]) <= members if holds_baseline else not (set(baseline["run_id"]) & members)


@pytest.mark.parametrize("knob", KNOBS, ids=lambda knob: knob.name)
def test_knob_family_size(knob):
    members = knob_runs(_comparison_table(), knob)
    assert len(members) == len(knob.values) * 2 * 2
    assert sorted(members[knob.parameter].unique()) == sorted(knob.values)


def test_correlations_follow_the_favoured_direction():
    def metric_of(row, metric):
        # Robustness improves as the batch shrinks; compressibility worsens; others stay constant.
        if metric == "accuracy":
            return 1.0 / row["batch_size"]
        if metric == "compressibility":
            return float(row["batch_size"])
        return 0.5

    correlations = knob_correlations(_comparison_table(metric_of))
    batch = correlations[(correlations["knob"] == "batch size (smaller)") & (correlations["dataset"] == "double_mnist")]
    by_metric = batch.set_index("metric")
    assert by_metric.loc["accuracy", "spearman"] == pytest.approx(1.0)
    assert by_metric.loc["compressibility", "spearman"] == pytest.approx(-1.0)
    assert math.isnan(by_metric.loc["class_separation", "spearman"])  # constant: undefined
    assert by_metric.loc["accuracy", "runs"] == 8  # four batch sizes x two seeds


def test_diverged_runs_are_left_out_and_counted():
    table = _comparison_table(lambda row, metric: row["lr"])
    diverged = (table["lr"] == 1.0) & (table["optimizer"] == "sgd") & (table["model"] == "mlp")
    table.loc[diverged, "status"] = "diverged"
    correlations = knob_correlations(table)
    row = correlations[(correlations["knob"] == LR_KNOB.name) & (correlations["metric"] == "accuracy")].iloc[0]
    assert row["diverged"] == 2  # LR 1 with both seeds
    assert row["runs"] == 8
    assert row["values"] == 4


def _correlations(values: dict[str, list[float]], p_value: float = 0.01) -> pd.DataFrame:
    rows = [
        {"dataset": "d", "knob": knob, "property": metric, "metric": metric, "spearman": rho, "p_value": p_value}
        for knob, correlations in values.items()
        for metric, rho in zip(PROPERTIES, correlations, strict=True)
    ]
    return pd.DataFrame(rows)


def test_in_tandem_score_minimum():
    scores = in_tandem(_correlations({"a": [0.9, 0.8, 0.7, 0.6, -0.2], "b": [0.5, 0.5, 0.5, 0.5, 0.5]}))
    assert list(scores["knob"]) == ["b", "a"]
    by_knob = scores.set_index("knob")
    assert by_knob.loc["a", "score"] == pytest.approx(-0.2)
    assert by_knob.loc["a", "improved"] == 4
    assert by_knob.loc["b", "improved"] == 5


def test_in_tandem_score_needs_every_property():
    scores = in_tandem(_correlations({"a": [0.9, math.nan, 0.9, 0.9, 0.9]}))
    assert math.isnan(scores["score"].iloc[0])
    assert scores["measured"].iloc[0] == 4


def test_in_tandem_ignores_insignificant_improvements():
    scores = in_tandem(_correlations({"a": [0.9] * 5}, p_value=0.2))
    assert scores["improved"].iloc[0] == 0


def test_comparison_numbers_names_the_winner_when_lr_loses():
    scores = in_tandem(_correlations({"lr": [0.3] * 5, "lr adam": [0.2] * 5, "dropout": [0.6] * 5}))
    numbers = comparison_numbers(scores, ["lr", "lr adam"])
    assert numbers["d_winner"] == "dropout"
    assert numbers["d_lr_rank"] == 2
    assert numbers["d_verdict"] == (
        "dropout: highest in-tandem score (0.60); the best learning-rate knob, lr, ranks 2 of 3 (0.30)"
    )


def test_comparison_numbers_when_another_lr_knob_wins():
    scores = in_tandem(_correlations({"lr": [0.3] * 5, "lr cnn": [0.7] * 5, "dropout": [0.1] * 5}))
    numbers = comparison_numbers(scores, ["lr", "lr cnn"])
    assert numbers["d_lr_rank"] == 2
    assert numbers["d_verdict"] == (
        "a learning-rate knob wins: lr cnn has the highest in-tandem score of the 3 knobs (0.70), "
        "and the lr ranks 2 (0.30)"
    )


def test_comparison_numbers_reports_a_tie_as_a_tie():
    scores = in_tandem(_correlations({"lr": [0.1] * 5, "lr momentum": [0.4] * 5, "momentum": [0.4] * 5}))
    numbers = comparison_numbers(scores, ["lr", "lr momentum"])
    assert numbers["d_lr_rank"] == 3
    assert numbers["d_verdict"] == (
        "lr momentum and momentum share the highest in-tandem score of the 3 knobs (0.40), and the lr ranks 3 (0.10)"
    )


def test_comparison_numbers_says_when_no_knob_improves_everything():
    numbers = comparison_numbers(in_tandem(_correlations({"lr": [-0.1] * 5, "dropout": [-0.4] * 5})), ["lr"])
    assert numbers["d_verdict"] == (
        "a learning-rate knob wins: lr has the highest in-tandem score of the 2 knobs (-0.10). "
        "No knob improves all five properties together here: every score is at most 0"
    )


def test_mechanism_correlations_against_lr_and_robustness():
    lrs = np.repeat([0.05, 0.1, 0.2, 0.5], 2)
    results = pd.DataFrame({"lr": lrs, "status": "converged", "conflicting_accuracy": lrs, "accuracy": -lrs})
    for name in MECHANISM:
        results[f"early_{name}"] = lrs**2
    results.loc[7, "status"] = "diverged"
    table = mechanism_correlations(results).set_index(["name", "against_name"])
    assert table.loc[("conflicting_loss_share", "lr"), "spearman"] == pytest.approx(1.0)
    assert table.loc[("conflicting_loss_share", "accuracy"), "spearman"] == pytest.approx(-1.0)
    assert table.loc[("confident_spurious_fraction", "conflicting_accuracy"), "runs"] == 7


def test_correlation_phrase():
    assert correlation_phrase(0.61234, 0.0123, 40) == "a Spearman correlation of 0.61 (p = 0.0123, 40 runs)"
    assert correlation_phrase(math.nan, math.nan, 2).startswith("no measurable correlation (2 usable runs")


def test_heatmap_draws_every_cell():
    correlations = _correlations({"lr": [0.5, -0.5, math.nan, 0.1, 0.2], "dropout": [0.0] * 5})
    chart = charts.correlation_heatmap(correlations, "d")
    svg = vl_convert.vegalite_to_svg(chart.to_json())
    assert svg.count(">n/a</text>") == 1
    assert ">0.50</text>" in svg
    assert ">-0.50</text>" in svg


def test_committed_table_holds_every_run_of_the_preset():
    results, provenance = load_comparison()
    expected = {config.run_id() for config in preset_configs("comparison")}
    assert set(results["run_id"]) == expected
    assert provenance["command"].startswith("lrstudy table --runs-dir")
    assert provenance["runs"] == len(expected)


def _mechanism_table(lr_rho: float, lr_p: float, robust_rho: float, robust_p: float) -> pd.DataFrame:
    rows = []
    for name in MECHANISM:
        rows.append({"name": name, "against_name": "lr", "spearman": lr_rho, "p_value": lr_p})
        rows.append({"name": name, "against_name": "conflicting_accuracy", "spearman": robust_rho, "p_value": robust_p})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("values", "start"),
    [
        ((0.9, 0.001, 0.7, 0.01), "both links of the argument appear"),
        ((0.9, 0.001, 0.3, 0.2), "a larger LR raises the early"),
        ((0.1, 0.6, 0.7, 0.01), "runs with a higher early"),
        ((-0.9, 0.001, -0.7, 0.01), "neither link of the argument appears"),
    ],
)
def test_mechanism_verdict_names_the_links_that_hold(values, start):
    assert mechanism_verdict(_mechanism_table(*values)).startswith(start)
