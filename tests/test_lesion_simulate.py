"""Simulated nodules on the built-in sample's real films: exact truth, priors, seeds, CLI."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from cxrssl.cli.main import main
from cxrssl.data.datasets import DatasetWarning, sample
from cxrssl.errors import DatasetError
from cxrssl.io import read_image, read_mask
from cxrssl.lesions.points import read_points
from cxrssl.lesions.priors import read_prior
from cxrssl.lesions.simulate import (
    MEDIAL_ZONE,
    Nodule,
    _site,
    _zones,
    nodule_profile,
    simulate_nodules,
)

PIXEL_MM = 1.4  # the sample's 256 px films
SIZES = (8.0, 20.0)


@pytest.fixture
def films(tmp_path: Path) -> tuple[Path, Path]:
    root = sample().root
    assert root is not None
    images, lungs = tmp_path / "films", tmp_path / "lungs"
    images.mkdir()
    lungs.mkdir()
    for path in sorted((root / "images").glob("*.png"))[:4]:
        shutil.copy(path, images / path.name)
        shutil.copy(root / "masks" / path.name, lungs / path.name)
    return images, lungs


def simulate(films: tuple[Path, Path], out: Path, **kw: object) -> object:
    args: dict[str, object] = {"pixel_mm": PIXEL_MM, "sizes_mm": SIZES} | kw
    return simulate_nodules(films[0], films[1], out, **args)  # type: ignore[arg-type]


def test_nodules_inside_the_lungs_with_exact_masks(
    films: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "sim"
    s = simulate(films, out, per_image=2, seed=3)
    points = read_points(out / "points.csv", PIXEL_MM)
    assert s.nodules == len(points) == 8 and s.images == 4 and s.negatives == 0  # type: ignore[attr-defined]
    for p in points:
        assert {"contrast", "shape", "site", "background", "ridge", "clutter"} <= set(p.extra)
        assert p.extra["site"] in {"medial", "apical", "basal", "peripheral"}
        assert p.extra["shape"] in {"sphere", "ellipsoid"}
        assert SIZES[0] - 0.01 <= p.diameter_px * PIXEL_MM <= SIZES[1] + 0.01
        assert 0.05 <= float(p.extra["contrast"]) <= 0.25
    for path in sorted(films[0].iterdir()):
        original = read_image(path)
        image = read_image(out / "images" / path.name)
        mask = read_mask(out / "masks" / path.name, original.shape)
        lungs = read_mask(films[1] / path.name, original.shape)
        labels, n = ndimage.label(mask)
        mine = [p for p in points if p.file == path.name]
        assert n == len(mine) == 2
        assert not (mask & (1 - lungs)).any()  # the whole footprint in the lungs
        for p in mine:
            assert mask[round(p.y), round(p.x)] == 1
            area = (labels == labels[round(p.y), round(p.x)]).sum()
            assert area == pytest.approx(math.pi * p.radius_px**2, rel=0.15)
            # brighter at the centre as the model says: + c * (1 - image), 8-bit rounding
            before = float(original[round(p.y), round(p.x)])
            gain = float(image[round(p.y), round(p.x)]) - before
            expected = float(p.extra["contrast"]) * (1 - before)
            assert gain == pytest.approx(expected, abs=0.15 * expected + 2 / 255)
        far = ndimage.distance_transform_edt(mask == 0) > 12  # beyond every soft edge
        assert np.abs(image - original)[far].max() <= 0.6 / 255


def test_the_seed_decides_everything(films: tuple[Path, Path], tmp_path: Path) -> None:
    simulate(films, tmp_path / "a", seed=1)
    simulate(films, tmp_path / "b", seed=1)
    simulate(films, tmp_path / "c", seed=2)
    for part in ("points.csv", "images", "masks", "priors"):
        files_a = sorted((tmp_path / "a").glob(f"{part}/*" if "." not in part else part))
        for fa in files_a:
            assert fa.read_bytes() == (tmp_path / "b" / fa.relative_to(tmp_path / "a")).read_bytes()
    assert (tmp_path / "a" / "points.csv").read_text() != (
        tmp_path / "c" / "points.csv"
    ).read_text()


def test_negatives_are_the_films_untouched(films: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "neg"
    s = simulate(films, out, per_image=0)
    assert s.nodules == 0 and s.negatives == 4  # type: ignore[attr-defined]
    assert read_points(out / "points.csv") == []
    for path in films[0].iterdir():
        np.testing.assert_array_equal(
            cv2.imread(str(out / "images" / path.name), 0), cv2.imread(str(path), 0)
        )
        assert not read_mask(out / "masks" / path.name).any()
        assert not read_prior(out / "priors", path.stem, (256, 256)).any()
    none = simulate(films, tmp_path / "all", per_image=3, negatives=1.0)
    assert (none.nodules, none.negatives) == (0, 4)  # type: ignore[attr-defined]
    mixes = [simulate(films, tmp_path / f"h{k}", negatives=0.5, seed=k) for k in range(4)]
    assert all(m.nodules + m.negatives == 4 for m in mixes)  # type: ignore[attr-defined]
    assert any(0 < m.negatives < 4 for m in mixes)  # type: ignore[attr-defined]


def test_prior_is_the_nodule_blurred_and_shifted(films: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "p"
    simulate(films, out, seed=5, prior_shift_mm=7.0, prior_blur_mm=1.4)
    for p in read_points(out / "points.csv", PIXEL_MM):
        prior = read_prior(out / "priors", Path(p.file).stem, (256, 256))
        peak = np.unravel_index(np.argmax(prior), prior.shape)
        assert math.hypot(peak[0] - p.y, peak[1] - p.x) <= 5.0 + 1.5  # up to 7 mm, 1.4 mm/px
        assert 0.5 < prior.max() <= 1.0
    values, foot, _ = nodule_profile((64, 64), Nodule(32.2, 30.7, 6, 6, 0, 1, 0.1))
    assert values.max() == pytest.approx(1.0) and foot.sum() == pytest.approx(math.pi * 36, rel=0.1)
    blurred, _, _ = nodule_profile((64, 64), Nodule(32.2, 30.7, 6, 6, 0, 1, 0.1), blur=4)
    assert blurred.max() < 0.9  # a blurred nodule is fainter, not renormalised
    _, _, off = nodule_profile((64, 64), Nodule(32.0, 30.0, 6, 6, 0, 1, 0.1), shift=(0, 100))
    assert off == (slice(0, 0), slice(0, 0))


def test_sites_from_the_lung_geometry() -> None:
    lungs = np.zeros((100, 120), np.uint8)
    lungs[10:90, 10:50] = 1  # the patient's right lung, on the image left
    lungs[10:90, 70:110] = 1
    medial, height = _zones(lungs)
    assert medial[50, 49] == 0 and medial[50, 10] == 1 and medial[50, 70] == 0
    assert height[10, 30] == 0 and height[89, 90] == 1 and np.isnan(medial[5, 5])
    assert _site(float(medial[50, 45]), float(height[50, 45])) == "medial"
    assert medial[50, 45] < MEDIAL_ZONE
    assert _site(float(medial[12, 15]), float(height[12, 15])) == "apical"
    assert _site(float(medial[85, 105]), float(height[85, 105])) == "basal"
    assert _site(float(medial[50, 15]), float(height[50, 15])) == "peripheral"


def test_medial_and_rib_targets_are_used(films: tuple[Path, Path], tmp_path: Path) -> None:
    simulate(films, tmp_path / "t", per_image=4, seed=0, sizes_mm=(5.0, 8.0))
    points = read_points(tmp_path / "t" / "points.csv", PIXEL_MM)
    targets = {p.extra["target"] for p in points}
    assert {"medial", "rib"} <= targets
    for p in points:
        if p.extra["target"] == "medial":
            assert p.extra["site"] == "medial"


def test_film_without_lung_mask_is_skipped_and_bad_arguments(
    films: tuple[Path, Path], tmp_path: Path
) -> None:
    first = sorted(films[1].iterdir())[0]
    first.unlink()
    with pytest.warns(DatasetWarning, match=first.name):
        s = simulate(films, tmp_path / "s")
    assert s.skipped == [first.name] and s.images == 3  # type: ignore[attr-defined]
    assert not (tmp_path / "s" / "images" / first.name).exists()
    with pytest.raises(DatasetError, match="per_image"):
        simulate(films, tmp_path / "x", per_image=-1)
    with pytest.raises(DatasetError, match="contrasts"):
        simulate(films, tmp_path / "x", contrasts=(0.2, 0.1))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no film has a lung mask"), pytest.warns(DatasetWarning):
        simulate_nodules(films[0], empty, tmp_path / "x")


def test_simulate_cli(
    films: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    args = ["simulate-nodules", str(films[0]), str(films[1]), str(out), "--per-image", "2"]
    args += ["--seed", "7", "--pixel-mm", "1.4", "--prior-shift-mm", "3", "--prior-blur-mm", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("4 films, 8 nodules (") and printed.count("\n") == 1
    assert len(list((out / "priors").iterdir())) == 4
    assert main(["simulate-nodules", str(films[0]), str(tmp_path / "nope"), str(out)]) == 2
    assert "nope" in capsys.readouterr().err
