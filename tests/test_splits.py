"""Patient-level splits: no shared patients, fractions, seeds, leak guard, CSV round trip."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from cxrssl.data.datasets import DatasetWarning
from cxrssl.data.splits import check_no_leak, kfold, make_split, read_split_csv, write_split_csv
from cxrssl.errors import DatasetError, SplitLeakError


def _cohort(n_patients: int = 120, seed: int = 0) -> tuple[list[str | None], np.ndarray]:
    """1-6 images per patient; 3 labels, a rare one (about 10 % of patients)."""
    rng = np.random.default_rng(seed)
    pids: list[str | None] = []
    rows = []
    for p in range(n_patients):
        base = rng.random(3) < (0.4, 0.3, 0.1)
        for _ in range(int(rng.integers(1, 7))):
            pids.append(f"p{p}")
            rows.append(base)
    labels = np.array(rows, np.float32)
    labels[rng.random(labels.shape) < 0.05] = np.nan
    return pids, labels


def _shared(pids: list[str | None], side: np.ndarray) -> set[str]:
    sides: dict[str, set[object]] = {}
    for p, s in zip(pids, side.tolist(), strict=True):
        if p:
            sides.setdefault(p, set()).add(s)
    return {p for p, s in sides.items() if len(s) > 1}


def test_split_keeps_patients_together_with_roughly_the_fractions() -> None:
    pids, labels = _cohort()
    side = make_split(pids, labels, val=0.1, test=0.2, seed=3)
    assert set(side.tolist()) == {"train", "val", "test"}
    assert not _shared(pids, side)
    check_no_leak(pids, side)
    patients = {p: s for p, s in zip(pids, side.tolist(), strict=True)}
    fractions = {k: list(patients.values()).count(k) / len(patients) for k in ("val", "test")}
    assert fractions["test"] == pytest.approx(0.2, abs=0.02)
    assert fractions["val"] == pytest.approx(0.1, abs=0.02)
    # the rare label lands in every part (stratified)
    assert all(np.nansum(labels[side == k, 2]) > 0 for k in ("train", "val", "test"))


def test_split_is_deterministic_by_seed() -> None:
    pids, labels = _cohort()
    first = make_split(pids, labels, seed=1)
    np.testing.assert_array_equal(first, make_split(pids, labels, seed=1))
    assert (first != make_split(pids, labels, seed=2)).any()
    unstratified = make_split(pids, seed=1)
    np.testing.assert_array_equal(unstratified, make_split(pids, seed=1))


def test_split_with_one_dimensional_labels_and_without_test() -> None:
    pids, labels = _cohort()
    side = make_split(pids, np.where(labels[:, 0] == 1, "sick", "well"), val=0.25, test=0)
    assert set(side.tolist()) == {"train", "val"} and not _shared(pids, side)


def test_images_without_patient_id_are_own_groups_with_one_warning() -> None:
    pids: list[str | None] = ["a", "a", None, "", "b", None, "c", "d", "e", "f"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        side = make_split(pids, val=0.2, test=0.2, seed=0)
    ours = [w for w in caught if w.category is DatasetWarning]
    assert len(ours) == 1
    assert "3 of 10 image(s) have no patient id" in str(ours[0].message)
    assert side[0] == side[1]


def test_bad_fractions_and_too_few_patients_are_refused() -> None:
    with pytest.raises(DatasetError, match=r"val \+ test < 1, got val=0\.5, test=0\.5"):
        make_split(["a", "b"], val=0.5, test=0.5)
    with pytest.raises(DatasetError, match=r"cannot split 2 patient\(s\)"):
        make_split(["a", "b"], val=0.1, test=0.2)


def test_kfold_covers_every_patient_once_and_is_seeded() -> None:
    pids, labels = _cohort()
    fold = kfold(pids, k=5, labels=labels, seed=0)
    assert fold.dtype == np.int64 and set(fold.tolist()) == set(range(5))
    assert not _shared(pids, fold)
    np.testing.assert_array_equal(fold, kfold(pids, k=5, labels=labels, seed=0))
    assert (fold != kfold(pids, k=5, labels=labels, seed=1)).any()
    per_fold_rare = [np.nansum(labels[fold == i, 2]) for i in range(5)]
    assert min(per_fold_rare) > 0
    plain = kfold(pids, k=3)
    assert set(plain.tolist()) == {0, 1, 2} and not _shared(pids, plain)
    with pytest.raises(DatasetError, match=r"cannot make 4 folds from 3 patient\(s\)"):
        kfold(["a", "b", "c"], k=4)


def test_leak_is_refused_naming_patient_sides_and_files() -> None:
    pids = ["1", "7", "2", "7"]
    side = ["train", "train", "test", "test"]
    files = ["a.png", "b.png", "c.png", "d.png"]
    with pytest.raises(
        SplitLeakError,
        match=r"patient '7' is on two sides of the split: 'train' \(b\.png\) "
        r"and 'test' \(d\.png\)",
    ):
        check_no_leak(pids, side, files)
    with pytest.raises(SplitLeakError, match=r"patient '7' .* \(row 1\) and 'test' \(row 3\)"):
        check_no_leak(pids, side)
    check_no_leak([None, None], ["train", "test"])  # unknown patients cannot leak


def test_split_csv_round_trip(tmp_path: Path) -> None:
    pids, labels = _cohort(30)
    files = [f"img{i}.png" for i in range(len(pids))]
    side = make_split(pids, labels, seed=0)
    path = tmp_path / "runs" / "split.csv"
    write_split_csv(path, files, pids, side)
    assert path.read_text().splitlines()[0] == "file,patient_id,split"
    table = read_split_csv(path)
    assert table.column == "split" and table.files == tuple(files)
    assert table.patient_ids == tuple(pids)
    np.testing.assert_array_equal(table.assignment, side)
    np.testing.assert_array_equal(table.for_files(files[::-1]), side[::-1])
    with pytest.raises(DatasetError, match=r"1 image\(s\) are not in the split: new\.png"):
        table.for_files(["new.png"])
    folds = kfold(pids, k=3, seed=0)
    write_split_csv(tmp_path / "folds.csv", files, pids, folds)
    read = read_split_csv(tmp_path / "folds.csv")
    assert read.column == "fold" and read.assignment.dtype == np.int64
    np.testing.assert_array_equal(read.assignment, folds)
    assert sorted(p.name for p in path.parent.iterdir()) == ["split.csv"]  # no temporary left


def test_split_csv_with_a_leak_is_refused_on_write_and_read(tmp_path: Path) -> None:
    path = tmp_path / "split.csv"
    with pytest.raises(SplitLeakError, match=r"patient 'p' is on two sides"):
        write_split_csv(path, ["a.png", "b.png"], ["p", "p"], np.array(["train", "val"]))
    assert not path.exists()
    path.write_text("file,patient_id,split\na.png,p,train\nb.png,,val\nc.png,p,test\n")
    with pytest.raises(
        SplitLeakError,
        match=r"split\.csv: patient 'p' .* 'train' \(a\.png\) "
        r"and 'test' \(c\.png\)",
    ):
        read_split_csv(path)
    path.write_text("file,patient\na.png,p\n")
    with pytest.raises(DatasetError, match=r"split\.csv: expected columns file, patient_id"):
        read_split_csv(path)
    path.write_text("file,patient_id,fold\na.png,p,x\n")
    with pytest.raises(DatasetError, match=r"split\.csv: fold 'x' is not an integer"):
        read_split_csv(path)
