"""The study report: every section present, numbers in JSON and Markdown, renders in Chromium."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxrssl.study.report import write_report
from cxrssl.study.screenshot import find_chromium, looks_rendered, screenshot
from cxrssl.viz import GREEN, RED, overlay, png_bytes


def _summary(mean: float) -> dict[str, float]:
    return {"mean": mean, "std": 0.05, "ci_low": mean - 0.02, "ci_high": mean + 0.02, "n": 90}


def _study() -> dict[str, Any]:
    image = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    truth = np.zeros((64, 64), np.uint8)
    truth[10:50, 8:28] = 1
    png = png_bytes(overlay(image, [(truth, GREEN), (np.roll(truth, 3, axis=1), RED)], "Dice 0.9"))
    return {
        "title": "cxrssl demo: test",
        "command": "cxrssl demo --out X",
        "created": "2026-11-27T00:00:00+00:00",
        "environment": {"torch": "2.13", "device": "cpu"},
        "data": {
            "images": 90,
            "patients": 48,
            "note": "sample",
            "split": {
                "train": {"images": 50, "patients": 27},
                "val": {"images": 12, "patients": 7},
                "test": {"images": 28, "patients": 14},
            },
        },
        "rules": {
            "methods": {
                "seed": {"dice": _summary(0.65), "iou": _summary(0.5)},
                "default": {"dice": _summary(0.87), "iou": _summary(0.78)},
            },
            "per_image": {"seed": [0.6, 0.7], "default": [0.85, 0.89]},
            "worst": {"seed": 0.6, "default": 0.85},
            "note": "rules",
        },
        "efficiency": {
            "metric": "dice",
            "note": "eff",
            "methods": {
                "supervised": [
                    {
                        "k": 5,
                        "n_train": 5,
                        "mean": 0.8,
                        "std": 0.03,
                        "n": 2,
                        "values": [0.78, 0.82],
                    },
                    {
                        "k": "all",
                        "n_train": 50,
                        "mean": 0.9,
                        "std": 0.01,
                        "n": 2,
                        "values": [0.89, 0.91],
                    },
                ]
            },
        },
        "curves": {"a": {"train_loss": [1.0, 0.5, 0.3], "val_dice": [0.5, 0.8, 0.9]}},
        "gallery": [
            {"file": "x.png", "dice": 0.9, "caption": "best: x.png, Dice 0.900", "png": png}
        ],
        "skipped": ["nothing really"],
        "timings": {"total": 12.5},
    }


def test_report_has_every_section(tmp_path: Path) -> None:
    paths = write_report(_study(), tmp_path)
    page = paths["html"].read_text()
    for heading in (
        "Data",
        "Rule-based lung masks",
        "Label efficiency",
        "Loss curves",
        "Overlay gallery",
        "Skipped",
        "Environment",
        "Reproduce",
    ):
        assert f"<h2>{heading}" in page, heading
    assert page.count("data:image/png;base64,") == 4  # rules, efficiency, curves, 1 overlay
    assert "cxrssl demo --out X" in page and "0.870 ± 0.050" in page
    js = json.loads(paths["json"].read_text())
    assert (
        "png" not in js["gallery"][0] and js["efficiency"]["methods"]["supervised"][1]["k"] == "all"
    )
    md = paths["md"].read_text()
    assert "| default | 0.870 ± 0.050 | 90 | 0.850 |" in md and "| supervised | all | 50 |" in md


@pytest.mark.skipif(
    find_chromium() is None, reason="headless Chromium not installed (Debian: chromium)"
)
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    paths = write_report(_study(), tmp_path)
    shot = screenshot(paths["html"], tmp_path / "shot.png")
    seen = looks_rendered(shot)
    assert seen["non_white"] > 0.02, seen  # not a blank page
    assert seen["coloured"] > 0.0003, seen  # plot lines and contours were drawn


def test_every_markdown_table_names_its_empty_mask_convention(tmp_path: Path) -> None:
    from cxrssl.metrics import convention_note
    from cxrssl.study.report import markdown_summary

    study = _study()
    study["rules"]["note"] = "rules; " + convention_note()
    study["efficiency"]["note"] = "curve; " + convention_note()
    text = markdown_summary(study)
    assert text.count("empty-mask convention 'nan'") == 2
