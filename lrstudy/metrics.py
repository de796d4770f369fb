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

import numpy as np
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


def mechanism_metrics(
    logits: torch.Tensor, y: torch.Tensor, b: torch.Tensor, threshold: float = 0.5
) -> dict[str, float]:
    """Measure how the network treats bias-conflicting samples, the quantities of the paper's proposed mechanism.

    From the logits of a fixed set of training samples:
    - ``conflicting_loss_share``: the share of the summed cross-entropy loss carried by conflicting
      samples (see ``conflicting_loss_share``);
    - ``conflicting_loss_ratio``: mean loss of conflicting samples / mean loss of aligned samples;
    - ``mispredicted_conflicting_confidence``: mean max-softmax probability of the conflicting
      samples that are mispredicted;
    - ``confident_spurious_fraction``: the fraction of conflicting samples predicted as their
      spurious class ``b`` with a max-softmax probability above ``threshold``.
    A value whose set of samples is empty (or whose denominator is 0) is NaN, as is every value when
    the logits are not all finite.
    """
    names = (
        "conflicting_loss_share",
        "conflicting_loss_ratio",
        "mispredicted_conflicting_confidence",
        "confident_spurious_fraction",
    )
    if len(y) == 0 or not bool(torch.isfinite(logits).all()):
        return dict.fromkeys(names, math.nan)
    losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    confidence, predicted = torch.softmax(logits.double(), dim=1).max(dim=1)
    aligned = b == y
    conflicting = ~aligned
    aligned_mean = float(losses[aligned].mean()) if bool(aligned.any()) else math.nan
    conflicting_mean = float(losses[conflicting].mean()) if bool(conflicting.any()) else math.nan
    mispredicted = conflicting & (predicted != y)
    confident_spurious = conflicting & (predicted == b) & (confidence > threshold)
    return {
        "conflicting_loss_share": conflicting_loss_share(losses, aligned),
        "conflicting_loss_ratio": conflicting_mean / aligned_mean if aligned_mean > 0 else math.nan,
        "mispredicted_conflicting_confidence": float(confidence[mispredicted].mean())
        if bool(mispredicted.any())
        else math.nan,
        "confident_spurious_fraction": float(confident_spurious.sum()) / int(conflicting.sum())
        if bool(conflicting.any())
        else math.nan,
    }


# Fraction of each weight matrix's largest entries that the best-kappa approximation keeps by default.
KAPPA = 0.1


def _keep_largest(values: torch.Tensor, kappa: float) -> torch.Tensor:
    """Zero all but the ``round(kappa * n)`` largest-magnitude entries of each row of ``values`` (n columns)."""
    keep = round(kappa * values.shape[1])
    if keep == 0:
        return torch.zeros_like(values)
    threshold_index = torch.topk(values.abs(), keep, dim=1).indices
    kept = torch.zeros_like(values)
    return kept.scatter_(1, threshold_index, values.gather(1, threshold_index))


def best_kappa_error(weight: torch.Tensor, kappa: float) -> float:
    """Return the relative error ``||w - w_kappa|| / ||w||`` of the best row-wise kappa-term approximation.

    ``w_kappa`` keeps, in each row, the ``round(kappa * columns)`` entries of largest magnitude and
    sets the rest to zero; norms are Frobenius norms. A convolution kernel is read as a matrix with
    one row per output channel. 0 for a matrix that is already that sparse per row, and for an
    all-zero matrix (nothing is lost by approximating it).
    """
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"invalid kappa {kappa!r}: expected a fraction in [0, 1]")
    matrix = weight.detach().double().flatten(1) if weight.dim() > 1 else weight.detach().double()[None]
    norm = float(matrix.norm())
    if norm == 0.0:
        return 0.0
    return float((matrix - _keep_largest(matrix, kappa)).norm()) / norm


def kappa_compressibility(model: nn.Module, kappa: float = KAPPA) -> dict[str, float]:
    """Compressibility as in Barsbey et al. (NeurIPS 2021): 1 - relative best-kappa approximation error.

    ``layerwise``: the mean over the prunable weights of ``1 - best_kappa_error(w, kappa)``, each
    matrix approximated row by row. ``global``: ``1 - error`` when all prunable weights form one
    vector and the ``kappa`` fraction of largest entries of that vector is kept. 1 means the
    weights lose nothing when all but a ``kappa`` fraction is dropped; 0 means they lose everything.
    """
    weights = prunable_weights(model)
    layerwise = [1.0 - best_kappa_error(w, kappa) for w in weights]
    everything = torch.cat([w.detach().flatten() for w in weights])
    return {
        "layerwise": sum(layerwise) / len(layerwise),
        "global": 1.0 - best_kappa_error(everything[None], kappa),
    }


def pq_index(activations: torch.Tensor, p: float = 1.0, q: float = 2.0) -> float:
    """Return the mean PQ-index of the rows of ``activations`` (Diao et al., ICLR 2023).

    For a vector ``a`` of ``d`` entries, ``I(a) = 1 - d ** (1/q - 1/p) * ||a||_p / ||a||_q`` with
    ``p < q``: 0 for a constant vector, ``1 - d ** (1/q - 1/p)`` (the largest value) for a vector with
    one non-zero entry. Rows are flattened samples; all-zero rows have no defined index and are left
    out of the mean. NaN when no row is left.
    """
    if not 0 < p < q:
        raise ValueError(f"invalid PQ-index exponents p={p!r}, q={q!r}: expected 0 < p < q")
    rows = activations.detach().double().flatten(1)
    dimension = rows.shape[1]
    norm_p = rows.abs().pow(p).sum(dim=1).pow(1.0 / p)
    norm_q = rows.abs().pow(q).sum(dim=1).pow(1.0 / q)
    defined = norm_q > 0
    if not bool(defined.any()):
        return math.nan
    index = 1.0 - dimension ** (1.0 / q - 1.0 / p) * norm_p[defined] / norm_q[defined]
    return float(index.mean())


def class_selectivity(activations: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the mean class selectivity index of hidden units (Morcos et al., ICLR 2018).

    For one unit with class-conditional mean activations ``mu_c``: ``(mu_max - mu_rest) / (mu_max +
    mu_rest)``, where ``mu_max`` is the largest class mean and ``mu_rest`` the mean of the other
    classes' means. For non-negative (post-ReLU) activations it is 0 when every class drives the unit
    equally and 1 when only one class does. ``activations`` is (N, units) or (N, channels, ...), in
    which case each channel's activation is its mean over positions. Units that never activate have
    no defined index and are left out; NaN when no unit is left or fewer than two classes are present.
    """
    units = activations.detach().double()
    if units.dim() > 2:
        units = units.flatten(2).mean(dim=2)
    classes = torch.unique(labels)
    if len(classes) < 2:
        return math.nan
    means = torch.stack([units[labels == c].mean(dim=0) for c in classes])  # (classes, units)
    top = means.max(dim=0).values
    rest = (means.sum(dim=0) - top) / (len(classes) - 1)
    live = (top + rest) > 0
    if not bool(live.any()):
        return math.nan
    return float(((top - rest)[live] / (top + rest)[live]).mean())


# Attribution methods of ``attribute``. Integrated Gradients from a black image is the main one.
# For a ReLU network without biases it equals input x gradient exactly (the network is positively
# homogeneous, so the gradient is constant along the path), so the check is GradientShap, which
# starts from real training images instead.
ATTRIBUTION_METHODS = ("integrated_gradients", "gradient_shap")
# Steps of the numerical path integral of Integrated Gradients.
IG_STEPS = 32
# Random (baseline, path point) draws per sample of GradientShap.
SHAP_SAMPLES = 16


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    method: str,
    baselines: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Attribute the logit of class ``target`` to each input pixel with captum, in eval mode.

    - ``integrated_gradients``: gradients integrated along the straight path from the all-zero image
      (black, no digit) to ``x``, in ``IG_STEPS`` steps.
    - ``gradient_shap``: expected gradients (GradientShap) with ``baselines`` (required; e.g. training
      images) as the reference distribution, ``SHAP_SAMPLES`` random draws per sample, seeded with
      ``seed``; the caller's random state is restored afterwards.
    Returns a tensor of the shape of ``x``.
    """
    from captum.attr import GradientShap, IntegratedGradients

    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"invalid attribution method {method!r}: expected one of {', '.join(ATTRIBUTION_METHODS)}")
    if method == "gradient_shap" and baselines is None:
        raise ValueError("gradient_shap needs baselines: pass reference inputs, e.g. training images")
    was_training = model.training
    model.eval()
    try:
        inputs = x.detach().clone().requires_grad_(True)
        if method == "integrated_gradients":
            attributions = IntegratedGradients(model).attribute(
                inputs, baselines=torch.zeros_like(inputs), target=target, n_steps=IG_STEPS
            )
        else:
            # captum draws from numpy's and torch's global generators: seed both, restore both after.
            devices = [x.device] if x.device.type == "cuda" else []
            numpy_state = np.random.get_state()
            try:
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed)
                    np.random.seed(seed)
                    attributions = GradientShap(model).attribute(
                        inputs, baselines=baselines, target=target, n_samples=SHAP_SAMPLES
                    )
            finally:
                np.random.set_state(numpy_state)
    finally:
        model.train(was_training)
    return attributions.detach()


def core_attribution_share(attributions: torch.Tensor, dataset: str, core_side: str = "left") -> torch.Tensor:
    """Return, per sample, the share of attribution mass on the core feature; NaN where the mass is 0.

    - ``double_mnist``: absolute attributions summed over the core digit's half of the image, divided
      by the sum over the whole image.
    - ``colored_mnist``: core and spurious features share pixels, so each pixel's attribution vector
      over the three colour channels is split into its component along the grey axis (1, 1, 1)/sqrt(3),
      which changes the digit's brightness but not its hue (shape), and the orthogonal rest, which
      changes only the hue (colour). The share is ``sum |grey component| / (sum |grey component| +
      sum ||hue component||)`` over pixels.
    The spurious share is ``1 - core share``.
    """
    if core_side not in ("left", "right"):
        raise ValueError(f"invalid core_side {core_side!r}: expected 'left' or 'right'")
    if dataset == "double_mnist":
        magnitude = attributions.abs().sum(dim=1)  # (N, H, W), channels summed
        half = magnitude.shape[-1] // 2
        core = magnitude[..., :half] if core_side == "left" else magnitude[..., half:]
        core_mass, total = core.flatten(1).sum(dim=1), magnitude.flatten(1).sum(dim=1)
    elif dataset == "colored_mnist":
        grey = attributions.sum(dim=1, keepdim=True) / math.sqrt(3.0)  # (N, 1, H, W): coordinate along the grey axis
        hue = attributions - grey / math.sqrt(3.0)
        core_mass = grey.abs().flatten(1).sum(dim=1)
        total = core_mass + hue.norm(dim=1).flatten(1).sum(dim=1)
    else:
        raise ValueError(f"invalid dataset {dataset!r}: expected double_mnist or colored_mnist")
    share = core_mass.double() / total.double()
    return torch.where(total > 0, share, torch.full_like(share, math.nan))


def counterfactual_following(logits: torch.Tensor, y: torch.Tensor, swapped_b: torch.Tensor) -> dict[str, float]:
    """On inputs whose spurious feature was swapped to class ``swapped_b`` (never ``y``), return how often
    the prediction follows the core label (``follows_core``) and how often the new spurious class
    (``follows_spurious``). NaN for an empty input or non-finite logits."""
    if len(y) == 0 or not bool(torch.isfinite(logits).all()):
        return {"follows_core": math.nan, "follows_spurious": math.nan}
    predicted = logits.argmax(dim=1)
    return {
        "follows_core": float((predicted == y).double().mean()),
        "follows_spurious": float((predicted == swapped_b).double().mean()),
    }
