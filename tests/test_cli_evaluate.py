"""``cxrssl evaluate-masks`` end to end on generated masks with hand-computed figures;
``cxrssl compare-runs`` on hand-written per-image tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cxrssl.cli.main import main
from cxrssl.io import write_mask


def _pair(tmp_path: Path) -> tuple[Path, Path]:
    pred_dir, true_dir = tmp_path / "pred", tmp_path / "true"
    true = np.zeros((4, 4), np.uint8)
    true[0, :] = 1
    true[1, 0] = 1  # 5 positives
    pred = np.zeros((4, 4), np.uint8)
    pred[0, :3] = 1  # TP 3
    pred[3, 3] = 1  # FP 1 -> FN 2, TN 10
    write_mask(true_dir / "a.png", true)
    write_mask(pred_dir / "a.png", pred)
    return pred_dir, true_dir


def test_hand_computed_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, true_dir = _pair(tmp_path)
    out_json, out_csv = tmp_path / "e.json", tmp_path / "e.csv"
    code = main(
        [
            "evaluate-masks",
            str(pred_dir),
            str(true_dir),
            "--json",
            str(out_json),
            "--csv",
            str(out_csv),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "dice" in text and "0.667" in text  # 2*3 / (2*3 + 1 + 2)
    summary = json.loads(out_json.read_text())["summary"]
    assert summary["dice"]["mean"] == pytest.approx(6 / 9)
    assert summary["iou"]["mean"] == pytest.approx(3 / 6)
    assert summary["sensitivity"]["mean"] == pytest.approx(3 / 5)
    assert summary["specificity"]["mean"] == pytest.approx(10 / 11)
    assert summary["precision"]["mean"] == pytest.approx(3 / 4)
    rows = list(csv.DictReader(out_csv.open()))
    assert rows[0]["file"] == "a" and float(rows[0]["dice"]) == pytest.approx(6 / 9)


def test_missing_and_extra_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, true_dir = _pair(tmp_path)
    write_mask(true_dir / "only_true.png", np.ones((4, 4), np.uint8))
    write_mask(pred_dir / "only_pred.png", np.ones((4, 4), np.uint8))
    assert main(["evaluate-masks", str(pred_dir), str(true_dir)]) == 1
    out = capsys.readouterr().out
    assert "missing predictions (1): only_true" in out
    assert "predictions without a reference (1): only_pred" in out


def test_size_mismatch_is_reported_not_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred_dir, true_dir = _pair(tmp_path)
    write_mask(true_dir / "b.png", np.ones((4, 4), np.uint8))
    write_mask(pred_dir / "b.png", np.ones((5, 4), np.uint8))
    assert main(["evaluate-masks", str(pred_dir), str(true_dir)]) == 1
    out = capsys.readouterr().out
    assert "failed: b:" in out and "b.png" in out


def test_missing_folder_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate-masks", str(tmp_path / "nope"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrssl: error:") and "nope" in err and "Traceback" not in err


def test_identical_real_masks_give_dice_one(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    masks = shared_data / "ieee8023_v7labs" / "masks"
    assert main(["evaluate-masks", str(masks), str(masks)]) == 0
    out = capsys.readouterr().out
    dice_line = next(line for line in out.splitlines() if line.startswith("dice"))
    assert "1.000 ± 0.000" in dice_line and dice_line.split()[-2:] == ["427", "0"]


def test_an_image_with_both_masks_empty_is_left_out_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred_dir, true_dir = _pair(tmp_path)
    write_mask(true_dir / "b.png", np.zeros((4, 4), np.uint8))  # no finding, none predicted
    write_mask(pred_dir / "b.png", np.zeros((4, 4), np.uint8))
    out_json = tmp_path / "e.json"
    assert main(["evaluate-masks", str(pred_dir), str(true_dir), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    payload = json.loads(out_json.read_text())
    dice = payload["summary"]["dice"]
    assert (dice["n"], dice["n_nan"]) == (1, 1) and dice["mean"] == pytest.approx(6 / 9)
    clear = payload["summary"]["clear"]  # the image-level figure counts it as right
    assert (clear["n"], clear["mean"]) == (1, 1.0)
    assert (
        "empty-mask convention 'nan'" in text
        and "empty-mask convention" in payload["empty_convention"]
    )
    assert main(["evaluate-masks", str(pred_dir), str(true_dir), "--empty", "one",
                 "--json", str(out_json)]) == 0  # fmt: skip
    dice = json.loads(out_json.read_text())["summary"]["dice"]
    assert (dice["n"], dice["n_nan"]) == (2, 0) and dice["mean"] == pytest.approx((6 / 9 + 1) / 2)


def test_patients_csv_bootstraps_over_patients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred_dir, true_dir = _pair(tmp_path)
    for name in ("b", "c"):
        write_mask(true_dir / f"{name}.png", np.ones((4, 4), np.uint8))
        write_mask(pred_dir / f"{name}.png", np.ones((4, 4), np.uint8))
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,patient_id\na.png,p1\nb.png,p1\nc.png,p2\n")
    out_json = tmp_path / "e.json"
    args = ["evaluate-masks", str(pred_dir), str(true_dir), "--patients", str(labels)]
    assert main([*args, "--json", str(out_json), "--csv", str(tmp_path / "e.csv")]) == 0
    assert "bootstrap over 2 patients" in capsys.readouterr().out
    payload = json.loads(out_json.read_text())
    assert payload["summary"]["dice"]["n_patients"] == 2
    assert [r["patient_id"] for r in payload["rows"]] == ["p1", "p1", "p2"]


def _run(folder: Path, rows: list[tuple[int, str, str, float]]) -> Path:
    folder.mkdir(parents=True)
    with (folder / "per_image.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fold", "file", "patient_id", "dice"])
        w.writerows(rows)
    return folder


def test_compare_runs_pairs_images_and_bootstraps_patients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [(i % 2, f"{i}.png", f"p{i // 2}", 0.5) for i in range(8)]
    ref = _run(tmp_path / "ref", base)
    better = _run(
        tmp_path / "better", [(k, f, p, d + 0.1 + 0.01 * (f < "4")) for k, f, p, d in base]
    )
    out = tmp_path / "diff.json"
    assert main(["compare-runs", str(better), str(ref), "--json", str(out)]) == 0
    dice = json.loads(out.read_text())["dice"]
    assert dice["mean"] == pytest.approx(0.105) and dice["n"] == 8 and dice["n_patients"] == 4
    assert 0.0999 <= dice["ci_low"] <= dice["ci_high"] <= 0.1101 and dice["verdict"] == "helps"
    assert "helps" in capsys.readouterr().out
    assert main(["compare-runs", str(ref), str(better)]) == 0
    assert "hurts" in capsys.readouterr().out
    moved = _run(tmp_path / "moved", [(1 - k, f, p, d) for k, f, p, d in base])
    assert main(["compare-runs", str(moved), str(ref)]) == 2  # other folds: not paired
    assert "different folds" in capsys.readouterr().err
    assert main(["compare-runs", str(tmp_path), str(ref)]) == 2  # not a run folder
    assert main(["compare-runs", str(better), str(ref), "--metrics", "hd95"]) == 2
