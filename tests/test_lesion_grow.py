"""Nodule masks grown from centre points: generated nodules, fallbacks, folders, the CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrssl.cli.main import main
from cxrssl.data.datasets import DatasetWarning
from cxrssl.errors import DatasetError
from cxrssl.io import read_image, read_mask
from cxrssl.lesions.grow import grow_mask, grow_masks, nodule_mask
from cxrssl.lesions.points import Point, read_points


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def disc(shape: tuple[int, ...], centre: tuple[float, float], diameter: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= (diameter / 2) ** 2


def film(
    shape: tuple[int, int] = (160, 160),
    centre: tuple[float, float] = (80.3, 79.6),
    axes: tuple[float, float] = (14.0, 14.0),
    contrast: float = 0.25,
    noise: float = 0.01,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy grey film with a soft-edged projected ellipsoid (semi-axes along x, y) and
    its exact footprint."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    q = ((xx - centre[1]) / axes[0]) ** 2 + ((yy - centre[0]) / axes[1]) ** 2
    profile = cv2.GaussianBlur(np.sqrt(np.clip(1 - q, 0, None)), (0, 0), 1.5)
    image = 0.4 + 0.1 * yy / shape[0] + rng.normal(0, noise, shape).astype(np.float32)
    image = image + contrast * profile / profile.max() * (1 - image)
    return np.clip(image, 0, 1).astype(np.float32), q <= 1


def test_round_nodule_is_grown_close_to_its_footprint() -> None:
    image, truth = film()
    g = grow_mask(image, (80.3, 79.6), 28)
    assert g.method == "grown" and g.reason == "" and g.contrast > 0.1
    assert (
        g.mask.dtype == np.uint8
        and g.mask.shape == image.shape
        and set(np.unique(g.mask)) == {0, 1}
    )
    assert dice(g.mask, truth) > 0.9


def test_growing_beats_the_disc_on_an_elongated_nodule_and_a_wrong_diameter() -> None:
    image, truth = film(axes=(20.0, 11.0))  # area-equivalent diameter 2 sqrt(20 * 11) = 29.7
    g = grow_mask(image, (80.3, 79.6), 29.7)
    plain = disc(image.shape, (80.3, 79.6), 29.7)
    assert g.method == "grown" and dice(g.mask, truth) > dice(plain, truth) + 0.05
    image, truth = film()
    for diameter in (22.0, 36.0):  # the reader's diameter 20 % off the true 28
        g = grow_mask(image, (80.3, 79.6), diameter)
        assert dice(g.mask, truth) > dice(disc(image.shape, (80.3, 79.6), diameter), truth)


def test_flat_film_falls_back_to_a_disc_of_the_diameter() -> None:
    image, _ = film(contrast=0.0)
    g = grow_mask(image, (80, 80), 30)
    assert (g.method, g.reason) == ("disc", "low contrast")
    assert g.mask.sum() == pytest.approx(math.pi * 15**2, rel=0.05)
    assert g.mask[80, 80] == 1 and g.mask[80, 97] == 0
    darker = grow_mask(1 - film()[0], (80.3, 79.6), 28)  # a dark spot is no nodule
    assert darker.reason == "low contrast"
    tiny = grow_mask(film()[0], (80.3, 79.6), 2.0)
    assert (tiny.method, tiny.reason) == ("disc", "too small to grow")
    np.testing.assert_array_equal(tiny.mask, disc(tiny.mask.shape, (80.3, 79.6), 2.0))


def test_nodule_at_the_border_and_bad_input() -> None:
    image, truth = film(centre=(4.0, 150.0), axes=(10.0, 10.0))
    g = grow_mask(image, (4.0, 150.0), 20)
    assert g.mask.shape == image.shape and g.mask[4, 150] == 1
    assert dice(g.mask, truth) > 0.8
    with pytest.raises(DatasetError, match="outside the image"):
        grow_mask(image, (170.0, 10.0), 20)
    with pytest.raises(DatasetError, match="positive"):
        grow_mask(image, (50.0, 10.0), 0)
    with pytest.raises(ValueError, match="2-D or 3-D"):
        grow_mask(image[0], (5.0,), 4)
    with pytest.raises(ValueError, match="coordinates"):
        grow_mask(image, (5.0, 5.0, 5.0), 4)


def test_ball_grown_in_hounsfield_units() -> None:
    rng = np.random.default_rng(1)
    z, y, x = np.ogrid[:40, :40, :40]
    ball = (z - 20) ** 2 + (y - 19.5) ** 2 + (x - 21) ** 2 <= 7**2
    volume = np.where(ball, 30.0, -850.0) + rng.normal(0, 20, (40, 40, 40))
    g = grow_mask(volume.astype(np.float32), (20, 19.5, 21), 14)
    assert g.method == "grown" and g.mask.shape == volume.shape
    assert dice(g.mask, ball) > 0.9 and g.contrast == pytest.approx(880, abs=40)
    flat = grow_mask(rng.normal(-850, 20, (40, 40, 40)), (20, 20, 20), 14)
    assert flat.method == "ball" and flat.mask.sum() == pytest.approx(
        4 / 3 * math.pi * 343, rel=0.1
    )


def test_nodule_mask_is_the_union_and_names_the_file() -> None:
    image, _ = film()
    second, _ = film(centre=(30.0, 40.0), axes=(8.0, 8.0))
    both = np.maximum(image, second)
    points = [Point("a.png", 79.6, 80.3, 28), Point("a.png", 40.0, 30.0, 16)]
    mask = nodule_mask(both, points)
    assert mask.dtype == np.uint8 and mask[80, 80] == 1 and mask[30, 40] == 1 and mask[5, 150] == 0
    assert not nodule_mask(both, []).any()
    with pytest.raises(DatasetError, match=r"a\.png: the nodule at x=400, y=30"):
        nodule_mask(both, [Point("a.png", 400.0, 30.0, 16)])


def _folder(root: Path) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir()
    for i, centre in enumerate([(80.3, 79.6), (50.0, 100.0), None]):
        image, _ = film(centre=centre or (0, 0), contrast=0.25 if centre else 0.0, seed=i)
        cv2.imwrite(str(images / f"im{i}.png"), np.rint(image * 255).astype(np.uint8))
    points = root / "points.csv"
    rows = ["filename,x,y,diameter_mm,subtlety", "im0.png,79.6,80.3,9.8,3"]
    rows += ["im1.png,100,50,9.8,5", "gone.png,10,10,5,2"]
    points.write_text("\n".join(rows) + "\n")
    return images, points


def test_grow_masks_writes_every_image_and_the_table(tmp_path: Path) -> None:
    images, points = _folder(tmp_path)
    with pytest.warns(DatasetWarning, match="gone"):
        s = grow_masks(images, points, tmp_path / "out", pixel_mm=0.35)
    assert (s.images, s.nodules, s.negatives, s.unmatched) == (3, 2, 1, ["gone"])
    assert s.grown + s.discs == 2 and s.grown >= 1
    for i in range(3):
        mask = read_mask(tmp_path / "out" / f"im{i}.png", (160, 160))
        assert mask.any() == (i < 2)
    raw = cv2.imread(str(tmp_path / "out" / "im0.png"), cv2.IMREAD_UNCHANGED)
    assert raw is not None and set(np.unique(raw)) == {0, 255}
    rows = list(csv.DictReader(s.table.open()))
    assert [r["file"] for r in rows] == ["im0.png", "im1.png"]
    assert float(rows[0]["diameter_px"]) == pytest.approx(28, abs=0.01)
    assert rows[0]["method"] in {"grown", "disc"} and int(rows[0]["area_px"]) > 300


def test_points_naming_no_image_are_refused(tmp_path: Path) -> None:
    images, _ = _folder(tmp_path)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("filename,x,y,diameter_px\nother.png,5,5,10\n")
    with pytest.raises(DatasetError, match="no point names an image"):
        grow_masks(images, wrong, tmp_path / "out")
    outside = tmp_path / "outside.csv"
    outside.write_text("filename,x,y,diameter_px\nim0.png,500,5,10\n")
    with pytest.raises(DatasetError, match=r"im0\.png: the nodule at x=500"):
        grow_masks(images, outside, tmp_path / "out")


def test_grow_masks_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, points = _folder(tmp_path)
    with pytest.warns(DatasetWarning):
        code = main(["grow-masks", str(images), str(points), str(tmp_path / "o")])
    assert code == 0
    out = capsys.readouterr().out
    assert "3 images (1 without a nodule), 2 nodules" in out and out.count("\n") == 1
    assert (tmp_path / "o" / "grown.csv").is_file()
    assert main(["grow-masks", str(images), str(tmp_path / "none.csv"), str(tmp_path / "o")]) == 2
    assert "none.csv" in capsys.readouterr().err


@pytest.mark.realdata
def test_jsrt_nodules_grown_around_their_centres(shared_data: Path) -> None:
    jsrt = shared_data / "jsrt"
    points = read_points(jsrt / "nodules.csv")[:6]
    for p in points:
        image = read_image(jsrt / "images" / p.file)
        g = grow_mask(image, (p.y, p.x), p.diameter_px)
        assert g.mask[round(p.y), round(p.x)] == 1
        ys, xs = np.nonzero(g.mask)
        assert np.hypot(ys - p.y, xs - p.x).max() <= 0.75 * p.diameter_px + 1.5
        assert 0.3 < g.mask.sum() / (math.pi * p.radius_px**2) < 2.3
