"""The book, built from a quick sweep: every chart drawn, every glued number equal to the results table."""

import re
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from lrstudy.comparison import KNOBS, in_tandem, knob_correlations
from lrstudy.report import comparison_numbers, correlation_phrase, key_numbers, load_comparison, mechanism_correlations
from lrstudy.results import load_results

pytestmark = pytest.mark.slow

# Charts each page draws: one altair output per chart cell.
CHARTS = {
    "results_double_mnist": 5,
    "results_colored_mnist": 5,
    "methods": 1,
    "representations": 4,
    "compressibility": 3,
    "mechanism": 2,
    "comparison": 1,
}
PREFIXES = {"double_mnist": "dm", "colored_mnist": "cm"}


@pytest.fixture(scope="module")
def book(built_book):
    return built_book.pages, built_book.runs_dir


def _page_text(html_dir: Path, page: str) -> str:
    soup = BeautifulSoup((html_dir / f"{page}.html").read_text(encoding="utf-8"), "html.parser")
    main = soup.find("main")
    for tag in main.find_all(["script", "style"]):
        tag.decompose()
    return " ".join(main.get_text(" ").split())


@pytest.mark.parametrize(("page", "charts"), CHARTS.items())
def test_page_contains_every_chart(book, page, charts):
    html = (book[0] / f"{page}.html").read_text(encoding="utf-8")
    assert len(set(re.findall(r'id="(lrstudy-chart-[^"]+)"', html))) == charts


@pytest.mark.parametrize(
    "page",
    [
        "intro",
        "datasets",
        "methods",
        "results_double_mnist",
        "results_colored_mnist",
        "representations",
        "compressibility",
        "mechanism",
        "comparison",
        "runs",
    ],
)
def test_page_has_no_error_output(book, page):
    text = _page_text(book[0], page)
    assert "Traceback" not in text
    assert "Error" not in text


@pytest.mark.parametrize("dataset", PREFIXES)
def test_glued_numbers_match_results_table(book, dataset):
    html_dir, runs_dir = book
    results = load_results(runs_dir)
    numbers = key_numbers(results[results["dataset"] == dataset])
    text = _page_text(html_dir, f"results_{dataset}")
    for key in ("accuracy_small", "accuracy_large", "conflicting_accuracy_small", "compressibility_large"):
        assert f"{numbers[key]:.3f}" in text, f"{key} = {numbers[key]:.3f} missing from the page"
    assert f"reads {numbers['runs']} runs" in text
    assert str(numbers["accuracy_trend"]) in text


def test_runs_page_lists_every_run(book):
    html_dir, runs_dir = book
    text = _page_text(html_dir, "runs")
    for run_id in load_results(runs_dir)["run_id"]:
        assert run_id in text


@pytest.mark.parametrize(
    ("page", "keys"),
    [
        ("representations", ("core_attribution_ig_small", "class_selectivity_large", "activation_pq_index_small")),
        ("compressibility", ("compressibility_layerwise_small", "kappa_compressibility_large")),
    ],
)
def test_new_chapters_quote_the_results_table(book, page, keys):
    html_dir, runs_dir = book
    results = load_results(runs_dir)
    text = _page_text(html_dir, page)
    for dataset in PREFIXES:
        numbers = key_numbers(results[results["dataset"] == dataset])
        for key in keys:
            assert f"{numbers[key]:.3f}" in text, f"{dataset} {key} = {numbers[key]:.3f} missing from {page}"
        assert str(numbers[keys[0].rsplit("_", 1)[0] + "_trend"]) in text


def test_mechanism_chapter_quotes_its_correlations(book):
    html_dir, runs_dir = book
    results = load_results(runs_dir)
    text = _page_text(html_dir, "mechanism")
    for dataset in PREFIXES:
        table = mechanism_correlations(results[results["dataset"] == dataset]).set_index(["name", "against_name"])
        row = table.loc[("conflicting_loss_share", "conflicting_accuracy")]
        assert correlation_phrase(row["spearman"], row["p_value"], row["runs"]) in text


def test_comparison_chapter_reads_the_committed_table(book):
    results, provenance = load_comparison()
    lr_knobs = [knob.name for knob in KNOBS if knob.parameter == "lr"]
    numbers = comparison_numbers(in_tandem(knob_correlations(results)), lr_knobs)
    text = _page_text(book[0], "comparison")
    assert f"{len(results)} runs, " in text
    assert provenance["git_commit"] in text
    for dataset in PREFIXES:
        assert numbers[f"{dataset}_verdict"] in text
