"""Priors aligned with the radiograph: generated heatmaps and maps, folders, specs."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrssl.data.datasets import sample
from cxrssl.errors import DatasetError, ImageReadError
from cxrssl.lesions.points import Point
from cxrssl.lesions.priors import PRIOR_KINDS, displacement, make_prior, parse_prior, read_prior


def test_heatmap_peaks_at_each_point_with_the_radius_as_scale() -> None:
    image = np.zeros((80, 100), np.float32)
    points = [Point("a.png", 30.0, 40.0, 16.0), Point("a.png", 80.0, 10.0, 8.0)]
    prior = make_prior("heatmap", image, points)
    assert prior.dtype == np.float32 and prior.shape == (80, 100)
    assert prior[40, 30] == pytest.approx(1.0) and prior[10, 80] == pytest.approx(1.0)
    assert prior[40, 34] == pytest.approx(math.exp(-0.5), abs=1e-4)  # sigma = radius / 2
    assert prior[10, 82] == pytest.approx(math.exp(-0.5), abs=1e-4)
    assert 0 <= prior.min() and prior.max() <= 1 and prior[75, 5] == 0
    assert not make_prior("heatmap", image).any()


def test_heatmap_shift_is_up_to_the_given_distance_and_seeded() -> None:
    image = np.zeros((100, 100), np.float32)
    points = [Point("a.png", 50.0, 50.0, 10.0)]
    maps = [
        make_prior("heatmap", image, points, shift_px=12, rng=np.random.default_rng(s))
        for s in range(3)
    ]
    peaks = [np.unravel_index(np.argmax(m), m.shape) for m in maps]
    for y, x in peaks:
        assert math.hypot(y - 50, x - 50) <= 12 + 1
    assert len(set(peaks)) == 3
    again = make_prior("heatmap", image, points, shift_px=12, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(again, maps[0])
    off = make_prior("heatmap", image, points, shift_px=500, rng=np.random.default_rng(0))
    assert not off.any()  # displaced off the image


def test_rule_based_priors_on_a_real_film() -> None:
    image = sample()[0]["image"]
    lungs = make_prior("lungs", image)
    assert lungs.dtype == np.float32 and lungs.shape == image.shape
    assert set(np.unique(lungs)) == {0.0, 1.0} and 0.1 < lungs.mean() < 0.7
    pathology = make_prior("pathology", image)
    assert pathology.dtype == np.float32 and 0 <= pathology.min() and pathology.max() <= 1
    assert pathology.any() and not pathology[lungs == 0].any()  # inside the lungs only
    with pytest.raises(DatasetError, match="unknown prior kind 'blobs'"):
        make_prior("blobs", image)
    with pytest.raises(ValueError, match="2-D"):
        make_prior("lungs", np.zeros((4, 4, 3)))


def test_read_prior_by_stem_resized_and_constant(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(64, dtype=np.uint8) * 4, (32, 1))
    cv2.imwrite(str(tmp_path / "a.png"), ramp)
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((32, 64), np.uint8))
    cv2.imwrite(str(tmp_path / "c.tif"), (ramp.astype(np.uint16) * 257))
    a = read_prior(tmp_path, "a", (32, 64))
    assert a.dtype == np.float32 and a[0, 10] == pytest.approx(40 / 255)
    assert read_prior(tmp_path, "a", (64, 128)).shape == (64, 128)
    b = read_prior(tmp_path, "b", (16, 16))
    assert b.shape == (16, 16) and not b.any()
    np.testing.assert_allclose(read_prior(tmp_path, "c", (32, 64)), a, atol=1e-6)
    with pytest.raises(DatasetError, match=r"no prior image for 'd'") as err:
        read_prior(tmp_path, "d", (32, 64))
    assert str(tmp_path) in str(err.value)
    (tmp_path / "e.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"e\.png"):
        read_prior(tmp_path, "e", (32, 64))


def test_parse_prior(tmp_path: Path) -> None:
    for kind in PRIOR_KINDS:
        assert parse_prior(kind) == (kind, None)
    assert parse_prior(str(tmp_path)) == ("dir", tmp_path)
    with pytest.raises(DatasetError, match=r"heatmap.*pathology.*lungs.*existing folder"):
        parse_prior(str(tmp_path / "missing"))


def test_displacement_is_uniform_over_the_disc() -> None:
    rng = np.random.default_rng(0)
    shifts = np.array([displacement(rng, 10.0) for _ in range(20000)])
    reach = np.hypot(shifts[:, 0], shifts[:, 1])
    assert reach.max() <= 10.0
    assert reach.mean() == pytest.approx(20 / 3, abs=0.1)  # 2/3 of the radius over a disc
    assert (reach < 5).mean() == pytest.approx(0.25, abs=0.02)  # area share of the inner disc
    assert np.abs(shifts.mean(axis=0)).max() < 0.15  # no preferred direction
    assert displacement(rng, 0.0) == (0.0, 0.0)
