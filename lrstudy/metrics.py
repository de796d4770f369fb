"""Metrics of the study. Each takes tensors or a module and returns numbers; none reads files.

Conventions shared by all functions here:
- ``y`` is the label (class of the core feature) and ``b`` the spurious attribute; a sample is
  bias-aligned when ``b == y`` and bias-conflicting otherwise.
- Logits containing NaN or infinity give NaN accuracies: an accuracy is never computed from
  non-finite logits.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

# Sparsity ladder of the pruning curve: the share of prunable weights set to zero.
PRUNING_SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Return the model's logits for ``x``, in eval mode and without gradients.

    The model's training flag is restored afterwards, so evaluation leaves its state unchanged.
    """
    was_training = model.training
    model.eval()
    try:
        if len(x) == 0:
            return model(x)
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def _masked_accuracy(correct: torch.Tensor, mask: torch.Tensor) -> float:
    count = int(mask.sum())
    return float(correct[mask].float().mean()) if count else math.nan


def accuracy_metrics(logits: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Compute accuracy overall, on bias-aligned and bias-conflicting samples, and per group.

    Groups are the (label, spurious attribute) pairs ``(y, b)``, as in group-DRO work; with 10
    classes there are up to 100. ``worst_group_accuracy`` is the lowest accuracy over the non-empty
    groups. An empty subset (no conflicting samples, say) has accuracy NaN. Every value is NaN when
    the logits are not all finite.

    Returns keys ``accuracy``, ``aligned_accuracy``, ``conflicting_accuracy``,
    ``worst_group_accuracy`` and ``groups`` (the number of non-empty groups).
    """
    names = ("accuracy", "aligned_accuracy", "conflicting_accuracy", "worst_group_accuracy")
    pairs = torch.unique(torch.stack([y, b], dim=1), dim=0)
    if len(y) == 0 or not bool(torch.isfinite(logits).all()):
        return {**dict.fromkeys(names, math.nan), "groups": len(pairs)}

    correct = logits.argmax(dim=1) == y
    aligned = b == y
    worst = min(_masked_accuracy(correct, (y == label) & (b == attribute)) for label, attribute in pairs)
    return {
        "accuracy": float(correct.float().mean()),
        "aligned_accuracy": _masked_accuracy(correct, aligned),
        "conflicting_accuracy": _masked_accuracy(correct, ~aligned),
        "worst_group_accuracy": worst,
        "groups": len(pairs),
    }


def conflicting_loss_share(losses: torch.Tensor, aligned: torch.Tensor) -> float:
    """Return the share of the summed per-sample loss carried by bias-conflicting samples.

    ``sum(losses[~aligned]) / sum(losses)``: 0 when there are no conflicting samples, NaN when the
    total loss is 0 or not finite.
    """
    total = float(losses.sum())
    if not math.isfinite(total) or total == 0.0:
        return math.nan
    return float(losses[~aligned].sum()) / total


def prunable_weights(model: nn.Module) -> list[torch.Tensor]:
    """Return the weight matrices and convolution kernels: parameters with two or more dimensions.

    Biases and normalisation parameters (one-dimensional) are never pruned.
    """
    return [p for p in model.parameters() if p.dim() >= 2]


@torch.no_grad()
def prune_global(model: nn.Module, sparsity: float) -> nn.Module:
    """Return a copy of ``model`` whose ``round(sparsity * n)`` smallest-magnitude prunable weights are zero.

    ``n`` counts the entries of all prunable weights together (global magnitude pruning), so
    layers with many small weights lose more. Ties are broken by position, so exactly that many
    entries are set to zero. The model passed in is not modified.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"invalid sparsity {sparsity!r}: expected a fraction in [0, 1]")
    pruned = copy.deepcopy(model)
    weights = prunable_weights(pruned)
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    count = round(sparsity * magnitudes.numel())
    mask = torch.ones_like(magnitudes)
    mask[torch.argsort(magnitudes, stable=True)[:count]] = 0.0
    offset = 0
    for w in weights:
        w.mul_(mask[offset : offset + w.numel()].view_as(w))
        offset += w.numel()
    return pruned


def weight_sparsity(model: nn.Module) -> float:
    """Return the fraction of prunable weight entries that are exactly zero."""
    weights = prunable_weights(model)
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total


def pruning_curve(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, sparsities=PRUNING_SPARSITIES, *, method: str = "global"
) -> list[dict[str, float]]:
    """Measure accuracy on ``(x, y)`` after magnitude pruning at each sparsity.

    ``method`` is ``"global"`` (``prune_global``, the study's default) or ``"layerwise"``
    (``prune_layerwise``). Returns one entry per sparsity with the requested ``sparsity``, the
    ``measured_sparsity`` of the pruned copy and its ``accuracy``.
    """
    if method not in PRUNING_METHODS:
        raise ValueError(f"invalid pruning method {method!r}: expected one of {', '.join(map(repr, PRUNING_METHODS))}")
    prune = PRUNING_METHODS[method]
    curve = []
    for sparsity in sparsities:
        pruned = prune(model, sparsity)
        logits = predict_logits(pruned, x)
        accuracy = float((logits.argmax(1) == y).float().mean()) if bool(torch.isfinite(logits).all()) else math.nan
        curve.append({"sparsity": sparsity, "measured_sparsity": weight_sparsity(pruned), "accuracy": accuracy})
    return curve


def compressibility_score(curve: list[dict[str, float]]) -> float:
    """Summarise a pruning curve as the mean accuracy retention over its nonzero sparsities.

    ``mean over s > 0 of accuracy(s) / accuracy(0)``: 1 means pruning cost nothing at any step of
    the ladder, values near 0 mean the pruned networks are at chance or worse. Dividing by the
    unpruned accuracy separates compressibility from how accurate the network was to begin with.
    NaN when the unpruned accuracy is 0 or NaN, or the curve has no nonzero sparsity.
    """
    base = next((point["accuracy"] for point in curve if point["sparsity"] == 0.0), math.nan)
    ratios = [point["accuracy"] / base for point in curve if point["sparsity"] > 0.0] if base > 0 else []
    return sum(ratios) / len(ratios) if ratios else math.nan


@torch.no_grad()
def hidden_activations(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> list[torch.Tensor]:
    """Return the output of every ``nn.ReLU`` module of ``model`` on ``x``, in forward order.

    Each tensor has shape (N, ...) with the layer's own feature shape, on the CPU.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    outputs: list[list[torch.Tensor]] = [[] for _ in relus]
    hooks = [
        relu.register_forward_hook(lambda _m, _i, out, store=store: store.append(out.detach().cpu()))
        for relu, store in zip(relus, outputs, strict=True)
    ]
    try:
        predict_logits(model, x, batch_size)
    finally:
        for hook in hooks:
            hook.remove()
    return [torch.cat(parts) for parts in outputs]


def activation_sparsity(activations: list[torch.Tensor]) -> dict[str, object]:
    """Compute the fraction of exactly-zero post-ReLU activations, per layer and overall.

    For one layer the denominator is samples x units (x spatial positions for a conv layer).
    ``overall`` divides the zeros of all layers by the activations of all layers, so wide layers
    weigh more. A higher value means sparser representations. NaN for an empty input.
    """
    zeros = [int((a == 0).sum()) for a in activations]
    totals = [a.numel() for a in activations]
    per_layer = [z / t if t else math.nan for z, t in zip(zeros, totals, strict=True)]
    overall = sum(zeros) / sum(totals) if sum(totals) else math.nan
    return {"per_layer": per_layer, "overall": overall}


def class_separation(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Return ``1 - mean within-class cosine distance / mean between-class cosine distance``.

    Cosine distance is ``1 - cos(u, v)``, with a zero vector at cosine 0 from everything. Within-class
    pairs are pairs of distinct samples of one class; between-class pairs are samples of different
    classes. 1 means every class collapses to one direction, 0 means classes are no closer inside
    than across. Degenerate cases: NaN if either kind of pair is missing; 0 if the between-class
    distance is 0 (all representations point the same way). Memory grows as N squared, so callers
    pass a subsample for large N.
    """
    features = features.flatten(1).double()
    unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    distance = 1.0 - unit @ unit.T
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    different = labels[:, None] != labels[None, :]
    if not bool(same.any()) or not bool(different.any()):
        return math.nan
    between = float(distance[different].mean())
    if between <= 1e-12:
        return 0.0
    return 1.0 - float(distance[same].mean()) / between


@torch.no_grad()
def prune_layerwise(model: nn.Module, sparsity: float) -> nn.Module:
    """Return a copy of ``model`` in which each prunable weight has its smallest-magnitude entries set to zero.

    Each weight matrix or kernel loses ``round(sparsity * n)`` entries, where ``n`` counts its own
    entries (layer-wise magnitude pruning), so every layer keeps the same share of its weights
    whatever their scale. As in ``prune_global``, biases are never pruned, ties are broken by
    position so each layer loses exactly that many entries, and the model passed in is not modified.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"invalid sparsity {sparsity!r}: expected a fraction in [0, 1]")
    pruned = copy.deepcopy(model)
    for w in prunable_weights(pruned):
        magnitudes = w.detach().abs().flatten()
        count = round(sparsity * magnitudes.numel())
        mask = torch.ones_like(magnitudes)
        mask[torch.argsort(magnitudes, stable=True)[:count]] = 0.0
        w.mul_(mask.view_as(w))
    return pruned


# Pruning rules that ``pruning_curve`` accepts as ``method``.
PRUNING_METHODS = {"global": prune_global, "layerwise": prune_layerwise}
