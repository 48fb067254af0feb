"""Figures of a classifier's evaluation: ROC curves per class and reliability diagrams.

Figures are made with matplotlib's Agg backend (no display needed) and written as PNG with
:func:`save_png`, which also closes them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter
from sklearn.metrics import roc_auc_score, roc_curve

from cxrssl.calibration import ece_from_bins
from cxrssl.files import write_bytes_atomic
from cxrssl.metrics import AucSummary, MetricError


def _auc_label(name: str, labels: np.ndarray, scores: np.ndarray, auc: AucSummary | None) -> str:
    if auc is None or not np.isfinite(auc.auc):
        return f"{name}: AUC {roc_auc_score(labels, scores):.3f}"
    return f"{name}: AUC {auc.auc:.3f} [{auc.ci_low:.3f}, {auc.ci_high:.3f}]"


def _skip_note(name: str, labels: np.ndarray) -> str:
    if labels.size == 0:
        return f"{name}: skipped (no known label)"
    kind = "positive" if labels[0] == 1 else "negative"
    return f"{name}: skipped (only {kind} labels)"


def roc_figure(
    y_true: np.ndarray,
    y_score: np.ndarray,
    class_names: Sequence[str],
    aucs: Mapping[str, AucSummary] | None = None,
) -> Figure:
    """ROC curve of each class with the chance diagonal; AUC (and CI) in the legend.

    Rows with a NaN label are left out of that class; a class with one label value (or none)
    gets no curve, only a legend entry saying it was skipped.

    Args:
        y_true: labels (N, C) of 0/1/NaN.
        y_score: scores (N, C), probabilities or logits.
        class_names: C names, in the legend.
        aucs: optional :func:`cxrssl.metrics.roc_auc_per_class` result, for AUCs with their
            CIs; classes missing from it get the AUC alone, computed here.

    Returns:
        The figure: one line per plotted class, then the diagonal.

    Raises:
        MetricError: shapes or the number of names disagree.
    """
    t, s = np.asarray(y_true, dtype=np.float64), np.asarray(y_score, dtype=np.float64)
    if t.ndim != 2 or t.shape != s.shape or t.shape[1] != len(class_names):
        raise MetricError(
            f"y_true {t.shape} and y_score {s.shape} must both be (N, {len(class_names)})"
        )
    fig, ax = plt.subplots(figsize=(6, 6))
    skipped: list[Line2D] = []
    for c, name in enumerate(class_names):
        known = ~np.isnan(t[:, c])
        labels, scores = t[known, c], s[known, c]
        if np.unique(labels).size < 2:
            skipped.append(Line2D([], [], linestyle="none", label=_skip_note(name, labels)))
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        summary = None if aucs is None else aucs.get(name)
        ax.plot(fpr, tpr, lw=1.2, label=_auc_label(name, labels, scores, summary))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, linestyle="--", label="chance")
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + skipped, fontsize=7, loc="lower right")
    return fig


def _plot_bins(ax: Axes, counts_ax: Axes, bins: Mapping[str, Any], label: str) -> None:
    count = np.asarray(bins["count"])
    full = count > 0
    ece = bins["ece"] if "ece" in bins else ece_from_bins(bins)
    conf, freq = np.asarray(bins["confidence"])[full], np.asarray(bins["frequency"])[full]
    (line,) = ax.plot(conf, freq, marker="o", ms=4, lw=1.2, label=f"{label}: ECE {ece:.3f}")
    edges = np.asarray(bins["edges"])
    counts_ax.stairs(count, edges, color=line.get_color())


def reliability_figure(
    bins_before: Mapping[str, Any], bins_after: Mapping[str, Any] | None = None
) -> Figure:
    """Reliability diagram: observed frequency against mean confidence per bin.

    Args:
        bins_before: :func:`cxrssl.calibration.reliability_bins` of the model's probabilities.
        bins_after: the same after temperature scaling, drawn beside them when given.

    Returns:
        The figure: the diagonal then one line per set of bins in the upper axes (ECE in the
        legend), the bin counts below.
    """
    fig, (ax, counts_ax) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, linestyle="--", label="perfect calibration")
    before = "before temperature scaling" if bins_after is not None else "model"
    _plot_bins(ax, counts_ax, bins_before, before)
    if bins_after is not None:
        _plot_bins(ax, counts_ax, bins_after, "after temperature scaling")
    ax.set(ylabel="observed frequency of positives", xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    counts_ax.set(xlabel="mean predicted probability", ylabel="count", yscale="log")
    counts_ax.yaxis.set_minor_formatter(NullFormatter())
    counts_ax.grid(alpha=0.3)
    return fig


def save_png(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as a PNG to ``path`` atomically (parent folders created) and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
