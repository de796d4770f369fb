"""Networks of the study: a fully connected ReLU network and a small CNN.

Every hidden nonlinearity is its own ``nn.ReLU`` module, so metrics can read post-ReLU activations
with forward hooks (see ``lrstudy.metrics.hidden_activations``), and the last one is the
penultimate representation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


def _dropout(probability: float) -> list[nn.Module]:
    """Return a dropout module for ``probability`` > 0 and nothing for 0, so dropout 0 leaves the network as it was."""
    return [nn.Dropout(probability)] if probability > 0 else []


class MLP(nn.Sequential):
    """Fully connected ReLU network: flatten, ``depth`` hidden layers of ``width`` units, linear head.

    With ``dropout`` > 0 each hidden ReLU is followed by ``nn.Dropout(dropout)``.
    """

    def __init__(self, input_dim: int, num_classes: int, width: int, depth: int, bias: bool, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = input_dim
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width, bias=bias), nn.ReLU(), *_dropout(dropout)]
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes, bias=bias))
        super().__init__(*layers)


class SmallCNN(nn.Sequential):
    """Two 3x3 conv layers (32 and 64 channels, each followed by ReLU and 2x2 max pooling), one hidden
    dense layer of ``width`` units and a linear head. With ``dropout`` > 0 the hidden dense layer's ReLU
    is followed by ``nn.Dropout(dropout)``."""

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, width: int, bias: bool, dropout: float = 0.0
    ):
        channels, height, width_px = input_shape
        pooled = (height // 4) * (width_px // 4)
        if pooled == 0:
            raise ValueError(
                f"input of shape {input_shape} is too small for the CNN: height and width must be at least 4"
            )
        super().__init__(
            nn.Conv2d(channels, 32, 3, padding=1, bias=bias),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=bias),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * pooled, width, bias=bias),
            nn.ReLU(),
            *_dropout(dropout),
            nn.Linear(width, num_classes, bias=bias),
        )


def build_model(
    config: ModelConfig, input_shape: tuple[int, int, int], num_classes: int, device: str | torch.device = "cpu"
) -> nn.Module:
    """Build the network named by ``config.model`` with PyTorch's default initialisation, on ``device``.

    The caller seeds the global torch generator beforehand: initialisation draws from it.
    """
    if config.model == "mlp":
        model: nn.Module = MLP(
            math.prod(input_shape), num_classes, config.width, config.depth, config.bias, config.dropout
        )
    elif config.model == "cnn":
        model = SmallCNN(input_shape, num_classes, config.width, config.bias, config.dropout)
    else:
        raise ValueError(f"unknown model {config.model!r}: expected 'mlp' or 'cnn'")
    return model.to(device)
