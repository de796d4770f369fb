"""Charts: the book renderer, history downsampling and the dashboard's data."""

import altair as alt
import pandas as pd
import pytest

from lrstudy import charts


@pytest.fixture
def restore_renderer():
    active = alt.renderers.active
    yield
    alt.renderers.enable(active)


def test_book_renderer_only_in_book_build(monkeypatch, restore_renderer):
    alt.renderers.enable("default")
    monkeypatch.delenv("LRSTUDY_BOOK_BUILD", raising=False)
    charts.enable_book_renderer()
    assert alt.renderers.active == "default"
    monkeypatch.setenv("LRSTUDY_BOOK_BUILD", "1")
    charts.enable_book_renderer()
    assert alt.renderers.active == "lrstudy_book"


def test_book_renderer_html_escapes_script_end():
    spec = {"data": {"values": [{"label": "</script><b>"}]}, "mark": "point"}
    html = charts.book_renderer(spec)["text/html"]
    assert html.count("</script>") == 1
    assert 'class="lrstudy-chart"' in html
    assert "vegaEmbed" in html
    assert "cdn" not in html


def test_downsample_history_bounds_rows():
    rows = [
        {
            "dataset": "double_mnist",
            "lr": lr,
            "seed": seed,
            "run_id": f"{lr}-{seed}",
            "step": step,
            "test_accuracy": 0.5,
        }
        for lr in (0.01, 0.1)
        for seed in (0, 1, 2)
        for step in range(0, 1000 + seed)
    ]
    histories = pd.DataFrame(rows)
    kept = charts.downsample_history(histories, points=50)
    per_lr = kept.groupby("lr")["step"].nunique()
    assert (per_lr <= 50 + 3).all()
    for (lr, seed), run in histories.groupby(["lr", "seed"]):
        assert run["step"].max() in set(kept[(kept["lr"] == lr) & (kept["seed"] == seed)]["step"])
    second_step = sorted(kept["step"].unique())[1]
    assert len(kept[kept["step"] == second_step]) == 6  # every seed of both LRs keeps the same steps
