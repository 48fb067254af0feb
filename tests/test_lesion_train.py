"""``cxrssl train-lesion`` and ``cxrssl predict`` on a lesion run, end to end on generated
images with a bright disc "nodule" (tiny sizes, a few steps)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrssl.cli.main import main
from cxrssl.errors import CxrsslError
from cxrssl.lesions.points import Point, read_points
from cxrssl.tasks.lesion import LesionConfig, match_detections, prior_builder, train_lesion
from cxrssl.train import Trainer

FAST = ["--size", "64", "--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--no-progress"]


def write_nodules(root: Path, n: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """``n`` 48 x 64 noise images, all but two with one bright disc, their points CSV and a
    ``labels.csv`` with two images per patient."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(n):
        image = rng.normal(0.35, 0.05, (48, 64)).clip(0, 1)
        if i >= 2:
            x, y, d = float(rng.uniform(15, 49)), float(rng.uniform(12, 36)), 10.0
            yy, xx = np.mgrid[:48, :64]
            image[(xx - x) ** 2 + (yy - y) ** 2 <= (d / 2) ** 2] = 0.9
            rows.append({"filename": f"img{i}.png", "x": x, "y": y, "diameter_px": d})
        cv2.imwrite(str(images / f"img{i}.png"), np.rint(image * 255).astype(np.uint8))
    labels = "filename,patient_id\n" + "".join(f"img{i}.png,p{i // 2}\n" for i in range(n))
    (root / "labels.csv").write_text(labels)  # two films per patient
    points = root / "nodules.csv"
    with points.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["filename", "x", "y", "diameter_px"])
        writer.writeheader()
        writer.writerows(rows)
    return images, points


def test_train_lesion_with_points_and_a_heatmap_prior_then_predict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, points = write_nodules(tmp_path)
    run = tmp_path / "run"
    args = ["--images", str(images), "--points", str(points), "--out", str(run)]
    args += ["--priors", "heatmap", "--prior-shift-mm", "1", "--folds", "2"]
    args += ["--val-fraction", "0.25", "--device", "cpu", "--seed", "3", "--patch", "32", *FAST]
    assert main(["train-lesion", *args]) == 0
    printed = capsys.readouterr().out
    assert "dice" in printed and "detection:" in printed

    # Truth masks grown from the points, one per image (empty for the two negatives).
    grown = {
        p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (run / "masks").glob("*.png")
    }
    assert len(grown) == 8 and all(m.shape == (48, 64) for m in grown.values())
    assert not grown["img0"].any() and not grown["img1"].any() and grown["img2"].any()
    assert (run / "masks" / "grown.csv").is_file()
    assert len(list((run / "predictions").glob("*.png"))) == 8
    assert {"best.pt", "last.pt", "metrics.csv"} <= {p.name for p in (run / "fold_1").iterdir()}

    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["config"]["priors"] == "heatmap"
    assert summary["config"]["patch"] == 32  # trained on patches, scored on whole images
    assert summary["config"]["model_kwargs"]["in_channels"] == 2
    for name in ("dice", "iou", "precision", "sensitivity"):
        assert name in summary["per_image"]
    assert "empty" in summary["empty_convention"].lower()
    found = summary["detection"]
    assert found["n_truth"] == 6 and found["n_images"] == 8
    assert "radius" in found["hit_rule"]
    assert all("detection" in f for f in summary["folds"])
    header = (run / "fold_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_tversky", "train_weighted_bce", "val_dice_pooled"} <= set(header)

    with (run / "per_image.csv").open() as fh:
        folds = {(r["patient_id"], r["fold"]) for r in csv.DictReader(fh)}
    assert len(folds) == 4  # patient-level folds: both films of a patient on one side

    detections = read_points(run / "detections.csv")
    assert all(d.score is not None and 0 < d.score <= 1 for d in detections)
    assert {d.stem for d in detections} <= set(grown)
    evaluate = ["evaluate-detections", str(run / "detections.csv"), str(points)]
    assert main([*evaluate, "--images", str(images)]) == 0  # the FROC reads the run's file
    capsys.readouterr()

    # predict on the run: masks at the original size and detections.csv; the heatmap needs
    # the points.
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(images), str(out), "--device", "cpu"]) == 2
    assert "--points" in capsys.readouterr().err
    assert main(["predict", str(run), str(images), str(out), "--points", str(points)]) == 0
    printed = capsys.readouterr().out
    assert "8 mask(s) written" in printed and "detections" in printed
    masks = sorted(out.glob("*.png"))
    assert len(masks) == 8
    assert cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED).shape == (48, 64)
    read_points(out / "detections.csv")  # the points format, readable by evaluate-detections


def test_masks_run_without_prior_resumes_without_retraining(tmp_path: Path) -> None:
    images, points = write_nodules(tmp_path, n=6, seed=1)
    masks = tmp_path / "masks"
    masks.mkdir()
    for p in read_points(points):
        mask = np.zeros((48, 64), np.uint8)
        cv2.circle(mask, (round(p.x), round(p.y)), round(p.radius_px), 255, -1)
        cv2.imwrite(str(masks / f"{p.stem}.png"), mask)
    for i in range(2):
        cv2.imwrite(str(masks / f"img{i}.png"), np.zeros((48, 64), np.uint8))
    config = LesionConfig(
        model_kwargs={"encoder": "unet", "features": [8, 16, 32, 64, 128]},
        size=64,
        epochs=2,
        batch_size=2,
        lr=1e-3,
        folds=2,
        val_fraction=0.0,
        patience=0,
        device="cpu",
        progress=False,
        tensorboard=False,
    )
    run = tmp_path / "run"
    summary = train_lesion(images, run, config, masks=masks)
    assert summary["config"]["model_kwargs"]["in_channels"] == 1  # the ablation: no prior
    assert "detection" not in summary  # no points: masks only
    assert (run / "detections.csv").is_file()
    before = (run / "fold_0" / "metrics.csv").read_text()

    epochs: list[float] = []

    def count(trainer: Trainer, row: dict[str, float]) -> None:
        epochs.append(row["epoch"])

    again = train_lesion(images, run, config, masks=masks, resume=True, callbacks=[count])
    assert epochs == []  # finished folds are not retrained
    assert (run / "fold_0" / "metrics.csv").read_text() == before
    assert again["folds"][0]["dice"] == pytest.approx(summary["folds"][0]["dice"], nan_ok=True)


def test_one_truth_source_and_a_heatmap_needs_points(tmp_path: Path) -> None:
    images, points = write_nodules(tmp_path, n=2)
    with pytest.raises(CxrsslError, match="one of them"):
        train_lesion(images, tmp_path / "r", LesionConfig(), masks=images, points=points)
    args = ["--images", str(images), "--masks", str(images), "--out", str(tmp_path / "r")]
    code = main(["train-lesion", *args, "--priors", "heatmap"])
    assert code == 2


def test_generated_heatmap_prior_is_seeded_per_image_and_shifted() -> None:
    points = read_points_rows([("a.png", 30.0, 20.0, 8.0)])
    image = np.zeros((48, 64), np.float32)
    build = prior_builder("heatmap", points, shift_mm=3.5, pixel_mm=0.35, seed=7)
    assert build is not None
    first, second = build(Path("x/a.png"), image), build(Path("y/a.png"), image)
    np.testing.assert_array_equal(first, second)  # same stem and seed: same direction
    peak = np.unravel_index(np.argmax(first), first.shape)
    assert 1 < math.hypot(peak[1] - 30, peak[0] - 20) <= 10 + 1.5  # up to 3.5 mm: 10 px
    other = prior_builder("heatmap", points, shift_mm=3.5, pixel_mm=0.35, seed=8)
    assert other is not None and not np.array_equal(other(Path("a.png"), image), first)
    assert prior_builder(None) is None


def test_match_detections_counts_hits_within_the_truth_radius() -> None:
    truth = read_points_rows([("a.png", 10.0, 10.0, 6.0), ("b.png", 40.0, 40.0, 10.0)])
    found = read_points_rows(
        [("a.png", 12.0, 11.0, 4.0), ("a.png", 30.0, 30.0, 4.0), ("c.png", 5.0, 5.0, 4.0)]
    )
    figures = match_detections(found, truth, ["a", "b", "c"])
    assert figures["found"] == 1 and figures["n_truth"] == 2
    assert figures["sensitivity"] == 0.5
    assert figures["true_detections"] == 1 and figures["precision"] == pytest.approx(1 / 3)
    assert figures["fp_per_image"] == pytest.approx(2 / 3)
    assert math.isnan(match_detections([], [], ["a"])["precision"])


def read_points_rows(rows: list[tuple[str, float, float, float]]) -> list[Point]:
    return [Point(f, x, y, d) for f, x, y, d in rows]


def test_train_lesion_flags_reach_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrssl.tasks import lesion

    seen: list[tuple[LesionConfig, object, object]] = []

    def fake(
        images: Path, out: Path, config: LesionConfig, masks: Path, points: Path, resume: bool
    ) -> dict[str, object]:
        seen.append((config, masks, points))
        return {}

    monkeypatch.setattr(lesion, "train_lesion", fake)
    base = ["train-lesion", "--images", "a", "--points", "p.csv", "--out", str(tmp_path / "r")]
    assert main(base) == 0
    config, masks, points = seen[-1]
    assert (config.model, config.loss, config.size, config.priors) == (
        "prior_guided",
        "lesion",
        512,
        None,
    )
    assert config.lr == 2e-5 and config.lr * config.encoder_lr_mult == pytest.approx(5e-6)
    assert config.patience == 10 and masks is None and points == Path("p.csv")
    args = ["--val-fraction", "0", "--model", "unet", "--lr", "1e-4", "--encoder-lr", "1e-5"]
    assert main([*base, *args, "--priors", "lungs"]) == 0
    config = seen[-1][0]
    assert (config.model, config.patience, config.priors) == ("unet", 0, "lungs")
    assert config.encoder_lr_mult == pytest.approx(0.1)
    assert main([*base, "--model", "unet", "--encoder", "resnet18"]) == 2
    with pytest.raises(SystemExit):  # the truth is required: masks or points
        main(["train-lesion", "--images", "a", "--out", str(tmp_path / "r")])


def test_loss_args_switch_a_component_off_and_bad_ones_fail_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrssl.tasks import lesion

    seen: list[LesionConfig] = []
    monkeypatch.setattr(lesion, "train_lesion", lambda *a, **k: seen.append(a[2]) or {})
    base = ["train-lesion", "--images", "a", "--points", "p.csv", "--out", str(tmp_path / "r")]
    off = ["--loss-arg", "weighted_bce_weight=0", "--loss-arg", "tversky_weight=0.5"]
    assert main([*base, *off]) == 0
    config = seen[-1]
    assert config.loss_kwargs == {"weighted_bce_weight": 0.0, "tversky_weight": 0.5}
    loss = config.make_task().loss
    assert set(loss.parts) == {"tversky", "focal_tversky"}  # the BCE is neither run nor logged
    assert main([*base, "--loss-arg", "weighted_bce_weight"]) == 2  # no value
    assert main([*base, "--loss-arg", "bogus=1"]) == 2  # the loss has no such argument
    assert len(seen) == 1  # neither reached training
