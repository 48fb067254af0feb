"""The study report: every section present, pictures as thumbnails, numbers in JSON and
Markdown, and in headless Chromium a drawn page without a horizontal scroll at 1280 px."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cxrssl.data.datasets import sample
from cxrssl.study.config import StudyConfig
from cxrssl.study.pipeline import run_study
from cxrssl.study.screenshot import check_page, find_chromium, looks_rendered, screenshot

SECTIONS = [
    "Data",
    "Rule-based anatomy",
    "Label efficiency: lung segmentation",
    "Epochs to reach scratch",
    "Pre-training",
    "Fine-tuned overlays",
    "Fine-tuning curves",
    "Environment",
    "Reproduce",
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny study (12 images of the sample, two methods) and its report."""
    root = tmp_path_factory.mktemp("study")
    records = sample().records[:12]
    lines = ["filename,patient_id"]
    for sub in ("images", "masks"):
        (root / "data" / sub).mkdir(parents=True)
    for i, r in enumerate(records):
        shutil.copy(r.image, root / "data" / "images" / r.image.name)
        shutil.copy(r.masks["masks"], root / "data" / "masks" / r.image.name)
        lines.append(f"{r.image.name},p{i // 2}")
    (root / "data" / "labels.csv").write_text("\n".join(lines) + "\n")
    config = StudyConfig(
        methods=["simclr", "medsass"],
        pretrain={"epochs": 1, "batch_size": 4, "holdout": 0.3, "cache_dir": str(root / "c")},
        size=32,
        k_values=[1, None],
        seeds=[0, 1],
        steps=2,
        batch_size=4,
        gallery=1,
        val=0.2,
        test=0.3,
        device="cpu",
        progress=False,
    )
    return run_study(config, root / "out", root / "data", command="cxrssl study --config X")


def test_report_has_every_section_and_plain_numbers(report: dict[str, Path]) -> None:
    page = report["html"].read_text()
    for heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in page, heading
    assert page.count("<details") == len(SECTIONS)  # every section folds
    assert page.count('class="thumb"') >= 3 + 2 * 2 + 2  # anatomy, overlays, views
    assert "data:image/jpeg;base64," in page and "cxrssl study --config X" in page
    assert len(page.encode()) < 5_000_000
    js = json.loads(report["json"].read_text())
    assert "picture" not in js["anatomy"][0] and "png" not in js["efficiency"]
    assert "views" not in js["pretraining"]["simclr"]
    assert js["efficiency"]["k_order"] == ["1", "all"]
    md = report["md"].read_text()
    assert "| scratch |" in md and "paired difference" in md
    assert md.count("empty-mask convention 'nan'") >= 2  # the rules and the efficiency notes


@pytest.mark.skipif(
    find_chromium() is None, reason="headless Chromium not installed (Debian: chromium)"
)
def test_report_renders_in_chromium(report: dict[str, Path], tmp_path: Path) -> None:
    shot = screenshot(report["html"], tmp_path / "shot.png", width=1280)
    seen = looks_rendered(shot)
    assert seen["non_white"] > 0.02, seen  # not a blank page
    assert seen["coloured"] > 0.0003, seen  # plot lines and contours were drawn
    page = check_page(report["html"], width=1280)
    assert page["scroll_width"] <= page["view_width"] == 1280, page  # no horizontal scroll
    assert page["images"] >= 12 and page["broken"] == 0, page  # every picture decoded
    assert page["sections"] == SECTIONS, page
