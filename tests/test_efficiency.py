"""The label-efficiency study end to end in a tiny setting (own pool, another test set): units
cached, paired differences."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cxrssl.data.datasets import sample
from cxrssl.study.config import StudyConfig
from cxrssl.study.efficiency import SCRATCH, summarise_units
from cxrssl.study.pipeline import run_study


def _folder(root: Path, records: list, patients: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = ["filename,patient_id"]
    for r, pid in zip(records, patients, strict=True):
        shutil.copy(r.image, root / "images" / r.image.name)
        shutil.copy(r.masks["masks"], root / "masks" / r.image.name)
        lines.append(f"{r.image.name},{pid}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_study_runs_caches_and_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRSSL_CACHE_DIR", str(tmp_path / "cache"))
    records = sample().records
    labelled = _folder(tmp_path / "lab", records[:12], [f"p{i // 2}" for i in range(12)])
    pool = _folder(tmp_path / "pool", records[12:22], [f"q{i}" for i in range(10)])
    other = _folder(tmp_path / "other", records[22:26], [f"o{i}" for i in range(4)])
    config = StudyConfig(
        labelled=str(labelled),
        pool=[str(pool)],
        tests={"other": str(other)},
        methods=["simclr", "medsass-whole"],
        pretrain={"epochs": 1, "batch_size": 4, "holdout": 0.3, "method_kwargs": {}},
        size=32,
        k_values=[1, None],
        seeds=[0, 1],
        steps=2,
        batch_size=4,
        model_kwargs={},
        val=0.2,
        test=0.3,
        device="cpu",
        progress=False,
    )
    run_study(config, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "efficiency.json").read_text())
    methods = {p["method"] for p in summary["points"]}
    assert methods == {SCRATCH, "simclr", "medsass-whole"}
    assert {p["test"] for p in summary["points"]} == {"in domain", "other"}
    assert all(p["n_seeds"] == 2 for p in summary["points"])
    assert {d["verdict"] for d in summary["differences"]} <= {
        "helps",
        "hurts",
        "no measurable difference",
        "not measured",
    }
    assert set(summary["rules"]) == {"in domain", "other"}
    for name in ("efficiency.csv", "efficiency.md", "efficiency.png", "split.csv", "report.html"):
        assert (tmp_path / "out" / name).is_file()
    units = sorted((tmp_path / "out" / "units").glob("*.json"))
    assert len(units) == 3 * 2 * 2
    stamp = {u.name: u.stat().st_mtime_ns for u in units}
    run_study(config, tmp_path / "out")  # everything reused
    assert {u.name: u.stat().st_mtime_ns for u in units} == stamp
    saved = json.loads((tmp_path / "out" / "efficiency.json").read_text())
    assert saved["points"] == summary["points"]


def test_paired_difference_is_per_image_and_seed() -> None:
    rows = []
    for seed in (0, 1):
        for i in range(20):
            base = 0.8 + 0.005 * i
            rows.append(
                {
                    "method": SCRATCH,
                    "k": "1",
                    "seed": seed,
                    "test": "t",
                    "file": f"f{i}",
                    "dice": base,
                }
            )
            rows.append(
                {
                    "method": "m",
                    "k": "1",
                    "seed": seed,
                    "test": "t",
                    "file": f"f{i}",
                    "dice": base + 0.05 + 0.001 * seed,
                }
            )
    out = summarise_units(rows, {f"f{i}": f"p{i}" for i in range(20)})
    (diff,) = out["differences"]
    assert diff["mean"] == pytest.approx(0.0505)
    assert diff["verdict"] == "helps"
    scratch = next(p for p in out["points"] if p["method"] == SCRATCH)
    assert scratch["n_seeds"] == 2
