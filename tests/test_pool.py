"""The pre-training pool: cached entries, item contents, failures, test-patient guard, loader."""

from __future__ import annotations

import logging
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import cxrssl.data.pool as pool
from cxrssl.data import sample
from cxrssl.data.datasets import FolderDataset
from cxrssl.data.pool import (
    POOL_MAPS,
    Pool,
    PoolError,
    build_pool,
    canvas_box,
    detect_layout,
    drop_patients,
    open_sources,
    pool_loader,
    run_key,
)
from cxrssl.geometry import Letterbox, apply_letterbox

SHAPES = [(80, 64), (64, 80), (80, 64), (72, 72), (80, 64), (64, 80)]  # (H, W)


def _chest(h: int, w: int, seed: int) -> np.ndarray:
    """A synthetic radiograph: two dark lung ovals in a bright body on a dark background."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w), 30, np.uint8)
    cv2.ellipse(image, (w // 2, h // 2), (w // 2 - 3, h // 2 - 2), 0, 0, 360, 200, -1)
    for side in (-1, 1):
        cv2.ellipse(image, (w // 2 + side * w // 5, h // 2), (w // 8, h // 4), 0, 0, 360, 70, -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.5)
    noise = rng.integers(-5, 6, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _write_set(root: Path, n: int = len(SHAPES)) -> Path:
    """``root/images/c<i>.png`` and ``root/labels.csv`` (patient P<i>)."""
    (root / "images").mkdir(parents=True)
    for i, (h, w) in enumerate(SHAPES[:n]):
        cv2.imwrite(str(root / "images" / f"c{i}.png"), _chest(h, w, i))
    rows = "".join(f"c{i}.png,P{i}\n" for i in range(n))
    (root / "labels.csv").write_text("filename,patient_id\n" + rows)
    return root


@pytest.fixture()
def chests(tmp_path: Path) -> FolderDataset:
    return open_sources([_write_set(tmp_path / "chests")])


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _items(p: Pool) -> list[dict[str, torch.Tensor]]:
    data = p.dataset()
    return [data[i] for i in range(len(data))]


def _fail(*args: object) -> dict[str, np.ndarray]:
    raise AssertionError("computed although cached")


def test_second_build_is_served_from_the_cache(
    chests: FolderDataset, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_pool(chests, 40, cache_dir=cache, workers=2, progress=False)
    assert len(first) == len(chests) and not first.failures
    assert all(e.is_file() and e.parent.parent == cache for e in first.entries)
    assert all(e.parent.name == e.name[:2] and e.suffix == ".npz" for e in first.entries)
    monkeypatch.setattr(pool, "_compute", _fail)
    again = build_pool(chests, 40, cache_dir=cache, progress=False)
    assert again.entries == first.entries and not again.failures
    np.testing.assert_array_equal(again.boxes, first.boxes)
    np.testing.assert_array_equal(again.quality, first.quality)
    for a, b in zip(_items(first), _items(again), strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # Another size or mask source is another entry: everything misses (and fails here).
    for size, source in ((48, "rules"), (40, "otsu")):
        with pytest.raises(PoolError, match="none of the 6 image"):
            build_pool(chests, size, mask_source=source, cache_dir=cache, progress=False)
    assert len({run_key(40, "rules"), run_key(48, "rules"), run_key(40, "otsu")}) == 3


def test_items_have_the_documented_shapes_and_values(chests: FolderDataset, cache: Path) -> None:
    size = 40
    p = build_pool(chests, size, cache_dir=cache, progress=False)
    assert p.boxes.shape == (6, 4) and p.boxes.dtype == np.int32
    assert p.quality.shape == (6,) and p.quality.dtype == np.float32
    assert p.patient_ids == [f"P{i}" for i in range(6)] and p.sources == ["chests"] * 6
    for i, item in enumerate(_items(p)):
        assert set(item) == {"image", *POOL_MAPS, "box", "quality", "index"}
        for k in ("image", *POOL_MAPS):
            assert item[k].shape == (1, size, size) and item[k].dtype == torch.uint8, k
        assert set(item["lungs"].unique().tolist()) <= {0, 1}
        assert set(item["regions"].unique().tolist()) <= set(range(7))
        assert not (item["pathology"].bool() & ~item["lungs"].bool()).any()  # soft, in lungs
        assert item["box"].dtype == torch.float32 and item["box"].shape == (4,)
        assert item["quality"].shape == () and item["quality"].dtype == torch.float32
        assert item["index"].dtype == torch.int64 and int(item["index"]) == i
        frame = Letterbox.fit(*SHAPES[i], size)
        inside = np.zeros((size, size), bool)
        rows = slice(frame.top, frame.top + frame.inner_height)
        cols = slice(frame.left, frame.left + frame.inner_width)
        inside[rows, cols] = True
        for k in ("image", *POOL_MAPS):
            assert not item[k][0].numpy()[~inside].any(), f"{k} padding is not 0"
        assert item["image"][0].numpy()[inside].min() > 0
        x0, y0, x1, y1 = (int(v) for v in item["box"])
        assert frame.left <= x0 < x1 <= frame.left + frame.inner_width
        assert frame.top <= y0 < y1 <= frame.top + frame.inner_height
        lung_rows, lung_cols = np.nonzero(item["regions"][0].numpy())
        assert lung_rows.size > 0 and p.quality[i] > 0.5
        assert y0 <= lung_rows.min() and lung_rows.max() < y1
        assert x0 <= lung_cols.min() and lung_cols.max() < x1
        assert (item["lungs"][0].numpy() == (item["regions"][0].numpy() > 0)).all()


def test_canvas_box_scales_offsets_and_rounds_outward() -> None:
    frame = Letterbox.fit(80, 64, 40)  # scale 0.5, 4 columns of padding on each side
    assert canvas_box((0, 0, 64, 80), frame).tolist() == [4, 0, 36, 40]
    assert canvas_box((3, 11, 62, 68), frame).tolist() == [5, 5, 35, 34]
    assert canvas_box((-5, -5, 99, 99), frame).tolist() == [4, 0, 36, 40]


@pytest.mark.filterwarnings("ignore::cxrssl.data.datasets.DatasetWarning")
def test_unreadable_files_become_failures(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _write_set(tmp_path / "chests", n=3)
    data = (root / "images" / "c0.png").read_bytes()
    (root / "images" / "cut.png").write_bytes(data[: len(data) // 3])
    (root / "images" / "notes.png").write_text("not an image\n")
    with caplog.at_level(logging.WARNING, logger="cxrssl.data.pool"):
        p = build_pool([root], 32, cache_dir=cache, progress=False)
    assert [f.name for f in p.files] == ["c0.png", "c1.png", "c2.png"]
    assert sorted(name for name, _ in p.failures) == ["cut.png", "notes.png"]
    assert all(reason and "\n" not in reason for _, reason in p.failures)
    assert "2 of 5 image(s) could not be used" in caplog.text


def test_test_patients_and_copies_of_test_images_are_refused(
    tmp_path: Path, chests: FolderDataset, cache: Path
) -> None:
    with pytest.raises(PoolError, match=r"1 image\(s\) of test patients: c1\.png \(patient P1\)"):
        build_pool(chests, 32, cache_dir=cache, progress=False, exclude_patients=["P1"])
    copy = tmp_path / "test_set" / "renamed.png"
    copy.parent.mkdir()
    shutil.copy(chests.records[2].image, copy)
    with pytest.raises(PoolError, match=r"c2\.png \(same content as test image renamed\.png\)"):
        build_pool(chests, 32, cache_dir=cache, progress=False, exclude_files=[copy])
    with pytest.raises(PoolError, match=r"c3\.png \(a test file name\)"):
        build_pool(chests, 32, cache_dir=cache, progress=False, exclude_files=["c3.png"])
    with pytest.raises(
        PoolError, match=r"1 image\(s\) of test patients: c0\.png \(test image c0\.png\)"
    ):
        files = [chests.records[0].image, copy]
        build_pool(chests, 32, cache_dir=cache, progress=False, exclude_files=files)
    kept = drop_patients(chests, ["P1", "P4"])
    p = build_pool(kept, 32, cache_dir=cache, progress=False, exclude_patients=["P1", "P4"])
    assert [f.name for f in p.files] == ["c0.png", "c2.png", "c3.png", "c5.png"]


def test_loader_batches_do_not_depend_on_workers(chests: FolderDataset, cache: Path) -> None:
    p = build_pool(chests, 24, cache_dir=cache, progress=False)

    def epochs(workers: int) -> list[torch.Tensor]:
        loader = pool_loader(p, 2, shuffle=True, workers=workers)
        out = []
        for epoch in range(2):  # the engine seeds the global RNG per epoch
            torch.manual_seed(epoch)
            for batch in loader:
                assert batch["image"].shape == (2, 1, 24, 24)
                out += [batch["index"], batch["image"]]
        return out

    single, multi = epochs(0), epochs(2)
    assert len(single) == len(multi) == 12
    assert all(torch.equal(a, b) for a, b in zip(single, multi, strict=True))
    first, second = torch.cat(single[0:6:2]), torch.cat(single[6:12:2])
    assert sorted(first.tolist()) == list(range(6)) and not torch.equal(first, second)
    seeded = [torch.cat([b["index"] for b in pool_loader(p, 3, shuffle=True, seed=7)])]
    seeded.append(torch.cat([b["index"] for b in pool_loader(p, 3, shuffle=True, seed=7)]))
    assert torch.equal(*seeded)
    with pytest.raises(PoolError, match="no batch of 8"):
        pool_loader(p, 8, shuffle=False)


def test_mask_folder_gives_the_lungs_map(
    tmp_path: Path, chests: FolderDataset, cache: Path
) -> None:
    masks = tmp_path / "my_masks"
    masks.mkdir()
    rects = {}
    for i, r in enumerate(chests.records[:5]):
        h, w = SHAPES[i]
        rect = np.zeros((h, w), np.uint8)
        rect[10 + i : h - 12, 6 : w - 9 - i] = 1
        suffix = "_mask" if i == 1 else ""
        cv2.imwrite(str(masks / f"{r.image.stem}{suffix}.png"), rect * 255)
        rects[r.name] = rect
    p = build_pool(chests, 40, mask_source=masks, cache_dir=cache, progress=False)
    assert p.failures == [("c5.png", f"no mask for this image in {masks}")]
    rules = build_pool(chests.subset(range(5)), 40, cache_dir=cache, progress=False)
    for i, (item, ruled) in enumerate(zip(_items(p), _items(rules), strict=True)):
        expected = apply_letterbox(rects[p.files[i].name], Letterbox.fit(*SHAPES[i], 40), "nearest")
        np.testing.assert_array_equal(item["lungs"][0].numpy(), expected)
        for k in ("image", "regions", "pathology", "box"):  # the rest stays rule-based
            assert torch.equal(item[k], ruled[k]), k
    # A changed mask file is a new entry for that image only.
    cv2.imwrite(str(masks / "c0.png"), np.zeros(SHAPES[0], np.uint8))
    changed = build_pool(chests, 40, mask_source=masks, cache_dir=cache, progress=False)
    assert changed.entries[0] != p.entries[0] and changed.entries[1:] == p.entries[1:]
    assert not changed.dataset()[0]["lungs"].any()


def test_dataset_holds_no_images(tmp_path: Path, chests: FolderDataset, cache: Path) -> None:
    small = build_pool(chests, 16, cache_dir=cache, progress=False).dataset()
    large = build_pool(chests, 128, cache_dir=cache, progress=False).dataset()
    # Same row count, 64x the pixels: the pickled dataset (what a worker receives) is the same.
    assert abs(len(pickle.dumps(small)) - len(pickle.dumps(large))) <= 16
    assert len(pickle.dumps(large)) < 1000 + 200 * len(large) < 128 * 128


def test_real_sample_with_its_expert_masks(cache: Path) -> None:
    ds = sample().subset(range(3))
    masks = ds.root / "masks" if ds.root is not None else Path()
    p = build_pool(ds, 96, mask_source=masks, cache_dir=cache, progress=False)
    assert len(p) == 3 and not p.failures
    assert p.patient_ids == ds.patient_ids()
    for i, item in enumerate(_items(p)):
        expert = item["lungs"][0].numpy()
        x0, y0, x1, y1 = (int(v) for v in item["box"])
        covered = expert[y0:y1, x0:x1].sum() / expert.sum()
        assert covered > 0.9, (p.files[i].name, covered)
        assert item["image"].float().mean() > 20


def test_open_sources_concatenates_and_keeps_raw_ids(tmp_path: Path) -> None:
    a = _write_set(tmp_path / "a", n=2)
    b = _write_set(tmp_path / "b", n=3)  # c0, c1 again (left out), c2 new
    loose = tmp_path / "loose"
    loose.mkdir()
    cv2.imwrite(str(loose / "x.png"), _chest(64, 64, 9))
    (loose / "readme.txt").write_text("not an image\n")
    assert [detect_layout(p) for p in (a, loose)] == ["folder", "files"]
    ds = open_sources([a, b, loose])
    assert ds.files() == ["c0.png", "c1.png", "c2.png", "x.png"]
    assert ds.patient_ids() == ["P0", "P1", "P2", None]
    assert [r.meta["source"] for r in ds.records] == ["a", "a", "b", "loose"]
    with pytest.raises(PoolError, match="patient P2"):
        build_pool([a, b], 16, cache_dir=tmp_path / "cache", exclude_patients=["P2"])
    with pytest.raises(PoolError, match="neither"):
        build_pool(ds, 16, mask_source="nowhere", progress=False)
