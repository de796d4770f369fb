"""Helpers of the workshop pages in ``book/workshop``: quick runs, and one function per exercise's solution.

Every run here uses the fixed settings of the ``quick`` sweep preset (``PRESETS["quick"]["fixed"]``:
8x8 scikit-learn digits and a small MLP with a short step budget), so a run trains in seconds on a
laptop CPU. Each ``solve_*`` function is the code of one exercise's solution: the exercise page
shows its source and prints or plots what it returns, and the teachers' page times it.

``python -m lrstudy.workshop FOLDER`` writes the exercise pages as notebooks without their
solutions, to hand out to participants.
"""

from __future__ import annotations

import argparse
import inspect
import math
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .config import RunConfig
from .experiment import RunOutcome, run_experiment
from .metrics import (
    activation_sparsity,
    hidden_activations,
    prunable_weights,
    prune_global,
    prune_layerwise,
    pruning_curve,
)
from .models import build_model
from .results import REPOSITORY
from .sweep import PRESETS

WORKSHOP_PAGES = REPOSITORY / "book" / "workshop"

# Sparsity at which ``solve_pruning`` reports how many of each layer's weights each method removes.
LAYER_REPORT_SPARSITY = 0.9


def quick_config(**changes: Any) -> RunConfig:
    """Build the config of a quick run: the quick preset's fixed parameters, then ``changes``.

    ``changes`` take flat parameter names (``lr``, ``rho``, ``dataset``, ``seed``...). Parameters that
    neither sets keep ``RunConfig``'s defaults (Double MNIST, rho 0.99, LR 0.1, seed 0). Raises
    ``ValueError`` for an unknown name or an invalid value.
    """
    return RunConfig.from_params({**PRESETS["quick"]["fixed"], **changes})


def quick_run(runs_dir: str | Path, threads: int = 1, **changes: Any) -> RunOutcome:
    """Train and measure one quick run of ``quick_config(**changes)``, writing its record under ``runs_dir``.

    Sets torch's thread count for the whole process to ``threads`` (0 keeps torch's default). One
    thread is the default because the quick network is too small to gain from more: on a 2-core AMD
    EPYC machine shared with other jobs, the 1,000 steps of a quick run at LR 0.03 took 2.3 s on one
    thread and 16 s on two.
    """
    return run_experiment(quick_config(**changes), runs_dir, threads=threads)


def show_source(function) -> Any:
    """Return ``function``'s source as a Markdown code block, which notebooks and the book highlight."""
    from IPython.display import Markdown

    return Markdown(f"```python\n{inspect.getsource(function)}```")


def solve_rho(
    runs_dir: str | Path, rhos=(0.9, 0.99, 0.999), lrs=(0.03, 0.3), dataset: str = "double_mnist", seed: int = 0
) -> pd.DataFrame:
    """Solve exercise 1: train one quick run per (LR, rho) and return its test accuracies, one row per run.

    ``conflicting_train_samples`` counts the training samples whose spurious attribute disagrees
    with the label: the only samples that tell the network the spurious feature is not the label.
    """
    rows = []
    for lr in lrs:
        for rho in rhos:
            outcome = quick_run(runs_dir, dataset=dataset, rho=rho, lr=lr, seed=seed)
            summary = outcome.summary
            rows.append(
                {
                    "lr": lr,
                    "rho": rho,
                    "conflicting_train_samples": int((~outcome.dataset.train.aligned).sum()),
                    "conflicting_test_samples": int((~outcome.dataset.test.aligned).sum()),
                    "status": summary["status"],
                    "accuracy": summary["accuracy"],
                    "aligned_accuracy": summary["aligned_accuracy"],
                    "conflicting_accuracy": summary["conflicting_accuracy"],
                }
            )
    return pd.DataFrame(rows)


def solve_stable_lr(
    runs_dir: str | Path, lrs=(0.1, 0.3, 1.0, 3.0, 10.0), refinements: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Solve exercise 2: find the largest learning rate at which a quick run does not diverge.

    Runs every LR of the grid, takes the largest LR below the smallest diverged one, then halves the
    gap between the two ``refinements`` times (on a log scale). The search assumes that every LR
    above a diverged one also diverges; the table shows the runs, so a violation is visible.

    Returns ``runs`` (one row per run, sorted by LR), ``largest_stable_lr`` (NaN when the smallest LR
    of the grid diverged) and ``smallest_diverged_lr`` (NaN when no LR diverged).
    """
    rows = []

    def is_stable(lr: float, search: str) -> bool:
        summary = quick_run(runs_dir, lr=lr, seed=seed).summary
        rows.append(
            {
                "lr": lr,
                "search": search,
                "status": summary["status"],
                "divergence": summary["divergence"],
                "steps": summary["steps"],
                "train_accuracy": summary["train_accuracy"],
                "accuracy": summary["accuracy"],
            }
        )
        return summary["status"] != "diverged"

    stable_lr, diverged_lr = math.nan, math.nan
    for lr in sorted(lrs):
        if is_stable(lr, "grid"):
            if math.isnan(diverged_lr):
                stable_lr = lr
        elif math.isnan(diverged_lr):
            diverged_lr = lr

    if not math.isnan(stable_lr) and not math.isnan(diverged_lr):
        for _ in range(refinements):
            middle = float(f"{math.sqrt(stable_lr * diverged_lr):.3g}")
            if is_stable(middle, "refinement"):
                stable_lr = middle
            else:
                diverged_lr = middle

    runs = pd.DataFrame(rows).sort_values("lr", kind="stable").reset_index(drop=True)
    return {"runs": runs, "largest_stable_lr": stable_lr, "smallest_diverged_lr": diverged_lr}


def solve_pruning(runs_dir: str | Path, lrs=(0.03, 0.3), seed: int = 0) -> dict[str, pd.DataFrame]:
    """Solve exercise 3: measure global and layer-wise magnitude pruning curves of quick runs at each LR.

    Returns ``curves`` (one row per LR, method and sparsity, with the test accuracy of the pruned
    copy) and ``layers`` (for each LR and method, the share of each layer's weights removed at
    sparsity ``LAYER_REPORT_SPARSITY``). The curves of a diverged run carry no information.
    """
    curves, layers = [], []
    for lr in lrs:
        outcome = quick_run(runs_dir, lr=lr, seed=seed)
        model, test = outcome.result.model, outcome.dataset.test
        for method, prune in (("global", prune_global), ("layerwise", prune_layerwise)):
            for point in pruning_curve(model, test.x, test.y, method=method):
                curves.append({"lr": lr, "status": outcome.summary["status"], "method": method, **point})

            pruned = prune(model, LAYER_REPORT_SPARSITY)
            for index, weight in enumerate(prunable_weights(pruned), start=1):
                layers.append(
                    {
                        "lr": lr,
                        "method": method,
                        "layer": index,
                        "weights": weight.numel(),
                        "pruned_share": int((weight == 0).sum()) / weight.numel(),
                    }
                )
    return {"curves": pd.DataFrame(curves), "layers": pd.DataFrame(layers)}


def solve_sparsity(runs_dir: str | Path, lrs=(0.01, 0.03, 0.1, 0.3, 1.0), seed: int = 0) -> pd.DataFrame:
    """Solve exercise 4: measure the activation sparsity of quick runs at each LR, one row per run.

    ``activation_sparsity`` is the share of post-ReLU activations that are exactly zero on the test
    set after training. ``initial_activation_sparsity`` is the same share for the untrained network.
    It is the same for every LR, because the initialisation depends on the seed only.
    """
    rows = []
    for lr in lrs:
        outcome = quick_run(runs_dir, lr=lr, seed=seed)
        summary = outcome.summary
        rows.append(
            {
                "lr": lr,
                "status": summary["status"],
                "steps": summary["steps"],
                "accuracy": summary["accuracy"],
                "activation_sparsity": summary["activation_sparsity"],
                **{
                    f"layer{index}_sparsity": value
                    for index, value in enumerate(summary["activation_sparsity_per_layer"], start=1)
                },
                "initial_activation_sparsity": initial_activation_sparsity(outcome),
            }
        )
    return pd.DataFrame(rows)


def initial_activation_sparsity(outcome: RunOutcome) -> float:
    """Return the activation sparsity, on the test set, of the network ``outcome`` started from.

    Rebuilds the initial network the way ``lrstudy.training.train`` does: the global torch generator
    seeded with the run's seed, then ``build_model``. This leaves the global generator reseeded.
    """
    config, dataset = outcome.config, outcome.dataset
    torch.manual_seed(config.seed)
    model = build_model(config.model, dataset.input_shape, dataset.num_classes, dataset.test.x.device)
    return activation_sparsity(hidden_activations(model, dataset.test.x))["overall"]


# A gated solution: from its ``{solution-start}`` fence to the closing fence of its ``{solution-end}``.
_SOLUTION = re.compile(r"^```\{solution-start\}.*?^```\{solution-end\}[^\n]*\n```[ \t]*$", re.DOTALL | re.MULTILINE)
# An ``{exercise}`` directive: its title, its ``:option:`` lines, then its text up to the first closing fence.
_EXERCISE = re.compile(
    r"^```\{exercise\}[ \t]*(?P<title>[^\n]*)\n(?:[ \t]*:[^\n]*\n)*(?P<body>.*?)\n```[ \t]*$", re.DOTALL | re.MULTILINE
)
# The code cell that takes a solution's place in a participant's notebook.
WORK_CELL = "```{code-cell} ipython3\n# Your prediction, then your measurement.\n```"


def participant_notebook(page: str | Path):
    """Read an exercise page (a MyST notebook) as an ``nbformat`` notebook without its solution.

    Replaces each gated solution, from its ``{solution-start}`` directive to its ``{solution-end}``
    directive with every cell in between, by one code cell for the participant's work. Turns each
    ``{exercise}`` directive into a bold title followed by its text, which Jupyter renders as
    Markdown. An exercise's text must not contain a code fence, because the first fence closes it.
    Raises ``ValueError`` when a ``{solution-start}`` has no ``{solution-end}``.
    """
    import jupytext

    text = _SOLUTION.sub(WORK_CELL, Path(page).read_text(encoding="utf-8"))
    if "{solution-start}" in text or "{solution-end}" in text:
        raise ValueError(f"invalid exercise page {page}: a {{solution-start}} directive has no {{solution-end}}")
    text = _EXERCISE.sub(_exercise_as_markdown, text)
    return jupytext.reads(text, fmt="md:myst")


def _exercise_as_markdown(match: re.Match) -> str:
    title = match["title"].strip()
    heading = f"**Exercise: {title}**" if title else "**Exercise**"
    return f"{heading}\n\n{match['body'].strip()}"


def write_participant_notebooks(output_dir: str | Path, pages_dir: str | Path = WORKSHOP_PAGES) -> list[Path]:
    """Write each ``exercise_*.md`` page of ``pages_dir`` to ``output_dir`` as an ``.ipynb`` without solutions."""
    import jupytext

    pages = sorted(Path(pages_dir).glob("exercise_*.md"))
    if not pages:
        raise ValueError(f"no exercise_*.md pages found in {pages_dir}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for page in pages:
        path = output_dir / f"{page.stem}.ipynb"
        jupytext.write(participant_notebook(page), path, fmt="ipynb")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Write the participants' notebooks into the folder given on the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m lrstudy.workshop",
        description="Write the workshop's exercise pages as Jupyter notebooks without their solutions.",
    )
    parser.add_argument("output_dir", type=Path, help="folder for the .ipynb files (created if missing)")
    args = parser.parse_args(argv)
    for path in write_participant_notebooks(args.output_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
