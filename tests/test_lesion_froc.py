"""FROC: hits within the radius, duplicates ignored, FPs per image, groups, bootstrap, CLI."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from cxrssl.cli.main import main
from cxrssl.data.datasets import index_files
from cxrssl.errors import DatasetError
from cxrssl.lesions.froc import (
    CONTRAST_GROUPS,
    SIZE_GROUPS,
    by_group,
    contrast_group,
    froc,
    plot_froc,
    size_group,
    subtlety_group,
)
from cxrssl.lesions.points import Point, read_points, write_points


def _truth() -> list[Point]:
    return [
        Point("a.png", 50, 50, 20, subtlety=5),  # N1, radius 10
        Point("a.png", 150, 150, 10, subtlety=2),  # N2, radius 5
        Point("b.png", 100, 100, 20),  # N3, no subtlety
    ]


def _detections() -> list[Point]:
    return [
        Point("a.png", 52, 50, 8, score=0.9),  # hits N1
        Point("a.png", 50, 55, 8, score=0.6),  # hits N1 again: a duplicate, ignored
        Point("a.png", 155.5, 150, 8, score=0.95),  # 5.5 px from N2 (radius 5): FP
        Point("a.png", 154.9, 150, 8, score=0.3),  # 4.9 px from N2: hit
        Point("b.jpg", 100, 100, 8, score=0.5),  # hits N3 (matched by stem)
        Point("c.png", 10, 10, 8, score=0.8),  # an image without a nodule: FP
        Point("d.png", 20, 20, 8, score=0.4),  # FP
    ]


# Events by descending score: FP .95, TP .9, FP .8, TP .5, FP .4, TP .3 over 4 images.
def test_hand_computed_froc() -> None:
    r = froc(_detections(), _truth(), n_images=4, n_boot=0)
    assert r.rates == (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
    assert r.sensitivity == pytest.approx((0, 1 / 3, 2 / 3, 1, 1, 1))
    assert r.thresholds == pytest.approx((math.inf, 0.9, 0.5, 0.3, 0.3, 0.3))
    assert r.cpm == pytest.approx(2 / 3)
    assert r.curve_fp_per_image == pytest.approx([0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75])
    assert r.curve_sensitivity == pytest.approx([0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    assert r.curve_threshold == pytest.approx([math.inf, 0.95, 0.9, 0.8, 0.5, 0.4, 0.3])
    assert (r.n_nodules, r.n_found, r.n_images, r.n_detections) == (3, 3, 4, 7)
    assert (r.n_false_positives, r.n_duplicates) == (3, 1)
    assert all(math.isnan(v) for v in r.ci_low + r.ci_high)


def test_more_images_lower_the_fp_rate() -> None:
    # Twice the images (four without any row): a limit of 1 FP at 0.125 FPs per image.
    r = froc(_detections(), _truth(), n_images=8, n_boot=0)
    assert r.sensitivity == pytest.approx((1 / 3, 2 / 3, 1, 1, 1, 1))


def test_duplicate_with_top_score_is_not_a_false_positive() -> None:
    dets = [*_detections(), Point("b.png", 101, 101, 8, score=0.99)]
    r = froc(dets, _truth(), n_images=4, n_boot=0)
    # N3 now counts at 0.99, its 0.5 hit is the duplicate; FPs unchanged.
    assert (r.n_false_positives, r.n_duplicates) == (3, 2)
    assert r.sensitivity[0] == pytest.approx(1 / 3)


def test_shifted_beyond_radius_scores_zero_and_no_truth_is_nan() -> None:
    shifted = [Point(p.file, p.x + p.radius_px + 0.01, p.y, 8, score=1.0) for p in _truth()]
    r = froc(shifted, _truth(), n_images=3, n_boot=0)
    assert r.sensitivity == (0.0,) * 6 and r.n_false_positives == 3
    empty = froc(_detections(), [], n_images=4, n_boot=10)
    assert math.isnan(empty.cpm) and empty.n_false_positives == 7 and empty.n_boot == 0


def test_errors() -> None:
    with pytest.raises(DatasetError, match=r"c\.png.*no score"):
        froc([Point("c.png", 1, 1, 3)], _truth(), n_images=4)
    with pytest.raises(DatasetError, match=r"n_images is 3 but .* name 4 images"):
        froc(_detections(), _truth(), n_images=3)
    with pytest.raises(DatasetError, match="rates"):
        froc(_detections(), _truth(), n_images=4, fps_per_image=(0, 1))


def test_size_bins_and_groups_keep_all_false_positives() -> None:
    key = size_group(0.35)
    assert [key(Point("x", 0, 0, mm / 0.35)) for mm in (9.99, 10, 20, 29.9, 30)] == [
        "<10 mm",
        "10-20 mm",
        "20-30 mm",
        "20-30 mm",
        ">=30 mm",
    ]
    # At 0.5 mm/px: N1 and N3 are 10 mm, N2 5 mm.
    groups = by_group(_detections(), _truth(), 4, size_group(0.5), n_boot=0, order=SIZE_GROUPS)
    assert list(groups) == ["<10 mm", "10-20 mm"]
    small, mid = groups["<10 mm"], groups["10-20 mm"]
    # N2 alone, its hit (0.3) below all three FPs: reached only within 4 FPs (1 per image).
    assert small.sensitivity == pytest.approx((0, 0, 0, 1, 1, 1))
    assert mid.sensitivity == pytest.approx((0, 0.5, 1, 1, 1, 1))
    assert small.n_false_positives == mid.n_false_positives == 3
    assert (small.n_nodules, mid.n_nodules) == (1, 2)
    subtle = by_group(_detections(), _truth(), 4, subtlety_group, n_boot=0)
    assert list(subtle) == ["subtlety 2", "subtlety 5"]  # N3 has none: in neither
    assert subtle["subtlety 5"].sensitivity[1] == pytest.approx(1.0)


def _slow_boot(
    dets: list[Point], truth: list[Point], n_images: int, n_boot: int, seed: int
) -> np.ndarray:
    """The bootstrap the slow way: copy each drawn image's rows under a fresh name."""
    named = sorted({p.stem for p in dets} | {p.stem for p in truth})
    stems = named + [f"empty{i}" for i in range(n_images - len(named))]
    pick = np.random.default_rng(seed).integers(0, n_images, size=(n_boot, n_images))
    out = []
    for row in pick:
        d2, t2 = [], []
        for k, i in enumerate(row):
            d2 += [
                Point(f"{k}", p.x, p.y, p.diameter_px, score=p.score)
                for p in dets
                if p.stem == stems[i]
            ]
            t2 += [Point(f"{k}", p.x, p.y, p.diameter_px) for p in truth if p.stem == stems[i]]
        r = froc(d2, t2, n_images, n_boot=0) if t2 else None
        out.append(r.sensitivity if r else (math.nan,) * 6)
    return np.array(out)


def test_bootstrap_matches_resampling_the_images() -> None:
    n_boot = 40
    r = froc(_detections(), _truth(), n_images=6, n_boot=n_boot, seed=3)
    slow = _slow_boot(_detections(), _truth(), 6, n_boot, seed=3)
    for j in range(6):
        col = slow[:, j][np.isfinite(slow[:, j])]
        low, high = np.quantile(col, [0.025, 0.975])
        assert (r.ci_low[j], r.ci_high[j]) == pytest.approx((low, high))
        assert r.ci_low[j] <= r.sensitivity[j] <= r.ci_high[j]
    again = froc(_detections(), _truth(), n_images=6, n_boot=n_boot, seed=3)
    assert again.ci_low == r.ci_low and r.n_boot == n_boot
    assert r.cpm_low <= r.cpm <= r.cpm_high


def _random_case(n_images: int, seed: int) -> tuple[list[Point], list[Point]]:
    rng = np.random.default_rng(seed)
    truth = [Point(f"i{i}.png", *rng.uniform(100, 900, 2), 30) for i in range(0, n_images, 2)]
    dets = [
        Point(p.file, p.x + rng.normal(0, 10), p.y + rng.normal(0, 10), 20, score=rng.uniform())
        for p in truth
    ]
    dets += [
        Point(f"i{rng.integers(n_images)}.png", *rng.uniform(0, 1000, 2), 20, score=rng.uniform())
        for _ in range(3 * n_images)
    ]
    return dets, truth


def test_bootstrap_is_cheap_for_200_images() -> None:
    dets, truth = _random_case(200, 0)
    start = time.perf_counter()
    r = froc(dets, truth, 200, n_boot=1000)
    assert time.perf_counter() - start < 5.0
    assert all(lo <= s <= hi for lo, s, hi in zip(r.ci_low, r.sensitivity, r.ci_high, strict=True))
    assert r.ci_high[-1] - r.ci_low[0] > 0


def test_plot(tmp_path: Path) -> None:
    r = froc(_detections(), _truth(), n_images=4, n_boot=20)
    groups = by_group(_detections(), _truth(), 4, size_group(0.5), n_boot=0)
    path = tmp_path / "froc.png"
    plot_froc(r, path, groups)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def case(tmp_path: Path) -> dict[str, Path]:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (images / name).write_bytes(b"")  # only the names count
    dets, truth = tmp_path / "detections.csv", tmp_path / "truth.csv"
    write_points(dets, _detections())
    write_points(truth, [*_truth(), Point("z.png", 5, 5, 10)], pixel_mm=0.5)
    return {"images": images, "dets": dets, "truth": truth, "root": tmp_path}


def test_cli_table_json_plot(case: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out, plot = case["root"] / "froc.json", case["root"] / "froc.png"
    argv = ["evaluate-detections", str(case["dets"]), str(case["truth"])]
    opts = ["--images", str(case["images"]), "--pixel-mm", "0.5", "--n-boot", "50"]
    assert main([*argv, *opts, "--json", str(out), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "1 truth nodules on images outside" in text  # z.png
    assert "4 images, 3 nodules" in text and "CPM" in text and "by size" in text
    assert "<10 mm" in text and "subtlety 5" in text
    result = json.loads(out.read_text())
    assert result["overall"]["sensitivity"] == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1])
    assert result["overall"]["thresholds"][0] is None  # inf: keep nothing
    assert result["by_size"]["<10 mm"]["sensitivity"] == pytest.approx([0, 0, 0, 1, 1, 1])
    assert plot.is_file()


def test_cli_image_count_sources(case: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = case["root"] / "n.json"
    argv = ["evaluate-detections", str(case["dets"]), str(case["truth"]), "--n-boot", "0"]
    assert main([*argv, "--n-images", "9", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["overall"]["n_images"] == 9
    with pytest.warns(UserWarning, match="5 images named .* not counted"):
        assert main([*argv, "--json", str(out)]) == 0  # a, b, c, d and z
    assert json.loads(out.read_text())["overall"]["n_images"] == 5
    (case["images"] / "d.png").unlink()
    assert main([*argv, "--images", str(case["images"])]) == 2
    assert "1 image(s) not in" in capsys.readouterr().err


def test_cli_detections_without_score(
    case: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    write_points(case["dets"], [Point("a.png", 1, 1, 4)])
    assert main(["evaluate-detections", str(case["dets"]), str(case["truth"])]) == 2
    assert "without a score" in capsys.readouterr().err


@pytest.mark.realdata
def test_jsrt_truth_as_detections(shared_data: Path, tmp_path: Path) -> None:
    jsrt = shared_data / "jsrt"
    truth = read_points(jsrt / "nodules.csv", 0.35)
    images = index_files(jsrt / "images")
    n = len(images)
    normals = sorted(set(images) - {p.stem for p in truth})
    assert normals  # films without a nodule
    rng = np.random.default_rng(0)
    k = math.ceil(0.125 * n) + 1  # just over 0.125 FPs per image, under 0.25
    fps = [
        Point(f"{normals[i % len(normals)]}.png", *rng.uniform(0, 1024, 2), 10, score=1.0)
        for i in range(k)
    ]
    dets = [Point(p.file, p.x, p.y, p.diameter_px, score=1.0) for p in truth] + fps
    r = froc(dets, truth, n, n_boot=200)
    assert r.n_nodules == len(truth) and r.n_false_positives == k
    assert r.sensitivity[0] == 0.0  # all share one score: 0.125 FPs/image is not reachable
    assert r.sensitivity[1:] == pytest.approx((1.0,) * 5)
    shifted = [Point(p.file, p.x + p.diameter_px, p.y, 10, score=1.0) for p in truth]
    assert froc(shifted, truth, n, n_boot=0).sensitivity == (0.0,) * 6
    # The command on the same data, counting every image in the folder.
    path, out = tmp_path / "dets.csv", tmp_path / "froc.json"
    write_points(path, dets)
    argv = ["evaluate-detections", str(path), str(jsrt / "nodules.csv")]
    assert main([*argv, "--images", str(jsrt / "images"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["overall"]["n_images"] == n
    assert result["overall"]["sensitivity"][1:] == pytest.approx([1.0] * 5)
    assert set(result["by_subtlety"]) == {f"subtlety {s}" for s in range(1, 6)}
    assert result["by_contrast"] == {}  # real nodules have no simulated contrast


def test_contrast_breakdown_of_simulated_truth() -> None:
    truth = [
        Point(f"{i}.png", 10, 10, 8, extra={"contrast": c})
        for i, c in enumerate(("0.06", "0.12", "0.12", "0.2", "bad"))
    ]
    assert [contrast_group(p) for p in truth] == [
        "contrast <0.10",
        "contrast 0.10-0.15",
        "contrast 0.10-0.15",
        "contrast >=0.20",
        None,
    ]
    hits = [Point("1.png", 10, 10, 8, score=0.9), Point("0.png", 40, 40, 8, score=0.8)]
    groups = by_group(hits, truth, 5, contrast_group, n_boot=0, order=CONTRAST_GROUPS)
    assert list(groups) == ["contrast <0.10", "contrast 0.10-0.15", "contrast >=0.20"]
    assert groups["contrast 0.10-0.15"].n_found == 1 and groups["contrast <0.10"].n_found == 0
