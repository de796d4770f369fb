"""Tests of lrstudy.metrics on hand-made tensors and small networks, against hand-computed values."""

import math

import pytest
import torch
from torch import nn

from lrstudy.config import ModelConfig
from lrstudy.metrics import (
    PRUNING_SPARSITIES,
    accuracy_metrics,
    activation_sparsity,
    class_separation,
    compressibility_score,
    conflicting_loss_share,
    hidden_activations,
    predict_logits,
    prunable_weights,
    prune_global,
    pruning_curve,
    weight_sparsity,
)
from lrstudy.models import MLP, build_model

ACCURACY_NAMES = ["accuracy", "aligned_accuracy", "conflicting_accuracy", "worst_group_accuracy"]


def one_hot_logits(predictions: list[int], classes: int = 3) -> torch.Tensor:
    """Return logits whose argmax is ``predictions``."""
    return nn.functional.one_hot(torch.tensor(predictions), classes).float()


def small_mlp(seed: int = 0, bias: bool = True) -> nn.Module:
    """Return an MLP on 8x8 inputs with 32 hidden units per layer, seeded."""
    torch.manual_seed(seed)
    return MLP(input_dim=64, num_classes=10, width=32, depth=2, bias=bias)


def two_layer_network() -> nn.Sequential:
    """Return Linear(2, 2) then Linear(2, 1), both with bias, and hand-set weights of distinct magnitudes."""
    network = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with torch.no_grad():
        network[0].weight.copy_(torch.tensor([[0.1, -0.4], [0.3, -0.2]]))
        network[0].bias.copy_(torch.tensor([0.01, -0.02]))
        network[1].weight.copy_(torch.tensor([[-0.05, 0.5]]))
        network[1].bias.copy_(torch.tensor([0.03]))
    return network


# accuracy_metrics: six samples in five (y, b) groups.
# y           0  0  1  1  2  2
# b           0  1  1  0  2  2
# aligned     T  F  T  F  T  T
# prediction  0  0  1  1  2  0
# correct     T  T  T  T  T  F
# Groups (0,0), (0,1), (1,1) and (1,0) are all correct, and group (2,2) has 1 of 2 correct.
GROUP_Y = torch.tensor([0, 0, 1, 1, 2, 2])
GROUP_B = torch.tensor([0, 1, 1, 0, 2, 2])
GROUP_LOGITS = one_hot_logits([0, 0, 1, 1, 2, 0])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("accuracy", 5 / 6),
        ("aligned_accuracy", 3 / 4),
        ("conflicting_accuracy", 2 / 2),
        ("worst_group_accuracy", 1 / 2),
        ("groups", 5),
    ],
)
def test_accuracy_metrics_hand_case(name, expected):
    metrics = accuracy_metrics(GROUP_LOGITS, GROUP_Y, GROUP_B)
    assert metrics[name] == pytest.approx(expected)


def test_accuracy_metrics_conflicting_wrong():
    # Every aligned sample is right and every conflicting sample is wrong (predicted as b).
    y = torch.tensor([0, 1, 0, 1])
    b = torch.tensor([0, 1, 1, 0])
    metrics = accuracy_metrics(one_hot_logits([0, 1, 1, 0]), y, b)
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["aligned_accuracy"] == pytest.approx(1.0)
    assert metrics["conflicting_accuracy"] == pytest.approx(0.0)
    assert metrics["worst_group_accuracy"] == pytest.approx(0.0)
    assert metrics["groups"] == 4


def test_accuracy_metrics_no_conflicting_nan():
    y = torch.tensor([0, 1, 2])
    metrics = accuracy_metrics(one_hot_logits([0, 1, 0]), y, y.clone())
    assert math.isnan(metrics["conflicting_accuracy"])
    assert metrics["aligned_accuracy"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["worst_group_accuracy"] == pytest.approx(0.0)
    assert metrics["groups"] == 3


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ACCURACY_NAMES)
def test_accuracy_metrics_nonfinite_nan(bad_value, name):
    logits = GROUP_LOGITS.clone()
    logits[3, 1] = bad_value
    metrics = accuracy_metrics(logits, GROUP_Y, GROUP_B)
    assert math.isnan(metrics[name])


@pytest.mark.parametrize(
    ("losses", "aligned", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], [True, True, False, False], 7 / 10),
        ([1.0, 2.0, 3.0, 4.0], [False, True, True, True], 1 / 10),
        ([1.0, 2.0, 3.0, 4.0], [True, True, True, True], 0.0),
        ([1.0, 2.0, 3.0, 4.0], [False, False, False, False], 1.0),
        ([0.0, 0.0, 5.0], [True, True, False], 1.0),
    ],
)
def test_conflicting_loss_share_hand_case(losses, aligned, expected):
    share = conflicting_loss_share(torch.tensor(losses), torch.tensor(aligned))
    assert share == pytest.approx(expected)


@pytest.mark.parametrize(
    "losses",
    [[0.0, 0.0, 0.0], [1.0, math.nan, 3.0], [1.0, math.inf, 3.0]],
)
def test_conflicting_loss_share_nan(losses):
    share = conflicting_loss_share(torch.tensor(losses), torch.tensor([True, False, False]))
    assert math.isnan(share)


def test_prune_global_hand_weights():
    # The six weights have magnitudes 0.1, 0.4, 0.3, 0.2, 0.05 and 0.5. Global pruning removes
    # the three smallest (0.05, 0.1, 0.2), although they sit in both layers.
    pruned = prune_global(two_layer_network(), 0.5)
    assert torch.equal(pruned[0].weight, torch.tensor([[0.0, -0.4], [0.3, 0.0]]))
    assert torch.equal(pruned[1].weight, torch.tensor([[0.0, 0.5]]))


def test_prune_global_keeps_biases():
    pruned = prune_global(two_layer_network(), 0.99)
    assert torch.equal(pruned[0].bias, torch.tensor([0.01, -0.02]))
    assert torch.equal(pruned[1].bias, torch.tensor([0.03]))


@pytest.mark.parametrize(("sparsity", "zeros"), [(0.0, 0), (1 / 6, 1), (0.5, 3), (0.99, 6), (1.0, 6)])
def test_prune_global_zero_count(sparsity, zeros):
    pruned = prune_global(two_layer_network(), sparsity)
    assert sum(int((w == 0).sum()) for w in prunable_weights(pruned)) == zeros


def test_prune_global_half_of_mlp():
    model = small_mlp()
    total = sum(w.numel() for w in prunable_weights(model))
    pruned = prune_global(model, 0.5)
    zeros = sum(int((w == 0).sum()) for w in prunable_weights(pruned))
    assert total % 2 == 0
    assert zeros == total // 2
    assert weight_sparsity(pruned) == 0.5


def test_prune_global_removes_smallest():
    model = small_mlp()
    pruned = prune_global(model, 0.5)
    original = torch.cat([w.detach().abs().flatten() for w in prunable_weights(model)])
    survivors = torch.cat([w.detach().flatten() != 0 for w in prunable_weights(pruned)])
    assert original[~survivors].max() <= original[survivors].min()


def test_prune_global_keeps_large_values():
    model = small_mlp()
    pruned = prune_global(model, 0.5)
    for before, after in zip(prunable_weights(model), prunable_weights(pruned), strict=True):
        survivors = after != 0
        assert torch.equal(after[survivors], before.detach()[survivors])


def test_prune_global_leaves_original():
    model = small_mlp()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    prune_global(model, 0.5)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name in before:
        assert torch.equal(after[name], before[name]), name


def test_prune_global_mlp_biases_untouched():
    model = small_mlp(bias=True)
    pruned = prune_global(model, 0.9)
    biases = [name for name, p in model.named_parameters() if p.dim() == 1]
    assert len(biases) == 3
    for name in biases:
        assert torch.equal(pruned.get_parameter(name), model.get_parameter(name)), name


@pytest.mark.parametrize("sparsity", [-0.1, 1.1, math.nan])
def test_prune_global_rejects_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        prune_global(two_layer_network(), sparsity)


def test_weight_sparsity_hand_case():
    network = two_layer_network()
    with torch.no_grad():
        network[0].weight[0, 0] = 0.0
        network[0].bias.zero_()
    # One zero among six weights; zero biases do not count.
    assert weight_sparsity(network) == pytest.approx(1 / 6)


def test_pruning_curve_measured_sparsity():
    model = small_mlp(bias=False)
    total = sum(w.numel() for w in prunable_weights(model))
    x = torch.rand(20, 1, 8, 8)
    y = torch.randint(0, 10, (20,))
    curve = pruning_curve(model, x, y)
    assert [point["sparsity"] for point in curve] == list(PRUNING_SPARSITIES)
    for point in curve:
        expected = round(point["sparsity"] * total) / total
        assert point["measured_sparsity"] == pytest.approx(expected), point
        assert point["measured_sparsity"] == pytest.approx(point["sparsity"], abs=0.5 / total), point


def test_pruning_curve_unpruned_accuracy():
    model = small_mlp(bias=False)
    x = torch.rand(20, 1, 8, 8)
    y = predict_logits(model, x).argmax(1)
    curve = pruning_curve(model, x, y, sparsities=(0.0, 1.0))
    assert curve[0]["accuracy"] == 1.0
    # With every weight zero all logits tie, and argmax picks class 0.
    assert curve[1]["accuracy"] == pytest.approx(float((y == 0).float().mean()))


@pytest.mark.parametrize(
    ("curve", "expected"),
    [
        ([(0.0, 0.8), (0.5, 0.8), (0.9, 0.4)], (1.0 + 0.5) / 2),
        ([(0.0, 0.5), (0.5, 0.5), (0.7, 0.25), (0.9, 0.0)], (1.0 + 0.5 + 0.0) / 3),
        ([(0.5, 0.6), (0.0, 0.4)], 1.5),
    ],
)
def test_compressibility_score_hand_curve(curve, expected):
    points = [{"sparsity": s, "measured_sparsity": s, "accuracy": a} for s, a in curve]
    assert compressibility_score(points) == pytest.approx(expected)


@pytest.mark.parametrize(
    "curve",
    [
        [(0.0, 0.0), (0.5, 0.0)],
        [(0.0, math.nan), (0.5, 0.3)],
        [(0.0, 0.8)],
        [(0.5, 0.8), (0.9, 0.4)],
        [],
    ],
)
def test_compressibility_score_nan(curve):
    points = [{"sparsity": s, "measured_sparsity": s, "accuracy": a} for s, a in curve]
    assert math.isnan(compressibility_score(points))


def test_activation_sparsity_dead_network():
    network = MLP(input_dim=4, num_classes=3, width=5, depth=2, bias=False)
    with torch.no_grad():
        network[1].weight.fill_(-1.0)
    x = torch.rand(6, 1, 2, 2) + 0.1
    sparsity = activation_sparsity(hidden_activations(network, x))
    assert sparsity["overall"] == 1.0
    assert sparsity["per_layer"] == [1.0, 1.0]


def test_activation_sparsity_hand_tensors():
    dense = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])  # 3 zeros of 2 samples x 3 units
    conv = torch.ones(2, 2, 2, 2)  # 2 samples x 2 channels x 2 x 2 positions = 16 entries
    conv[0, 0] = 0.0  # 4 zeros
    sparsity = activation_sparsity([dense, conv])
    assert sparsity["per_layer"] == [pytest.approx(3 / 6), pytest.approx(4 / 16)]
    assert sparsity["overall"] == pytest.approx((3 + 4) / (6 + 16))


def test_activation_sparsity_empty_nan():
    sparsity = activation_sparsity([torch.zeros(0, 3)])
    assert math.isnan(sparsity["overall"])
    assert math.isnan(sparsity["per_layer"][0])


def test_hidden_activations_mlp_shapes():
    model = build_model(ModelConfig(model="mlp", width=32, depth=3), (1, 8, 8), 10)
    activations = hidden_activations(model, torch.rand(5, 1, 8, 8))
    assert [tuple(a.shape) for a in activations] == [(5, 32), (5, 32), (5, 32)]


def test_hidden_activations_mlp_values():
    model = small_mlp(bias=False)
    x = torch.rand(5, 1, 8, 8)
    activations = hidden_activations(model, x)
    first = torch.relu(x.flatten(1) @ model[1].weight.T)
    second = torch.relu(first @ model[3].weight.T)
    assert len(activations) == 2
    assert torch.allclose(activations[0], first)
    assert torch.allclose(activations[1], second)


def test_hidden_activations_cnn_shapes():
    model = build_model(ModelConfig(model="cnn", width=32), (1, 8, 16), 10)
    activations = hidden_activations(model, torch.rand(5, 1, 8, 16))
    assert [tuple(a.shape) for a in activations] == [(5, 32, 8, 16), (5, 64, 4, 8), (5, 32)]


def test_hidden_activations_batches_joined():
    model = small_mlp()
    x = torch.rand(7, 1, 8, 8)
    whole = hidden_activations(model, x)
    batched = hidden_activations(model, x, batch_size=3)
    assert [tuple(a.shape) for a in batched] == [(7, 32), (7, 32)]
    for expected, actual in zip(whole, batched, strict=True):
        assert torch.allclose(actual, expected)


def test_hidden_activations_removes_hooks():
    model = small_mlp()
    hidden_activations(model, torch.rand(2, 1, 8, 8))
    for module in model.modules():
        assert not module._forward_hooks


def test_class_separation_one_hot_classes():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    features = nn.functional.one_hot(labels, 3).float()
    assert class_separation(features, labels) == pytest.approx(1.0)


def test_class_separation_identical_codes():
    labels = torch.tensor([0, 0, 1, 1])
    features = torch.ones(4, 3)
    assert class_separation(features, labels) == 0.0


def test_class_separation_hand_case():
    # Class 0 has a = (1, 0) and b = (0.6, 0.8), class 1 has c = (0, 1).
    # Within: d(a, b) = 1 - 0.6 = 0.4. Between: d(a, c) = 1, d(b, c) = 1 - 0.8 = 0.2, mean 0.6.
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    assert class_separation(features, labels) == pytest.approx(1 - 0.4 / 0.6)


def test_class_separation_ignores_scale():
    features = torch.tensor([[2.0, 0.0], [3.0, 4.0], [0.0, 0.5]])
    labels = torch.tensor([0, 0, 1])
    assert class_separation(features, labels) == pytest.approx(1 - 0.4 / 0.6)


def test_class_separation_flattens_features():
    labels = torch.tensor([0, 0, 1, 1])
    features = nn.functional.one_hot(labels, 4).float().view(4, 2, 2)
    assert class_separation(features, labels) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "labels",
    [[0, 0, 0], [0, 1, 2]],
    ids=["single-class", "singleton-classes"],
)
def test_class_separation_degenerate_nan(labels):
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    assert math.isnan(class_separation(features, torch.tensor(labels)))


@pytest.mark.parametrize("training", [True, False])
def test_predict_logits_restores_flag(training):
    model = small_mlp()
    model.train(training)
    predict_logits(model, torch.rand(3, 1, 8, 8))
    assert model.training is training
    assert all(module.training is training for module in model.modules())
