"""Key numbers and phrases that the results chapters glue into their prose."""

import math

import pandas as pd
import pytest

from lrstudy.report import agreement_phrase, key_numbers, stable_lrs
from lrstudy.results import METRICS, describe_trend, lr_trend


def _results(values: dict[str, list[float]], lrs: list[float], statuses: list[str] | None = None) -> pd.DataFrame:
    table = pd.DataFrame({"lr": lrs, "seed": list(range(len(lrs))), "status": statuses or ["converged"] * len(lrs)})
    for metric in METRICS:
        table[metric] = values.get(metric, [0.5 + 0.01 * i for i in range(len(lrs))])
    return table


def test_lr_trend_rising_metric():
    table = _results({"accuracy": [0.1, 0.2, 0.3, 0.4]}, [0.01, 0.1, 1.0, 2.0])
    assert lr_trend(table, "accuracy") == pytest.approx(1.0)


def test_lr_trend_ignores_diverged_runs():
    table = _results(
        {"accuracy": [0.1, 0.2, 0.3, math.nan]}, [0.01, 0.1, 1.0, 2.0], ["budget", "converged", "converged", "diverged"]
    )
    assert lr_trend(table, "accuracy") == pytest.approx(1.0)


def test_lr_trend_too_few_runs():
    table = _results({"accuracy": [0.1, 0.2]}, [0.01, 0.1])
    assert math.isnan(lr_trend(table, "accuracy"))


def test_lr_trend_constant_metric_is_zero():
    table = _results({"accuracy": [0.0, 0.0, 0.0]}, [0.01, 0.1, 1.0])
    assert lr_trend(table, "accuracy") == 0.0


@pytest.mark.parametrize(
    ("correlation", "start"),
    [(0.9, "rises"), (-0.9, "falls"), (0.2, "shows no clear trend"), (math.nan, "could not be measured")],
)
def test_describe_trend_phrases(correlation, start):
    assert describe_trend(correlation).startswith(start)


def test_key_numbers_constant_metric_phrase():
    table = _results({"worst_group_accuracy": [0.0, 0.0, 0.0]}, [0.01, 0.1, 1.0])
    assert key_numbers(table)["worst_group_accuracy_trend"].startswith("does not change with the learning rate")


def test_key_numbers_small_and_large_lr():
    table = _results(
        {"accuracy": [0.1, 0.3, 0.5, math.nan]}, [0.01, 0.01, 1.0, 2.0], ["budget", "budget", "converged", "diverged"]
    )
    numbers = key_numbers(table)
    assert numbers["lr_small"] == 0.01
    assert numbers["lr_large"] == 1.0
    assert numbers["accuracy_small"] == pytest.approx(0.2)
    assert numbers["accuracy_large"] == pytest.approx(0.5)
    assert numbers["lr_diverged"] == 2.0
    assert numbers["divergence"] == "the smallest LR at which a run diverged is 2"


def test_stable_lrs_drop_any_divergence():
    table = _results({}, [0.1, 1.0, 1.0], ["converged", "converged", "diverged"])
    assert stable_lrs(table) == [0.1]


def test_agreement_phrase_counts_rising_metrics():
    rising = [0.1, 0.2, 0.3, 0.4]
    falling = [0.4, 0.3, 0.2, 0.1]
    values = {"accuracy": rising, "conflicting_accuracy": rising, "worst_group_accuracy": falling}
    values |= {"compressibility": falling, "activation_sparsity": falling, "class_separation": falling}
    phrase = agreement_phrase(_results(values, [0.01, 0.1, 1.0, 2.0]))
    assert phrase.startswith("2 of the 6 properties")
    assert "unbiased test accuracy, bias-conflicting accuracy)" in phrase
    assert phrase.endswith("class separation do not")
