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
from .data import SpuriousDataset, build_dataset, swap_spurious
from .metrics import (
    PRUNING_SPARSITIES,
    accuracy_metrics,
    activation_sparsity,
    attribute,
    class_selectivity,
    class_separation,
    compressibility_score,
    core_attribution_share,
    counterfactual_following,
    hidden_activations,
    kappa_compressibility,
    pq_index,
    predict_logits,
    pruning_curve,
)
from .records import environment_info, write_record
from .results import MECHANISM
from .training import TrainResult, train

logger = logging.getLogger(__name__)

# Class separation compares all pairs of samples, so it runs on a seeded subsample of the test set.
SEPARATION_SAMPLES = 2000
# Attributions (32 gradient evaluations a sample for Integrated Gradients) use the first samples of that
# subsample; GradientShap draws its reference images from this many training samples.
ATTRIBUTION_SAMPLES = 256
SHAP_BASELINES = 64
# Early training, for the mechanism: the evaluations after step 0 and up to this step.
EARLY_STEPS = 500
# Scalar metrics of ``final_metrics``, all NaN for a diverged run.
FINAL_SCALARS = (
    "accuracy",
    "aligned_accuracy",
    "conflicting_accuracy",
    "worst_group_accuracy",
    "train_accuracy",
    "val_accuracy",
    "compressibility",
    "compressibility_layerwise",
    "kappa_compressibility",
    "kappa_compressibility_global",
    "activation_sparsity",
    "activation_pq_index",
    "class_separation",
    "class_selectivity",
    "core_attribution_ig",
    "core_attribution_shap",
    "counterfactual_core",
    "counterfactual_spurious",
)


@dataclass
class RunOutcome:
    """Everything one run produced, for the notebook's plots."""

    config: RunConfig
    run_dir: Path
    dataset: SpuriousDataset
    result: TrainResult
    summary: dict[str, Any]


def final_metrics(model: torch.nn.Module, dataset: SpuriousDataset, config: RunConfig) -> dict[str, Any]:
    """Measure the trained model on the unbiased test set (except ``train_accuracy`` and ``val_accuracy``).

    Robustness: accuracies overall, aligned, conflicting and per group. Compressibility: pruning
    curves and scores under global and layer-wise magnitude pruning, and the best-kappa
    compressibility (layer-wise and global). Representations: activation sparsity (zero fraction
    and PQ-index), class separation and class selectivity of the last hidden layer, the core share
    of attributions (two methods, on a subsample) and the counterfactual swap of the spurious
    feature. Subsamples are drawn with ``config.seed``.
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

    for method, suffix in (("global", ""), ("layerwise", "_layerwise")):
        curve = pruning_curve(model, test.x, test.y, method=method)
        metrics[f"pruning_curve{suffix}"] = curve
        metrics[f"compressibility{suffix}"] = compressibility_score(curve)
    kappa = kappa_compressibility(model)
    metrics["kappa_compressibility"] = kappa["layerwise"]
    metrics["kappa_compressibility_global"] = kappa["global"]

    activations = hidden_activations(model, test.x)
    sparsity = activation_sparsity(activations)
    metrics["activation_sparsity"] = sparsity["overall"]
    metrics["activation_sparsity_per_layer"] = sparsity["per_layer"]
    metrics["activation_pq_index"] = pq_index(torch.cat([a.flatten(1) for a in activations], dim=1))

    generator = torch.Generator().manual_seed(config.seed)
    subset = torch.randperm(len(test), generator=generator)[:SEPARATION_SAMPLES]
    penultimate = activations[-1]
    metrics["class_separation"] = class_separation(penultimate[subset], test.y.cpu()[subset])
    metrics["class_selectivity"] = class_selectivity(penultimate, test.y.cpu())

    explained = subset[:ATTRIBUTION_SAMPLES].to(test.x.device)
    references = dataset.train.x[
        torch.randperm(len(dataset.train), generator=generator)[:SHAP_BASELINES].to(test.x.device)
    ]
    for method, name in (("integrated_gradients", "core_attribution_ig"), ("gradient_shap", "core_attribution_shap")):
        attributions = attribute(model, test.x[explained], test.y[explained], method, references, config.seed)
        shares = core_attribution_share(attributions, dataset.name, config.data.core_side)
        metrics[name] = float(shares.nanmean()) if bool(shares.isfinite().any()) else math.nan

    swapped_x, swapped_b = swap_spurious(test, dataset.name, config.data.core_side, generator)
    following = counterfactual_following(predict_logits(model, swapped_x), test.y, swapped_b.to(test.y.device))
    metrics["counterfactual_core"] = following["follows_core"]
    metrics["counterfactual_spurious"] = following["follows_spurious"]
    return metrics


def early_mechanism(history: list[dict[str, float]]) -> dict[str, float]:
    """Average each mechanism quantity over the evaluations at steps 1 to ``EARLY_STEPS``: ``early_<name>``.

    NaN where no such evaluation exists or none has a finite value (a run that diverged before).
    """
    early = [row for row in history if 0 < row["step"] <= EARLY_STEPS]
    values = {}
    for name in MECHANISM:
        finite = [row[name] for row in early if math.isfinite(row.get(name, math.nan))]
        values[f"early_{name}"] = sum(finite) / len(finite) if finite else math.nan
    return values


def diverged_metrics(relu_layers: int, groups: int) -> dict[str, Any]:
    """Return the metrics of a diverged run: every value NaN, the pruning curves' accuracies too.

    ``groups`` is the number of non-empty (label, spurious attribute) groups of the test set.
    """
    curve = [{"sparsity": s, "measured_sparsity": math.nan, "accuracy": math.nan} for s in PRUNING_SPARSITIES]
    return {
        **dict.fromkeys(FINAL_SCALARS, math.nan),
        "groups": groups,
        "pruning_curve": curve,
        "pruning_curve_layerwise": [dict(point) for point in curve],
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
        metrics = final_metrics(result.model, dataset, config)
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
        **early_mechanism(result.history),
        "data_seconds": data_seconds,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "metric_seconds": metric_seconds,
    }
    run_dir = Path(runs_dir) / config.run_id()
    write_record(run_dir, config.to_params(), result.history, summary, environment_info(device))
    logger.info("run %s finished with status %s after %d steps", config.run_id(), result.status, result.steps)
    return RunOutcome(config=config, run_dir=run_dir, dataset=dataset, result=result, summary=summary)
