"""Image figures (matplotlib): sample grids of a split, bias-aligned beside bias-conflicting."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # figures render headless in notebooks, papermill and the book build
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .data import Split  # noqa: E402


def sample_grid(split: Split, per_row: int = 8, title: str = "") -> plt.Figure:
    """Draw the first ``per_row`` bias-aligned samples in one row and the first bias-conflicting in the next.

    Each panel's title is ``y=<label> b=<spurious attribute>``. Grey images use the ``gray``
    colormap on [0, 1]; three-channel images are shown as RGB.
    """
    rows = [
        ("bias-aligned", torch.nonzero(split.aligned).flatten()[:per_row]),
        ("bias-conflicting", torch.nonzero(~split.aligned).flatten()[:per_row]),
    ]
    height, width = split.x.shape[-2:]
    figure, axes = plt.subplots(2, per_row, figsize=(per_row * 1.2 * width / height, 2 * 1.5), squeeze=False)
    for row, (name, indices) in enumerate(rows):
        for column in range(per_row):
            axis = axes[row, column]
            axis.set_axis_off()
            if column >= len(indices):
                continue
            index = int(indices[column])
            image = split.x[index].detach().cpu()
            if image.shape[0] == 1:
                axis.imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                axis.imshow(image.permute(1, 2, 0).clamp(0, 1))
            axis.set_title(f"y={int(split.y[index])} b={int(split.b[index])}", fontsize=7)
        axes[row, 0].text(-0.1, 0.5, name, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure
