"""The classical nodule detector: candidates, the classifier file, train-detector and
detect-nodules on generated films, and candidates on real JSRT nodules."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cxrssl.cli.main import main
from cxrssl.errors import DatasetError
from cxrssl.lesions.candidates import (
    FEATURE_NAMES,
    PRIOR_FEATURE_NAMES,
    Candidates,
    find_candidates,
    with_prior,
)
from cxrssl.lesions.detector import (
    fit_detector,
    hit_diameters,
    label_candidates,
    load_detector,
)
from cxrssl.lesions.points import Point, read_points, write_points
from cxrssl.lesions.priors import make_prior, prior_builder, search_region

MM = 0.7  # generated films are drawn at the working pixel size


def _film(rng: np.random.Generator, nodules: list[tuple[float, float, float]]) -> np.ndarray:
    """A 256 px grey film: smooth shading, 'ribs' (bright horizontal bands), noise, and a
    bright soft disc (x, y, radius px) per nodule."""
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    img = 0.35 + 0.1 * np.sin(xx / 60) + 0.04 * rng.standard_normal((256, 256)).astype(np.float32)
    for y0 in range(20, 256, 34):
        img += 0.12 * np.exp(-(((yy - y0 - 0.1 * xx) / 3.0) ** 2))
    for x, y, r in nodules:
        img += 0.125 * (1 - np.tanh((np.hypot(xx - x, yy - y) - r) / 2.4))
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def _folder(root: Path, n: int, seed: int = 0) -> tuple[Path, Path, list[Point]]:
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    points = []
    for i in range(n):
        nodules = []
        if i % 4 != 3:  # every fourth film has no nodule
            x, y = rng.uniform(40, 216, 2)
            r = float(rng.uniform(5, 10))
            nodules.append((float(x), float(y), r))
            points.append(Point(f"f{i:02d}.png", float(x), float(y), 2 * r))
        cv2.imwrite(str(images / f"f{i:02d}.png"), _film(rng, nodules))
    lungs = root / "lungs"  # the whole film (the rule-based lungs are for radiographs)
    lungs.mkdir()
    for i in range(n):
        cv2.imwrite(str(lungs / f"f{i:02d}.png"), np.full((256, 256), 255, np.uint8))
    with (root / "labels.csv").open("w") as fh:  # two films per patient
        fh.write("filename,patient_id\n")
        fh.writelines(f"f{i:02d}.png,p{i // 2}\n" for i in range(n))
    csv_path = root / "points.csv"
    write_points(csv_path, points)
    return images, csv_path, points


def _train(images: Path, points: Path, out: Path, *extra: str) -> int:
    """``cxrssl train-detector`` on a generated folder; returns the exit code."""
    args = ["--images", str(images), "--points", str(points), "--out", str(out), *extra]
    return main(["train-detector", *args])


def test_a_bright_disc_is_the_strongest_candidate_at_its_size() -> None:
    rng = np.random.default_rng(1)
    img = _film(rng, [(120.0, 90.0, 8.0)])
    found = find_candidates(img, MM, lungs=np.ones_like(img))
    assert found.features.shape == (len(found), len(FEATURE_NAMES))
    assert np.isfinite(found.features).all()
    assert np.hypot(*(found.xy[0] - (120, 90))) < 3
    assert 12 <= found.diameter_px[0] <= 27  # 16 px across, on a scale grid of 1.5x steps
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}  # the columns are the names
    blobs = found.features[:, [i for n, i in col.items() if n.startswith("blob_")][:5]]
    assert np.allclose(found.features[:, col["best_blob"]], blobs.max(axis=1), atol=1e-4)
    hess = found.features[:, col["hess_min_2mm"]] + found.features[:, col["hess_max_2mm"]]
    assert np.allclose(found.features[:, col["blob_2mm"]], -hess, atol=1e-3)


def test_candidates_follow_the_pixel_size() -> None:
    """The same film at twice the resolution (half the pixel size) gives its candidate at
    the same place, in its own pixels."""
    img = _film(np.random.default_rng(2), [(100.0, 140.0, 7.0)])
    big = cv2.resize(img, (512, 512), interpolation=cv2.INTER_LINEAR)
    a = find_candidates(img, MM, lungs=np.ones_like(img))
    b = find_candidates(big, MM / 2, lungs=np.ones_like(big))
    assert np.hypot(*(b.xy[0] / 2 - a.xy[0])) < 2
    assert b.diameter_px[0] == pytest.approx(2 * a.diameter_px[0])


def test_candidates_stay_in_the_lungs_and_respect_the_limit() -> None:
    img = _film(np.random.default_rng(3), [(60.0, 60.0, 8.0), (190.0, 190.0, 8.0)])
    lungs = np.zeros_like(img)
    lungs[:128, :128] = 1
    found = find_candidates(img, MM, lungs=lungs, n_candidates=5)
    assert 1 <= len(found) <= 5
    assert (found.xy < 128 + 3 / MM + 1).all()  # the lungs grown by LUNG_MARGIN_MM
    assert np.hypot(*(found.xy[0] - (60, 60))) < 3
    with pytest.raises(DatasetError, match="pixel size"):
        find_candidates(img, 0.0)
    with pytest.raises(DatasetError, match="is the pixel size right"):
        find_candidates(img, 1e5)
    with pytest.raises(DatasetError, match="at least one candidate"):
        find_candidates(img, MM, n_candidates=0)


def test_candidates_on_a_non_square_film_map_back_on_both_axes() -> None:
    img = _film(np.random.default_rng(5), [(100.0, 60.0, 8.0)])[:, :180]  # 256 x 180
    big = cv2.resize(img, (540, 768), interpolation=cv2.INTER_LINEAR)  # 3x
    found = find_candidates(big, MM / 3, lungs=np.ones_like(big))
    assert np.hypot(*(found.xy[0] / 3 - (100, 60))) < 3


def test_detector_file_round_trips_and_refuses_tampering(tmp_path: Path) -> None:
    img = _film(np.random.default_rng(4), [(128.0, 128.0, 8.0)])
    found = find_candidates(img, MM, lungs=np.ones_like(img))
    labels = label_candidates(found, [Point("a.png", 128, 128, 16)])
    assert labels[0] == 1 and labels.sum() < len(labels)
    det = fit_detector(found.features, labels, MM, 100)
    det.save(tmp_path / "detector.json")
    back = load_detector(tmp_path)  # the run folder is enough
    assert np.allclose(back.score(found.features), det.score(found.features))
    assert det.detections("a.png", found)[0].score == pytest.approx(
        float(det.score(found.features).max())
    )
    raw = json.loads((tmp_path / "detector.json").read_text())
    for change, message in (
        ({"kind": "something else"}, "not a cxrssl nodule detector"),
        ({"coef": raw["coef"][:-1]}, "'coef' must be"),
        ({"coef": ["1"] * len(raw["coef"])}, "'coef' must be"),
        ({"mean": [float("nan")] * len(raw["mean"])}, "'mean' must be"),
        ({"scale": [0.0] * len(raw["scale"])}, "'scale' must be positive"),
        ({"feature_names": ["x"] * len(FEATURE_NAMES)}, "other candidate features"),
        ({"feature_names": 3}, "other candidate features"),
        ({"settings": {**raw["settings"], "WORK_MM": 0.5}}, "other candidate features"),
        ({"unknown": 1}, "unknown fields"),
        ({"thresholds": [1, 2]}, "'thresholds' must be"),
        ({"thresholds": {"1": "high"}}, "'1' must be a number"),
        ({"thresholds": {"3": 0.5}}, "no operating point"),
        ({"n_candidates": 1.5}, "'n_candidates' must be an integer"),
        ({"n_candidates": 0}, "'n_candidates' must be a number in"),
        ({"pixel_mm": "0.35"}, "'pixel_mm' must be a number"),
        ({"pixel_mm": 1e300}, "'pixel_mm' must be a number"),
        ({"intercept": None}, "'intercept' must be a number"),
        ({"size_coef": raw["size_coef"][:3]}, "'size_coef' must be"),
        ({"size_intercept": float("inf")}, "'size_intercept' must be a number"),
        ({"prior": "yes"}, "'prior' must be true or false"),
        ({"prior": True}, "other candidate features"),  # a prior's detector has 4 more
        ({"search_mm": -1}, "'search_mm' must be a number"),
        ({"search_mm": 10}, "'search_mm' must be a number"),  # no prior, no search radius
        ({"prior": 1}, "'prior' must be true or false"),
    ):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**raw, **change}))
        with pytest.raises(DatasetError, match=message) as info:
            load_detector(bad)
        assert "bad.json" in str(info.value)
    missing = {k: v for k, v in raw.items() if k != "settings"}
    (tmp_path / "bad.json").write_text(json.dumps(missing))
    with pytest.raises(DatasetError, match="missing or unknown fields"):
        load_detector(tmp_path / "bad.json")
    older = {k: v for k, v in raw.items() if not k.startswith("size_")} | {"version": "0.0.1"}
    (tmp_path / "old.json").write_text(json.dumps(older))
    with pytest.raises(DatasetError, match=r"made by cxrssl '0\.0\.1'.*retrain"):
        load_detector(tmp_path / "old.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatasetError, match=r"deep\.json"):
        load_detector(tmp_path / "deep.json")
    (tmp_path / "junk.json").write_bytes(b"\x80\x04pickle")
    with pytest.raises(DatasetError, match=r"junk\.json"):
        load_detector(tmp_path / "junk.json")
    with pytest.raises(DatasetError, match="candidates hit a nodule"):
        fit_detector(found.features, np.zeros(len(found)), MM, 100)


def test_train_detector_and_detect_nodules_on_generated_films(tmp_path: Path) -> None:
    images, points, truth = _folder(tmp_path / "data", 16)
    lungs = tmp_path / "data" / "lungs"
    (images / "broken.png").write_bytes(b"not a png")
    run = tmp_path / "run"
    extra = ["--pixel-mm", str(MM), "--workers", "1", "--lungs", str(lungs)]
    code = _train(images, points, run, "--folds", "4", *extra)
    assert code == 1  # one image could not be read; the run went on without it
    failures = list(csv.reader((run / "failures.csv").open()))
    assert failures[1][0] == "broken.png"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["images"] == 16 and summary["nodules"] == len(truth) == 12
    assert summary["nodules_hit_by_a_candidate"] >= 11
    froc = summary["froc"]
    assert froc["sensitivity"][froc["rates"].index(1.0)] >= 0.75  # obvious discs, out of fold
    folds = list(csv.DictReader((run / "folds.csv").open()))
    assert sorted({row["fold"] for row in folds}) == ["0", "1", "2", "3"]
    fold_of = {}
    for row in folds:  # a patient's films share a fold
        assert fold_of.setdefault(row["patient_id"], row["fold"]) == row["fold"]
    oof = read_points(run / "detections.csv")
    assert {d.file for d in oof} == {f"f{i:02d}.png" for i in range(16)}
    det = load_detector(run)
    assert set(det.thresholds) >= {"1", "4"}

    out = tmp_path / "found"
    lung_args = ["--workers", "1", "--lungs", str(lungs)]
    assert main(["detect-nodules", str(run), str(images), str(out), *lung_args]) == 1
    every = read_points(out / "detections.csv")
    out1 = tmp_path / "found1"
    main(["detect-nodules", str(run), str(images), str(out1), "--fp-per-image", "1", *lung_args])
    kept = read_points(out1 / "detections.csv")
    assert 0 < len(kept) < len(every)
    assert all((d.score or 0) >= det.thresholds["1"] for d in kept)
    with pytest.raises(SystemExit):  # not one of the cross-validated operating points
        main(["detect-nodules", str(run), str(images), str(out1), "--fp-per-image", "3"])
    plain = tmp_path / "plain"  # trained without cross-validation: no operating points
    _train(images, points, plain, "--folds", "0", *lung_args)
    assert not (plain / "detections.csv").exists()
    detect_at_1 = ["detect-nodules", str(plain), str(images), str(out1), "--fp-per-image", "1"]
    assert main([*detect_at_1, *lung_args]) == 2


def test_train_detector_refuses_points_without_nodules_on_the_images(tmp_path: Path) -> None:
    images, _, _ = _folder(tmp_path / "data", 4)
    points = tmp_path / "other.csv"
    write_points(points, [Point("elsewhere.png", 10, 10, 8)])
    with pytest.warns(UserWarning, match="name no image"):
        assert _train(images, points, tmp_path / "run", "--workers", "1") == 2


def test_candidates_find_the_obvious_jsrt_nodules(shared_data: Path) -> None:
    """Real films: nearly every obvious nodule (subtlety 4-5) of 20 JSRT films lies under
    one of the 100 candidates."""
    jsrt = shared_data / "jsrt"
    if not (jsrt / "nodules.csv").is_file():
        pytest.skip(f"{jsrt}: JSRT not found")
    from cxrssl.io import read_gray8

    obvious = [p for p in read_points(jsrt / "nodules.csv") if (p.subtlety or 0) >= 4][:20]
    hit = 0
    for p in obvious:
        found = find_candidates(read_gray8(jsrt / "images" / p.file), 0.35)
        hit += bool(label_candidates(found, [p]).any())
    assert hit >= 17, f"{hit} of {len(obvious)} obvious nodules under a candidate"


def test_no_fold_model_trains_on_a_film_it_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxrssl.tasks.nodule_detection as task

    images, points, _ = _folder(tmp_path / "data", 12)
    names: dict[int, str] = {}
    trained: list[set[str]] = []
    real_candidates, real_fit = task.candidates_of, task._fit

    def candidates_of(paths: Any, *args: Any, **kwargs: Any) -> Any:
        found, failed = real_candidates(paths, *args, **kwargs)
        names.update({id(c): p.name for p, c in found.items()})
        return found, failed

    def fit(found: Any, *args: Any) -> Any:
        trained.append({names[id(c)] for c in found})
        return real_fit(found, *args)

    monkeypatch.setattr(task, "candidates_of", candidates_of)
    monkeypatch.setattr(task, "_fit", fit)
    task.train_detector(
        images,
        points,
        tmp_path / "run",
        folds=3,
        pixel_mm=MM,
        workers=1,
        lungs=tmp_path / "data" / "lungs",
    )
    folds = list(csv.DictReader((tmp_path / "run" / "folds.csv").open()))
    assert len(trained) == 4 and len(trained[0]) == 12  # all films, then one model per fold
    for k, used in enumerate(trained[1:]):
        scored = {row["file"] for row in folds if row["fold"] == str(k)}
        assert scored and not (used & scored) and used | scored == trained[0]


def test_search_region_and_hit_diameters() -> None:
    prior = np.zeros((100, 100), np.float32)
    assert not search_region(prior, 0.5, 10).any()  # no prior, nowhere to look
    prior[50, 30] = 1.0
    region = search_region(prior, 0.5, 10)  # 20 px around the marked pixel
    assert region[50, 10] and region[50, 50] and not region[50, 52] and not region[75, 30]
    found = find_candidates(_film(np.random.default_rng(6), [(128.0, 128.0, 8.0)]), MM)
    truth = [Point("a.png", *found.xy[0], 16.0), Point("a.png", *found.xy[1], 30.0)]
    sizes = hit_diameters(found, truth)
    hits = label_candidates(found, truth).astype(bool)
    assert sizes[0] == 16.0 and sizes[1] == 30.0
    assert np.isnan(sizes[~hits]).all() and np.isfinite(sizes[hits]).all()
    assert np.isnan(hit_diameters(found, [])).all()


def test_a_prior_builder_travels_to_worker_processes() -> None:
    import pickle

    points = [Point("f01.png", 40.0, 60.0, 12.0)]
    build = prior_builder("heatmap", points, shift_mm=3.0, pixel_mm=MM, seed=2)
    assert build is not None
    image = np.zeros((128, 128), np.uint8)
    again = pickle.loads(pickle.dumps(build))
    assert np.array_equal(build(Path("f01.png"), image), again(Path("f01.png"), image))
    assert build(Path("f01.png"), image).max() > 0.9  # the peak, off the pixel grid
    assert not build(Path("f02.png"), image).any()  # no point, no prior


def test_train_detector_with_a_prior_finds_and_masks_the_marked_nodule(tmp_path: Path) -> None:
    images, points, truth = _folder(tmp_path / "data", 16, seed=3)
    lungs = tmp_path / "data" / "lungs"
    run = tmp_path / "run"
    prior = ["--priors", "heatmap", "--prior-shift-mm", "3", "--search-mm", "8"]
    common = ["--pixel-mm", str(MM), "--workers", "1", "--lungs", str(lungs)]
    assert _train(images, points, run, "--folds", "4", *prior, *common) == 0
    summary = json.loads((run / "summary.json").read_text())
    seg = summary["segmentation"]
    assert seg["images_with_nodules"] == 12 and seg["clear"] == 1.0
    assert seg["dice"]["mean"] >= 0.6, seg  # obvious discs, the prior within 3 mm
    assert len(seg["dice"]["folds"]) == 4
    masks = sorted(p.name for p in (run / "masks").iterdir())
    assert masks == [f"f{i:02d}.png" for i in range(16)]
    reach = (3 + 8) / MM + 2 * 10  # shift + search + the heatmap's marked radius, px
    by_file = {p.file: p for p in truth}
    for d in read_points(run / "detections.csv"):  # candidates only near the prior
        assert d.file in by_file, f"{d.file} has no nodule and no prior, yet a detection"
        p = by_file[d.file]
        assert np.hypot(d.x - p.x, d.y - p.y) <= reach
    assert load_detector(run).prior and load_detector(run).search_mm == 8

    out = tmp_path / "found"
    detect = ["detect-nodules", str(run), str(images), str(out), "--workers", "1"]
    assert main([*detect, "--lungs", str(lungs)]) == 2  # trained with a prior: needs one
    heat = ["--priors", "heatmap", "--points", str(points), "--lungs", str(lungs)]
    assert main([*detect, *heat]) == 0
    assert len(list((out / "masks").iterdir())) == 16
    found = cv2.imread(str(out / "masks" / "f00.png"), cv2.IMREAD_GRAYSCALE)
    p = by_file["f00.png"]
    assert found[round(p.y), round(p.x)] == 255  # the nodule under its mask
    plain = tmp_path / "plain"
    assert _train(images, points, plain, "--folds", "0", *common) == 0
    other = ["detect-nodules", str(plain), str(images), str(out), *heat]
    assert main(other) == 2  # trained without a prior: refuses one


def test_candidates_near_a_prior_and_their_parts() -> None:
    img = _film(np.random.default_rng(7), [(60.0, 60.0, 8.0), (190.0, 190.0, 8.0)])
    none = find_candidates(img, MM, np.ones_like(img), search=np.zeros_like(img))
    assert len(none) == 0  # an empty prior: nowhere to look
    empty = with_prior(none, np.zeros(img.shape, np.float32), np.zeros_like(img), MM)
    assert empty.features.shape == (0, len(FEATURE_NAMES) + len(PRIOR_FEATURE_NAMES))
    points = [Point("a.png", 60.0, 60.0, 16.0), Point("a.png", 190.0, 190.0, 16.0)]
    prior = make_prior("heatmap", img, points)
    search = search_region(prior, MM, 15.0)
    found = with_prior(find_candidates(img, MM, search=search), prior, search, MM)
    assert found.region is not None and set(found.region.tolist()) == {1, 2}
    near = [
        np.hypot(*(found.xy[found.region == k] - (p.x, p.y)).T).min()
        for k, p in ((1, points[0]), (2, points[1]))
    ]
    assert max(near) < 3  # each nodule is a candidate of its own part
    labels = label_candidates(found, points)
    det = fit_detector(found.features, labels, MM, 100, hit_diameters(found, points), True, 15.0)
    picks = det.picks("a.png", found)
    assert len(picks) == 2  # one nodule per marked place
    assert all(
        np.hypot(d.x - p.x, d.y - p.y) < 8
        for d, p in zip(sorted(picks, key=lambda d: d.x), points, strict=True)
    )
    # a candidate found on the coarser grid just outside the region joins the nearest part
    stray = Candidates(
        np.array([[60.0, 60.0 + 15 / MM + 18]]),
        np.array([10.0]),
        np.zeros((1, len(FEATURE_NAMES)), np.float32),
    )
    assert with_prior(stray, prior, search, MM).region.tolist() == [1]  # type: ignore[union-attr]
    with pytest.raises(DatasetError, match="around a prior"):
        det.picks("a.png", find_candidates(img, MM, np.ones_like(img)))


def test_train_detector_with_a_folder_prior_and_given_masks(tmp_path: Path) -> None:
    images, points, truth = _folder(tmp_path / "data", 12, seed=4)
    lungs, priors, masks = (tmp_path / "data" / n for n in ("lungs", "priors", "masks"))
    priors.mkdir()
    masks.mkdir()
    by_file = {p.file: [p] for p in truth}
    yy, xx = np.mgrid[0:256, 0:256]
    for i in range(12):
        name = f"f{i:02d}.png"
        nodules = by_file.get(name, [])
        heat = make_prior("heatmap", np.zeros((256, 256)), nodules)
        cv2.imwrite(str(priors / name), np.round(heat * 255).astype(np.uint8))
        disc = np.zeros((256, 256), np.uint8)
        for p in nodules:
            disc[np.hypot(xx - p.x, yy - p.y) <= p.radius_px] = 255
        if i != 1:  # one film with a nodule lacks its truth mask
            cv2.imwrite(str(masks / name), disc)
    run = tmp_path / "run"
    common = ["--pixel-mm", str(MM), "--workers", "1", "--lungs", str(lungs), "--folds", "3"]
    assert _train(images, points, run, "--priors", str(priors), "--masks", str(masks), *common) == 0
    seg = json.loads((run / "summary.json").read_text())["segmentation"]
    assert seg["truth"].startswith("the masks given")
    assert [row[0] for row in seg["unscored"]] == ["f01.png"] and "no truth mask" in seg[
        "unscored"
    ][0][1]
    assert seg["images_with_nodules"] == 8 and seg["clear"] == 1.0
    assert seg["dice"]["mean"] >= 0.6, seg
    assert _train(images, points, tmp_path / "r2", "--masks", str(masks), *common) == 2  # no prior
    assert _train(images, points, tmp_path / "r3", "--priors", "lungs", *common) == 2  # not a place
