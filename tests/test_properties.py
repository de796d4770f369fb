"""Hand-computed tests of the property measures, the training losses, dropout and the spurious swap.

Each expected value is derived in a comment or computed with ``math`` from inputs chosen so that the value
is known without running the function under test.
"""

import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrstudy.config import DataConfig, ModelConfig, TrainConfig
from lrstudy.data import COLORS, NUM_CLASSES, Split, build_dataset, load_digit_pools, swap_spurious
from lrstudy.metrics import (
    attribute,
    best_kappa_error,
    class_selectivity,
    class_separation,
    core_attribution_share,
    counterfactual_following,
    kappa_compressibility,
    mechanism_metrics,
    pq_index,
)
from lrstudy.models import MLP, SmallCNN, build_model
from lrstudy.training import focal_loss, training_loss

MECHANISM_NAMES = [
    "conflicting_loss_share",
    "conflicting_loss_ratio",
    "mispredicted_conflicting_confidence",
    "confident_spurious_fraction",
]

# double_mnist-shaped inputs for the attribution tests: (N, 1, HEIGHT, 2 * HEIGHT).
HEIGHT = 4


# ---------------------------------------------------------------------------------------------------
# Attribution: core_attribution_share and attribute
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captum_imported():
    """Import captum in fixture setup, because the first import takes seconds and would count toward one test."""
    import captum.attr  # noqa: F401


def half_blind_linear(zero_side: str, seed: int = 0) -> nn.Sequential:
    """Return a bias-free linear model on (1, HEIGHT, 2 * HEIGHT) inputs whose weights are zero on ``zero_side``.

    The weights on the other half are drawn from a standard normal distribution, seeded with ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(10, HEIGHT, 2 * HEIGHT, generator=generator)
    if zero_side == "left":
        weights[..., :HEIGHT] = 0.0
    else:
        weights[..., HEIGHT:] = 0.0
    model = nn.Sequential(nn.Flatten(), nn.Linear(HEIGHT * 2 * HEIGHT, 10, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weights.flatten(1))
    return model


def positive_inputs(count: int, seed: int) -> torch.Tensor:
    """Return ``count`` double_mnist-shaped inputs with every pixel in [0.1, 1.1), so no half is blank."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, HEIGHT, 2 * HEIGHT, generator=generator) + 0.1


def attribute_linear(model: nn.Module, method: str) -> torch.Tensor:
    """Attribute the logits of classes 0..4 of five positive inputs with ``method``."""
    x = positive_inputs(5, seed=1)
    target = torch.arange(5)
    # GradientShap's reference inputs: random non-negative images, like blank or dim digits.
    baselines = torch.rand(6, 1, HEIGHT, 2 * HEIGHT, generator=torch.Generator().manual_seed(2))
    return attribute(model, x, target, method, baselines=baselines if method == "gradient_shap" else None)


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_shap"])
@pytest.mark.parametrize(
    ("zero_side", "core_side", "expected"),
    [
        ("right", "left", 1.0),
        ("left", "left", 0.0),
        ("left", "right", 1.0),
        ("right", "right", 0.0),
    ],
    ids=["core-only-left", "spurious-only-left", "core-only-right", "spurious-only-right"],
)
@pytest.mark.usefixtures("captum_imported")
def test_attribution_share_half_blind_model(method, zero_side, core_side, expected):
    # A linear model's attribution of a pixel is (x - baseline) * weight, so it is exactly zero on the half
    # whose weights are zero, and all the attribution mass sits on the other half.
    attributions = attribute_linear(half_blind_linear(zero_side), method)
    share = core_attribution_share(attributions, "double_mnist", core_side)
    assert share.shape == (5,)
    assert torch.allclose(share, torch.full((5,), expected, dtype=share.dtype), rtol=0.0, atol=1e-6)


@pytest.mark.usefixtures("captum_imported")
def test_integrated_gradients_linear_exact():
    # Along the path from the black image the gradient of a linear model is its weight row, so the
    # attribution is x * W[target], pixel by pixel.
    model = half_blind_linear("right")
    x = positive_inputs(5, seed=1)
    target = torch.arange(5)
    attributions = attribute(model, x, target, "integrated_gradients")
    expected = x * model[1].weight[target].detach().view(5, 1, HEIGHT, 2 * HEIGHT)
    assert attributions.shape == x.shape
    assert torch.allclose(attributions, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("captum_imported")
def test_gradient_shap_same_seed_identical():
    model = half_blind_linear("right")
    first = attribute_linear(model, "gradient_shap")
    second = attribute_linear(model, "gradient_shap")
    assert torch.equal(first, second)


@pytest.mark.usefixtures("captum_imported")
def test_gradient_shap_restores_random_state():
    model = half_blind_linear("right")
    torch.manual_seed(7)
    attribute_linear(model, "gradient_shap")
    after_call = torch.rand(3)
    torch.manual_seed(7)
    untouched = torch.rand(3)
    assert torch.equal(after_call, untouched)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.usefixtures("captum_imported")
def test_attribute_restores_training_flag(training):
    model = half_blind_linear("right")
    model.train(training)
    attribute_linear(model, "integrated_gradients")
    assert model.training is training


@pytest.mark.usefixtures("captum_imported")
def test_attribute_rejects_unknown_method():
    model = half_blind_linear("right")
    with pytest.raises(ValueError, match="saliency"):
        attribute(model, positive_inputs(1, seed=0), torch.tensor([0]), "saliency")


@pytest.mark.usefixtures("captum_imported")
def test_gradient_shap_requires_baselines():
    model = half_blind_linear("right")
    with pytest.raises(ValueError, match="baselines"):
        attribute(model, positive_inputs(1, seed=0), torch.tensor([0]), "gradient_shap")


@pytest.mark.parametrize(
    ("pixel", "expected"),
    [
        # Along the grey axis only: the grey coordinate is 3 / sqrt(3) and the hue part is zero.
        ((1.0, 1.0, 1.0), 1.0),
        # The channels sum to 0, so the grey coordinate is 0 and everything is hue.
        ((1.0, -1.0, 0.0), 0.0),
        # Grey coordinate 1 / sqrt(3), hue (2, -1, -1) / 3 of norm sqrt(2 / 3): share 1 / (1 + sqrt(2)).
        ((1.0, 0.0, 0.0), 1.0 / (1.0 + math.sqrt(2.0))),
    ],
    ids=["grey", "pure-hue", "red"],
)
def test_colored_share_single_pixel(pixel, expected):
    attributions = torch.tensor(pixel).view(1, 3, 1, 1)
    share = core_attribution_share(attributions, "colored_mnist")
    assert float(share[0]) == pytest.approx(expected, abs=1e-6)


def test_colored_share_sums_over_pixels():
    # Pixel A (2, 2, 2) is pure grey with coordinate 6 / sqrt(3) = 2 sqrt(3). Pixel B (0, 3, -3) is pure
    # hue of norm 3 sqrt(2). The share is 2 sqrt(3) / (2 sqrt(3) + 3 sqrt(2)).
    attributions = torch.tensor([[2.0, 0.0], [2.0, 3.0], [2.0, -3.0]]).view(1, 3, 1, 2)
    share = core_attribution_share(attributions, "colored_mnist")
    expected = 2 * math.sqrt(3) / (2 * math.sqrt(3) + 3 * math.sqrt(2))
    assert float(share[0]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("dataset", "shape"),
    [("double_mnist", (2, 1, HEIGHT, 2 * HEIGHT)), ("colored_mnist", (2, 3, HEIGHT, HEIGHT))],
)
def test_attribution_share_zero_mass_nan(dataset, shape):
    attributions = torch.zeros(shape)
    attributions[1, 0, 0, 0] = 1.0
    share = core_attribution_share(attributions, dataset)
    assert math.isnan(float(share[0]))
    assert not math.isnan(float(share[1]))


def test_attribution_share_rejects_dataset():
    with pytest.raises(ValueError, match="waterbirds"):
        core_attribution_share(torch.ones(1, 1, 2, 4), "waterbirds")


# ---------------------------------------------------------------------------------------------------
# Compressibility: best_kappa_error and kappa_compressibility
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kept", "columns"), [(1, 4), (2, 10), (3, 7), (5, 5)])
def test_best_kappa_error_sparse_rows_zero(kept, columns):
    # Each row has exactly `kept` non-zeros at different positions, so keeping `kept` entries loses nothing.
    generator = torch.Generator().manual_seed(kept)
    matrix = torch.zeros(4, columns)
    for row in range(4):
        positions = torch.randperm(columns, generator=generator)[:kept]
        matrix[row, positions] = torch.rand(kept, generator=generator) + 0.5
    error = best_kappa_error(matrix, kept / columns)
    assert error == pytest.approx(0.0, abs=1e-12)
    assert 1.0 - error == pytest.approx(1.0, abs=1e-12)


def test_best_kappa_error_equal_entries():
    # Keeping 2 of 4 equal entries per row drops half the squared norm: error sqrt(8 / 16) = sqrt(0.5).
    error = best_kappa_error(torch.full((2, 4), 3.0), 0.5)
    assert error == pytest.approx(math.sqrt(0.5))
    assert 1.0 - error == pytest.approx(1.0 - math.sqrt(0.5))


@pytest.mark.parametrize(("kappa", "expected"), [(0.0, 1.0), (1.0, 0.0)])
def test_best_kappa_error_kappa_bounds(kappa, expected):
    matrix = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -4.0]])
    assert best_kappa_error(matrix, kappa) == pytest.approx(expected)


def test_best_kappa_error_zero_matrix():
    assert best_kappa_error(torch.zeros(3, 5), 0.2) == 0.0


@pytest.mark.parametrize("kappa", [-0.1, 1.5])
def test_best_kappa_error_rejects_kappa(kappa):
    with pytest.raises(ValueError, match=f"invalid kappa {kappa!r}"):
        best_kappa_error(torch.ones(2, 2), kappa)


def test_best_kappa_error_conv_rows():
    # Kernel of shape (out=2, in=2, 1, 2), read as 2 rows of 4: [4, 3, 2, 0] and [1, 0, 0, 0].
    # kappa 0.5 keeps 2 entries per row, so row 0 loses the 2 (squared 4) and row 1 loses nothing.
    # Squared norm 16 + 9 + 4 + 1 = 30, so the error is sqrt(4 / 30). Reading the kernel as one vector
    # (error 0) or as rows of 2 (error sqrt(9 / 30)) gives another value.
    kernel = torch.tensor([[[[4.0, 3.0]], [[2.0, 0.0]]], [[[1.0, 0.0]], [[0.0, 0.0]]]])
    assert kernel.shape == (2, 2, 1, 2)
    assert best_kappa_error(kernel, 0.5) == pytest.approx(math.sqrt(4 / 30))


def test_kappa_compressibility_hand_model():
    # Layer 0 weight [[3, 4, 0, 0], [0, 0, 0, 1]]: 2 kept of 4 per row lose nothing, compressibility 1.
    # Layer 1 weight [[1, 1]]: 1 kept of 2 loses half, compressibility 1 - sqrt(0.5).
    # Global: the 10 weights hold 5 non-zeros (3, 4, 1, 1, 1) and kappa 0.5 keeps 5, so nothing is lost.
    # The bias of 100 would dominate both norms if biases were counted.
    model = nn.Sequential(nn.Linear(4, 2, bias=True), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
        model[0].bias.fill_(100.0)
        model[1].weight.copy_(torch.tensor([[1.0, 1.0]]))
    scores = kappa_compressibility(model, kappa=0.5)
    assert scores["layerwise"] == pytest.approx((1.0 + 1.0 - math.sqrt(0.5)) / 2)
    assert scores["global"] == pytest.approx(1.0)


def test_kappa_compressibility_global_differs():
    # Layer 0 [[10, 10], [10, 10]] and layer 1 [[1, 1]]: row by row each keeps 1 of 2 equal entries, so
    # both layers and their mean score 1 - sqrt(0.5). Globally, kappa 0.5 keeps 3 of the 6 weights (three
    # 10s) and loses 10, 1 and 1, which is 102 of the squared norm 402: 1 - sqrt(102 / 402).
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(10.0)
        model[1].weight.fill_(1.0)
    scores = kappa_compressibility(model, kappa=0.5)
    assert scores["layerwise"] == pytest.approx(1.0 - math.sqrt(0.5))
    assert scores["global"] == pytest.approx(1.0 - math.sqrt(102 / 402))


def test_best_kappa_error_rounds_half_to_even():
    # The kept count is Python's round(kappa * columns), which rounds halves to even: 0.5 * 1 keeps 0
    # entries (error 1), and 0.5 * 5 keeps 2 of 5 equal entries (error sqrt(3 / 5)).
    assert best_kappa_error(torch.ones(2, 1), 0.5) == pytest.approx(1.0)
    assert best_kappa_error(torch.ones(2, 5), 0.5) == pytest.approx(math.sqrt(3 / 5))


# ---------------------------------------------------------------------------------------------------
# PQ-index
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "q"), [(1.0, 2.0), (0.5, 1.0), (1.0, 3.0)])
@pytest.mark.parametrize("dimension", [2, 9])
def test_pq_index_one_hot_maximum(p, q, dimension):
    rows = torch.zeros(3, dimension)
    rows[torch.arange(3), torch.tensor([0, 1, dimension - 1])] = torch.tensor([1.0, 5.0, 0.2])
    expected = 1.0 - dimension ** (1.0 / q - 1.0 / p)
    assert pq_index(rows, p, q) == pytest.approx(expected)


def test_pq_index_default_one_hot():
    # p=1, q=2 and d=16: 1 - 16 ** (-1/2) = 0.75.
    rows = torch.zeros(1, 16)
    rows[0, 3] = 2.0
    assert pq_index(rows) == pytest.approx(0.75)


@pytest.mark.parametrize("value", [1.0, -0.3, 7.0])
def test_pq_index_constant_zero(value):
    assert pq_index(torch.full((2, 6), value)) == pytest.approx(0.0, abs=1e-12)


def test_pq_index_hand_vector():
    # a = (3, 4, 0, 0): ||a||_1 = 7, ||a||_2 = 5, so I = 1 - 4 ** (-1/2) * 7 / 5 = 0.3.
    assert pq_index(torch.tensor([[3.0, 4.0, 0.0, 0.0]])) == pytest.approx(0.3)


def test_pq_index_flattens_samples():
    # Each (2, 2, 2) sample is one vector of d = 8 entries: one-hot gives 1 - 8 ** (-1/2).
    activations = torch.zeros(2, 2, 2, 2)
    activations[:, 1, 0, 1] = 1.0
    assert pq_index(activations) == pytest.approx(1.0 - 8**-0.5)


def test_pq_index_skips_zero_rows():
    # Rows: one-hot (1 - 1/2 for d = 4), all-zero (left out), constant (0). Mean of the two defined: 0.25.
    rows = torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert pq_index(rows) == pytest.approx(0.25)


def test_pq_index_all_zero_nan():
    assert math.isnan(pq_index(torch.zeros(3, 5)))


@pytest.mark.parametrize(("p", "q"), [(2.0, 1.0), (1.0, 1.0), (0.0, 2.0), (-1.0, 2.0)])
def test_pq_index_rejects_exponents(p, q):
    with pytest.raises(ValueError, match=f"p={p!r}, q={q!r}"):
        pq_index(torch.ones(2, 3), p, q)


# ---------------------------------------------------------------------------------------------------
# Class separation
# ---------------------------------------------------------------------------------------------------


def test_class_separation_separated_codes():
    # Within a class the codes are equal (distance 0). Across classes they are orthogonal (distance 1).
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    features = F.one_hot(labels, 4).float() * torch.tensor([[1.0], [3.0], [2.0], [0.5], [1.0], [4.0], [2.0]])
    assert class_separation(features, labels) == pytest.approx(1.0)


def test_class_separation_identical_codes_zero():
    labels = torch.tensor([0, 0, 1, 1, 2])
    features = torch.tensor([[0.5, 1.0, 2.0]]).repeat(5, 1)
    assert class_separation(features, labels) == 0.0


@pytest.mark.parametrize(
    "labels",
    [[2, 2, 2, 2], [0, 1, 2, 3]],
    ids=["single-class", "no-within-pairs"],
)
def test_class_separation_missing_pairs_nan(labels):
    features = torch.eye(4)
    assert math.isnan(class_separation(features, torch.tensor(labels)))


# ---------------------------------------------------------------------------------------------------
# Class selectivity
# ---------------------------------------------------------------------------------------------------

SELECTIVITY_LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
# Activations of one unit on the six samples of SELECTIVITY_LABELS, with the class means in comments.
ONE_CLASS_UNIT = [0.0, 0.0, 5.0, 3.0, 0.0, 0.0]  # means (0, 4, 0): (4 - 0) / (4 + 0) = 1
EQUAL_MEANS_UNIT = [1.0, 3.0, 2.0, 2.0, 4.0, 0.0]  # means (2, 2, 2): 0
MIXED_UNIT = [5.0, 7.0, 1.0, 3.0, 0.0, 0.0]  # means (6, 2, 0): rest (2 + 0) / 2 = 1, (6 - 1) / (6 + 1) = 5 / 7
DEAD_UNIT = [0.0] * 6


@pytest.mark.parametrize(
    ("unit", "expected"),
    [(ONE_CLASS_UNIT, 1.0), (EQUAL_MEANS_UNIT, 0.0), (MIXED_UNIT, 5 / 7)],
    ids=["one-class", "equal-means", "mixed"],
)
def test_class_selectivity_single_unit(unit, expected):
    activations = torch.tensor(unit)[:, None]
    assert class_selectivity(activations, SELECTIVITY_LABELS) == pytest.approx(expected, abs=1e-12)


def test_class_selectivity_skips_dead_unit():
    # The dead unit has no index. Counting it as 0 would give (1 + 0 + 5/7) / 4 instead of / 3.
    activations = torch.tensor([ONE_CLASS_UNIT, DEAD_UNIT, EQUAL_MEANS_UNIT, MIXED_UNIT]).T
    assert class_selectivity(activations, SELECTIVITY_LABELS) == pytest.approx((1.0 + 0.0 + 5 / 7) / 3)


def test_class_selectivity_conv_channel_means():
    # Channel 0 averages over the 2 positions to (1, 2, 0, 0): means (1.5, 0), index 1.
    # Channel 1 averages to (3, 3, 1, 1): means (3, 1), index (3 - 1) / (3 + 1) = 0.5.
    activations = torch.tensor(
        [
            [[[2.0], [0.0]], [[3.0], [3.0]]],
            [[[4.0], [0.0]], [[6.0], [0.0]]],
            [[[0.0], [0.0]], [[2.0], [0.0]]],
            [[[0.0], [0.0]], [[0.0], [2.0]]],
        ]
    )
    assert activations.shape == (4, 2, 2, 1)
    labels = torch.tensor([0, 0, 1, 1])
    assert class_selectivity(activations, labels) == pytest.approx((1.0 + 0.5) / 2)


@pytest.mark.parametrize(
    ("units", "labels"),
    [
        ([ONE_CLASS_UNIT], [1, 1, 1, 1, 1, 1]),
        ([DEAD_UNIT, DEAD_UNIT], SELECTIVITY_LABELS.tolist()),
    ],
    ids=["single-class", "all-dead"],
)
def test_class_selectivity_undefined_nan(units, labels):
    activations = torch.tensor(units).T
    assert math.isnan(class_selectivity(activations, torch.tensor(labels)))


# ---------------------------------------------------------------------------------------------------
# Mechanism metrics
# ---------------------------------------------------------------------------------------------------

# Six samples of three classes.
# sample  y  b  logits         role
# 0       0  0  (2, 0, 0)      aligned, right
# 1       1  1  (0, 1, 0)      aligned, right
# 2       2  0  (3, 0, 0)      conflicting, predicted b, confidence e^3 / (e^3 + 2) = 0.91
# 3       0  2  (0, 0, 0.4)    conflicting, predicted b, confidence e^0.4 / (e^0.4 + 2) = 0.43
# 4       1  2  (0, 2, 0)      conflicting, right
# 5       0  1  (0, 0, 5)      conflicting, predicted 2 (neither y nor b), confidence e^5 / (e^5 + 2)
MECHANISM_Y = torch.tensor([0, 1, 2, 0, 1, 0])
MECHANISM_B = torch.tensor([0, 1, 0, 2, 2, 1])
MECHANISM_LOGITS = torch.tensor(
    [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.4], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0]]
)


def log_sum_exp(values: list[float]) -> float:
    return math.log(sum(math.exp(v) for v in values))


# Cross-entropy is log(sum exp(logits)) - logit of y.
MECHANISM_LOSSES = [
    log_sum_exp([2, 0, 0]) - 2,
    log_sum_exp([0, 1, 0]) - 1,
    log_sum_exp([3, 0, 0]) - 0,
    log_sum_exp([0, 0, 0.4]) - 0,
    log_sum_exp([0, 2, 0]) - 2,
    log_sum_exp([0, 0, 5]) - 0,
]
MISPREDICTED_CONFIDENCES = [
    math.exp(3) / (math.exp(3) + 2),
    math.exp(0.4) / (math.exp(0.4) + 2),
    math.exp(5) / (math.exp(5) + 2),
]


def test_mechanism_losses_match_cross_entropy():
    # Guards the hand computation itself against the library's cross-entropy.
    losses = F.cross_entropy(MECHANISM_LOGITS, MECHANISM_Y, reduction="none")
    assert torch.allclose(losses, torch.tensor(MECHANISM_LOSSES), rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("conflicting_loss_share", sum(MECHANISM_LOSSES[2:]) / sum(MECHANISM_LOSSES)),
        ("conflicting_loss_ratio", (sum(MECHANISM_LOSSES[2:]) / 4) / (sum(MECHANISM_LOSSES[:2]) / 2)),
        ("mispredicted_conflicting_confidence", sum(MISPREDICTED_CONFIDENCES) / 3),
        # Of the 4 conflicting samples only sample 2 is predicted as b with confidence above 0.5.
        ("confident_spurious_fraction", 1 / 4),
    ],
)
def test_mechanism_metrics_hand_batch(name, expected):
    metrics = mechanism_metrics(MECHANISM_LOGITS, MECHANISM_Y, MECHANISM_B)
    assert metrics[name] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("threshold", "expected"), [(0.3, 2 / 4), (0.95, 0.0)])
def test_mechanism_metrics_threshold_counts(threshold, expected):
    # Samples 2 (0.91) and 3 (0.43) are predicted as b. A threshold of 0.3 counts both, 0.95 neither.
    metrics = mechanism_metrics(MECHANISM_LOGITS, MECHANISM_Y, MECHANISM_B, threshold=threshold)
    assert metrics["confident_spurious_fraction"] == pytest.approx(expected)


@pytest.mark.parametrize(("threshold", "expected"), [(0.5, 0.0), (math.nextafter(0.5, 0.0), 1.0)])
def test_confident_spurious_strictly_above(threshold, expected):
    # Tied logits give softmax (0.5, 0.5) exactly, and torch.max returns the first index of a tie, class 0 = b.
    logits = torch.tensor([[0.0, 0.0]])
    metrics = mechanism_metrics(logits, torch.tensor([1]), torch.tensor([0]), threshold=threshold)
    assert metrics["mispredicted_conflicting_confidence"] == 0.5
    assert metrics["confident_spurious_fraction"] == expected


def test_mechanism_metrics_no_conflicting():
    # No conflicting samples: they carry none of the loss, and the other values have no samples.
    metrics = mechanism_metrics(MECHANISM_LOGITS, MECHANISM_Y, MECHANISM_Y)
    assert metrics["conflicting_loss_share"] == 0.0
    assert math.isnan(metrics["conflicting_loss_ratio"])
    assert math.isnan(metrics["mispredicted_conflicting_confidence"])
    assert math.isnan(metrics["confident_spurious_fraction"])


def test_mechanism_metrics_no_aligned():
    b = (MECHANISM_Y + 1) % 3
    metrics = mechanism_metrics(MECHANISM_LOGITS, MECHANISM_Y, b)
    assert metrics["conflicting_loss_share"] == pytest.approx(1.0)
    assert math.isnan(metrics["conflicting_loss_ratio"])


def test_mechanism_ratio_zero_aligned_loss_nan():
    # In float32, log(1 + 2 e^-200) rounds to 0, so the aligned sample has loss exactly 0.
    logits = torch.tensor([[200.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    y, b = torch.tensor([0, 1]), torch.tensor([0, 0])
    assert float(F.cross_entropy(logits[:1], y[:1])) == 0.0
    assert math.isnan(mechanism_metrics(logits, y, b)["conflicting_loss_ratio"])


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", MECHANISM_NAMES)
def test_mechanism_metrics_nonfinite_nan(bad_value, name):
    logits = MECHANISM_LOGITS.clone()
    logits[4, 1] = bad_value
    assert math.isnan(mechanism_metrics(logits, MECHANISM_Y, MECHANISM_B)[name])


@pytest.mark.parametrize("name", MECHANISM_NAMES)
def test_mechanism_metrics_empty_nan(name):
    empty = torch.zeros(0, dtype=torch.long)
    assert math.isnan(mechanism_metrics(torch.zeros(0, 3), empty, empty)[name])


# ---------------------------------------------------------------------------------------------------
# Losses: focal_loss and training_loss
# ---------------------------------------------------------------------------------------------------


def test_focal_loss_gamma_zero_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 10, generator=generator) * 3
    y = torch.randint(0, 10, (32,), generator=generator)
    assert torch.allclose(focal_loss(logits, y, 0.0), F.cross_entropy(logits, y), rtol=1e-6, atol=0.0)


def test_focal_loss_gamma_two_hand_value():
    # Sample 1: four equal logits, p_y = 1/4, loss (3/4)^2 log 4 = (9/8) log 2.
    # Sample 2: logits (log 3, 0, 0, 0) and y = 0, p_y = 3/6 = 1/2, loss (1/2)^2 log 2 = (1/4) log 2.
    # Mean: (9/8 + 1/4) log 2 / 2 = (11/16) log 2.
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, 0.0]])
    y = torch.tensor([1, 0])
    assert float(focal_loss(logits, y, 2.0)) == pytest.approx(11 / 16 * math.log(2.0), rel=1e-6)


def tiny_linear_model() -> nn.Sequential:
    """Return Linear(2, 3) with hand-set weights (sum of absolute values 7.5) and a large bias."""
    model = nn.Sequential(nn.Linear(2, 3, bias=True))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 0.5], [-1.0, 3.0]]))
        model[0].bias.copy_(torch.tensor([10.0, -10.0, 5.0]))
    return model


LOSS_INPUTS = torch.tensor([[0.5, -1.0], [2.0, 0.25], [-0.5, 0.5]])
LOSS_LABELS = torch.tensor([2, 0, 1])


def test_training_loss_plain_cross_entropy():
    model = tiny_linear_model()
    logits = model(LOSS_INPUTS)
    loss, data = training_loss(model, logits, LOSS_LABELS, TrainConfig(focal_gamma=0.0, l1=0.0))
    assert torch.equal(loss, F.cross_entropy(logits, LOSS_LABELS))
    assert torch.equal(data, F.cross_entropy(logits, LOSS_LABELS))


def test_training_loss_l1_weights_only():
    # The penalty is l1 * sum|W| = 0.01 * 7.5. The bias (sum of absolute values 25) is not penalised.
    model = tiny_linear_model()
    logits = model(LOSS_INPUTS)
    loss, data = training_loss(model, logits, LOSS_LABELS, TrainConfig(l1=0.01))
    cross_entropy = F.cross_entropy(logits, LOSS_LABELS).item()
    assert data.item() == pytest.approx(cross_entropy, rel=1e-6)
    assert loss.item() == pytest.approx(cross_entropy + 0.01 * 7.5, rel=1e-6)


def test_training_loss_focal_with_l1():
    model = tiny_linear_model()
    logits = model(LOSS_INPUTS)
    loss, data = training_loss(model, logits, LOSS_LABELS, TrainConfig(focal_gamma=2.0, l1=0.1))
    focal = focal_loss(logits, LOSS_LABELS, 2.0).item()
    assert data.item() == pytest.approx(focal, rel=1e-6)
    assert loss.item() == pytest.approx(focal + 0.1 * 7.5, rel=1e-6)


# ---------------------------------------------------------------------------------------------------
# Dropout in build_model, MLP and SmallCNN
# ---------------------------------------------------------------------------------------------------

DROPOUT_CASES = [
    pytest.param(ModelConfig(model="mlp", width=16, depth=3), (1, 8, 8), 3, id="mlp"),
    pytest.param(ModelConfig(model="cnn", width=16), (3, 8, 8), 1, id="cnn"),
]


def seeded_model(config: ModelConfig, input_shape: tuple[int, int, int], dropout: float) -> nn.Module:
    """Build ``config`` with the given dropout after seeding the global generator with 0."""
    torch.manual_seed(0)
    return build_model(dataclasses.replace(config, dropout=dropout), input_shape, 10)


def dropout_modules(model: nn.Module) -> list[nn.Dropout]:
    return [module for module in model.modules() if isinstance(module, nn.Dropout)]


@pytest.mark.parametrize(("config", "input_shape", "dropout_layers"), DROPOUT_CASES)
def test_dropout_zero_adds_no_module(config, input_shape, dropout_layers):
    assert dropout_modules(seeded_model(config, input_shape, 0.0)) == []
    with_dropout = dropout_modules(seeded_model(config, input_shape, 0.5))
    assert len(with_dropout) == dropout_layers
    assert all(module.p == 0.5 for module in with_dropout)


@pytest.mark.parametrize(("config", "input_shape", "dropout_layers"), DROPOUT_CASES)
def test_dropout_zero_same_parameters(config, input_shape, dropout_layers):
    plain = list(seeded_model(config, input_shape, 0.0).parameters())
    with_dropout = list(seeded_model(config, input_shape, 0.5).parameters())
    assert len(plain) == len(with_dropout)
    for left, right in zip(plain, with_dropout, strict=True):
        assert torch.equal(left, right)


@pytest.mark.parametrize(("config", "input_shape", "dropout_layers"), DROPOUT_CASES)
def test_dropout_zero_train_equals_eval(config, input_shape, dropout_layers):
    x = torch.rand(6, *input_shape, generator=torch.Generator().manual_seed(1))
    plain = seeded_model(config, input_shape, 0.0).train()
    with_dropout = seeded_model(config, input_shape, 0.5).eval()
    with torch.no_grad():
        assert torch.equal(plain(x), with_dropout(x))


@pytest.mark.parametrize(("config", "input_shape", "dropout_layers"), DROPOUT_CASES)
def test_dropout_half_changes_train_outputs(config, input_shape, dropout_layers):
    x = torch.rand(6, *input_shape, generator=torch.Generator().manual_seed(1))
    model = seeded_model(config, input_shape, 0.5)
    with torch.no_grad():
        evaluated = model.eval()(x)
        torch.manual_seed(2)
        trained = model.train()(x)
    assert not torch.allclose(trained, evaluated)


def test_mlp_and_cnn_default_no_dropout():
    assert dropout_modules(MLP(64, 10, width=8, depth=2, bias=False)) == []
    assert dropout_modules(SmallCNN((1, 8, 8), 10, width=8, bias=False)) == []


# ---------------------------------------------------------------------------------------------------
# swap_spurious
# ---------------------------------------------------------------------------------------------------


def digits_config(dataset: str, core_side: str = "left") -> DataConfig:
    return DataConfig(dataset=dataset, source="sklearn_digits", image_size=8, core_side=core_side)


@functools.cache
def digits_test_split(dataset: str, core_side: str = "left") -> Split:
    """Return the test split (b uniform over all ten classes) of a small dataset built from sklearn digits."""
    return build_dataset(digits_config(dataset, core_side), seed=0).test


def swap(split: Split, dataset: str, core_side: str = "left", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return swap_spurious(split, dataset, core_side, torch.Generator().manual_seed(seed))


def hand_split(dataset: str) -> Split:
    """Return one aligned sample per class, with b = y = sample index.

    double_mnist: (1, 2, 4) images, left half filled with 100 + index and right half with index.
    colored_mnist: a (1, 2) grey image [0.025 * (index + 1), 1] in colour COLORS[index].
    """
    classes = torch.arange(NUM_CLASSES)
    if dataset == "double_mnist":
        x = torch.zeros(NUM_CLASSES, 1, 2, 4)
        x[..., :2] = 100.0 + classes.float().view(-1, 1, 1, 1)
        x[..., 2:] = classes.float().view(-1, 1, 1, 1)
    else:
        grey = torch.stack([0.025 * (classes.float() + 1), torch.ones(NUM_CLASSES)], dim=1).view(-1, 1, 1, 2)
        x = grey * COLORS[classes][:, :, None, None]
    return Split(x=x, y=classes, b=classes.clone(), core_source=classes.clone(), spurious_source=classes.clone())


@pytest.mark.parametrize("dataset", ["double_mnist", "colored_mnist"])
def test_swap_new_class_not_y_or_b(dataset):
    split = digits_test_split(dataset)
    _, swapped = swap(split, dataset)
    assert swapped.shape == split.y.shape
    assert not bool((swapped == split.y).any())
    assert not bool((swapped == split.b).any())
    assert int(swapped.min()) >= 0
    assert int(swapped.max()) < NUM_CLASSES


def test_swap_conflicting_sample_avoids_both():
    # y = 0 and b = 1 leave the 8 classes 2..9. Draws with 200 seeds must hit all of them and nothing else.
    split = Split(
        x=torch.zeros(1, 3, 2, 2),
        y=torch.tensor([0]),
        b=torch.tensor([1]),
        core_source=torch.tensor([0]),
        spurious_source=torch.tensor([-1]),
    )
    drawn = {int(swap(split, "colored_mnist", seed=seed)[1]) for seed in range(200)}
    assert drawn == set(range(2, NUM_CLASSES))


def test_swap_colored_recolours_pool_digit():
    config = digits_config("colored_mnist")
    split = digits_test_split("colored_mnist")
    pools = load_digit_pools(config, seed=0)
    row_of_id = {int(identifier): row for row, identifier in enumerate(pools.test_index)}
    grey = pools.test_images[[row_of_id[int(identifier)] for identifier in split.core_source]][:, None]
    swapped_x, swapped = swap(split, "colored_mnist")
    assert torch.allclose(swapped_x, grey * COLORS[swapped][:, :, None, None], atol=1e-6)
    assert torch.equal(swapped_x.amax(dim=1), split.x.amax(dim=1))


def test_swap_colored_hand_split():
    split = hand_split("colored_mnist")
    swapped_x, swapped = swap(split, "colored_mnist")
    grey = torch.stack([0.025 * (torch.arange(10).float() + 1), torch.ones(10)], dim=1).view(-1, 1, 1, 2)
    assert torch.allclose(swapped_x, grey * COLORS[swapped][:, :, None, None])


@pytest.mark.parametrize("core_side", ["left", "right"])
def test_swap_double_keeps_core_half(core_side):
    split = digits_test_split("double_mnist", core_side)
    swapped_x, _ = swap(split, "double_mnist", core_side)
    core = slice(None, 8) if core_side == "left" else slice(8, None)
    assert torch.equal(swapped_x[..., core], split.x[..., core])


@pytest.mark.parametrize("core_side", ["left", "right"])
def test_swap_double_donor_has_new_class(core_side):
    split = digits_test_split("double_mnist", core_side)
    swapped_x, swapped = swap(split, "double_mnist", core_side)
    other = slice(8, None) if core_side == "left" else slice(None, 8)
    attributes_of_half: dict[bytes, set[int]] = {}
    for half, attribute_class in zip(split.x[..., other], split.b.tolist(), strict=True):
        attributes_of_half.setdefault(half.numpy().tobytes(), set()).add(attribute_class)
    for half, new_class in zip(swapped_x[..., other], swapped.tolist(), strict=True):
        assert new_class in attributes_of_half.get(half.numpy().tobytes(), set())


def test_swap_double_hand_split():
    # Sample c is the only one with b = c and its right half is filled with c, so a sample swapped to
    # class c gets a right half of c while its left half keeps 100 + its index.
    split = hand_split("double_mnist")
    swapped_x, swapped = swap(split, "double_mnist")
    assert torch.equal(swapped_x[..., 2:], swapped.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2))
    assert torch.equal(swapped_x[..., :2], split.x[..., :2])


@pytest.mark.parametrize("dataset", ["double_mnist", "colored_mnist"])
def test_swap_leaves_split_unchanged(dataset):
    split = digits_test_split(dataset)
    before = split.x.clone()
    swap(split, dataset)
    assert torch.equal(split.x, before)


@pytest.mark.parametrize("dataset", ["double_mnist", "colored_mnist"])
def test_swap_same_seed_identical(dataset):
    split = digits_test_split(dataset)
    first_x, first_classes = swap(split, dataset, seed=5)
    second_x, second_classes = swap(split, dataset, seed=5)
    assert torch.equal(first_x, second_x)
    assert torch.equal(first_classes, second_classes)
    _, other_classes = swap(split, dataset, seed=6)
    assert not torch.equal(first_classes, other_classes)


def test_swap_double_missing_donor_class():
    # Both samples have b in {0, 1}, but the new class is drawn from 2..9, which no sample can donate.
    split = Split(
        x=torch.zeros(2, 1, 2, 4),
        y=torch.tensor([0, 1]),
        b=torch.tensor([0, 1]),
        core_source=torch.tensor([0, 1]),
        spurious_source=torch.tensor([2, 3]),
    )
    with pytest.raises(ValueError, match="no sample with attribute"):
        swap(split, "double_mnist")


def test_swap_rejects_dataset():
    with pytest.raises(ValueError, match="waterbirds"):
        swap(hand_split("double_mnist"), "waterbirds")


# ---------------------------------------------------------------------------------------------------
# counterfactual_following
# ---------------------------------------------------------------------------------------------------


def test_counterfactual_following_hand_logits():
    # sample   y  swapped b  prediction  follows
    # 0        0  3          0           core
    # 1        0  2          2           spurious
    # 2        1  3          1           core
    # 3        1  2          2           spurious
    # 4        1  3          1           core
    # 5        2  4          0           neither
    logits = F.one_hot(torch.tensor([0, 2, 1, 2, 1, 0]), 5).float() * 3.0 - 1.0
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    swapped_b = torch.tensor([3, 2, 3, 2, 3, 4])
    result = counterfactual_following(logits, y, swapped_b)
    assert result["follows_core"] == pytest.approx(3 / 6)
    assert result["follows_spurious"] == pytest.approx(2 / 6)


@pytest.mark.parametrize("bad_value", [math.nan, math.inf])
def test_counterfactual_following_nonfinite_nan(bad_value):
    logits = torch.eye(3)
    logits[1, 2] = bad_value
    result = counterfactual_following(logits, torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0]))
    assert math.isnan(result["follows_core"])
    assert math.isnan(result["follows_spurious"])


def test_counterfactual_following_empty_nan():
    empty = torch.zeros(0, dtype=torch.long)
    result = counterfactual_following(torch.zeros(0, 10), empty, empty)
    assert math.isnan(result["follows_core"])
    assert math.isnan(result["follows_spurious"])


@pytest.mark.parametrize("gamma", [0.25, 0.5, 1.0, 2.0])
def test_focal_loss_gradient_finite(gamma):
    logits = torch.tensor([[30.0, 0.0], [0.3, 0.0]], requires_grad=True)
    focal_loss(logits, torch.tensor([0, 0]), gamma).backward()
    assert bool(torch.isfinite(logits.grad).all())


def test_core_attribution_share_rejects_unknown_core_side():
    with pytest.raises(ValueError, match="'Left'"):
        core_attribution_share(torch.ones(1, 1, 2, 4), "double_mnist", "Left")


def test_swap_spurious_rejects_unknown_core_side():
    split = Split(
        x=torch.zeros(2, 1, 2, 4),
        y=torch.tensor([0, 1]),
        b=torch.tensor([0, 1]),
        core_source=torch.tensor([0, 1]),
        spurious_source=torch.tensor([2, 3]),
    )
    with pytest.raises(ValueError, match="'middle'"):
        swap_spurious(split, "double_mnist", "middle", torch.Generator().manual_seed(0))
