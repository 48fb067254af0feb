"""``cxrssl masks``: outputs per image, failures recorded, exit code says whether any failed."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from cxrssl.cli.main import main
from cxrssl.data.datasets import sample
from cxrssl.io import read_image, read_mask


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = sample().root
    assert root is not None
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((root / "images").glob("*.png"))[:4]:
        shutil.copy(path, images / path.name)
    return images


def test_lungs_written_same_stem_and_size(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXRSSL_CACHE_DIR", str(tmp_path / "cache"))
    out, overlays = tmp_path / "out", tmp_path / "ov"
    assert main(["masks", "lungs", str(folder), str(out), "--overlays", str(overlays)]) == 0
    for image in folder.iterdir():
        mask = read_mask(out / image.name, read_image(image).shape)
        assert 0.1 < mask.mean() < 0.7
        assert (overlays / image.name).is_file()


def test_bad_file_recorded_and_exit_code_one(
    folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CXRSSL_CACHE_DIR", str(tmp_path / "cache"))
    (folder / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    assert main(["masks", "crop", str(folder), str(out)]) == 1
    rows = list(csv.DictReader((out / "failures.csv").open()))
    assert [r["filename"] for r in rows] == ["broken.png"] and "not an image" in rows[0]["reason"]
    assert "1 failed" in capsys.readouterr().out


def test_unknown_method_is_refused(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["masks", "lungs", str(folder), str(tmp_path / "o"), "--method", "nope"])
