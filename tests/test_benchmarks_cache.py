"""``benchmarks/cache_build.py`` runs end to end in a tiny setting (40 small synthetic
images, a 64 px canvas; pool and ``cxrssl masks`` memory) and writes its JSON; its synthetic
images look like chests."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import numpy as np

from cxrssl.anatomy.lungs import lung_masks

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cache_build.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cache_build_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_images_differ_and_have_two_lungs() -> None:
    bench = _load()
    images = [bench.synthetic_image(seed, 256, 205) for seed in range(3)]
    assert all(im.shape == (256, 205) and im.dtype == np.uint8 for im in images)
    assert len({hashlib.sha1(im.tobytes()).hexdigest() for im in images}) == 3
    assert (bench.synthetic_image(1, 256, 205) == images[1]).all()  # seeded
    rules = lung_masks(images[0], "default")
    both = rules.both.astype(bool)
    assert 0.1 < both.mean() < 0.6
    half = both.shape[1] // 2
    assert both[:, :half].sum() > 0.3 * both.sum() and both[:, half:].sum() > 0.3 * both.sum()


def test_benchmark_runs_in_a_tiny_setting(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    work = tmp_path / "work"
    bench = _load()
    result = bench.main(
        [
            "--sizes", "20,40",
            "--size", "64",
            "--shape", "128x100",
            "--batch-size", "8",
            "--workers", "1",  # process pools start slowly on a busy machine
            "--no-single",
            "--loader-workers", "0",
            "--gen-workers", "1",
            "--workdir", str(work),
            "--json", str(out),
        ]
    )  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    images = sorted((work / "images-128x100").iterdir())
    assert [p.name for p in images] == [f"img_{i:05d}.png" for i in range(40)]  # kept
    assert not [p for p in work.iterdir() if p.name.startswith("caches-")]  # caches removed
    t = result["throughput"]
    assert t["n"] == 20 and t["decode"]["images_per_s"] > 0
    (build,) = t["builds"]
    assert build["workers"] == 1 and build["images_per_s"] > 0
    assert build["pool_images"] == build["entries"] == 20  # one entry per distinct image
    assert build["ratio_to_decode"] == build["seconds"] / t["decode"]["seconds"]
    m = result["memory"]
    assert m["sizes"] == [20, 40]
    for run, n in zip(m["runs"], (20, 40), strict=True):
        assert run["n"] == run["pool_images"] == run["entries"] == n and run["failures"] == 0
        assert run["streamed_images"] == n // 8 * 8  # whole batches of 8
        assert run["build_images_per_s"] > 0 and run["stream_images_per_s"] > 0
        for key in ("baseline_tree_rss_mib", "build_main_rss_mib", "stream_main_rss_mib"):
            assert run[key] > 0
        assert run["masks_images"] == n and run["masks_s"] > 0  # cxrssl masks: every image
        for phase in ("build", "stream", "masks"):  # a phase's peak is within the lifetime one
            assert run[f"{phase}_main_rss_mib"] <= run["main_maxrss_mib"]
        assert run["build_tree_rss_mib"] >= run["build_tree_pss_mib"] > 0
        assert run["stream_tree_rss_mib"] >= run["stream_tree_pss_mib"] > 0
        assert run["masks_tree_rss_mib"] >= run["masks_tree_pss_mib"] > 0
        assert run["main_maxrss_mib"] >= run["baseline_tree_rss_mib"]  # alone at first
        assert run["samples"] >= 4
    assert set(m["ratio"]) == set(m["growth_kib_per_image"])
    assert all(v > 0 for v in m["ratio"].values())
    assert isinstance(m["flat"], bool)
    assert result["cores"] == os.cpu_count()


def test_generation_writes_only_missing_files(tmp_path: Path) -> None:
    bench = _load()
    folder = tmp_path / "images"
    assert bench.generate(folder, 3, (64, 50), workers=1) == 3
    first = (folder / "img_00000.png").stat().st_mtime_ns
    assert bench.generate(folder, 5, (64, 50), workers=1) == 2  # only the missing ones
    assert (folder / "img_00000.png").stat().st_mtime_ns == first
    assert not list(folder.glob(".*"))  # no partial files left
