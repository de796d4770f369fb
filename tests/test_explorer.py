"""The workshop explorer: quick runs, attributions, figures, the Train callback and the book page."""

import math

import altair as alt
import jupytext
import nbformat
import papermill
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from lrstudy.explorer import (
    QUICK_DEFAULTS,
    Explorer,
    explorer_figures,
    input_attributions,
    save_figures,
    train_quick,
)
from lrstudy.records import is_complete
from lrstudy.results import REPOSITORY
from lrstudy.sweep import PRESETS

PAGE = REPOSITORY / "book" / "explorer.md"
EXPLORED = ("lr", "dataset", "rho", "seed", "model")
FIGURES = {"training_curve": "html", "accuracies": "html", "pruning_curve": "html", "attributions": "png"}
SUMMARY_METRICS = (
    "accuracy",
    "aligned_accuracy",
    "conflicting_accuracy",
    "worst_group_accuracy",
    "compressibility",
    "activation_sparsity",
    "class_separation",
)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    defaults = {name: QUICK_DEFAULTS[name] for name in EXPLORED}
    return train_quick(**defaults, runs_dir=tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def figures(outcome):
    return explorer_figures(outcome)


def test_quick_defaults_follow_preset():
    for name, value in PRESETS["quick"]["fixed"].items():
        assert QUICK_DEFAULTS[name] == value, f"{name} differs from the quick preset"


def test_train_quick_writes_complete_record(outcome):
    params = outcome.config.to_params()
    assert is_complete(outcome.run_dir)
    assert outcome.summary["status"] in ("converged", "budget")
    assert outcome.result.history
    for name, value in QUICK_DEFAULTS.items():
        assert params[name] == value, f"{name} of the run differs from QUICK_DEFAULTS"
    for name in SUMMARY_METRICS:
        assert math.isfinite(outcome.summary[name]), f"{name} is not finite"
    assert len(outcome.summary["pruning_curve"]) > 1


def test_input_attributions_shape_and_zeros(outcome):
    test = outcome.dataset.test
    x, y = test.x[:8], test.y[:8]
    attributions = input_attributions(outcome.result.model, x, y)
    assert attributions.shape == x.shape
    assert (x == 0).any(), "the samples have no zero pixel, so the next check would test nothing"
    assert (attributions[x == 0] == 0).all()
    assert attributions.abs().sum() > 0


def test_input_attributions_of_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3, bias=False))
    model.train()
    x = torch.rand(4, 1, 2, 3)
    y = torch.tensor([0, 2, 1, 2])
    attributions = input_attributions(model, x, y)
    expected = x * model[1].weight[y].detach().view_as(x)
    assert torch.allclose(attributions, expected)
    assert model.training, "the model's training flag was not restored"
    assert model[1].weight.grad is None


def test_explorer_figures_returns_four(figures):
    assert set(figures) == set(FIGURES)
    for name, kind in FIGURES.items():
        expected = Figure if kind == "png" else alt.TopLevelMixin
        assert isinstance(figures[name], expected), f"{name} is a {type(figures[name]).__name__}"
    for name in ("training_curve", "accuracies", "pruning_curve"):
        assert figures[name].to_dict(), f"{name} has no valid Vega-Lite spec"


def test_save_figures_writes_files(figures, tmp_path):
    paths = save_figures(figures, tmp_path / "figures")
    assert sorted(path.name for path in paths) == sorted(f"{name}.{kind}" for name, kind in FIGURES.items())
    for path in paths:
        assert path.is_file()
        assert path.stat().st_size > 0
    html = (tmp_path / "figures" / "accuracies.html").read_text(encoding="utf-8")
    assert "vegaEmbed" in html
    assert "cdn.jsdelivr.net" not in html, "the chart loads vega from a CDN, so it will not open offline"
    assert (tmp_path / "figures" / "attributions.png").read_bytes().startswith(b"\x89PNG")


def test_save_figures_rejects_unknown(tmp_path):
    with pytest.raises(TypeError, match="expected an Altair chart or a matplotlib Figure"):
        save_figures({"table": "not a figure"}, tmp_path)


def test_explorer_train_adds_row(tmp_path):
    explorer = Explorer(runs_dir=tmp_path)
    explorer.lr.value = 0.3
    explorer.dataset.value = "colored_mnist"

    outcome = explorer.on_train(explorer.train_button)

    table = explorer.session_table()
    assert outcome is not None
    assert len(table) == 1
    assert table.loc[0, "lr"] == pytest.approx(0.3)
    assert table.loc[0, "dataset"] == "colored_mnist"
    assert table.loc[0, "status"] == outcome.summary["status"]
    assert table.loc[0, "accuracy"] == outcome.summary["accuracy"]
    assert len(explorer.figures.outputs) == 4
    assert len(explorer.table.outputs) == 1
    assert "text/html" in explorer.table.outputs[0]["data"]
    assert "Finished" in explorer.status.outputs[-1]["text"]
    assert not explorer.train_button.disabled
    assert is_complete(outcome.run_dir)


def test_explorer_reports_invalid_seed(tmp_path):
    explorer = Explorer(runs_dir=tmp_path)
    explorer.seed.value = -1

    outcome = explorer.on_train(explorer.train_button)

    assert outcome is None
    assert explorer.session_table().empty
    assert "parameter 'seed'" in explorer.status.outputs[-1]["text"]
    assert not explorer.train_button.disabled


def _page_notebook(destination):
    notebook = jupytext.read(PAGE)
    nbformat.write(notebook, destination)
    return destination


def test_page_parameters_match_defaults(tmp_path):
    notebook = _page_notebook(tmp_path / "explorer.ipynb")
    parameters = papermill.inspect_notebook(str(notebook))
    for name in EXPLORED:
        assert eval(parameters[name]["default"]) == QUICK_DEFAULTS[name], f"default of {name} differs"
    assert eval(parameters["figures_dir"]["default"]) == ""
    assert eval(parameters["runs_dir"]["default"]) == ""
    first_code = next(cell for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code")
    assert "charts.enable_book_renderer()" in first_code.source


@pytest.mark.slow
def test_page_runs_with_papermill(tmp_path):
    notebook = _page_notebook(tmp_path / "explorer.ipynb")
    figures_dir = tmp_path / "figures"
    runs_dir = tmp_path / "runs"

    papermill.execute_notebook(
        str(notebook),
        str(tmp_path / "executed.ipynb"),
        parameters={"figures_dir": str(figures_dir), "runs_dir": str(runs_dir)},
        kernel_name="python3",
        cwd=str(REPOSITORY),
        progress_bar=False,
    )

    for name, kind in FIGURES.items():
        assert (figures_dir / f"{name}.{kind}").is_file(), f"{name}.{kind} was not saved"
    records = [path for path in runs_dir.iterdir() if is_complete(path)]
    assert len(records) == 1
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    assert "widgets" not in executed.metadata, "widget state would make the built page load scripts from a CDN"
