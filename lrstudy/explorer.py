"""A live explorer for workshops: train one quick run from widgets and draw what it learned.

Runs use the ``quick`` sweep preset's fixed values (8x8 scikit-learn digits, a small network, a
short step budget). On a 2-core machine that was running other work, a run took 3 to 7 s with the
MLP and 25 to 40 s with the CNN, measurement included. The functions here work without
widgets too: ``train_quick`` trains, ``explorer_figures`` draws, ``save_figures`` writes the files.
``Explorer`` puts them behind ipywidgets controls and keeps a table of every run of the session.
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import torch
from matplotlib.figure import Figure

from .config import DATASETS, MODELS, RunConfig
from .experiment import RunOutcome, run_experiment
from .metrics import predict_logits
from .sweep import PRESETS

logger = logging.getLogger(__name__)

# The quick preset's fixed values plus the explorer's starting values of the parameters it exposes.
QUICK_DEFAULTS: dict[str, Any] = {
    **PRESETS["quick"]["fixed"],
    "dataset": "double_mnist",
    "lr": 0.1,
    "rho": 0.99,
    "seed": 0,
    "model": "mlp",
}

# Ranges of the explorer's sliders.
LR_RANGE = (0.01, 2.0)
RHO_RANGE = (0.5, 1.0)

# History columns of the training curve and their legend labels.
CURVE_SERIES = {
    "train_accuracy": "training accuracy",
    "test_accuracy": "test accuracy (unbiased)",
    "conflicting_loss_share": "conflicting share of training loss",
}

# Summary keys of the accuracies bar chart and their axis labels.
ACCURACY_BARS = {
    "accuracy": "overall",
    "aligned_accuracy": "bias-aligned",
    "conflicting_accuracy": "bias-conflicting",
    "worst_group_accuracy": "worst group",
}

# Columns of the explorer's session table: the run's parameters, then metrics from its summary.
TABLE_PARAMETERS = ("lr", "dataset", "rho", "seed", "model")
TABLE_METRICS = ("status", "accuracy", "conflicting_accuracy", "compressibility", "activation_sparsity")

# Torch threads of a quick run. The networks are so small that a second thread mostly adds
# overhead: on a 2-core machine that was running other work, the default MLP run trained in 3 s on
# one thread and in 42 s on two.
QUICK_THREADS = 1

# Test samples per group (bias-aligned, bias-conflicting) in the attribution figure.
ATTRIBUTION_SAMPLES = 3
FIGURE_DPI = 120


def quick_config(lr: float, dataset: str, rho: float, seed: int, model: str) -> RunConfig:
    """Build the validated config of one quick run; raises ``ValueError`` naming an invalid parameter."""
    params = {**QUICK_DEFAULTS, "lr": lr, "dataset": dataset, "rho": rho, "seed": seed, "model": model}
    return RunConfig.from_params(params)


def train_quick(
    lr: float,
    dataset: str,
    rho: float,
    seed: int,
    model: str,
    runs_dir: str | Path,
    device: str = "cpu",
    threads: int = QUICK_THREADS,
    progress: bool = False,
) -> RunOutcome:
    """Train and measure one run with the quick settings, writing its record under ``runs_dir``.

    ``threads`` > 0 sets torch's intra-op thread count for the whole process, 0 leaves it as it
    is. ``progress`` shows a tqdm progress bar over training steps.
    """
    config = quick_config(lr, dataset, rho, seed, model)
    logger.info("explorer: training %s", config.run_id())
    return run_experiment(config, runs_dir, device=device, threads=threads, progress=progress)


def input_attributions(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Compute gradient x input of each sample's true-class logit.

    For sample ``i`` with label ``y_i`` and logits ``z(x_i)``, the attribution is the elementwise
    product ``x_i * d z_{y_i}(x_i) / d x_i``, a tensor of ``x_i``'s shape. It is zero wherever the
    input is zero. Positive values mark pixels that raise the true-class logit. The model runs in
    eval mode, its training flag is restored afterwards, and its parameters get no gradients.
    """
    was_training = model.training
    model.eval()
    try:
        inputs = x.detach().clone().requires_grad_(True)
        logits = model(inputs)
        true_class_logits = logits.gather(1, y.view(-1, 1)).sum()
        (gradient,) = torch.autograd.grad(true_class_logits, inputs)
    finally:
        model.train(was_training)
    return (gradient * inputs).detach()


def run_label(outcome: RunOutcome) -> str:
    """Return a short description of a run for chart titles: its parameters and how training ended."""
    config = outcome.config
    return (
        f"{config.data.dataset}, {config.model.model}, lr {config.train.lr:g}, rho {config.data.rho:g}, "
        f"seed {config.seed}: {outcome.summary['status']} after {outcome.summary['steps']} steps"
    )


def training_curve_chart(outcome: RunOutcome) -> alt.Chart:
    """Plot training and test accuracy and the conflicting share of the training loss against the step."""
    history = pd.DataFrame(outcome.result.history)
    long = history.melt(id_vars="step", value_vars=list(CURVE_SERIES), var_name="series", value_name="value")
    long = long.dropna(subset=["value"])
    long["series"] = long["series"].map(CURVE_SERIES)
    return (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("step:Q", title="training step"),
            y=alt.Y("value:Q", title="fraction", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("series:N", title=None, sort=list(CURVE_SERIES.values())),
            tooltip=["series:N", "step:Q", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(width=420, height=220, title={"text": "Training curve", "subtitle": run_label(outcome)})
    )


def accuracies_chart(outcome: RunOutcome) -> alt.LayerChart:
    """Plot test accuracy overall, on bias-aligned and bias-conflicting samples, and of the worst group.

    A diverged run has NaN accuracies, which draw no bar.
    """
    table = pd.DataFrame({"subset": label, "accuracy": outcome.summary[key]} for key, label in ACCURACY_BARS.items())
    base = alt.Chart(table).encode(
        x=alt.X("subset:N", title="unbiased test set", sort=list(ACCURACY_BARS.values())),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        tooltip=["subset:N", alt.Tooltip("accuracy:Q", format=".3f")],
    )
    bars = base.mark_bar()
    labels = base.mark_text(dy=-6).encode(text=alt.Text("accuracy:Q", format=".3f"))
    return (bars + labels).properties(
        width=300, height=220, title={"text": "Test accuracies", "subtitle": run_label(outcome)}
    )


def pruning_chart(outcome: RunOutcome) -> alt.Chart:
    """Plot test accuracy after global magnitude pruning against the fraction of weights pruned."""
    curve = pd.DataFrame(outcome.summary["pruning_curve"]).dropna(subset=["accuracy"])
    return (
        alt.Chart(curve)
        .mark_line(point=True)
        .encode(
            x=alt.X("sparsity:Q", title="fraction of weights pruned"),
            y=alt.Y("accuracy:Q", title="test accuracy after pruning", scale=alt.Scale(domain=[0, 1])),
            tooltip=["sparsity:Q", alt.Tooltip("accuracy:Q", format=".3f")],
        )
        .properties(
            width=420,
            height=220,
            title={
                "text": f"Pruning curve (compressibility {outcome.summary['compressibility']:.3f})",
                "subtitle": run_label(outcome),
            },
        )
    )


def attribution_figure(outcome: RunOutcome, per_group: int = ATTRIBUTION_SAMPLES) -> Figure:
    """Draw test samples beside their gradient x input maps: bias-aligned in the top row, conflicting below.

    Each map sums the attribution over colour channels and uses a symmetric red-blue scale per
    sample: red pixels raise the true-class logit and blue pixels lower it.
    """
    test = outcome.dataset.test
    model = outcome.result.model
    groups = [
        ("bias-aligned", torch.nonzero(test.aligned).flatten()[:per_group]),
        ("bias-conflicting", torch.nonzero(~test.aligned).flatten()[:per_group]),
    ]
    height, width = test.x.shape[-2:]
    figure = Figure(figsize=(2 * per_group * 1.4 * width / height, 2 * 1.7), layout="constrained")
    axes = figure.subplots(2, 2 * per_group, squeeze=False)
    for row, (name, indices) in enumerate(groups):
        x, y = test.x[indices], test.y[indices]
        attributions = input_attributions(model, x, y).sum(dim=1).cpu()
        predictions = predict_logits(model, x).argmax(dim=1).cpu()
        for column in range(per_group):
            image_axis, map_axis = axes[row, 2 * column], axes[row, 2 * column + 1]
            image_axis.set_axis_off()
            map_axis.set_axis_off()
            if column >= len(indices):
                continue
            index = int(indices[column])
            _draw_image(image_axis, test.x[index].detach().cpu())
            image_axis.set_title(f"y={int(test.y[index])} b={int(test.b[index])}", fontsize=7)
            _draw_attribution(map_axis, attributions[column])
            map_axis.set_title(f"predicted {int(predictions[column])}", fontsize=7)
        axes[row, 0].text(-0.1, 0.5, name, transform=axes[row, 0].transAxes, ha="right", va="center", fontsize=8)
    figure.suptitle(f"Gradient x input of the true-class logit\n{run_label(outcome)}", fontsize=8)
    return figure


def _draw_image(axis, image: torch.Tensor) -> None:
    if image.shape[0] == 1:
        axis.imshow(image[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    else:
        axis.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())


def _draw_attribution(axis, attribution: torch.Tensor) -> None:
    # A diverged model gives NaN attributions: matplotlib leaves NaN pixels blank, and the scale
    # falls back to [-1, 1] so that it stays valid.
    limit = float(attribution.abs().nan_to_num(nan=0.0, posinf=0.0).max())
    if not math.isfinite(limit) or limit == 0.0:
        limit = 1.0
    axis.imshow(attribution.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)


def explorer_figures(outcome: RunOutcome) -> dict[str, alt.TopLevelMixin | Figure]:
    """Draw the explorer's four figures of one run: three Altair charts and one matplotlib figure."""
    return {
        "training_curve": training_curve_chart(outcome),
        "accuracies": accuracies_chart(outcome),
        "pruning_curve": pruning_chart(outcome),
        "attributions": attribution_figure(outcome),
    }


def save_figures(figures: dict[str, alt.TopLevelMixin | Figure], folder: str | Path) -> list[Path]:
    """Write each Altair chart to ``<name>.html`` and each matplotlib figure to ``<name>.png`` in ``folder``.

    The HTML files inline the vega libraries (taken from vl-convert), so they open offline.
    Returns the paths written. Raises ``TypeError`` for any other kind of figure.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, figure in figures.items():
        if isinstance(figure, Figure):
            path = folder / f"{name}.png"
            figure.savefig(path, dpi=FIGURE_DPI)
        elif isinstance(figure, alt.TopLevelMixin):
            path = folder / f"{name}.html"
            figure.save(path, inline=True)
        else:
            raise TypeError(
                f"cannot save figure {name!r} of type {type(figure).__name__}: "
                "expected an Altair chart or a matplotlib Figure"
            )
        paths.append(path)
    logger.info("saved %d figures to %s", len(paths), folder)
    return paths


def figure_png(figure: alt.TopLevelMixin | Figure) -> Any:
    """Render a figure as a PNG ``IPython.display.Image``.

    Altair charts are rendered by vl-convert, offline. A PNG shows in every notebook front end
    whatever Altair renderer or matplotlib backend is active, but loses the charts' tooltips.
    """
    from IPython.display import Image

    buffer = io.BytesIO()
    if isinstance(figure, Figure):
        figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    else:
        figure.save(buffer, format="png")
    return Image(data=buffer.getvalue(), format="png")


def figure_display(figure: alt.TopLevelMixin | Figure) -> Any:
    """Return an object that IPython displays as the figure.

    An Altair chart is returned as it is, so it draws with the active Altair renderer (the book's
    renderer in book pages). A matplotlib figure becomes a PNG image, because a ``Figure`` made
    without pyplot has no rich display of its own.
    """
    if isinstance(figure, Figure):
        return figure_png(figure)
    return figure


def session_row(outcome: RunOutcome) -> dict[str, Any]:
    """Return the session table's row of one run: its parameters, then metrics from its summary."""
    params = outcome.config.to_params()
    row = {name: params[name] for name in TABLE_PARAMETERS}
    row.update({name: outcome.summary[name] for name in TABLE_METRICS})
    return row


class Explorer:
    """ipywidgets controls that train one quick run per click and show its figures.

    Every run of the session adds a row to a comparison table. Run records go to ``runs_dir``,
    a new temporary folder when it is not given. Display the explorer as the last expression of a
    notebook cell, or with ``IPython.display.display``. The widgets need a live kernel.
    """

    def __init__(self, runs_dir: str | Path | None = None, device: str = "cpu", threads: int = QUICK_THREADS):
        import ipywidgets as widgets

        self.runs_dir = Path(runs_dir) if runs_dir else Path(tempfile.mkdtemp(prefix="lrstudy-explorer-"))
        self.device = device
        self.threads = threads
        self.rows: list[dict[str, Any]] = []
        self.last_outcome: RunOutcome | None = None

        self.lr = widgets.FloatLogSlider(
            value=QUICK_DEFAULTS["lr"],
            base=10,
            min=math.log10(LR_RANGE[0]),
            max=math.log10(LR_RANGE[1]),
            step=0.05,
            readout_format=".3g",
            description="learning rate",
        )
        self.dataset = widgets.Dropdown(options=list(DATASETS), value=QUICK_DEFAULTS["dataset"], description="dataset")
        self.rho = widgets.FloatSlider(
            value=QUICK_DEFAULTS["rho"],
            min=RHO_RANGE[0],
            max=RHO_RANGE[1],
            step=0.01,
            readout_format=".2f",
            description="rho",
        )
        self.seed = widgets.IntText(value=QUICK_DEFAULTS["seed"], description="seed")
        self.model = widgets.Dropdown(options=list(MODELS), value=QUICK_DEFAULTS["model"], description="model")
        self.train_button = widgets.Button(description="Train", button_style="primary", icon="play")
        self.train_button.on_click(self.on_train)
        self.status = widgets.Output()
        self.figures = widgets.Output()
        self.table = widgets.Output()

        controls = widgets.VBox([self.lr, self.dataset, self.rho, self.seed, self.model, self.train_button])
        self.widget = widgets.VBox(
            [
                controls,
                self.status,
                self.figures,
                widgets.HTML("<b>Runs of this session</b>"),
                self.table,
            ]
        )

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def session_table(self) -> pd.DataFrame:
        """Return one row per run of this session, in the order they ran."""
        return pd.DataFrame(self.rows, columns=[*TABLE_PARAMETERS, *TABLE_METRICS])

    def on_train(self, button=None) -> RunOutcome | None:
        """Train one quick run with the controls' values, then redraw the figures and the table.

        Called by the Train button. Returns the run's outcome, or ``None`` when the run failed;
        the error is then shown in the status area and logged.
        """
        self.train_button.disabled = True
        self.status.outputs = ()
        # Rounded as the sliders' readouts show them, so the table lists 0.112 and not 0.11220184543019636.
        values = {
            "lr": float(f"{self.lr.value:.3g}"),
            "dataset": self.dataset.value,
            "rho": round(self.rho.value, 2),
            "seed": self.seed.value,
            "model": self.model.value,
        }
        self.status.append_stdout(f"Training with {values} ...\n")
        started = time.perf_counter()
        error = None
        try:
            # The context routes tqdm's progress bar into the status area in a live kernel. Errors are
            # caught inside it because in IPython the Output widget suppresses an exception that
            # leaves the context.
            with self.status:
                try:
                    outcome = train_quick(
                        **values, runs_dir=self.runs_dir, device=self.device, threads=self.threads, progress=True
                    )
                    figures = explorer_figures(outcome)
                except Exception as caught:  # shown to the user, because a widget callback's errors are otherwise lost
                    error = caught
        finally:
            self.train_button.disabled = False
        if error is not None:
            logger.error("explorer: run with %s failed: %s", values, error, exc_info=error)
            self.status.append_stdout(f"Run failed: {type(error).__name__}: {error}\n")
            return None

        self.last_outcome = outcome
        self.rows.append(session_row(outcome))
        self.status.append_stdout(
            f"Finished in {time.perf_counter() - started:.1f} s: {outcome.summary['status']} after "
            f"{outcome.summary['steps']} steps. Record: {outcome.run_dir}\n"
        )
        # PNG images, because the Altair renderer active in the kernel may draw only in the built
        # book (see lrstudy.charts.enable_book_renderer).
        self.figures.outputs = ()
        for figure in figures.values():
            self.figures.append_display_data(figure_png(figure))
        self.table.outputs = ()
        self.table.append_display_data(self.session_table())
        return outcome
