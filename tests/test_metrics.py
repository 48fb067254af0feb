"""Metrics: hand-computed cases, empty-mask conventions, aggregation, thresholds, AUC."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrssl.errors import CxrsslError
from cxrssl.metrics import (
    METRIC_NAMES,
    AucSummary,
    MetricError,
    _bootstrap_auc,
    _bootstrap_roc_pr,
    aggregate,
    batch_metrics,
    binary_metrics,
    hausdorff95,
    mean_auc,
    roc_auc_per_class,
    summarise,
    threshold_f1,
    threshold_for_sensitivity,
    threshold_youden,
)


def _pair_3_1_2_10() -> tuple[np.ndarray, np.ndarray]:
    """4 x 4 pair with TP = 3, FP = 1, FN = 2, TN = 10."""
    y = np.zeros((4, 4), np.uint8)
    y[0, :] = 1  # 4 true pixels in row 0
    y[1, 0] = 1  # 5th true pixel
    p = np.zeros((4, 4), np.uint8)
    p[0, :3] = 1  # 3 hits
    p[3, 3] = 1  # 1 false positive
    return p, y


def test_hand_computed_pair() -> None:
    p, y = _pair_3_1_2_10()
    m = binary_metrics(p, y, hd95=False)
    assert set(m) == set(METRIC_NAMES) - {"hd95"}
    assert m["dice"] == pytest.approx(6 / 9)  # 2TP / (2TP + FP + FN)
    assert m["iou"] == pytest.approx(3 / 6)
    assert m["sensitivity"] == pytest.approx(3 / 5)
    assert m["specificity"] == pytest.approx(10 / 11)
    assert m["precision"] == pytest.approx(3 / 4)


def _sq(size: int = 16, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    if box is not None:
        r0, r1, c0, c1 = box
        m[r0:r1, c0:c1] = 1
    return m


DIAG16 = math.sqrt(16**2 + 16**2)
FULL = (0, 16, 0, 16)
SQUARE = (4, 8, 4, 8)

NAN = math.nan
# (prediction box, truth box, expected under "nan", expected under "one"): the documented
# empty-mask conventions (image-level "detected" / "clear" are the same in both).
EMPTY_CASES = [
    (None, None,
     {"dice": NAN, "iou": NAN, "sensitivity": NAN, "specificity": 1, "precision": NAN,
      "hd95": NAN, "detected": NAN, "clear": 1},
     {"dice": 1, "iou": 1, "sensitivity": 1, "specificity": 1, "precision": 1, "hd95": 0}),
    (None, SQUARE,
     {"dice": 0, "iou": 0, "sensitivity": 0, "specificity": 1, "precision": NAN,
      "hd95": NAN, "detected": 0, "clear": NAN},
     {"dice": 0, "iou": 0, "sensitivity": 0, "specificity": 1, "precision": 1,
      "hd95": DIAG16}),
    (SQUARE, None,
     {"dice": 0, "iou": 0, "sensitivity": NAN, "specificity": 240 / 256, "precision": 0,
      "hd95": NAN, "detected": NAN, "clear": 0},
     {"dice": 0, "iou": 0, "sensitivity": 1, "specificity": 240 / 256, "precision": 0,
      "hd95": DIAG16}),
    (FULL, FULL,
     {"dice": 1, "iou": 1, "sensitivity": 1, "specificity": NAN, "precision": 1, "hd95": 0,
      "detected": 1, "clear": NAN},
     {"dice": 1, "iou": 1, "sensitivity": 1, "specificity": 1, "precision": 1, "hd95": 0}),
    (SQUARE, FULL,
     {"dice": 32 / 272, "iou": 16 / 256, "sensitivity": 16 / 256, "specificity": NAN,
      "precision": 1, "detected": 1},
     {"dice": 32 / 272, "iou": 16 / 256, "sensitivity": 16 / 256, "specificity": 1,
      "precision": 1}),
]  # fmt: skip


@pytest.mark.parametrize(("pred", "true", "nan_rule", "one_rule"), EMPTY_CASES)
def test_empty_mask_conventions(
    pred: tuple[int, int, int, int] | None,
    true: tuple[int, int, int, int] | None,
    nan_rule: dict[str, float],
    one_rule: dict[str, float],
) -> None:
    default = binary_metrics(_sq(box=pred), _sq(box=true))
    assert default.keys() == set(METRIC_NAMES)
    for k, v in nan_rule.items():
        assert default[k] == pytest.approx(v, nan_ok=True), k
    legacy = binary_metrics(_sq(box=pred), _sq(box=true), empty="one")
    for k, v in one_rule.items():
        assert legacy[k] == pytest.approx(v), k
    assert all(math.isfinite(legacy[k]) for k in METRIC_NAMES[:6])


def test_undefined_images_are_left_out_and_counted() -> None:
    rows = [
        binary_metrics(_sq(box=SQUARE), _sq(box=SQUARE), hd95=False),  # Dice 1
        binary_metrics(_sq(box=(4, 8, 4, 6)), _sq(box=SQUARE), hd95=False),  # Dice 2/3
        binary_metrics(_sq(), _sq(), hd95=False),  # both empty: undefined
    ]
    dice = summarise(rows, n_boot=10)["dice"]
    assert (dice.n, dice.n_nan) == (2, 1)
    assert dice.mean == pytest.approx((1 + 2 / 3) / 2)
    legacy = [binary_metrics(_sq(), _sq(), hd95=False, empty="one")]
    assert summarise(legacy, n_boot=10)["dice"].mean == 1.0
    with pytest.raises(MetricError, match="unknown empty-mask convention 'zero'"):
        binary_metrics(_sq(), _sq(), empty="zero")


def test_hd95_known_distances() -> None:
    a, b = _sq(box=(5, 6, 5, 6)), _sq(box=(5, 6, 8, 9))  # two pixels 3 columns apart
    assert hausdorff95(a, b) == pytest.approx(3.0)
    assert hausdorff95(a, b, spacing=(2.0, 0.5)) == pytest.approx(1.5)
    shifted = _sq(box=(4, 8, 6, 10))  # SQUARE moved 2 columns right
    assert binary_metrics(_sq(box=SQUARE), shifted)["hd95"] == pytest.approx(2.0)
    assert hausdorff95(_sq(box=SQUARE), shifted, spacing=0.5) == pytest.approx(1.0)
    assert hausdorff95(_sq(box=SQUARE), _sq(box=SQUARE)) == 0.0


def test_hd95_one_empty_is_diagonal_in_spacing_units() -> None:
    d = hausdorff95(_sq(), _sq(box=SQUARE), spacing=(1.0, 2.0), empty="one")
    assert d == pytest.approx(math.sqrt(16**2 + 32**2))
    assert math.isnan(hausdorff95(_sq(), _sq(box=SQUARE)))


def test_bool_masks_accepted_and_bad_inputs_rejected() -> None:
    p, y = _pair_3_1_2_10()
    assert binary_metrics(p.astype(bool), y.astype(bool), hd95=False) == binary_metrics(
        p, y, hd95=False
    )
    with pytest.raises(MetricError, match=r"must be binary .* got values up to 255"):
        binary_metrics(p * 255, y)
    with pytest.raises(CxrsslError, match=r"y_pred shape \(4, 4\) differs from y shape \(4, 5\)"):
        binary_metrics(p, np.zeros((4, 5), np.uint8))


def test_batch_metrics_match_per_image() -> None:
    rng = np.random.default_rng(1)
    masks = rng.random((6, 2, 1, 8, 8)) > 0.6
    masks[0, :] = False  # both empty
    masks[1, 0] = False  # prediction empty
    masks[2, 1] = False  # truth empty
    masks[3, 1] = True  # truth covers everything
    pred, true = torch.from_numpy(masks[:, 0]), torch.from_numpy(masks[:, 1]).float()
    for empty in ("nan", "one"):
        out = batch_metrics(pred, true, empty=empty)
        for i in range(6):
            ref = binary_metrics(masks[i, 0, 0], masks[i, 1, 0], hd95=False, empty=empty)
            for k in out:
                assert out[k][i].item() == pytest.approx(ref[k], abs=1e-6, nan_ok=True), (i, k)
    assert out["dice"].shape == (6,)
    with pytest.raises(MetricError, match=r"differs from y"):
        batch_metrics(pred, true[:, :, :4])


def test_aggregate_matches_numpy_and_ci_is_sensible() -> None:
    v = np.random.default_rng(0).normal(0.8, 0.1, size=200)
    s = aggregate(v, n_boot=2000, seed=3)
    assert s.mean == pytest.approx(v.mean())
    assert s.std == pytest.approx(v.std(ddof=1))
    assert s.n == 200 and s.n_nan == 0
    assert s.ci_low < s.mean < s.ci_high
    # percentile bootstrap of a mean ~ normal interval 2 * 1.96 * sd / sqrt(n)
    assert s.ci_high - s.ci_low == pytest.approx(2 * 1.96 * v.std(ddof=1) / math.sqrt(200), rel=0.1)
    assert aggregate(v, n_boot=2000, seed=3) == s
    assert aggregate(v, n_boot=2000, ci=0.5, seed=3).ci_low > s.ci_low


def test_aggregate_edge_cases() -> None:
    s = aggregate([0.5, math.nan, 0.7, math.nan])
    assert (s.n, s.n_nan) == (2, 2)
    assert s.mean == pytest.approx(0.6)
    one = aggregate([0.4])
    assert (one.mean, one.std, one.ci_low, one.ci_high, one.n) == (0.4, 0.0, 0.4, 0.4, 1)
    none = aggregate([math.nan])
    assert none.n == 0 and none.n_nan == 1 and math.isnan(none.mean)
    with pytest.raises(MetricError, match=r"ci must lie in \(0, 1\), got 95"):
        aggregate([1.0, 2.0], ci=95)


def test_bootstrap_resamples_patients_not_images() -> None:
    rng = np.random.default_rng(0)
    per_patient = rng.normal(0.8, 0.1, size=60)
    single = aggregate(per_patient, n_boot=4000, seed=1, groups=np.arange(60))
    # every patient has 5 near-identical follow-up films
    films = np.repeat(per_patient, 5) + rng.normal(0, 1e-4, size=300)
    patients = np.repeat([f"p{i}" for i in range(60)], 5)
    clustered = aggregate(films, n_boot=4000, seed=1, groups=patients)
    naive = aggregate(films, n_boot=4000, seed=1)
    width = single.ci_high - single.ci_low
    assert clustered.ci_high - clustered.ci_low == pytest.approx(width, rel=0.15)
    assert naive.ci_high - naive.ci_low == pytest.approx(width / math.sqrt(5), rel=0.15)
    assert (clustered.n, clustered.n_patients, naive.n_patients) == (300, 60, 0)
    assert clustered.mean == pytest.approx(films.mean())
    # NaN values leave their patients' other values in; unknown ids are patients of their own
    v = [0.5, math.nan, 0.7, 0.9]
    s = aggregate(v, n_boot=100, groups=["a", "a", None, None])
    assert (s.n, s.n_nan, s.n_patients) == (3, 1, 3)
    with pytest.raises(MetricError, match="3 group ids for 4 values"):
        aggregate(v, groups=["a", "b", "c"])


def test_summarise_rows() -> None:
    rows = [{"dice": 1.0, "iou": 1.0}, {"dice": 0.5}, {"dice": 0.0, "iou": 0.0}]
    out = summarise(rows, n_boot=100)
    assert list(out) == ["dice", "iou"]
    assert out["dice"].mean == pytest.approx(0.5) and out["dice"].n == 3
    assert (out["iou"].n, out["iou"].n_nan) == (2, 1)
    assert out["dice"].as_dict()["n"] == 3


# probabilities 0.1 .. 1.0; positives at 0.4 and 0.6 .. 1.0 (6 positives, 4 negatives)
PROBS = np.round(np.arange(1, 11) / 10, 1)
LABELS = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 1])


def test_threshold_for_sensitivity() -> None:
    assert threshold_for_sensitivity(PROBS, LABELS, target=0.95) == pytest.approx(0.4)
    assert threshold_for_sensitivity(PROBS, LABELS, target=0.8) == pytest.approx(0.6)  # 5/6
    assert threshold_for_sensitivity(PROBS, LABELS, target=0.5) == pytest.approx(0.8)  # 3/6
    with pytest.raises(MetricError, match=r"target sensitivity must lie in \(0, 1\], got 0"):
        threshold_for_sensitivity(PROBS, LABELS, target=0)


def test_youden_and_f1_thresholds_differ_as_computed_by_hand() -> None:
    # at 0.6: sens 5/6, spec 1 -> J 0.833, F1 10/11; at 0.4: sens 1, spec 3/4 -> J 0.75, F1 12/13
    assert threshold_youden(PROBS, LABELS) == pytest.approx(0.6)
    assert threshold_f1(PROBS, LABELS) == pytest.approx(0.4)


def test_thresholds_take_pixel_maps_and_reject_one_class() -> None:
    probs = PROBS.reshape(2, 5)
    assert threshold_youden(probs, LABELS.reshape(2, 5)) == pytest.approx(0.6)
    with pytest.raises(MetricError, match=r"labels hold only class 0"):
        threshold_f1(PROBS, np.zeros(10))
    with pytest.raises(MetricError, match=r"probs \(10 values\) and labels \(9 values\)"):
        threshold_youden(PROBS, LABELS[:9])


def test_bootstrap_auc_equals_sklearn_on_each_resample() -> None:
    rng = np.random.default_rng(5)
    n = 40
    labels = rng.random(n) < 0.3
    scores = np.round(rng.random(n) + 0.4 * labels, 1)  # rounded: ties
    boot = _bootstrap_auc(scores, labels, 50, np.random.default_rng(9))
    idx = np.random.default_rng(9).integers(0, n, size=(50, n))
    for b, r in enumerate(idx):
        if labels[r].all() or not labels[r].any():
            assert math.isnan(boot[b])
        else:
            assert boot[b] == pytest.approx(roc_auc_score(labels[r], scores[r]), abs=1e-12)


def test_roc_auc_per_class() -> None:
    rng = np.random.default_rng(2)
    n = 300
    y = (rng.random((n, 3)) < 0.3).astype(float)
    s = rng.random((n, 3)) + y * np.array([0.6, 0.1, 0.0])
    y[:50, 1] = np.nan  # unknown labels of class b
    y[:, 2] = 0.0  # class c: no positives
    out = roc_auc_per_class(y, s, ["a", "b", "c"], n_boot=500)
    assert out["a"].auc == pytest.approx(roc_auc_score(y[:, 0], s[:, 0]))
    assert out["b"].auc == pytest.approx(roc_auc_score(y[50:, 1], s[50:, 1]))
    assert out["b"].n_pos + out["b"].n_neg == n - 50
    for k in "ab":
        assert out[k].ci_low < out[k].auc < out[k].ci_high
    assert out["a"].ci_low > out["b"].ci_high  # a separates far better
    assert math.isnan(out["c"].auc) and out["c"].note == "only negative labels; AUC undefined"
    with pytest.raises(MetricError, match=r"must both be \(N, 2\)"):
        roc_auc_per_class(y, s, ["a", "b"])


def test_hd95_matches_monai_on_random_shapes() -> None:
    import cv2

    from cxrssl.metrics import _hausdorff95_monai

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(5, 70, 2))
        p, t = (
            cv2.blur((rng.random((h, w)) < rng.uniform(0.1, 0.9)).astype(np.float32), (5, 5)) > 0.5
            for _ in range(2)
        )
        if p.any() and t.any():
            assert hausdorff95(p, t) == pytest.approx(_hausdorff95_monai(p, t, None), abs=1e-4)
            assert hausdorff95(p, t, 0.5) == pytest.approx(_hausdorff95_monai(p, t, 0.5), abs=1e-4)
            checked += 1
    assert checked > 40


def _two_classes() -> tuple[np.ndarray, np.ndarray]:
    """120 rows, class b with 20 unknown labels, rounded scores (ties)."""
    rng = np.random.default_rng(11)
    y = (rng.random((120, 2)) < 0.35).astype(float)
    s = np.round(rng.random((120, 2)) + y * np.array([0.5, 0.2]), 2)
    y[:20, 1] = np.nan
    return y, s


def test_roc_auc_per_class_image_bootstrap_unchanged() -> None:
    # Printed by the code before groups and PR AUC were added (cxrssl 0.2.0, commit fadec34),
    # same call: the image bootstrap draws rng.integers(0, n, size=(b, n)) as it did.
    y, s = _two_classes()
    out = roc_auc_per_class(y, s, ["a", "b"], n_boot=200, seed=3)
    assert (out["a"].auc, out["a"].ci_low, out["a"].ci_high) == (
        0.8523754007577965,
        0.7694405965128939,
        0.9109641560438864,
    )
    assert (out["b"].auc, out["b"].ci_low, out["b"].ci_high) == (
        0.6710526315789473,
        0.578247549019608,
        0.760546875,
    )
    assert out["a"].n_patients == 0


def test_roc_auc_per_class_distinct_groups() -> None:
    y, s = _two_classes()
    image = roc_auc_per_class(y, s, ["a", "b"], n_boot=200, seed=3)
    # Ids whose sorted order is the row order: each row its own cluster, coded 0..n-1, so the
    # cluster draws are the image draws by construction.
    ordered = roc_auc_per_class(
        y, s, ["a", "b"], n_boot=200, seed=3, groups=[f"p{i:03d}" for i in range(120)]
    )
    assert ordered == {k: replace(v, n_patients=120 if k == "a" else 100) for k, v in image.items()}
    shuffled = roc_auc_per_class(
        y, s, ["a", "b"], n_boot=200, seed=3, groups=np.random.default_rng(0).permutation(120)
    )
    for k in "ab":
        assert shuffled[k].auc == image[k].auc and shuffled[k].pr_auc == image[k].pr_auc
        assert shuffled[k].ci_low == pytest.approx(image[k].ci_low, abs=0.05)
        assert shuffled[k].ci_high == pytest.approx(image[k].ci_high, abs=0.05)


def test_cluster_bootstrap_widens_ci_for_duplicated_rows() -> None:
    rng = np.random.default_rng(4)
    n_patients, copies = 40, 5
    labels = np.repeat((rng.random(n_patients) < 0.4).astype(float), copies)
    scores = np.repeat(rng.random(n_patients), copies) + 0.3 * labels
    y, s = labels[:, None], scores[:, None]
    patients = np.repeat([f"p{i:02d}" for i in range(n_patients)], copies)  # sorted: row order
    image = roc_auc_per_class(y, s, ["x"], n_boot=400)["x"]
    cluster = roc_auc_per_class(y, s, ["x"], n_boot=400, groups=patients)["x"]
    assert cluster.auc == image.auc and cluster.n_patients == n_patients
    assert cluster.ci_high - cluster.ci_low > 1.5 * (image.ci_high - image.ci_low)
    assert cluster.pr_high - cluster.pr_low > 1.5 * (image.pr_high - image.pr_low)
    # The cluster bootstrap of the duplicated rows is the image bootstrap of one row each.
    once = roc_auc_per_class(y[::copies], s[::copies], ["x"], n_boot=400)["x"]
    assert (cluster.ci_low, cluster.ci_high) == pytest.approx((once.ci_low, once.ci_high))
    with pytest.raises(MetricError, match="3 group ids for 200 values"):
        roc_auc_per_class(y, s, ["x"], groups=[1, 2, 3])


def test_bootstrap_roc_pr_equals_sklearn_with_weights() -> None:
    rng = np.random.default_rng(8)
    n = 30
    labels = rng.random(n) < 0.4
    scores = np.round(rng.random(n) + 0.3 * labels, 1)
    cluster = rng.integers(0, 12, n)
    roc, ap = _bootstrap_roc_pr(scores, labels, 40, np.random.default_rng(1), cluster)
    _, codes = np.unique(cluster, return_inverse=True)
    k = int(codes.max()) + 1
    pick = np.random.default_rng(1).integers(0, k, size=(40, k))
    checked = 0
    for b in range(40):
        w = np.bincount(pick[b], minlength=k)[codes].astype(float)
        if labels[w > 0].all() or not labels[w > 0].any():
            assert math.isnan(roc[b]) and math.isnan(ap[b])
            continue
        assert roc[b] == pytest.approx(roc_auc_score(labels, scores, sample_weight=w), abs=1e-12)
        assert ap[b] == pytest.approx(
            average_precision_score(labels, scores, sample_weight=w), abs=1e-12
        )
        # Weights are repeated rows.
        rep = np.repeat(np.arange(n), w.astype(int))
        assert ap[b] == pytest.approx(average_precision_score(labels[rep], scores[rep]), abs=1e-12)
        checked += 1
    assert checked > 30


def test_pr_auc_and_mean_auc() -> None:
    rng = np.random.default_rng(2)
    n = 200
    y = (rng.random((n, 3)) < 0.3).astype(float)
    s = rng.random((n, 3)) + y * np.array([0.6, 0.2, 0.0])
    y[:30, 1] = np.nan
    y[:, 2] = 0.0
    out = roc_auc_per_class(y, s, ["a", "b", "c"], n_boot=300)
    assert out["a"].pr_auc == pytest.approx(average_precision_score(y[:, 0], s[:, 0]))
    assert out["b"].pr_auc == pytest.approx(average_precision_score(y[30:, 1], s[30:, 1]))
    for k in "ab":
        assert out[k].pr_low < out[k].pr_auc < out[k].pr_high
    assert math.isnan(out["c"].pr_auc) and math.isnan(out["c"].pr_low)
    assert mean_auc(out) == pytest.approx((out["a"].auc + out["b"].auc) / 2)
    assert math.isnan(mean_auc({"c": out["c"]})) and math.isnan(mean_auc({}))
    old_style = AucSummary(0.7, 0.6, 0.8, 10, 20)  # constructors without the new fields
    assert math.isnan(old_style.pr_auc) and old_style.note == "" and old_style.n_patients == 0
    assert list(old_style.as_dict())[-4:] == ["pr_auc", "pr_low", "pr_high", "n_patients"]
