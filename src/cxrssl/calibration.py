"""Calibration of classifier probabilities: ECE, reliability bins and temperature scaling.

Binary and multi-label outputs are probabilities of the positive class, one column per class,
with labels 1/0/NaN (NaN: unknown, left out; the torchxrayvision contract). Calibration is
measured per class, as for binary classifiers: the probabilities are cut into ``n_bins``
equal-width bins (0, 1/B], (1/B, 2/B], ... (0 falls in the first), and in each bin the mean
probability (confidence) is compared with the share of positive labels (observed frequency).
ECE is the mean of |frequency - confidence| weighted by the bin counts (Guo et al., 2017,
"On Calibration of Modern Neural Networks", with the positive-class probability in place of
the top-label confidence).

Temperature scaling (Guo et al.) divides all logits by one scalar T > 0 fitted on validation
data by minimising the negative log-likelihood (binary cross-entropy per known label, or softmax
cross-entropy for multiclass outputs). Predictions keep their order, so AUCs do not change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cxrssl.metrics import MetricError, _check_binary

T_MIN, T_MAX = 0.05, 20.0

Slope = Callable[[float], tuple[float, float]]


def _check_bins(n_bins: int) -> None:
    if n_bins < 1:
        raise MetricError(f"n_bins must be at least 1, got {n_bins}")


def _probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays of the same shape, (N,) or (N, C), probabilities in [0, 1], labels 0/1/NaN."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if p.ndim not in (1, 2) or p.shape != y.shape:
        raise MetricError(f"probs {p.shape} and labels {y.shape} must both be (N,) or (N, C)")
    if not np.isfinite(p).all() or ((p < 0) | (p > 1)).any():
        raise MetricError("probs must be finite probabilities in [0, 1]; apply the sigmoid first")
    _check_binary("labels", y[~np.isnan(y)])
    return p, y


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, Any]:
    """Reliability-diagram bins of positive-class probabilities (module doc).

    A 2-D input is pooled: every known (image, class) pair is one prediction.

    Args:
        probs: probabilities of the positive class, (N,) or (N, C).
        labels: 0/1/NaN, same shape; NaN entries are left out.
        n_bins: equal-width bins on [0, 1].

    Returns:
        ``{"edges": (B + 1,), "confidence": (B,) mean probability, "frequency": (B,) share of
        positives, "count": (B,) int, "ece": float}``; empty bins have NaN confidence and
        frequency; ``ece`` is NaN when no label is known.

    Raises:
        MetricError: shapes differ, probabilities outside [0, 1], labels not 0/1/NaN, or
            ``n_bins`` < 1.
    """
    _check_bins(n_bins)
    p, y = _probs_labels(probs, labels)
    known = ~np.isnan(y)
    p, y = p[known], y[known]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.digitize(p, edges[1:-1], right=True)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=p, minlength=n_bins) / count
        frequency = np.bincount(index, weights=y, minlength=n_bins) / count
    bins = {"edges": edges, "confidence": confidence, "frequency": frequency, "count": count}
    return bins | {"ece": ece_from_bins(bins)}


def ece_from_bins(bins: Mapping[str, Any]) -> float:
    """ECE of :func:`reliability_bins` output: count-weighted mean |frequency - confidence|.

    Returns:
        The ECE; NaN when every bin is empty.
    """
    count = np.asarray(bins["count"], dtype=np.float64)
    if count.sum() == 0:
        return math.nan
    gap = np.abs(np.asarray(bins["frequency"]) - np.asarray(bins["confidence"]))
    return float(np.sum(np.where(count > 0, gap, 0.0) * count) / count.sum())


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error of positive-class probabilities (module doc).

    Args:
        probs: probabilities of the positive class, (N,) for one class or (N, C) multi-label.
        labels: 0/1/NaN, same shape; NaN entries are left out.
        n_bins: equal-width bins on [0, 1].

    Returns:
        The ECE of a 1-D input; for (N, C) the mean of the per-class ECEs over the classes
        with a known label. NaN when no label is known.

    Raises:
        MetricError: as :func:`reliability_bins`.
    """
    p, y = _probs_labels(probs, labels)
    if p.ndim == 1:
        return float(reliability_bins(p, y, n_bins)["ece"])
    per_class = [
        float(reliability_bins(p[:, c], y[:, c], n_bins)["ece"]) for c in range(p.shape[1])
    ]
    finite = [e for e in per_class if not math.isnan(e)]
    return float(np.mean(finite)) if finite else math.nan


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for large |x|


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _slope_binary(z: np.ndarray, y: np.ndarray) -> Slope:
    """First and second derivative in beta of the mean BCE of ``beta * z`` (1-D, known)."""

    def slope(beta: float) -> tuple[float, float]:
        p = _sigmoid(beta * z)
        return float(np.mean((p - y) * z)), float(np.mean(p * (1 - p) * z * z))

    return slope


def _slope_multiclass(z: np.ndarray, y: np.ndarray) -> Slope:
    """First and second derivative in beta of the mean cross-entropy of ``beta * z``.

    ``y`` holds one target distribution per row (one-hot for hard labels).
    """

    def slope(beta: float) -> tuple[float, float]:
        q = _softmax(beta * z)
        mean_z = (q * z).sum(axis=1)
        first = mean_z - (y * z).sum(axis=1)
        second = (q * z * z).sum(axis=1) - mean_z**2
        return float(first.mean()), float(second.mean())

    return slope


def _multiclass_targets(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and target distributions (M, K) of the rows whose label is known.

    Labels are integer classes (N,) or one-hot/probability rows (N, K); NaN marks an unknown
    label (a row holding a NaN is left out).
    """
    n, k = z.shape
    if y.shape not in ((n,), (n, k)):
        raise MetricError(f"labels {y.shape} must be ({n},) integers or ({n}, {k}) one-hot rows")
    known = ~np.isnan(y) if y.ndim == 1 else ~np.isnan(y).any(axis=1)
    if not known.any():
        raise MetricError("no known label to fit the temperature on")
    z, y = z[known], y[known]
    if y.ndim == 1:
        if (y != np.round(y)).any() or y.min() < 0 or y.max() >= k:
            raise MetricError(f"integer labels must lie in 0..{k - 1}")
        return z, np.eye(k)[y.astype(np.int64)]
    if not np.isfinite(y).all() or (y < 0).any() or not np.allclose(y.sum(axis=1), 1.0):
        raise MetricError("one-hot labels must be finite, non-negative rows summing to 1")
    return z, y


def fit_temperature(logits: Any, labels: Any, multiclass: bool = False) -> float:
    """The temperature T in [``T_MIN``, ``T_MAX``] minimising the NLL of ``logits / T``.

    The NLL is convex in beta = 1 / T (the logits are linear in it), so its derivative is
    monotone: a bracketed Newton search for the root (bisection where a Newton step leaves
    the bracket) finds the bounded optimum, deterministically, with no starting point to
    tune. An optimum beyond a bound gives that bound.

    Args:
        logits: (N,) or (N, C) binary/multi-label logits, or (N, K) multiclass logits.
        labels: binary/multi-label: 0/1/NaN of the logits' shape (NaN left out); multiclass:
            (N,) integer classes or (N, K) one-hot rows (rows with a NaN left out).
        multiclass: softmax cross-entropy instead of the binary cross-entropy averaged over
            every known label (all classes share the one T).

    Returns:
        T; T > 1 softens overconfident logits.

    Raises:
        MetricError: shapes disagree, logits not finite, labels invalid or none known.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if not np.isfinite(z).all():
        raise MetricError("logits must be finite")
    if multiclass:
        if z.ndim != 2 or z.shape[1] < 2:
            raise MetricError(f"multiclass logits must be (N, K) with K >= 2, got {z.shape}")
        slope = _slope_multiclass(*_multiclass_targets(z, y))
    else:
        if z.ndim not in (1, 2) or z.shape != y.shape:
            raise MetricError(f"logits {z.shape} and labels {y.shape} must both be (N,) or (N, C)")
        known = ~np.isnan(y)
        if not known.any():
            raise MetricError("no known label to fit the temperature on")
        _check_binary("labels", y[known])
        slope = _slope_binary(z[known], y[known])
    return 1.0 / _root_of_slope(slope, 1.0 / T_MAX, 1.0 / T_MIN)


def _root_of_slope(slope: Slope, lo: float, hi: float) -> float:
    """Minimiser in [lo, hi] of a convex function given its derivatives (bracketed Newton)."""
    first, second = slope(lo)
    if first == 0 and second == 0:  # flat (all logits 0 or equal): any T fits, keep 1
        return min(max(1.0, lo), hi)
    if first >= 0:
        return lo
    if slope(hi)[0] <= 0:
        return hi
    beta = min(max(1.0, lo), hi)
    for _ in range(100):
        first, second = slope(beta)
        if first == 0:
            return beta
        if first < 0:
            lo = beta
        else:
            hi = beta
        newton = beta - first / second if second > 0 else math.nan
        new = newton if lo < newton < hi else 0.5 * (lo + hi)
        if abs(new - beta) <= 1e-12 * beta:
            return new
        beta = new
    return beta


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Logits divided by the temperature (apply the sigmoid or softmax afterwards).

    Raises:
        MetricError: a temperature that is not a positive finite number.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise MetricError(f"temperature must be a positive finite number, got {temperature}")
    return np.asarray(logits, dtype=np.float64) / temperature
