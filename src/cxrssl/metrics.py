"""Segmentation and classification metrics: per image, aggregated with a bootstrap CI.

Metrics take ``y_pred, y`` (prediction first) and apply no activation: masks are binary
(bool or 0/1), probabilities are already probabilities.

Empty masks: a ratio whose denominator is zero is undefined. Two conventions
(``EMPTY_CONVENTIONS``), named in every table that cxrssl writes:

- ``"nan"`` (the default; MONAI ``DiceMetric(ignore_empty=True)`` for empty pairs, nnU-Net):
  an undefined value is NaN, left out of means and counted in ``Summary.n_nan``. Both masks
  empty: Dice = IoU = sensitivity = precision = NaN. Prediction empty, truth not: Dice = IoU =
  sensitivity = 0, precision NaN. Truth empty, prediction not: Dice = IoU = precision = 0,
  sensitivity NaN. Truth covering the whole image: specificity NaN. HD95 needs two edges: NaN
  when either mask is empty (MONAI's value).
- ``"one"`` (the rule of cxrssl 0.1): an undefined ratio is 1.0 (nothing to count, no error of its
  own kind); HD95 is 0 when both are empty and the image diagonal when exactly one is.

Image-level figures, the same in both conventions (for lesions and nodules, where truth can be
empty): ``detected`` is 1 when an image with a finding has a prediction overlapping it, else 0,
NaN for an image without a finding; ``clear`` is 1 when an image without a finding has an empty
prediction, else 0, NaN for an image with a finding. Their means are the shares of images
with and without a finding that came out right; their ``n`` counts those images.

HD95 is MONAI's symmetric 95th-percentile Hausdorff distance between mask edges, in units
of ``spacing`` (pixels by default), computed with OpenCV for 2-D masks (same figures).

Bootstrap CIs resample patients when patient ids are given (a cluster bootstrap: follow-up
films of one patient are not independent evidence), images otherwise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from cxrssl.errors import CxrsslError

METRIC_NAMES = (
    "dice",
    "iou",
    "sensitivity",
    "specificity",
    "precision",
    "hd95",
    "detected",
    "clear",
)
EMPTY_CONVENTIONS = {
    "nan": "an undefined value (0/0, e.g. Dice with both masks empty) is NaN, left out of the "
    "mean and counted in n_nan",
    "one": "an undefined ratio (0/0, e.g. Dice with both masks empty) counts as 1",
}
DEFAULT_EMPTY = "nan"


class MetricError(CxrsslError, ValueError):
    """Inputs a metric cannot be computed from (shapes, non-binary masks, one class only)."""


@dataclass(frozen=True)
class Summary:
    """Mean, sample std, percentile-bootstrap CI of the mean, count of finite values, NaNs,
    and the number of patients the bootstrap resampled (0: it resampled values)."""

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int
    n_nan: int = 0
    n_patients: int = 0

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON/CSV."""
        return asdict(self)


@dataclass(frozen=True)
class AucSummary:
    """ROC AUC and PR AUC (average precision) of one class with percentile-bootstrap CIs.

    Undefined values are NaN, with a ``note`` saying why. ``n_patients`` is the number of
    patients the bootstrap resampled (0: it resampled images).
    """

    auc: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int
    note: str = ""
    pr_auc: float = math.nan
    pr_low: float = math.nan
    pr_high: float = math.nan
    n_patients: int = 0

    def as_dict(self) -> dict[str, float | int | str]:
        """Plain dict for JSON/CSV."""
        return asdict(self)


def check_empty(empty: str) -> float:
    """The value of an undefined ratio under convention ``empty`` (NaN or 1).

    Raises:
        MetricError: an unknown convention.
    """
    if empty not in EMPTY_CONVENTIONS:
        raise MetricError(
            f"unknown empty-mask convention {empty!r}; choose one of {sorted(EMPTY_CONVENTIONS)}"
        )
    return math.nan if empty == "nan" else 1.0


def convention_note(empty: str = DEFAULT_EMPTY) -> str:
    """One line naming the empty-mask convention, for tables and reports."""
    check_empty(empty)
    return f"empty-mask convention {empty!r}: {EMPTY_CONVENTIONS[empty]}"


def _ratio(num: float, den: float, undefined: float) -> float:
    return num / den if den > 0 else undefined


def _check_binary(name: str, a: np.ndarray) -> None:
    if a.dtype != np.bool_ and bool(((a != 0) & (a != 1)).any()):
        raise MetricError(f"{name} must be binary (bool or 0/1), got values up to {a.max()}")


_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)


def _edges(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (outside the image counts as outside)."""
    eroded = cv2.erode(mask, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return mask > eroded


def _directed95(edges_from: np.ndarray, edges_to: np.ndarray) -> float:
    field = cv2.distanceTransform((~edges_to).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return float(np.percentile(field[edges_from], 95))


def _hausdorff95_monai(p: np.ndarray, t: np.ndarray, spacing: Any) -> float:
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 passes a deprecated argument to itself on every call.
        warnings.filterwarnings(
            "ignore", message=".*always_return_as_numpy", category=FutureWarning
        )
        d = compute_hausdorff_distance(
            torch.from_numpy(p)[None, None],
            torch.from_numpy(t)[None, None],
            include_background=True,
            percentile=95,
            spacing=spacing,
        )
    return float(d.item())


def hausdorff95(
    y_pred: np.ndarray,
    y: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    empty: str = DEFAULT_EMPTY,
) -> float:
    """Symmetric 95th-percentile Hausdorff distance of two binary masks, as MONAI defines it.

    Edges are mask pixels with a 4-neighbour outside the mask; the distance is the larger of
    the two directed 95th percentiles of edge-to-nearest-edge distances. 2-D masks with
    isotropic spacing are measured with OpenCV's exact Euclidean distance transform (the
    same figures as ``monai.metrics.compute_hausdorff_distance``, tested, about 50x faster);
    other cases call MONAI.

    Args:
        y_pred: predicted mask, (H, W) (any number of dims), bool or 0/1.
        y: reference mask, same shape.
        spacing: pixel size, one number or one per axis; None means 1.
        empty: convention for empty masks (module doc).

    Returns:
        The distance; with a mask empty, NaN (``"nan"``), or 0 when both are empty and the
        image diagonal when exactly one is (``"one"``).
    """
    undefined = check_empty(empty)
    p, t = np.ascontiguousarray(y_pred, dtype=bool), np.ascontiguousarray(y, dtype=bool)
    p_any, t_any = bool(p.any()), bool(t.any())
    sp = np.broadcast_to(np.asarray(1.0 if spacing is None else spacing, float), (p.ndim,))
    if not (p_any and t_any) and math.isnan(undefined):
        return math.nan
    if not p_any and not t_any:
        return 0.0
    if p_any != t_any:
        return float(np.sqrt(np.sum((np.asarray(p.shape) * sp) ** 2)))
    if p.ndim != 2 or sp[0] != sp[1]:
        return _hausdorff95_monai(p, t, spacing)
    rows, cols = np.nonzero(p | t)  # crop to the union's box (plus a ring) for speed
    box = np.s_[max(rows.min() - 1, 0) : rows.max() + 2, max(cols.min() - 1, 0) : cols.max() + 2]
    ep, et = _edges(p[box].view(np.uint8)), _edges(t[box].view(np.uint8))
    return max(_directed95(ep, et), _directed95(et, ep)) * float(sp[0])


def binary_metrics(
    y_pred: np.ndarray,
    y: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    hd95: bool = True,
    empty: str = DEFAULT_EMPTY,
) -> dict[str, float]:
    """All segmentation metrics of one image; conventions for empty masks in the module doc.

    Args:
        y_pred: predicted mask, (H, W), bool or 0/1 (uint8 from ``cxrssl.io.read_mask``).
        y: reference mask, same shape.
        spacing: pixel size for HD95, one number or (sy, sx); None means pixels.
        hd95: False skips the boundary distance (the slow part), leaving it out of the dict.
        empty: ``"nan"`` or ``"one"``, the value of an undefined metric (module doc).

    Returns:
        ``{"dice", "iou", "sensitivity", "specificity", "precision"[, "hd95"], "detected",
        "clear"}`` as floats.

    Raises:
        MetricError: shapes differ, a mask is not binary, or an unknown convention.
    """
    undefined = check_empty(empty)
    p, t = np.asarray(y_pred), np.asarray(y)
    if p.shape != t.shape:
        raise MetricError(f"y_pred shape {p.shape} differs from y shape {t.shape}")
    _check_binary("y_pred", p)
    _check_binary("y", t)
    p, t = p.astype(bool, copy=False), t.astype(bool, copy=False)
    tp = int(np.count_nonzero(p & t))
    n_pred, n_true = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    fp, fn = n_pred - tp, n_true - tp
    tn = p.size - tp - fp - fn
    out = {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, undefined),
        "iou": _ratio(tp, tp + fp + fn, undefined),
        "sensitivity": _ratio(tp, tp + fn, undefined),
        "specificity": _ratio(tn, tn + fp, undefined),
        "precision": _ratio(tp, tp + fp, undefined),
    }
    if hd95:
        out["hd95"] = hausdorff95(p, t, spacing, empty)
    out["detected"] = float(tp > 0) if n_true else math.nan
    out["clear"] = float(n_pred == 0) if not n_true else math.nan
    return out


def batch_metrics(
    y_pred: torch.Tensor, y: torch.Tensor, empty: str = DEFAULT_EMPTY
) -> dict[str, torch.Tensor]:
    """Per-sample Dice, IoU, sensitivity, specificity, precision on tensors (no HD95, no sync).

    Same conventions as :func:`binary_metrics` (average with ``nanmean`` under ``"nan"``).
    Values are not checked (that would sync the device): pass thresholded masks.

    Args:
        y_pred: binary prediction, (B, 1, H, W) (any trailing dims), bool or 0/1.
        y: binary reference, same shape.
        empty: ``"nan"`` or ``"one"`` (module doc).

    Returns:
        Metric name -> float tensor (B,) on the input's device.

    Raises:
        MetricError: shapes differ or an unknown convention.
    """
    undefined = check_empty(empty)
    if y_pred.shape != y.shape:
        raise MetricError(f"y_pred shape {tuple(y_pred.shape)} differs from y {tuple(y.shape)}")
    p = y_pred.flatten(1).bool()
    t = y.flatten(1).bool()
    tp = (p & t).sum(1).float()
    fp = p.sum(1).float() - tp
    fn = t.sum(1).float() - tp
    tn = p.shape[1] - tp - fp - fn

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, undefined))

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
    }


def _check_ci(n_boot: int, ci: float) -> None:
    if n_boot < 1:
        raise MetricError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise MetricError(f"ci must lie in (0, 1), got {ci}")


def verdict(ci_low: float, ci_high: float) -> str:
    """The reading of a paired difference's CI: ``"helps"`` (it excludes 0 from above),
    ``"hurts"`` (from below), ``"no measurable difference"``, or ``"not measured"``."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "not measured"
    if ci_low > 0:
        return "helps"
    if ci_high < 0:
        return "hurts"
    return "no measurable difference"


def aggregate(
    values: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    groups: Sequence[object] | np.ndarray | None = None,
) -> Summary:
    """Mean, sample std (ddof=1; 0 for one value) and percentile-bootstrap CI of the mean.

    NaN values are left out and counted in ``n_nan``. With no finite value every field is NaN.
    With ``groups`` (the patient of each value) the bootstrap resamples patients, each with
    all its values (a cluster bootstrap): the mean of a resample is the mean of the values of
    the patients drawn. Otherwise it resamples values.

    Args:
        values: one number per image (or per unit).
        n_boot: bootstrap resamples.
        ci: coverage of the interval, e.g. 0.95.
        seed: seed of the resampling.
        groups: optional cluster (patient id) of each value; ``None`` entries are clusters of
            their own.

    Raises:
        MetricError: a bad ``n_boot`` or ``ci``, or ``groups`` of another length.
    """
    _check_ci(n_boot, ci)
    v = np.asarray(values, dtype=np.float64).ravel()
    nan = np.isnan(v)
    n, n_nan = int((~nan).sum()), int(nan.sum())
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, math.nan, 0, n_nan)
    cluster = _cluster_codes(groups, v.size)
    cluster, v = (None if cluster is None else cluster[~nan]), v[~nan]
    mean = float(v.mean())
    n_patients = 0 if cluster is None else int(np.unique(cluster).size)
    if n == 1:
        return Summary(mean, 0.0, mean, mean, 1, n_nan, n_patients)
    rng = np.random.default_rng(seed)
    if cluster is None:
        boot = v[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    else:
        _, cluster = np.unique(cluster, return_inverse=True)
        sums, counts = np.bincount(cluster, weights=v), np.bincount(cluster).astype(np.float64)
        pick = rng.integers(0, sums.size, size=(n_boot, sums.size))
        boot = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    low, high = np.quantile(boot, [(1 - ci) / 2, (1 + ci) / 2])
    return Summary(mean, float(v.std(ddof=1)), float(low), float(high), n, n_nan, n_patients)


def nanmean(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the values that are not NaN; NaN (without a warning) when there is none."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def _cluster_codes(groups: Sequence[object] | np.ndarray | None, n: int) -> np.ndarray | None:
    """Integer cluster per value (unknown ids: one cluster each), or None without groups."""
    if groups is None:
        return None
    ids = [None if g is None or g == "" else str(g) for g in groups]
    if len(ids) != n:
        raise MetricError(f"{len(ids)} group ids for {n} values")
    known = sorted({g for g in ids if g is not None})
    code = {g: i for i, g in enumerate(known)}
    extra = iter(range(len(known), len(known) + n))
    return np.array([code[g] if g is not None else next(extra) for g in ids], np.int64)


def summarise(
    rows: Sequence[Mapping[str, float]],
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    groups: Sequence[object] | np.ndarray | None = None,
) -> dict[str, Summary]:
    """:func:`aggregate` for every metric of per-image rows (a missing key counts as NaN).

    Args:
        rows: one dict per image, e.g. from :func:`binary_metrics`.
        n_boot: bootstrap resamples.
        ci: coverage of the interval.
        seed: seed of the resampling (the same for every metric).
        groups: patient id of each row, for a bootstrap over patients (see :func:`aggregate`).

    Returns:
        Metric name (in order of first appearance) -> Summary.
    """
    names = list(dict.fromkeys(k for r in rows for k in r))
    return {
        k: aggregate(
            [r.get(k, math.nan) for r in rows], n_boot=n_boot, ci=ci, seed=seed, groups=groups
        )
        for k in names
    }


def _scores_labels(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(probs, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise MetricError(f"probs ({s.size} values) and labels ({y.size} values) differ in size")
    _check_binary("labels", y)
    classes = np.unique(y)
    if classes.size < 2:
        raise MetricError(f"labels hold only class {int(classes[0]) if classes.size else 'none'}")
    return s, y.astype(bool)


def threshold_for_sensitivity(probs: np.ndarray, labels: np.ndarray, target: float = 0.95) -> float:
    """Highest threshold whose sensitivity reaches ``target`` (prediction: prob >= threshold).

    Image level takes one probability per image; pixel level takes the flattened masks of a
    validation set (both arrays are flattened here).

    Args:
        probs: probabilities, any shape.
        labels: 0/1 labels, same number of values; both classes present.
        target: wanted sensitivity in (0, 1].

    Raises:
        MetricError: sizes differ, labels not binary or of one class, target out of range.
    """
    if not 0.0 < target <= 1.0:
        raise MetricError(f"target sensitivity must lie in (0, 1], got {target}")
    s, y = _scores_labels(probs, labels)
    _, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    return float(thr[np.flatnonzero(tpr >= target)[0]])


def threshold_youden(probs: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (prob >= threshold).

    Args and errors as :func:`threshold_for_sensitivity`.
    """
    s, y = _scores_labels(probs, labels)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    # Index 0 is sklearn's "predict nothing" point (threshold inf).
    return float(thr[1:][np.argmax(tpr[1:] - fpr[1:])])


def threshold_f1(probs: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising F1 of the positive class (prob >= threshold).

    Args and errors as :func:`threshold_for_sensitivity`.
    """
    s, y = _scores_labels(probs, labels)
    precision, recall, thr = precision_recall_curve(y, s)
    p, r = precision[:-1], recall[:-1]
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    return float(thr[np.argmax(f1)])


def _resample_counts(
    cluster: np.ndarray, n_clusters: int, b: int, rng: np.random.Generator
) -> np.ndarray:
    """How often each row is drawn in ``b`` cluster resamples, (b, N) float.

    Each resample draws ``n_clusters`` clusters with replacement; a row counts as often as its
    cluster was drawn. With one cluster per row (``cluster = arange(N)``) this is the plain
    bootstrap, from the same draws ``rng.integers(0, N, size=(b, N))``.
    """
    pick = rng.integers(0, n_clusters, size=(b, n_clusters))
    flat = (np.arange(b)[:, None] * n_clusters + pick).ravel()
    drawn = np.bincount(flat, minlength=b * n_clusters).reshape(b, n_clusters)
    return drawn[:, cluster].astype(np.float64)


def _bootstrap_roc_pr(
    scores: np.ndarray,
    labels: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
    cluster: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC and average precision of ``n_boot`` resamples at once; NaN for one-class ones.

    Each resample is reduced to weighted positive/negative counts per distinct score (a row's
    weight: how often it was drawn). ROC AUC is P(score_pos > score_neg) + P(tie) / 2 and
    average precision is sum over thresholds of (recall gain) x precision: the values
    ``roc_auc_score`` and ``average_precision_score`` give on the resample.

    Args:
        scores: (N,) scores.
        labels: (N,) bool labels.
        n_boot: resamples.
        rng: generator of the draws.
        cluster: (N,) integer cluster (patient) of each row for a cluster bootstrap; None
            resamples rows.

    Returns:
        ROC AUC (n_boot,) and average precision (n_boot,).
    """
    n = scores.size
    if cluster is None:
        cluster, n_clusters = np.arange(n), n
    else:
        _, cluster = np.unique(cluster, return_inverse=True)
        n_clusters = int(cluster.max()) + 1
    _, group = np.unique(scores, return_inverse=True)
    n_groups = int(group.max()) + 1
    roc, ap = np.empty(n_boot), np.empty(n_boot)
    chunk = max(1, 4_000_000 // n)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        weight = _resample_counts(cluster, n_clusters, b, rng)
        flat = (np.arange(b)[:, None] * n_groups + group[None, :]).ravel()
        pos_w = (weight * labels).ravel()
        neg_w = (weight * ~labels).ravel()
        pos = np.bincount(flat, weights=pos_w, minlength=b * n_groups).reshape(b, n_groups)
        neg = np.bincount(flat, weights=neg_w, minlength=b * n_groups).reshape(b, n_groups)
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        neg_below = np.cumsum(neg, axis=1) - neg
        wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
        pairs = n_pos * n_neg
        roc[start : start + b] = np.divide(wins, pairs, out=np.full(b, np.nan), where=pairs > 0)
        tp, fp = np.cumsum(pos[:, ::-1], axis=1), np.cumsum(neg[:, ::-1], axis=1)
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
        gain = (pos[:, ::-1] * precision).sum(axis=1)
        ap[start : start + b] = np.divide(gain, n_pos, out=np.full(b, np.nan), where=pairs > 0)
    return roc, ap


def _bootstrap_auc(
    scores: np.ndarray,
    labels: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
    cluster: np.ndarray | None = None,
) -> np.ndarray:
    """ROC AUC of ``n_boot`` resamples (see :func:`_bootstrap_roc_pr`), (n_boot,)."""
    return _bootstrap_roc_pr(scores, labels, n_boot, rng, cluster)[0]


def _interval(boot: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile interval of the finite values; NaN, NaN when there is none."""
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(boot, [(1 - ci) / 2, (1 + ci) / 2])
    return float(low), float(high)


def roc_auc_per_class(
    y_true: np.ndarray,
    y_score: np.ndarray,
    class_names: Sequence[str],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    *,
    groups: Sequence[object] | np.ndarray | None = None,
) -> dict[str, AucSummary]:
    """ROC AUC and PR AUC of each class (scikit-learn) with percentile-bootstrap CIs.

    PR AUC is ``average_precision_score`` (step-wise, no interpolation). Rows whose label is
    NaN (unknown, the torchxrayvision 1/0/NaN contract) are left out of that class. A class
    with one label value only gets NaN and a note instead of an error. Both CIs come from the
    same resamples; resamples holding one class only are dropped from them. With ``groups``
    the bootstrap resamples patients (those with a known label of the class), each drawn
    patient bringing all its rows; otherwise it resamples images.

    Args:
        y_true: labels (N, C) of 0/1/NaN.
        y_score: scores (N, C), probabilities or logits.
        class_names: C names, the keys of the result.
        n_boot: bootstrap resamples per class.
        ci: coverage of the interval.
        seed: seed of the resampling.
        groups: optional patient id of each row, for a cluster bootstrap; ``None`` or empty
            entries are patients of their own.

    Raises:
        MetricError: shapes, the number of names or of group ids disagree.
    """
    _check_ci(n_boot, ci)
    t, s = np.asarray(y_true, dtype=np.float64), np.asarray(y_score, dtype=np.float64)
    if t.ndim != 2 or t.shape != s.shape or t.shape[1] != len(class_names):
        raise MetricError(
            f"y_true {t.shape} and y_score {s.shape} must both be (N, {len(class_names)})"
        )
    cluster = _cluster_codes(groups, t.shape[0])
    rng = np.random.default_rng(seed)
    out: dict[str, AucSummary] = {}
    for c, name in enumerate(class_names):
        known = ~np.isnan(t[:, c])
        labels, scores = t[known, c], s[known, c]
        _check_binary(f"y_true of class {name!r}", labels)
        n_pos = int(labels.sum())
        n_neg = int(labels.size - n_pos)
        if n_pos == 0 or n_neg == 0:
            note = f"only {'negative' if n_pos == 0 else 'positive'} labels; AUC undefined"
            out[name] = AucSummary(math.nan, math.nan, math.nan, n_pos, n_neg, note)
            continue
        rows = None if cluster is None else cluster[known]
        roc, ap = _bootstrap_roc_pr(scores, labels.astype(bool), n_boot, rng, rows)
        (low, high), (pr_low, pr_high) = _interval(roc, ci), _interval(ap, ci)
        out[name] = AucSummary(
            float(roc_auc_score(labels, scores)),
            low,
            high,
            n_pos,
            n_neg,
            pr_auc=float(average_precision_score(labels, scores)),
            pr_low=pr_low,
            pr_high=pr_high,
            n_patients=0 if rows is None else int(np.unique(rows).size),
        )
    return out


def mean_auc(results: Mapping[str, AucSummary]) -> float:
    """Mean ROC AUC over the classes whose AUC is defined; NaN when none is."""
    return nanmean([r.auc for r in results.values()])
