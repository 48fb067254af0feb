"""``cxrssl data info|split`` on the built-in sample and the full NIH table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cxrssl.cli.main import main
from cxrssl.data import read_split_csv
from cxrssl.data.datasets import sample


def test_split_of_the_sample_has_no_shared_patient(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = sample().root
    assert root is not None
    out = tmp_path / "split.csv"
    assert main(["data", "split", str(root), "--out", str(out), "--seed", "3"]) == 0
    table = read_split_csv(out)  # re-checks leaks on read
    sides = {
        s: {p for p, a in zip(table.patient_ids, table.assignment, strict=True) if a == s}
        for s in ("train", "val", "test")
    }
    assert not sides["train"] & sides["test"] and not sides["train"] & sides["val"]
    assert len(table.files) == 90
    assert "patients on two sides: 0" in capsys.readouterr().out


def test_kfold_split_writes_fold_column(tmp_path: Path) -> None:
    root = sample().root
    assert root is not None
    out = tmp_path / "folds.csv"
    assert main(["data", "split", str(root), "--out", str(out), "--folds", "5"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {r["fold"] for r in rows} == {"0", "1", "2", "3", "4"}


def test_unknown_folder_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "info", str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err


@pytest.mark.realdata
def test_nih_counts_and_split(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = shared_data / "nih_chestxray14_sample"
    assert main(["data", "info", str(root), "--layout", "nih", "--metadata-only"]) == 0
    out = capsys.readouterr().out
    assert "112120 images, 30805 patients" in out
    for label, count in [
        ("Infiltration", "19,894"),
        ("Effusion", "13,317"),
        ("Hernia", "227"),
        ("No Finding", "60,361"),
    ]:
        assert any(
            line.split()[-1] == count and line.strip().startswith(label)
            for line in out.splitlines()
        ), label
    split = tmp_path / "nih.csv"
    args = ["data", "split", str(root), "--layout", "nih", "--metadata-only", "--out", str(split)]
    assert main(args) == 0
    table = read_split_csv(split)
    assert len(table.files) == 112120
