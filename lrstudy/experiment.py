"""One run from parameters to record: build the data, train, measure, write the record."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .data import SpuriousDataset, build_dataset
from .metrics import (
    PRUNING_SPARSITIES,
    accuracy_metrics,
    activation_sparsity,
    class_separation,
    compressibility_score,
    hidden_activations,
    predict_logits,
    pruning_curve,
)
from .records import environment_info, write_record
from .training import TrainResult, train

logger = logging.getLogger(__name__)

# Class separation compares all pairs of samples, so it runs on a seeded subsample of the test set.
SEPARATION_SAMPLES = 2000


@dataclass
class RunOutcome:
    """Everything one run produced, for the notebook's plots."""

    config: RunConfig
    run_dir: Path
    dataset: SpuriousDataset
    result: TrainResult
    summary: dict[str, Any]


def final_metrics(model: torch.nn.Module, dataset: SpuriousDataset, seed: int) -> dict[str, Any]:
    """Measure the trained model: accuracies per group, pruning curve, sparsity and class separation.

    All on the unbiased test set, except ``train_accuracy`` and ``val_accuracy``.
    """
    test = dataset.test
    logits = predict_logits(model, test.x)
    metrics: dict[str, Any] = accuracy_metrics(logits, test.y, test.b)
    metrics["train_accuracy"] = accuracy_metrics(
        predict_logits(model, dataset.train.x), dataset.train.y, dataset.train.b
    )["accuracy"]
    val = dataset.val
    metrics["val_accuracy"] = (
        accuracy_metrics(predict_logits(model, val.x), val.y, val.b)["accuracy"] if len(val) else math.nan
    )

    curve = pruning_curve(model, test.x, test.y)
    metrics["pruning_curve"] = curve
    metrics["compressibility"] = compressibility_score(curve)

    activations = hidden_activations(model, test.x)
    sparsity = activation_sparsity(activations)
    metrics["activation_sparsity"] = sparsity["overall"]
    metrics["activation_sparsity_per_layer"] = sparsity["per_layer"]

    generator = torch.Generator().manual_seed(seed)
    subset = torch.randperm(len(test), generator=generator)[:SEPARATION_SAMPLES]
    penultimate = activations[-1][subset]
    metrics["class_separation"] = class_separation(penultimate, test.y.cpu()[subset])
    return metrics


def diverged_metrics(relu_layers: int, groups: int) -> dict[str, Any]:
    """Return the metrics of a diverged run: every value NaN, the pruning curve's accuracies too.

    ``groups`` is the number of non-empty (label, spurious attribute) groups of the test set.
    """
    names = (
        "accuracy",
        "aligned_accuracy",
        "conflicting_accuracy",
        "worst_group_accuracy",
        "train_accuracy",
        "val_accuracy",
        "compressibility",
        "activation_sparsity",
        "class_separation",
    )
    curve = [{"sparsity": s, "measured_sparsity": math.nan, "accuracy": math.nan} for s in PRUNING_SPARSITIES]
    return {
        **dict.fromkeys(names, math.nan),
        "groups": groups,
        "pruning_curve": curve,
        "activation_sparsity_per_layer": [math.nan] * relu_layers,
    }


def run_experiment(
    config: RunConfig,
    runs_dir: str | Path,
    device: str = "cpu",
    threads: int = 0,
    progress: bool = False,
) -> RunOutcome:
    """Build the dataset, train, measure and write the run record under ``runs_dir/<run_id>``.

    ``threads`` > 0 sets torch's intra-op thread count for this process; 0 leaves torch's default.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    dataset = build_dataset(config.data, config.seed).to(device)
    data_seconds = time.perf_counter() - started

    result = train(config, dataset, device=device, progress=progress)

    measured = time.perf_counter()
    if result.status == "diverged":
        relu_layers = sum(isinstance(m, torch.nn.ReLU) for m in result.model.modules())
        groups = len(torch.unique(torch.stack([dataset.test.y, dataset.test.b], dim=1), dim=0))
        metrics = diverged_metrics(relu_layers, groups)
    else:
        metrics = final_metrics(result.model, dataset, config.seed)
    metric_seconds = time.perf_counter() - measured

    last = result.history[-1]
    summary = {
        "run_id": config.run_id(),
        "status": result.status,
        "divergence": result.divergence,
        "steps": result.steps,
        "epochs": result.steps * config.train.batch_size / len(dataset.train),
        "final_train_loss": last["train_loss"] if result.status != "diverged" else math.nan,
        **{f"aligned_fraction_{split}": value for split, value in dataset.aligned_fraction.items()},
        **metrics,
        "data_seconds": data_seconds,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "metric_seconds": metric_seconds,
    }
    run_dir = Path(runs_dir) / config.run_id()
    write_record(run_dir, config.to_params(), result.history, summary, environment_info(device))
    logger.info("run %s finished with status %s after %d steps", config.run_id(), result.status, result.steps)
    return RunOutcome(config=config, run_dir=run_dir, dataset=dataset, result=result, summary=summary)
