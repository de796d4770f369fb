"""Tests of the workshop helpers: quick configs, each exercise's solution and the participants' notebooks."""

import math
from types import SimpleNamespace

import nbformat
import pytest

from lrstudy import workshop
from lrstudy.sweep import PRESETS

SOLUTION_COLUMNS = {
    "rho": [
        "lr",
        "rho",
        "conflicting_train_samples",
        "conflicting_test_samples",
        "status",
        "accuracy",
        "aligned_accuracy",
        "conflicting_accuracy",
    ],
    "stable_lr": ["lr", "search", "status", "divergence", "steps", "train_accuracy", "accuracy"],
    "pruning_curves": ["lr", "status", "method", "sparsity", "measured_sparsity", "accuracy"],
    "pruning_layers": ["lr", "method", "layer", "weights", "pruned_share"],
    "sparsity": [
        "lr",
        "status",
        "steps",
        "accuracy",
        "activation_sparsity",
        "layer1_sparsity",
        "layer2_sparsity",
        "initial_activation_sparsity",
    ],
}


def is_fraction_or_nan(value: float) -> bool:
    return math.isnan(value) or 0.0 <= value <= 1.0


def test_quick_config_uses_preset():
    params = workshop.quick_config().to_params()
    for name, value in PRESETS["quick"]["fixed"].items():
        assert params[name] == value, name


def test_quick_config_applies_changes():
    config = workshop.quick_config(lr=0.3, rho=0.9, dataset="colored_mnist", seed=2)
    assert config.train.lr == 0.3
    assert config.data.rho == 0.9
    assert config.data.dataset == "colored_mnist"
    assert config.seed == 2
    assert config.model.width == PRESETS["quick"]["fixed"]["width"]


def test_quick_config_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown parameter"):
        workshop.quick_config(learning_rate=0.1)


def fake_quick_run(limit: float, calls: list[float]):
    """Return a stand-in for ``quick_run`` whose runs diverge above the LR ``limit`` and record each LR."""

    def run(runs_dir, lr, seed=0):
        calls.append(lr)
        diverged = lr > limit
        summary = {
            "status": "diverged" if diverged else "converged",
            "divergence": "blow-up" if diverged else "",
            "steps": 10 if diverged else 400,
            "train_accuracy": math.nan if diverged else 1.0,
            "accuracy": math.nan if diverged else 0.8,
        }
        return SimpleNamespace(summary=summary)

    return run


def test_stable_lr_search_bisects(monkeypatch, tmp_path):
    # Grid 0.1 ... 10 with a limit of 2: stable 1, diverged 3. Then sqrt(1 * 3) = 1.73 is stable and
    # sqrt(1.73 * 3) = 2.28 diverges.
    calls = []
    monkeypatch.setattr(workshop, "quick_run", fake_quick_run(2.0, calls))
    search = workshop.solve_stable_lr(tmp_path)
    assert calls == [0.1, 0.3, 1.0, 3.0, 10.0, 1.73, 2.28]
    assert search["largest_stable_lr"] == 1.73
    assert search["smallest_diverged_lr"] == 2.28
    assert list(search["runs"]["lr"]) == sorted(calls)
    assert list(search["runs"]["search"]).count("refinement") == 2


def test_stable_lr_search_nothing_diverges(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(workshop, "quick_run", fake_quick_run(100.0, calls))
    search = workshop.solve_stable_lr(tmp_path)
    assert calls == [0.1, 0.3, 1.0, 3.0, 10.0]
    assert search["largest_stable_lr"] == 10.0
    assert math.isnan(search["smallest_diverged_lr"])


def test_stable_lr_search_everything_diverges(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(workshop, "quick_run", fake_quick_run(0.01, calls))
    search = workshop.solve_stable_lr(tmp_path)
    assert calls == [0.1, 0.3, 1.0, 3.0, 10.0]
    assert math.isnan(search["largest_stable_lr"])
    assert search["smallest_diverged_lr"] == 0.1


def test_stable_lr_search_ignores_stable_above_diverged(monkeypatch, tmp_path):
    # A stable run above the first diverged LR must not raise the largest stable LR.
    monkeypatch.setattr(
        workshop,
        "quick_run",
        lambda runs_dir, lr, seed=0: SimpleNamespace(
            summary={
                "status": "diverged" if lr == 1.0 else "budget",
                "divergence": "",
                "steps": 1,
                "train_accuracy": 0.5,
                "accuracy": 0.5,
            }
        ),
    )
    search = workshop.solve_stable_lr(tmp_path, refinements=0)
    assert search["largest_stable_lr"] == 0.3
    assert search["smallest_diverged_lr"] == 1.0


@pytest.mark.slow
def test_solve_rho_structure(tmp_path):
    table = workshop.solve_rho(tmp_path)
    assert list(table.columns) == SOLUTION_COLUMNS["rho"]
    assert len(table) == 6
    assert sorted(zip(table["lr"], table["rho"], strict=True)) == [
        (0.03, 0.9),
        (0.03, 0.99),
        (0.03, 0.999),
        (0.3, 0.9),
        (0.3, 0.99),
        (0.3, 0.999),
    ]
    for _, rows in table.groupby("lr"):
        counts = list(rows.sort_values("rho")["conflicting_train_samples"])
        assert counts[0] > counts[1] >= counts[2]
    for name in ("accuracy", "aligned_accuracy", "conflicting_accuracy"):
        assert all(is_fraction_or_nan(value) for value in table[name]), name
    assert len(list(tmp_path.iterdir())) == 6


@pytest.mark.slow
def test_solve_stable_lr_structure(tmp_path):
    search = workshop.solve_stable_lr(tmp_path)
    runs = search["runs"]
    assert list(runs.columns) == SOLUTION_COLUMNS["stable_lr"]
    assert list(runs["lr"]) == sorted(runs["lr"])
    assert list(runs["search"]).count("grid") == 5
    assert list(runs["search"]).count("refinement") <= 2
    assert set(runs["status"]) <= {"converged", "budget", "diverged"}
    stable, diverged = search["largest_stable_lr"], search["smallest_diverged_lr"]
    if not math.isnan(stable):
        assert runs.loc[runs["lr"] == stable, "status"].item() != "diverged"
    if not math.isnan(diverged):
        assert runs.loc[runs["lr"] == diverged, "status"].item() == "diverged"
    if not (math.isnan(stable) or math.isnan(diverged)):
        assert stable < diverged


@pytest.mark.slow
def test_solve_pruning_structure(tmp_path):
    result = workshop.solve_pruning(tmp_path)
    curves, layers = result["curves"], result["layers"]
    assert list(curves.columns) == SOLUTION_COLUMNS["pruning_curves"]
    assert list(layers.columns) == SOLUTION_COLUMNS["pruning_layers"]
    assert len(curves) == 2 * 2 * 8
    assert len(layers) == 2 * 2 * 3
    assert all(is_fraction_or_nan(value) for value in curves["accuracy"])

    layerwise = layers[layers["method"] == "layerwise"]
    expected = [round(0.9 * n) / n for n in layerwise["weights"]]
    assert list(layerwise["pruned_share"]) == expected

    for _, rows in layers[layers["method"] == "global"].groupby("lr"):
        total = int(rows["weights"].sum())
        zeros = sum(share * n for share, n in zip(rows["pruned_share"], rows["weights"], strict=True))
        assert round(zeros) == round(0.9 * total)


@pytest.mark.slow
def test_solve_sparsity_structure(tmp_path):
    table = workshop.solve_sparsity(tmp_path)
    assert list(table.columns) == SOLUTION_COLUMNS["sparsity"]
    assert list(table["lr"]) == [0.01, 0.03, 0.1, 0.3, 1.0]
    assert table["initial_activation_sparsity"].nunique() == 1
    for name in ("activation_sparsity", "layer1_sparsity", "layer2_sparsity", "initial_activation_sparsity"):
        assert all(is_fraction_or_nan(value) for value in table[name]), name


EXERCISE_PAGES = sorted(workshop.WORKSHOP_PAGES.glob("exercise_*.md"))


def test_exercise_pages_found():
    assert [page.stem for page in EXERCISE_PAGES] == [
        "exercise_1_rho",
        "exercise_2_stable_lr",
        "exercise_3_pruning",
        "exercise_4_sparsity",
    ]


@pytest.mark.parametrize("page", EXERCISE_PAGES, ids=lambda page: page.stem)
def test_participant_notebook_drops_solution(page):
    notebook = workshop.participant_notebook(page)
    text = "\n".join(cell.source for cell in notebook.cells)
    assert "solution-start" not in text
    assert "solution-end" not in text
    assert "solve_" not in text
    assert "show_source" not in text
    assert "{exercise}" not in text
    assert "**Exercise: Predict, then measure**" in text
    assert notebook.cells[-1].source == "# Your prediction, then your measurement."
    assert "enable_book_renderer()" in notebook.cells[[c.cell_type for c in notebook.cells].index("code")].source


def test_participant_notebook_keeps_text_around_solution(tmp_path):
    page = tmp_path / "exercise_9_test.md"
    page.write_text(
        "---\nfile_format: mystnb\n---\n\n# Title\n\n```{code-cell} ipython3\nx = 1\n```\n\n"
        "```{exercise} Guess\n:label: test-ex\n\nGuess `x`.\n```\n\nBefore.\n\n"
        "```{solution-start} test-ex\n:class: dropdown\n```\n\nHidden text.\n\n"
        "```{code-cell} ipython3\nprint(x)\n```\n\nMore hidden.\n\n```{solution-end}\n```\n\nAfter.\n",
        encoding="utf-8",
    )
    notebook = workshop.participant_notebook(page)
    sources = [(cell.cell_type, cell.source) for cell in notebook.cells]
    assert sources == [
        ("markdown", "# Title"),
        ("code", "x = 1"),
        ("markdown", "**Exercise: Guess**\n\nGuess `x`.\n\nBefore."),
        ("code", "# Your prediction, then your measurement."),
        ("markdown", "After."),
    ]


def test_participant_notebook_rejects_missing_end(tmp_path):
    page = tmp_path / "exercise_9_test.md"
    page.write_text(
        "---\nfile_format: mystnb\n---\n\n# Title\n\n```{solution-start} test-ex\n```\n\n"
        "```{code-cell} ipython3\nprint(1)\n```\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="has no \\{solution-end\\}"):
        workshop.participant_notebook(page)


def test_write_participant_notebooks(tmp_path):
    written = workshop.write_participant_notebooks(tmp_path / "out")
    assert [path.name for path in written] == [f"{page.stem}.ipynb" for page in EXERCISE_PAGES]
    for path in written:
        nbformat.validate(nbformat.read(path, as_version=4))
