"""``cxrssl train-seg`` and ``cxrssl predict`` end to end on the built-in sample."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

import cxrssl
from cxrssl.cli.main import main

SAMPLE = Path(cxrssl.__file__).parent / "data" / "sample"


def test_train_seg_then_predict_writes_masks_at_the_original_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    code = main(
        [
            "train-seg",
            "--images",
            str(SAMPLE / "images"),
            "--masks",
            str(SAMPLE / "masks"),
            "--out",
            str(run),
            "--size",
            "32",
            "--epochs",
            "1",
            "--folds",
            "2",
            "--no-progress",
            "--device",
            "cpu",
            "--seed",
            "1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "dice" in printed and "±" in printed
    assert {p.name for p in (run / "fold_0").iterdir()} >= {
        "best.pt",
        "last.pt",
        "metrics.csv",
        "config.yaml",
    }
    assert json.loads((run / "summary.json").read_text())["config"]["seed"] == 1

    images = tmp_path / "new"
    images.mkdir()
    for i, src in enumerate(sorted((SAMPLE / "images").glob("*.png"))[:3]):
        image = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(images / f"x{i}.png"), cv2.resize(image, (120 + 10 * i, 100)))
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "masks"
    code = main(
        ["predict", str(run / "fold_1" / "best.pt"), str(images), str(out), "--device", "cpu"]
    )
    assert code == 1  # one image could not be read
    printed = capsys.readouterr().out
    assert "broken.png" in printed and "3 mask(s) written" in printed
    for i in range(3):
        mask = cv2.imread(str(out / f"x{i}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (100, 120 + 10 * i) and set(np.unique(mask)) <= {0, 255}
    # A run folder predicts with the fold ensemble.
    (images / "broken.png").unlink()
    assert main(["predict", str(run), str(images), str(tmp_path / "ens")]) == 0


def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["predict", str(tmp_path / "none.pt"), str(SAMPLE / "images"), str(tmp_path / "o")])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith("none.pt: checkpoint not found")
    assert main(["predict", str(tmp_path / "none.pt"), str(tmp_path), str(tmp_path / "o")]) == 2
    assert re.search(r"no images found \(\.png, ", capsys.readouterr().err)
    masks = tmp_path / "empty_masks"
    masks.mkdir()
    code = main(
        [
            "train-seg",
            "--images",
            str(SAMPLE / "images"),
            "--masks",
            str(masks),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2
    assert "no mask matches an image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-seg", "--images", "a", "--masks", "b", "--out", "c", "--model", "vnet"])


def test_train_seg_crop_flag_reaches_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrssl.cli import train as cli_train

    seen: list[object] = []

    def fake(images: Path, masks: Path, out: Path, config: object, resume: bool) -> dict:
        seen.append(config)
        return {}

    monkeypatch.setattr(cli_train, "train_seg", fake)
    base = ["train-seg", "--images", "a", "--masks", "b", "--out", str(tmp_path / "r")]
    assert main([*base, "--crop", "lung-box"]) == 0
    assert main(base) == 0
    assert [c.crop for c in seen] == ["lung-box", None]  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        main([*base, "--crop", "lungs"])
