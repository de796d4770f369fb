"""Tests of layer-wise magnitude pruning and of ``pruning_curve``'s ``method``, against hand-computed values."""

import pytest
import torch
from torch import nn

from lrstudy.metrics import prunable_weights, prune_global, prune_layerwise, pruning_curve, weight_sparsity
from lrstudy.models import MLP


def two_scale_network() -> nn.Sequential:
    """Return Linear(2, 2) then Linear(2, 2), without biases: large first-layer weights, small second-layer ones.

    Every second-layer entry is smaller than any first-layer entry, so global pruning at sparsity 0.5
    removes the four entries of the second layer. Layer-wise pruning removes two entries of each layer.
    """
    network = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        network[0].weight.copy_(torch.tensor([[4.0, 1.0], [2.0, 3.0]]))
        network[1].weight.copy_(torch.tensor([[0.2, 0.05], [0.1, 0.3]]))
    return network


def biased_network() -> nn.Sequential:
    """Return Linear(2, 2) then Linear(2, 1) with biases and hand-set weights of distinct magnitudes."""
    network = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with torch.no_grad():
        network[0].weight.copy_(torch.tensor([[0.1, -0.4], [0.3, -0.2]]))
        network[0].bias.copy_(torch.tensor([0.01, -0.02]))
        network[1].weight.copy_(torch.tensor([[-0.05, 0.5]]))
        network[1].bias.copy_(torch.tensor([0.03]))
    return network


def seeded_mlp() -> nn.Module:
    """Return an MLP on 64 inputs: weights of 32x64, 32x32 and 10x32 entries, with biases."""
    torch.manual_seed(0)
    return MLP(input_dim=64, num_classes=10, width=32, depth=2, bias=True)


def test_prune_layerwise_hand_weights():
    pruned = prune_layerwise(two_scale_network(), 0.5)
    assert torch.equal(pruned[0].weight, torch.tensor([[4.0, 0.0], [0.0, 3.0]]))
    assert torch.equal(pruned[1].weight, torch.tensor([[0.2, 0.0], [0.0, 0.3]]))


def test_prune_global_hand_weights_differ():
    pruned = prune_global(two_scale_network(), 0.5)
    assert torch.equal(pruned[0].weight, torch.tensor([[4.0, 1.0], [2.0, 3.0]]))
    assert torch.equal(pruned[1].weight, torch.zeros(2, 2))


def test_prune_layerwise_rounds_each_layer():
    # Layer 1 has 4 entries: round(0.3 * 4) = round(1.2) = 1. Layer 2 has 2: round(0.3 * 2) = round(0.6) = 1.
    pruned = prune_layerwise(biased_network(), 0.3)
    assert torch.equal(pruned[0].weight, torch.tensor([[0.0, -0.4], [0.3, -0.2]]))
    assert torch.equal(pruned[1].weight, torch.tensor([[0.0, 0.5]]))


@pytest.mark.parametrize(
    ("sparsity", "zeros"),
    [
        (0.0, [0, 0, 0]),
        (0.5, [1024, 512, 160]),
        (0.7, [1434, 717, 224]),
        (0.99, [2028, 1014, 317]),
        (1.0, [2048, 1024, 320]),
    ],
)
def test_prune_layerwise_mlp_zero_counts(sparsity, zeros):
    # Per layer round(sparsity * n) for n = 2048, 1024, 320: 0.7 gives 1433.6, 716.8 and 224.0;
    # 0.99 gives 2027.52, 1013.76 and 316.8.
    pruned = prune_layerwise(seeded_mlp(), sparsity)
    counts = [int((w == 0).sum()) for w in prunable_weights(pruned)]
    assert counts == zeros


def test_prune_layerwise_removes_smallest_of_each_layer():
    model = seeded_mlp()
    pruned = prune_layerwise(model, 0.5)
    for before, after in zip(prunable_weights(model), prunable_weights(pruned), strict=True):
        kept = before.detach().abs()[after != 0]
        removed = before.detach().abs()[after == 0]
        assert removed.max() <= kept.min()


def test_prune_layerwise_ties_by_position():
    network = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        network[0].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
    pruned = prune_layerwise(network, 0.5)
    assert torch.equal(pruned[0].weight, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


def test_prune_layerwise_keeps_biases():
    model = seeded_mlp()
    pruned = prune_layerwise(model, 1.0)
    for name, parameter in model.named_parameters():
        if parameter.dim() == 1:
            assert torch.equal(pruned.get_parameter(name), parameter), name


def test_prune_layerwise_leaves_original():
    model = seeded_mlp()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    pruned = prune_layerwise(model, 0.9)
    assert pruned is not model
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("sparsity", [-0.1, 1.5])
def test_prune_layerwise_rejects_sparsity(sparsity):
    with pytest.raises(ValueError, match="invalid sparsity"):
        prune_layerwise(biased_network(), sparsity)


# Inputs e1 and e2 with labels 0 and 1. Unpruned logits are [0.9, 1.0] and [0.35, 1.0]: accuracy 0.5.
# Global pruning at 0.5 zeroes the second layer, so both logits are [0, 0] and argmax picks class 0:
# accuracy 0.5. Layer-wise pruning at 0.5 leaves diag(4, 3) then diag(0.2, 0.3), so the logits are
# [0.8, 0] and [0, 0.9]: accuracy 1.0.
CURVE_X = torch.eye(2)
CURVE_Y = torch.tensor([0, 1])


@pytest.mark.parametrize(("method", "accuracies"), [("global", [0.5, 0.5]), ("layerwise", [0.5, 1.0])])
def test_pruning_curve_method_accuracies(method, accuracies):
    curve = pruning_curve(two_scale_network(), CURVE_X, CURVE_Y, sparsities=(0.0, 0.5), method=method)
    assert [point["accuracy"] for point in curve] == accuracies
    assert [point["measured_sparsity"] for point in curve] == [0.0, 0.5]


def test_pruning_curve_default_is_global():
    model = seeded_mlp()
    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(50) % 10
    assert pruning_curve(model, x, y) == pruning_curve(model, x, y, method="global")


def test_pruning_curve_layerwise_measured_sparsity():
    # 0.7 removes 1434 + 717 + 224 = 2375 of 3392 weights.
    model = seeded_mlp()
    x = torch.randn(20, 64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(20) % 10
    curve = pruning_curve(model, x, y, sparsities=(0.7,), method="layerwise")
    assert curve[0]["measured_sparsity"] == 2375 / 3392
    assert curve[0]["measured_sparsity"] == weight_sparsity(prune_layerwise(model, 0.7))


def test_pruning_curve_rejects_method():
    with pytest.raises(ValueError, match="invalid pruning method 'random'"):
        pruning_curve(two_scale_network(), CURVE_X, CURVE_Y, method="random")
