"""Calibration: ECE and reliability bins, temperature scaling, the ROC and reliability plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cxrssl.calibration import (
    T_MAX,
    T_MIN,
    apply_temperature,
    ece_from_bins,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from cxrssl.metrics import MetricError, roc_auc_per_class


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _calibrated(n: int, c: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, c) and labels drawn with P(y = 1) = sigmoid(logit): calibrated by design."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, c))
    return z, (rng.random((n, c)) < _sigmoid(z)).astype(float)


def test_ece_hand_computed() -> None:
    probs = np.array([0.1, 0.1, 0.9, 0.9, 0.6])
    labels = np.array([0, 1, 1, 1, 0])
    bins = reliability_bins(probs, labels, n_bins=2)
    # Bin (0, 0.5]: conf 0.1, freq 0.5; bin (0.5, 1]: conf 0.8, freq 2/3.
    assert bins["count"].tolist() == [2, 3]
    assert bins["confidence"] == pytest.approx([0.1, 0.8])
    assert bins["frequency"] == pytest.approx([0.5, 2 / 3])
    expected = (2 * 0.4 + 3 * (0.8 - 2 / 3)) / 5
    assert bins["ece"] == pytest.approx(expected)
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(expected)
    assert ece_from_bins(bins) == pytest.approx(expected)
    # Edges: 0 falls in the first bin, 0.5 too (right-closed), 1 in the last.
    edge = reliability_bins(np.array([0.0, 0.5, 1.0]), np.array([0, 1, 1]), n_bins=2)
    assert edge["count"].tolist() == [2, 1]


def test_calibrated_data_has_small_ece() -> None:
    z, y = _calibrated(20_000)
    assert expected_calibration_error(_sigmoid(z[:, 0]), y[:, 0]) < 0.03
    bins = reliability_bins(_sigmoid(z), y, n_bins=10)
    assert bins["count"].sum() == 20_000 and len(bins["edges"]) == 11
    full = bins["count"] > 500
    assert np.abs(bins["frequency"] - bins["confidence"])[full].max() < 0.05


def test_nan_labels_are_masked() -> None:
    z, y = _calibrated(4000, 2, seed=1)
    p = _sigmoid(z)
    y_nan = y.copy()
    y_nan[:1000, 0] = np.nan
    y_nan[:, 1] = np.nan  # a class with no known label is left out of the mean
    ece = expected_calibration_error(p, y_nan)
    assert ece == pytest.approx(expected_calibration_error(p[1000:, 0], y[1000:, 0]))
    assert reliability_bins(p, y_nan)["count"].sum() == 3000
    assert math.isnan(expected_calibration_error(p[:, 1], y_nan[:, 1]))
    # Multi-label without NaN: the mean of the per-class ECEs.
    per_class = [expected_calibration_error(p[:, c], y[:, c]) for c in range(2)]
    assert expected_calibration_error(p, y) == pytest.approx(np.mean(per_class))
    # The temperature fit ignores NaN labels too.
    t_nan = fit_temperature(3 * z, y_nan)
    assert t_nan == pytest.approx(fit_temperature(3 * z[1000:, 0], y[1000:, 0]), rel=1e-6)


def _bce(z: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of logits, written out (the naive reference)."""
    return float(np.mean(np.logaddexp(0, z) - y * z))


def test_temperature_minimises_nll() -> None:
    z, y = _calibrated(3000, 2, seed=7)
    z = 2.2 * z + 0.3  # overconfident and shifted: the optimum is no round number
    t = fit_temperature(z, y)
    grid = np.linspace(0.5, 5.0, 901)
    best = grid[np.argmin([_bce(z / g, y) for g in grid])]
    assert abs(t - best) <= 0.005 + 1e-9
    assert _bce(z / t, y) <= min(_bce(z / (t * 1.001), y), _bce(z / (t / 1.001), y))


@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_temperature_recovers_scale(scale: float) -> None:
    z, y = _calibrated(20_000, seed=2)
    t = fit_temperature(scale * z, y)
    assert t == pytest.approx(scale, rel=0.1)
    assert fit_temperature(scale * z, y) == t  # deterministic


def test_temperature_lowers_ece_of_overconfident_logits() -> None:
    z, y = _calibrated(10_000, 3, seed=3)
    over = 3 * z
    t = fit_temperature(over[:5000], y[:5000])  # fitted on "validation", scored on the rest
    before = expected_calibration_error(_sigmoid(over[5000:]), y[5000:])
    after = expected_calibration_error(_sigmoid(apply_temperature(over[5000:], t)), y[5000:])
    assert before > 0.08 and after < before / 2
    # Order is kept: the AUCs do not change.
    names = ["a", "b", "c"]
    auc_before = roc_auc_per_class(y[5000:], over[5000:], names, n_boot=1)
    auc_after = roc_auc_per_class(y[5000:], apply_temperature(over[5000:], t), names, n_boot=1)
    assert [auc_before[k].auc for k in names] == [auc_after[k].auc for k in names]


def test_multiclass_temperature() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(0.0, 2.0, (8000, 4))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) < rng.random((8000, 1))).sum(axis=1)  # y ~ softmax(z)
    t = fit_temperature(2.5 * z, y, multiclass=True)
    assert t == pytest.approx(2.5, rel=0.1)
    one_hot = np.eye(4)[y]
    assert fit_temperature(2.5 * z, one_hot, multiclass=True) == pytest.approx(t, rel=1e-6)
    one_hot[:100] = np.nan  # unknown classes: left out
    t_known = fit_temperature(2.5 * z[100:], y[100:], multiclass=True)
    assert fit_temperature(2.5 * z, one_hot, multiclass=True) == pytest.approx(t_known, rel=1e-6)


def test_temperature_is_clamped() -> None:
    z = np.array([-2.0, -1.0, 1.0, 2.0])
    y = np.array([0.0, 0.0, 1.0, 1.0])  # separable: the NLL falls as T goes to 0
    assert fit_temperature(z, y) == T_MIN
    assert fit_temperature(z, 1 - y) == T_MAX  # wrong everywhere: T grows without bound
    assert apply_temperature(z, 2.0) == pytest.approx(z / 2)
    assert fit_temperature(np.zeros(4), y) == 1.0  # flat NLL: T stays 1
    assert fit_temperature(np.ones((3, 2)), np.array([0, 1, 1]), multiclass=True) == 1.0


def test_bad_inputs_raise() -> None:
    p, y = np.full(5, 0.5), np.zeros(5)
    with pytest.raises(MetricError, match=r"probs \(5,\) and labels \(4,\)"):
        expected_calibration_error(p, y[:4])
    with pytest.raises(MetricError, match=r"must both be \(N,\) or \(N, C\)"):
        reliability_bins(np.full((2, 2, 2), 0.5), np.zeros((2, 2, 2)))
    with pytest.raises(MetricError, match=r"probabilities in \[0, 1\]"):
        expected_calibration_error(p * 3, y)
    with pytest.raises(MetricError, match="labels must be binary"):
        expected_calibration_error(p, y + 2)
    with pytest.raises(MetricError, match="n_bins must be at least 1"):
        reliability_bins(p, y, n_bins=0)
    with pytest.raises(MetricError, match=r"logits \(5,\) and labels \(5, 1\)"):
        fit_temperature(p, y[:, None])
    with pytest.raises(MetricError, match="no known label"):
        fit_temperature(p, np.full(5, np.nan))
    with pytest.raises(MetricError, match="logits must be finite"):
        fit_temperature(np.array([np.inf, 0.0]), np.array([1.0, 0.0]))
    with pytest.raises(MetricError, match=r"integer labels must lie in 0\.\.2"):
        fit_temperature(np.zeros((4, 3)), np.array([0, 1, 2, 3]), multiclass=True)
    with pytest.raises(MetricError, match=r"\(N, K\) with K >= 2"):
        fit_temperature(np.zeros(4), np.zeros(4), multiclass=True)
    with pytest.raises(MetricError, match="positive finite number"):
        apply_temperature(p, 0.0)


def test_roc_figure_lines_and_png(tmp_path: Path) -> None:
    from cxrssl.cls_plots import roc_figure, save_png

    rng = np.random.default_rng(5)
    y = (rng.random((200, 3)) < 0.3).astype(float)
    s = rng.random((200, 3)) + 0.5 * y
    y[:40, 1] = np.nan
    y[:, 2] = 0.0  # one label value: skipped, named in the legend
    aucs = roc_auc_per_class(y, s, ["a", "b", "c"], n_boot=50)
    fig = roc_figure(y, s, ["a", "b", "c"], aucs)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 + 1  # classes a and b, and the diagonal
    box = ax.get_legend()
    assert box is not None
    legend = [t.get_text() for t in box.get_texts()]
    a = aucs["a"]
    assert legend[0] == f"a: AUC {a.auc:.3f} [{a.ci_low:.3f}, {a.ci_high:.3f}]"
    assert any(t.startswith("c: skipped") for t in legend)
    assert len(roc_figure(y, s, ["a", "b", "c"]).axes[0].lines) == 3  # AUCs computed here
    path = tmp_path / "plots" / "roc.png"
    save_png(fig, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert list(path.parent.iterdir()) == [path]  # no temporary file left
    with pytest.raises(MetricError, match=r"must both be \(N, 2\)"):
        roc_figure(y, s, ["a", "b"])


def test_reliability_figure(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from cxrssl.cls_plots import reliability_figure, save_png

    z, y = _calibrated(2000, seed=6)
    before = reliability_bins(_sigmoid(3 * z), y, n_bins=10)
    after = reliability_bins(_sigmoid(z), y, n_bins=10)
    fig = reliability_figure(before, after)
    ax = fig.axes[0]
    assert len(ax.lines) == 1 + 2  # diagonal, before, after
    box = ax.get_legend()
    assert box is not None
    legend = [t.get_text() for t in box.get_texts()]
    assert f"ECE {before['ece']:.3f}" in legend[1] and f"ECE {after['ece']:.3f}" in legend[2]
    assert len(reliability_figure(before).axes[0].lines) == 2
    path = tmp_path / "reliability.png"
    n_open = len(plt.get_fignums())
    save_png(fig, path)
    assert path.stat().st_size > 1000 and len(plt.get_fignums()) == n_open - 1
    plt.close("all")
