"""``benchmarks/pretrain_step.py`` runs end to end in a tiny setting (CPU, 32 px, a tiny
U-Net, a pool of four sample images) and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import torch

from cxrssl.data.datasets import sample

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pretrain_step.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pretrain_step_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_batches_look_like_pool_batches() -> None:
    bench = _load()
    batch = bench.synthetic_batch(3, 64, torch.Generator().manual_seed(0))
    for key in ("image", "lungs", "regions", "pathology"):
        assert batch[key].shape == (3, 1, 64, 64) and batch[key].dtype == torch.uint8
    assert set(batch["lungs"].unique().tolist()) == {0, 1}
    assert set(batch["regions"].unique().tolist()) == set(range(7))
    assert ((batch["regions"] > 0) == batch["lungs"].bool()).all()
    assert set(batch["pathology"].unique().tolist()) <= {0, 255}
    assert (batch["pathology"].bool() <= batch["lungs"].bool()).all()
    assert batch["box"].shape == (3, 4) and batch["box"].dtype == torch.float32
    ys, xs = torch.nonzero(batch["lungs"][0, 0], as_tuple=True)
    x0, y0, x1, y1 = batch["box"][0].tolist()
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    assert (batch["image"][:, :, 0] == 0).all() and (batch["image"][:, :, 32] > 0).all()


def test_benchmark_runs_in_a_tiny_setting(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    for record in sample().records[:4]:
        shutil.copy(record.image, pool / record.image.name)
    out = tmp_path / "bench.json"
    bench = _load()
    threads = torch.get_num_threads()
    try:
        result = bench.main(
            [
                "--device", "cpu",
                "--threads", "1",  # small ops on a busy machine: threads only wait
                "--methods", "simclr,lung-crop,medsass",
                "--size", "32",
                "--batch-size", "2",
                "--steps", "2",
                "--warmup", "1",
                "--features", "4,8,8,16,16",
                "--pool", str(pool),
                "--cache-dir", str(tmp_path / "cache"),
                "--workers", "0",
                "--pool-workers", "1",
                "--pipeline-rounds", "1",
                "--json", str(out),
            ]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert list(result["methods"]) == ["simclr", "lung-crop", "medsass"]
    for variants in result["methods"].values():
        assert list(variants) == ["fp32"]  # no AMP on CPU
        r = variants["fp32"]
        assert len(r["steps_s"]) == len(r["aug_steps_s"]) == 2
        assert 0 < r["aug_s"] < r["step_s"] and 0 < r["aug_share"] < 1
        assert r["images_per_s"] == 2 / r["step_s"]
    p = result["pipeline"]
    assert p["pool_images"] == 4 and p["ratio"] > 0
    assert len(p["rounds_s_per_step"]["pipeline"]) == 1
