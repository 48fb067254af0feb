"""Detections from probability maps and masks: centres, diameters, scores, order, files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cxrssl.errors import DatasetError
from cxrssl.io import write_mask
from cxrssl.lesions.detect import detect, detections_from_masks, write_detections
from cxrssl.lesions.points import Point, read_points


def _disc(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def test_components_centre_diameter_score_and_order() -> None:
    prob = np.zeros((100, 120), np.float32)
    disc = _disc(prob.shape, 30, 40, 8)
    prob[disc] = 0.7
    prob[40, 30] = 0.8
    prob[10:15, 80:85] = 0.95  # a 5 x 5 square, the highest score
    prob[90:92, 5:7] = 0.9  # 2 x 2: equivalent diameter 2.26 < 3, dropped
    prob[60:70, 60:70] = 0.3  # below the threshold
    found = detect(prob, "a.png")
    assert [d.score for d in found] == pytest.approx([0.95, 0.8])
    square, blob = found
    assert (square.x, square.y) == pytest.approx((82.0, 12.0))
    assert square.diameter_px == pytest.approx(2 * math.sqrt(25 / math.pi))
    assert (blob.x, blob.y) == pytest.approx((30.0, 40.0), abs=1e-4)
    assert blob.diameter_px == pytest.approx(2 * math.sqrt(disc.sum() / math.pi))
    assert all(d.file == "a.png" for d in found)
    assert len(detect(prob, "a.png", threshold=0.25)) == 3  # the tiny one still dropped


def test_centre_is_probability_weighted() -> None:
    prob = np.zeros((10, 20), np.float32)
    prob[5, 10:13] = [0.5, 0.5, 1.0]
    (d,) = detect(prob, "b.png", threshold=0.5, min_diameter_px=0)
    assert d.x == pytest.approx((10 * 0.5 + 11 * 0.5 + 12 * 1.0) / 2.0)
    assert d.y == pytest.approx(5.0)
    assert d.score == pytest.approx(1.0)


def test_binary_mask_scores_one_and_diagonal_pixels_join() -> None:
    mask = np.zeros((50, 50), np.uint8)
    mask[10:20, 10:20] = 1
    mask[20:30, 20:30] = 1  # touches the first square at a corner: one 8-connected component
    mask[40:45, 40:45] = 1
    found = detect(mask, "m.png")
    assert [d.score for d in found] == [1.0, 1.0]
    assert found[0].diameter_px > found[1].diameter_px  # ties: the larger first
    assert (found[0].x, found[0].y) == pytest.approx((19.5, 19.5))
    assert detect(np.zeros((8, 8), np.float32), "e.png") == []


def test_fainter_levels_add_separate_candidates_only() -> None:
    prob = np.zeros((100, 100), np.float32)
    prob[_disc(prob.shape, 30, 30, 12)] = 0.6  # a halo around the strong blob
    prob[_disc(prob.shape, 30, 30, 5)] = 0.99  # the mask's detection
    prob[_disc(prob.shape, 75, 75, 4)] = 0.7  # a separate fainter blob
    prob[_disc(prob.shape, 75, 20, 4)] = 0.35  # fainter still
    strong = detect(prob, "a.png", threshold=0.95)
    assert [d.score for d in strong] == pytest.approx([0.99])
    found = detect(prob, "a.png", threshold=0.95, levels=(0.99, 0.8, 0.5, 0.3))
    assert [d.score for d in found] == pytest.approx([0.99, 0.7, 0.35])  # no halo, no repeat
    assert found[0] == strong[0]  # the mask's detection is unchanged
    assert (found[1].x, found[1].y) == pytest.approx((75.0, 75.0), abs=1e-4)
    assert found[2].diameter_px == pytest.approx(
        2 * math.sqrt(_disc((100, 100), 75, 20, 4).sum() / math.pi)
    )
    capped = detect(prob, "a.png", threshold=0.95, levels=(0.8, 0.5, 0.3), max_candidates=1)
    assert [d.score for d in capped] == pytest.approx([0.99, 0.7])  # the faintest goes first
    only_mask = detect(prob, "a.png", threshold=0.95, levels=(0.8, 0.5, 0.3), max_candidates=0)
    assert only_mask == strong
    with pytest.raises(DatasetError, match="thresholds"):
        detect(prob, "a.png", levels=(0.0,))


def test_bad_maps_are_errors_naming_the_file() -> None:
    with pytest.raises(DatasetError, match=r"x\.png.*H x W"):
        detect(np.zeros((2, 8, 8), np.float32), "x.png")
    mask255 = np.zeros((8, 8), np.uint8)
    mask255[2:5, 2:5] = 255
    with pytest.raises(DatasetError, match=r"x\.png.*0 to 255"):
        detect(mask255, "x.png")
    with pytest.raises(DatasetError, match="threshold"):
        detect(np.zeros((8, 8), np.float32), "x.png", threshold=0.0)


def test_detections_from_masks(tmp_path: Path) -> None:
    folder = tmp_path / "masks"
    one = np.zeros((40, 40), np.uint8)
    one[5:15, 5:15] = 1
    one[30:36, 30:36] = 1
    write_mask(folder / "a.png", one)
    write_mask(folder / "b_mask.png", np.zeros((40, 40), np.uint8))
    (folder / "notes.txt").write_text("not a mask")
    found = detections_from_masks(folder)
    assert [(d.file, d.score) for d in found] == [("a.png", 1.0), ("a.png", 1.0)]
    assert (found[0].x, found[0].y) == pytest.approx((9.5, 9.5))
    write_mask(folder / "a_mask.png", one)
    with pytest.raises(DatasetError, match=r"a.png and a_mask.png are both masks of 'a'"):
        detections_from_masks(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no mask files"):
        detections_from_masks(tmp_path / "empty")


def test_write_detections_columns_and_round_trip(tmp_path: Path) -> None:
    dets = [
        Point("a.png", 10.25, 20.5, 6.0, z=3.0, subtlety=2, score=0.875, extra={"k": "v"}),
        Point("b.png", 1.0, 2.0, 4.0, score=0.5),
    ]
    path = tmp_path / "out" / "detections.csv"
    write_detections(path, dets)
    assert path.read_text().splitlines()[0] == "filename,x,y,diameter_px,score"
    back = read_points(path)
    assert [(p.file, p.x, p.y, p.diameter_px, p.score) for p in back] == [
        ("a.png", 10.25, 20.5, 6.0, 0.875),
        ("b.png", 1.0, 2.0, 4.0, 0.5),
    ]
