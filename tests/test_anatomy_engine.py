"""The masks engine: outputs per kind, bad inputs in failures.csv, cache, pool, overlays."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import cxrssl
import cxrssl.anatomy.engine as engine
import cxrssl.anatomy.rules as rules
import cxrssl.files as files
import cxrssl.provenance as provenance
from cxrssl.anatomy import AnatomyError
from cxrssl.anatomy.engine import CODE_ROOTS, cache_key, run_masks
from cxrssl.provenance import modules_of

SAMPLE = Path(cxrssl.__file__).parent / "data" / "sample" / "images"


def _imread(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    assert image is not None, path
    return image


def _failures(out: Path) -> dict[str, str]:
    with (out / "failures.csv").open() as f:
        return {row["filename"]: row["reason"] for row in csv.DictReader(f)}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Three sample radiographs, an inverted one and one of every awkward input."""
    images = tmp_path / "images"
    images.mkdir()
    originals = sorted(SAMPLE.glob("*.png"))[:3]
    for path in originals:
        shutil.copy(path, images / path.name)
    first = _imread(originals[0], cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(images / "inverted.png"), 255 - first)
    cv2.imwrite(str(images / "tiny.png"), cv2.resize(first, (8, 8), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(images / "blank.png"), np.zeros((64, 64), np.uint8))
    cv2.imwrite(str(images / "constant.png"), np.full((64, 64), 128, np.uint8))
    (images / "notes.png").write_text("not an image at all\n")
    (images / "cut.png").write_bytes(originals[1].read_bytes()[:400])
    (images / "labels.csv").write_text("filename\n")
    return images


def test_every_input_gets_a_mask_or_a_failure_row(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_masks(folder, out, cache_dir=tmp_path / "cache")
    failures = _failures(out)
    assert summary.images == 9 and summary.skipped == 1
    assert summary.failed == len(failures) == 4
    assert summary.written == 5 and summary.cached == 0
    assert re.search(r"constant image \(every pixel is 0\)", failures["blank.png"])
    assert re.search(r"constant image \(every pixel is 128\)", failures["constant.png"])
    assert re.search(r"not an image", failures["notes.png"])
    assert re.search(r"truncated PNG", failures["cut.png"])
    for path in folder.iterdir():
        if path.suffix == ".png" and path.name not in failures:
            mask = _imread(out / path.name, cv2.IMREAD_UNCHANGED)
            image = _imread(path, cv2.IMREAD_GRAYSCALE)
            assert mask.shape == image.shape and set(np.unique(mask)) <= {0, 255}
    with (out / "quality.csv").open() as f:
        quality = {row["filename"]: float(row["quality"]) for row in csv.DictReader(f)}
    assert set(quality) == {p.name for p in folder.glob("*.png")} - set(failures)
    assert all(0.0 <= q <= 1.0 for q in quality.values())


def test_inverted_film_is_flipped_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    original = sorted(SAMPLE.glob("*.png"))[1]  # [0] has white lungs: its copy is missed
    shutil.copy(original, images / original.name)
    cv2.imwrite(str(images / "flipped.png"), 255 - _imread(original, cv2.IMREAD_GRAYSCALE))
    with caplog.at_level("WARNING", logger="cxrssl.anatomy.engine"):
        summary = run_masks(images, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert summary.inverted == ("flipped.png",)
    assert any("flipped.png: inverted film" in r.getMessage() for r in caplog.records)
    out = tmp_path / "out"
    assert np.array_equal(_imread(out / "flipped.png"), _imread(out / original.name))
    again = run_masks(images, tmp_path / "again", cache_dir=tmp_path / "cache")
    assert again.cached == 2 and again.inverted == ("flipped.png",)


def test_second_run_comes_from_the_cache(folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run_masks(folder, tmp_path / "a", cache_dir=cache)
    second = run_masks(folder, tmp_path / "b", cache_dir=cache)
    assert second.cached == first.written and second.written == 0
    for path in (tmp_path / "a").glob("*.png"):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()
    third = run_masks(folder, tmp_path / "c", cache_dir=cache, use_cache=False)
    assert third.written == first.written and third.cached == 0
    for i, entry in enumerate(sorted(cache.rglob("*.bin"))):  # damaged entries are recomputed
        torn = entry.read_bytes()[:-10]  # as if a run died while writing it
        entry.write_bytes(torn if i % 2 else b"\x00\x00\x00\x09{broken")
    fourth = run_masks(folder, tmp_path / "d", cache_dir=cache)
    assert fourth.written == first.written and fourth.failed == first.failed


def test_changed_parameter_code_or_image_misses_the_cache(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = run_masks(folder, tmp_path / "a", cache_dir=cache)
    assert run_masks(folder, tmp_path / "b", cache_dir=cache).cached == first.written
    with monkeypatch.context() as patch:  # a rule parameter: same source, new outputs
        patch.setattr(rules, "CORE_LEVEL", rules.CORE_LEVEL + 0.05)
        changed = run_masks(folder, tmp_path / "c", cache_dir=cache)
    assert changed.written == first.written and changed.cached == 0
    with monkeypatch.context() as patch:  # an edited source file of the computation
        patch.setattr(provenance, "source_hash", lambda modules: "edited")
        edited = run_masks(folder, tmp_path / "d", cache_dir=cache)
    assert edited.written == first.written and edited.cached == 0
    image = folder / "inverted.png"  # one rewritten image misses, the others hit
    cv2.imwrite(str(image), np.flipud(_imread(image, cv2.IMREAD_GRAYSCALE)))
    again = run_masks(folder, tmp_path / "e", cache_dir=cache)
    assert again.written == 1 and again.cached == first.written - 1


def test_cache_key_covers_the_code_that_runs() -> None:
    modules = modules_of(CODE_ROOTS)
    for name in ("cxrssl.anatomy.rules", "cxrssl.anatomy.trace", "cxrssl.io", "cxrssl.viz"):
        assert name in modules  # trace and viz are only imported, never named as roots
    keys = {cache_key(k, m) for k in ("lungs", "crop") for m in ("default", "seed")}
    assert len(keys) == 4 and cache_key("lungs", "default") in keys


def test_a_killed_run_leaves_no_torn_file(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Killed(BaseException):
        pass

    renames: list[str] = []
    real_replace = files.os.replace

    def dying_replace(src: str, dst: str | Path) -> None:
        if len(renames) == 5:  # some outputs and cache entries are in place, then the kill
            raise Killed
        renames.append(str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", dying_replace)
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(Killed):
        run_masks(folder, out, cache_dir=cache)
    assert renames, "the engine's writes must go through cxrssl.files"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    for path in out.glob("*.png"):  # whatever is there is whole
        source = _imread(folder / path.name, cv2.IMREAD_GRAYSCALE)
        assert _imread(path, cv2.IMREAD_GRAYSCALE).shape == source.shape
    entries = sorted(cache.rglob("*.bin"))
    assert entries and all(engine._lookup(entry) is not None for entry in entries)
    monkeypatch.undo()
    summary = run_masks(folder, out, cache_dir=cache)  # the re-run completes the rest
    assert summary.cached == len(entries) and (out / "quality.csv").is_file()


def test_two_workers_give_the_same_outputs(folder: Path, tmp_path: Path) -> None:
    run_masks(folder, tmp_path / "one", use_cache=False)
    summary = run_masks(folder, tmp_path / "two", workers=2, use_cache=False)
    assert summary.failed == 4
    for path in (tmp_path / "one").glob("*.png"):
        assert path.read_bytes() == (tmp_path / "two" / path.name).read_bytes()


def test_kinds_regions_pathology_crop_and_overlays(folder: Path, tmp_path: Path) -> None:
    regions = run_masks(folder, tmp_path / "r", kind="regions", use_cache=False)
    labels = _imread(tmp_path / "r" / "inverted.png", cv2.IMREAD_UNCHANGED)
    assert regions.written == 5 and labels.max() <= 6
    run_masks(folder, tmp_path / "p", kind="pathology", use_cache=False)
    lungs = run_masks(folder, tmp_path / "l", use_cache=False, overlays_dir=tmp_path / "ov")
    for path in (tmp_path / "p").glob("*.png"):
        inside = _imread(tmp_path / "l" / path.name, cv2.IMREAD_GRAYSCALE)
        assert not np.any(_imread(path, cv2.IMREAD_GRAYSCALE) > inside)
    overlay = _imread(tmp_path / "ov" / "tiny.png", cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (8, 8, 3) and lungs.failed == 4
    crop = run_masks(folder, tmp_path / "c", kind="crop", use_cache=False)
    with (tmp_path / "c" / "boxes.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert crop.written == len(rows) == 5 and not list((tmp_path / "c").glob("*.png"))
    assert all(int(r["x0"]) < int(r["x1"]) and int(r["y0"]) < int(r["y1"]) for r in rows)


def test_huge_image_gets_a_mask(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    first = _imread(sorted(SAMPLE.glob("*.png"))[0], cv2.IMREAD_GRAYSCALE)
    huge = cv2.resize(first, (6000, 6000), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(images / "huge.png"), huge, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    summary = run_masks(images, tmp_path / "out", use_cache=False)
    mask = _imread(tmp_path / "out" / "huge.png", cv2.IMREAD_GRAYSCALE)
    assert summary.written == 1 and mask.shape == (6000, 6000) and mask.max() == 255


def test_user_errors_are_clear(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(AnatomyError, match=r"images folder not found"):
        run_masks(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(AnatomyError, match=r"must differ from the images folder"):
        run_masks(folder, folder)
    with pytest.raises(AnatomyError, match=r"overlays need a folder of their own"):
        run_masks(folder, tmp_path / "out", overlays_dir=tmp_path / "out")
    with pytest.raises(AnatomyError, match=r"unknown kind 'bones'"):
        run_masks(folder, tmp_path / "out", kind="bones")
