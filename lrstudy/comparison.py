"""LR against the other knobs: which hyperparameter improves the paper's properties together?

The ``comparison`` preset varies one knob at a time around a baseline (plain SGD at LR 0.2, batch
100, no regularization, the MLP) on both datasets, and varies the LR under SGD with momentum, under
Adam and for the CNN. For each knob and property, ``knob_correlations`` gives the Spearman rank
correlation between the knob's value, signed so that a positive value means "in the direction the
paper favours" (larger LR, smaller batch, more momentum or regularization), and the property.

The "in tandem" score of a knob is the smallest of its correlations over the five properties: it is
high only when every property improves together, which is the paper's claim, and one property that
worsens pulls it down however much the others improve. ``improved`` counts the properties with a
positive correlation significant at 5% (two-sided), a coarser view of the same question.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from .results import spearman

# The run every one-knob family starts from; each family changes one of these (and ``setting``).
BASELINE = {
    "optimizer": "sgd",
    "model": "mlp",
    "lr": 0.2,
    "batch_size": 100,
    "momentum": 0.0,
    "weight_decay": 0.0,
    "l1": 0.0,
    "dropout": 0.0,
    "focal_gamma": 0.0,
}


@dataclass(frozen=True)
class Knob:
    """One family of the comparison: ``parameter`` takes ``values`` with the rest at the baseline plus ``setting``."""

    name: str
    parameter: str
    values: tuple
    direction: int  # +1 when the paper favours larger values, -1 when it favours smaller ones
    setting: dict = field(default_factory=dict)

    def params(self) -> dict:
        """Return the parameters shared by the family's runs (all but ``parameter``)."""
        return {**BASELINE, **self.setting}


KNOBS = (
    Knob("learning rate (SGD, MLP)", "lr", (0.05, 0.1, 0.2, 0.5, 1.0), +1),
    Knob("batch size (smaller)", "batch_size", (400, 200, 100, 50), -1),
    Knob("momentum", "momentum", (0.0, 0.3, 0.6, 0.8), +1),
    Knob("weight decay", "weight_decay", (0.0, 1e-4, 5e-4, 2e-3), +1),
    Knob("L1 penalty", "l1", (0.0, 1e-5, 3e-5, 1e-4), +1),
    Knob("dropout", "dropout", (0.0, 0.1, 0.3, 0.5), +1),
    Knob("focal loss gamma", "focal_gamma", (0.0, 1.0, 2.0, 4.0), +1),
    Knob("learning rate (SGD + momentum 0.9)", "lr", (0.01, 0.02, 0.05, 0.1), +1, {"momentum": 0.9}),
    Knob("learning rate (Adam)", "lr", (1e-4, 3e-4, 1e-3, 3e-3), +1, {"optimizer": "adam"}),
    Knob("learning rate (SGD, CNN)", "lr", (0.05, 0.2, 0.5), +1, {"model": "cnn"}),
)

# The five properties of the paper, one metric each, in the order the book shows them.
PROPERTIES = {
    "accuracy": "robustness (unbiased accuracy)",
    "compressibility": "compressibility (pruning)",
    "core_attribution_ig": "core utilization (IG)",
    "class_separation": "class separation",
    "activation_sparsity": "activation sparsity",
}

# Significance level of ``improved``.
ALPHA = 0.05


def comparison_variants() -> list[dict]:
    """Return one parameter set per (knob, value): the sweep's variants of the ``comparison`` preset."""
    return [{**knob.params(), knob.parameter: value} for knob in KNOBS for value in knob.values]


def knob_runs(results: pd.DataFrame, knob: Knob) -> pd.DataFrame:
    """Return the runs of ``results`` that belong to ``knob``'s family (a baseline run belongs to several)."""
    shared = knob.params()
    mask = results[knob.parameter].isin(knob.values)
    for name, value in shared.items():
        if name != knob.parameter:
            mask &= results[name] == value
    return results[mask]


def knob_correlations(results: pd.DataFrame, properties: dict[str, str] = PROPERTIES) -> pd.DataFrame:
    """Correlate each knob with each property, per dataset, over the runs that did not diverge.

    One row per (dataset, knob, property) with ``spearman`` (between ``direction * value`` and the
    property), ``p_value``, ``runs`` (used), ``diverged`` (left out) and ``values`` (distinct knob
    values among the runs used).
    """
    rows = []
    for dataset, runs in results.groupby("dataset", sort=True):
        for knob in KNOBS:
            family = knob_runs(runs, knob)
            stable = family[family["status"] != "diverged"]
            for metric, label in properties.items():
                usable = stable[stable[metric].notna()]
                rho, p_value = spearman(knob.direction * usable[knob.parameter], usable[metric])
                rows.append(
                    {
                        "dataset": dataset,
                        "knob": knob.name,
                        "property": label,
                        "metric": metric,
                        "spearman": rho,
                        "p_value": p_value,
                        "runs": len(usable),
                        "diverged": int((family["status"] == "diverged").sum()),
                        "values": usable[knob.parameter].nunique(),
                    }
                )
    return pd.DataFrame(rows)


def in_tandem(correlations: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Score each (dataset, knob): ``score`` is the minimum correlation over the properties, ``improved``
    the number of properties with a positive correlation and p < ``alpha``, ``measured`` the number
    with a correlation. A knob with an unmeasured property has no score (NaN). Sorted by score, best first.
    """

    def summarise(group: pd.DataFrame) -> pd.Series:
        measured = group["spearman"].notna()
        significant = measured & (group["spearman"] > 0) & (group["p_value"] < alpha)
        return pd.Series(
            {
                "score": group["spearman"].min() if bool(measured.all()) else math.nan,
                "improved": int(significant.sum()),
                "measured": int(measured.sum()),
                "properties": len(group),
            }
        )

    summary = correlations.groupby(["dataset", "knob"], sort=False).apply(summarise, include_groups=False)
    summary = summary.reset_index().astype({"improved": int, "measured": int, "properties": int})
    return summary.sort_values(["dataset", "score"], ascending=[True, False], na_position="last").reset_index(drop=True)
