"""Derived maps: six regions, pathology candidates, lung boxes, seed baselines."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import cxrssl
from cxrssl.anatomy import LungMasks, lung_masks
from cxrssl.anatomy.baselines import seed_pathology, seed_regions
from cxrssl.anatomy.crop import crop_image, lung_box
from cxrssl.anatomy.pathology import candidates, pathology_map
from cxrssl.anatomy.regions import REGION_NAMES, regions

SAMPLE = Path(cxrssl.__file__).parent / "data" / "sample" / "images"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    path = sorted(SAMPLE.glob("*.png"))[1]
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    return img


def _boxes(right: tuple[int, int, int, int], left: tuple[int, int, int, int]) -> LungMasks:
    r = np.zeros((100, 120), np.uint8)
    lt = np.zeros_like(r)
    r[right[1] : right[3], right[0] : right[2]] = 1
    lt[left[1] : left[3], left[0] : left[2]] = 1
    return LungMasks(left=lt, right=r, both=r | lt, quality=1.0)


def test_regions_are_thirds_of_each_lung() -> None:
    labels = regions(_boxes((10, 10, 50, 70), (70, 40, 110, 100)))
    assert len(REGION_NAMES) == 7 and set(np.unique(labels)) == set(range(7))
    assert np.array_equal(labels[10:30, 10:50], np.full((20, 40), 1))  # right upper
    assert np.array_equal(labels[50:70, 10:50], np.full((20, 40), 3))  # right lower
    assert np.array_equal(labels[40:60, 70:110], np.full((20, 40), 4))  # left upper
    assert np.array_equal(labels[80:100, 70:110], np.full((20, 40), 6))  # left lower
    assert labels[:, 55:65].max() == 0


def test_regions_of_an_image_match_regions_of_its_masks(image: np.ndarray) -> None:
    lungs = lung_masks(image)
    labels = regions(image)
    assert np.array_equal(labels, regions(lungs))
    assert np.array_equal(labels > 0, lungs.both > 0)
    rows = np.arange(image.shape[0])[:, None] * np.ones_like(labels)
    assert rows[labels == 1].mean() < rows[labels == 2].mean() < rows[labels == 3].mean()


def test_seed_regions_cover_thirds_halves_and_centre() -> None:
    stack = seed_regions((90, 60))
    assert stack.shape == (6, 90, 60)
    assert np.array_equal(stack[0] + stack[1] + stack[2], np.ones((90, 60)))
    assert np.array_equal(stack[3] + stack[4], np.ones((90, 60)))
    assert stack[5].sum() == 30 * 20


def test_pathology_scores_a_dense_blob_high_inside_the_lungs_only() -> None:
    lungs = _boxes((10, 10, 50, 90), (70, 10, 110, 90))
    img = np.full((100, 120), 200, np.uint8)
    img[lungs.both > 0] = 60
    cv2.circle(img, (30, 60), 12, 150, -1)  # an opacity in the right lung
    out = pathology_map(img, lungs)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert not np.any(out[lungs.both == 0])
    assert out[60, 30] > 200 and out[60, 30] > np.percentile(out[lungs.both > 0], 90)
    assert out[60, 90] < 128  # the same height of the other lung
    binary = candidates(out)
    assert set(np.unique(binary)) <= {0, 1} and binary[60, 30] == 1 and binary[30, 90] == 0
    assert np.array_equal(candidates(out.astype(np.float32) / 255), binary)
    assert np.array_equal(pathology_map(img, lungs.both), out)  # union split at the middle


def test_pathology_with_found_lungs_and_seed_baseline(image: np.ndarray) -> None:
    out = pathology_map(image)
    lungs = lung_masks(image).both
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.any(out[lungs == 0])
    assert 0 < out[lungs > 0].mean() < 255  # a soft score, not a mask
    assert np.array_equal(pathology_map(255 - image), out)  # inverted films are flipped
    seed = seed_pathology(image)
    assert seed.shape == image.shape and set(np.unique(seed)) <= {0, 1}


def test_lung_box_pads_clips_and_falls_back() -> None:
    lungs = _boxes((10, 10, 50, 70), (70, 40, 110, 100))
    assert lung_box(lungs, pad=5) == (5, 5, 115, 100)
    assert lung_box(lungs.both, pad=0, min_ratio=0.5) == (10, 10, 110, 100)
    small = np.zeros((100, 120), np.uint8)
    small[40:50, 40:50] = 1
    assert lung_box(small) == (0, 0, 120, 100)  # 50 x 50 < half of 120 wide: fallback
    assert lung_box(np.zeros((30, 40), np.uint8)) == (0, 0, 40, 30)
    assert crop_image(np.zeros((100, 120)), lung_box(lungs, pad=5)).shape == (95, 110)
