"""Segmentation task: threshold tuning, post-processing, labelled draws, deep supervision,
k-fold training with exact resume, prediction at the original size."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cxrssl.anatomy import crop_box, lung_masks
from cxrssl.data import DatasetWarning
from cxrssl.errors import CxrsslError, DatasetError
from cxrssl.geometry import apply_crop, letterbox, uncrop, unletterbox, whole_box
from cxrssl.io import read_image, read_mask
from cxrssl.losses import get_loss
from cxrssl.nets import create_net
from cxrssl.tasks import Predictor, SegConfig, seg_data, train_seg
from cxrssl.tasks.lesion import LesionConfig
from cxrssl.tasks.seg_data import draw_labelled, load_cache, open_folders, to_uint8
from cxrssl.tasks.seg_task import (
    DEFAULT_AUGMENT,
    HIGH_THRESHOLDS,
    THRESHOLDS,
    SegmentationTask,
    postprocess,
    predict_probs,
    tune_threshold,
)
from cxrssl.tasks.segmentation import _score, original_masks, resolve_crop
from cxrssl.train import Trainer, load_checkpoint, save_checkpoint

SIZES = [(64, 56), (60, 64), (64, 64), (50, 64), (64, 48), (58, 60), (64, 60), (56, 64)]


def write_lungs(root: Path, n: int = 8) -> tuple[Path, Path]:
    """``n`` synthetic radiographs (two bright ellipses on noise) of varied sizes, masks,
    and a labels.csv with two images per patient."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["filename,patient_id"]
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        mask = np.zeros((h, w), np.uint8)
        dy = int(rng.integers(-3, 4))
        for cx in (w // 3, 2 * w // 3):
            cv2.ellipse(mask, (cx, h // 2 + dy), (w // 8, h // 3), 0, 0, 360, 1, -1)
        image = 60 + 120 * mask + rng.integers(0, 40, (h, w))
        cv2.imwrite(str(root / "images" / f"img{i}.png"), image.astype(np.uint8))
        cv2.imwrite(str(root / "masks" / f"img{i}.png"), mask * 255)
        rows.append(f"img{i}.png,p{i // 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "images", root / "masks"


def quick(**kw: object) -> SegConfig:
    base = dict(
        size=32,
        epochs=2,
        folds=2,
        batch_size=4,
        model_kwargs={"features": (4, 8, 16)},
        device="cpu",
        progress=False,
        tensorboard=False,
    )
    return SegConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_tune_threshold_finds_the_best_dice_and_a_sensitivity_target() -> None:
    truth = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    truth[:, :, 2:6, 2:6] = 1
    probs = truth.float() * 0.5 + 0.1  # foreground 0.6, background 0.1
    probs[:, :, 2, 2:6] = 0.35  # one row of weak foreground
    threshold, dice = tune_threshold(probs, truth)
    assert threshold <= 0.35 and dice == pytest.approx(1.0)
    strict, _ = tune_threshold(probs, truth, target_sensitivity=0.7)
    assert 0.35 < strict <= 0.6  # the highest threshold that still finds 75 % of pixels


def test_tune_threshold_earns_nothing_for_blanking_images_without_a_finding() -> None:
    # 2 lesion images, best at a low threshold (weak lesion probabilities 0.3); 6 images with
    # no lesion whose background sits at 0.25. Under the old rule (Dice 1 for an empty pair)
    # blanking those 6 pulled the threshold above 0.3 and lost the lesions.
    truth = torch.zeros(8, 1, 8, 8, dtype=torch.uint8)
    truth[:2, :, 2:6, 2:6] = 1
    probs = torch.full((8, 1, 8, 8), 0.05)
    probs[:2][truth[:2].bool()] = 0.3
    probs[2:] = 0.25
    threshold, dice = tune_threshold(probs, truth)
    assert threshold <= 0.3 and dice == pytest.approx(1.0)
    none, undefined = tune_threshold(probs[2:], truth[2:])  # no finding at all: no choice
    assert none == 0.1 and math.isnan(undefined)


def test_postprocess_keeps_two_lungs_and_fills_holes() -> None:
    mask = np.zeros((40, 40), np.uint8)
    mask[5:35, 3:15] = 1
    mask[5:35, 22:36] = 1
    mask[15:18, 8:10] = 0  # hole
    mask[0:2, 0:2] = 1  # speck
    mask[38:40, 18:21] = 1  # speck
    out = postprocess(mask, "lungs")
    assert out[16, 9] == 1 and out[0, 0] == 0 and out[39, 19] == 0
    assert out.sum() == 30 * 12 + 30 * 14
    assert postprocess(mask, "largest")[:, :18].sum() == 0
    assert np.array_equal(postprocess(mask, "none"), mask)


def test_draw_labelled_spreads_over_patients_and_is_seeded() -> None:
    pids = ["a", "a", "a", "b", "b", "c", "d", "e"]
    pick = draw_labelled(pids, 5, seed=1)
    assert len(pick) == 5 and len(set(pick.tolist())) == 5
    assert len({pids[i] for i in pick}) == 5  # all patients before repeats
    assert np.array_equal(pick, draw_labelled(pids, 5, seed=1))
    assert len(draw_labelled(pids, 100, seed=0)) == 8
    with pytest.raises(DatasetError, match="--n-labelled must be at least 1, got 0"):
        draw_labelled(pids, 0, seed=0)


def test_deep_supervision_loss_and_components() -> None:
    task = SegmentationTask(get_loss("combined"))
    net = create_net("unet_ds", features=(4, 8, 16)).train()
    images = torch.randint(0, 255, (2, 1, 32, 32), dtype=torch.uint8)
    masks = (torch.rand(2, 1, 32, 32) > 0.5).to(torch.uint8)
    loss, parts = task.training_step(net, (images, masks), torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(parts) == {"tversky", "focal_tversky", "weighted_bce"}
    metrics = task.evaluate(net.eval(), [(images, masks)])
    assert set(metrics) == {"loss", "dice", "iou", "dice_tuned", "threshold"}
    overlay = task.overlays(net, (images, masks))["val/overlay"]
    assert overlay.shape == (3, 32, 64)


def test_patch_training_crops_image_prior_and_mask_alike() -> None:
    class Shapes(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen = x
            return x[:, :1] * 0

    images = torch.randint(0, 256, (4, 2, 64, 64), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8).numpy()
    masks = torch.zeros(4, 1, 64, 64, dtype=torch.uint8)
    masks[:, 0, 50:53, 5:8] = 1
    net = Shapes()
    for augmentation in (None, DEFAULT_AUGMENT):
        task = SegmentationTask(get_loss("lesion"), augmentation, prior_channels=1, patch=32)
        batch = (torch.as_tensor(images), masks)
        loss, _ = task.training_step(net, batch, torch.Generator().manual_seed(1))
        assert net.seen.shape == (4, 2, 32, 32) and torch.isfinite(loss)
    task = SegmentationTask(get_loss("lesion"), None, prior_channels=1, patch=32)
    cut, cut_masks = task._augment(
        torch.as_tensor(images).float(), masks.float(), torch.Generator().manual_seed(2)
    )
    # Without augmentation a patch is an exact crop of image, prior and mask at one place.
    for i in range(4):
        source = torch.as_tensor(images[i]).float()
        places = [
            (y, x)
            for y in range(33)
            for x in range(33)
            if torch.equal(cut[i], source[:, y : y + 32, x : x + 32])
        ]
        assert len(places) == 1
        y0, x0 = places[0]
        assert torch.equal(cut_masks[i], masks[i, :, y0 : y0 + 32, x0 : x0 + 32].float())
    with pytest.raises(CxrsslError, match="multiple of 32"):
        SegConfig(size=64, patch=48)
    with pytest.raises(CxrsslError, match="below --size 64"):
        SegConfig(size=64, patch=64)


class Killed(Exception):
    pass


def test_kfold_run_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    images, masks = write_lungs(tmp_path / "data")
    full = train_seg(images, masks, tmp_path / "full", quick(epochs=3))

    def kill(trainer: Trainer, row: dict[str, float]) -> None:
        if trainer.epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train_seg(images, masks, tmp_path / "part", quick(epochs=3), callbacks=[kill])
    resumed = train_seg(images, masks, tmp_path / "part", quick(epochs=3), resume=True)
    assert json.dumps(resumed["folds"]) == json.dumps(full["folds"])  # NaN-safe equality
    assert json.dumps(resumed["mean_std_over_folds"]) == json.dumps(full["mean_std_over_folds"])
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    assert set(summary["mean_std_over_folds"]) == {
        "dice",
        "iou",
        "precision",
        "sensitivity",
        "specificity",
        "detected",
        "clear",
    }
    best = load_checkpoint(tmp_path / "part" / "fold_0" / "best.pt")
    assert best["extra"]["threshold"] == summary["folds"][0]["threshold"]
    assert best["extra"]["size"] == 32
    per_image = (tmp_path / "part" / "per_image.csv").read_text().splitlines()
    assert len(per_image) == 9 and per_image[0].startswith("fold,file,patient_id,dice")
    assert len(list((tmp_path / "part" / "predictions").glob("*.png"))) == 8
    assert summary["empty_convention"].startswith("empty-mask convention 'nan'")
    assert summary["per_image"]["dice"]["n_patients"] == 4  # CI bootstrapped over patients


def test_n_labelled_with_validation_patients_and_a_single_model(tmp_path: Path) -> None:
    images, masks = write_lungs(tmp_path / "data", n=12)  # 6 patients
    summary = train_seg(
        images, masks, tmp_path / "run", quick(epochs=1, n_labelled=3, val_fraction=0.25)
    )
    assert [(f["n_train"], f["n_val"], f["n_scored"]) for f in summary["folds"]] == [
        (3, 2, 6),
        (3, 2, 6),
    ]
    one = train_seg(images, masks, tmp_path / "one", quick(epochs=1, folds=1))
    assert one["folds"] == [] and (tmp_path / "one" / "fold_0" / "best.pt").is_file()
    with pytest.raises(CxrsslError, match="--val-fraction"):
        train_seg(images, masks, tmp_path / "x", quick(epochs=1, target_sensitivity=0.9))


def test_the_scored_fold_chooses_nothing(tmp_path: Path) -> None:
    """Fold 0's epoch, threshold and weights stay the same when the masks it is scored
    against change: only its validation patients (taken from training folds) choose."""
    images, masks = write_lungs(tmp_path / "data", n=12)
    config = quick(epochs=3, val_fraction=0.25, lr=3e-2)
    first = train_seg(images, masks, tmp_path / "a", config)
    scored = {
        r.split(",")[1]
        for r in (tmp_path / "a" / "per_image.csv").read_text().split()[1:]
        if r.startswith("0,")
    }
    other = tmp_path / "other_masks"
    other.mkdir()
    for path in masks.iterdir():
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(other / path.name), 255 - mask if path.name in scored else mask)
    second = train_seg(images, other, tmp_path / "b", config)
    a, b = first["folds"][0], second["folds"][0]
    assert (a["best_epoch"], a["threshold"]) == (b["best_epoch"], b["threshold"])
    assert a["dice"] != pytest.approx(b["dice"])
    wa = load_checkpoint(tmp_path / "a" / "fold_0" / "best.pt")["state_dict"]
    wb = load_checkpoint(tmp_path / "b" / "fold_0" / "best.pt")["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_predictor_ensemble_returns_masks_at_the_original_size(tmp_path: Path) -> None:
    images, masks = write_lungs(tmp_path / "data")
    train_seg(images, masks, tmp_path / "run", quick(epochs=1))
    predictor = Predictor.load(tmp_path / "run", device="cpu")
    assert len(predictor.models) == 2 and predictor.size == 32
    out = predictor(np.random.default_rng(0).random((45, 70), dtype=np.float32))
    assert out.shape == (45, 70) and out.dtype == np.uint8


def test_init_from_a_checkpoint_with_a_frozen_encoder(tmp_path: Path) -> None:
    images, masks = write_lungs(tmp_path / "data")
    train_seg(images, masks, tmp_path / "pre", quick(epochs=1, folds=1, val_fraction=0.25))
    init = tmp_path / "pre" / "fold_0" / "best.pt"
    config = quick(epochs=1, folds=1, val_fraction=0.25, init=str(init), freeze_encoder=True)
    train_seg(images, masks, tmp_path / "fine", config)
    before = load_checkpoint(init)["state_dict"]
    after = load_checkpoint(tmp_path / "fine" / "fold_0" / "best.pt")["state_dict"]
    weights = [k for k in before if k.endswith("conv.weight")]
    assert all(torch.equal(before[k], after[k]) for k in weights if k.startswith("encoder."))
    assert not all(torch.equal(before[k], after[k]) for k in weights if k.startswith("head."))


def test_missing_patient_ids_give_one_warning_with_the_count(tmp_path: Path) -> None:
    images, masks = write_lungs(tmp_path / "data")
    (tmp_path / "data" / "labels.csv").unlink()
    for n, config in enumerate([quick(epochs=1), quick(epochs=1, folds=1, val_fraction=0.25)]):
        with pytest.warns(DatasetWarning) as caught:
            train_seg(images, masks, tmp_path / f"run{n}", config)
        ours = [w for w in caught if "no patient id" in str(w.message)]
        assert len(ours) == 1 and "8 of 8 image(s)" in str(ours[0].message), n


def test_each_threshold_is_applied_to_the_probabilities_it_was_tuned_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrssl.tasks import segmentation as seg

    images, masks = write_lungs(tmp_path / "data", n=12)
    cache = load_cache(open_folders(images, masks), 32)
    config = quick(epochs=2, val_fraction=0.25, tta=True, lr=3e-2)
    train, val, test = cache.subset(range(6)), cache.subset(range(6, 9)), cache.subset(range(9, 12))
    fitted = seg.fit_fold(train, val, config, tmp_path / "run", seed=0)
    plain = seg._batched_probs([fitted.net], val.images, fitted.device, tta=False)
    flipped = seg._batched_probs([fitted.net], val.images, fitted.device, tta=True)
    assert fitted.threshold_plain == tune_threshold(plain, val.masks)[0]
    assert fitted.threshold == tune_threshold(flipped, val.masks)[0]
    fitted.threshold_plain, fitted.threshold = 0.3, 0.7  # tell them apart
    used: list[tuple[float, bool]] = []
    original = seg.original_masks

    def spy(probs: torch.Tensor, c: object, threshold: float, mode: str) -> list[np.ndarray]:
        tta = not torch.equal(probs, seg._batched_probs([fitted.net], test.images, "cpu", False))
        used.append((threshold, tta))
        return original(probs, c, threshold, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(seg, "original_masks", spy)
    seg.score_fold(fitted.net, test, fitted, config)
    assert used == [(0.5, False), (0.3, False), (0.3, False), (0.7, True)]


def test_images_without_a_finding_are_counted_not_scored_one(tmp_path: Path) -> None:
    images, masks = write_lungs(tmp_path / "data")
    for name in ("img1.png", "img6.png"):  # two images with nothing to find
        cv2.imwrite(str(masks / name), np.zeros_like(cv2.imread(str(masks / name), 0)))
    summary = train_seg(images, masks, tmp_path / "run", quick(epochs=1))
    pooled = summary["per_image"]
    assert (pooled["clear"]["n"], pooled["detected"]["n"]) == (2, 6)
    assert pooled["dice"]["n"] + pooled["dice"]["n_nan"] == 8
    rows = (tmp_path / "run" / "per_image.csv").read_text().splitlines()[1:]
    blank = [r for r in rows if r.split(",")[1] in ("img1.png", "img6.png")]
    for row in blank:  # Dice 0 (false positives) or undefined (nothing predicted), never 1
        assert row.split(",")[3] in ("0.0", "nan")


def test_lung_box_cache_records_each_crop_and_scores_at_the_full_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, masks = write_lungs(tmp_path / "data")
    plain = load_cache(open_folders(images, masks), 32)
    assert plain.crop == "none" and plain.crops == [whole_box(*s) for s in plain.shapes]
    cache = load_cache(open_folders(images, masks), 32, crop="lung-box")
    assert cache.crop == "lung-box"
    for path, box, shape in zip(cache.paths, cache.crops, cache.shapes, strict=True):
        image = read_image(path)
        assert shape == image.shape and box == crop_box(lung_masks(image, "default"))
    sub = cache.subset([4, 1])
    assert (sub.crop, sub.crops, sub.shapes) == (
        "lung-box",
        [cache.crops[4], cache.crops[1]],
        [cache.shapes[4], cache.shapes[1]],
    )
    # Perfect letterboxed probabilities return to the full image: the mask inside the box,
    # nothing outside, so lung the box cuts off counts as missed against the full mask. The
    # box is made to cut here (the left 60 % of each image), whatever the rules find.
    monkeypatch.setattr(
        seg_data,
        "crop_box",
        lambda lungs: (0, 0, int(0.6 * lungs.both.shape[1]), lungs.both.shape[0]),
    )
    cache = load_cache(open_folders(images, masks), 32, crop="lung-box")
    perfect = original_masks(cache.masks.float(), cache, 0.5, "none")
    rows = _score(perfect, cache, "nan")
    cut = 0
    for i, (pred, path) in enumerate(zip(perfect, cache.mask_paths, strict=True)):
        truth = read_mask(path, cache.shapes[i])
        x0, y0, x1, y1 = cache.crops[i]
        assert pred.shape == cache.shapes[i] and pred.sum() == pred[y0:y1, x0:x1].sum()
        assert rows[i]["precision"] > 0.9
        if truth.sum() > truth[y0:y1, x0:x1].sum():
            cut += 1
            assert rows[i]["sensitivity"] < 0.99
    assert cut >= 1  # the rule-based boxes of the synthetic images do cut some lungs
    with pytest.raises(CxrsslError, match="unknown crop 'lungs'; choose one of none, lung-box"):
        load_cache(open_folders(images, masks), 32, crop="lungs")
    with pytest.raises(CxrsslError, match="unknown crop 'box'"):
        SegConfig(crop="box")


def test_lung_box_training_and_prediction_crop_alike(tmp_path: Path) -> None:
    images, masks = write_lungs(tmp_path / "data")
    summary = train_seg(images, masks, tmp_path / "run", quick(epochs=1, crop="lung-box"))
    assert summary["config"]["crop"] == "lung-box"
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(tmp_path / "run" / "fold_0" / name)["extra"]["crop"] == "lung-box"
    assert "crop: lung-box" in (tmp_path / "run" / "fold_1" / "config.yaml").read_text()
    for path in images.iterdir():
        written = cv2.imread(str(tmp_path / "run" / "predictions" / path.name), 0)
        assert written is not None and written.shape == read_image(path).shape
    predictor = Predictor.load(tmp_path / "run", device="cpu")
    assert predictor.crop == "lung-box"
    image = read_image(images / "img4.png")
    box = crop_box(lung_masks(image, "default"))
    assert box != whole_box(*image.shape)  # the crop matters for this image
    canvas, lb = letterbox(apply_crop(image, box), predictor.size)
    x = torch.from_numpy(to_uint8(canvas))[None, None]
    manual = uncrop(
        unletterbox(predict_probs(predictor.models, x)[0, 0].numpy(), lb), box, image.shape
    )
    probs = predictor.probs(image)
    assert probs.shape == image.shape and np.array_equal(probs, manual)
    predictor.crop = "none"
    assert not np.allclose(predictor.probs(image), probs)


def test_init_checkpoint_crop_is_followed_unless_chosen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images, masks = write_lungs(tmp_path / "data")
    weights = create_net("unet", features=(4, 8, 16)).state_dict()
    encoder = {k[8:]: v for k, v in weights.items() if k.startswith("encoder.")}
    init = tmp_path / "pre.pt"  # as pre-training with lung-box views writes it
    save_checkpoint(init, {"encoder_state_dict": encoder, "extra": {"crop": "lung-box"}})
    caplog.set_level(logging.INFO, logger="cxrssl.tasks.seg_data")  # crop_from_init
    config = quick(epochs=1, folds=1, val_fraction=0.25, init=str(init))
    assert config.crop is None
    summary = train_seg(images, masks, tmp_path / "fine", config)
    assert summary["config"]["crop"] == "lung-box"
    assert load_checkpoint(tmp_path / "fine" / "fold_0" / "best.pt")["extra"]["crop"] == "lung-box"
    said = [r for r in caplog.records if "crop lung-box: the --init checkpoint" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    caplog.clear()
    chosen = resolve_crop(quick(init=str(init), crop="none"))
    assert chosen.crop == "none"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "was trained with crop lung-box" in warned[0].getMessage()
    assert resolve_crop(quick()).crop == "none"  # no init: no crop


def test_lesion_thresholds_reach_the_inflated_probabilities_of_a_weighted_loss() -> None:
    """A pos_weight of up to 1000 pushes the probabilities of small lesions towards 1: the
    lesion recipe searches its threshold up to 0.999, the lung recipe stops at 0.9."""
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 6:9, 6:9] = 1
    probs = torch.full_like(masks, 0.97)  # the background of a saturated map
    probs[masks.bool()] = 0.999
    assert tune_threshold(probs, masks)[1] < 0.1  # 0.9 keeps every pixel
    t, dice = tune_threshold(probs, masks, thresholds=HIGH_THRESHOLDS)
    assert t == 0.98 and dice == pytest.approx(1.0)
    assert SegConfig.THRESHOLDS == THRESHOLDS and LesionConfig.THRESHOLDS == HIGH_THRESHOLDS
    task = LesionConfig(priors=None).make_task()
    scores = task.evaluate(torch.nn.Identity(), [(torch.logit(probs), masks)])
    assert scores["threshold"] == 0.98 and scores["dice_pooled"] == pytest.approx(1.0)
