"""The training loop: minibatch SGD or Adam at a constant learning rate on tensors held in memory.

A run stops at the first of:
- convergence: at an evaluation, 100% training accuracy and mean training loss below
  ``loss_threshold``;
- divergence: a minibatch loss that is NaN, infinite or above ``divergence_factor`` times the
  training loss at initialisation ("blow-up"). An evaluation after step 0 that finds every unit of
  the last hidden layer at zero on the whole training set also counts ("collapse"). This typically
  follows a loss spike, and no gradient can reach the earlier layers afterwards;
- the step budget ``max_steps``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import RunConfig, TrainConfig
from .data import SpuriousDataset
from .metrics import hidden_activations, mechanism_metrics, predict_logits, prunable_weights
from .models import build_model

logger = logging.getLogger(__name__)

STATUSES = ("converged", "budget", "diverged")


@dataclass
class TrainResult:
    """A trained model with its history and how training ended."""

    model: nn.Module
    status: str  # one of STATUSES
    steps: int
    divergence: str = ""  # "non-finite loss", "blow-up" or "collapse" when status is "diverged"
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0  # wall time inside training steps only
    eval_seconds: float = 0.0  # wall time inside periodic evaluations


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Return the mean focal loss ``-(1 - p_y) ** gamma * log p_y`` (Lin et al., 2017); gamma 0 is cross-entropy.

    ``p_y`` is the softmax probability of the label. Larger ``gamma`` down-weights samples the network
    already fits confidently.
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    # 1 - p_y, clamped away from 0: for gamma < 1 the power's derivative is infinite at 0, and a
    # sample fitted to float precision would otherwise turn the gradient into NaN.
    one_minus_p = (-torch.expm1(log_p)).clamp_min(1e-12)
    return (-(one_minus_p**gamma) * log_p).mean()


def training_loss(
    model: nn.Module, logits: torch.Tensor, y: torch.Tensor, settings: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the loss to minimise and the data loss of one minibatch.

    The data loss is cross-entropy, or the focal loss when ``focal_gamma`` > 0. The loss to minimise
    adds ``l1`` times the sum of absolute entries of the weight matrices (biases are not penalised).
    Weight decay is applied by the optimizer. Divergence is judged on the data loss alone.
    """
    data = F.cross_entropy(logits, y) if settings.focal_gamma == 0 else focal_loss(logits, y, settings.focal_gamma)
    if settings.l1 == 0:
        return data, data
    penalty = sum(w.abs().sum() for w in prunable_weights(model))
    return data + settings.l1 * penalty, data


def evaluate_step(model: nn.Module, dataset: SpuriousDataset, step: int, threshold: float = 0.5) -> dict[str, float]:
    """Measure one history row: training loss and accuracy, test accuracy and the mechanism quantities.

    The mechanism quantities (``lrstudy.metrics.mechanism_metrics``, with confidence ``threshold``)
    are measured on the whole training split, the same fixed samples at every step. Runs without
    gradients in eval mode and draws no random numbers, so it changes neither the model nor the
    training's random stream.
    """
    train_logits = predict_logits(model, dataset.train.x)
    train_losses = F.cross_entropy(train_logits, dataset.train.y, reduction="none")
    train_predictions = train_logits.argmax(dim=1)
    test_logits = predict_logits(model, dataset.test.x)
    finite = bool(torch.isfinite(test_logits).all())
    test_correct = (test_logits.argmax(1) == dataset.test.y).float()
    conflicting = ~dataset.test.aligned
    return {
        "step": step,
        "train_loss": float(train_losses.mean()),
        "train_accuracy": float((train_predictions == dataset.train.y).float().mean()),
        "test_accuracy": float(test_correct.mean()) if finite else math.nan,
        "test_conflicting_accuracy": float(test_correct[conflicting].mean())
        if finite and conflicting.any()
        else math.nan,
        **mechanism_metrics(train_logits, dataset.train.y, dataset.train.b, threshold),
        "predicted_classes": int(torch.unique(train_predictions).numel()),
    }


def is_collapsed(model: nn.Module, x: torch.Tensor) -> bool:
    """Return whether every unit of the last hidden layer outputs zero for every sample of ``x``.

    Such a ReLU network passes no gradient to its earlier layers, so no further step can repair it.
    """
    return bool((hidden_activations(model, x)[-1] == 0).all())


def make_optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    """Return the optimizer named by ``config.optimizer`` at the constant learning rate ``config.lr``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}: expected 'sgd' or 'adam'")


def train(
    config: RunConfig, dataset: SpuriousDataset, device: str | torch.device = "cpu", progress: bool = False
) -> TrainResult:
    """Train a fresh model on ``dataset.train`` with the settings in ``config``; return it with its history.

    ``dataset`` must already be on ``device``. The model's initialisation draws from the global
    torch generator seeded with ``config.seed``; the minibatch order draws from a separate CPU
    generator seeded with ``config.seed + 1``, so evaluation never shifts either stream.
    """
    settings = config.train
    torch.manual_seed(config.seed)
    model = build_model(config.model, dataset.input_shape, dataset.num_classes, device)
    optimizer = make_optimizer(settings, model.parameters())
    order_generator = torch.Generator().manual_seed(config.seed + 1)
    x, y = dataset.train.x, dataset.train.y
    count = len(y)
    if count == 0:
        raise ValueError("the training split is empty: lower val_fraction or test_fraction")

    result = TrainResult(model=model, status="budget", steps=0)
    _record(result, model, dataset, 0, settings.confidence_threshold)
    limit = settings.divergence_factor * result.history[0]["train_loss"]
    batches = _minibatch_indices(count, settings.batch_size, order_generator, device)
    bar = tqdm(total=settings.max_steps, desc=config.run_id()[:40], disable=not progress, leave=False)
    started = time.perf_counter()
    for step in range(1, settings.max_steps + 1):
        index = next(batches)
        loss, data_loss = training_loss(model, model(x[index]), y[index], settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        result.steps = step
        loss_value = data_loss.item()
        if not math.isfinite(loss_value) or loss_value > limit:
            result.divergence = "blow-up" if math.isfinite(loss_value) else "non-finite loss"
        elif step % settings.eval_every == 0 or step == settings.max_steps:
            result.train_seconds += time.perf_counter() - started
            _record(result, model, dataset, step, settings.confidence_threshold)
            bar.update(step - bar.n)
            started = time.perf_counter()
            row = result.history[-1]
            if row["predicted_classes"] == 1 and is_collapsed(model, x):
                result.divergence = "collapse"
            elif _converged(row, settings):
                result.status = "converged"
                break
        if result.divergence:
            logger.info(
                "run %s diverged (%s) at step %d, minibatch loss %g",
                config.run_id(),
                result.divergence,
                step,
                loss_value,
            )
            result.status = "diverged"
            break
    result.train_seconds += time.perf_counter() - started
    bar.close()
    return result


def _minibatch_indices(count: int, batch_size: int, generator: torch.Generator, device):
    """Yield index tensors of minibatches forever, reshuffling at each epoch; the last batch of an
    epoch may be smaller."""
    while True:
        permutation = torch.randperm(count, generator=generator).to(device)
        for start in range(0, count, batch_size):
            yield permutation[start : start + batch_size]


def _record(result: TrainResult, model: nn.Module, dataset: SpuriousDataset, step: int, threshold: float) -> None:
    started = time.perf_counter()
    result.history.append(evaluate_step(model, dataset, step, threshold))
    result.eval_seconds += time.perf_counter() - started


def _converged(row: dict[str, float], settings: TrainConfig) -> bool:
    return row["train_accuracy"] == 1.0 and row["train_loss"] < settings.loss_threshold
