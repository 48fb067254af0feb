"""``cxrssl demo``: reproducible, resumable without recomputing finished units, and honest
about what it skipped."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import cxrssl.study.units as units_module
from cxrssl.cli.main import main
from cxrssl.data.datasets import sample

TINY = "size: 32\nk_values: [3, null]\nseeds: [0, 1]\nsteps: 3\nbatch_size: 4\ngallery: 1\n"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 images of the built-in sample (with masks and labels), as a user's folder."""
    src = sample().root
    assert src is not None
    root = tmp_path_factory.mktemp("small")
    with (src / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))[:16]
    for sub in ("images", "masks"):
        (root / sub).mkdir()
        for r in rows:
            shutil.copy(src / sub / r["filename"], root / sub / r["filename"])
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["filename", "patient_id"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return root


def _argv(data: Path, out: Path, config: Path) -> list[str]:
    return [
        "demo",
        "--data",
        str(data),
        "--out",
        str(out),
        "--config",
        str(config),
        "--device",
        "cpu",
    ]


def _demo(data: Path, out: Path, config: Path) -> dict[str, Any]:
    assert main(_argv(data, out, config)) == 0
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def test_same_seed_same_numbers_and_every_section(small: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    a = _demo(small, tmp_path / "a", config)
    b = _demo(small, tmp_path / "b", config)
    assert a["efficiency"] == b["efficiency"]
    assert a["rules"]["methods"] == b["rules"]["methods"]
    points = a["efficiency"]["methods"]["supervised"]
    assert [p["k"] for p in points] == [3, "all"] and all(p["n"] == 2 for p in points)
    assert set(a["rules"]["methods"]) == {"seed", "default"}
    assert len(a["gallery"]) == 3  # worst, median, best
    page = (tmp_path / "a" / "report.html").read_text()
    for heading in (
        "Data",
        "Rule-based",
        "Label efficiency",
        "Loss curves",
        "Overlay gallery",
        "Environment",
        "Reproduce",
    ):
        assert f"<h2>{heading}" in page
    assert "cxrssl demo --data" in page


def test_killed_midway_rerun_computes_only_missing_units(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    real = units_module.segmentation_unit
    calls: list[str] = []

    def dies_on_third(*args: Any, **kwargs: Any) -> dict[str, Any]:
        unit = args[2]
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill
        calls.append(unit.key)
        return real(*args, **kwargs)

    monkeypatch.setattr(units_module, "segmentation_unit", dies_on_third)
    out = tmp_path / "run"
    assert main(_argv(small, out, config)) == 130
    assert len(list((out / "units").glob("*.json"))) == 2

    rerun: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> dict[str, Any]:
        rerun.append(args[2].key)
        return real(*args, **kwargs)

    monkeypatch.setattr(units_module, "segmentation_unit", counting)
    _demo(small, out, config)
    assert sorted(rerun) == ["supervised__kall__seed0", "supervised__kall__seed1"]


def test_without_masks_says_what_it_skipped(small: Path, tmp_path: Path) -> None:
    data = tmp_path / "nomasks"
    shutil.copytree(small / "images", data / "images")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    report = _demo(data, tmp_path / "out", config)
    assert "efficiency" not in report and not report["rules"]
    assert any("no masks/ folder" in s for s in report["skipped"])


def test_unknown_config_key_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("sizes: 3\n")
    assert main(["demo", "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "unknown setting(s) ['sizes']" in capsys.readouterr().err
