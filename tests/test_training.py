"""Tests of lrstudy.training and lrstudy.experiment on small MLPs trained on 8x8 scikit-learn digits."""

import functools
import itertools
import json
import math

import pytest
import torch

from lrstudy.config import RunConfig
from lrstudy.data import build_dataset
from lrstudy.experiment import run_experiment
from lrstudy.metrics import PRUNING_SPARSITIES, predict_logits
from lrstudy.records import is_complete
from lrstudy.training import STATUSES, is_collapsed, train

SMALL = {"source": "sklearn_digits", "image_size": 8, "width": 32, "optimizer": "sgd"}


def small_config(**changes) -> RunConfig:
    """Return a small sklearn_digits MLP config with ``changes`` applied."""
    return RunConfig.from_params({**SMALL, **changes})


@functools.cache
def small_dataset(seed: int = 0):
    """Return the sklearn_digits dataset of ``small_config()``, built once per seed because tests only read it."""
    return build_dataset(small_config().data, seed)


def read_summary(run_dir) -> dict:
    """Return summary.json of a run record without its wall-time keys, which vary between runs."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return {key: value for key, value in summary.items() if not key.endswith("_seconds")}


@pytest.fixture(scope="module")
def diverged_outcome(tmp_path_factory):
    config = small_config(lr=50.0, max_steps=50, eval_every=10)
    return run_experiment(config, tmp_path_factory.mktemp("runs"))


def test_train_large_lr_diverges():
    result = train(small_config(lr=50.0, max_steps=50, eval_every=10), small_dataset())
    assert result.status == "diverged"
    assert result.divergence in ("blow-up", "non-finite loss", "collapse")
    assert result.steps < 50


def test_diverged_summary_status(diverged_outcome):
    summary = read_summary(diverged_outcome.run_dir)
    assert summary["status"] == "diverged"
    assert summary["divergence"] != ""
    assert summary["steps"] == diverged_outcome.result.steps


@pytest.mark.parametrize(
    "name",
    [
        "accuracy",
        "conflicting_accuracy",
        "compressibility",
        "activation_sparsity",
        "class_separation",
        "final_train_loss",
    ],
)
def test_diverged_summary_metric_nan(diverged_outcome, name):
    summary = read_summary(diverged_outcome.run_dir)
    assert math.isnan(summary[name])


def test_diverged_summary_pruning_curve_nan(diverged_outcome):
    curve = read_summary(diverged_outcome.run_dir)["pruning_curve"]
    assert [point["sparsity"] for point in curve] == list(PRUNING_SPARSITIES)
    for point in curve:
        assert math.isnan(point["accuracy"]), point


def test_diverged_record_complete(diverged_outcome):
    assert is_complete(diverged_outcome.run_dir)
    assert diverged_outcome.run_dir.name == diverged_outcome.config.run_id()


def test_run_experiment_deterministic(tmp_path):
    config = small_config(lr=0.1, max_steps=40, eval_every=20)
    first = run_experiment(config, tmp_path / "first")
    second = run_experiment(config, tmp_path / "second")
    first_summary = read_summary(first.run_dir)
    second_summary = read_summary(second.run_dir)
    assert first_summary["status"] == "budget"
    # Compare as JSON text, because NaN != NaN would fail a dict comparison with equal NaNs.
    assert json.dumps(first_summary, sort_keys=True) == json.dumps(second_summary, sort_keys=True)
    assert first.result.history == second.result.history


def test_train_seed_changes_history():
    first = train(small_config(lr=0.1, max_steps=20, eval_every=10, seed=0), small_dataset())
    second = train(small_config(lr=0.1, max_steps=20, eval_every=10, seed=1), small_dataset())
    assert first.history != second.history


def test_train_evaluation_leaves_weights():
    frequent = train(small_config(lr=0.1, max_steps=20, eval_every=1), small_dataset())
    final_only = train(small_config(lr=0.1, max_steps=20, eval_every=20), small_dataset())
    assert frequent.status == "budget"
    assert final_only.status == "budget"
    assert len(frequent.history) == 21
    assert len(final_only.history) == 2
    frequent_state = frequent.model.state_dict()
    final_state = final_only.model.state_dict()
    for name, tensor in final_state.items():
        assert torch.equal(frequent_state[name], tensor), name


@pytest.fixture(scope="module")
def small_run():
    return train(small_config(lr=0.1, max_steps=200, eval_every=50), small_dataset())


def test_small_run_status(small_run):
    assert small_run.status in ("converged", "budget")
    assert small_run.status in STATUSES
    assert small_run.divergence == ""


def test_small_run_history_steps(small_run):
    steps = [row["step"] for row in small_run.history]
    assert steps[0] == 0
    assert all(later > earlier for earlier, later in itertools.pairwise(steps)), steps
    assert steps[-1] == small_run.steps


def test_small_run_budget_steps(small_run):
    if small_run.status == "budget":
        assert small_run.steps == 200
        assert [row["step"] for row in small_run.history] == [0, 50, 100, 150, 200]


def test_small_run_loss_decreases(small_run):
    assert small_run.history[-1]["train_loss"] < small_run.history[0]["train_loss"]


def test_small_run_history_keys(small_run):
    expected = {
        "step",
        "train_loss",
        "train_accuracy",
        "test_accuracy",
        "test_conflicting_accuracy",
        "conflicting_loss_share",
        "conflicting_loss_ratio",
        "mispredicted_conflicting_confidence",
        "confident_spurious_fraction",
        "predicted_classes",
    }
    for row in small_run.history:
        assert set(row) == expected


def test_small_run_model_training_mode(small_run):
    assert small_run.model.training


@pytest.mark.parametrize("training", [True, False])
def test_predict_logits_keeps_training_flag(small_run, training):
    model = small_run.model
    model.train(training)
    try:
        predict_logits(model, small_dataset().test.x[:10])
        assert model.training is training
    finally:
        model.train(True)


def test_tiny_lr_is_not_divergence():
    result = train(small_config(lr=1e-6, max_steps=10, eval_every=1), small_dataset())
    assert result.status == "budget"
    assert result.divergence == ""


def test_collapsed_network_detected():
    dataset = small_dataset()
    torch.manual_seed(0)
    result = train(small_config(max_steps=1), dataset)
    healthy = is_collapsed(result.model, dataset.train.x)
    with torch.no_grad():
        last_hidden = result.model[-3]  # its inputs are ReLU outputs, so negative weights switch every unit off
        last_hidden.weight.fill_(-1.0)
    assert not healthy
    assert is_collapsed(result.model, dataset.train.x)


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "cnn", "width": 16},
        {"dataset": "colored_mnist", "model": "cnn", "width": 16},
        {"optimizer": "adam", "lr": 0.001},
        {"momentum": 0.9, "lr": 0.01},
        {"bias": True, "depth": 3},
    ],
)
def test_variants_train_and_measure(tmp_path, changes):
    config = small_config(max_steps=30, eval_every=10, **changes)
    outcome = run_experiment(config, tmp_path)
    assert outcome.summary["status"] in STATUSES
    assert outcome.summary["steps"] == 30
    assert 0.0 <= outcome.summary["accuracy"] <= 1.0
    assert 0.0 <= outcome.summary["activation_sparsity"] <= 1.0
