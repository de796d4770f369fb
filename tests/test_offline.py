"""Charts that draw offline: no page loads a script or stylesheet from another host, and long histories stay small."""

import re

import numpy as np
import pandas as pd
import pytest
import vl_convert
from bs4 import BeautifulSoup

from lrstudy import charts
from lrstudy.charts import DASHBOARD_METRICS

RESULTS_PAGES = ["results_double_mnist", "results_colored_mnist"]

# A URL with a scheme (http:, https:) or a protocol-relative one (//host/...) points to another host.
REMOTE_URL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)

LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
SEEDS = [0, 1, 2]
STEPS = 1000
SPARSITIES = [0.0, 0.5, 0.9]


@pytest.mark.slow
@pytest.mark.parametrize("page", RESULTS_PAGES)
def test_results_page_loads_nothing_remote(built_book, page):
    html = (built_book.pages / f"{page}.html").read_text(encoding="utf-8")
    soup = BeautifulSoup(html, "html.parser")
    scripts = [tag["src"] for tag in soup.find_all("script", src=True)]
    links = [tag["href"] for tag in soup.find_all("link", href=True)]

    assert [src for src in scripts if REMOTE_URL.match(src)] == []
    assert [href for href in links if REMOTE_URL.match(href)] == []
    assert "cdn.jsdelivr" not in html


def _synthetic_tables(dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build a results table of 6 LRs x 3 seeds and their histories of 1,000 steps each (18,000 rows)."""
    rng = np.random.default_rng(0)
    results, histories = [], []
    for lr in LRS:
        for seed in SEEDS:
            run_id = f"{dataset}-lr{lr:g}-s{seed}"
            row = {"run_id": run_id, "dataset": dataset, "lr": lr, "seed": seed, "status": "converged"}
            row.update({metric: rng.uniform(0.2, 1.0) for metric in DASHBOARD_METRICS})
            row.update({f"pruned_accuracy_{sparsity:g}": rng.uniform(0.1, 1.0) for sparsity in SPARSITIES})
            results.append(row)
            steps = np.arange(1, STEPS + 1)
            histories.append(
                pd.DataFrame(
                    {
                        "run_id": run_id,
                        "dataset": dataset,
                        "lr": lr,
                        "seed": seed,
                        "step": steps,
                        "test_accuracy": 1 - np.exp(-steps * lr / 10),
                        "conflicting_loss_share": rng.uniform(0.0, 1.0, STEPS),
                    }
                )
            )
    return pd.DataFrame(results), pd.concat(histories, ignore_index=True)


def test_dashboard_with_long_histories_renders():
    results, histories = _synthetic_tables("double_mnist")
    assert len(histories) == len(LRS) * len(SEEDS) * STEPS

    spec = charts.results_dashboard(results, histories, "double_mnist").to_dict()
    history_data = [rows for rows in spec["datasets"].values() if rows and "step" in rows[0]]
    assert len(history_data) == 2  # the test-accuracy and the loss-share curves
    for rows in history_data:
        # downsample_history keeps about HISTORY_POINTS steps per LR for each seed, plus each run's last step.
        assert len(rows) <= len(LRS) * len(SEEDS) * (charts.HISTORY_POINTS + 1)

    svg = vl_convert.vegalite_to_svg(spec)
    assert svg.lstrip().startswith("<svg")
    assert svg.count("<path") > 0
