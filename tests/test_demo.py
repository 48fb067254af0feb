"""``cxrssl demo`` / ``cxrssl study``: pre-trained methods beside scratch with paired
differences, reproducible (also across a ``kill -9``), resumable without recomputing
finished units, recomputing what a data change touches, and honest about what it skipped."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import pytest

import cxrssl.study.units as units_module
from cxrssl.cli.main import main
from cxrssl.data.datasets import sample
from killing import run_and_kill

TINY = (
    "size: 32\nk_values: [3, null]\nseeds: [0, 1]\nsteps: 3\nbatch_size: 4\ngallery: 1\n"
    "methods: [simclr]\npretrain: {epochs: 1, batch_size: 4, holdout: 0.3}\nprogress: false\n"
)


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


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRSSL_CACHE_DIR", str(tmp_path / "cache"))


def _argv(verb: str, data: Path, out: Path, config: Path) -> list[str]:
    return [
        verb,
        "--data",
        str(data),
        "--out",
        str(out),
        "--config",
        str(config),
        "--device",
        "cpu",
    ]


def _run(data: Path, out: Path, config: Path, verb: str = "demo") -> dict[str, Any]:
    assert main(_argv(verb, data, out, config)) == 0
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def _config(tmp_path: Path, text: str = TINY) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def test_same_numbers_after_a_kill_9_and_every_section(small: Path, tmp_path: Path) -> None:
    """An uninterrupted demo, then a study of the same config killed (SIGKILL) once two
    fine-tuning units are done and run again: the same numbers."""
    config = _config(tmp_path)
    a = _run(small, tmp_path / "a", config)
    units = tmp_path / "b" / "units"
    mid_run = run_and_kill(
        _argv("study", small, tmp_path / "b", config),
        lambda: len(list(units.glob("*.json"))) >= 2,
        tmp_path / "killed.log",
    )
    print(f"study: the kill landed mid-run: {mid_run}")
    if mid_run:
        assert not (tmp_path / "b" / "report.json").exists()
    b = _run(small, tmp_path / "b", config, verb="study")
    assert not list((tmp_path / "b").rglob("*.tmp"))  # no partial file left behind
    assert a["efficiency"]["points"] == b["efficiency"]["points"]
    assert a["efficiency"]["differences"] == b["efficiency"]["differences"]
    assert a["rules"]["methods"] == b["rules"]["methods"]
    points = a["efficiency"]["points"]
    assert {(p["method"], p["k"]) for p in points} == {
        (m, k) for m in ("scratch", "simclr") for k in ("3", "all")
    }
    assert all(p["n_seeds"] == 2 for p in points)
    verdicts = {d["verdict"] for d in a["efficiency"]["differences"]}
    assert verdicts <= {"helps", "hurts", "no measurable difference", "not measured"}
    assert {(d["method"], d["k"]) for d in a["efficiency"]["differences"]} == {
        ("simclr", "3"),
        ("simclr", "all"),
    }
    assert [e["method"] for e in a["efficiency"]["epochs"]] == ["simclr", "simclr"]
    assert a["pretraining"]["simclr"]["history"]  # the curves' rows, per epoch
    assert set(a["predictions"]) == {"scratch", "simclr"}
    assert len(a["anatomy"]) == 3  # worst, median, best
    page = (tmp_path / "a" / "report.html").read_text()
    for heading in (
        "Data",
        "Rule-based anatomy",
        "Label efficiency",
        "Epochs to reach scratch",
        "Pre-training",
        "Fine-tuned overlays",
        "Fine-tuning curves",
        "Environment",
        "Reproduce",
    ):
        assert f"<h2>{heading}" in page, heading
    assert "cxrssl demo --data" in page and "paired difference" in page
    assert (tmp_path / "a" / "pretrain" / "simclr" / "views.png").is_file()


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}


def test_killed_midway_rerun_computes_only_missing_units(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    real = units_module.segmentation_unit
    calls: list[str] = []

    def dies_on_third(*args: Any, **kwargs: Any) -> dict[str, Any]:
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill
        calls.append(args[2].key)
        return real(*args, **kwargs)

    monkeypatch.setattr(units_module, "segmentation_unit", dies_on_third)
    out = tmp_path / "run"
    assert main(_argv("demo", small, out, config)) == 130
    assert len(list((out / "units").glob("*.json"))) == 2
    pretrained = _mtimes(out / "pretrain" / "units")
    assert len(pretrained) == 1

    rerun: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> dict[str, Any]:
        rerun.append(args[2].key)
        return real(*args, **kwargs)

    monkeypatch.setattr(units_module, "segmentation_unit", counting)
    _run(small, out, config)
    assert len(rerun) == 6 and not set(rerun) & set(calls)
    assert _mtimes(out / "pretrain" / "units") == pretrained  # not pre-trained again


def test_changed_mask_recomputes_fine_tunes_not_pretraining(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    shutil.copytree(small, data)
    config = _config(tmp_path)
    out = tmp_path / "run"
    _run(data, out, config)
    fine, pre = _mtimes(out / "units"), _mtimes(out / "pretrain" / "units")
    mask = sorted((data / "masks").iterdir())[0]
    picture = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
    picture[:4] = 255 - picture[:4]
    cv2.imwrite(str(mask), picture)
    _run(data, out, config)
    after = _mtimes(out / "units")
    assert set(after) == set(fine) and all(after[k] != fine[k] for k in fine)
    assert _mtimes(out / "pretrain" / "units") == pre  # the pool reads no mask


def test_without_masks_says_what_it_skipped(small: Path, tmp_path: Path) -> None:
    data = tmp_path / "nomasks"
    shutil.copytree(small / "images", data / "images")
    report = _run(data, tmp_path / "out", _config(tmp_path))
    assert "efficiency" not in report and not report["rules"]
    assert any("no masks/ folder" in s for s in report["skipped"])
    assert len(report["anatomy"]) == 3  # sorted by quality instead


def test_unknown_config_key_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("sizes: 3\n")
    assert main(["demo", "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "unknown setting(s) ['sizes']" in capsys.readouterr().err


def test_study_needs_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["study", "--out", "x"])
    assert "--config" in capsys.readouterr().err
